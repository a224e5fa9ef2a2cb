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


#: fill words for same-filled pages: zero, one repeated byte, eight different bytes,
#: the chaos poison byte, and a word whose bytes read the same backwards
FILL_WORDS = (0, 0x0101010101010101, 0x0706050403020100, 0xA5A5A5A5A5A5A5A5, 0x1234567887654321)
#: byte positions of the odd byte out: every position of the first, second, a middle and
#: the last word, so a check that skips a word or a byte within a word is caught
ODD_POSITIONS = tuple(w * 8 + b for w in (0, 1, 256, PAGE // 8 - 2, PAGE // 8 - 1) for b in range(8))


def filled_page(word: int) -> np.ndarray:
    """A same-filled page: one 8-byte word repeated over the whole page."""
    return np.full(PAGE // 8, word, np.uint64).view(np.uint8).copy()


def nearly_filled_page(word: int, position: int) -> np.ndarray:
    """A same-filled page except for one byte at ``position``: not same-filled."""
    page = filled_page(word)
    page[position] ^= 0x5A
    return page


def is_same_filled(page: np.ndarray) -> bool:
    """The reference definition: every 8-byte word of the page equals the first."""
    words = page.view(np.uint64)
    return bool((words == words[0]).all())
