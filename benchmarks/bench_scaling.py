"""How far this machine's cores scale the codec's work: the ceiling on any "x loop" ratio.

    python benchmarks/bench_scaling.py [--pages F.npy] [--max-pages 4096] [--window 0.5] [--repeats 7]

The codec targets (lz4-njit >= 2.2x / 2.0x a single-threaded ``lz4.block`` loop on two
cores) assume the cores add up. This measures whether they do, for the very same work,
independently of numba's threading: each workload runs for a fixed time window in one
process, then in ``--procs`` processes at once (all started together, all running the
whole window), and the pages done are summed; each repeat times 1 and ``--procs``
back to back, so every ratio pairs two adjacent windows. Workloads:

- the baseline itself: ``lz4.block`` compress / decompress loops (liblz4, no numba);
- ``lz4-njit`` compress / decompress on one thread per process, batches of 1024 pages;
- a latency-bound integer chain (one dependent multiply per step: leaves the core's
  ports idle, so it scales with the number of cores the machine really gives).

Then ``lz4-njit`` with numba's threads inside one process, the way Zswap runs it. A
codec's ratio to the loop can reach at most (its per-core ratio) x (the scaling the
machine gives the work): the last lines report both against the loop. Figures are
medians over ``--repeats`` pairs, with the range (shared, noisy machine). Last, the
baseline pinned to each CPU in turn: how far its fastest window runs above its median
(why the benchmarks' headline ratios are medians of paired passes, not best-of-N).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time

import numba
import numpy as np

import devpool
from devpool.cli.measure import lz4_blocks, lz4_compress_loop, lz4_decompress_loop
from _common import header, load_pages, pack, save

BATCH = 1024
CHAIN_STEPS = 1 << 20           # one unit of the integer chain's work


# --- the workloads: each is (one unit of work, pages or steps per unit) -------------------
def _workload(name: str, pages: np.ndarray):
    if name == "lz4.block compress":
        return lambda: lz4_compress_loop(pages), pages.shape[0]
    if name == "lz4.block decompress":
        blocks = lz4_blocks(pages)
        return lambda: lz4_decompress_loop(blocks), pages.shape[0]
    if name == "integer chain":
        return lambda: _chain(CHAIN_STEPS), CHAIN_STEPS
    codec = devpool.get_codec("lz4-njit")
    cuts = [(lo, min(lo + BATCH, pages.shape[0])) for lo in range(0, pages.shape[0], BATCH)]
    if name == "lz4-njit compress":
        return lambda: [codec.compress_blocks(pages[lo:hi]) for lo, hi in cuts], pages.shape[0]
    assert name == "lz4-njit decompress", name
    data, lengths, starts = pack(lz4_blocks(pages))
    out = np.empty((BATCH, pages.shape[1]), np.uint8)

    def decode():
        for lo, hi in cuts:
            codec.decompress_into(data[starts[lo]:starts[hi]], lengths[lo:hi], out[:hi - lo])
    return decode, pages.shape[0]


@numba.njit(nogil=True)
def _chain(n):
    x = np.uint64(1)
    for i in range(n):
        x = (x ^ (x >> np.uint64(7))) * np.uint64(6364136223846793005) + np.uint64(i)
    return x


def _run_window(work, per_unit: int, window: float, start_at: float) -> float:
    """Work done from ``start_at`` for ``window`` seconds, per second (pages or steps)."""
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    done = 0
    while True:
        work()
        done += per_unit
        dt = time.perf_counter() - t0
        if dt >= window:
            return done / dt


def _serve(conn, pages_path):
    """A worker process: prepares every workload, then runs windows on command."""
    numba.set_num_threads(1)
    pages = np.load(pages_path)
    works = {name: _workload(name, pages) for name in WORKLOADS}
    for work, _ in works.values():
        work()                               # compile, warm caches
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        name, window, start_at = msg
        conn.send(_run_window(works[name][0], works[name][1], window, start_at))


class Workers:
    """``n`` single-threaded worker processes that run a workload's window together."""

    def __init__(self, n: int, pages_path: str):
        ctx = mp.get_context("spawn")        # numba's OpenMP pool must not be forked
        self.conns, self.procs = [], []
        for _ in range(n):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there, pages_path), daemon=True)
            proc.start()
            self.conns.append(here)
            self.procs.append(proc)
        for c in self.conns:
            if c.recv() != "ready":
                raise RuntimeError("a worker process failed to start")

    def run(self, name: str, k: int, window: float) -> float:
        """Summed rate of ``k`` workers running ``name`` over the same window."""
        start_at = time.time() + 0.02
        for c in self.conns[:k]:
            c.send((name, window, start_at))
        return sum(c.recv() for c in self.conns[:k])

    def close(self):
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(10)


def _in_process(work, per_unit: int, nthreads: int, window: float) -> float:
    """Rate of ``work`` in this process on ``nthreads`` numba threads."""
    before = numba.get_num_threads()
    numba.set_num_threads(nthreads)
    try:
        return _run_window(work, per_unit, window, 0.0)
    finally:
        numba.set_num_threads(before)


WORKLOADS = ["lz4.block compress", "lz4.block decompress", "lz4-njit compress", "lz4-njit decompress",
             "integer chain"]
THREADED = ["lz4-njit compress", "lz4-njit decompress"]


def bursts(pages: np.ndarray, window: float, repeats: int) -> list[dict]:
    """The single-threaded baseline pinned to each CPU in turn: median and fastest window.
    A fastest far above the median is a burst (a briefly uncontended vCPU) that a
    best-of-N figure would keep for a 1-thread run but rarely sees on all cores at once."""
    cpus = sorted(os.sched_getaffinity(0))
    out = []
    try:
        for name in ("lz4.block compress", "lz4.block decompress"):
            work, per_unit = _workload(name, pages)
            rates = {cpu: [] for cpu in cpus}
            for _ in range(repeats):
                for cpu in cpus:
                    os.sched_setaffinity(0, {cpu})
                    rates[cpu].append(_run_window(work, per_unit, window, 0.0))
            for cpu, r in rates.items():
                out.append({"workload": name, "cpu": cpu, "median": float(np.median(r)), "fastest": max(r)})
                print(f"{name} pinned to CPU {cpu}: median {np.median(r):.4g} pages/s, fastest window "
                      f"{max(r):.4g} ({max(r) / np.median(r):.2f}x the median)")
    finally:
        os.sched_setaffinity(0, cpus)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages")
    ap.add_argument("--max-pages", type=int, default=4096)
    ap.add_argument("--procs", type=int, default=os.cpu_count())
    ap.add_argument("--window", type=float, default=0.5, help="seconds each measurement runs")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    pages, source = load_pages(args.pages, args.max_pages)
    n, k = pages.shape[0], args.procs
    nthreads = numba.get_num_threads()
    res = header("bench_scaling", pages=n, pages_source=source, procs=k, threads=nthreads,
                 window_s=args.window, repeats=args.repeats)
    # every repeat measures 1 and k side by side, so each ratio pairs two adjacent windows
    runs: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pages.npy")
        np.save(path, pages)
        workers = Workers(k, path)
        local = {name: _workload(name, pages) for name in THREADED}
        for work, _ in local.values():
            work()
        try:
            for _ in range(args.repeats):
                for name in WORKLOADS:
                    runs.setdefault(name, []).append((workers.run(name, 1, args.window),
                                                      workers.run(name, k, args.window)))
                for name, (work, per_unit) in local.items():
                    runs.setdefault(name + " threads", []).append(
                        (_in_process(work, per_unit, 1, args.window),
                         _in_process(work, per_unit, nthreads, args.window)))
        finally:
            workers.close()
    print(f"# bench_scaling {res['date']} {res['machine']}; {n} pages from {source}; "
          f"{args.repeats} paired {args.window:g} s windows; median (min - max) of the pairs' ratios")
    print(f"{'':34}{'1':>11}{f'{k} / {nthreads}':>11}   scaling")
    rows = []
    for name, pairs in runs.items():
        one, many = np.array(pairs).T
        ratio = many / one
        mode = "threads" if name.endswith(" threads") else "processes"
        label = (f"{name.removesuffix(' threads')}, {nthreads} numba threads" if mode == "threads"
                 else f"{name}, {k} processes")
        rows.append({"workload": name.removesuffix(" threads"), "mode": mode,
                     "unit": "steps/s" if name == "integer chain" else "pages/s",
                     "one_median": float(np.median(one)), "many_median": float(np.median(many)),
                     "scaling_median": float(np.median(ratio)), "scaling_min": float(ratio.min()),
                     "scaling_max": float(ratio.max())})
        print(f"{label:<34}{np.median(one):>11.4g}{np.median(many):>11.4g}   {np.median(ratio):.2f}x "
              f"({ratio.min():.2f} - {ratio.max():.2f})")
    res["rows"] = rows
    for op in ("compress", "decompress"):
        loop, ours = np.array(runs[f"lz4.block {op}"]), np.array(runs[f"lz4-njit {op}"])
        per_core = float(np.median(ours[:, 0] / loop[:, 0]))
        ceiling = float(np.median(ours[:, 1] / loop[:, 0]))
        res[f"{op}_per_core_vs_loop"], res[f"{op}_processes_vs_loop"] = per_core, ceiling
        print(f"lz4-njit {op}: one core {per_core:.2f}x the loop; {k} processes {ceiling:.2f}x the loop")
    res["bursts"] = bursts(pages, args.window / 2, 2 * args.repeats)
    save(res, args.json)
    return res


if __name__ == "__main__":
    main()
