"""swap_region: real memory whose faults are served from a Zswap in another process.

Every wait here is bounded: threads are joined with a timeout and subprocesses run
under one, so a deadlock fails a test instead of hanging the suite. Each region is
closed by its test (context manager), and the fixture below checks that no handler or
guard process outlives it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import devpool
from devpool import DevpoolError
from devpool.region.client import PAGE_SIZE

P = PAGE_SIZE
JOIN = 120          # seconds any worker thread may take before the test fails


def _usable() -> tuple[bool, str]:
    from devpool.region import uffd as _uffd
    try:
        os.close(_uffd.open_uffd())
        return True, ""
    except OSError as exc:
        return False, str(exc)


_ok, _why = _usable()
pytestmark = pytest.mark.skipif(not _ok, reason=f"userfaultfd unusable here: {_why}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def _gone_within(*pids: int, seconds: float = 10) -> bool:
    """Wait (bounded) for every process in ``pids`` to exit; True when they all did."""
    deadline = time.monotonic() + seconds
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(map(_alive, pids))


def _sizes(backend: str) -> tuple[int, int]:
    """(pages, resident pages): the CUDA simulator costs milliseconds per page."""
    return (24, 6) if backend == "cuda" else (96, 12)


@pytest.fixture
def region():
    """Factory; every region is closed and its processes are checked gone afterwards."""
    made = []

    def factory(npages, resident, **kw):
        r = devpool.swap_region(npages * P, resident_bytes=resident * P, **kw)
        made.append((r, r.handler_pid, r._res.guard.pid))
        return r

    yield factory
    for r, hpid, gpid in made:
        r.close()
        assert _gone_within(hpid, gpid), "a region process outlived close()"


def _page(rng) -> np.ndarray:
    """A page LZ4 compresses (random bytes, then zeros), so zswap never refuses it."""
    v = np.zeros(P, np.uint8)
    k = int(rng.integers(1, P // 2))
    v[:k] = rng.integers(0, 256, k, dtype=np.uint8)
    return v


def _join(threads):
    for t in threads:
        t.join(JOIN)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (deadlock?)"


# --- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("nbytes", [0, -P, P + 1, 100, 1.5 * P, True, "4096", 1 << 62, np.int64(P + 1)])
def test_bad_nbytes(nbytes):
    with pytest.raises(devpool.BadInputError):
        devpool.swap_region(nbytes, resident_bytes=P)


@pytest.mark.parametrize("resident", [0, P - 1, -1, None, 2.0 * P])
def test_budget_under_one_page(resident):
    with pytest.raises(devpool.BadInputError):
        devpool.swap_region(16 * P, resident_bytes=resident)


def test_bad_options():
    with pytest.raises(devpool.BadInputError):
        devpool.swap_region(16 * P, resident_bytes=P, policy="lru")
    with pytest.raises(devpool.BadInputError):
        devpool.swap_region(16 * P, resident_bytes=P, fault_around=3)
    with pytest.raises(devpool.BadInputError, match="pool_options"):
        devpool.swap_region(16 * P, resident_bytes=P, pool_options=[1])
    with pytest.raises(devpool.BadInputError, match="serve_delay_us"):
        devpool.swap_region(16 * P, resident_bytes=P, serve_delay_us=5)       # zswap: not a baseline
    with pytest.raises(devpool.BadInputError, match="serve_delay_us"):
        devpool.swap_region(16 * P, resident_bytes=P, serve="zero", serve_delay_us=-1)


@pytest.mark.parametrize("opts", [{1: 2}, {"capacity_bytes": 1 << 20}, {"x": lambda: 0}])
def test_bad_pool_options_are_bad_input(opts):
    """A key that is no option name, the region's own capacity, a value that cannot be
    handed to the handler process: BadInputError, and no process left (they were a
    DevpoolError from the handler, or a raw PicklingError)."""
    before = _children()
    with pytest.raises(devpool.BadInputError, match="pool_options|picklable"):
        devpool.swap_region(16 * P, resident_bytes=P, backend="host", pool_options=opts)
    assert _gone_within(*(_children() - before))


@pytest.mark.parametrize("kw", [{"backing": "/tmp/" + "x" * (2 << 20)}, {"compressor": "y" * (600 << 10)},
                                {"pool_options": {"z" * (3 << 20): 1}}])
def test_oversized_options_are_bad_input(kw):
    """Options too large for the one message that carries them to the handler: a
    BadInputError naming the size, not a bare OSError (EMSGSIZE), and no process left."""
    before = _children()
    with pytest.raises(devpool.BadInputError, match="too large"):
        devpool.swap_region(16 * P, resident_bytes=P, backend="host", **kw)
    assert _children() <= before


def _children() -> set:
    """This process's live child processes (pids)."""
    from devpool.region.client import _children as children_of
    return {pid for pid in children_of(os.getpid()) if _alive(pid)}


def test_bad_backend_raises_from_the_handler(region):
    with pytest.raises(devpool.BadInputError, match="unknown backend"):
        region(16, 4, backend="nonsense")


# --- contents --------------------------------------------------------------------------------
def test_never_written_pages_read_zero_and_take_no_pool_space(region):
    r = region(64, 8, backend="host")
    a = r.array
    assert a.sum() == 0                      # 64 faults, 56 evictions of zero pages
    assert not a.any()
    st = r.stats()
    assert st["zero_fills"] == 64
    assert st["resident_pages"] <= 8
    assert st["zswap"]["stored_compressed_bytes"] == 0     # zero pages are fill words
    assert st["zswap"]["pool_total_size"] <= 256 << 10    # at most the spare segment


def test_shadow_copy_under_threads_and_eviction(region, backend, rng):
    """Several threads read and write random bytes of their own pages while another
    thread keeps evicting; every read and, at the end, every byte matches a shadow."""
    npages, resident = _sizes(backend)
    r = region(npages, resident, backend=backend)
    a = r.array
    shadow = np.zeros(npages * P, np.uint8)
    nthreads, steps = 3, (40 if backend == "cuda" else 400)
    errors = []
    done = threading.Event()

    def worker(t):
        g = np.random.default_rng(rng.integers(1 << 30) + t)
        mine = np.arange(t, npages, nthreads)
        try:
            for _ in range(steps):
                p = int(g.choice(mine))
                lo = p * P + int(g.integers(0, P))
                hi = min(p * P + P, lo + int(g.integers(1, 2 * P)))
                if g.random() < 0.5:
                    data = g.integers(0, 4, hi - lo, dtype=np.uint8)
                    a[lo:hi] = data
                    shadow[lo:hi] = data
                elif not np.array_equal(a[lo:hi], shadow[lo:hi]):
                    errors.append(f"thread {t}: page {p} differs")
        except Exception as exc:          # noqa: BLE001 - reported below
            errors.append(repr(exc))

    def evictor():
        g = np.random.default_rng(7)
        while not done.is_set():
            r.evict(int(g.integers(1, npages)))

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    ev = threading.Thread(target=evictor)
    for t in workers + [ev]:
        t.start()
    _join(workers)
    done.set()
    _join([ev])
    assert not errors, errors[:5]
    assert np.array_equal(a, shadow)
    r.evict(npages)
    assert np.array_equal(a, shadow)
    st = r.stats()
    assert st["evicted_pages"] > 0 and st["fills_from_store"] > 0
    assert st["fill_errors"] == 0


def test_gil_holding_numpy_pass_over_an_evicted_region(region, backend, rng):
    """One numpy call (the GIL held throughout) faults on every page: it completes."""
    npages, resident = _sizes(backend)
    r = region(npages, resident, backend=backend)
    a = r.array
    want = np.stack([_page(rng) for _ in range(npages)]).reshape(-1)
    a[:] = want                              # one call writing every page
    r.evict(npages)
    st = r.stats()
    assert st["resident_pages"] == 0, str({k: v for k, v in st.items() if k != "zswap"})
    out = {}
    t = threading.Thread(target=lambda: out.update(sum=int(a.sum(dtype=np.uint64)),
                                                   copy=a.copy()))
    t.start()
    _join([t])
    assert out["sum"] == int(want.sum(dtype=np.uint64))
    assert np.array_equal(out["copy"], want)


def test_write_during_eviction_is_never_lost(region):
    """Counters incremented in a tight loop on pages that are evicted over and over:
    every increment survives (write protection closes the copy / drop window)."""
    npages = 8
    r = region(npages, npages, backend="host")
    words = r.array.view(np.int64)
    slots = [p * (P // 8) + 5 for p in range(npages)]
    n = 20000
    done = threading.Event()
    rounds = []

    def writer():
        for i in range(n):
            for s in slots:
                words[s] += 1
            if i % 50 == 0:
                time.sleep(0)                # let the evicting thread in

    def evictor():
        while not done.is_set():
            rounds.append(r.evict(npages))

    w, e = threading.Thread(target=writer), threading.Thread(target=evictor)
    e.start()
    w.start()
    _join([w])
    done.set()
    _join([e])
    assert [int(words[s]) for s in slots] == [n] * npages
    st = r.stats()
    assert sum(rounds) > 10 * npages, "eviction did not run during the writes"
    assert st["fills_from_store"] > 10 * npages


def test_syscalls_read_and_write_evicted_pages(region, rng, tmp_path):
    """Faults the kernel takes on the process's behalf are served too."""
    npages = 32
    r = region(npages, 4, backend="host")
    a = r.array
    want = np.stack([_page(rng) for _ in range(npages)]).reshape(-1)
    a[:] = want
    r.evict(npages)
    # the kernel reads the region: write() to a file, np.save
    path = tmp_path / "out.bin"
    with open(path, "wb") as f:
        assert os.write(f.fileno(), a[: 8 * P]) == 8 * P
    assert np.array_equal(np.fromfile(path, np.uint8), want[: 8 * P])
    r.evict(npages)
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(np.load(tmp_path / "a.npy"), want)
    # the kernel writes the region: readinto an evicted range
    r.evict(npages)
    src = rng.integers(0, 256, 3 * P, dtype=np.uint8)
    src.tofile(tmp_path / "in.bin")
    with open(tmp_path / "in.bin", "rb") as f:
        assert f.readinto(memoryview(a)[5 * P + 100: 8 * P + 100]) == 3 * P
    want[5 * P + 100: 8 * P + 100] = src
    assert np.array_equal(a, want)


def test_backing_file_takes_refused_pages(region, rng, tmp_path):
    """Incompressible pages beyond the pool limit, with a backing file: evicted all the
    same (written to the file), and back from it byte for byte."""
    npages = 160                             # 640 KiB of random bytes over a 256 KiB limit
    r = region(npages, 4, backend="host", backing=tmp_path / "swap", max_pool_bytes=256 << 10)
    a = r.array
    want = rng.integers(0, 256, npages * P, dtype=np.uint8)
    a[:] = want
    r.evict(npages)
    assert np.array_equal(a, want)
    st = r.stats()
    assert st["loads_from_backing"] > 0 and st["loads_from_pool"] > 0
    assert st["refused_pages"] == 0


def test_refused_pages_stay_resident_without_a_backing_file(region, rng):
    """Without a backing file zswap refuses incompressible pages: they stay (intact)."""
    r = region(16, 2, backend="host")
    a = r.array
    want = rng.integers(0, 256, 16 * P, dtype=np.uint8)
    a[:] = want
    assert r.evict(16) == 0
    st = r.stats()
    assert st["refused_pages"] >= 16 - 2 and st["resident_pages"] == 16
    assert np.array_equal(a, want)
    a[3 * P] ^= 1                            # a write makes page 3 a candidate again
    want[3 * P] ^= 1
    assert np.array_equal(a, want)


def test_fault_around_brings_neighbours(region, rng):
    r = region(64, 64, backend="host", fault_around=8)
    a = r.array
    want = np.stack([_page(rng) for _ in range(64)]).reshape(-1)
    a[:] = want
    r.evict(64)
    assert a[9 * P] == want[9 * P]
    st = r.stats()
    assert st["fault_around_pages"] == 7     # the rest of the aligned window 8..15
    assert np.array_equal(a, want)


def test_stats_names(region):
    r = region(16, 4, backend="host")
    r.array[:] = 1
    st = r.stats()
    for key in ("faults", "zero_fills", "loads_from_pool", "loads_from_backing", "evicted_pages",
                "resident_pages", "fault_p50_us", "fault_p99_us", "zswap"):
        assert key in st
    assert st["zswap"]["same_filled_pages"] == st["evicted_pages"] - st["loads_from_pool"]


@contextlib.contextmanager
def _interrupted_while_the_handler_is_stopped(r):
    """The call in the block waits for a reply the stopped handler cannot send, and a
    signal handler's exception (as KeyboardInterrupt would) interrupts it; the block
    must raise that exception. The handler runs on afterwards."""
    class Interrupted(Exception):
        pass

    def alarm(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, alarm)
    os.kill(r.handler_pid, signal.SIGSTOP)       # the reply cannot come before the alarm
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.kill(r.handler_pid, signal.SIGCONT)


def test_a_request_interrupted_by_a_signal_does_not_shift_later_replies(region):
    """An exception raised by a signal handler (KeyboardInterrupt, a timeout alarm) while
    a call waits for the handler's reply leaves that reply unread. Before: the next call
    read it as its own (stats() got evict's count, evict() a stats dict) and every
    later call was one reply behind."""
    r = region(32, 32, backend="host")
    r.array[:] = 1
    with _interrupted_while_the_handler_is_stopped(r):
        r.evict(32)
    st = r.stats()                               # the interrupted evict still ran
    assert isinstance(st, dict) and st["evicted_pages"] == 32
    assert r.evict(0) == 0
    assert isinstance(r.stats(), dict)
    assert int(r.array.sum()) == 32 * P


# --- close -----------------------------------------------------------------------------------
def test_close_frees_everything_and_later_use_is_an_error(region):
    r = region(16, 4, backend="host")
    r.array[:] = 3
    watch = r._res.watch
    r.close()
    assert not watch.took_over                 # stopped first: the handler's exit is no death
    r.close()                                # idempotent
    assert r.closed
    with pytest.raises(DevpoolError, match="closed"):
        r.array[0] = 1
    with pytest.raises(DevpoolError, match="closed"):
        r.evict()
    with pytest.raises(DevpoolError, match="closed"):
        r.stats()


def test_an_interrupted_close_is_finished_by_the_next(region):
    """close() interrupted by a signal handler's exception while it waits for the
    handler: calling it again finishes the job. Before: the region counted as closed
    at once, so a second close() returned without unmapping the memory, closing the
    descriptors or reaping the handler."""
    r = region(16, 16, backend="host")
    r.array[:] = 1
    with _interrupted_while_the_handler_is_stopped(r):
        r.close()
    assert r.closed
    r.close()
    res = r._res
    assert res.addr == 0 and not res.fds and not res.socks
    assert res.handler is None and res.guard is None


def test_dropped_region_is_cleaned_up():
    r = devpool.swap_region(16 * P, resident_bytes=4 * P, backend="host")
    hpid, gpid = r.handler_pid, r._res.guard.pid
    del r
    import gc
    gc.collect()
    assert _gone_within(hpid, gpid)


def test_an_array_outliving_its_dropped_region_stays_served():
    """``a = swap_region(...).array`` drops the region at once: its memory must stay
    mapped and served for as long as the array (or a view of it) lives, and go when the
    last one does. Before: the region's finalizer unmapped the memory under the live
    array, whose writes then landed in whatever was mapped there next."""
    import gc
    r = devpool.swap_region(16 * P, resident_bytes=4 * P, backend="host")
    hpid, gpid = r.handler_pid, r._res.guard.pid
    a = r.array
    view = a[P:]
    del r, a
    gc.collect()
    assert _alive(hpid) and _alive(gpid), "the region was released under a live array"
    view[:] = 7                              # faults and evictions still served
    assert int(view.sum()) == 7 * 15 * P
    del view
    gc.collect()
    assert _gone_within(hpid, gpid)


# --- handler death ---------------------------------------------------------------------------
def test_handler_death_raises_and_nothing_hangs(region, rng):
    r = region(16, 16, backend="host")
    a = r.array
    a[:] = 9
    r.evict(8)                               # pages 0..7 or so live only in the handler now
    evicted = [p for p in range(16) if not _resident(a, p)]
    assert evicted
    os.kill(r.handler_pid, signal.SIGKILL)
    with pytest.raises(DevpoolError, match="died"):
        r.stats()
    with pytest.raises(DevpoolError, match="died"):
        r.array
    with pytest.raises(DevpoolError):
        r.evict()
    # a syscall touching a lost page fails (EFAULT) instead of hanging or reading zeros
    assert _write_from(a, evicted[0]) == {"errno": errno.EFAULT}
    resident = [p for p in range(16) if p not in evicted]
    if resident:                             # pages still mapped keep their bytes
        assert a[resident[0] * P] == 9


def _write_from(a: np.ndarray, p: int) -> dict:
    """``os.write`` 64 bytes of page ``p`` to a pipe from another thread (joined,
    bounded): ``{"n": bytes written}`` or ``{"errno": ...}``."""
    rd, wr = os.pipe()
    got = {}

    def syscall():
        try:
            got["n"] = os.write(wr, a[p * P: p * P + 64])
        except OSError as exc:
            got["errno"] = exc.errno

    t = threading.Thread(target=syscall)
    t.start()
    _join([t])
    os.close(rd)
    os.close(wr)
    return got


def _resident(a: np.ndarray, p: int) -> bool:
    """Whether page ``p`` is in memory (mincore), without touching it."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    vec = (ctypes.c_ubyte * 1)()
    libc.mincore(ctypes.c_void_p(a.ctypes.data + p * P), ctypes.c_size_t(P), vec)
    return bool(vec[0] & 1)


def _kill_the_guard(r, pid: int | None = None) -> int:
    """Kill the guard in office (the client's own, or ``pid``) and wait (bounded) for
    the handler to replace it; returns the new guard's pid."""
    old = r._res.guard.pid if pid is None else pid
    os.kill(old, signal.SIGKILL)
    if pid is None:
        r._res.guard.wait(10)                          # the client's child: reap it
    return _replaced_guard(r, old)


def _replaced_guard(r, old: int) -> int:
    """Wait (bounded) until the handler has put a new guard in place of ``old``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = r.stats()
        if st["guards_replaced"] and st["guard_pid"] != old:
            return st["guard_pid"]
        time.sleep(0.02)
    raise AssertionError("the dead guard was not replaced")


def test_a_dead_guard_is_replaced(region):
    """Without a guard a later handler death would hang faults; the handler watches the
    guard in office and starts another when it dies. The region goes on working, and
    close() dismisses the new guard too."""
    r = region(32, 4, backend="host")
    r.array[:] = 1
    new = _kill_the_guard(r)
    assert _alive(new)
    r.array[::P] = 7                                   # faults, evictions: all still served
    assert r.evict(8) > 0 and (r.array[::P] == 7).all()
    third = _kill_the_guard(r, new)                    # and the replacement's replacement
    assert r.stats()["guards_replaced"] == 2
    r.close()
    assert _gone_within(third), "the guard the handler started outlived close()"


def test_a_guard_the_handler_started_goes_with_an_unanswering_handler(region):
    """close() kills a handler that does not answer (stopped); a guard that handler
    started would take that death for a crash and stay until this process exits: it is
    killed with it."""
    r = region(16, 4, backend="host")
    r.array[:] = 1
    hpid = r.handler_pid
    new = _kill_the_guard(r)
    os.kill(hpid, signal.SIGSTOP)
    r._res.release(timeout=0.5)                     # what close() does, with a short wait
    assert _gone_within(hpid, new), "the handler or the guard it started outlived close()"


def test_a_guard_that_cannot_be_replaced_is_reported_and_tried_again(monkeypatch):
    """If no new guard can be started, every request is answered with why (the client
    raises DevpoolError naming the guard), except close; and it is tried again (the
    loop does so every GUARD_RETRY_S) until one is up, which clears the error."""
    import select
    import socket

    from devpool.region import handler as _region_handler
    from devpool.region.handler import recv, send
    started = []

    def flaky(*args, timeout=30.0):
        if not started:
            started.append(None)
            raise OSError(errno.EAGAIN, "fork refused")
        proc = subprocess.Popen(["sleep", "60"])          # stands in for a guard process
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        started.append((proc, theirs))
        return proc, mine

    monkeypatch.setattr(_region_handler, "start_guard", flaky)
    with _handler_here(4) as (h, fd, mm, addr):
        h.poller = select.poll()
        client, h.ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            h._replace_guard()
            assert "guard process" in h.guard_error and "fork refused" in h.guard_error
            send(client, ("stats", 1))
            assert h.control() is True
            kind, name, message, tag = recv(client)
            assert (kind, name, tag) == ("err", "DevpoolError", 1) and "could not be started" in message
            assert h.guard_retry_at > time.monotonic() - 1
            h._replace_guard()                        # the retry, as the loop makes it
            assert h.guard_error is None and h.c["guards_replaced"] == 1
            proc = started[1][0]
            assert h.guard_pid == proc.pid
            send(client, ("stats", 2))
            h.control()
            assert recv(client)[0] == "ok"
            send(client, ("close", 3))
            assert h.control() is False and recv(client) == ("ok", None, 3)
            assert proc.wait(10) is not None          # close dismissed the guard it started
        finally:
            for item in started[1:]:
                item[0].kill()
                item[0].wait()
                item[1].close()
            client.close()
            h.ctl.close()


def test_a_guard_whose_starter_is_gone_still_guards_and_leaves_with_the_region(tmp_path):
    """A handler killed while it started a replacement guard: the new guard's greeting
    finds no one (EPIPE). Before, that ended the guard, and with it the last guard: a
    fault then hung for good. Now it watches the handler's pidfd regardless, makes the
    fault fail loudly (EFAULT for a syscall), and leaves once the region is unmapped."""
    import socket

    from devpool.region import handler as _region_handler
    n = 4
    sink = os.open(tmp_path / "sink", os.O_WRONLY | os.O_CREAT, 0o600)
    dead = subprocess.Popen(["true"])                  # stands in for the killed handler
    dead_fd = os.pidfd_open(dead.pid)
    dead.wait()
    guard = t = None
    got = {}
    try:
        with _registered_memory(n, _region_handler.MEMFD_NAME) as (fd, memfd, mm, addr):
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            guard = subprocess.Popen([sys.executable, "-I", "-S", _region_handler.__file__, "guard", str(fd),
                                      str(dead_fd), str(theirs.fileno()), str(addr), str(n * P), str(os.getpid())],
                                     pass_fds=(fd, dead_fd, theirs.fileno()), stderr=subprocess.PIPE)
            theirs.close()
            mine.close()                               # gone before the guard could greet it
            t = _pwrite_in_thread(sink, memoryview(mm)[P:P + 64], got)
            t.join(20)
            assert not t.is_alive(), "the fault hung: no guard took over"
            assert got == {"errno": errno.EFAULT}
            assert guard.poll() is None                # still guarding while the region is mapped
            mm.close()                                 # the region goes...
            assert guard.wait(10) == 0                 # ...and so does its guard
    finally:
        if t is not None:
            t.join(10)
        if guard is not None and guard.poll() is None:
            guard.kill()
            guard.wait()
        os.close(sink)
        os.close(dead_fd)


def test_a_guard_the_handler_started_leaves_after_the_handler_died_and_the_region_closed(region):
    """The handler died after replacing a dead guard: its guard (reparented, doing its
    job) must not stay until this process exits once the region is closed."""
    r = region(16, 4, backend="host")
    r.array[:] = 1
    new = _kill_the_guard(r)
    os.kill(r.handler_pid, signal.SIGKILL)
    r._res.handler.wait(10)
    r.close()
    assert _gone_within(new), "the guard outlived the closed region"


def test_close_starts_no_guard(region, capfd):
    """close() dismisses the guard; the handler must not take that for a death and start
    another (which it did: a process and a false message on every close)."""
    r = region(16, 4, backend="host")
    r.array[:] = 1
    hpid = r.handler_pid
    r.close()
    assert _gone_within(hpid)
    assert "took its place" not in capfd.readouterr().err


_CTRL_C_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    import devpool
    r = devpool.swap_region(32 * 4096, resident_bytes=4 * 4096, backend="host")
    a = r.array
    a[:] = np.arange(a.size, dtype=np.uint64).astype(np.uint8)
    want = int(a.sum(dtype=np.int64))
    r.evict()
    try:
        print("ready", flush=True)     # inside the try: the interrupt may come at once
        time.sleep(30)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print(int(a.sum(dtype=np.int64)) == want, r.stats()["evicted_pages"] > 0, flush=True)
    r.close()
""")


def test_ctrl_c_in_the_client_spares_the_handler_and_guard():
    """A terminal's Ctrl-C goes to the whole foreground process group. The handler and
    guard were in the client's: one Ctrl-C, caught by the client as any REPL does,
    killed both, lost every evicted page and hung the next access. They are in groups
    of their own now."""
    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.killpg(proc.pid, signal.SIGINT)             # what the terminal does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert out.split() == ["interrupted", "True", "True"], (out, err)


def test_a_replacement_that_cannot_get_a_descriptor_is_reported(monkeypatch):
    """Out of descriptors (EMFILE) while replacing a guard: reported and tried again,
    never an exception out of the handler's loop (which would kill it and lose every
    evicted page)."""
    import select

    with _handler_here(4) as (h, fd, mm, addr):
        h.poller = select.poll()

        def no_fds(pid):
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(os, "pidfd_open", no_fds)
        h._replace_guard()
        monkeypatch.undo()
        assert "Too many open files" in h.guard_error


_DEATH_AFTER_GUARD_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    import devpool
    r = devpool.swap_region(16 * 4096, resident_bytes=16 * 4096, backend="host")
    a = r.array
    a[:] = 5
    r.evict(16)
    old = r._res.guard.pid
    os.kill(old, signal.SIGKILL)
    r._res.guard.wait(10)
    deadline = time.monotonic() + 10
    while r.stats()["guards_replaced"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    r._res.watch.stop()    # the region's last line off: the replaced guard must do it alone
    print(r.handler_pid, r.stats()["guard_pid"], flush=True)
    sys.stdin.readline()
    a.sum()                # faults while holding the GIL: the handler is stopped
    print("returned", flush=True)
""")


def test_a_replaced_guard_makes_a_handler_death_loud():
    """The guard that replaced a dead one does the first one's job: a thread blocked in
    a fault when the handler dies gets SIGBUS, not a hang."""
    _blocked_thread_gets_sigbus(_DEATH_AFTER_GUARD_SCRIPT)


def test_a_stray_close_of_the_guard_socket_keeps_the_guard(region):
    """A stray close of the guard's socket descriptor must not dismiss the guard: it
    stands down on 'close' or when its client dies. Before: it took the EOF for either
    and exited, so a later handler death would hang every fault on an evicted page."""
    r = region(16, 4, backend="host")
    r.array[:] = 1
    gpid = r._res.guard.pid
    os.close(r._res.guard_sock.fileno())
    time.sleep(0.5)
    assert _alive(gpid), "the guard left"
    assert r.stats()["faults"] > 0           # the region is still whole
    t = time.monotonic()
    r.close()
    assert time.monotonic() - t < 8


_DEATH_SCRIPT = textwrap.dedent("""
    import os, sys
    import devpool
    r = devpool.swap_region(16 * 4096, resident_bytes=16 * 4096, backend="host")
    a = r.array
    a[:] = 5
    r.evict(16)
    if "guard alone" in sys.argv:
        r._res.watch.stop()    # the region's last line off: the guard must do it alone
    if "full stderr" in sys.argv:
        # a parent that reads stderr only at the end: the pipe fills, a write would block
        os.set_blocking(2, False)
        try:
            while True:
                os.write(2, b"x" * 4096)
        except BlockingIOError:
            pass
        os.set_blocking(2, True)
    print(r.handler_pid, r._res.guard.pid, flush=True)
    sys.stdin.readline()
    a.sum()                # faults while holding the GIL: the handler is stopped
    print("returned", flush=True)
""")


def test_thread_blocked_in_a_fault_when_the_handler_dies_is_not_left_hanging():
    """The faulting thread holds the GIL, so nothing in its process can help it; the
    guard process wakes it and its access fails loudly (SIGBUS) within seconds (the
    region's watch thread, which would too, is stopped for this test)."""
    _blocked_thread_gets_sigbus(_DEATH_SCRIPT, args=["guard alone"])


def test_thread_blocked_in_a_fault_when_handler_and_guard_die_together_is_not_left_hanging():
    """Both helpers killed at once (``pkill -f`` over their command lines): no process
    is left to read the userfaultfd. The faulting thread holds the GIL, so no Python
    thread of its process can help; the region's watch thread, which never needs the
    GIL, fails the access loudly (SIGBUS) all the same."""
    _blocked_thread_gets_sigbus(_DEATH_SCRIPT, kill_guard=True)


@pytest.mark.parametrize("who", ["guard alone", "watch thread"])
def test_a_full_stderr_pipe_does_not_stop_the_last_line(who):
    """The guard and the watch thread say what happened on stderr; a parent that reads
    its child's stderr only at the end lets the pipe fill. Before: the write blocked
    first, so no fault was ever answered and the faulting thread hung."""
    _blocked_thread_gets_sigbus(_DEATH_SCRIPT, kill_guard=who == "watch thread",
                                args=["full stderr"] + (["guard alone"] if who == "guard alone" else []),
                                said=False)


def _blocked_thread_gets_sigbus(script: str, kill_guard: bool = False, args=(), said: bool = True) -> None:
    """Run ``script`` (it prints the handler's and the guard's pids, then faults on an
    evicted page when told); stop the handler, let the script fault, kill the handler
    (and the guard with it, if asked): the script must die of SIGBUS and the guard leave."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        hpid, gpid = (int(x) for x in proc.stdout.readline().split())
        os.kill(hpid, signal.SIGSTOP)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(0.5)
        assert proc.poll() is None           # blocked in the fault
        if kill_guard:
            os.kill(gpid, signal.SIGKILL)
        os.kill(hpid, signal.SIGKILL)
        code = proc.wait(30)
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == -signal.SIGBUS, (code, err)
    assert "returned" not in out
    if said:                                 # (a full pipe takes no message)
        assert ("handler process is gone" if kill_guard else "handler process died") in err
    assert _gone_within(gpid)


@pytest.mark.parametrize("guard", ["killed", "stopped"])
def test_handler_death_with_no_guard_to_answer_fails_loudly(region, guard):
    """The guard killed with the handler, or stopped when the handler dies: a syscall on
    an evicted page gets EFAULT from the region's watch thread instead of hanging."""
    r = region(16, 16, backend="host")
    a = r.array
    a[:] = 9
    r.evict(8)
    evicted = [p for p in range(16) if not _resident(a, p)]
    assert evicted
    gpid, watch = r._res.guard.pid, r._res.watch
    os.kill(gpid, signal.SIGKILL if guard == "killed" else signal.SIGSTOP)
    os.kill(r.handler_pid, signal.SIGKILL)
    try:
        assert _write_from(a, evicted[0]) == {"errno": errno.EFAULT}
        assert watch.took_over and watch.faults_answered >= 1
        with pytest.raises(DevpoolError, match="died"):
            r.stats()
    finally:
        if guard == "stopped":
            os.kill(gpid, signal.SIGCONT)


# --- permission ------------------------------------------------------------------------------
def test_without_permission_the_error_names_the_fix():
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        if f.read().strip() != "0":
            pytest.skip("unprivileged userfaultfd is allowed here")
    if os.getuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:                             # child: drop root, try, report, exit
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                devpool.swap_region(16 * P, resident_bytes=4 * P)
                msg = "no error"
            except devpool.BackendUnavailableError as exc:
                msg = "BackendUnavailableError: " + str(exc)
            except BaseException as exc:     # noqa: BLE001
                msg = f"{type(exc).__name__}: {exc}"
            os.write(wr, msg.encode()[:4000])
        finally:
            os._exit(0)
    os.close(wr)
    msg = b""
    while chunk := os.read(rd, 4096):
        msg += chunk
    os.close(rd)
    os.waitpid(pid, 0)
    msg = msg.decode()
    assert msg.startswith("BackendUnavailableError"), msg
    assert "unprivileged_userfaultfd" in msg and "/dev/userfaultfd" in msg


# --- the command line and the benchmark ------------------------------------------------------
def test_replay_real_plays_the_trace_on_real_memory(tmp_path):
    import json

    from devpool.cli import main
    from tests.pages import make_pages
    np.save(tmp_path / "pages.npy", make_pages(32, np.random.default_rng(3)))
    out = tmp_path / "replay.json"
    code = main(["replay", "--real", "--pages", str(tmp_path / "pages.npy"), "--backend", "host",
                 "--compressor", "lz4", "--working-set", "64", "--ram-pages", "16", "--accesses", "600",
                 "--pool-limit-pages", "64", "--quiet", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    real = res["real"]
    assert real["first_touch"] == res["first_touch"] > 32    # each page of the trace written once
    assert real["zswap_hits"] + real["backing_reads"] > 0    # and came back from the pool
    assert real["evicted"] > 0 and real["resident_pages"] <= 16
    assert res["faults"] > 0                                 # the simulation ran beside it


def test_bench_region_smoke(tmp_path):
    import json
    from pathlib import Path

    from tests.pages import make_pages
    np.save(tmp_path / "pages.npy", make_pages(16, np.random.default_rng(4)))
    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(bench / "bench_region.py"), "--pages", str(tmp_path / "pages.npy"),
                        "--region-pages", "48", "--accesses", "200", "--policy-accesses", "200", "--passes", "1", "--no-zram",
                        "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=bench)
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert [line["pattern"] for line in res["summary"]] == ["seq", "zipf", "random"]
    for line in res["summary"]:
        assert {"zswap", "zero page", "file", "file O_DIRECT"} <= set(line)
        assert all(line[k]["bytes_ok"] for k in ("zswap", "file", "file O_DIRECT"))
        assert line["zswap"]["faults"] > 0
    assert "skipped" in res["zram"]
    assert {row.get("policy") for row in res["policy_and_fault_around"]} >= {"lfu", "fifo"}
    assert [row["delay_us"] for row in res["delay_sweep"]] == [0, 2, 5, 10]
    assert all(row["faults"] > 0 for row in res["delay_sweep"])


_LOST_PAGE_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import devpool
    path, around = sys.argv[1], int(sys.argv[2])
    n = 96
    rng = np.random.default_rng(5)
    with devpool.swap_region(n * 4096, resident_bytes=8 * 4096, backend="host", backing=path,
                             max_pool_bytes=256 * 1024, fault_around=around) as r:
        a = r.array
        a[:] = rng.integers(0, 256, a.size, dtype=np.uint8)   # incompressible: most go to the file
        r.evict()
        st = r.stats()
        print(st["evicted_pages"], st["zswap"]["backing_pages"], flush=True)
        os.truncate(path, 0)                                  # the swap device loses every page
        total = 0
        for p in range(n):
            total += int(a[p * 4096])                         # a page from the file: SIGBUS
        print("returned", total, flush=True)
""")


@pytest.mark.parametrize("around", [0, 8])
def test_a_page_the_store_cannot_give_back_is_poisoned_not_zeroed(tmp_path, around):
    """A page lost by the swap device (here: the backing file truncated under it) is
    never mapped as zeros: the handler poisons it and the access raises SIGBUS, whether
    the fault loads one page or a fault-around window one by one."""
    proc = subprocess.run([sys.executable, "-c", _LOST_PAGE_SCRIPT, str(tmp_path / "swap"), str(around)],
                          capture_output=True, text=True, timeout=60)   # before the fix: hung here
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stdout, proc.stderr)
    assert "returned" not in proc.stdout
    evicted, in_file = (int(x) for x in proc.stdout.split()[:2])
    assert evicted >= 80 and in_file > 0
    assert "could not be loaded" in proc.stderr and "poisoning it" in proc.stderr


_FAILING_STORE_SCRIPT = textwrap.dedent("""
    import numpy as np
    import devpool
    n = 32
    with devpool.swap_region(n * 4096, resident_bytes=4 * 4096, serve="file", file="/dev/full") as r:
        a = r.array
        want = np.arange(a.size, dtype=np.uint64).astype(np.uint8)
        a[:] = want                     # evictions run in the handler's loop: every write fails
        assert r.evict(n) == 0          # and when asked
        assert np.array_equal(a, want)
        a[5 * 4096] += 1                # a refused page is written: tried again, fails again
        want[5 * 4096] += 1
        assert np.array_equal(a, want)
        st = r.stats()
        print(st["store_errors"], st["evicted_pages"], st["resident_pages"], flush=True)
""")


def test_a_failing_store_keeps_the_pages_resident_and_the_handler_alive():
    """A store that raises (here: the swap file is /dev/full, every write ENOSPC) must
    leave its victims resident and intact. Before: the exception left the handler's
    loop, the handler died, and every page it had evicted was lost (SIGBUS)."""
    proc = subprocess.run([sys.executable, "-c", _FAILING_STORE_SCRIPT], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    errors, evicted, resident = (int(x) for x in proc.stdout.split())
    assert errors > 0 and evicted == 0 and resident == 32
    assert "No space left on device" in proc.stderr


_REMOVED_PAGE_SCRIPT = textwrap.dedent("""
    import ctypes
    import devpool
    libc = ctypes.CDLL(None, use_errno=True)
    with devpool.swap_region(16 * 4096, resident_bytes=16 * 4096, backend="host") as r:
        a = r.array
        a[:] = 3
        # MADV_REMOVE (9): the caller drops page 2's contents; reads must now see zeros
        assert libc.madvise(ctypes.c_void_p(a.ctypes.data + 2 * 4096), ctypes.c_size_t(4096), 9) == 0
        print(int(a[2 * 4096]), int(a[3 * 4096]), int(a[2 * 4096: 3 * 4096].sum()), flush=True)
        a[2 * 4096] = 5
        print(int(a[2 * 4096]), flush=True)
""")


def test_a_page_removed_by_the_caller_reads_zero_instead_of_faulting_forever():
    """madvise(MADV_REMOVE) on the region frees a resident page behind the handler's
    back. Before: its next access faulted MISSING on a page the handler counted as
    resident, which it answered by waking the thread, which faulted again, forever (the
    GIL held). Now such a fault is zero-filled, as MADV_REMOVE promises."""
    proc = subprocess.run([sys.executable, "-c", _REMOVED_PAGE_SCRIPT], capture_output=True,
                          text=True, timeout=60)   # before the fix: hung here
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert proc.stdout.split() == ["0", "3", "0", "5"]


_FORK_SCRIPT = textwrap.dedent("""
    import os, signal, time
    import devpool
    r = devpool.swap_region(16 * 4096, resident_bytes=4 * 4096, backend="host")
    r.array[:] = 1
    if os.fork() == 0:                  # a forked worker that outlives its parent
        time.sleep(60)
        os._exit(0)
    print(r.handler_pid, r._res.guard.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_region_whose_watch_thread_cannot_start_leaves_nothing_behind(monkeypatch):
    """No thread to be had (a pids cgroup limit, RLIMIT_NPROC): construction raises that
    error, and the handler, the guard and every descriptor go. Before: stop() joined the
    thread that never started, hid the error and left both processes running."""
    real = threading.Thread.start

    def refuse(self):
        if self.name == "devpool-region-watch":
            raise RuntimeError("can't start new thread")
        return real(self)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    before, fds = _children(), set(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match="can't start new thread"):
        devpool.swap_region(16 * P, resident_bytes=4 * P, backend="host")
    deadline = time.monotonic() + 10
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children() <= before
    assert set(os.listdir("/proc/self/fd")) <= fds


def test_without_numba_jit_the_region_runs_without_its_watch_thread():
    """NUMBA_DISABLE_JIT makes the watch function plain Python (it would need the GIL):
    the region still works, says the thread is off, and the guard alone guards."""
    script = textwrap.dedent("""
        import warnings, devpool
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            r = devpool.swap_region(16 * 4096, resident_bytes=4 * 4096, backend="host")
        a = r.array
        a[:] = 7
        r.evict()
        assert (a == 7).all() and r._res.watch is None
        r.close()
        print(any("watch thread" in str(x.message) for x in w))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NUMBA_DISABLE_JIT": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_a_forked_child_closes_its_copy_of_the_watch_pipe(region):
    r = region(16, 4, backend="host")
    w = r._res.watch
    pipe = (w._stop_r, w._stop_w)
    pid = os.fork()
    if pid == 0:                                      # the child: both ends closed
        code = 0
        for fd in pipe:
            try:
                os.fstat(fd)
                code = 1
            except OSError:
                pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    os.fstat(pipe[0])                                 # the parent's are open
    r.array[:] = 1                                    # and the region works on
    assert (r.array == 1).all()


def test_a_forked_child_does_not_keep_the_region_processes_alive():
    """The region's processes stop when its owner dies, however it dies. Before: a
    fork()ed child inherited the owner's ends of the control sockets (and the memfd), so
    after the owner was killed the handler and guard (and the region's memory) lived on
    as long as any forked worker did."""
    proc = subprocess.Popen([sys.executable, "-c", _FORK_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        hpid, gpid = (int(x) for x in proc.stdout.readline().split())
        proc.wait(30)
        assert _gone_within(hpid, gpid), "the region's processes outlived their owner"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)     # the forked child, and anything left
        proc.wait(30)


def _pwrite_in_thread(fd: int, view, got: dict) -> threading.Thread:
    """A started thread writing ``view`` (region memory) to ``fd``: a syscall that
    faults on the region in the kernel, with the GIL released. ``got`` receives the
    byte count ("n") or the error number ("errno")."""

    def write():
        try:
            got["n"] = os.pwrite(fd, view, 0)
        except OSError as exc:
            got["errno"] = exc.errno

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


@contextlib.contextmanager
def _registered_memory(npages: int, name: str = "devpool-test-region"):
    """A memfd mapping of ``npages`` in this process, registered with a new userfaultfd
    for missing and write-protect faults; yields (uffd, memfd, mmap, address). The
    userfaultfd is closed first at the end, which wakes any thread still waiting on it."""
    import ctypes
    import mmap

    from devpool.region import uffd as _uffd
    from devpool.region.client import FEATURES
    fd = _uffd.open_uffd()
    memfd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(memfd, npages * P)
    mm = mmap.mmap(memfd, npages * P, mmap.MAP_SHARED)
    try:
        _uffd.api(fd, FEATURES)
        cbuf = ctypes.c_char.from_buffer(mm)
        addr = ctypes.addressof(cbuf)
        del cbuf
        _uffd.register(fd, addr, npages * P, _uffd.UFFDIO_REGISTER_MODE_MISSING | _uffd.UFFDIO_REGISTER_MODE_WP)
        yield fd, memfd, mm, addr
    finally:
        os.close(fd)
        if not mm.closed:
            mm.close()
        os.close(memfd)


@contextlib.contextmanager
def _handler_here(npages: int):
    """A Handler (serve='zero') in this process over ``npages`` of a registered memfd
    mapping of this process, to drive its fault service into states a race makes;
    yields (handler, uffd, mmap, address)."""
    import socket

    from devpool.region.handler import Handler
    with _registered_memory(npages) as (fd, memfd, mm, addr):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            h = Handler(fd, memfd, theirs, {"base": addr, "npages": npages, "resident_pages": npages,
                                            "serve": "zero"})
            yield h, fd, mm, addr
        finally:
            mine.close()
            theirs.close()


def test_a_second_fault_on_a_poisoned_page_is_woken(tmp_path):
    """Two threads fault on a page that cannot be loaded: the first fault's poison wakes
    the waiters queued by then, but a thread that read the page table before the poison
    went in and queued after its wake still waits, and its message reaches the handler
    with the page LOST. Poisoning again fails with EEXIST (the page is poisoned); before,
    that was only logged and the thread waited forever. Driven here on a Handler in this
    process, with that state made deterministically: the poison is installed without a
    wake while the thread's fault is pending."""
    import fcntl
    import select
    import struct

    from devpool.region import uffd as _uffd
    from devpool.region.handler import LOST
    sink = os.open(tmp_path / "sink", os.O_WRONLY | os.O_CREAT, 0o600)
    got = {}
    t = None
    try:
        with _handler_here(4) as (h, fd, mm, addr):
            # a syscall reading page 1: EFAULT once poisoned
            t = _pwrite_in_thread(sink, memoryview(mm)[P:P + 64], got)
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            assert poller.poll(10_000), "the reader's fault never arrived"
            # the first fault's poison, as if its wake had come before this thread queued
            fcntl.ioctl(fd, _uffd.UFFDIO_POISON, struct.pack("QQQq", addr + P, P, 1, 0))  # DONTWAKE
            h.state[1] = LOST
            h.serve(_uffd.read_faults(fd))
            t.join(10)
            assert not t.is_alive(), "the second thread still waits on the poisoned page"
            assert got == {"errno": errno.EFAULT}
    finally:
        if t is not None:
            t.join(10)
        os.close(sink)


def test_a_run_copied_over_a_page_already_there_fills_every_other_page():
    """UFFDIO_COPY of a run stops at the first page already there and reports the
    pages before it (EAGAIN with a partial count). Before: the copy restarted from the
    run's start, met EEXIST at once, and the handler took the whole run as filled: the
    pages after the one already there were never copied (their next fault, with the
    page counted resident, would loop or read zeros)."""
    import ctypes

    with _handler_here(4) as (h, fd, mm, addr):
        from devpool.region import uffd as _uffd
        _uffd.zeropage(fd, addr + 2 * P, P)         # page 2 is there already
        for k in range(4):
            h.buf[k] = k + 1
        h.mode = "zswap"                              # copy from buf, as a store's fill does
        h._copy_runs([0, 1, 2, 3], [True] * 4)
        libc = ctypes.CDLL(None, use_errno=True)
        vec = (ctypes.c_ubyte * 4)()
        assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(4 * P), vec) == 0
        assert [v & 1 for v in vec] == [1, 1, 1, 1], "a page of the run was never filled"
        a = np.frombuffer(mm, np.uint8).reshape(4, P)
        assert [int(a[k, 0]) for k in range(4)] == [1, 2, 0, 4]
        del a


_STRAY_CLOSE_SCRIPT = textwrap.dedent("""
    import os, time
    import devpool
    r = devpool.swap_region(16 * 4096, resident_bytes=16 * 4096, backend="host")
    a = r.array
    a[:] = 7
    r.evict(16)
    hpid = r.handler_pid
    os.close(r._res.handler_sock.fileno())   # a stray close of a descriptor number
    time.sleep(0.5)
    print(int(a.sum()), flush=True)          # the evicted pages still come back
    try:
        r.stats()
    except devpool.DevpoolError as exc:
        print("stats:", exc, flush=True)
    t = time.monotonic()
    r.close()
    print(round(time.monotonic() - t), flush=True)
    try:
        os.kill(hpid, 0)
        print("handler left", flush=True)
    except ProcessLookupError:
        pass
""")


def test_a_stray_close_of_the_control_socket_loses_no_page():
    """Closing the region's control socket descriptor (a stray os.close, a closerange)
    cuts the region off from its handler, not from its pages. Before: the handler took
    the socket's EOF for its client's death and exited, and every evicted page was lost
    (the next access raised SIGBUS). Now it serves faults until its client really dies;
    the region's calls raise, close() ends the handler at once."""
    proc = subprocess.run([sys.executable, "-c", _STRAY_CLOSE_SCRIPT], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    out = proc.stdout.splitlines()
    assert out[0] == str(7 * 16 * 4096)
    assert out[1].startswith("stats:")
    assert int(out[2]) < 5 and "handler left" not in out


_EXEC_SCRIPT = textwrap.dedent("""
    import os, sys
    import devpool
    r = devpool.swap_region(16 * 4096, resident_bytes=4 * 4096, backend="host")
    r.array[:] = 1
    print(r.handler_pid, r._res.guard.pid, flush=True)
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(20)"])
""")


def test_exec_without_close_ends_the_region_processes():
    """exec() replaces the client's memory (the region with it) and closes its sockets
    while its pid lives on: the handler and guard must go, not wait for the new program
    to exit (a socket's EOF with the client alive is otherwise taken for a stray close)."""
    proc = subprocess.Popen([sys.executable, "-c", _EXEC_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        hpid, gpid = (int(x) for x in proc.stdout.readline().split())
        assert _gone_within(hpid, gpid), "the region's processes outlived the exec"
        assert proc.poll() is None           # while the exec'd program still runs
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_a_stopped_handler_is_reported_not_waited_out(region):
    """A stopped handler (SIGSTOP, a debugger) answers nothing: a request raises saying
    so within seconds instead of waiting in silence, the region stays whole, and once
    the handler is continued the next request gets its own reply (the late one to the
    first request is skipped)."""
    r = region(16, 4, backend="host")
    r.array[:] = 3
    hpid = r.handler_pid
    os.kill(hpid, signal.SIGSTOP)
    try:
        t = time.monotonic()
        with pytest.raises(DevpoolError, match="is stopped"):
            r.stats()
        assert time.monotonic() - t < 10
        with pytest.raises(DevpoolError, match="is stopped"):
            r.evict(4)
    finally:
        os.kill(hpid, signal.SIGCONT)
    st = r.stats()
    assert st["resident_pages"] <= 16 and st["handler_pid"] == hpid
    assert r.evict(2) >= 0 and (r.array == 3).all()
