"""lz4-njit (numba, every core) vs a single-threaded lz4.block loop, same pages, same run.

    python benchmarks/bench_lz4.py [--pages F.npy] [--max-pages 16384] [--repeats 7] [--batch 1024]

Reports pages/s and GB/s (uncompressed side, best pass) for compress and decompress, the
ratio to the loop (median over passes of the per-pass ratio; range and best-vs-best),
whether our blocks are byte-identical to liblz4's, and the compressed size ratio. Targets on the 2-core dev machine: >= 2.2x compress, >= 2.0x decompress, size
within 1 %. With a CUDA device (or the simulator, tiny sizes) pass --device to add the
lz4-device codec.
"""

from __future__ import annotations

import argparse

import numba
import numpy as np

import devpool
from devpool.cli.measure import (Passes, format_ratio, lz4_blocks, lz4_compress_loop, lz4_compress_loop_kept,
                            lz4_decompress_loop, lz4_decompress_loop_kept)
from _common import header, load_pages, pack, save


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages")
    ap.add_argument("--max-pages", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1024,
                    help="pages per codec call, as Zswap batches them (0: all in one call)")
    ap.add_argument("--device", action="store_true", help="also time the lz4-device codec")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    pages, source = load_pages(args.pages, args.max_pages)
    n = pages.shape[0]
    njit = devpool.get_codec("lz4-njit")
    ref = lz4_blocks(pages)
    ref_data, ref_len, starts = pack(ref)
    data, lengths = njit.compress_batch(pages)                # warm-up (compile)
    out = np.empty_like(pages)
    njit.decompress_into(ref_data, ref_len, out)
    codecs = {"lz4-njit": njit}
    if args.device:
        codecs["lz4-device"] = devpool.get_codec("lz4-device")
        codecs["lz4-device"].compress_batch(pages[:2])

    # the shared baseline (devpool.cli.measure): loops that discard each result; the same
    # loops keeping every result (as a store and a load must) are reported for scale
    # the codec is called per batch, as Zswap calls it: its scratch stays in cache
    step = args.batch or n
    cuts = [(lo, min(lo + step, n)) for lo in range(0, n, step)]

    def compress(codec):
        for lo, hi in cuts:
            codec.compress_batch(pages[lo:hi])

    def decompress(codec):
        for lo, hi in cuts:
            codec.decompress_into(ref_data[starts[lo]:starts[hi]], ref_len[lo:hi], out[lo:hi])

    bo = Passes()
    for _ in range(args.repeats):
        bo.time("loop_compress", lz4_compress_loop, pages)
        bo.time("loop_compress_kept", lz4_compress_loop_kept, pages)
        bo.time("loop_decompress", lz4_decompress_loop, ref)
        bo.time("loop_decompress_kept", lz4_decompress_loop_kept, ref)
        for name, c in codecs.items():
            bo.time(f"{name}_compress", compress, c)
            bo.time(f"{name}_decompress", decompress, c)
        # the same codec on one thread: per-core speed, to tell it from thread scaling
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        bo.time("lz4-njit-1thread_compress", compress, njit)
        bo.time("lz4-njit-1thread_decompress", decompress, njit)
        numba.set_num_threads(threads)
    assert (out == pages).all()
    res = header("bench_lz4", pages=n, pages_source=source, threads=numba.get_num_threads(), batch=step,
                 repeats=args.repeats)
    print(f"# bench_lz4 {res['date']} {res['machine']} ({res['threads']} threads); {n} pages from {source}; "
          f"codec calls of {step} pages")
    print(f"{'':28}{'pages/s':>10}{'GB/s':>7}  x loop: median of {args.repeats} passes (range; best vs best)")
    rows = [("lz4.block compress loop", "loop_compress", None),
            ("  the same, blocks kept", "loop_compress_kept", "loop_compress"),
            ("lz4.block decompress loop", "loop_decompress", None),
            ("  the same, pages kept", "loop_decompress_kept", "loop_decompress")]
    for name in ["lz4-njit-1thread", *codecs]:
        rows += [(f"{name} compress", f"{name}_compress", "loop_compress"),
                 (f"{name} decompress", f"{name}_decompress", "loop_decompress")]
    for label, key, base in rows:
        pps = n / bo.best(key)
        ratio = bo.ratio(base, key) if base else None
        res[key + "_pages_per_s"] = pps
        res[key + "_vs_loop"] = ratio
        print(f"{label:<28}{pps:>10.0f}{pps * 4096 / 1e9:>7.2f}  {format_ratio(ratio)}")
    data, lengths = njit.compress_batch(pages)
    res["identical_blocks"] = bool(data.tobytes() == ref_data.tobytes())
    res["size_vs_lz4"] = float(lengths.sum() / ref_len.sum())
    res["lz4_ratio"] = float(pages.size / ref_len.sum())
    print(f"lz4-njit blocks identical to lz4.block: {res['identical_blocks']}; "
          f"size vs lz4 {res['size_vs_lz4']:.4f}; lz4 ratio {res['lz4_ratio']:.2f}")
    save(res, args.json)
    return res


if __name__ == "__main__":
    main()
