"""What one userfaultfd fill costs by itself: UFFDIO_COPY of a page against UFFDIO_ZEROPAGE.

    python benchmarks/bench_uffd_ioctl.py [--pages 4096] [--passes 3] [--json F]

A region fault served from zswap costs a load plus a UFFDIO_COPY; the zero-page floor
costs a UFFDIO_ZEROPAGE. This times the two ioctls alone, in one process, on a memfd
mapping registered for missing faults (as ``swap_region``'s), filling pages nobody has
touched (no faulting thread, no wake-up), so a gap between the region's zswap and
zero-page faults larger than the load can be placed: in the ioctl, or in the handler's
loop around it. Needs userfaultfd (root here). p50 per page, median over passes.
"""

from __future__ import annotations

import argparse
import mmap
import os
import time

import numpy as np

from devpool.region import uffd as u
from _common import header, save

PAGE = u.PAGE_SIZE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=4096)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    n = args.pages
    fd = u.open_uffd()
    mf = os.memfd_create("devpool-bench-uffd")
    try:
        u.api(fd, u.UFFD_FEATURE_MISSING_SHMEM)
        os.ftruncate(mf, n * PAGE)
        m = mmap.mmap(mf, n * PAGE, mmap.MAP_SHARED)
        base = np.frombuffer(m, np.uint8).ctypes.data
        u.register(fd, base, n * PAGE, u.UFFDIO_REGISTER_MODE_MISSING)
        src = np.random.default_rng(0).integers(0, 256, PAGE, dtype=np.uint8)
        res = {"copy": [], "zeropage": []}
        for _ in range(args.passes):
            for kind in res:
                ts = []
                for i in range(n):
                    t = time.perf_counter_ns()
                    if kind == "copy":
                        u.copy(fd, base + i * PAGE, src.ctypes.data, PAGE)
                    else:
                        u.zeropage(fd, base + i * PAGE, PAGE)
                    ts.append(time.perf_counter_ns() - t)
                u.punch_hole(mf, 0, n * PAGE)          # unfilled again for the next pass
                res[kind].append(np.median(ts) / 1e3)
        print(f"# python benchmarks/bench_uffd_ioctl.py --pages {n} --passes {args.passes}  ({time.strftime('%F')})")
        r = header("bench_uffd_ioctl", pages=n, passes=args.passes)
        for kind, v in res.items():
            r[kind] = {"p50_us": float(np.median(v)), "passes_us": [float(x) for x in v]}
            print(f"UFFDIO_{kind.upper():9} p50 {np.median(v):.2f} us per page (passes {', '.join(f'{x:.2f}' for x in v)})")
        save(r, args.json)
    finally:
        os.close(fd)
        os.close(mf)


if __name__ == "__main__":
    main()
