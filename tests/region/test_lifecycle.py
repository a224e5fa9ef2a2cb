"""Close, drop, fork, exec, a stopped handler: the region's processes live exactly as long as it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import devpool
from devpool import DevpoolError
from tests.region.helpers import (
    P, _alive, _gone_within, _children, _interrupted_while_the_handler_is_stopped, needs_uffd,
)

pytestmark = needs_uffd


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


_DOFORK_SCRIPT = textwrap.dedent("""
    import ctypes, os, signal, sys
    import numpy as np
    import devpool
    libc = ctypes.CDLL(None, use_errno=True)
    n = 16
    with devpool.swap_region(n * 4096, resident_bytes=4 * 4096, backend="host") as r:
        a = r.array
        a[:] = np.arange(a.size, dtype=np.uint64).astype(np.uint8) | 1    # no zero byte anywhere
        r.evict()
        vec = (ctypes.c_ubyte * n)()
        libc.mincore(ctypes.c_void_p(a.ctypes.data), ctypes.c_size_t(n * 4096), vec)
        p = [k for k in range(n) if not vec[k] & 1][0]                     # an evicted page
        # the caller undoes the region's MADV_DONTFORK (MADV_DOFORK = 11)
        assert libc.madvise(ctypes.c_void_p(a.ctypes.data), ctypes.c_size_t(n * 4096), 11) == 0
        pid = os.fork()
        if pid == 0:
            try:
                os.write(1, f"child read {int(a[p * 4096 + 1])}\\n".encode())
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        want = np.arange(a.size, dtype=np.uint64).astype(np.uint8) | 1
        print("child signal", sig, flush=True)
        print("parent intact", bool(np.array_equal(a, want)), flush=True)
""")


def test_a_child_forked_after_madv_dofork_never_reads_zeros_nor_zeroes_the_parent():
    """The caller undoes MADV_DONTFORK on the region and forks. Before: the child got
    the shared mapping without the userfaultfd registration, read an evicted page as
    zeros, and filled the memfd's hole with them, so the parent's page read zeros for
    good. Now every fork through Python marks the region MADV_DONTFORK again first: the
    child's access faults (SIGSEGV) and the parent's pages stay whole."""
    proc = subprocess.run([sys.executable, "-c", _DOFORK_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    out = proc.stdout.splitlines()
    assert not any(line.startswith("child read") for line in out), out     # no value came back
    assert "child signal 11" in out and "parent intact True" in out, out


def test_close_with_the_handler_stopped_kills_it_at_once_and_says_what_was_lost(region):
    """close() with the handler stopped (SIGSTOP): before, it waited out its 30 s timeout
    for each of two requests the stopped handler could not answer. Now it notices the
    stop within about a second, kills and reaps the handler (and its guard goes), and
    warns that the evicted pages were discarded with it."""
    r = region(16, 4, backend="host")
    r.array[:] = 3
    hpid, gpid = r.handler_pid, r._res.guard.pid
    os.kill(hpid, signal.SIGSTOP)
    t = time.monotonic()
    with pytest.warns(RuntimeWarning, match=f"handler process {hpid} was stopped.*evicted pages"):
        r.close()
    assert time.monotonic() - t < 10              # 60 s before
    assert _gone_within(hpid, gpid)
    assert r.closed and r._res.handler is None
