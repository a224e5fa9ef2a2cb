"""The hostile backend at scale: what one call costs on ``chaos`` as the pool grows.

    python benchmarks/bench_chaos_scale.py [--sizes 1000,16000] [--calls 400] [--passes 7]
                                           [--backend chaos] [--json F]

Every suite runs on ``chaos`` to prove nothing above storage assumes linear RAM; that
proof only scales if the hostility a call pays for is bounded by the call, not by the
pool. For each size, a pool holding that many live objects (LZ4-page-like sizes,
500..3000 bytes) serves the same mix of single calls (``read``; ``alloc(n, data=)`` +
``read(free=True)``; ``write``), every call preceded by the policy's migration. The
pools take turns, pass by pass; per pass, each size's mean cost per call (the mean, not
the median: the cleaning that follows migrations is paid by some calls, and the mean
carries it), and the ratio of each size to the first, reported as the median over
passes with the range. Target: 16 000 objects at most 1.5x the cost of 1 000.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import devpool
from _common import header, save


def filled_pool(backend: str, n: int, rng: np.random.Generator):
    sizes = rng.integers(500, 3000, n)
    pool = devpool.open_pool(backend, int(sizes.sum()) * 3 + (64 << 20), seed=int(rng.integers(1 << 31)))
    hs = pool.alloc_batch(sizes)
    pool.write_batch(hs, rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8), sizes)
    return pool, hs, sizes


def one_pass(pool, hs, sizes, calls: int, rng: np.random.Generator) -> float:
    """Mean seconds per public call over ``calls`` calls of the mix."""
    picks = rng.integers(0, hs.size, calls)
    block = rng.integers(0, 256, 3000, dtype=np.uint8)
    n = 0
    t = time.perf_counter()
    for i, k in enumerate(picks.tolist()):
        h = int(hs[k])
        step = i % 3
        if step == 0:
            pool.read(h)
            n += 1
        elif step == 1:
            pool.read(pool.alloc(1500, data=block[:1500]), free=True)
            n += 2
        else:
            pool.write(h, block[:int(sizes[k])])
            n += 1
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,16000")
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--backend", default="chaos")
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(1)
    r = header("bench_chaos_scale", backend=args.backend, sizes=sizes, calls=args.calls, passes=args.passes)
    print(f"# {r['command']}  ({r['date']}, {r['machine']})")
    pools = [filled_pool(args.backend, n, rng) for n in sizes]
    for pool, hs, sz in pools:                          # warm-up: compile, fault the arena in
        one_pass(pool, hs, sz, 30, rng)
    per_pass = []
    for p in range(args.passes):
        order = pools if p % 2 == 0 else pools[::-1]    # alternate which size goes first
        got = {id(x[0]): one_pass(*x, args.calls, rng) for x in order}
        per_pass.append([got[id(x[0])] for x in pools])
    a = np.array(per_pass) * 1e6
    ratios = a / a[:, :1]
    r["rows"] = []
    print(f"{'live objects':>13}{'us/call median':>16}{'range':>18}{'x first (median)':>18}{'range':>16}")
    for j, n in enumerate(sizes):
        st = pools[j][0].stats()
        row = {"live_objects": n, "us_per_call_median": float(np.median(a[:, j])),
               "us_per_call_low": float(a[:, j].min()), "us_per_call_high": float(a[:, j].max()),
               "vs_first_median": float(np.median(ratios[:, j])), "vs_first_low": float(ratios[:, j].min()),
               "vs_first_high": float(ratios[:, j].max()),
               "migrated_objects": st.get("migrated_objects", st.get("chaos_relocated")),
               "hostile_calls": st.get("hostile_calls", st.get("chaos_calls"))}
        r["rows"].append(row)
        print(f"{n:>13}{row['us_per_call_median']:>16.1f}{row['us_per_call_low']:>9.1f}-{row['us_per_call_high']:<8.1f}"
              f"{row['vs_first_median']:>18.2f}{row['vs_first_low']:>9.2f}-{row['vs_first_high']:<6.2f}")
    for pool, _, _ in pools:
        pool.close()
    save(r, args.json)


if __name__ == "__main__":
    main()
