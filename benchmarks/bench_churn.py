"""Steady state under churn: what the pool holds against what is live, over time.

    python benchmarks/bench_churn.py [--pages F.npy] [--live 20000] [--churn 200000]
                                     [--batch 500] [--rounds 200] [--json F] [--plot F.png]

zswap frees and stores all day, so a pool's efficiency after one fill says little. On
real LZ4 blocks (pages of the built-in workloads, or ``--pages``) this measures, in one
run:

1. *pool churn*: ``--live`` objects, then ``--churn`` random frees, each followed by a
   store of a new block (in batches of ``--batch``): ``pool_total_size`` / live payload
   over time (steady state = median of the second half), after ``compact()``, the
   cleaning's figures (steps, segments, bytes moved) and its share of the churn time.
2. *the kernel's zram* on the same churn where it can run (root, ``/dev/zram0`` unused):
   ``--live`` pages written, then ``--churn`` random overwrites, one page by O_DIRECT;
   ``mem_used_total / compr_data_size`` from ``mm_stat``, before and after its compaction.
3. *Zswap under churn*: ``--live`` pages stored, then ``--rounds`` rounds that load
   ``--batch`` random live pages and store ``--batch`` new ones, at the default 20 % limit
   sized so the live payload is about half the limit: held / live over time,
   ``pool_limit_hit`` (should stay 0: dead bytes are not pressure), and store_batch
   throughput under churn against the same batches into a fresh pool (paired passes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import lz4.block
import numpy as np

import devpool
from _common import header, load_pages, save
from _zram import zram_device

PAGE = 4096


def blocks_of(pages: np.ndarray) -> list[np.ndarray]:
    """Each page's lz4 block (as zswap stores it: the page itself if it does not shrink)."""
    out = []
    for p in pages:
        b = lz4.block.compress(p, store_size=False)
        out.append(np.frombuffer(b, np.uint8) if len(b) < PAGE else p)
    return out


def pool_churn(blocks, live: int, churn: int, batch: int, rng, backend: str) -> dict:
    nb = len(blocks)
    sizes = np.array([b.size for b in blocks], np.int64)
    cap = int(sizes.mean() * live * 4) + (64 << 20)
    pool = devpool.open_pool(backend, cap, segment_bytes=256 << 10 if live >= 5000 else 16 << 10)
    handles = np.zeros(live, np.int64)
    kind = np.zeros(live, np.int64)                 # which block each live object holds
    pick = rng.integers(0, nb, live)
    for lo in range(0, live, batch):
        ks = pick[lo:lo + batch]
        hs = pool.alloc_batch(sizes[ks])
        pool.write_batch(hs, np.concatenate([blocks[k] for k in ks]))
        handles[lo:lo + batch], kind[lo:lo + batch] = hs, ks
    timeline = []
    t_total = 0.0
    clean0 = pool.stats()["clean_seconds"]
    done = 0
    while done < churn:
        n = min(batch, churn - done)
        victims = rng.choice(live, n, replace=False)
        ks = rng.integers(0, nb, n)
        payload = np.concatenate([blocks[k] for k in ks])
        t = time.perf_counter()
        pool.free_batch(handles[victims])
        hs = pool.alloc_batch(sizes[ks])
        pool.write_batch(hs, payload)
        t_total += time.perf_counter() - t
        handles[victims], kind[victims] = hs, ks
        done += n
        st = pool.stats()
        timeline.append((done, st["pool_total_size"] / st["payload_bytes"]))
    st = pool.stats()
    # every live object still holds its own block
    check = rng.choice(live, min(live, 2000), replace=False)
    got, lens = pool.read_batch(handles[check])
    assert np.array_equal(lens, sizes[kind[check]])
    assert got.tobytes() == b"".join(blocks[k].tobytes() for k in kind[check])
    ratios = np.array([r for _, r in timeline])
    steady = float(np.median(ratios[len(ratios) // 2:]))
    pool.compact()
    after = pool.stats()
    pool.close()
    return {"held_per_live_steady": steady, "held_per_live_max": float(ratios.max()),
            "held_per_live_after_compact": after["pool_total_size"] / after["payload_bytes"],
            "clean_share_of_churn_time": (st["clean_seconds"] - clean0) / t_total,
            "clean_steps": st["clean_steps"], "cleaned_segments": st["cleaned_segments"],
            "cleaned_bytes_moved": st["cleaned_bytes_moved"], "payload_bytes": st["payload_bytes"],
            "churn_seconds": t_total, "timeline": timeline}


def zram_churn(pages: np.ndarray, live: int, churn: int, rng) -> dict:
    with zram_device(live * PAGE) as z:
        if not z:
            return {"skipped": z.why}
        pick = rng.integers(0, pages.shape[0], live)
        for slot in range(live):
            z.write(slot, pages[pick[slot]])
        timeline = []
        for i in range(churn):
            z.write(int(rng.integers(0, live)), pages[int(rng.integers(0, pages.shape[0]))])
            if (i + 1) % 5000 == 0:
                m = z.mm_stat()
                timeline.append((i + 1, m["mem_used_total"] / max(1, m["compr_data_size"])))
        m = z.mm_stat()
        z.compact()
        mc = z.mm_stat()
        return {"held_per_live": m["mem_used_total"] / m["compr_data_size"],
                "held_per_live_after_compact": mc["mem_used_total"] / mc["compr_data_size"],
                "mm_stat": m, "mm_stat_after_compact": mc, "timeline": timeline}


def zswap_churn(pages: np.ndarray, live: int, rounds: int, batch: int, rng, backend: str,
                compressor: str) -> dict:
    """Store ``live`` pages, then rounds of (load ``batch`` random live, store ``batch``
    new); paired with the same store batches into a fresh pool for throughput."""
    npages = pages.shape[0]
    pick = rng.integers(0, npages, live)
    sample = pick[:2000]
    blocks = sum(min(len(lz4.block.compress(pages[k], store_size=False)), PAGE) for k in sample)
    payload = blocks / sample.size * live
    capacity = int(payload * 2 / 0.20)                 # live payload about half the 20 % limit
    segment = 256 << 10 if capacity * 0.2 >= 16 * (256 << 10) else 16 << 10   # small runs: small segments
    pool = devpool.open_pool(backend, capacity, segment_bytes=segment)
    tmp = tempfile.TemporaryDirectory(prefix="devpool-churn-")
    zs = devpool.Zswap(pool, compressor=compressor, max_pool_percent=20,
                       backing=os.path.join(tmp.name, "swap"))   # incompressible pages kept as-is
    for lo in range(0, live, batch):
        zs.store_batch(np.arange(lo, min(live, lo + batch)), pages[pick[lo:lo + batch]])
    zs.load_batch(np.arange(batch))              # warm-up: compile the decoder before timing
    zs.store_batch(np.arange(batch), pages[pick[:batch]])
    fresh_pool = devpool.open_pool(backend, capacity, segment_bytes=segment)
    fresh = devpool.Zswap(fresh_pool, compressor=compressor, max_pool_percent=100,
                          backing=os.path.join(tmp.name, "fresh"))
    timeline, ratios = [], []
    clean0 = pool.stats()["clean_seconds"]
    t_store = t_all = 0.0
    for r in range(rounds):
        offs = rng.choice(live, batch, replace=False)
        t = time.perf_counter()
        zs.load_batch(offs)
        t_all += time.perf_counter() - t
        new = pages[rng.integers(0, npages, batch)]
        t = time.perf_counter()
        zs.store_batch(offs, new)
        dt = time.perf_counter() - t
        t_store += dt
        t_all += dt
        fresh.invalidate_area()                          # the same batch into an empty pool
        t = time.perf_counter()
        fresh.store_batch(np.arange(batch), new)
        ratios.append((time.perf_counter() - t) / dt)
        st = zs.stats()
        timeline.append((r + 1, st["pool_total_size"] / max(1, st["stored_compressed_bytes"])))
    st = zs.stats()
    pst = pool.stats()
    held = np.array([h for _, h in timeline])
    out = {"limit_bytes": st["max_pool_bytes"], "pool_limit_hit": st["pool_limit_hit"],
           "written_back_pages": st["written_back_pages"], "backing_direct_writes": st["backing_direct_writes"],
           "reject_alloc_fail": st["reject_alloc_fail"],
           "held_per_live_steady": float(np.median(held[len(held) // 2:])),
           "held_per_live_max": float(held.max()),
           "store_throughput_vs_fresh_pool": {"median": float(np.median(ratios)),
                                              "low": float(np.min(ratios)), "high": float(np.max(ratios))},
           "clean_share_of_load_and_store_time": (pst["clean_seconds"] - clean0) / t_all,
           "timeline": timeline}
    zs.close(); fresh.close(); pool.close(); fresh_pool.close(); tmp.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", default="")
    ap.add_argument("--backend", default="host")
    ap.add_argument("--compressor", default="lz4-njit")
    ap.add_argument("--live", type=int, default=20000)
    ap.add_argument("--churn", type=int, default=200000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-zram", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    pages, source = load_pages(args.pages)
    rng = np.random.default_rng(args.seed)
    r = header("bench_churn", pages=source, live=args.live, churn=args.churn, batch=args.batch,
               backend=args.backend, compressor=args.compressor)
    blocks = blocks_of(pages)
    print(f"# {r['command']}  ({r['date']}, {r['machine']}, {source}: {pages.shape[0]} pages)")
    r["pool"] = pool_churn(blocks, args.live, args.churn, args.batch, rng, args.backend)
    p = r["pool"]
    print(f"pool, {args.live} live, {args.churn} frees+stores: held/live steady {p['held_per_live_steady']:.3f} "
          f"(max {p['held_per_live_max']:.3f}), after compact {p['held_per_live_after_compact']:.3f}; "
          f"cleaning: {p['clean_steps']} steps, {p['cleaned_segments']} segments, "
          f"{p['cleaned_bytes_moved'] / 2**20:.1f} MiB moved, {100 * p['clean_share_of_churn_time']:.1f} % of churn time")
    r["zram"] = {"skipped": "--no-zram"} if args.no_zram else zram_churn(pages, args.live, args.churn, rng)
    z = r["zram"]
    if "skipped" in z:
        print(f"zram: skipped ({z['skipped']})")
    else:
        print(f"zram (zsmalloc), same churn: held/live {z['held_per_live']:.3f}, "
              f"after compact {z['held_per_live_after_compact']:.3f}")
    r["zswap"] = zswap_churn(pages, args.live, args.rounds, args.batch, rng, args.backend, args.compressor)
    zw = r["zswap"]
    tp = zw["store_throughput_vs_fresh_pool"]
    print(f"Zswap, {args.live} live, {args.rounds} rounds of {args.batch} loads + stores, limit "
          f"{zw['limit_bytes'] / 2**20:.1f} MiB: held/live steady {zw['held_per_live_steady']:.3f} "
          f"(max {zw['held_per_live_max']:.3f}), pool_limit_hit {zw['pool_limit_hit']}; store_batch under "
          f"churn {tp['median']:.2f}x a fresh pool's ({tp['low']:.2f}-{tp['high']:.2f}); cleaning "
          f"{100 * zw['clean_share_of_load_and_store_time']:.1f} % of load + store time")
    save(r, args.json)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        x, y = zip(*p["timeline"])
        ax.plot(x, y, label="devpool pool (cleaning as it goes)")
        if "timeline" in z and z["timeline"]:
            x, y = zip(*z["timeline"])
            ax.plot(x, y, label="kernel zram (zsmalloc)")
        ax.set_xlabel("frees + stores")
        ax.set_ylabel("bytes held / live payload")
        ax.set_title(f"Churn on {args.live} live real LZ4 blocks")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)


if __name__ == "__main__":
    main()
