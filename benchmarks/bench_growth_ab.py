"""This tree's zswap at 10^6 pages against another checkout's, alternating: memory and speed.

    git worktree add /tmp/base main          # or any checkout to compare against
    python benchmarks/bench_growth_ab.py --base /tmp/base [--pages F.npy] [--size 1000000]
        [--rounds 3] [--passes 7] [--entries-passes 15] [--tables-only] [--json F]

A change to the tables' memory is a trade against their speed, and this machine's
noise is larger than the difference, so both sides are measured in turns:

- memory: ``bench_growth.py --memory-child`` of each tree, in fresh processes, the
  trees alternating round by round (dense and sparse offsets): host bytes per stored
  page outside the pool after ``malloc_trim`` and by ``tracemalloc``, and the tables;
- the entry table's single-entry verbs, both trees' ``entries.py`` in one process over
  the same ``--size`` offsets (sparse and dense), passes alternating: p50 of a lookup
  that hits, one that misses, a removal, an insertion; the median of per-pass ratios;
- zswap's single ``store`` / ``load`` / ``invalidate`` p50 and batch pages/s
  (``bench_growth``'s passes), a fresh process per tree and round, the trees
  alternating; the median of per-round ratios (this tree / base), with the range.

``--tables-only`` runs the entry tables' part alone (a change to the index's probes, not
its memory: a minute instead of half an hour).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _common import compile_afresh, header, load_pages, mixed, other_tree, ratio_spread, save

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZSWAP_VERBS = ("store", "load", "invalidate", "store_batch", "load_batch")
TABLE_VERBS = ("find_hit", "find_miss", "remove", "put_new")


def _in(tree: str, args: list) -> dict:
    """Run ``args`` (a python command line) with ``tree``'s devpool; its last line as JSON."""
    env = {**os.environ, "PYTHONPATH": tree}
    p = subprocess.run([sys.executable] + args, cwd=tree, env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{args[:2]} in {tree} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def zswap_child(tree: str, n: int, passes: int, pages_path: str, batch_pages: int) -> dict:
    """In a fresh process: ``tree``'s bench_growth passes over a Zswap of ``n`` pages."""
    sys.path.insert(0, os.path.join(tree, "benchmarks"))
    import bench_growth as bg
    pages = np.load(pages_path)
    hit = bg._compressible(pages)
    out = {}
    for layout in ("dense", "sparse"):
        s = bg.Subject(n, layout, pages, hit, 1024, "lz4", batch_pages)
        rng = np.random.default_rng(7)
        for _ in range(passes):
            bg.single_pass(s, pages, min(2000, n // 4), rng)
            bg.batch_pass(s, pages, 1024)
        out[layout] = {v: float(np.median(s.times[v])) for v in ZSWAP_VERBS}
        s.zs.close()
        s.pool.close()
    return out


def table_verbs(base: str, n: int, passes: int, layout: str, probe: int = 2000) -> dict:
    """Both trees' entry tables over the same ``n`` offsets, single verbs, passes alternating."""
    from devpool.zswap import entries as mine
    rng = np.random.default_rng(3)
    if layout == "sparse":
        keys = rng.permutation(np.unique(rng.integers(0, 1 << 32, int(n * 1.01) + 64)))[:n]
    else:
        keys = np.arange(n, dtype=np.int64)

    def fill(E):
        t = E.EntryTable(lru=False)
        for lo in range(0, n, 1024):
            t.put(keys[lo:lo + 1024], E.SAME, keys[lo:lo + 1024], 0)
        t.put_one(int(keys[0]), E.SAME, 1, 0)              # (each single verb once, compiled)
        t.remove_one(t.find_one(int(keys[0])))
        t.put_one(int(keys[0]), E.SAME, int(keys[0]), 0)
        return t, E

    with other_tree(base) as theirs:
        import devpool.zswap.entries as their_entries     # (the base's, while its modules are loaded)
        assert their_entries.__file__.startswith(os.path.abspath(base))
        tabs = {"base": fill(their_entries)}
    tabs["this"] = fill(mine)
    flush = np.zeros(32 << 20, np.uint8)           # caches cold between passes, as a swap-in finds them
    clock = time.perf_counter
    p50 = {name: {v: [] for v in TABLE_VERBS} for name in tabs}
    k = min(probe, n // 2)
    for p in range(passes):
        pick = keys[rng.choice(n, k, replace=False)].tolist()
        miss = rng.integers(1 << 33, 1 << 34, k).tolist()
        for name in (("base", "this") if p % 2 == 0 else ("this", "base")):
            t, E = tabs[name]
            flush += 1
            ts = {v: [] for v in TABLE_VERBS}
            for o in pick:
                s = clock()
                i = t.find_one(o)
                ts["find_hit"].append(clock() - s)
                s = clock()
                t.remove_one(i)
                ts["remove"].append(clock() - s)
            for o in pick:
                s = clock()
                t.put_one(o, E.SAME, o, 0)
                ts["put_new"].append(clock() - s)
            for o in miss:
                s = clock()
                t.find_one(o)
                ts["find_miss"].append(clock() - s)
            for v in TABLE_VERBS:
                p50[name][v].append(float(np.median(ts[v]) * 1e9))
    out = {"index_bytes_per_entry": {name: t.buckets.nbytes / n for name, (t, _) in tabs.items()}}
    for v in TABLE_VERBS:
        out[v] = {"base_ns": float(np.median(p50["base"][v])), "this_ns": float(np.median(p50["this"][v])),
                  "ratio": ratio_spread(p50["this"][v], p50["base"][v])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="root of the checkout to compare against (required)")
    ap.add_argument("--pages", default="")
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--entries-passes", type=int, default=15)
    ap.add_argument("--batch-pages", type=int, default=16384)
    ap.add_argument("--tables-only", action="store_true", help="only the entry tables' single verbs")
    ap.add_argument("--json")
    ap.add_argument("--zswap-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.zswap_child:
        tree, n, passes = args.zswap_child.split(",")
        print(json.dumps(zswap_child(tree, int(n), int(passes), args.pages, args.batch_pages)))
        return
    if not args.base:
        ap.error("--base is required")
    base = os.path.abspath(args.base)
    compile_afresh()                # (the table verbs: both trees' entry tables in this process)
    trees = {"base": base, "this": HERE}
    pages, source = load_pages(args.pages)
    pages = mixed(pages)                    # (one mix at every size: _common.mixed)
    tmp = tempfile.TemporaryDirectory()
    pages_path = os.path.join(tmp.name, "pages.npy")
    np.save(pages_path, pages)
    r = header("bench_growth_ab", base=base, pages=source, size=args.size, rounds=args.rounds, passes=args.passes,
               entries_passes=args.entries_passes, tables_only=args.tables_only)
    print(f"# {r['command']}  ({r['date']}, {r['machine']})")
    if args.tables_only:
        r["table_verbs"] = {layout: table_verbs(base, int(args.size * 0.958), args.entries_passes, layout)
                            for layout in ("sparse", "dense")}
        report(r)
        return save(r, args.json)
    order = lambda k: ("base", "this") if k % 2 == 0 else ("this", "base")      # noqa: E731
    memory = []
    for k in range(args.rounds):
        for name in order(k):
            for layout in ("dense", "sparse"):
                m = _in(trees[name], [os.path.join(trees[name], "benchmarks", "bench_growth.py"), "--memory-child",
                                      f"{args.size},{layout}", "--pages", pages_path, "--batch", "1024",
                                      "--compressor", "lz4"])
                memory.append({"tree": name, **m})
    r["memory"] = memory
    r["table_verbs"] = {layout: table_verbs(base, int(args.size * 0.958), args.entries_passes, layout)
                        for layout in ("sparse", "dense")}
    runs = []
    for k in range(args.rounds):
        for name in order(k):
            got = _in(trees[name], [os.path.abspath(__file__), "--zswap-child",
                                    f"{trees[name]},{args.size},{args.passes}", "--pages", pages_path,
                                    "--batch-pages", str(args.batch_pages)])
            runs.append({"tree": name, "round": k, **got})
    r["zswap_runs"] = runs
    r["zswap_this_vs_base"] = {
        layout: {v: ratio_spread([x[layout][v] for x in runs if x["tree"] == "this"],
                           [x[layout][v] for x in runs if x["tree"] == "base"]) for v in ZSWAP_VERBS}
        for layout in ("dense", "sparse")}
    report(r)
    save(r, args.json)


def report(r: dict) -> None:
    if "memory" in r:
        print("host bytes per stored page outside the pool (fresh process each): after malloc_trim; tracemalloc")
    for name in ("base", "this") if "memory" in r else ():
        for layout in ("dense", "sparse"):
            ms = [m for m in r["memory"] if m["tree"] == name and m["layout"] == layout]
            tr = [m["rss_trimmed_outside_pool_per_page"] for m in ms]
            tm = [m["tracemalloc_per_page"] for m in ms]
            print(f"  {name:4} {layout:6} {min(tr):6.1f} - {max(tr):6.1f}; {min(tm):6.1f} - {max(tm):6.1f}   "
                  + ", ".join(f"{k} {v:.2f}" for k, v in ms[0]["structures_per_page"].items()))
    for layout, t in r["table_verbs"].items():
        print(f"entry table, {layout}: index {t['index_bytes_per_entry']['base']:.2f} -> "
              f"{t['index_bytes_per_entry']['this']:.2f} B an entry; " + "; ".join(
                  f"{v} {t[v]['base_ns']:.0f} -> {t[v]['this_ns']:.0f} ns ({t[v]['ratio']['median']:.3f}, "
                  f"{t[v]['ratio']['low']:.3f}-{t[v]['ratio']['high']:.3f})" for v in TABLE_VERBS))
    for layout, q in r.get("zswap_this_vs_base", {}).items():
        print(f"zswap, {layout}: this / base " + "; ".join(
            f"{v} {q[v]['median']:.3f} ({q[v]['low']:.3f}-{q[v]['high']:.3f})" for v in ZSWAP_VERBS))


if __name__ == "__main__":
    main()
