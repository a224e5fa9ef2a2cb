"""The machine's swap into devpool, beside the kernel's own: swap-in fault latency, fill
throughput and compression, on the same workload, in the same run.

A process in a memory cgroup (v1 or v2) fills a region twice its limit with real pages
(captured from the built-in workloads, cycled), then touches pages in zipf and uniform
order, timing every access that was a swap-in (a major fault); every page is verified
twice. The same workload runs against, in turn and pass after pass (interleaved):

- ``devpool-lz4``: ``devpool swapon`` (host pool, lz4);
- ``devpool-raw``: the same with the ``raw`` codec: the transport floor (FUSE + loop);
- ``zswap``: the kernel's zswap (its compressor here: lzo, no crypto lz4 in this kernel)
  in front of a swap file on the virtual disk;
- ``zram``: ``/dev/zram0`` (lz4) as swap;
- ``swapfile``: a plain swap file on the virtual disk.

Only one of them is active at a time, at the highest priority. Every machine setting the
run changes is put back in ``finally``: zswap's parameters, ``vm.page-cluster`` (0 here:
one page per fault, the cost of a fault without readahead), zram's ``reset``. Headlines
are medians of per-pass values with their range; ratios are medians of per-pass ratios.

``--iops`` adds 4 KiB ``O_DIRECT`` random read / write IOPS on the devpool loop device
(not activated as swap) and on zram, at queue depth 1 and 16, with fio when installed
(libaio), else a threaded Python reader. ``--levers`` measures what the transport's levers
gain: the server spinning 50 us after a request (against sleeping at once, the default),
loop with direct I/O (against buffered), two threads reading ``/dev/fuse`` (against one),
each write stored alone (against the waiting whole-page writes gathered into one store).
Beside the figures, what decides the fill: how busy the machine's CPUs were during it,
the workload's own CPU per page, the server's CPU per page served.

    flock /tmp/devpool-bench.lock python benchmarks/bench_swapdev.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, load_pages, machine_lock, save  # noqa: E402

from devpool.swapdev import swap_device, workload  # noqa: E402
from devpool.swapdev.device import active_swaps  # noqa: E402

PAGE = 4096
ZSWAP = "/sys/module/zswap/parameters"
ZRAM = "/sys/block/zram0"
PRIORITY = 32767
SUBJECTS = ("devpool-lz4", "devpool-raw", "zswap", "zram", "swapfile")

#: published figures, quoted as what they are (other hardware, other software)
PUBLISHED = {
    "vramfs (FUSE file + loop, RX480; fio 4 KiB random)": "read 19.2k IOPS, write 73.5k IOPS",
    "nbd-vram (NBD, RTX 3070; fio 4 KiB)": "77k IOPS, 312k with a pinned buffer and a stream per core",
}


# --- machine settings, always put back --------------------------------------------------------
def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


@contextlib.contextmanager
def settings(values: dict):
    """Set sysfs/procfs files for the block; every one is restored, also on error."""
    old = {}
    try:
        for path, value in values.items():
            old[path] = _read(path)
            _write(path, value)
        yield
    finally:
        for path, value in reversed(list(old.items())):
            try:
                _write(path, value)
            except OSError as exc:
                print(f"bench_swapdev: could not restore {path} to {value!r}: {exc}", file=sys.stderr)


def _run(*argv) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextlib.contextmanager
def swap_file(nbytes: int, folder: str):
    """A plain swap file on disk, active at the top priority for the block."""
    path = os.path.join(folder, "bench-swapdev.swap")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, nbytes)          # no holes: swapon refuses holes
    finally:
        os.close(fd)
    try:
        _run("mkswap", path)
        _run("swapon", "-p", str(PRIORITY), path)
        try:
            yield path
        finally:
            _run("swapoff", path)
    finally:
        os.unlink(path)


@contextlib.contextmanager
def zswap_in_front(nbytes: int, folder: str):
    """The kernel's zswap (enabled for the block) in front of a plain swap file."""
    with settings({f"{ZSWAP}/enabled": "Y", f"{ZSWAP}/max_pool_percent": 20,
                   f"{ZSWAP}/accept_threshold_percent": 90}):
        with swap_file(nbytes, folder) as path:
            yield path


@contextlib.contextmanager
def zram_swap(nbytes: int):
    """``/dev/zram0`` (lz4) as swap, only when nobody uses it (disksize 0); reset after."""
    with machine_lock("/tmp/devpool-zram.lock") as held:
        if isinstance(held, str):
            raise RuntimeError(held)
        if _read(f"{ZRAM}/disksize") != "0":
            raise RuntimeError("/dev/zram0 is in use (disksize is not 0): left alone")
        try:
            _write(f"{ZRAM}/comp_algorithm", "lz4")
            _write(f"{ZRAM}/disksize", nbytes)
            _run("mkswap", "/dev/zram0")
            _run("swapon", "-p", str(PRIORITY), "/dev/zram0")
            try:
                yield "/dev/zram0"
            finally:
                _run("swapoff", "/dev/zram0")
        finally:
            _write(f"{ZRAM}/reset", 1)


def _meminfo(key: str) -> int:
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


# --- one run of the workload against one subject --------------------------------------------------
#: the transport's levers, each devpool-lz4 with one setting changed
LEVERS = {"devpool-lz4-spin50": {"spin_us": 50},          # the server polls 50 us after a request
          "devpool-lz4-loopbuf": {"_loop_dio": False},     # loop without direct I/O
          "devpool-lz4-threads2": {"threads": 2},          # two reader threads on cloned descriptors
          "devpool-lz4-nogather": {"_gather": False}}      # each write stored alone, none gathered


def run_once(subject: str, args, source: str, folder: str) -> dict:
    size = args.region_mb * 3 // 2 << 20
    cfg = {"pages": args.region_mb << 20 >> 12, "source": source, "touches": args.touches,
           "patterns": ["zipf", "uniform"]}
    store = {}
    if subject.startswith("devpool"):
        ctx = swap_device(size, backend=args.backend, compressor=subject.split("-")[1],
                          max_pool_percent=100, priority=PRIORITY, **LEVERS.get(subject, {}))
    elif subject == "zswap":
        ctx = zswap_in_front(size, folder)
    elif subject == "zram":
        ctx = zram_swap(size)
    else:
        ctx = swap_file(size, folder)
    with ctx as dev:
        start = dev.stats() if subject.startswith("devpool") else None
        result = workload.run(cfg, args.limit_mb << 20, timeout=args.timeout, tag="devpool-bench",
                              at_end=lambda: store.update(_store_figures(subject, dev, start)))  # pages still out
    result["store"] = store
    return result


def _store_figures(subject: str, dev, start=None) -> dict:
    if subject.startswith("devpool"):
        st = dev.stats()
        z = st["zswap"]
        comp = z["stored_compressed_bytes"]
        served = sum(st[k] - start[k] for k in ("read_pages", "written_pages"))
        stores = st["stores"] - start["stores"]
        return {"server_cpu_us_per_page": (st["cpu_s"] - start["cpu_s"]) / served * 1e6 if served else None,
                "pages_per_write": (st["written_pages"] - start["written_pages"]) / max(1, st["writes"] - start["writes"]),
                "pages_per_store": (st["written_pages"] - start["written_pages"]) / stores if stores else None,
                "compression_ratio": z["compression_ratio"],
                "pool_bytes_per_compressed_byte": z["pool_total_size"] / comp if comp else None,
                "stored_pages": z["stored_pages"], "read_service_p50_us": st["read_service_p50_us"],
                "read_errors": st["read_errors"], "write_errors": st["write_errors"]}
    if subject == "zswap":
        pool, orig = _meminfo("Zswap"), _meminfo("Zswapped")
        return {"compression_ratio": orig / pool if pool else None, "stored_bytes": orig}
    if subject == "zram":
        cols = [int(v) for v in _read(f"{ZRAM}/mm_stat").split()]
        orig, compr, used = cols[:3]
        return {"compression_ratio": orig / compr if compr else None,
                "pool_bytes_per_compressed_byte": used / compr if compr else None}
    return {"compression_ratio": 1.0}


# --- IOPS ----------------------------------------------------------------------------------------
def iops(device: str, rw: str, depth: int, seconds: float, nbytes: int) -> float:
    """4 KiB O_DIRECT random ``rw`` (read / write) IOPS at queue depth ``depth``."""
    if shutil.which("fio"):
        done = subprocess.run(
            ["fio", "--name=b", f"--filename={device}", f"--rw=rand{rw}", "--bs=4k", "--direct=1",
             "--ioengine=libaio", f"--iodepth={depth}", f"--runtime={seconds}", "--time_based",
             f"--size={nbytes}", "--output-format=json", "--numjobs=1"],
            capture_output=True, text=True, check=True)
        job = json.loads(done.stdout)["jobs"][0]
        return float(job["read" if rw == "read" else "write"]["iops"])
    return _python_iops(device, rw, depth, seconds, nbytes)


def _python_iops(device: str, rw: str, depth: int, seconds: float, nbytes: int) -> float:
    """No fio: ``depth`` threads each doing one O_DIRECT pread/pwrite at a time."""
    import mmap
    import threading
    counts = [0] * depth
    stop = time.monotonic() + seconds

    def worker(k):
        fd = os.open(device, os.O_RDWR | os.O_DIRECT)
        buf = mmap.mmap(-1, PAGE)
        buf[:] = os.urandom(PAGE) if rw == "write" else bytes(PAGE)
        rng = np.random.default_rng(k)
        slots = rng.integers(0, nbytes // PAGE, size=1 << 16) * PAGE
        i = 0
        try:
            while time.monotonic() < stop:
                off = int(slots[i & 0xFFFF])
                (os.pwritev if rw == "write" else os.preadv)(fd, [buf], off)
                i += 1
        finally:
            counts[k] = i
            os.close(fd)
            buf.close()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(depth)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def _prefill(device: str, pages: np.ndarray, nbytes: int) -> None:
    """Write real pages to every slot (so reads are of stored data, not empty slots)."""
    fd = os.open(device, os.O_WRONLY)
    try:
        block = np.ascontiguousarray(pages[np.arange(256) % pages.shape[0]])
        for off in range(0, nbytes, block.nbytes):
            os.pwrite(fd, block.tobytes()[:nbytes - off], off)
        os.fsync(fd)
    finally:
        os.close(fd)


def run_iops(args, pages: np.ndarray) -> dict:
    nbytes = args.iops_mb << 20
    out = {"tool": "fio (libaio)" if shutil.which("fio") else "python threads (no fio)"}
    for p in range(args.passes):
        for subject in ("devpool-lz4", "zram"):
            if subject == "zram":
                with machine_lock("/tmp/devpool-zram.lock") as held:
                    if isinstance(held, str) or _read(f"{ZRAM}/disksize") != "0":
                        continue
                    try:
                        _write(f"{ZRAM}/comp_algorithm", "lz4")
                        _write(f"{ZRAM}/disksize", nbytes)
                        out.setdefault(subject, []).append(_iops_set("/dev/zram0", pages, nbytes, args))
                    finally:
                        _write(f"{ZRAM}/reset", 1)
            else:
                with swap_device(nbytes, backend=args.backend, compressor="lz4", max_pool_percent=100,
                                 activate=False) as dev:
                    out.setdefault(subject, []).append(_iops_set(dev.device, pages, nbytes, args))
    return out


def _iops_set(device: str, pages, nbytes: int, args) -> dict:
    _prefill(device, pages, nbytes)
    return {f"{rw}_qd{d}": iops(device, rw, d, args.iops_seconds, nbytes)
            for rw in ("read", "write") for d in (1, 16)}


# --- the run ------------------------------------------------------------------------------------
def why_not() -> str | None:
    """None when this machine can run the benchmark, else why not (root, FUSE, loop
    devices, the tools, a memory cgroup hierarchy)."""
    from devpool.swapdev.device import SwapDeviceError, check_prerequisites
    try:
        check_prerequisites()
    except SwapDeviceError as exc:
        return str(exc.strerror or exc)
    if workload.cgroup_version() is None:
        return "no memory cgroup hierarchy is mounted"
    return None



def med(values):
    v = [x for x in values if x is not None]
    return (float(np.median(v)), float(min(v)), float(max(v))) if v else (None, None, None)


def summarise(runs: dict, subjects) -> dict:
    out = {}
    for s in subjects:
        rs = runs.get(s, [])
        row = {"passes": len(rs), "pages_lost": sum(r.get("bad_pages", 0) + r.get("bad_after_fill", 0) for r in rs),
               "failed_runs": sum(r.get("returncode") != 0 for r in rs),
               "fill_mb_s": med([r.get("fill_mb_s") for r in rs])}
        for pat in ("zipf", "uniform"):
            row[f"{pat}_p50_us"] = med([r.get("touch", {}).get(pat, {}).get("fault_p50_us") for r in rs])
            row[f"{pat}_p90_us"] = med([r.get("touch", {}).get(pat, {}).get("fault_p90_us") for r in rs])
            row[f"{pat}_faults"] = med([r.get("touch", {}).get(pat, {}).get("faults") for r in rs])
        row["fill_machine_busy"] = med([r.get("fill_machine_busy") for r in rs])
        row["fill_cpu_us_per_page"] = med([r["fill_cpu_s"] / r["pages"] * 1e6 for r in rs if r.get("fill_cpu_s")])
        row["server_cpu_us_per_page"] = med([r["store"].get("server_cpu_us_per_page") for r in rs if r.get("store")])
        row["pages_per_write"] = med([r["store"].get("pages_per_write") for r in rs if r.get("store")])
        row["pages_per_store"] = med([r["store"].get("pages_per_store") for r in rs if r.get("store")])
        row["compression_ratio"] = med([r["store"].get("compression_ratio") for r in rs if r.get("store")])
        row["pool_bytes_per_compressed_byte"] = med([r["store"].get("pool_bytes_per_compressed_byte")
                                                     for r in rs if r.get("store")])
        out[s] = row
    return out


def ratios(runs: dict, a: str, b: str, key) -> tuple:
    """Median (range) over passes of ``key(run of a) / key(run of b)``, pass by pass."""
    pairs = [(key(x), key(y)) for x, y in zip(runs.get(a, []), runs.get(b, []))]
    return med([x / y for x, y in pairs if x and y])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", default="", help="(N, 4096) uint8 .npy of real pages (default: capture)")
    ap.add_argument("--max-pages", type=int, default=16384)
    ap.add_argument("--limit-mb", type=int, default=64, help="the workload's memory cgroup limit")
    ap.add_argument("--region-mb", type=int, default=128, help="the workload's region (2x the limit)")
    ap.add_argument("--touches", type=int, default=4000, help="touches per pattern")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--subjects", default=",".join(SUBJECTS))
    ap.add_argument("--backend", default="host", help="the devpool pool's backend (host, cuda, chaos)")
    ap.add_argument("--page-cluster", type=int, default=0)
    ap.add_argument("--levers", action="store_true", help="also devpool-lz4 with each transport lever off")
    ap.add_argument("--iops", action="store_true", help="also 4 KiB O_DIRECT random IOPS, devpool against zram")
    ap.add_argument("--iops-mb", type=int, default=64)
    ap.add_argument("--iops-seconds", type=float, default=3)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    subjects = [s for s in args.subjects.split(",") if s]
    unknown = set(subjects) - set(SUBJECTS)
    if unknown:
        ap.error(f"unknown subjects {sorted(unknown)}; known: {', '.join(SUBJECTS)}")
    why = why_not()
    if why:
        print(f"bench_swapdev: cannot run here: {why}", file=sys.stderr)
        return 2
    if active_swaps():
        print(f"bench_swapdev: swap is already active ({', '.join(active_swaps())}); the subjects "
              f"must be alone: left alone", file=sys.stderr)
        return 2
    pages, source_name = load_pages(args.pages, args.max_pages)
    result = header("bench_swapdev", pages_source=source_name, pages=int(pages.shape[0]),
                    limit_mb=args.limit_mb, region_mb=args.region_mb, touches=args.touches,
                    passes=args.passes, backend=args.backend, page_cluster=args.page_cluster,
                    zswap_compressor=_read(f"{ZSWAP}/compressor"), published=PUBLISHED)
    runs: dict[str, list] = {}
    order = list(subjects) + (list(LEVERS) if args.levers else [])
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="bench-swapdev-") as folder:
        source = os.path.join(folder, "pages.npy")
        np.save(source, pages)
        with settings({"/proc/sys/vm/page-cluster": args.page_cluster}):
            for p in range(args.passes):
                for s in order:
                    r = run_once(s, args, source, folder)
                    runs.setdefault(s, []).append(r)
                    t = r.get("touch", {}).get("zipf", {})
                    print(f"pass {p + 1} {s:<20} fill {r.get('fill_mb_s', 0):7.1f} MB/s  zipf p50 "
                          f"{t.get('fault_p50_us', float('nan')):7.1f} us  lost "
                          f"{r.get('bad_pages', '?')}  rc {r['returncode']}", flush=True)
            if args.iops:
                result["iops"] = run_iops(args, pages)
    result["runs"] = runs
    result["summary"] = summarise(runs, order)
    p50 = lambda r: r.get("touch", {}).get("zipf", {}).get("fault_p50_us")   # noqa: E731
    fill = lambda r: r.get("fill_mb_s")                                         # noqa: E731
    result["targets"] = {
        "zipf p50 devpool-lz4 / devpool-raw (<= 1.15)": ratios(runs, "devpool-lz4", "devpool-raw", p50),
        "zipf p50 devpool-lz4 / swapfile (<= 1.5)": ratios(runs, "devpool-lz4", "swapfile", p50),
        "fill devpool-lz4 / swapfile (>= 1)": ratios(runs, "devpool-lz4", "swapfile", fill),
        "zipf p50 devpool-lz4 spinning 50 us / not": ratios(runs, "devpool-lz4-spin50", "devpool-lz4", p50),
        "zipf p50 devpool-lz4 loop buffered / direct": ratios(runs, "devpool-lz4-loopbuf", "devpool-lz4", p50),
        "fill devpool-lz4 loop buffered / direct": ratios(runs, "devpool-lz4-loopbuf", "devpool-lz4", fill),
        "fill devpool-lz4 2 reader threads / 1": ratios(runs, "devpool-lz4-threads2", "devpool-lz4", fill),
        "zipf p50 devpool-lz4 2 reader threads / 1": ratios(runs, "devpool-lz4-threads2", "devpool-lz4", p50),
        "fill devpool-lz4 writes gathered / not": ratios(runs, "devpool-lz4", "devpool-lz4-nogather", fill),
        "zipf p50 devpool-lz4 writes gathered / not": ratios(runs, "devpool-lz4", "devpool-lz4-nogather", p50),
        "fill devpool-raw / swapfile": ratios(runs, "devpool-raw", "swapfile", fill),
        "fill zram / swapfile": ratios(runs, "zram", "swapfile", fill),
    }
    print_table(result)
    save(result, args.json)
    return 0


def _fmt(t, unit="", digits=1):
    m, lo, hi = t
    if m is None:
        return "-"
    return f"{m:.{digits}f}{unit} ({lo:.{digits}f}-{hi:.{digits}f})"


def print_table(result: dict) -> None:
    print(f"\nbench_swapdev — {result['machine']}, {result['pages']} real pages, region {result['region_mb']} MiB "
          f"in a {result['limit_mb']} MiB cgroup, page-cluster {result['page_cluster']}, "
          f"{result['passes']} passes interleaved; median (range)")
    print(f"{'subject':<20} {'fill MB/s':>22} {'zipf p50 us':>22} {'zipf p90 us':>22} "
          f"{'uniform p50 us':>22} {'ratio':>18} {'pool/compr':>18} lost")
    for s, row in result["summary"].items():
        print(f"{s:<20} {_fmt(row['fill_mb_s']):>22} {_fmt(row['zipf_p50_us']):>22} {_fmt(row['zipf_p90_us']):>22} "
              f"{_fmt(row['uniform_p50_us']):>22} {_fmt(row['compression_ratio'], digits=2):>18} "
              f"{_fmt(row['pool_bytes_per_compressed_byte'], digits=3):>18} {row['pages_lost']}"
              + (f"  ({row['failed_runs']} runs failed)" if row["failed_runs"] else ""))
    print("why the fill is what it is: the machine's CPUs busy during the fill (all subjects' work and "
          "anything else running), the workload's own CPU per page filled (the copy and the reclaim done in "
          "its context), the devpool server's CPU per page served (all its threads)")
    for s, row in result["summary"].items():
        print(f"  {s:<20} machine busy {_fmt(row['fill_machine_busy'], digits=2):>18}  workload "
              f"{_fmt(row['fill_cpu_us_per_page'], ' us'):>22}  server {_fmt(row['server_cpu_us_per_page'], ' us'):>22}"
              + (f"  pages per write {_fmt(row['pages_per_write'])}, per zswap store {_fmt(row['pages_per_store'])}"
                 if row["pages_per_write"][0] is not None else ""))
    print("targets (median of per-pass ratios, range):")
    for k, v in result["targets"].items():
        print(f"  {k:<48} {_fmt(v, digits=2)}")
    if "iops" in result:
        io = result["iops"]
        print(f"4 KiB O_DIRECT random IOPS ({io['tool']}), median (range):")
        for s in ("devpool-lz4", "zram"):
            if s in io:
                cells = "  ".join(f"{k} {_fmt(med([x[k] for x in io[s]]), digits=0)}" for k in io[s][0])
                print(f"  {s:<12} {cells}")
        for k, v in PUBLISHED.items():
            print(f"  published, not measured here: {k}: {v}")


if __name__ == "__main__":
    sys.exit(main())
