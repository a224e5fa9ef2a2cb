"""Cost as zswap grows: 10^4, 10^5, 10^6 (and 4 x 10^6) stored pages, side by side.

    python benchmarks/bench_growth.py [--pages F.npy] [--sizes 10000,100000,1000000,4000000]
        [--layouts dense,sparse] [--passes 7] [--probe 2000] [--batch 1024] [--batch-pages 16384]
        [--compressor lz4] [--sweep-to 4000000]
        [--replay-pages 1000000] [--bare-up-to 1000000] [--json F] [--plot F.png]

A GPU pool holds tens of gigabytes and a swap device sees millions of pages; what a
page costs must not grow with them. For every size and offset layout a ``Zswap`` over
a host pool is filled with real pages (the capture workloads, or ``--pages``; page
``k % P`` stored at the ``k``-th offset), then all of them are timed in one process,
pass after pass, in alternating order:

- one page at a time: ``load`` of stored pages picked at random (cold entries, as a
  swap-in finds them), ``store`` of the same pages back, ``invalidate`` of others
  (stored back, untimed) — p50 per pass; the headline is the median over passes of
  p50(size) / p50(smallest size) with the range (target at 10^6: <= 1.25);
- batch throughput: ``store_batch`` of ``--batch-pages`` fresh pages, ``--batch`` at a
  time, then ``load_batch`` of them (target at 10^6: >= 0.90 of the smallest size);
- ``stats()`` and ``compact()`` time (``compact`` is documented as a whole-pool operation);
- beside them, in the same alternation, the loop a user would write instead at each size
  (up to ``--bare-up-to``): a dict of ``lz4.block`` blocks over the same kind of offsets,
  each block its own object, its ``pop`` + decompress, compress + insert and ``del`` timed
  the same way. Its growth is what the memory alone costs (a 10^4 store fits in this
  machine's caches, a 10^6 one does not): the floor devpool's growth is read against.

Offsets are *dense* (0..N-1) or *sparse* (spread at random over a swap device's whole
range, ``nr_pages`` = 2**32). Host memory per stored page outside the pool is measured
in a fresh process per size and layout (no allocator state from other runs): RSS
growth while filling, minus ``pool_total_size`` (and again once ``malloc_trim`` gave the C
heap's freed memory back: the fill's batch temporaries); ``tracemalloc``'s growth beside it
(numpy's arrays are traced, the pool's mmap'd arena is not); and the structures by
name: the entry table's slot records (of which 8 bytes a slot are the LRU's links) and
its index, the pool's handle table and its allocator's segment arrays (target: <= 64
bytes in all, dense and sparse; the kernel keeps ~60-70). A row lands at one point of
each table's growth cycle, so the tables alone are also swept: filled to ``--sweep-to``
entries a batch at a time (no pages, no pool), their bytes per entry after every batch,
worst and mean over sizes. Last, ``devpool replay`` of
a zipf trace over ``--replay-pages`` pages against one over 10^4, both in fresh
processes: fault p50 and time per access.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

import devpool
from devpool.cli.measure import bare_single_page
from devpool.zswap import entries
from _common import header, load_pages, mixed, ratio_spread, save

PAGE = 4096
NR_PAGES = 1 << 32
SPARSE_SEED = 20261207


def _compressible(pages: np.ndarray) -> np.ndarray:
    """Mask of pages the pool holds compressed (not same-filled, lz4 shrinks them)."""
    import lz4.block
    w = pages.view(np.uint64)
    same = (w == w[:, :1]).all(axis=1)
    small = np.array([len(lz4.block.compress(p, store_size=False)) < PAGE for p in pages])
    return ~same & small


def _offsets(n: int, layout: str, extra: int) -> np.ndarray:
    """``n + extra`` distinct offsets: the first ``n`` are filled, the rest kept fresh
    for the batch passes. Dense: 0.. in order; sparse: spread over 0..2**32-1."""
    if layout == "dense":
        return np.arange(n + extra, dtype=np.int64)
    rng = np.random.default_rng(SPARSE_SEED + n)
    got = np.unique(rng.integers(0, NR_PAGES, int((n + extra) * 1.02) + 64, dtype=np.int64))
    return rng.permutation(got)[:n + extra]


def _malloc_trim() -> None:
    """Give the C heap's free memory back to the OS (glibc), where there is one."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _fill(n: int, layout: str, pages: np.ndarray, batch: int, compressor: str, extra: int = 0):
    """A Zswap holding ``n`` pages at ``layout`` offsets: (pool, zswap, offsets)."""
    offs = _offsets(n, layout, extra)
    mean = float(np.mean([len(b) for b in _blocks(pages)]))
    cap = int(n * (mean + 48) * 1.3) + (64 << 20)
    pool = devpool.open_pool("host", cap)
    zs = devpool.Zswap(pool, compressor, max_pool_percent=100, nr_pages=NR_PAGES)
    p = pages.shape[0]
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        zs.store_batch(offs[lo:hi], pages[np.arange(lo, hi) % p])
    return pool, zs, offs


_BLOCKS: dict = {}


def _blocks(pages: np.ndarray) -> list:
    import lz4.block
    key = id(pages)
    if key not in _BLOCKS:
        _BLOCKS[key] = [lz4.block.compress(q, store_size=False) for q in pages]
    return _BLOCKS[key]


def _handle_table_bytes(al) -> int:
    """What the allocator says its handle table holds (an older one: its arrays)."""
    if hasattr(al, "table_bytes"):
        return int(al.table_bytes)
    return sum(int(getattr(al, a).nbytes) for a in ("locs", "sizes", "gens", "_seen", "_ring") if hasattr(al, a))


def table_sweep(top: int, batch: int) -> dict:
    """The entry table (no LRU) and a handle table filled to ``top`` entries, ``batch``
    at a time (offsets dense, no pages, no pool): bytes per entry after every batch,
    allocated (what ``tracemalloc`` counts) and touched (what RSS counts: the records'
    tail is never written), worst and mean over the sizes from ``top`` / 40 and from
    ``top`` / 8 (10^5 and 5 x 10^5 for 4 x 10^6: the handle table's fixed reserve of
    free slots weighs on the small ones)."""
    from devpool.pool.allocator import Allocator
    t = entries.EntryTable(lru=False)
    al = Allocator(max(top, batch) * 32 + (1 << 20), 1 << 20, 16)
    sizes = np.full(batch, 16, np.int64)
    n, rows = 0, []
    try:
        while n < top:
            offs = np.arange(n, n + batch, dtype=np.int64)
            t.put(offs, entries.POOL, offs, 16)
            al.commit_alloc(sizes, al.plan(sizes))
            n += batch
            index, handles = int(t.buckets.nbytes), _handle_table_bytes(al)
            used = int(t.meta[entries._USED]) * t.record_bytes
            rows.append((n, (t._records.nbytes + index + handles) / n, (used + index + handles) / n))
    finally:
        al.close()
    a = np.array(rows)
    out = {"top": top, "batch": batch}
    for lo in (top // 40, top // 8):
        m = a[:, 0] >= lo
        if m.any():
            out[f"from_{lo}"] = {"allocated_max": float(a[m, 1].max()), "allocated_mean": float(a[m, 1].mean()),
                                 "touched_max": float(a[m, 2].max()), "touched_mean": float(a[m, 2].mean())}
    return out


def structures(zs, pool) -> dict:
    """Bytes of the structures outside the pool's arena, by name (touched slots only)."""
    t, al = zs._t, pool.alloc_
    out = {}
    if hasattr(t, "_records"):
        used = int(t.meta[entries._USED])                # slots ever handed out
        out["entry_table_slots"] = used * t.record_bytes
        out["lru_links_in_slots"] = used * 8 if t.meta[entries._LRU] else 0
        out["entry_index"] = int(t.buckets.nbytes)
    else:                                              # an older table: its arrays
        out["entry_table_slots"] = int(t.nbytes)
    out["handle_table"] = _handle_table_bytes(al)
    out["cleaning_record"] = int(getattr(al, "record_bytes", 0))
    out["move_staging"] = int(getattr(getattr(pool.storage, "_move_tmp", None), "nbytes", 0))
    out["allocator_segments"] = sum(int(getattr(al, a).nbytes) for a in
                                    ("seg_fill", "seg_live", "seg_placed", "seg_in_use", "seg_warm")
                                    if hasattr(al, a))
    return out


def memory_child(n: int, layout: str, pages_path: str, batch: int, compressor: str) -> dict:
    """Run in a fresh process: fill, and say what it cost outside the pool."""
    pages = np.load(pages_path)
    _blocks(pages)
    _offsets(n, layout, 0)                             # the offsets' own memory is not the table's
    pool, zs, offs = _fill(4 * batch, layout, pages, batch, compressor)   # warm-up: compiled code,
    zs.invalidate_batch(offs)                                             # scratch buffers
    zs.close()
    pool.close()
    del pool, zs, offs
    gc.collect()
    _malloc_trim()                 # trimmed before as after: the difference is the fill's
    tracemalloc.start()
    rss0, tm0 = _rss(), tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    pool, zs, offs = _fill(n, layout, pages, batch, compressor)
    fill_s = time.perf_counter() - t0
    del offs
    gc.collect()
    rss1, tm1 = _rss(), tracemalloc.get_traced_memory()[0]
    _malloc_trim()
    rss2 = _rss()                  # the C heap's freed-but-kept memory given back (batch temporaries)
    st = zs.stats()
    pool_bytes, stored = st["pool_total_size"], st["stored_pages"]      # refused pages are not kept
    out = {"pages": n, "layout": layout, "fill_s": fill_s, "rss_growth": rss1 - rss0,
           "pool_total_size": pool_bytes, "stored_pages": stored,
           "rss_outside_pool_per_page": (rss1 - rss0 - pool_bytes) / stored,
           "rss_trimmed_outside_pool_per_page": (rss2 - rss0 - pool_bytes) / stored,
           "tracemalloc_per_page": (tm1 - tm0) / stored,
           "structures_per_page": {k: v / stored for k, v in structures(zs, pool).items()}}
    # and steady: churned (its own pages loaded and stored back, in batches) until its pool
    # has cleaned, then as much again. A filled pool has never cleaned; a long-running one
    # keeps what cleaning needs beside its arena too (a staging buffer of ~30 B a stored
    # page at 10^6 did not show in the fill's figure: found 2026-12-08)
    offs = zs._t.key[zs._t.present()]                   # (the stored ones: refused pages are not)
    m = offs.size
    walk = np.random.default_rng(5).permutation(m)
    churned, first_clean, k, o = 0, None, min(batch, m), None
    while m and churned < 4 * m and (first_clean is None or churned < 2 * first_clean):
        o = offs[walk[np.arange(churned, churned + k) % m]]       # (distinct: k <= m)
        zs.store_batch(o, zs.load_batch(o))
        churned += k
        if first_clean is None and pool.stats()["clean_steps"]:
            first_clean = churned
    del offs, walk, o
    gc.collect()
    _malloc_trim()
    rss3, tm3 = _rss(), tracemalloc.get_traced_memory()[0]
    st = zs.stats()
    pool_bytes, stored = st["pool_total_size"], st["stored_pages"]
    out.update({"steady_churned_pages": churned, "steady_clean_steps": pool.stats()["clean_steps"],
                "steady_rss_trimmed_outside_pool_per_page": (rss3 - rss0 - pool_bytes) / stored,
                "steady_tracemalloc_per_page": (tm3 - tm0) / stored,
                "steady_structures_per_page": {k: v / stored for k, v in structures(zs, pool).items()}})
    return out


def measure_memory(sizes, layouts, pages_path, batch, compressor) -> list:
    rows = []
    for n in sizes:
        for layout in layouts:
            cmd = [sys.executable, __file__, "--memory-child", f"{n},{layout}", "--pages", pages_path,
                   "--batch", str(batch), "--compressor", compressor]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                raise RuntimeError(f"memory child {n} {layout} failed: {p.stderr[-2000:]}")
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return rows


class Subject:
    """One filled Zswap and what its passes measured."""

    def __init__(self, n, layout, pages, hit, batch, compressor, batch_pages):
        self.n, self.layout = n, layout
        self.pool, self.zs, offs = _fill(n, layout, pages, batch, compressor, extra=batch_pages)
        self.stored, self.fresh = offs[:n], offs[n:]
        k = np.arange(n)
        self.hit_k = k[hit[k % pages.shape[0]]]        # stored offsets whose page is in the pool
        self.times: dict[str, list] = {}

    def add(self, name, value):
        self.times.setdefault(name, []).append(value)


class BareSubject:
    """What a user would write instead, at the same size: a dict of ``lz4.block`` blocks
    keyed by the same kind of offsets, each block its own bytes object (as stored pages
    would be), timed by :func:`bare_pass`. Its growth with the size is what the memory
    alone costs a dict and its blocks: the floor devpool's growth is read against."""

    def __init__(self, n, layout, pages, hit):
        self.n, self.layout = n, layout
        blocks, p = _blocks(pages), pages.shape[0]
        offs = _offsets(n, layout, 0)
        # (bytes(memoryview(b)): a copy; bytes(b) would be b itself, one object for
        # every stored copy of a page, and the dict's blocks would fit in a cache)
        self.d = {o: bytes(memoryview(blocks[k % p])) for k, o in enumerate(offs.tolist())}
        self.stored = offs
        k = np.arange(n)
        self.hit_k = k[hit[k % p]]
        self.times: dict[str, list] = {}

    add = Subject.add


def bare_pass(s: BareSubject, pages, probe, rng) -> None:
    """:func:`single_pass` for the dict: ``decompress(d.pop(o))`` of stored offsets,
    ``d[o] = compress(page)`` of the same pages back, ``del d[o]`` of others (stored
    back, untimed)."""
    import lz4.block
    d, clock, p = s.d, time.perf_counter, pages.shape[0]
    pick = rng.choice(s.hit_k, min(probe, s.hit_k.size), replace=False)
    offs, src = s.stored[pick].tolist(), (pick % p).tolist()
    load, store, inval, out = [], [], [], []
    for o in offs:
        t = clock()
        got = lz4.block.decompress(d.pop(o), uncompressed_size=PAGE)
        load.append(clock() - t)
        out.append(got)
    for o, j in zip(offs, src):
        page = pages[j]
        t = clock()
        d[o] = lz4.block.compress(page, store_size=False)
        store.append(clock() - t)
    pick = rng.choice(s.hit_k, min(probe, s.hit_k.size), replace=False)
    blocks = _blocks(pages)
    for o, j in zip(s.stored[pick].tolist(), (pick % p).tolist()):
        t = clock()
        del d[o]
        inval.append(clock() - t)
        d[o] = bytes(memoryview(blocks[j]))
    for verb, ts in (("load", load), ("store", store), ("invalidate", inval)):
        s.add(verb, float(np.percentile(ts, 50) * 1e6))


def single_pass(s: Subject, pages, probe, rng) -> None:
    zs, clock, p = s.zs, time.perf_counter, pages.shape[0]
    pick = rng.choice(s.hit_k, min(probe, s.hit_k.size), replace=False)
    offs, src = s.stored[pick].tolist(), (pick % p).tolist()
    load, store, inval = [], [], []
    out = []
    for o in offs:
        t = clock()
        got = zs.load(o)
        load.append(clock() - t)
        out.append(got)
    for o, j, got in zip(offs, src, out):
        if not np.array_equal(got, pages[j]):
            raise devpool.DevpoolError(f"offset {o} came back different")
    for o, j in zip(offs, src):
        page = pages[j]
        t = clock()
        zs.store(o, page)
        store.append(clock() - t)
    pick = rng.choice(s.hit_k, min(probe, s.hit_k.size), replace=False)
    for o in s.stored[pick].tolist():
        t = clock()
        zs.invalidate(o)
        inval.append(clock() - t)
    zs.store_batch(s.stored[pick], pages[pick % p])
    for verb, ts in (("load", load), ("store", store), ("invalidate", inval)):
        s.add(verb, float(np.percentile(ts, 50) * 1e6))


def batch_pass(s: Subject, pages, batch: int) -> None:
    """``store_batch`` of the fresh offsets, ``batch`` at a time, then ``load_batch`` of
    them (the zswap returns to its size): pages per second of each, over all batches."""
    offs = s.fresh
    src = pages[np.arange(offs.size) % pages.shape[0]]
    cuts = [(lo, min(lo + batch, offs.size)) for lo in range(0, offs.size, batch)]
    kept = np.zeros(offs.size, np.bool_)
    t = time.perf_counter()
    for lo, hi in cuts:
        kept[lo:hi] = s.zs.store_batch(offs[lo:hi], src[lo:hi])
    t1 = time.perf_counter()
    got = [s.zs.load_batch(offs[lo:hi][kept[lo:hi]]) for lo, hi in cuts]   # refused pages are not kept
    t2 = time.perf_counter()
    if not np.array_equal(np.concatenate(got), src[kept]):
        raise devpool.DevpoolError("a batch came back different")
    s.add("store_batch", offs.size / (t1 - t))
    s.add("load_batch", max(1, int(kept.sum())) / (t2 - t1))


def whole_pool_ops(s: Subject) -> None:
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        s.zs.stats()
        ts.append(time.perf_counter() - t)
    s.add("stats_us", float(np.median(ts) * 1e6))
    t = time.perf_counter()
    s.pool.compact()
    s.add("compact_ms", (time.perf_counter() - t) * 1e3)


def replay(n: int, pages_path: str) -> dict:
    """``devpool replay`` over ``n`` pages (zipf, RAM a quarter, pool limit a fifth,
    2 n accesses) in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = [sys.executable, "-c", "import sys; from devpool.cli.main import main; sys.exit(main(sys.argv[1:]))",
               "replay", "--backend", "host", "--compressor", "lz4",
               "--pattern", "zipf", "--working-set", str(n), "--ram-pages", str(max(1, n // 4)),
               "--pool-limit-pages", str(max(1, n // 5)), "--accesses", str(2 * n), "--pages", pages_path,
               "--json", out, "--quiet"]
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode:
            return {"pages": n, "failed": p.stderr[-2000:]}
        r = json.loads(open(out).read())
    return {"pages": n, "wall_s": wall,
            "zswap_fault_p50_us": r["zswap_fault_p50_us"], "faults": r["faults"],
            "written_back_pages": r["written_back_pages"]}


def _fits(n: int, layouts, mean_block: float) -> tuple[bool, str]:
    """Whether holding ``n`` pages per layout leaves half the machine's free memory."""
    need = len(layouts) * n * (mean_block + 120)
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    return need < avail / 2, f"needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"


def plot(r: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for layout, style in (("dense", "-"), ("sparse", "--")):
        rows = [x for x in r["subjects"] if x["layout"] == layout]
        if not rows:
            continue
        ns = [x["pages"] for x in rows]
        for verb, c in (("store", "C0"), ("load", "C1"), ("invalidate", "C2")):
            a.plot(ns, [x["p50_us"][verb] for x in rows], style, c=c, marker="o", label=f"{verb} ({layout})")
        mem = [x for x in r["memory"] if x["layout"] == layout]
        ns = [x["pages"] for x in mem]
        sp = [x["structures_per_page"] for x in mem]
        b.plot(ns, [x.get("rss_trimmed_outside_pool_per_page", x["rss_outside_pool_per_page"]) for x in mem], style,
               c="C3", marker="o", label=f"RSS outside the pool, trimmed ({layout})")
        b.plot(ns, [x["entry_table_slots"] + x.get("entry_index", 0) for x in sp], style, c="C4", marker="s",
               label=f"entry table: slots + index ({layout})")
        b.plot(ns, [x["handle_table"] for x in sp], style, c="C5", marker="^", label=f"pool's handle table ({layout})")
    b.axhline(64, c="gray", ls=":", label="target 64 B")
    for ax, title, unit in ((a, "one page: p50", "us"), (b, "host bytes per stored page", "bytes")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("stored pages")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"devpool growth ({r['date']}, {r['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", default="")
    ap.add_argument("--sizes", default="10000,100000,1000000,4000000")
    ap.add_argument("--layouts", default="dense,sparse")
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--probe", type=int, default=2000, help="pages per single-page pass")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--batch-pages", type=int, default=16384, help="pages per batch pass (stored, then loaded)")
    ap.add_argument("--compressor", default="lz4")
    ap.add_argument("--sweep-to", type=int, default=4_000_000, help="tables swept to this many entries (0: none)")
    ap.add_argument("--replay-pages", type=int, default=1_000_000, help="0: no replay")
    ap.add_argument("--bare-up-to", type=int, default=1_000_000,
                    help="the bare dict loop is timed at every size up to this one too (0: none; at 10^6 its "
                         "dicts of blocks hold ~1.7 GB a layout beside the pools)")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        n, layout = args.memory_child.split(",")
        print(json.dumps(memory_child(int(n), layout, args.pages, args.batch, args.compressor)))
        return
    pages, source = load_pages(args.pages)
    pages = mixed(pages)                    # (one mix at every size: _common.mixed)
    hit = _compressible(pages)
    if not hit.any():
        raise SystemExit("no compressible pages to time")
    layouts = args.layouts.split(",")
    mean_block = float(np.mean([len(b) for b in _blocks(pages)]))
    sizes, skipped = [], {}
    for n in sorted(int(x) for x in args.sizes.split(",")):
        ok, why = _fits(n, layouts, mean_block)
        (sizes.append(n) if ok else skipped.__setitem__(n, why))
    r = header("bench_growth", pages=source, n_pages=int(pages.shape[0]), compressible=int(hit.sum()),
               sizes=sizes, skipped=skipped, layouts=layouts, passes=args.passes, probe=args.probe, batch=args.batch,
               compressor=args.compressor)
    print(f"# {r['command']}  ({r['date']}, {r['machine']}; {pages.shape[0]} pages of {source}, "
          f"{int(hit.sum())} compress)")
    for n, why in skipped.items():
        print(f"# {n} pages skipped: {why}")
    tmp = tempfile.TemporaryDirectory()
    pages_path = os.path.join(tmp.name, "pages.npy")     # (the children's: mixed too)
    np.save(pages_path, pages)

    r["memory"] = measure_memory(sizes, layouts, pages_path, args.batch, args.compressor)
    if args.sweep_to:
        r["table_sweep"] = table_sweep(args.sweep_to, args.batch)
    subjects = [Subject(n, layout, pages, hit, args.batch, args.compressor, args.batch_pages)
                for n in sizes for layout in layouts]
    bares = [BareSubject(n, layout, pages, hit) for n in sizes if n <= args.bare_up_to for layout in layouts]
    rng = np.random.default_rng(7)
    bare = []
    probe_pages = np.ascontiguousarray(pages[hit][:args.probe])
    for p in range(args.passes):
        bare.append(bare_single_page(probe_pages))
        for s in (subjects + bares if p % 2 == 0 else (subjects + bares)[::-1]):
            if isinstance(s, BareSubject):
                bare_pass(s, pages, args.probe, rng)
                continue
            single_pass(s, pages, args.probe, rng)
            batch_pass(s, pages, args.batch)
    for s in subjects:
        whole_pool_ops(s)
    r["bare_loop_p50_us"] = {v: float(np.median([b[v]["p50_us"] for b in bare])) for v in ("store", "load", "invalidate")}
    r["subjects"] = []
    for s in subjects:
        base = next(x for x in subjects if x.layout == s.layout)        # the smallest size
        row = {"pages": s.n, "layout": s.layout,
               "p50_us": {v: float(np.median(s.times[v])) for v in ("store", "load", "invalidate")},
               "p50_vs_smallest": {v: ratio_spread(s.times[v], base.times[v]) for v in ("store", "load", "invalidate")},
               "batch_pages_per_s": {v: float(np.median(s.times[v])) for v in ("store_batch", "load_batch")},
               "batch_vs_smallest": {v: ratio_spread(s.times[v], base.times[v]) for v in ("store_batch", "load_batch")},
               "stats_us": s.times["stats_us"][0], "compact_ms": s.times["compact_ms"][0]}
        r["subjects"].append(row)
    r["bare_subjects"] = []
    for s in bares:
        base = next(x for x in bares if x.layout == s.layout)
        r["bare_subjects"].append({"pages": s.n, "layout": s.layout,
                                   "p50_us": {v: float(np.median(s.times[v])) for v in ("store", "load", "invalidate")},
                                   "p50_vs_smallest": {v: ratio_spread(s.times[v], base.times[v])
                                                       for v in ("store", "load", "invalidate")}})
    del bares
    for s in subjects:
        s.zs.close()
        s.pool.close()
    del subjects
    gc.collect()
    if args.replay_pages:
        start = replay(64, pages_path)["wall_s"]          # the process's start-up, imports, compile
        r["replay"] = [replay(n, pages_path) for n in sorted({min(10_000, args.replay_pages), args.replay_pages})]
        for x in r["replay"]:
            if "wall_s" in x:
                x["us_per_access"] = max(0.0, x["wall_s"] - start) / (2 * x["pages"]) * 1e6
    report(r)
    save(r, args.json)
    if args.plot:
        plot(r, args.plot)


def report(r: dict) -> None:
    b = r["bare_loop_p50_us"]
    print(f"bare lz4.block + dict loop ({r['probe']} pages): store {b['store']:.1f} us, load {b['load']:.1f} us, "
          f"invalidate {b['invalidate']:.2f} us p50")
    print(f"{'pages':>9} {'layout':7}{'store':>7}{'load':>7}{'inval':>7}   x smallest, median (range): store / load / "
          f"invalidate / store_batch / load_batch   {'stats us':>8}{'compact ms':>11}")
    for x in r["subjects"]:
        q = x["p50_vs_smallest"] | x["batch_vs_smallest"]
        cells = " / ".join(f"{q[v]['median']:.2f} ({q[v]['low']:.2f}-{q[v]['high']:.2f})"
                           for v in ("store", "load", "invalidate", "store_batch", "load_batch"))
        p = x["p50_us"]
        print(f"{x['pages']:>9} {x['layout']:7}{p['store']:>7.1f}{p['load']:>7.1f}{p['invalidate']:>7.2f}   {cells}"
              f"   {x['stats_us']:>8.0f}{x['compact_ms']:>11.1f}")
    for x in r.get("bare_subjects", []):
        q = x["p50_vs_smallest"]
        cells = " / ".join(f"{q[v]['median']:.2f} ({q[v]['low']:.2f}-{q[v]['high']:.2f})"
                           for v in ("store", "load", "invalidate"))
        p = x["p50_us"]
        print(f"{x['pages']:>9} {x['layout'][:2]}-dict{p['store']:>7.1f}{p['load']:>7.1f}{p['invalidate']:>7.2f}   {cells}"
              "   (the bare loop at this size: a dict of blocks)")
    print("host bytes per stored page outside the pool (fresh process per row):")
    for m in r["memory"]:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in m["structures_per_page"].items())
        print(f"{m['pages']:>9} {m['layout']:7} RSS {m['rss_outside_pool_per_page']:6.1f} "
              f"(after malloc_trim {m['rss_trimmed_outside_pool_per_page']:6.1f})  tracemalloc "
              f"{m['tracemalloc_per_page']:6.1f}   ({parts}; fill {m['fill_s']:.1f} s)")
        if "steady_tracemalloc_per_page" in m:
            print(f"{'':>9} {'':7} steady, {m['steady_churned_pages']} pages churned "
                  f"({m['steady_clean_steps']} cleaning steps): RSS after malloc_trim "
                  f"{m['steady_rss_trimmed_outside_pool_per_page']:6.1f}  tracemalloc "
                  f"{m['steady_tracemalloc_per_page']:6.1f}   (cleaning record "
                  f"{m['steady_structures_per_page'].get('cleaning_record', 0):.1f})")
    sw = r.get("table_sweep", {})
    for k, v in sw.items():
        if k.startswith("from_"):
            print(f"entry table + handle table alone, every {sw['batch']} entries up to {sw['top']}, from "
                  f"{k[5:]}: allocated max {v['allocated_max']:.1f} (mean {v['allocated_mean']:.1f}), touched max "
                  f"{v['touched_max']:.1f} (mean {v['touched_mean']:.1f}) bytes an entry")
    for x in r.get("replay", []):
        if "failed" in x:
            print(f"replay {x['pages']}: failed: {x['failed']}")
        else:
            print(f"devpool replay over {x['pages']} pages (zipf, 2x accesses): {x['wall_s']:.1f} s, "
                  f"{x['us_per_access']:.1f} us an access past start-up, zswap fault p50 {x['zswap_fault_p50_us']:.1f} us")


if __name__ == "__main__":
    main()
