"""lz4-njit's compiled drivers are cached on disk where numba caches: a second process
loads them instead of compiling the codec again (issue 11: time to first store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CODE = """
import json
import numpy as np
import devpool
from devpool.kernels import lz4

pool = devpool.open_pool("host", 1 << 24)
zs = devpool.Zswap(pool, "lz4-njit", max_pool_percent=100)
pages = np.tile((np.arange(4096) // 7).astype(np.uint8), (64, 1))
pages[:, :8] = np.arange(64, dtype=np.uint8)[:, None]
for n in (64, 4):                          # the parallel and the serial drivers
    offs = np.arange(n) + 1000 * n
    zs.store_batch(offs, pages[:n])
    assert (zs.load_batch(offs) == pages[:n]).all()
stats = {}
for kind, drivers in (("parallel", (lz4.compress_pages, lz4.decompress_pages)), ("serial", lz4._serial)):
    for d in drivers:
        s = d.stats
        stats[f"{kind}.{d.py_func.__name__}"] = [sum(s.cache_hits.values()), sum(s.cache_misses.values())]
print(json.dumps(stats))
"""


def _run(cache_dir) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_compiled_codec_from_the_cache(tmp_path):
    first = _run(tmp_path)
    assert len(first) == 4 and all(hits == 0 and misses >= 1 for hits, misses in first.values()), first
    index = sorted(tmp_path.rglob("*.nbi"))
    assert index, "nothing was written to the cache"
    stamps = {p: p.stat().st_mtime_ns for p in index}
    second = _run(tmp_path)
    assert all(hits >= 1 and misses == 0 for hits, misses in second.values()), second
    assert {p: p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("*.nbi"))} == stamps   # nothing rewritten
