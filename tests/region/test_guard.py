"""The guard: replaced when it dies, reported when it cannot be, dismissed with the region."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.region.helpers import (
    P, _alive, _gone_within, _blocked_thread_gets_sigbus, _pwrite_in_thread, _registered_memory,
    _handler_here, needs_uffd,
)

pytestmark = needs_uffd


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
    with pytest.warns(RuntimeWarning, match="was stopped"):
        r._res.release(timeout=0.5)                 # what close() does, with a short wait
    assert _gone_within(hpid, new), "the handler or the guard it started outlived close()"


def test_a_guard_that_cannot_be_replaced_is_reported_and_tried_again(monkeypatch):
    """If no new guard can be started, every request is answered with why (the client
    raises DevpoolError naming the guard), except close; and it is tried again (the
    loop does so every GUARD_RETRY_S) until one is up, which clears the error."""
    import select
    import socket

    from devpool.region import guard as _guard
    from devpool.region.protocol import recv, send
    started = []

    def flaky(*args, timeout=30.0):
        if not started:
            started.append(None)
            raise OSError(errno.EAGAIN, "fork refused")
        proc = subprocess.Popen(["sleep", "60"])          # stands in for a guard process
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        started.append((proc, theirs))
        return proc, mine

    monkeypatch.setattr(_guard, "start_guard", flaky)
    with _handler_here(4) as (h, fd, mm, addr):
        h.guards.poller = select.poll()
        client, h.ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            h.guards.replace()
            assert "guard process" in h.guards.error and "fork refused" in h.guards.error
            send(client, ("stats", 1))
            assert h.control() is True
            kind, name, message, tag = recv(client)
            assert (kind, name, tag) == ("err", "DevpoolError", 1) and "could not be started" in message
            assert h.guards.retry_at > time.monotonic() - 1
            h.guards.replace()                        # the retry, as the loop makes it
            assert h.guards.error is None and h.guards.replaced == 1
            proc = started[1][0]
            assert h.guards.pid == proc.pid
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

    from devpool.region import guard as _guard
    n = 4
    sink = os.open(tmp_path / "sink", os.O_WRONLY | os.O_CREAT, 0o600)
    dead = subprocess.Popen(["true"])                  # stands in for the killed handler
    dead_fd = os.pidfd_open(dead.pid)
    dead.wait()
    guard = t = None
    got = {}
    try:
        with _registered_memory(n, _guard.MEMFD_NAME) as (fd, memfd, mm, addr):
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            guard = subprocess.Popen([sys.executable, "-I", "-S", _guard.__file__, str(fd),
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


def test_a_replacement_that_cannot_get_a_descriptor_is_reported(monkeypatch):
    """Out of descriptors (EMFILE) while replacing a guard: reported and tried again,
    never an exception out of the handler's loop (which would kill it and lose every
    evicted page)."""
    import select

    with _handler_here(4) as (h, fd, mm, addr):
        h.guards.poller = select.poll()

        def no_fds(pid):
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(os, "pidfd_open", no_fds)
        h.guards.replace()
        monkeypatch.undo()
        assert "Too many open files" in h.guards.error


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
