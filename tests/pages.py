"""Synthetic memory pages of controlled compressibility, and LZ4 blobs made from them.

Benchmarks use captured real pages; tests use these so they run anywhere, fast.
"""

from __future__ import annotations

import lz4.block
import numpy as np

PAGE = 4096
_WORDS = np.frombuffer(
    b"the of and to in is that for it as was with be by on not he this are or his from at "
    b"which but have an they you were her she there been one all we their has would when "
    b"if so no will more about can said into up out them some could what my than other ",
    dtype=np.uint8)


def text_page(rng: np.random.Generator) -> np.ndarray:
    start = rng.integers(0, _WORDS.size - 64, size=PAGE // 32)
    return np.concatenate([_WORDS[s:s + 32] for s in start])[:PAGE]


def struct_page(rng: np.random.Generator) -> np.ndarray:
    """A heap-like page: small integers and pointers, mostly zero high bytes."""
    words = rng.integers(0, 1 << rng.integers(4, 40), size=PAGE // 8, dtype=np.int64)
    words[rng.random(words.size) < 0.3] = 0
    return words.view(np.uint8).copy()


def random_page(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=PAGE, dtype=np.uint8)


def same_page(rng: np.random.Generator) -> np.ndarray:
    return np.full(PAGE, rng.integers(1, 256), np.uint8)


def zero_page(rng: np.random.Generator) -> np.ndarray:
    return np.zeros(PAGE, np.uint8)


KINDS = {"text": text_page, "struct": struct_page, "random": random_page,
         "same": same_page, "zero": zero_page}


def make_pages(n: int, rng: np.random.Generator, kinds=("text", "struct", "struct", "random")) -> np.ndarray:
    """(n, 4096) uint8 pages cycling through ``kinds``."""
    out = np.empty((n, PAGE), np.uint8)
    for i in range(n):
        out[i] = KINDS[kinds[i % len(kinds)]](rng)
    return out


def lz4_blobs(n: int, rng: np.random.Generator) -> list[bytes]:
    """Compressed blocks of realistic sizes (what zswap hands the pool)."""
    blobs = [lz4.block.compress(p.tobytes(), store_size=False) for p in make_pages(n, rng)]
    return [b if len(b) < PAGE else b[:PAGE] for b in blobs]


def pack(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(b) for b in blobs], np.int64)
    return np.frombuffer(b"".join(blobs), np.uint8).copy(), lengths
