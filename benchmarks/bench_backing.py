"""What checking every backing-file slot costs: pages written and read through
``BackingFile`` with their check words, against the same I/O without them.

    python benchmarks/bench_backing.py [--passes 200] [--batches 1,256] [--json F]

Each pass times, back to back, a write of a batch as ``write_pages`` did before slots
were checked (sort, lock, ``pwritev`` of its runs), the checked ``write_pages`` (its
arguments checked, the words, the same I/O), the read as before and the checked read
(``expect=``: the words of what was read, compared). The headline is the median over
passes of checked / before time, with its range; the words alone are timed too. The file lives in a temporary folder
(the page cache serves it: the cheapest I/O the check could be added to).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from _common import header, save
from devpool import BackingFile
from devpool.cli.measure import Passes


def write_before(f: BackingFile, offsets: np.ndarray, pages: np.ndarray) -> None:
    """``write_pages`` as it was before slots were checked (commit 1caedae)."""
    order = np.argsort(offsets, kind="stable")
    offs = offsets[order]
    with f._lock:
        f._check_open()
        f._write_runs(offsets, offs, order, pages)


def read_before(f: BackingFile, offsets: np.ndarray) -> np.ndarray:
    """``read_pages`` as it was before slots were checked (commit 1caedae)."""
    out = np.empty((offsets.size, f.page_size), np.uint8)
    order = np.argsort(offsets, kind="stable")
    offs = offsets[order]
    with f._lock:
        f._check_open()
        f._read_runs(offsets, offs, order, out)
    return out


def bench_batch(f: BackingFile, n: int, passes: int, rng) -> dict:
    pages = rng.integers(0, 256, (n, 4096), dtype=np.uint8)
    offs = np.arange(n, dtype=np.int64) * 3               # a run per page, as spread swap
    words = f.write_pages(offs, pages)                     # the slots exist; compiled
    np.testing.assert_array_equal(f.read_pages(offs, expect=words), read_before(f, offs))
    p = Passes()
    for _ in range(passes):
        p.time("write before", write_before, f, offs, pages)
        p.time("write checked", f.write_pages, offs, pages)
        p.time("read before", read_before, f, offs)
        p.time("read checked", f.read_pages, offs, words)
        p.time("words", f._words, offs, pages)
    per_page = {k: float(np.median(v)) / n * 1e6 for k, v in p.times.items()}
    return {"batch": n, "per_page_us": per_page,
            # Passes.ratio(a, b) is a's time over b's, pass by pass: here the check's cost factor
            "write_checked_over_before": p.ratio("write checked", "write before"),
            "read_checked_over_before": p.ratio("read checked", "read before")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=200)
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--json")
    args = ap.parse_args()
    r = header("bench_backing")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="devpool-bench-backing-") as tmp, \
            BackingFile(os.path.join(tmp, "swap")) as f:
        r["rows"] = [bench_batch(f, int(b), args.passes, rng) for b in args.batches.split(",")]
    print(f"# {r['command']}  ({r['date']}, {r['machine']}); median of {args.passes} passes, per page")
    print(f"{'batch':>6} {'words':>8} {'write before':>13} {'checked':>8} {'x (range)':>19} "
          f"{'read before':>12} {'checked':>8} {'x (range)':>19}")
    for row in r["rows"]:
        t, w, rd = row["per_page_us"], row["write_checked_over_before"], row["read_checked_over_before"]
        print(f"{row['batch']:>6} {t['words']:>7.2f}u {t['write before']:>12.2f}u {t['write checked']:>7.2f}u "
              f"{w['median']:>6.2f} ({w['low']:.2f}-{w['high']:.2f})   "
              f"{t['read before']:>11.2f}u {t['read checked']:>7.2f}u "
              f"{rd['median']:>6.2f} ({rd['low']:.2f}-{rd['high']:.2f})")
    save(r, args.json)


if __name__ == "__main__":
    main()
