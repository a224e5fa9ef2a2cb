"""A workload that swaps: a process in a memory cgroup, twice as big as its limit, whose
every page is verified — what the tests and ``benchmarks/bench_swapdev.py`` run.

Swapping is machine-wide; only pages of a process whose memory cgroup is at its limit
are pushed out here, so every swap test and benchmark runs its workload through
:func:`memory_cgroup` (cgroup v1 ``/sys/fs/cgroup/memory`` or v2, whichever the machine
mounts), and the cgroup is removed, its processes killed, even on error.

The child (``python devpool/swapdev/workload.py CONFIG``, numpy only) maps anonymous memory, fills
it with pages (from an ``.npy`` of real pages, cycled, or synthetic ones: text-like,
random, zero), reads every page back and compares, touches pages in a zipf or uniform
order timing each access that was a major fault (a swap-in), verifies every page again,
and prints one JSON line. With ``pause`` it prints ``{"filled": ...}`` after filling and
waits for a line on stdin first (a test kills the server then).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import resource
import subprocess
import sys
import time
import uuid

import numpy as np

PAGE = 4096
V1 = "/sys/fs/cgroup/memory"
V2 = "/sys/fs/cgroup"


def cgroup_version() -> int | None:
    if os.path.exists(os.path.join(V1, "cgroup.procs")):
        return 1
    if os.path.exists(os.path.join(V2, "cgroup.controllers")):
        return 2
    return None


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int, tag: str = "devpool-swap"):
    """A fresh memory cgroup limited to ``limit_bytes``; yields its ``cgroup.procs``
    path. On exit every process in it is killed and the cgroup removed."""
    version = cgroup_version()
    if version is None:
        raise OSError("no memory cgroup hierarchy is mounted")
    root = V1 if version == 1 else V2
    path = os.path.join(root, f"{tag}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        if version == 1:
            _write(path, "memory.limit_in_bytes", limit_bytes)
            _write(path, "memory.swappiness", 100)     # anonymous pages are all it has to give
        else:
            _write(path, "memory.max", limit_bytes)
            _write(path, "memory.swap.max", "max")
        yield os.path.join(path, "cgroup.procs")
    finally:
        remove_cgroup(path)


def _write(folder: str, name: str, value) -> None:
    with open(os.path.join(folder, name), "w") as f:
        f.write(str(value))


def remove_cgroup(path: str) -> None:
    """Kill what is left in the cgroup, then remove it (retrying while it drains)."""
    deadline = time.monotonic() + 20
    while os.path.isdir(path):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        try:
            os.rmdir(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start(cfg: dict, procs: str) -> subprocess.Popen:
    """Start the workload child inside the cgroup whose ``cgroup.procs`` is ``procs``
    (it joins before it allocates anything of its own)."""
    def join():
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    # run as a script, not ``-m devpool...``: importing the package (numba and all) would
    # cost the cgroup 40 MB of its own; numpy alone is 14
    return subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), json.dumps(cfg)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=join, close_fds=True)


def run(cfg: dict, limit_bytes: int, timeout: float = 300, at_end=None, tag: str = "devpool-swap") -> dict:
    """Run the workload to its end in a fresh cgroup; its JSON result (with ``returncode``).
    ``at_end()``, if given, runs once the child has touched and verified everything but
    before it exits (its pages still swapped out): a benchmark reads the store's figures."""
    if at_end is not None:
        cfg = {**cfg, "pause_end": True}
    with memory_cgroup(limit_bytes, tag=tag) as procs:
        child = start(cfg, procs)
        try:
            if at_end is not None:
                line = child.stdout.readline()
                if line.startswith("{") and json.loads(line).get("done"):
                    at_end()
                    child.stdin.write("\n")
                    child.stdin.flush()
            out, _ = child.communicate(timeout=timeout)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    result = lines[-1] if lines else {}
    result["returncode"] = child.returncode
    return result


# --- the child -----------------------------------------------------------------------------------
_WORDS = np.frombuffer(b"swap page zswap pool device kernel loop fuse memory cgroup the of and ", np.uint8)


def synthetic_pages(lo: int, hi: int, seed: int) -> np.ndarray:
    """Pages ``lo .. hi-1`` of a synthetic region, made afresh from ``(seed, lo)`` (so
    the child holds no copy of the whole region to compare with): mostly text-like
    (compressible), a tenth random, a tenth zero, each text page stamped with its index."""
    rng = np.random.default_rng([seed, lo])
    n = hi - lo
    pages = _WORDS[rng.integers(0, _WORDS.size, size=(n, PAGE), dtype=np.uint8)]
    pages[:, :8] = np.arange(lo, hi, dtype=np.uint64).view(np.uint8).reshape(n, 8)
    kind = rng.random(n)
    pages[kind < 0.1] = rng.integers(0, 256, size=(int((kind < 0.1).sum()), PAGE), dtype=np.uint8)
    pages[kind > 0.9] = 0
    return pages


def _order(n: int, touches: int, pattern: str, rng) -> np.ndarray:
    if pattern == "uniform":
        return rng.integers(0, n, size=touches)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    p = ranks ** -0.9
    p /= p.sum()
    perm = rng.permutation(n)                       # hot pages spread over the region
    return perm[rng.choice(n, size=touches, p=p)]


CHUNK = 256


def _touch(region: np.ndarray, order: np.ndarray) -> dict:
    """Read one byte of each page in ``order``; the time of every access that was a
    major fault (a swap-in), as p50 / p90 in microseconds."""
    lat = []
    ru = resource.getrusage
    clock = time.perf_counter_ns
    for i in order.tolist():
        m0 = ru(resource.RUSAGE_SELF).ru_majflt
        t0 = clock()
        region[i, 100]                               # one load: a swap-in if the page is out
        t1 = clock()
        if ru(resource.RUSAGE_SELF).ru_majflt != m0:
            lat.append(t1 - t0)
    out = {"touches": len(order), "faults": len(lat)}
    if lat:
        a = np.sort(np.array(lat)) / 1000
        out["fault_p50_us"] = float(a[a.size // 2])
        out["fault_p90_us"] = float(a[int(a.size * 0.9)])
    return out


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _machine_cpu() -> np.ndarray:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (in ticks:
    only their ratio over an interval is used)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return np.array([sum(ticks) - ticks[3] - ticks[4], sum(ticks)], np.float64)   # less idle, iowait


def _expected(cfg: dict, source, lo: int, hi: int) -> np.ndarray:
    if source is None:
        return synthetic_pages(lo, hi, cfg.get("seed", 0))
    return source[np.arange(lo, hi) % source.shape[0]]


def _verify(cfg: dict, region: np.ndarray, source) -> int:
    """How many of the region's pages differ from what was written there."""
    bad = 0
    for lo in range(0, region.shape[0], CHUNK):
        hi = min(region.shape[0], lo + CHUNK)
        bad += int((region[lo:hi] != _expected(cfg, source, lo, hi)).any(axis=1).sum())
    return bad


def child(cfg: dict) -> dict:
    n = cfg["pages"]
    source = np.load(cfg["source"], mmap_mode="r") if cfg.get("source") else None
    buf = mmap.mmap(-1, n * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(AttributeError, OSError):
        buf.madvise(mmap.MADV_NOHUGEPAGE)           # 4 KiB pages, as swap sees most memory
    region = np.frombuffer(buf, np.uint8).reshape(n, PAGE)
    fill_s = fill_cpu = 0.0
    busy = np.zeros(2)                              # the machine's busy and total CPU seconds
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        want = _expected(cfg, source, lo, hi)
        c, b = _own_cpu(), _machine_cpu()
        t = time.perf_counter()                     # the copy only: swap-out is its cost
        region[lo:hi] = want
        fill_s += time.perf_counter() - t
        fill_cpu += _own_cpu() - c
        busy += _machine_cpu() - b
    # where the fill's time went: this process's own CPU (the copy, and the reclaim the
    # kernel does in its context), and how busy the whole machine was meanwhile (every
    # CPU busy: the fill is CPU-bound, and a swap target's CPU per page decides it)
    out = {"pages": n, "fill_s": fill_s, "fill_mb_s": n * PAGE / fill_s / 1e6,
           "fill_cpu_s": fill_cpu, "fill_machine_busy": float(busy[0] / busy[1]) if busy[1] else None}
    if cfg.get("pause"):
        print(json.dumps({"filled": True, **out}), flush=True)
        sys.stdin.readline()
    out["bad_after_fill"] = _verify(cfg, region, source)
    rng = np.random.default_rng(cfg.get("seed", 0) + 1)
    out["touch"] = {}
    for pattern in cfg.get("patterns", [cfg.get("pattern", "zipf")]):
        out["touch"][pattern] = _touch(region, _order(n, cfg.get("touches", 0), pattern, rng))
    first = next(iter(out["touch"].values()), {})
    out.update(first)                                # the first pattern's figures, at the top too
    out["bad_pages"] = _verify(cfg, region, source)
    out["majflt"] = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    if cfg.get("pause_end"):                         # the caller reads the store's figures now
        print(json.dumps({"done": True}), flush=True)
        sys.stdin.readline()
    del region
    buf.close()                                      # give the region back before exiting
    return out


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))), flush=True)
    os._exit(0)           # no interpreter teardown: it would touch swapped-out heap for nothing
