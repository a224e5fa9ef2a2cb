"""devpool without lz4 or zstandard, as on the GPU image (neither is installed there, and
a missing codec library once stopped ``import devpool``, so the first GPU run's smoke
would have failed before touching the GPU): importing, pools, the other codecs and the
command line still work; the missing codec is unknown, saying which package is absent."""

from __future__ import annotations

import subprocess
import sys

from tests.absent import without

CODE = """
import numpy as np
import devpool
from devpool.cli import main
pool = devpool.open_pool("host", 1 << 22)
pages = np.tile((np.arange(4096) // 9).astype(np.uint8), (8, 1))
for codec in {usable!r}:
    zs = devpool.Zswap(pool, codec, max_pool_percent=100)
    assert zs.store_batch(np.arange(8), pages).all(), codec
    assert (zs.load_batch(np.arange(8)) == pages).all(), codec
    zs.close()
for codec in {absent!r}:
    try:
        devpool.get_codec(codec)
    except devpool.UnknownCodecError as exc:
        print("UNKNOWN", codec, exc)
assert main(["info"]) == 0
"""


def _run(blocked: tuple[str, ...], usable: tuple[str, ...], absent: tuple[str, ...]) -> str:
    out = subprocess.run([sys.executable, "-c", without(*blocked) + CODE.format(usable=usable, absent=absent)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_without_lz4():
    out = _run(("lz4",), ("lz4-njit", "zstd"), ("lz4", "lz4hc"))
    assert "UNKNOWN lz4 unknown codec 'lz4' (ModuleNotFoundError: No module named 'lz4'" in out
    assert "UNKNOWN lz4hc" in out and "codecs: raw" in out


def test_without_zstandard_or_lz4():
    out = _run(("lz4", "zstandard"), ("lz4-njit",), ("lz4", "zstd"))
    assert "UNKNOWN zstd unknown codec 'zstd' (ModuleNotFoundError: No module named 'zstandard'" in out
