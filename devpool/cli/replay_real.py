"""``devpool replay --real``: the replay's trace played on a real swap region.

The simulation (``replay.py``) models the kernel's memory pressure; this plays the same
trace on :func:`devpool.swap_region`, whose faults are the kernel's, and prints the two
side by side. Command-line code: the library's region knows nothing of traces.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import time

import numpy as np

from .._checks import PAGE_SIZE
from .._errors import DevpoolError
from ..region.client import swap_region

__all__ = ["print_replay_real", "replay_real"]


def _mincore():
    """libc's ``mincore``, typed (whether a page is resident, asked outside the timer)."""
    fn = ctypes.CDLL(None, use_errno=True).mincore
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return fn


def replay_real(args, trace: np.ndarray, content: np.ndarray) -> dict:
    """Play ``trace`` on a real region (``devpool replay --real``): the same working set,
    RAM budget, zswap limit, backend and codec as the simulation, but the touches are
    loads and stores of real memory and the faults are the kernel's.

    A page's first touch writes its content; every later touch reads the whole page back
    and checks it (a mismatch raises DevpoolError). Fault latency is timed in the
    touching thread, for touches that ``mincore`` (outside the timer) found non-resident.
    """
    ws = content.shape[0]
    mincore = _mincore()
    vec = (ctypes.c_ubyte * 1)()
    limit = args.pool_limit_pages * PAGE_SIZE
    lat = []
    touched = np.zeros(ws, np.bool_)
    with tempfile.TemporaryDirectory(prefix="devpool-replay-real-") as tmp:
        with swap_region(ws * PAGE_SIZE, resident_bytes=args.ram_pages * PAGE_SIZE, backend=args.backend,
                         compressor=args.compressor, capacity_bytes=max(16 << 20, 4 * limit),
                         max_pool_bytes=limit, backing=os.path.join(tmp, "swap")) as region:
            a = region.array
            pages = a.reshape(ws, PAGE_SIZE)
            base = a.ctypes.data
            clock = time.perf_counter_ns
            t_all = time.perf_counter()
            for p in trace.tolist():
                mincore(base + p * PAGE_SIZE, PAGE_SIZE, vec)
                resident = vec[0] & 1
                if not touched[p]:
                    t = clock()
                    pages[p] = content[p]
                    dt = clock() - t
                    touched[p] = True
                else:
                    t = clock()
                    same = np.array_equal(pages[p], content[p])
                    dt = clock() - t
                    if not same:
                        raise DevpoolError(f"real region: page {p} came back different from what was written")
                if not resident:
                    lat.append(dt)
            elapsed = time.perf_counter() - t_all
            st = region.stats()
    lat = np.array(lat, np.int64)

    def pct(q):
        return float(np.percentile(lat, q) / 1e3) if lat.size else 0.0

    zst = st["zswap"]
    swap_faults = st["loads_from_pool"] + st["loads_from_backing"]
    return {
        "faults": st["faults"], "first_touch": st["zero_fills"], "zswap_hits": st["loads_from_pool"],
        "backing_reads": st["loads_from_backing"], "evicted": st["evicted_pages"],
        "zswap_hit_rate": st["loads_from_pool"] / swap_faults if swap_faults else 0.0,
        "written_back_pages": zst["written_back_pages"], "pool_limit_hit": zst["pool_limit_hit"],
        "backing_direct_writes": zst["backing_direct_writes"], "resident_pages": st["resident_pages"],
        "fault_p50_us": pct(50), "fault_p99_us": pct(99),
        "handler_service_p50_us": st["fault_p50_us"], "handler_service_p99_us": st["fault_p99_us"],
        "touches_per_s": trace.size / elapsed, "policy": st["policy"],
    }


def print_replay_real(real: dict) -> None:
    print(f"  real region (userfaultfd, policy {real['policy']}): faults {real['faults']} (first touch "
          f"{real['first_touch']}, from zswap {real['zswap_hits']}, from backing file {real['backing_reads']}); "
          f"zswap hit rate {100 * real['zswap_hit_rate']:.1f} %")
    print(f"    evicted {real['evicted']}, written back {real['written_back_pages']}, pool limit hit "
          f"{real['pool_limit_hit']}x, refused straight to file {real['backing_direct_writes']}; "
          f"every page checked on every touch")
    print(f"    fault latency in the touching thread: p50 {real['fault_p50_us']:.0f} us p99 "
          f"{real['fault_p99_us']:.0f} us (handler service p50 {real['handler_service_p50_us']:.0f} us); "
          f"{real['touches_per_s']:.0f} touches/s")
