"""Device pool copy-in / copy-out against raw pinned-copy bandwidth, same run.

    python benchmarks/bench_device.py [--pages F.npy] [--batches 1,16,256,4096,65536]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/bench_device.py --smoke   # CPU smoke test

Baseline (the physical limit on this machine): one pinned host-to-device and one
device-to-host copy of the same number of bytes. Subject: ``write_batch`` /
``read_batch`` of real-page-sized objects (LZ4 blocks of captured pages) on the cuda
backend. Reported per batch size: pages/s, GB/s of payload, and the ratio to raw
bandwidth (target on an H100: >= 70 % at batch >= 4096); device-side compaction
throughput; a single 4 KiB write and read (each one direct copy) in microseconds, p50 / p99.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import devpool
from devpool.cli.measure import lz4_blocks
from _common import header, load_pages, pack, save


def raw_bandwidth(storage, nbytes: int, repeats: int) -> tuple[float, float]:
    """Seconds for one pinned H2D and one D2H copy of ``nbytes`` (best of ``repeats``)."""
    storage._stage(nbytes)
    mem, pinned, dev, stream = storage.mem, storage._pinned, storage._dev, storage.stream
    h2d = d2h = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mem.h2d(dev, 0, pinned, 0, nbytes, stream)
        mem.sync(stream)
        h2d = min(h2d, time.perf_counter() - t)
        t = time.perf_counter()
        mem.d2h(pinned, 0, dev, 0, nbytes, stream)
        mem.sync(stream)
        d2h = min(d2h, time.perf_counter() - t)
    return h2d, d2h


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages")
    ap.add_argument("--batches", default="1,16,256,1024,4096,16384,65536")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (for the CUDA simulator)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batches, args.repeats = "1,4,16", 1
    batches = [int(b) for b in args.batches.split(",")]
    if args.smoke:
        rng = np.random.default_rng(0)
        pages = rng.integers(0, 4, (64, 4096), dtype=np.uint8)
        source = "synthetic (smoke)"
    else:
        pages, source = load_pages(args.pages)
    blobs = [b[:4096] for b in lz4_blocks(pages)]
    need = max(batches)
    reps = -(-need // len(blobs))
    blobs = (blobs * reps)[:need]
    payload, sizes, starts = pack(blobs)

    pool = devpool.open_pool("cuda", capacity_bytes=int(max(64 << 20, 3 * payload.size)))
    st = pool.stats()
    res = header("bench_device", device=st["device"], memory=st.get("memory"), pages_source=source,
                 mean_object_bytes=float(sizes.mean()))
    print(f"# bench_device {res['date']} device={res['device']} ({st.get('memory')}); objects: LZ4 blocks "
          f"of {source}, mean {sizes.mean():.0f} B")
    print(f"{'batch':>7}{'write pages/s':>15}{'GB/s':>7}{'/ raw H2D':>10}{'read pages/s':>14}{'GB/s':>7}{'/ raw D2H':>10}")
    rows = []
    for b in batches:
        hs = pool.alloc_batch(sizes[:b])
        nbytes = int(starts[b])
        pool.write_batch(hs, payload[:nbytes], sizes[:b])            # warm-up (compile, staging)
        out = np.empty(nbytes, np.uint8)
        pool.read_batch(hs, out=out)
        h2d, d2h = raw_bandwidth(pool.storage, nbytes, args.repeats)
        w = r = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            pool.write_batch(hs, payload[:nbytes], sizes[:b])
            w = min(w, time.perf_counter() - t)
            t = time.perf_counter()
            pool.read_batch(hs, out=out)
            r = min(r, time.perf_counter() - t)
        assert out.tobytes() == payload[:nbytes].tobytes(), "a read differs from what was written"
        row = {"batch": b, "bytes": nbytes, "write_pages_per_s": b / w, "write_GBps": nbytes / w / 1e9,
               "raw_h2d_GBps": nbytes / h2d / 1e9, "write_vs_raw": h2d / w,
               "read_pages_per_s": b / r, "read_GBps": nbytes / r / 1e9,
               "raw_d2h_GBps": nbytes / d2h / 1e9, "read_vs_raw": d2h / r}
        rows.append(row)
        save(dict(res, rows=rows), args.json, complete=False)          # kept if the run is stopped
        print(f"{b:>7}{row['write_pages_per_s']:>15.0f}{row['write_GBps']:>7.2f}{row['write_vs_raw']:>10.2f}"
              f"{row['read_pages_per_s']:>14.0f}{row['read_GBps']:>7.2f}{row['read_vs_raw']:>10.2f}")
        pool.free_batch(hs)
    # compaction: fill, free every other object, compact (device to device)
    n = min(need, 65536 if not args.smoke else 16)
    hs = pool.alloc_batch(sizes[:n])
    pool.write_batch(hs, payload[:int(starts[n])], sizes[:n])
    pool.free_batch(hs[::2])
    moved = int(sizes[:n][1::2].sum())
    t = time.perf_counter()
    pool.compact()
    dt = time.perf_counter() - t
    data, _ = pool.read_batch(hs[1::2])
    assert data.tobytes() == b"".join(blobs[i] for i in range(1, n, 2))
    res["compaction_GBps"] = moved / dt / 1e9
    print(f"compaction: {moved / 2**20:.1f} MiB live moved in {dt * 1e3:.1f} ms ({res['compaction_GBps']:.2f} GB/s)")
    # single 4 KiB page: write and read each one direct copy (issue 11: load p50 <= 20 us)
    h = pool.alloc(4096)
    page = np.frombuffer(blobs[0].ljust(4096, b"\x01"), np.uint8).copy()
    back = np.empty(4096, np.uint8)
    wl, rl = [], []
    for _ in range(5 if args.smoke else 2000):
        t = time.perf_counter()
        pool.write(h, page)
        t1 = time.perf_counter()
        pool.read(h, out=back)
        rl.append(time.perf_counter() - t1)
        wl.append(t1 - t)
    assert back.tobytes() == page.tobytes(), "a single-page read differs from what was written"
    for name, lat in (("write", wl), ("read", rl)):
        res[f"single_{name}_4k_p50_us"] = float(np.percentile(lat, 50) * 1e6)
        res[f"single_{name}_4k_p99_us"] = float(np.percentile(lat, 99) * 1e6)
    print(f"single 4 KiB page: write p50 {res['single_write_4k_p50_us']:.1f} us (p99 "
          f"{res['single_write_4k_p99_us']:.1f}), read p50 {res['single_read_4k_p50_us']:.1f} us "
          f"(p99 {res['single_read_4k_p99_us']:.1f})")
    res["rows"] = rows
    pool.close()
    save(res, args.json)
    return res


if __name__ == "__main__":
    main()
