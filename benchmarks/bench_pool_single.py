"""The pool's one-object round trip, against another tree of the code, alternating.

    python benchmarks/bench_pool_single.py [--base /path/to/other/checkout] [--pairs 9]
                                           [--n 1000] [--passes 3] [--json F]

A swap-in fault is one object: what the pool costs around its copies is interpreter
work (calls, checks, the lock), and a busy machine scales it. So each pair runs this
tree and ``--base`` (another checkout: ``git worktree add /tmp/base main``) in fresh
processes one after the other, the same objects (LZ4-page-like sizes, 500..4000 bytes)
on host storage, and takes p50 per process of:

- ``alloc`` + ``write`` + ``read`` + ``free`` of one object (the four verbs);
- ``alloc(n, data=)`` + ``read(h, free=True)`` (the two calls zswap makes).

Reported: each tree's p50 (median over pairs, with the range) and the median of the
per-pair ratios this / base with their range. Without ``--base``, this tree alone.
Target (issue 26): both round trips <= 3 us on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TREE = HERE.parent


def child(n: int, passes: int) -> dict:
    import gc

    import devpool
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 255, int(s), dtype=np.uint8) for s in rng.integers(500, 4000, n)]
    pool = devpool.open_pool("host", 64 << 20)
    for b in blocks[:300]:                                 # warm-up
        pool.read(pool.alloc(b.size, data=b), free=True)
    clock = time.perf_counter
    four, two = [], []
    gc.disable()
    for _ in range(passes):
        for b in blocks:
            t = clock()
            h = pool.alloc(b.size)
            pool.write(h, b)
            pool.read(h)
            pool.free(h)
            four.append(clock() - t)
            t = clock()
            got = pool.read(pool.alloc(b.size, data=b), free=True)
            two.append(clock() - t)
    assert np.array_equal(got, blocks[-1])
    pool.close()
    return {"four_p50_us": float(np.percentile(four, 50) * 1e6), "two_p50_us": float(np.percentile(two, 50) * 1e6),
            "devpool": devpool.__file__}


def run_tree(root: Path, n: int, passes: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--n", str(n), "--passes", str(passes)],
                       capture_output=True, text=True, env=env, cwd="/", timeout=600)
    if p.returncode:
        raise RuntimeError(f"the run in {root} failed:\n{p.stderr}")
    got = json.loads(p.stdout.strip().splitlines()[-1])
    if not got["devpool"].startswith(str(root)):
        raise RuntimeError(f"the run meant for {root} imported {got['devpool']}")
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="")
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.n, args.passes)))
        return
    sys.path.insert(0, str(HERE))
    from _common import header, save
    r = header("bench_pool_single", base=args.base, pairs=args.pairs, n=args.n, passes=args.passes)
    print(f"# {r['command']}  ({r['date']}, {r['machine']})")
    trees = [("this", TREE)] + ([("base", Path(args.base).resolve())] if args.base else [])
    runs = {name: [] for name, _ in trees}
    for i in range(args.pairs):
        for name, root in (trees if i % 2 == 0 else trees[::-1]):       # alternate who goes first
            runs[name].append(run_tree(root, args.n, args.passes))
    r["runs"] = runs
    for verb, key in (("alloc+write+read+free", "four_p50_us"), ("alloc(data=)+read(free=True)", "two_p50_us")):
        line = f"{verb:30}"
        for name, _ in trees:
            v = np.array([x[key] for x in runs[name]])
            r[f"{name}_{key}"] = {"median": float(np.median(v)), "low": float(v.min()), "high": float(v.max())}
            line += f"  {name} p50 {np.median(v):.2f} us ({v.min():.2f}-{v.max():.2f})"
        if args.base:
            q = np.array([a[key] / b[key] for a, b in zip(runs["this"], runs["base"])])
            r[f"ratio_{key}"] = {"median": float(np.median(q)), "low": float(q.min()), "high": float(q.max())}
            line += f"  this/base {np.median(q):.3f} ({q.min():.3f}-{q.max():.3f})"
        print(line)
    save(r, args.json)


if __name__ == "__main__":
    main()
