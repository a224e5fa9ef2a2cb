"""What ``capture_pid`` costs on a huge sparse mapping: PAGEMAP_SCAN against reading the
pagemap (what every capture did before, and what a kernel before 6.7 still does).

    python benchmarks/bench_capture.py [--gib 1024] [--touched 3] [--passes 5] [--json F]

A child maps ``--gib`` GiB ``MAP_NORESERVE`` and writes ``--touched`` pages spread over
it. Each pass captures it both ways, back to back; reported: seconds per way (median,
range) and the median of the per-pass ratios. Both ways must find every touched page.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np

from _common import header, save
from devpool.cli import capture as _capture
from devpool.cli.measure import Passes

CHILD = r"""
import mmap, sys
size, touched = int(sys.argv[1]) << 30, int(sys.argv[2])
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000))
for i in range(touched):
    at = (size - 4096) // 4096 * i // max(1, touched - 1) * 4096
    m[at:at + 16] = b"devpool-touched!"             # the rest of the page stays zero
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.read()
"""


def capture(pid: int, scan: bool, touched: int) -> None:
    _capture._use_scan = None if scan else False
    pages = _capture.capture_pid(pid)
    assert _capture._use_scan is scan, "the way asked for was not taken (no PAGEMAP_SCAN here?)"
    found = sum(bytes(p[:16]) == b"devpool-touched!" and not p[16:].any() for p in pages)
    assert found == touched, f"{found} of {touched} touched pages found"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=int, default=1024)
    ap.add_argument("--touched", type=int, default=3)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    r = header("bench_capture", gib=args.gib, touched=args.touched)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(args.gib), str(args.touched)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        p = Passes()
        for _ in range(args.passes):
            p.time("pagemap", capture, child.pid, False, args.touched)
            p.time("scan", capture, child.pid, True, args.touched)
    finally:
        child.stdin.close()
        child.wait()
    r["seconds"] = {k: {"median": float(np.median(v)), "low": min(v), "high": max(v)} for k, v in p.times.items()}
    r["pagemap_over_scan"] = p.ratio("pagemap", "scan")
    print(f"# {r['command']}  ({r['date']}, {r['machine']}); {args.touched} pages touched in "
          f"{args.gib} GiB, {args.passes} passes")
    for k, s in r["seconds"].items():
        print(f"{k:>8}: median {s['median']:.4f} s (range {s['low']:.4f}-{s['high']:.4f})")
    q = r["pagemap_over_scan"]
    print(f"pagemap / scan, per pass: median {q['median']:.0f}x (range {q['low']:.0f}-{q['high']:.0f}x)")
    save(r, args.json)


if __name__ == "__main__":
    main()
