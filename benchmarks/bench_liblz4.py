"""The ``lz4`` codec calling liblz4 from compiled code against the same codec through the
``lz4.block`` binding, inside ``Zswap``'s batch verbs, alternating in one process.

    python benchmarks/bench_liblz4.py [--pages F.npy] [--batch 1024] [--passes 9] [--json F]

Two Zswaps on host pools, one whose codec reaches liblz4 itself
(``devpool.codecs._liblz4``: a compiled loop over the batch) and one whose codec is
made to take the binding (one Python call per page, as before). Each pass times
``store_batch`` then ``load_batch`` of the same real pages on both, in turn; reported:
pages/s (median) and the median of per-pass ratios compiled / binding with the range.
The blocks are the same bytes both ways (``tests/codecs`` pins it).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import devpool
from _common import header, load_pages, save


def zswap(binding: bool):
    pool = devpool.open_pool("host", 1 << 30)
    zs = devpool.Zswap(pool, "lz4", max_pool_percent=100)
    if binding:
        zs.codec._fns = None                 # the codec's own switch: through lz4.block
    return zs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", default="")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--passes", type=int, default=9)
    ap.add_argument("--json")
    args = ap.parse_args()
    pages, source = load_pages(args.pages)
    pages = np.ascontiguousarray(pages[:max(args.batch, 1) * 8])
    r = header("bench_liblz4", pages=source, n=int(pages.shape[0]), batch=args.batch, passes=args.passes)
    print(f"# {r['command']}  ({r['date']}, {r['machine']}; {pages.shape[0]} pages of {source})")
    subjects = {"compiled": zswap(False), "binding": zswap(True)}
    offs = np.arange(pages.shape[0], dtype=np.int64)
    clock = time.perf_counter
    rates = {name: {"store_batch": [], "load_batch": []} for name in subjects}
    for p in range(args.passes + 1):               # the first pass warms (compiles), untimed
        for name, zs in (subjects.items() if p % 2 else reversed(subjects.items())):
            ts = tl = 0.0
            kept = []
            for s in range(0, pages.shape[0], args.batch):
                o = offs[s:s + args.batch]
                t = clock()
                kept.append(zs.store_batch(o, pages[s:s + args.batch]))
                ts += clock() - t
            loaded = 0
            for s, mask in zip(range(0, pages.shape[0], args.batch), kept):
                o = offs[s:s + args.batch][mask]             # (no backing file: what was refused is not there)
                t = clock()
                got = zs.load_batch(o)
                tl += clock() - t
                loaded += o.size
                if not np.array_equal(got, pages[o]):
                    raise RuntimeError(f"{name}: pages came back different")
            if p:
                rates[name]["store_batch"].append(pages.shape[0] / ts)
                rates[name]["load_batch"].append(loaded / tl)
    r["rates"] = rates
    r["ratio"] = {}
    for verb in ("store_batch", "load_batch"):
        q = np.array(rates["compiled"][verb]) / np.array(rates["binding"][verb])
        r["ratio"][verb] = {"median": float(np.median(q)), "low": float(q.min()), "high": float(q.max())}
        print(f"{verb:12} compiled {np.median(rates['compiled'][verb]):>9.0f} pages/s, binding "
              f"{np.median(rates['binding'][verb]):>9.0f} pages/s: {np.median(q):.2f}x ({q.min():.2f}-{q.max():.2f})")
    save(r, args.json)


if __name__ == "__main__":
    main()
