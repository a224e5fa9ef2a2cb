"""``devpool bench``: every page through Zswap and back, checked, with its baseline.

The baseline is a single-threaded ``lz4.block`` compress / decompress loop over the same
pages, timed in the same run (``devpool.cli.measure``: paired passes, the median of their
ratios). Throughput is the best of a few passes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

from ..pool.backends import open_pool
from .._checks import check_int
from .._errors import BadInputError, DevpoolError
from .measure import Passes, format_ratio, lz4_blocks, lz4_compress_loop, lz4_decompress_loop, single_page_ratios
from ..zswap.frontend import Zswap
from .io import progress as _progress
from .io import write_outputs

__all__ = ["run_bench"]

PASSES = 5


def _stores_and_loads(zs: Zswap, pages: np.ndarray, batch: int, progress,
                      got: np.ndarray | None = None) -> tuple[float, float]:
    """Seconds to store every page in batches, then to load them all back into ``got``
    (the caller's buffer: pass the same one every pass, already written, as a swap-in
    fills pages that are mapped; a fresh 64 MiB array per pass put a page fault per
    4 KiB into the load's time, measured 0.6 - 1.6x swings between passes)."""
    n = pages.shape[0]
    offsets = np.arange(n)
    if got is None:
        got = np.empty_like(pages)
    got[:, :8] = 0x5A                   # poison (a pattern no real page matches): a load that
    got[:, 8:] = 0xA5                   # writes nothing fails the check below
    t = time.perf_counter()
    for lo in progress(range(0, n, batch), "store"):
        zs.store_batch(offsets[lo:lo + batch], pages[lo:lo + batch])
    t_store = time.perf_counter() - t
    stats = zs.stats()
    t = time.perf_counter()
    for lo in progress(range(0, n, batch), "load"):
        zs.load_batch(offsets[lo:lo + batch], out=got[lo:lo + batch])
    t_load = time.perf_counter() - t
    if not np.array_equal(got, pages):
        bad = int(np.flatnonzero((got != pages).any(axis=1))[0])
        raise DevpoolError(f"page {bad} came back different from what was stored")
    return t_store, t_load, stats


def _sweep_sizes(sweep) -> list[int]:
    """``--sweep`` as batch sizes: the parser's list, or a "1,16,256" string."""
    text = sweep
    if isinstance(sweep, str):
        try:
            sweep = [int(x) for x in sweep.split(",") if x.strip()]
        except ValueError:
            sweep = []
    if not sweep:
        raise BadInputError(f"--sweep must be comma-separated batch sizes such as 1,16,256, got {text!r}")
    return [check_int(b, "--sweep batch size", lo=1) for b in sweep]


def run_bench(args, pages: np.ndarray, source: str) -> int:
    quiet = args.quiet
    n = pages.shape[0]
    check_int(args.batch, "--batch", lo=1)          # a batch of 0 or -5 would store nothing
    sweep_sizes = _sweep_sizes(args.sweep)
    if n == 0:
        raise BadInputError("no pages to bench")

    def progress(it, desc):
        return _progress(it, desc, total=len(it) if hasattr(it, "__len__") else None, quiet=quiet)

    tmp = tempfile.TemporaryDirectory(prefix="devpool-bench-")
    pool = open_pool(args.backend, capacity_bytes=max(64 << 20, 2 * pages.nbytes))
    try:
        zs = Zswap(pool, compressor=args.compressor, max_pool_percent=100,
                   backing=os.path.join(tmp.name, "swap"))
        st0 = pool.stats()
        backend, device = st0["backend"], st0.get("device", st0["backend"])
        if not quiet:
            print(f"devpool bench: {n} pages from {source} on {backend} ({device}), "
                  f"compressor {zs.codec.codec_id}", file=sys.stderr)
        zs.store_batch(np.arange(min(n, 64)), pages[:min(n, 64)])          # warm-up: compile
        zs.load_batch(np.arange(min(n, 64)))
        zs.store(0, pages[0])                                                # and the single-page drivers
        zs.load(0)
        blobs = lz4_blocks(pages)
        passes = Passes()
        got = np.zeros_like(pages)                  # the loads' destination, faulted in once
        for _ in progress(range(PASSES), "passes"):
            passes.time("lz4_c", lz4_compress_loop, pages)
            passes.time("lz4_d", lz4_decompress_loop, blobs)
            ts, tl, stats = _stores_and_loads(zs, pages, args.batch, lambda it, d: it, got)
            passes.add("store", ts)
            passes.add("load", tl)
        # pool efficiency with every page stored
        zs.store_batch(np.arange(n), pages)
        zst = zs.stats()
        pst = pool.stats()
        efficiency = pst["pool_total_size"] / max(1, pst["payload_bytes"])
        zs.invalidate_area()
        # one page at a time, against the bare loop a user would write
        single = single_page_ratios(zs, pages[:min(n, 2000)])
        # throughput against batch size (the plot)
        sweep = []
        for b in progress(sweep_sizes, "sweep"):
            sub = pages[: max(b, min(n, 64 * b))]
            ts, tl, _ = _stores_and_loads(zs, sub, b, lambda it, d: it, got[:sub.shape[0]])
            sweep.append({"batch": b, "store_pages_per_s": sub.shape[0] / ts, "load_pages_per_s": sub.shape[0] / tl})
        zs.close()
    finally:
        pool.close()
        tmp.cleanup()

    res = {
        "backend": backend, "device": device, "compressor": args.compressor, "pages": n, "source": source,
        "batch": args.batch,
        "passes": PASSES,
        "store_pages_per_s": n / passes.best("store"), "load_pages_per_s": n / passes.best("load"),
        "lz4_loop_compress_pages_per_s": n / passes.best("lz4_c"),
        "lz4_loop_decompress_pages_per_s": n / passes.best("lz4_d"),
        "store_vs_lz4_loop": passes.ratio("lz4_c", "store"), "load_vs_lz4_loop": passes.ratio("lz4_d", "load"),
        "compression_ratio": zst["compression_ratio"], "pool_efficiency": efficiency,
        "same_filled_pages": zst["same_filled_pages"], "incompressible_pages": zst["stored_incompressible_pages"],
        "single_page": single,
        "sweep": sweep,
    }
    _print_table(res)
    write_outputs(res, args, _plot)
    return 0


def _print_table(r: dict) -> None:
    gb = 4096 / 1e9
    print(f"devpool bench — backend {r['backend']} ({r['device']}), compressor {r['compressor']}, "
          f"{r['pages']} pages from {r['source']}, batch {r['batch']}; every page verified")
    print(f"  {'':36}{'pages/s':>10}{'GB/s':>8}  x lz4.block loop: median of {r['passes']} passes "
          f"(range; best vs best)")
    for name, key, ratio in (("store_batch", "store_pages_per_s", r["store_vs_lz4_loop"]),
                             ("load_batch", "load_pages_per_s", r["load_vs_lz4_loop"]),
                             ("lz4.block.compress loop (1 thread)", "lz4_loop_compress_pages_per_s", None),
                             ("lz4.block.decompress loop", "lz4_loop_decompress_pages_per_s", None)):
        print(f"  {name:36}{r[key]:>10.0f}{r[key] * gb:>8.2f}  {format_ratio(ratio)}")
    print(f"  compression ratio {r['compression_ratio']:.2f}   pool efficiency (pool_total_size / payload) "
          f"{r['pool_efficiency']:.3f}   same-filled {r['same_filled_pages']}   incompressible {r['incompressible_pages']}")
    print("  one page at a time        p50 / p99 us    bare lz4.block + dict loop    p50 x loop: median (range)")
    for verb, v in r["single_page"].items():
        q = v["p50_vs_bare"]
        print(f"  {verb:24}{v['zswap']['p50_us']:>7.1f} /{v['zswap']['p99_us']:>6.1f}"
              f"{v['bare']['p50_us']:>16.1f} /{v['bare']['p99_us']:>6.1f}"
              f"      {q['median']:.2f}x ({q['low']:.2f}-{q['high']:.2f})")


def _plot(r: dict, f, fmt: str) -> None:
    """The throughput-against-batch-size figure, written to the open file ``f`` as ``fmt``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    b = [s["batch"] for s in r["sweep"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(b, [s["store_pages_per_s"] for s in r["sweep"]], "o-", label=f"store ({r['backend']})")
    ax.plot(b, [s["load_pages_per_s"] for s in r["sweep"]], "s-", label=f"load ({r['backend']})")
    ax.axhline(r["lz4_loop_compress_pages_per_s"], ls="--", c="gray", label="lz4.block compress loop")
    ax.axhline(r["lz4_loop_decompress_pages_per_s"], ls=":", c="gray", label="lz4.block decompress loop")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("pages per batch")
    ax.set_ylabel("pages / s")
    ax.set_title(f"devpool Zswap throughput — {r['device']}, {r['compressor']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(f, format=fmt, dpi=110)
    plt.close(fig)
