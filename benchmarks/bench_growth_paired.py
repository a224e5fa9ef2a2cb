"""How much of a single page's growth with the stored pages is the memory's, not devpool's.

    python benchmarks/bench_growth_paired.py [--pages F.npy] [--small 10000] [--big 1000000]
                                             [--passes 7] [--n 2000] [--codec lz4] [--layout dense|sparse]
                                             [--huge-pages]
                                             [--no-hints] [--batch K] [--steady] [--base TREE] [--json F]

``bench_growth.py`` times each size in its own passes; on this machine the whole VM runs
in fast and slow phases (the same loop 1x or 2x), which moves a ratio of two passes. Here
both sizes live in one process and are timed **interleaved**: a load then a store (of
the page just loaded) at a random offset of the small store, and an invalidation of
another (stored back, untimed), ``--run`` (16) times, then the same at the big one,
2 000 times a pass. (Op for op, ``--run 1``, every small op came
after a big one and found its lines evicted by the big one's traffic: the small store
timed slower than alone and the ratio lower, ×1.23 - 1.25 where runs of 16 read ×1.28
for the same code.) And the same for the loop a user would write instead
(``lz4.block`` blocks in a dict keyed by offset, also holding ``--small`` and ``--big``
pages): its growth is what the memory alone costs (a cold block and a cold dict entry
at 10^6 pages, where 10^4 pages' fit in cache). Reported per subject and verb: the
median over passes of p50(big) / p50(small), its range, and the p50s; devpool's
growth beyond the loop's is what its own tables (entry index, records, handle table)
add. ``--huge-pages`` times a third subject beside them, interleaved too: devpool with its
arena advised huge pages (``hugepages=True``; the default arena stays on 4 KiB pages);
``--no-hints`` one whose entries' location hints were cleared after the fill (a load then
does not prefetch its block while it checks the handle). ``--layout sparse`` spreads the
offsets over a swap device's 2**32 pages, as ``bench_growth.py``'s sparse rows (default:
dense, 0..N-1). ``--batch K`` times ``load_batch`` + ``store_batch`` of K of the same random
offsets at a time instead (devpool only), per page: the issue's batch throughput at 10^6
against 10^4, interleaved batch for batch, with the page faults and the bytes cleaning moved
a page beside it (a pool growing into memory it never touched faults; one recycling its
segments does not), and the dead bytes each pool held a live byte (the mean, after each
batch's loads and after its stores: cleaning is cheaper the more dead space a pool keeps).
The cycle's p50 over batches leaves out the batches a cleaning step fell in wherever steps
are rarer than batches (a small ``--batch``); ``cycle mean``, a pass's time over its pages,
is the throughput with every step in it.
``--steady`` first churns each store (batches of its own offsets, loaded and stored back)
until its pool has run a cleaning step: a freshly filled 10^6 pool has no dead bytes and grows into fresh memory for its first ~60 000 churned pages, where a
10^4 one cleans from the first batch, so without it the two sizes are timed in different
regimes. (Steady, a 10^4 pool still cleans in another one: a batch of 1 024 is a tenth of
it, and its cleaning moves half the bytes a stored page that a 10^5 or 10^6 pool's does;
``--small 100000`` compares two pools in one regime.) ``--base TREE`` times another checkout's devpool
beside this one's, in this process (``_common.other_tree``), as ``devpool base``: a change's
effect on the growth, measured in the same phases of the machine, not across runs.
"""

from __future__ import annotations

import argparse
import resource
import time

import lz4.block
import numpy as np

import devpool
from _common import compile_afresh, header, load_pages, mixed, other_tree, save
from bench_growth import NR_PAGES, _offsets
from bench_latency import compressible

PAGE = 4096


def bare_store(offsets: np.ndarray, blocks: list[bytes]) -> dict:
    # (bytes(memoryview(b)) copies: bytes(b) is b itself, and 10^6 stored pages would share
    # 20 000 blocks that fit in a cache)
    return {o: bytes(memoryview(blocks[j % len(blocks)])) for j, o in enumerate(offsets.tolist())}


def zswap_store(offsets: np.ndarray, pages: np.ndarray, codec: str, hugepages: bool = False, dp=devpool):
    """A host Zswap (of ``dp``: this tree's devpool, or another's) holding ``pages`` at ``offsets``."""
    size = offsets.size
    pool = dp.open_pool("host", max(1 << 26, size * PAGE), hugepages=hugepages)
    zs = dp.Zswap(pool, codec, max_pool_percent=100, nr_pages=NR_PAGES)
    for s in range(0, size, 8192):
        j = np.arange(s, min(size, s + 8192))
        zs.store_batch(offsets[j], pages[j % len(pages)])
    return zs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", default="")
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--codec", default="lz4")
    ap.add_argument("--layout", choices=("dense", "sparse"), default="dense",
                    help="offsets 0..N-1, or spread at random over a swap device's 2**32 pages (bench_growth's)")
    ap.add_argument("--huge-pages", action="store_true",
                    help="also time devpool with its arena advised huge pages (hugepages=True), interleaved")
    ap.add_argument("--no-hints", action="store_true",
                    help="also time devpool with its entries' location hints cleared after the fill, interleaved")
    ap.add_argument("--batch", type=int, default=0,
                    help="time load_batch + store_batch of this many random offsets instead of single pages "
                         "(devpool subjects only: the bare loop has no batch)")
    ap.add_argument("--steady", action="store_true",
                    help="before timing, churn each store (load_batch + store_batch of its own offsets) until "
                         "its pool has run a cleaning step: the pool then recycles segments, as a long-running "
                         "one does, where a freshly filled one grows into memory it never touched")
    ap.add_argument("--run", type=int, default=16,
                    help="ops of one size in a row before the other's (1: op for op, the small one after "
                         "the big one every time: its cache is then the big one's leftovers)")
    ap.add_argument("--base", help="also time this checkout's devpool (its top folder), interleaved")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.base:                   # (two trees' compiled code in one process)
        compile_afresh()
    all_pages, source = load_pages(args.pages)
    pages = mixed(compressible(all_pages, 20_000))        # (one mix at both sizes: _common.mixed)
    n = min(args.n, args.small)
    if args.batch > n:
        raise SystemExit(f"--batch {args.batch} is more than the {n} offsets a pass draws (--n, --small)")
    r = header("bench_growth_paired", pages=source, small=args.small, big=args.big, passes=args.passes, n=n,
               codec=args.codec, layout=args.layout, huge_pages=args.huge_pages,
               no_hints=args.no_hints, batch=args.batch, base=args.base, run=args.run, steady=args.steady)
    print(f"# {r['command']}  ({r['date']}, {r['machine']}; {pages.shape[0]} compressible pages of {source})")
    blocks = [lz4.block.compress(p, store_size=False) for p in pages]
    out = np.empty(PAGE, np.uint8)
    clock = time.perf_counter

    def bare_op(d, pair):
        o, o2 = pair
        t = clock()
        out[:] = np.frombuffer(lz4.block.decompress(d.pop(o), uncompressed_size=PAGE), np.uint8)
        t1 = clock()
        d[o] = lz4.block.compress(out, store_size=False)
        t2 = clock()
        block = d.pop(o2, None)                   # invalidate another offset (a cold entry) ...
        t3 = clock()
        if block is not None:
            d[o2] = block                         # ... stored back, untimed
        return t1 - t, t2 - t1, t3 - t2

    def zswap_op(zs, pair):
        o, o2 = pair
        t = clock()
        page = zs.load(o)
        t1 = clock()
        zs.store(o, page)
        t2 = clock()
        zs.invalidate(o2)                         # another offset (a cold entry) ...
        t3 = clock()
        zs.store(o2, pages[o2 % len(pages)])      # ... stored back, untimed (the same mix)
        return t1 - t, t2 - t1, t3 - t2

    def batch_op(zs, offs):
        offs = np.asarray(offs, np.int64)
        f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        moved = zs.pool.alloc_.cleaned_bytes_moved
        al = zs.pool.alloc_
        t = clock()
        got = zs.load_batch(offs)
        t1 = clock()
        dead = al.dead_bytes / max(al.live_aligned, 1)                    # (after the frees, cleaning)
        t1a = clock()
        zs.store_batch(offs, got)
        t2 = clock()
        dead = (dead + al.dead_bytes / max(al.live_aligned, 1)) / 2       # (and after the stores)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f   # (the arena's fresh pages)
        moved = al.cleaned_bytes_moved - moved                            # (cleaning's copies)
        return (t1 - t) / offs.size, (t2 - t1a) / offs.size, faults / offs.size, moved / offs.size, dead

    if args.batch:
        zswap_op = batch_op
    sizes = (args.small, args.big)
    offsets = {s: _offsets(s, args.layout, 0) for s in sizes}

    def zswaps(hugepages: bool = False) -> dict:
        return {s: zswap_store(offsets[s], pages, args.codec, hugepages) for s in sizes}

    r["steady"] = {}

    def settle(name: str, stores: dict) -> None:
        """--steady: churn each store until its pool has cleaned once (at most 4x its pages)."""
        rng = np.random.default_rng(2)
        for s, zs in stores.items():
            churned, t = 0, clock()
            while zs.pool.stats()["clean_steps"] == 0 and churned < 4 * s:
                # (an eighth of the pool at a time at most: a batch of all its pages empties
                # whole segments, and a pool never cleans what it can give back whole)
                offs = rng.choice(offsets[s], max(1, min(8192, s // 8)), replace=False)
                zs.store_batch(offs, zs.load_batch(offs))
                churned += offs.size
            r["steady"].setdefault(name, {})[s] = {"churned_pages": churned, "seconds": clock() - t,
                                                   "clean_steps": zs.pool.stats()["clean_steps"]}
            print(f"  (--steady: {name} at {s}: {churned} pages churned in {clock() - t:.1f} s, "
                  f"{zs.pool.stats()['clean_steps']} cleaning step(s))")

    subjects = {}
    if not args.batch:              # (the bare loop has no batch: not built, 10^6 blocks)
        subjects["bare loop"] = ({s: bare_store(offsets[s], blocks) for s in sizes}, bare_op)
    subjects["devpool"] = (zswaps(), zswap_op)
    if args.no_hints:               # a load then finds no hint (-1) and prefetches nothing
        stores = zswaps()
        for zs in stores.values():
            zs._t.hint[zs._t.present()] = -1
        subjects["devpool no hint"] = (stores, zswap_op)
    if args.huge_pages:
        subjects["devpool huge"] = (zswaps(hugepages=True), zswap_op)
    if args.base:
        with other_tree(args.base) as theirs:
            stores = {s: zswap_store(offsets[s], pages, args.codec, dp=theirs) for s in sizes}
            for s, zs in stores.items():        # (each verb once, while its modules are loaded)
                o = int(offsets[s][0])
                zswap_op(zs, [o] if args.batch else (o, o))
        subjects["devpool base"] = (stores, zswap_op)
        r["base_devpool"] = theirs.__file__
    if args.steady:
        for name, (stores, _) in subjects.items():
            if name != "bare loop":
                settle(name, stores)
    compiled = subjects["devpool"][0][args.small].stats()["single_page_compiled"]
    rng = np.random.default_rng(1)
    runs = {name: [] for name in subjects}
    for p in range(args.passes):
        for name, (stores, op) in list(subjects.items())[::1 if p % 2 == 0 else -1]:    # (order alternating)
            small = rng.choice(offsets[args.small], n, replace=False).tolist()
            big = rng.choice(offsets[args.big], n, replace=False).tolist()
            ts, tb = [], []
            if args.batch:                         # the same draws, args.batch at a time
                k = args.batch
                small = [small[i:i + k] for i in range(0, n - k + 1, k)]
                big = [big[i:i + k] for i in range(0, n - k + 1, k)]
            else:                                  # each op also invalidates another offset
                small = list(zip(small, rng.choice(offsets[args.small], n, replace=False).tolist()))
                big = list(zip(big, rng.choice(offsets[args.big], n, replace=False).tolist()))
            k = args.run                           # interleaved in runs of k ops a size: one phase of
            for lo in range(0, len(small), k):     # the VM for both, and each size's ops after its own
                for a in small[lo:lo + k]:         # (as alone), not after the other's (whose traffic
                    ts.append(op(stores[args.small], a))    # evicts the small store's lines)
                for b in big[lo:lo + k]:
                    tb.append(op(stores[args.big], b))
            ts, tb = np.array(ts) * 1e6, np.array(tb) * 1e6    # (us; a batch's faults a page: not times)
            third = "faults" if args.batch else "invalidate"     # (a batch's page faults, a page)
            runs[name].append({verb: (float(np.median(ts[:, j])), float(np.median(tb[:, j])))
                               for j, verb in enumerate(("load", "store", third))})
            if args.batch:                         # (faults, moved bytes: the mean, most batches take none)
                runs[name][-1]["faults"] = (float(ts[:, 2].mean()) / 1e6, float(tb[:, 2].mean()) / 1e6)
                runs[name][-1]["moved"] = (float(ts[:, 3].mean()) / 1e6, float(tb[:, 3].mean()) / 1e6)
                runs[name][-1]["dead"] = (float(ts[:, 4].mean()) / 1e6, float(tb[:, 4].mean()) / 1e6)
            runs[name][-1]["cycle"] = (float(np.median(ts[:, :2].sum(1))), float(np.median(tb[:, :2].sum(1))))
            if args.batch:                         # (every batch the same size: the mean a page is the
                runs[name][-1]["cycle mean"] = (float(ts[:, :2].sum(1).mean()),    # pass's time over its
                                                float(tb[:, :2].sum(1).mean()))    # pages, cleaning steps and all)
    r["single_page_compiled"] = compiled
    r["subjects"] = {}
    what = (f"load_batch and store_batch of {args.batch} (us a page, p50 over batches; throughput = 1 / time)"
            if args.batch else "single load, store and invalidate p50")
    print(f"{what} at {args.big} stored pages against {args.small} ({args.layout} offsets), "
          f"interleaved in runs of {args.run} " + ("(op for op) " if args.run == 1 else "")
          + f"({args.passes} passes of {n}; devpool {args.codec}, host, compiled single page: {compiled})")
    for name, rows in runs.items():
        r["subjects"][name] = {}
        line = f"  {name:15}"
        # (a batch's load / store split moves with numba's worker threads, which a batch
        # leaves spinning into the next call: the cycle, load then store, is the figure.
        # Its p50 over batches leaves out the batches a cleaning step fell in where steps
        # are rarer than batches (a small --batch): "cycle mean", the pass's time over its
        # pages, is the throughput with every step in it)
        for verb in ("load", "store") + (("cycle", "cycle mean") if args.batch else ("invalidate",)):
            s = np.array([x[verb][0] for x in rows])
            b = np.array([x[verb][1] for x in rows])
            q = b / s
            r["subjects"][name][verb] = {"small_p50_us": float(np.median(s)), "big_p50_us": float(np.median(b)),
                                         "added_us": float(np.median(b - s)),
                                         "big_vs_small": {"median": float(np.median(q)), "low": float(q.min()),
                                                          "high": float(q.max())}}
            line += (f"  {verb} {np.median(s):.2f} -> {np.median(b):.2f} us: x{np.median(q):.2f} "
                     f"({q.min():.2f}-{q.max():.2f}), +{np.median(b - s):.2f} us")
            if args.batch:
                line += f" (throughput x{np.median(1 / q):.2f}, {(1 / q).min():.2f}-{(1 / q).max():.2f})"
        if args.batch:
            f = np.array([x["faults"] for x in rows])
            r["subjects"][name]["faults_per_page"] = {"small": float(np.median(f[:, 0])),
                                                      "big": float(np.median(f[:, 1]))}
            line += f"  page faults a page {np.median(f[:, 0]):.3f} -> {np.median(f[:, 1]):.3f}"
            m = np.array([x["moved"] for x in rows])
            r["subjects"][name]["cleaning_bytes_moved_per_page"] = {"small": float(np.median(m[:, 0])),
                                                                    "big": float(np.median(m[:, 1]))}
            line += f"; bytes cleaning moved a page {np.median(m[:, 0]):.0f} -> {np.median(m[:, 1]):.0f}"
            if all("dead" in x for x in rows):
                g = np.array([x["dead"] for x in rows])
                r["subjects"][name]["dead_bytes_per_live_byte"] = {"small": float(np.median(g[:, 0])),
                                                                   "big": float(np.median(g[:, 1]))}
                line += f"; dead bytes a live byte {np.median(g[:, 0]):.3f} -> {np.median(g[:, 1]):.3f}"
        print(line)
    if args.batch:
        return save(r, args.json)
    d, b = r["subjects"]["devpool"], r["subjects"]["bare loop"]
    print("  devpool's own growth beyond the loop's: " + ", ".join(
        f"{v} {d[v]['added_us'] - b[v]['added_us']:+.2f} us" for v in ("load", "store", "invalidate")))
    if args.base:                   # per pass: this tree's big / small over the base's
        r["this_vs_base"] = {}
        for verb in ("load", "store", "invalidate"):
            q = np.array([(x[verb][1] / x[verb][0]) / (y[verb][1] / y[verb][0])
                          for x, y in zip(runs["devpool"], runs["devpool base"])])
            added = np.array([(x[verb][1] - x[verb][0]) - (y[verb][1] - y[verb][0])
                              for x, y in zip(runs["devpool"], runs["devpool base"])]) * 1e3
            r["this_vs_base"][verb] = {"growth_ratio": {"median": float(np.median(q)), "low": float(q.min()),
                                                        "high": float(q.max())},
                                       "added_ns": float(np.median(added))}
            print(f"  this tree's {verb} growth over the base's, pass by pass: x{np.median(q):.3f} "
                  f"({q.min():.3f}-{q.max():.3f}), {np.median(added):+.0f} ns")
    save(r, args.json)


if __name__ == "__main__":
    main()
