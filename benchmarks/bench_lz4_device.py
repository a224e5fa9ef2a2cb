"""lz4-device's kernels alone, pages already on the GPU, next to raw pinned-copy bandwidth.

    python benchmarks/bench_lz4_device.py [--pages F.npy] [--max-pages 65536] [--workers 4096,16384,65536]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/bench_lz4_device.py --smoke   # CPU smoke test

What issue 6 asks of a CUDA machine: device compress and decompress GB/s (uncompressed
bytes) on real pages, next to the raw pinned host-to-device / device-to-host bandwidth
of the same bytes, measured in the same run (targets on an H100: >= 20 GB/s compress,
>= 60 GB/s decompress). The kernels are timed alone (input in device memory, output
left there, one synchronisation): what the GPU's LZ4 costs, apart from the PCIe copies
that ``bench_zswap --backend cuda --compressor lz4-device`` includes. Compression runs
with several worker counts (``lz4-device`` gives each worker thread a 16 KiB hash table
in global memory and uses 4096; more workers means more pages in flight), decompression
with one thread per page. Every block is checked against ``lz4.block`` and every
decoded page against the original. Median of ``--repeats`` (best beside it). Where
nvCOMP runs (``nvidia-nvcomp-cu13``), its batched LZ4 (RAW, 4 KiB chunks) is timed on
the same pages, and blocks are checked both ways (nvCOMP's decoded by ``lz4.block``,
ours decoded by nvCOMP).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from numba import cuda

import devpool
from devpool.cli.measure import lz4_blocks
from _common import header, load_pages, pack, save
from bench_device import raw_bandwidth


def timed(launch, repeats: int) -> list[float]:
    """Seconds per call of ``launch`` (a kernel launch), synchronised each time."""
    with warnings.catch_warnings():                 # the simulator's numpy scalars warn on wraparound
        warnings.simplefilter("ignore", RuntimeWarning)
        launch()
        cuda.synchronize()                          # compile and warm up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            launch()
            cuda.synchronize()
            times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> dict:
    from devpool.kernels import _lz4_core as core
    from devpool.kernels._cuda import launch
    from devpool.kernels.lz4_device import TABLE, compress_kernel, decompress_kernel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages")
    ap.add_argument("--max-pages", type=int, default=65536)
    from devpool.kernels.lz4_device import THREADS
    ap.add_argument("--workers", default="default,4096,65536",
                    help="compression worker threads to try ('default': what lz4-device uses on this device)")
    ap.add_argument("--threads", type=int, default=THREADS, help="threads per block")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (for the CUDA simulator)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.smoke:
        rng = np.random.default_rng(0)
        pages = np.repeat(rng.integers(0, 4, (4, 64), dtype=np.uint8), 64, axis=1)
        source, args.workers, args.threads, args.repeats = "synthetic (smoke)", "2,4", 1, 1
    else:
        pages, source = load_pages(args.pages)
        reps = -(-args.max_pages // pages.shape[0])            # tile the captured pages up to the size
        pages = np.ascontiguousarray(np.tile(pages, (reps, 1))[:args.max_pages])
    n = pages.shape[0]
    nbytes = pages.size
    ref = lz4_blocks(pages)
    ref_data, ref_len, bounds = pack(ref)
    ref_starts = bounds[:-1]

    pool = devpool.open_pool("cuda", capacity_bytes=max(64 << 20, 2 * nbytes))
    st = pool.stats()
    h2d, d2h = raw_bandwidth(pool.storage, nbytes, max(args.repeats, 3))
    res = header("bench_lz4_device", device=st["device"], pages=n, pages_source=source, threads_per_block=args.threads,
                 lz4_ratio=float(nbytes / ref_len.sum()), raw_h2d_GBps=nbytes / h2d / 1e9, raw_d2h_GBps=nbytes / d2h / 1e9,
                 repeats=args.repeats, rows=[])
    print(f"# bench_lz4_device {res['date']} device={res['device']}; {n} pages from {source} "
          f"(lz4 ratio {res['lz4_ratio']:.2f}); {args.threads} threads per block; median of {args.repeats}")
    print(f"{'':34}{'GB/s':>8}{'best':>8}{'pages/s':>12}{'x raw H2D':>11}")
    for label, gbps in (("raw pinned host-to-device copy", res["raw_h2d_GBps"]),
                        ("raw pinned device-to-host copy", res["raw_d2h_GBps"])):
        print(f"{label:<34}{gbps:>8.1f}{'':>8}{gbps * 1e9 / 4096:>12.0f}{gbps / res['raw_h2d_GBps']:>11.2f}")

    def report(label: str, kind: str, times: list[float], **extra) -> None:
        med, best = float(np.median(times)), min(times)
        row = {"kernel": kind, "GBps": nbytes / med / 1e9, "best_GBps": nbytes / best / 1e9,
               "pages_per_s": n / med, "vs_raw_h2d": h2d / med, **extra}
        res["rows"].append(row)
        save(res, args.json, complete=False)                          # kept if the run is stopped
        print(f"{label:<34}{row['GBps']:>8.1f}{row['best_GBps']:>8.1f}{row['pages_per_s']:>12.0f}"
              f"{row['vs_raw_h2d']:>11.2f}")

    d_pages = cuda.to_device(pages)
    d_out = cuda.device_array((n, core.PAGE_BOUND), np.uint8)
    d_len = cuda.device_array(n, np.int64)
    codec_workers = devpool.get_codec("lz4-device").workers(n)
    for workers in sorted({min(codec_workers if w == "default" else int(w), n) for w in args.workers.split(",")}):
        d_tab = cuda.device_array(workers * TABLE, np.int32)
        grid = -(-workers // args.threads)
        times = timed(lambda: launch(compress_kernel, grid, args.threads, None, d_pages, d_out, d_len, d_tab, workers),
                      args.repeats)
        lengths = d_len.copy_to_host()
        assert (lengths == ref_len).all(), "a device block's length differs from lz4.block's"
        check = min(n, 256)                          # bytes of the first blocks, exactly
        rows = d_out[:check].copy_to_host()
        assert all(rows[i, :ref_len[i]].tobytes() == ref[i] for i in range(check)), "a block differs from lz4.block's"
        report(f"compress, {workers} worker threads", "compress", times, workers=workers)

    d_data = cuda.to_device(ref_data)
    d_starts, d_lens = cuda.to_device(ref_starts), cuda.to_device(ref_len)
    d_pages_out = cuda.device_array((n, 4096), np.uint8)
    d_ok = cuda.device_array(n, np.bool_)
    grid = -(-n // args.threads)
    times = timed(lambda: launch(decompress_kernel, grid, args.threads, None, d_data, d_starts, d_lens, d_pages_out, d_ok),
                  args.repeats)
    assert d_ok.copy_to_host().all() and (d_pages_out.copy_to_host() == pages).all(), "a decoded page differs"
    report("decompress, one thread per page", "decompress", times, workers=n)
    nvcomp_rows(pages, ref, ref_data, ref_len, d_data, res, report, args.repeats)
    pool.close()
    save(res, args.json)
    return res


def nvcomp_rows(pages, ref, ref_data, ref_len, d_ours, res, report, repeats) -> None:
    """nvCOMP's batched LZ4 (RAW, 4 KiB chunks) on the same pages, pages and blocks
    already on the device, and blocks checked both ways: nvCOMP's decoded by lz4.block,
    ours (= lz4.block's) decoded by nvCOMP."""
    try:
        import cupy as cp
        from nvidia import nvcomp
        codec = nvcomp.Codec(algorithm="LZ4", bitstream_kind=nvcomp.BitstreamKind.RAW, uncomp_chunk_size=4096)
    except Exception as exc:
        print(f"nvCOMP: skipped ({type(exc).__name__}: {exc})")
        res["nvcomp"] = f"skipped: {exc}"
        return
    import lz4.block
    n = pages.shape[0]
    d_pages = cp.asarray(pages.reshape(-1))
    srcs = nvcomp.as_arrays(d_pages, (np.arange(n) * 4096).tolist(), [4096] * n)
    state = {}

    def encode():
        state["enc"] = codec.encode(srcs)
        cp.cuda.Device().synchronize()
    times = timed_host(encode, repeats)
    sizes = np.array(state["enc"].buffer_sizes, np.int64)
    host = state["enc"].cpu()
    for i in range(min(n, 256)):                               # nvCOMP's blocks decode with lz4.block
        block = np.asarray(host[i]).view(np.uint8).reshape(-1).tobytes()
        assert lz4.block.decompress(block, uncompressed_size=4096) == pages[i].tobytes(), "nvCOMP block differs"
    res["nvcomp_lz4_ratio"] = float(pages.size / sizes.sum())
    report(f"nvCOMP compress (ratio {res['nvcomp_lz4_ratio']:.2f})", "nvcomp-compress", times, workers=n)
    room = -(-ref_len // 16) * 16                              # ours, at nvCOMP's alignment
    at = np.concatenate([[0], np.cumsum(room)[:-1]]).astype(np.int64)
    buf = np.zeros(int(room.sum()), np.uint8)
    for a, b in zip(at.tolist(), ref):
        buf[a:a + len(b)] = np.frombuffer(b, np.uint8)
    blocks = nvcomp.as_arrays(cp.asarray(buf), at.tolist(), ref_len.tolist())

    def decode():
        state["dec"] = codec.decode(blocks)
        cp.cuda.Device().synchronize()
    times = timed_host(decode, repeats)
    dec = state["dec"].cpu()
    assert all(np.asarray(dec[i]).view(np.uint8).tobytes() == pages[i].tobytes() for i in range(min(n, 256))), \
        "nvCOMP decoded one of our blocks wrongly"
    report("nvCOMP decompress (our blocks)", "nvcomp-decompress", times, workers=n)


def timed_host(fn, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` (which synchronises), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


if __name__ == "__main__":
    main()
