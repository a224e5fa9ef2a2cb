"""Where lz4-njit should stop running a batch on the calling thread.

    python benchmarks/bench_serial_threshold.py [--pages F.npy] [--sizes 8,16,20,24,32,64] [--passes 5] [--json F]

A batch smaller than ``kernels.lz4.SERIAL_BELOW`` pages runs serially (waking numba's
worker threads costs more than a few pages take); from there on it runs in a parallel
region. This times both drivers on the same batches, interleaved pass by pass, per
batch size: compress and decompress microseconds per page, and parallel / serial (the
median of the per-pass ratios, with the range). The threshold belongs where the ratio
falls below 1.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import header, load_pages, save


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", help="(N, 4096) uint8 .npy (default: captured from built-in workloads)")
    ap.add_argument("--sizes", default="8,16,20,24,32,64")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--total", type=int, default=2048, help="pages per pass and size")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from devpool.codecs import get_codec
    from devpool.kernels import lz4 as L

    pages, source = load_pages(args.pages)
    sizes = [int(x) for x in args.sizes.split(",")]
    total = min(args.total, pages.shape[0])
    codec = get_codec("lz4-njit")
    data, lengths = codec.compress_batch(pages[:64])          # compile / warm both drivers
    codec.decompress_batch(data, lengths)
    keep = L.SERIAL_BELOW
    modes = {"parallel": 1, "serial": 1 << 62}
    per = {}                # (size, mode) -> [(compress us/page, decompress us/page) per pass]
    try:
        for _ in range(args.passes):
            for n in sizes:
                for mode, threshold in modes.items():
                    L.SERIAL_BELOW = threshold
                    tc, td = [], []
                    for lo in range(0, total - n + 1, n):
                        t = time.perf_counter()
                        d, ln = codec.compress_batch(pages[lo:lo + n])
                        tc.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        codec.decompress_batch(d, ln)
                        td.append(time.perf_counter() - t)
                    per.setdefault((n, mode), []).append((np.median(tc) / n * 1e6, np.median(td) / n * 1e6))
    finally:
        L.SERIAL_BELOW = keep
    res = header("bench_serial_threshold", source=source, sizes=sizes, passes=args.passes,
                 serial_below=keep, rows=[])
    print(f"bench_serial_threshold — {res['date']}, {res['machine']}, {res['cores']} threads; "
          f"SERIAL_BELOW = {keep}; median of {args.passes} passes")
    print(f"{'pages':>6} {'par c':>7} {'ser c':>7} {'par/ser c':>18} {'par d':>7} {'ser d':>7} {'par/ser d':>18}")
    for n in sizes:
        p, s = np.array(per[(n, "parallel")]), np.array(per[(n, "serial")])
        rc, rd = p[:, 0] / s[:, 0], p[:, 1] / s[:, 1]
        row = {"pages": n, "parallel_us_per_page": np.median(p, axis=0).tolist(),
               "serial_us_per_page": np.median(s, axis=0).tolist(),
               "compress_parallel_vs_serial": [float(np.median(rc)), float(rc.min()), float(rc.max())],
               "decompress_parallel_vs_serial": [float(np.median(rd)), float(rd.min()), float(rd.max())]}
        res["rows"].append(row)
        print(f"{n:>6} {row['parallel_us_per_page'][0]:>7.2f} {row['serial_us_per_page'][0]:>7.2f} "
              f"{np.median(rc):>7.2f} ({rc.min():.2f}-{rc.max():.2f}) "
              f"{row['parallel_us_per_page'][1]:>7.2f} {row['serial_us_per_page'][1]:>7.2f} "
              f"{np.median(rd):>7.2f} ({rd.min():.2f}-{rd.max():.2f})")
    save(res, args.json)
    return res


if __name__ == "__main__":
    main()
