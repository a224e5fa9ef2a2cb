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
import time

import numpy as np

from _common import header, load_module, save
from devpool.region import residency as current


def drive(mod, npages: int, faults: int, seed: int) -> dict:
    """Times of ``came_in`` (ns, per fault) and of a round (us) for ``faults`` random faults."""
    budget = npages // 4
    slack = max(1, min(budget // 16, 256))
    r = mod.Residency(npages, budget, "lfu")
    rng = np.random.default_rng(seed)
    for p in rng.permutation(npages)[:budget + slack - 1].tolist():   # resident up to the trigger
        r.came_in(p, 1)
    came, rounds = [], []
    clock = time.perf_counter
    for p in rng.integers(0, npages, 4 * faults).tolist():
        if r.state[p] == current.RESIDENT:
            continue
        t = clock()
        r.came_in(p, 1)
        came.append(clock() - t)
        if r.nres >= budget + slack:
            t = clock()
            r.went_out(r.pick(r.nres - budget + slack - 1, 4))
            rounds.append(clock() - t)
        if len(came) == faults:
            break
    came, rounds = np.array(came) * 1e9, np.array(rounds) * 1e6
    return {"came_in_p10_ns": float(np.percentile(came, 10)), "came_in_p50_ns": float(np.median(came)),
            "round_p10_us": float(np.percentile(rounds, 10)), "round_p50_us": float(np.median(rounds)),
            "rounds": int(rounds.size), "faults": int(came.size),
            # medians, not sums: one stall of the machine would swamp a sum
            "per_fault_us": float(np.median(came) / 1e3 + np.median(rounds) * rounds.size / came.size)}


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
        mods = {"old": load_module(args.old, "residency_old"), "new": current}
    res = header("bench_region_policy", sizes_mib=args.sizes_mib, faults=args.faults, passes=args.passes,
                 old=args.old)
    rows = []
    for ps in range(args.passes):
        for mib in (float(x) for x in args.sizes_mib.split(",")):
            for name, mod in mods.items():
                rows.append({"pass": ps, "size_mib": mib, "code": name, **drive(mod, int(mib * 256), args.faults, ps)})
    res["rows"] = rows
    print(f"victim policy, {args.faults} random faults per size, a quarter resident; per pass the 10th percentile "
          f"(the machine's noise is one-sided) and the median; the median of {args.passes} passes")
    for mib in sorted({r["size_mib"] for r in rows}):
        for name in mods:
            mine = [r for r in rows if r["size_mib"] == mib and r["code"] == name]
            med = {k: float(np.median([r[k] for r in mine])) for k in mine[0] if k not in ("pass", "size_mib", "code")}
            print(f"  {mib:7.0f} MiB {name}: came_in p10 {med['came_in_p10_ns']:5.0f} ns (p50 {med['came_in_p50_ns']:5.0f}); "
                  f"a round p10 {med['round_p10_us']:6.0f} us (p50 {med['round_p50_us']:6.0f}, {med['rounds']:.0f} rounds); "
                  f"per fault with its share of the rounds {med['per_fault_us']:5.2f} us")
    save(res, args.json)
    return res


if __name__ == "__main__":
    main()
