"""Helpers shared by the swap region's tests.

Every wait here is bounded: threads are joined with a timeout and subprocesses run
under one, so a deadlock fails a test instead of hanging the suite."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

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
#: the mark of every test here: userfaultfd must be usable
needs_uffd = pytest.mark.skipif(not _ok, reason=f"userfaultfd unusable here: {_why}")


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


def _children() -> set:
    """This process's live child processes (pids)."""
    from devpool.region.client import _children as children_of
    return {pid for pid in children_of(os.getpid()) if _alive(pid)}


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
