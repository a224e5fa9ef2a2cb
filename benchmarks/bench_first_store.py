"""Time to first store: ``import devpool`` + the first ``store_batch`` (and, with ``lz4``,
the first single ``store`` and ``load``, which bind the compiled single page).

    python benchmarks/bench_first_store.py [--runs 3] [--codec lz4-njit] [--json F]

Each run is a new Python process sharing one fresh numba cache directory: the first
compiles the codec's drivers and writes the cache, the later ones should load it
(target <= 1 s from the second process on). A plain ``python -c "import numpy"``
process is timed beside them as the floor every process pays.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from _common import header, save

CHILD = """
import time
t = time.perf_counter()
import numpy as np
import devpool
pool = devpool.open_pool("host", 64 << 20)
zs = devpool.Zswap(pool, compressor=CODEC, max_pool_percent=100)
pages = np.random.default_rng(0).integers(0, 4, (64, 4096)).astype(np.uint8)
assert zs.store_batch(np.arange(64), pages).all()
assert zs.store(100, pages[0]) and (zs.load(100) == pages[0]).all()
print(time.perf_counter() - t)
"""


def timed(code: str, env: dict) -> tuple[float, float]:
    """(wall seconds of the whole process, seconds the child measured itself)."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, float(out.stdout.strip() or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--codec", default="lz4-njit")
    ap.add_argument("--json")
    args = ap.parse_args()
    r = header("bench_first_store", codec=args.codec)
    with tempfile.TemporaryDirectory(prefix="devpool-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        floor = timed("import numpy; print(0)", env)[0]
        runs = [timed(CHILD.replace("CODEC", repr(args.codec)), env) for _ in range(args.runs)]
    r.update({"python_import_numpy_s": floor, "runs": [{"process_s": p, "import_and_first_store_s": c}
                                                        for p, c in runs]})
    print(f"# {r['command']}  ({r['date']}, {r['machine']})")
    print(f"a bare python process importing numpy: {floor:.2f} s")
    for i, (p, c) in enumerate(runs):
        what = "compiles, writes the cache" if i == 0 else "cache warm"
        print(f"process {i + 1} ({what}): import devpool + first store_batch, store, load ({args.codec}) "
              f"{c:.2f} s (whole process {p:.2f} s)")
    save(r, args.json)


if __name__ == "__main__":
    main()
