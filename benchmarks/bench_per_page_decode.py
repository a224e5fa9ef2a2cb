"""``Zswap.load_batch`` with a per-page codec (``lz4``, Zswap's default): this checkout's
decode loop against the one before it went through memoryviews, alternating in one
process on the same real pages, 1 024 pages a batch.

    python benchmarks/bench_per_page_decode.py --old OLD_PER_PAGE.py [--passes 15] [--pages P.npy]

``OLD_PER_PAGE.py`` is the earlier ``devpool/codecs/per_page.py``
(``git show 7b0252b:devpool/codecs/per_page.py > /tmp/old_per_page.py``); its
``decompress_into_trusted`` is swapped in for the old passes. Reports pages/s of
``load_batch`` (each pass stores the batch first, untimed) and the ratio new / old per
pass: median and range.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import devpool
from _common import header, load_module, load_pages, save
from devpool.codecs.per_page import _PerPage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the earlier per_page.py")
    ap.add_argument("--passes", type=int, default=15)
    ap.add_argument("--batches", type=int, default=16, help="batches of 1 024 a pass")
    ap.add_argument("--compressor", default="lz4")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--pages", default="", help=".npy of real pages (default: capture the workloads)")
    args = ap.parse_args()
    old_mod = load_module(args.old, "devpool.codecs._old_per_page")    # its relative imports: ours
    versions = {"new": _PerPage.decompress_into_trusted, "old": old_mod._PerPage.decompress_into_trusted}
    pages, source = load_pages(args.pages, 16384)
    pages = np.resize(pages, (16384, pages.shape[1]))   # cycled when fewer
    pool = devpool.open_pool("host", 1 << 30)
    zs = devpool.Zswap(pool, compressor=args.compressor, max_pool_percent=100)
    offs = np.arange(1024)
    rates = {"new": [], "old": []}

    def one_pass(which):
        _PerPage.decompress_into_trusted = versions[which]
        spent, n = 0.0, 0
        for b in range(args.batches):
            zs.store_batch(offs, pages[(b % 16) * 1024:(b % 16 + 1) * 1024])
            stored = offs[[zs.contains(int(o)) for o in offs]]   # incompressible pages are refused
            t = time.perf_counter()
            zs.load_batch(stored)
            spent += time.perf_counter() - t
            n += stored.size
        return n / spent

    one_pass("new"), one_pass("old")                  # warm-up
    for k in range(args.passes):
        for which in (("new", "old") if k % 2 == 0 else ("old", "new")):
            rates[which].append(one_pass(which))
    _PerPage.decompress_into_trusted = versions["new"]
    ratios = [n / o for n, o in zip(rates["new"], rates["old"])]
    print(f"# {' '.join(sys.argv)}  ({time.strftime('%Y-%m-%d')}, compressor {args.compressor})")
    print(f"load_batch pages/s, median: new {statistics.median(rates['new']):,.0f}, "
          f"old {statistics.median(rates['old']):,.0f}")
    print(f"new / old per pass: median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f} - {max(ratios):.3f}, {len(ratios)} passes)")
    save(header("bench_per_page_decode", compressor=args.compressor, pages=source, pages_per_s=rates,
                ratio_new_old=ratios, median_ratio=statistics.median(ratios)), args.json)
    zs.close()
    pool.close()


if __name__ == "__main__":
    main()
