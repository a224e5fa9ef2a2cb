"""One page at a time: what a zswap hit costs, next to what it saves.

    python benchmarks/bench_latency.py [--pages F.npy] [--n 2000] [--passes 3]
                                       [--backends host,cuda] [--codecs lz4,lz4-njit] [--json F]

A swap-in fault is one page, and zswap only pays when serving it from the pool costs
less than the swap device it saves. For each backend and codec: p50 / p99 of
``Zswap.store`` / ``load`` / ``invalidate``, one page per call, on real pages (built-in
workloads, or ``--pages``; pages that compress, as zswap's hits are), against in the
same run and on the same pages:

- the bare loop a user would write instead (``devpool.cli.measure.bare_single_page``: a dict
  of ``lz4.block`` blocks), paired pass by pass; the headline is the median over passes
  of p50 / the loop's p50 (target <= 2.0);
- the kernel's zram (lz4, zsmalloc), one page by ``O_DIRECT`` ``pwrite`` / ``preadv``,
  where it can run (root, ``/dev/zram0`` unused; reset afterwards), else a line why;
- the pool alone: ``alloc(n, data=block)`` + ``read(free=True)`` and the four verbs
  ``alloc`` + ``write`` + ``read`` + ``free`` of one object (target <= 5 us);
- where a single load's time goes: the codec's decode alone, the pool's
  ``read_with(.., free=True)`` alone (lending the block where it lies, and the free,
  with a consumer that does nothing), and the rest (the frontend's lock, entry lookup
  and bookkeeping), each timed on its own over the same blocks, beside the bare loop;
  where the load is one compiled call (host pool, ``lz4``: ``devpool.zswap.one_page``),
  the decode alone and everything else.
"""

from __future__ import annotations

import argparse
import os
import time

import lz4.block
import numpy as np

import devpool
from devpool.cli.measure import single_page_ratios
from _common import header, load_pages, save
from _zram import zram_device

PAGE = 4096


def compressible(pages: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` pages that compress and are not same-filled (zswap's pool hits)."""
    keep = []
    for i, p in enumerate(pages):
        w = p.view(np.uint64)
        if (w == w[0]).all():
            continue
        if len(lz4.block.compress(p, store_size=False)) < PAGE:
            keep.append(i)
        if len(keep) == n:
            break
    return np.ascontiguousarray(pages[keep])


def zram_latency(pages: np.ndarray, passes: int) -> dict:
    with zram_device(pages.shape[0] * PAGE) as z:
        if not z:
            return {"skipped": z.why}
        out = np.empty(PAGE, np.uint8)
        runs = []
        for _ in range(passes):
            w, r = [], []
            for slot, p in enumerate(pages):
                t = time.perf_counter()
                z.write(slot, p)
                w.append(time.perf_counter() - t)
            for slot in range(pages.shape[0]):
                t = time.perf_counter()
                z.read(slot, out)
                r.append(time.perf_counter() - t)
                if not np.array_equal(out, pages[slot]):
                    raise RuntimeError(f"zram returned a different page at slot {slot}")
            runs.append((np.percentile(w, 50) * 1e6, np.percentile(r, 50) * 1e6,
                         np.percentile(w, 99) * 1e6, np.percentile(r, 99) * 1e6))
        a = np.array(runs)
        return {"store": {"p50_us": float(np.median(a[:, 0])), "p99_us": float(np.median(a[:, 2]))},
                "load": {"p50_us": float(np.median(a[:, 1])), "p99_us": float(np.median(a[:, 3]))}}


def four_verbs(pool, block: np.ndarray) -> tuple[float, np.ndarray]:
    """One object's ``alloc`` + ``write`` + ``read`` + ``free``: (seconds, what was read)."""
    clock = time.perf_counter
    t = clock()
    h = pool.alloc(block.size)
    pool.write(h, block)
    got = pool.read(h)
    pool.free(h)
    return clock() - t, got


def two_calls(pool, block: np.ndarray) -> tuple[float, np.ndarray]:
    """One object's ``alloc(n, data=)`` + ``read(free=True)`` (zswap's two calls):
    (seconds, what was read)."""
    clock = time.perf_counter
    t = clock()
    got = pool.read(pool.alloc(block.size, data=block), free=True)
    return clock() - t, got


def pool_latency(backend: str, pages: np.ndarray) -> dict:
    """Per object: the four verbs, and the two-call form zswap uses."""
    blocks = [np.frombuffer(lz4.block.compress(p, store_size=False), np.uint8) for p in pages]
    with devpool.open_pool(backend, 64 << 20) as pool:
        for b in blocks[:100]:                                  # warm-up
            pool.read(pool.alloc(b.size, data=b), free=True)
        four, two = [], []
        for b in blocks:
            four.append(four_verbs(pool, b)[0])
            seconds, got = two_calls(pool, b)
            two.append(seconds)
        assert np.array_equal(got, blocks[-1])
    return {"alloc_write_read_free_p50_us": float(np.percentile(four, 50) * 1e6),
            "alloc_data_read_free_p50_us": float(np.percentile(two, 50) * 1e6)}


def load_breakdown(zs, pages: np.ndarray, passes: int) -> dict:
    """p50 of a single ``Zswap.load`` and of its two big parts timed on their own: the
    codec's decode of the same blocks, and the pool's ``read_with(h, .., free=True)`` of
    objects the size of those blocks (a consumer that only takes the length: what the pool does
    around the decode); the remainder is the frontend's own work."""
    codec, pool = zs.codec, zs.pool
    blocks = [np.array(b[:n]) for b, n in map(codec.compress_page_trusted, pages) if 0 < n < PAGE]
    clock = time.perf_counter
    rows = []
    for _ in range(passes):
        for off, p in enumerate(pages):
            zs.store(off, p)
        load = []
        for off in range(pages.shape[0]):
            t = clock()
            zs.load(off)
            load.append(clock() - t)
        dec = []
        for b in blocks:
            t = clock()
            codec.decompress_page_trusted(b)
            dec.append(clock() - t)
        handles = [pool.alloc(b.size, data=b) for b in blocks]
        rd = []
        for h in handles:
            t = clock()
            pool.read_with(h, len, free=True)
            rd.append(clock() - t)
        rows.append([np.percentile(x, 50) * 1e6 for x in (load, dec, rd)])
    a = np.median(np.array(rows), axis=0)
    # a compiled single page (devpool.zswap.one_page) calls neither the codec's Python
    # decode nor read_with: then the rest is everything but the decode
    compiled = zs._load1 is not None
    return {"load_p50_us": float(a[0]), "decode_p50_us": float(a[1]), "pool_read_with_free_p50_us": float(a[2]),
            "frontend_rest_us": float(a[0] - a[1] - (0 if compiled else a[2])), "compiled_page": compiled}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", default="")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--backends", default="host,cuda")
    ap.add_argument("--codecs", default="lz4,lz4-njit")
    ap.add_argument("--json")
    args = ap.parse_args()
    all_pages, source = load_pages(args.pages)
    pages = compressible(all_pages, args.n)
    r = header("bench_latency", pages=source, n=int(pages.shape[0]), passes=args.passes)
    print(f"# {r['command']}  ({r['date']}, {r['machine']}; {pages.shape[0]} compressible pages of {source})")
    r["zram"] = zram_latency(pages, args.passes)
    z = r["zram"]
    zram_line = (f"zram: skipped ({z['skipped']})" if "skipped" in z else
                 f"kernel zram (lz4), O_DIRECT: store p50 {z['store']['p50_us']:.1f} us, "
                 f"load p50 {z['load']['p50_us']:.1f} us")
    r["runs"] = []
    print(f"{'backend':8}{'codec':10}{'verb':12}{'p50 us':>8}{'p99 us':>8}{'loop p50':>10}   p50 x loop (range)")
    for backend in args.backends.split(","):
        ok, why = devpool.available_backends().get(backend, (False, "unknown backend"))
        if not ok or (backend == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"):
            print(f"{backend:8}skipped: {why if not ok else 'only the CUDA simulator here'}")
            continue
        r["runs"].append({"backend": backend, "pool": pool_latency(backend, pages)})
        for codec in args.codecs.split(","):
            with devpool.open_pool(backend, 256 << 20) as pool, \
                    devpool.Zswap(pool, compressor=codec, max_pool_percent=100) as zs:
                w = min(64, pages.shape[0])
                zs.store_batch(np.arange(w), pages[:w])               # warm-up: compile
                zs.load_batch(np.arange(w))
                for i in range(min(200, pages.shape[0])):
                    zs.store(i, pages[i])
                    zs.load(i)
                res = single_page_ratios(zs, pages, args.passes)
                parts = load_breakdown(zs, pages, args.passes)
            r["runs"].append({"backend": backend, "codec": codec, "single_page": res, "load_parts": parts})
            save(r, args.json, complete=False)                        # kept if the run is stopped
            for verb, v in res.items():
                q = v["p50_vs_bare"]
                print(f"{backend:8}{codec:10}{verb:12}{v['zswap']['p50_us']:>8.1f}{v['zswap']['p99_us']:>8.1f}"
                      f"{v['bare']['p50_us']:>10.1f}   {q['median']:.2f}x ({q['low']:.2f}-{q['high']:.2f})")
            if parts["compiled_page"]:
                print(f"{'':18}one load, one compiled call (entry, pool, decode): decode alone "
                      f"{parts['decode_p50_us']:.2f} us + the rest {parts['frontend_rest_us']:.2f} us = "
                      f"{parts['load_p50_us']:.2f} us (bare loop, decode included: "
                      f"{res['load']['bare']['p50_us']:.2f} us)")
            else:
                print(f"{'':18}one load, p50 of each part on its own: decode {parts['decode_p50_us']:.2f} us + "
                      f"pool read_with(free=True) {parts['pool_read_with_free_p50_us']:.2f} us + the frontend's "
                      f"rest {parts['frontend_rest_us']:.2f} us = {parts['load_p50_us']:.2f} us "
                      f"(bare loop, decode included: {res['load']['bare']['p50_us']:.2f} us)")
        p = r["runs"][-len(args.codecs.split(",")) - 1]["pool"]
        print(f"{backend:8}pool alone: alloc+write+read+free p50 {p['alloc_write_read_free_p50_us']:.2f} us; "
              f"alloc(data=)+read(free=True) p50 {p['alloc_data_read_free_p50_us']:.2f} us")
    print(zram_line)
    save(r, args.json)


if __name__ == "__main__":
    main()
