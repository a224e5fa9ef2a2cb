"""The pool's one-object round trip, against another tree of the code, alternating.

    python benchmarks/bench_pool_single.py [--base /path/to/other/checkout] [--pairs 9]
                                           [--n 1000] [--passes 3] [--json F]

A swap-in fault is one object: what the pool costs around its copies is interpreter
work (calls, checks, the lock), and a busy machine scales it. So each pair runs this
tree and ``--base`` (another checkout: ``git worktree add /tmp/base main``) in fresh
processes one after the other, the same objects (LZ4 blocks of 400..3800 bytes) on host
storage, timed by ``bench_latency.pool_latency`` (this tree's copy, for both), and takes
p50 per process (median over passes) of:

- ``alloc`` + ``write`` + ``read`` + ``free`` of one object (the four verbs);
- ``alloc(n, data=)`` + ``read(h, free=True)`` (the two calls zswap makes).

Reported: each tree's p50 (median over pairs, with the range) and the median of the
per-pair ratios this / base with their range. Without ``--base``, this tree alone.
Target (issue 26): both round trips <= 3 us on this machine.

``--interleaved`` times both trees in *one* process instead, op for op: each tree's
``devpool`` is imported under its own modules (``sys.modules`` emptied between them:
the pools keep the code they were built with), the same objects go to a pool of each
in turn, and each pass (who goes first alternates) gives a p50 for each tree. The ratio
is taken per pair of passes, one in each order (the tree timed first in an op ran up to
1.2x slower than the same code timed second: ``--passes`` is rounded up to even). A
VM's slow and fast phases then fall on both sides alike; the ratio is the
figure, not the µs (two copies of the code share the caches: both run slower than
alone, so the absolute target is read from the separate processes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TREE = HERE.parent


def child(n: int, passes: int) -> dict:
    """p50s in this process: ``bench_latency.pool_latency`` (the same loop the latency
    benchmark times) over pages whose LZ4 blocks run 400..3800 bytes, once per pass."""
    import devpool
    from bench_latency import pool_latency
    rng = np.random.default_rng(0)
    pages = np.zeros((n, 4096), np.uint8)
    for page, k in zip(pages, rng.integers(400, 3800, n).tolist()):
        page[:k] = rng.integers(0, 256, k, dtype=np.uint8)          # the rest zeros: compresses to ~k
    runs = [pool_latency("host", pages) for _ in range(passes)]
    return {"four_p50_us": float(np.median([r["alloc_write_read_free_p50_us"] for r in runs])),
            "two_p50_us": float(np.median([r["alloc_data_read_free_p50_us"] for r in runs])),
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


def interleaved(base: Path, n: int, passes: int) -> dict:
    """Per pass, p50 of both round trips for each tree, timed op for op in this process."""
    from _common import compile_afresh, other_tree
    compile_afresh()
    from bench_latency import four_verbs, two_calls      # the loops pool_latency times
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 256, k, dtype=np.uint8) for k in rng.integers(400, 3800, n).tolist()]
    pools = {}
    for name, root in (("base", base), ("this", TREE)):
        with other_tree(root) as devpool:
            pool = pools[name] = devpool.open_pool("host", 256 << 20)
            for b in blocks[:100]:                    # warm: compiled code loaded, arenas touched
                four_verbs(pool, b), two_calls(pool, b)
    out = {}
    for key, verb in (("four_p50_us", four_verbs), ("two_p50_us", two_calls)):
        rows = []
        for i in range(passes):
            order = ("this", "base") if i % 2 == 0 else ("base", "this")
            times = {name: [] for name in order}
            for b in blocks:
                for name in order:
                    times[name].append(verb(pools[name], b)[0])
            rows.append({name: float(np.median(v) * 1e6) for name, v in times.items()})
        out[key] = rows
    for pool in pools.values():
        pool.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="")
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--interleaved", action="store_true",
                    help="both trees in one process, op for op (needs --base); the ratio is the figure")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    if args.child:
        print(json.dumps(child(args.n, args.passes)))
        return
    from _common import header, save
    r = header("bench_pool_single", base=args.base, pairs=args.pairs, n=args.n, passes=args.passes,
               interleaved=args.interleaved)
    print(f"# {r['command']}  ({r['date']}, {r['machine']})")
    if args.interleaved:
        if not args.base:
            ap.error("--interleaved compares two trees: give --base")
        r["passes_p50_us"] = got = interleaved(Path(args.base).resolve(), args.n, args.passes + args.passes % 2)
        for verb, key in (("alloc+write+read+free", "four_p50_us"), ("alloc(data=)+read(free=True)", "two_p50_us")):
            line = f"{verb:30}"
            for name in ("this", "base"):
                v = np.array([row[name] for row in got[key]])
                r[f"{name}_{key}"] = {"median": float(np.median(v)), "low": float(v.min()), "high": float(v.max())}
                line += f"  {name} p50 {np.median(v):.2f} us ({v.min():.2f}-{v.max():.2f})"
            pairs = [(a["this"] + b["this"]) / (a["base"] + b["base"]) for a, b in zip(got[key][::2], got[key][1::2])]
            q = np.array(pairs)                 # (per pair of passes: one in each order)
            r[f"ratio_{key}"] = {"median": float(np.median(q)), "low": float(q.min()), "high": float(q.max())}
            print(line + f"  this/base {np.median(q):.3f} ({q.min():.3f}-{q.max():.3f}), interleaved")
        save(r, args.json)
        return
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
