"""Handler death: its pages are lost loudly (SIGBUS, EFAULT, DevpoolError), never zeros, never a hang."""

from __future__ import annotations

import errno
import os
import signal
import textwrap

import pytest

from devpool import DevpoolError
from tests.region.helpers import P, _write_from, _resident, _blocked_thread_gets_sigbus, needs_uffd

pytestmark = needs_uffd


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
