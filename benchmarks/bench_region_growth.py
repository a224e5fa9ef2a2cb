"""A swap region's costs as it grows: fault latency and the handler's memory per page.

    python benchmarks/bench_region_growth.py [--sizes-mib 16,256,1024] [--resident 0.25]
                                             [--touches 4000] [--passes 5] [--pages F.npy]
                                             [--backend host] [--json F] [--plot F.png]

Every region (16 MiB, 256 MiB and 1 GiB by default, a quarter of each resident) is open
at once, filled with real pages (every page written: first-touch faults and eviction
rounds), and then touched at uniformly random pages, one touch per page of the trace,
size after size within each pass, so that the machine's drift reaches every size
alike. A touch that ``mincore`` (outside the timer) found not resident is a fault, timed
in the touching thread, as ``bench_region.py`` does. Reported per size: fault p50 / p99
(the median over passes), the ratio of each size's p50 to the smallest's per pass
(median and range), eviction cost per page (the handler's own timing), and the handler
process's memory: RSS growth from the open region to the filled one, per evicted page,
and the same less ``pool_total_size`` (host backend: the pool lives in the handler's
RSS), i.e. what the handler keeps per page outside the pool (its page states and
victim queue, the Zswap's entry table).

Target (issue 26): fault p50 at 1 GiB within 1.25x of 16 MiB. No cost per fault or per
eviction may grow with the region: the victim policy looks at a window of the oldest
resident pages, not at every page (``devpool/region/residency.py``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import devpool
from _common import header, load_pages, mixed, save
from bench_region import touch_loop

P = devpool.PAGE_SIZE


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (``/proc/PID/smaps_rollup``'s Rss)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Rss line for process {pid}")


def open_filled(npages: int, resident: float, content: np.ndarray, opts: dict) -> tuple:
    """A region of ``npages``, every page written with real content; returns (region,
    figures of the fill)."""
    budget = max(1, int(npages * resident))
    r = devpool.swap_region(npages * P, resident_bytes=budget * P, **opts)
    try:
        hpid = r.handler_pid
        rss0 = rss_bytes(hpid)
        a = r.array.reshape(npages, P)
        t = time.perf_counter()
        step = content.shape[0]
        for lo in range(0, npages, step):           # content repeated over the region
            hi = min(lo + step, npages)
            a[lo:hi] = content[:hi - lo]
        r.evict()
        fill_s = time.perf_counter() - t
        st = r.stats()
        rss1 = rss_bytes(hpid)
        evicted = max(1, st["stored_region_pages"])
        pool = st["zswap"]["pool_total_size"]
        fill = {
            "pages": npages, "resident_budget_pages": budget, "fill_s": fill_s,
            "evicted_pages": st["stored_region_pages"], "pool_total_size": pool,
            "handler_rss_growth_bytes": rss1 - rss0,
            "handler_rss_per_evicted_page": (rss1 - rss0) / evicted,
            "handler_rss_outside_pool_per_evicted_page": (rss1 - rss0 - pool) / evicted,
            "evict_per_page_p50_us": st["evict_per_page_p50_us"],
        }
        return r, fill
    except BaseException:
        r.close()
        raise


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-mib", default="16,256,1024", help="region sizes in MiB (the first is the base)")
    ap.add_argument("--resident", type=float, default=0.25, help="resident budget / region size")
    ap.add_argument("--touches", type=int, default=4000, help="random touches per size per pass")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--pages", help="(N, 4096) uint8 .npy (default: captured from built-in workloads)")
    ap.add_argument("--backend", default="host")
    ap.add_argument("--compressor", default="lz4")
    ap.add_argument("--json")
    ap.add_argument("--plot", help="a log-log plot of fault p50 and handler bytes per page (.png/.svg)")
    args = ap.parse_args(argv)
    sizes = [float(x) for x in args.sizes_mib.split(",")]
    pages, source = load_pages(args.pages)
    pages = mixed(pages)                    # (one mix at every size: _common.mixed)
    res = header("bench_region_growth", source=source, sizes_mib=sizes, resident=args.resident,
                 touches=args.touches, passes=args.passes, backend=args.backend, compressor=args.compressor,
                 gpu="none (host backend)" if args.backend == "host" else args.backend)
    opts = {"backend": args.backend, "compressor": args.compressor}
    regions, fills = [], []
    try:
        for mib in sizes:
            npages = max(4, int(mib * (1 << 20)) // P)
            r, fill = open_filled(npages, args.resident, pages, opts)
            regions.append(r)
            fills.append(dict(fill, size_mib=mib))
            print(f"  {mib:7.1f} MiB: filled in {fill['fill_s']:.1f} s, {fill['evicted_pages']} pages evicted, "
                  f"handler RSS +{fill['handler_rss_growth_bytes'] / 2**20:.1f} MiB "
                  f"({fill['handler_rss_per_evicted_page']:.0f} B per evicted page, "
                  f"{fill['handler_rss_outside_pool_per_evicted_page']:.0f} B outside the pool)", flush=True)
        rows = []
        for ps in range(args.passes):
            for mib, r in zip(sizes, regions):
                npages = r.nbytes // P
                trace = np.random.default_rng(1000 * ps + npages).integers(0, npages, args.touches)
                before = r.stats()
                lat, elapsed = touch_loop(r.array, trace, 4, None, ps)
                st = r.stats()
                row = {"size_mib": mib, "pass": ps, "timed_faults": int(lat.size),
                       "faults": st["faults"] - before["faults"],
                       "p50_us": float(np.percentile(lat, 50) / 1e3) if lat.size else 0.0,
                       "p99_us": float(np.percentile(lat, 99) / 1e3) if lat.size else 0.0,
                       "touches_per_s": trace.size / elapsed,
                       "handler_service_p50_us": st["fault_p50_us"]}
                rows.append(row)
                print(f"  pass {ps} {mib:7.1f} MiB: faults {row['timed_faults']:6d}  p50 {row['p50_us']:6.1f} us  "
                      f"p99 {row['p99_us']:7.1f} us  {row['touches_per_s']:.0f} touches/s", flush=True)
        for fill, r in zip(fills, regions):     # the handler's memory after the touches, too
            fill["handler_rss_after_touches_bytes"] = rss_bytes(r.handler_pid)
    finally:
        for r in regions:
            r.close()
    summary = []
    for mib, fill in zip(sizes, fills):
        mine = [row for row in rows if row["size_mib"] == mib]
        ratios = [row["p50_us"] / base["p50_us"]
                  for row, base in zip(mine, (x for x in rows if x["size_mib"] == sizes[0])) if base["p50_us"]]
        summary.append(dict(fill, fault_p50_us=float(np.median([x["p50_us"] for x in mine])),
                            fault_p99_us=float(np.median([x["p99_us"] for x in mine])),
                            p50_vs_smallest=float(np.median(ratios)) if ratios else 0.0,
                            p50_vs_smallest_range=[float(min(ratios)), float(max(ratios))] if ratios else [0, 0]))
    res["rows"], res["summary"] = rows, summary
    print(f"\nregion growth ({args.backend}, {args.compressor}; {args.passes} passes of {args.touches} random touches "
          f"per size, alternating; a {args.resident:g} of each region resident)")
    print(f"{'size':>9} {'fault p50':>10} {'vs smallest':>22} {'p99':>9} {'evict/page':>11} "
          f"{'handler B/evicted page':>23} {'outside pool':>13}")
    for s in summary:
        lo, hi = s["p50_vs_smallest_range"]
        print(f"{s['size_mib']:6.0f} MiB {s['fault_p50_us']:7.1f} us {s['p50_vs_smallest']:8.2f}x ({lo:.2f} - {hi:.2f}) "
              f"{s['fault_p99_us']:6.0f} us {s['evict_per_page_p50_us']:8.1f} us "
              f"{s['handler_rss_per_evicted_page']:23.0f} {s['handler_rss_outside_pool_per_evicted_page']:13.0f}")
    save(res, args.json)
    if args.plot:
        plot(summary, args.plot)
    return res


def plot(summary: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [s["size_mib"] for s in summary]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.loglog(x, [s["fault_p50_us"] for s in summary], "o-", c="tab:blue", label="fault p50 (us)")
    ax.loglog(x, [s["fault_p99_us"] for s in summary], "o--", c="tab:blue", alpha=0.5, label="fault p99 (us)")
    ax.loglog(x, [max(1e-3, s["evict_per_page_p50_us"]) for s in summary], "s-", c="tab:green",
              label="eviction per page p50 (us)")
    ax.set_xlabel("region size (MiB), a quarter resident")
    ax.set_ylabel("microseconds")
    ax2 = ax.twinx()
    ax2.set_yscale("log")
    ax2.plot(x, [max(1.0, s["handler_rss_outside_pool_per_evicted_page"]) for s in summary], "^-", c="tab:orange",
             label="handler bytes per evicted page, outside the pool")
    ax2.set_ylabel("bytes per evicted page")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="upper left", fontsize=8)
    ax.set_title("swap_region: cost as the region grows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
