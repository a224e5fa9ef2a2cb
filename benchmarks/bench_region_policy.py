"""The region's victim policy alone, old against new: cost per fault and per round as the region grows.

    python benchmarks/bench_region_policy.py [--sizes-mib 16,256,1024] [--old FILE] [--passes 5]

Pure numpy, no userfaultfd: a ``Residency`` of each size (a quarter resident) is driven
by uniformly random faults as the handler drives it (a round of victims whenever the
resident pages pass the budget by the slack), and the time of ``came_in`` per fault and
of ``pick`` + ``went_out`` per round is taken. ``--old`` names another ``residency.py``
(e.g. ``git show 5aa7b40:devpool/region/residency.py``, main's policy code moved
verbatim) measured in the same process, alternating pass by pass.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

from _common import header, save
from devpool.region import residency as current


def drive(mod, npages: int, faults: int, seed: int) -> tuple[float, float, int]:
    """(us per came_in, us per round, rounds) for ``faults`` random faults."""
    budget = npages // 4
    slack = max(1, min(budget // 16, 256))
    r = mod.Residency(npages, budget, "lfu")
    rng = np.random.default_rng(seed)
    for p in rng.permutation(npages)[:budget + slack - 1].tolist():   # resident up to the trigger
        r.came_in(p, 1)
    tc = tp = 0.0
    rounds = n = 0
    clock = time.perf_counter
    for p in rng.integers(0, npages, 4 * faults).tolist():
        if r.state[p] == current.RESIDENT:
            continue
        t = clock()
        r.came_in(p, 1)
        tc += clock() - t
        n += 1
        if r.nres >= budget + slack:
            t = clock()
            r.went_out(r.pick(r.nres - budget + slack - 1, 4))
            tp += clock() - t
            rounds += 1
        if n == faults:
            break
    return tc / n * 1e6, tp / max(rounds, 1) * 1e6, rounds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-mib", default="16,256,1024")
    ap.add_argument("--faults", type=int, default=20000)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--old", help="another residency.py to measure beside this tree's")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    mods = {"new": current}
    if args.old:
        spec = importlib.util.spec_from_file_location("residency_old", args.old)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        mods = {"old": old, "new": current}
    res = header("bench_region_policy", sizes_mib=args.sizes_mib, faults=args.faults, passes=args.passes,
                 old=args.old)
    rows = []
    for ps in range(args.passes):
        for mib in (float(x) for x in args.sizes_mib.split(",")):
            for name, mod in mods.items():
                ci, rnd, rounds = drive(mod, int(mib * 256), args.faults, ps)
                rows.append({"pass": ps, "size_mib": mib, "code": name, "came_in_us": ci, "round_us": rnd,
                             "rounds": rounds})
    res["rows"] = rows
    print(f"victim policy, {args.faults} random faults per size, a quarter resident; median of {args.passes} passes")
    for mib in sorted({r["size_mib"] for r in rows}):
        for name in mods:
            mine = [r for r in rows if r["size_mib"] == mib and r["code"] == name]
            print(f"  {mib:7.0f} MiB {name}: came_in {np.median([r['came_in_us'] for r in mine]):6.2f} us per fault, "
                  f"pick + went_out {np.median([r['round_us'] for r in mine]):8.0f} us per round "
                  f"(~{int(mib * 256) // 4 // 16 if mib * 256 // 4 // 16 < 256 else 256} x 2 victims)")
    save(res, args.json)
    return res


if __name__ == "__main__":
    main()
