"""Which structure's lookup grows with the stored pages: the entry table's, the pool's.

    python benchmarks/bench_growth_parts.py [--small 10000] [--big 1000000] [--n 20000]
                                           [--passes 5] [--json F]

A single load at 10^6 stored pages costs more than at 10^4 (``bench_growth_paired``);
this splits the growth by structure. In one process, interleaved op for op (the VM's
phases fall on every subject alike), each pass times random present lookups of:

- the entry table (``EntryTable.find_one``: the index's probe and the record), holding
  ``--small`` and ``--big`` offsets, dense (0..N-1) and sparse (spread over 2**32, as a
  swap device's whole range);
- a dict of the same offsets (the bare ``lz4.block`` + dict loop's index: the baseline);
- the pool's handle check (``Pool.size_of``: decode, generation, location) on host
  pools holding ``--small`` and ``--big`` objects.

Reported per subject: p50 (median over passes) and big / small with its range. Both
lookups are Python calls around one compiled call, so the ratio understates the
structure's own growth; the difference in ns is the figure.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import devpool
from devpool.zswap.entries import POOL, EntryTable
from _common import header, save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    r = header("bench_growth_parts", small=args.small, big=args.big, n=args.n, passes=args.passes)
    print(f"# {r['command']}  ({r['date']}, {r['machine']})")
    rng = np.random.default_rng(1)
    sizes = {"small": args.small, "big": args.big}
    subjects = {}                                    # name -> (lookup, keys to look up)
    for layout in ("dense", "sparse"):
        for which, n in sizes.items():
            keys = (np.arange(n, dtype=np.int64) if layout == "dense"
                    else np.sort(rng.choice(1 << 32, n, replace=False)).astype(np.int64))
            table = EntryTable(lru=False)
            table.put(keys, POOL, np.arange(n), 100)
            subjects[f"entries {layout} {which}"] = (table.find_one, keys)
            index = dict.fromkeys(keys.tolist(), b"")     # the bare loop's index, the baseline
            subjects[f"dict {layout} {which}"] = (index.__getitem__, keys)
    pools = []
    for which, n in sizes.items():
        pool = devpool.open_pool("host", max(1 << 24, 128 * n))
        pools.append(pool)
        handles = pool.alloc_batch(np.full(n, 64, np.int64))
        subjects[f"pool handle {which}"] = (pool.size_of, handles)
    picks = {name: [int(x) for x in keys[rng.integers(0, keys.size, args.n)]]
             for name, (_, keys) in subjects.items()}
    clock = time.perf_counter_ns
    per_pass = {name: [] for name in subjects}
    for p in range(args.passes):
        times = {name: [] for name in subjects}
        order = list(subjects) if p % 2 == 0 else list(subjects)[::-1]
        for i in range(args.n):
            for name in order:
                lookup, key = subjects[name][0], picks[name][i]
                t = clock()
                lookup(key)
                times[name].append(clock() - t)
        for name, v in times.items():
            per_pass[name].append(float(np.median(v)))
    r["p50_ns"] = per_pass
    rows = []
    for name in subjects:
        if not name.endswith(" big"):
            continue
        small = name[:-len("big")] + "small"
        q = np.array(per_pass[name]) / np.array(per_pass[small])
        row = {"subject": name[:-len(" big")], "small_ns": float(np.median(per_pass[small])),
               "big_ns": float(np.median(per_pass[name])), "ratio": float(np.median(q)),
               "ratio_low": float(q.min()), "ratio_high": float(q.max())}
        rows.append(row)
        print(f"  {row['subject']:16} {row['small_ns']:6.0f} -> {row['big_ns']:6.0f} ns: "
              f"+{row['big_ns'] - row['small_ns']:.0f} ns, x{row['ratio']:.2f} ({row['ratio_low']:.2f}-{row['ratio_high']:.2f})")
    r["rows"] = rows
    for pool in pools:
        pool.close()
    save(r, args.json)


if __name__ == "__main__":
    main()
