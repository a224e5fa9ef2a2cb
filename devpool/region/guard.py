"""The guard: turns a handler's death into loud failures, never zeros, never a hang.

A small process per region that holds a pidfd of the handler and a copy of the
userfaultfd, and sleeps until the handler dies. Then its pool (the evicted pages) is
gone with it: the guard lifts all write protection, wakes every waiting thread (also
those whose messages the dead handler had read) and from then on answers each fault with
``UFFDIO_POISON``: the access raises SIGBUS, as the kernel does for a swap-in that fails,
and a syscall gets EFAULT. The client's own calls raise DevpoolError.

It runs this file as a script with ``python -I -S``: the standard library and ``uffd.py``
only (no numpy, no devpool package), so it starts in tens of milliseconds and depends on
nothing a broken environment could take away. That is the one place of the region with
two import modes (as a script it finds ``uffd.py`` beside it).

Also here, since both the client and the handler start guards: :func:`start_guard` /
:func:`stop_guard`, and :class:`GuardKeeper`, the handler's side: it watches the guard in
office and starts another at once if it dies (a replacement is the handler's child,
dismissed by the handler when it closes); if none can be started, every request is
answered with the reason and a new one is tried every second.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import time

if __package__:                      # imported: devpool.region.guard
    from . import uffd
else:                                # the guard process: python -I -S .../region/guard.py ...
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import uffd                      # noqa: E402  (stdlib only; no numpy, no devpool)

PAGE = uffd.PAGE_SIZE
#: most fault messages read at once
MAX_MSGS = 256
#: the region memory's memfd name (in /proc/PID/maps: "/memfd:devpool-region (deleted)")
MEMFD_NAME = "devpool-region"
#: how long a replacement guard may take to say it is ready (faults wait meanwhile), and
#: how soon a failed replacement is tried again
GUARD_START_S = 5.0
GUARD_RETRY_S = 1.0
#: the guard's two words with whoever started it
READY, CLOSE = b"ready", b"close"


def say(message: str) -> None:
    """Write to stderr only if it takes the line now: a full pipe (a parent that reads
    its child's stderr at the end) must not stop a handler or guard serving faults."""
    out = select.poll()
    out.register(2, select.POLLOUT)
    try:
        if any(ev & select.POLLOUT for _, ev in out.poll(0)):
            os.write(2, message.encode())
    except OSError:
        pass


def region_mapped(pid: int, base: int) -> bool:
    """Whether process ``pid`` still maps the region's memory at ``base``: the memfd
    itself, not whatever took the address afterwards (close() may leave the range
    reserved without access, so that a stale array faults)."""
    prefix = f"{base:x}-"
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(line.startswith(prefix) and MEMFD_NAME in line for line in f)
    except OSError:
        return False


def client_gone(pidfd: int, pid: int, base: int) -> bool:
    """Asked on a control socket's EOF: whether the client is gone, or only its socket.
    Gone: its pidfd is readable, or the region is no longer mapped in it (an exiting
    process drops its memory before it closes its descriptors, and exec() replaces the
    memory while the pid lives on). Mapped in a live process: a stray close."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    if p.poll(0):
        return True
    return not region_mapped(pid, base)


# --- starting and stopping a guard -----------------------------------------------------------
def start_guard(uffd_fd: int, handler_pidfd: int, base: int, length: int, client_pid: int,
                timeout: float = 30.0):
    """Start a guard over the region (this file run with ``python -I -S``: stdlib only)
    watching the handler through ``handler_pidfd``; returns ``(process, socket)`` once
    it said it is ready. Used by the client for the first guard and by the handler for
    a replacement."""
    import subprocess               # not at the top: the guard process itself never needs it
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(uffd_fd), str(handler_pidfd),
             str(theirs.fileno()), str(base), str(length), str(client_pid)],
            pass_fds=(uffd_fd, handler_pidfd, theirs.fileno()), stdin=subprocess.DEVNULL, close_fds=True,
            process_group=0)            # out of the terminal's foreground group: Ctrl-C is not ours
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    mine.settimeout(timeout)
    try:
        if mine.recv(16) != READY:
            raise OSError("the guard sent no greeting")
    except BaseException:
        proc.kill()
        proc.wait()
        mine.close()
        raise
    return proc, mine


def stop_guard(proc, sock: socket.socket, timeout: float = 5.0) -> None:
    """Dismiss a guard ('close'; killed if the socket is gone or it does not leave)."""
    try:
        sock.send(CLOSE)
    except OSError:         # the socket is gone: the guard would stay until the client exits
        proc.kill()
    wait_or_kill(proc, timeout)
    try:
        sock.close()
    except OSError:         # its descriptor was closed under it (EBADF)
        pass


def wait_or_kill(proc, timeout: float) -> None:
    """Wait (bounded) for a child process (``subprocess.Popen``) to exit; kill it past that."""
    import subprocess
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the handler's side: the guard in office, replaced when it dies ----------------------------
class GuardKeeper:
    """The handler's watch over the guard in office: the client's (its pid comes in a
    ``guard`` request) or, after that one died, one the handler started. Without a
    guard, a later death of the handler would leave every fault on an evicted page
    waiting forever, so a dead guard is replaced at once; while none can be started,
    ``error`` says why (every request is answered with it) and :meth:`retry_due` says
    when to try again."""

    def __init__(self, uffd_fd: int, base: int, length: int, client_pid: int, poller=None):
        self.uffd, self.base, self.length, self.client_pid = uffd_fd, base, length, client_pid
        self.poller = poller        # the handler's loop's; a guard's pidfd is registered there
        self.pid = 0
        self.pidfd: int | None = None
        self.own = None             # (process, socket) of a guard this handler started
        self.error: str | None = None
        self.retry_at = 0.0
        self.replaced = 0           # guards started after the one in office died
        self.guarding = True        # False once the client said it is closing

    def watch(self, pid: int) -> None:
        """Watch the guard in office (pid ``pid``); one already gone is replaced now."""
        self.pid = pid
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.replace()
            return
        self.poller.register(self.pidfd, select.POLLIN)

    def drop(self) -> None:
        """Stop watching the guard in office; dismiss it if this handler started it."""
        if self.pidfd is not None:
            self.poller.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        if self.own is not None:
            proc, sock = self.own
            self.own = None
            stop_guard(proc, sock)

    def stand_down(self) -> None:
        """The client is closing the region (it dismisses its own guard next, then asks
        the handler to close): its guard's exit is no death to answer."""
        self.guarding = False
        self.error = None
        self.drop()

    def retry_due(self) -> bool:
        """Whether the last replacement failed and it is time to try again."""
        return self.error is not None and time.monotonic() >= self.retry_at

    def replace(self) -> None:
        """The guard died (killed, OOM): start another, watching this process like the
        first. If that fails, ``error`` says why until one is up (tried again every
        GUARD_RETRY_S by the handler's loop)."""
        if not self.guarding:
            return
        self.drop()
        dead = self.pid
        me = None
        try:
            me = os.pidfd_open(os.getpid())
            # a short wait for its greeting: faults wait meanwhile
            proc, sock = start_guard(self.uffd, me, self.base, self.length, self.client_pid,
                                     timeout=GUARD_START_S)
            try:
                self.pidfd = os.pidfd_open(proc.pid)
            except BaseException:
                stop_guard(proc, sock)
                raise
        except Exception as exc:
            self.error = (f"the region's guard process {dead} died and another could not be started "
                          f"({type(exc).__name__}: {exc}): a handler death could no longer be made loud")
            self.retry_at = time.monotonic() + GUARD_RETRY_S
            say(f"devpool region handler: {self.error}; trying again\n")
            return
        finally:
            if me is not None:
                os.close(me)
        self.error = None
        self.own = (proc, sock)
        self.pid = proc.pid
        self.poller.register(self.pidfd, select.POLLIN)
        self.replaced += 1
        say(f"devpool region handler: the region's guard process {dead} died; "
            f"guard {proc.pid} took its place\n")


# --- the guard process -------------------------------------------------------------------------
def guard_main(argv: list) -> int:
    """Wait for the handler to die (pidfd readable) or the client to go ('close', or
    its pidfd readable); after a death, fail every fault of the region loudly until told
    to go.
    """
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # a terminal's Ctrl-C is the client's
    uffd_fd, pidfd, ctl_fd, base, length, client = (int(x) for x in argv[:6])
    ctl = socket.socket(fileno=ctl_fd)
    try:
        client_fd = os.pidfd_open(client)
    except ProcessLookupError:
        return 0                             # the client is gone already
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(ctl_fd, select.POLLIN)
    poller.register(client_fd, select.POLLIN)
    try:
        ctl.send(READY)
    except OSError:
        # whoever started us is gone already (a handler killed while it replaced a
        # guard): not a dismissal; the handler's pidfd tells whether to take over
        pass

    def stand_down() -> bool:
        """A control event: True when told 'close' or the client is gone. An EOF while
        the client lives is a stray close of its descriptor, not a dismissal: the guard
        stays (watching the client's pidfd from now on)."""
        try:
            msg = ctl.recv(16)
        except OSError:
            msg = b""
        if msg or client_gone(client_fd, client, base):
            return True
        say("devpool guard: the region's guard socket was closed under it; "
            "guarding until the process exits\n")
        poller.unregister(ctl_fd)
        return False

    dead = False
    while not dead:
        for fd, _ in poller.poll():
            if fd == client_fd or (fd == ctl_fd and stand_down()):
                return 0                     # told to stand down, or the client is gone
            if fd == pidfd:
                dead = True
    try:
        uffd.writeprotect(uffd_fd, base, length, False)     # let writers of resident pages go
    except OSError:
        pass
    try:
        uffd.wake(uffd_fd, base, length)   # waiters whose messages the dead handler had read
    except OSError:
        pass
    say("devpool: the swap region's handler process died; its pool (the evicted "
        "pages) is lost: accesses to pages not resident now raise SIGBUS "
        "(syscalls EFAULT) and the region's calls raise DevpoolError\n")
    poller.unregister(pidfd)
    poller.register(uffd_fd, select.POLLIN)
    while True:
        events = poller.poll(1000)
        if not events and not region_mapped(client, base):
            return 0                         # the client closed the region: nothing to guard
        for fd, _ in events:
            if fd == client_fd or (fd == ctl_fd and stand_down()):
                return 0
        for addr, flags in uffd.read_faults(uffd_fd, MAX_MSGS):
            page = addr & ~(PAGE - 1)
            try:
                if flags & uffd.UFFD_PAGEFAULT_FLAG_WP:
                    uffd.writeprotect(uffd_fd, page, PAGE, False)
                else:
                    uffd.place(uffd_fd, page, PAGE, poison_=True)
            except OSError as exc:
                if exc.errno in (errno.ESRCH, errno.ENOENT):
                    return 0
                raise


if __name__ == "__main__":
    sys.exit(guard_main(sys.argv[1:]))
