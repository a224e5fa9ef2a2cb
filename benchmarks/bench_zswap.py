"""Zswap store_batch / load_batch throughput on real pages vs a plain lz4.block loop.

    python benchmarks/bench_zswap.py [--pages F.npy] [--compressor lz4-njit] [--batch 1024]

Baseline, same run, interleaved: a single-threaded loop of ``lz4.block.compress`` /
``lz4.block.decompress`` over the same pages. Subject: every page stored through
``Zswap.store_batch`` (host backend) in batches, then loaded back with ``load_batch``
and checked byte for byte. The ratio is the median over passes of baseline time /
subject time, each pass timing both back to back (range and best-vs-best beside it).
Targets on the 2-core dev machine: store >= 2.0x and load >= 1.8x the loop. Also
single-page ``store`` + ``load`` latency.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

import devpool
from devpool.cli.measure import (Passes, format_ratio, zswap_single_page, lz4_blocks, lz4_compress_loop, lz4_compress_loop_kept,
                            lz4_decompress_loop, lz4_decompress_loop_kept)
from _common import header, load_pages, save


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages")
    ap.add_argument("--max-pages", type=int, default=16384)
    ap.add_argument("--backend", default="host")
    ap.add_argument("--compressor", default="lz4-njit")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--latency-pages", type=int, default=2000, help="single-page store+load rounds")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    pages, source = load_pages(args.pages, args.max_pages)
    n = pages.shape[0]
    blobs = lz4_blocks(pages)
    pool = devpool.open_pool(args.backend, 4 << 30)
    tmp = tempfile.TemporaryDirectory()
    # a backing file enables writeback, so incompressible pages are stored as-is (Linux)
    zs = devpool.Zswap(pool, compressor=args.compressor, max_pool_percent=100,
                       backing=os.path.join(tmp.name, "swap"))
    offsets = np.arange(n)
    got = np.empty_like(pages)

    def store_all():
        for lo in range(0, n, args.batch):
            zs.store_batch(offsets[lo:lo + args.batch], pages[lo:lo + args.batch])

    def load_all():
        for lo in range(0, n, args.batch):
            zs.load_batch(offsets[lo:lo + args.batch], out=got[lo:lo + args.batch])

    store_all(); load_all()                      # warm-up: compile, fault in the arena
    zs.store(0, pages[0]); zs.load(0)            # and the single-page (serial) drivers
    bo = Passes()
    for _ in range(args.repeats):
        bo.time("lz4_compress_loop", lz4_compress_loop, pages)
        bo.time("lz4_compress_loop_kept", lz4_compress_loop_kept, pages)
        bo.time("store_batch", store_all)
        st = zs.stats()
        bo.time("lz4_decompress_loop", lz4_decompress_loop, blobs)
        bo.time("lz4_decompress_loop_kept", lz4_decompress_loop_kept, blobs)
        bo.time("load_batch", load_all)
        assert (got == pages).all(), "a loaded page differs from what was stored"

    # single-page latency (benchmarks/bench_latency.py sets it against its baselines)
    single = zswap_single_page(zs, pages[:min(n, args.latency_pages)])
    pst = pool.stats()
    res = header("bench_zswap", backend=args.backend, device=pst.get("device"), compressor=args.compressor,
                 blocks_on_device=st["blocks_on_device"], batch=args.batch, pages=n, pages_source=source)
    res.update({
        "repeats": args.repeats,
        "store_pages_per_s": n / bo.best("store_batch"), "load_pages_per_s": n / bo.best("load_batch"),
        "lz4_loop_compress_pages_per_s": n / bo.best("lz4_compress_loop"),
        "lz4_loop_decompress_pages_per_s": n / bo.best("lz4_decompress_loop"),
        "store_vs_lz4_loop": bo.ratio("lz4_compress_loop", "store_batch"),
        "load_vs_lz4_loop": bo.ratio("lz4_decompress_loop", "load_batch"),
        "store_vs_lz4_loop_kept": bo.ratio("lz4_compress_loop_kept", "store_batch"),
        "load_vs_lz4_loop_kept": bo.ratio("lz4_decompress_loop_kept", "load_batch"),
        "compression_ratio": st["compression_ratio"], "same_filled_pages": st["same_filled_pages"],
        "stored_incompressible_pages": st["stored_incompressible_pages"],
        "single_page": single,
    })
    print(f"# bench_zswap {res['date']} {res['machine']} ({res['cores']} cores) backend={args.backend} "
          f"({res['device']}) compressor={args.compressor} batch={args.batch} "
          f"blocks_on_device={res['blocks_on_device']}")
    print(f"# {n} pages from {source}")
    print(f"{'':26}{'pages/s':>10}{'GB/s':>7}  x lz4 loop: median of {args.repeats} passes "
          f"(range; best vs best)")
    for name, pps, ratio in (("store_batch", res["store_pages_per_s"], res["store_vs_lz4_loop"]),
                             ("lz4.block.compress loop", res["lz4_loop_compress_pages_per_s"], None),
                             ("load_batch", res["load_pages_per_s"], res["load_vs_lz4_loop"]),
                             ("lz4.block.decompress loop", res["lz4_loop_decompress_pages_per_s"], None)):
        print(f"{name:<26}{pps:>10.0f}{pps * 4096 / 1e9:>7.2f}  {format_ratio(ratio)}")
    print(f"against the same loops keeping every result (as a store and a load must): store "
          f"{format_ratio(res['store_vs_lz4_loop_kept'])}, load {format_ratio(res['load_vs_lz4_loop_kept'])}")
    print(f"compression ratio {st['compression_ratio']:.2f}, same-filled {st['same_filled_pages']}, "
          f"incompressible {st['stored_incompressible_pages']}")
    print("single page: " + "; ".join(f"{verb} p50 {v['p50_us']:.1f} us p99 {v['p99_us']:.1f} us"
                                       for verb, v in single.items()))
    save(res, args.json)
    zs.close(); pool.close(); tmp.cleanup()
    return res


if __name__ == "__main__":
    main()
