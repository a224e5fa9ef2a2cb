"""A swap region's last line of defence: a thread of the client that needs no GIL.

The guard process turns the handler's death into loud failures (SIGBUS, EFAULT), and
the handler replaces a guard that dies. Two cases were left: both killed at once (``pkill
-f`` over their command lines, a cgroup kill), and the handler dying while the guard is
stopped. Then no one reads the userfaultfd, and a thread faulting on an evicted page
waits for ever. No Python thread of this process can take over: the faulting thread may
hold the GIL (a numpy pass over the region), and a Python thread needs the GIL to run a
single bytecode.

This thread never needs it. It enters compiled code (numba, ``nogil``) when the region
opens and stays there, calling ``poll``, ``read`` and ``ioctl`` from libc directly:
it sleeps until the handler's pidfd says the handler is gone (or it is told to stop),
and, once faults stay unread for two checks 0.1 s apart (no guard answers them), does
what the guard does (lift all write protection, wake every waiter, answer each later
fault with ``UFFDIO_POISON`` or, for a write-protect fault, by lifting it) until
``stop``. Should both answer (a guard too slow to keep up), a fault answered twice gets
``EEXIST`` from the kernel and a wake, which is harmless. The region stops this thread before it asks
the handler to exit, so a normal exit is never taken for a death.

Compiled once and cached on disk (``cache=True``): about 0.5 s the first time on a
machine, 0.1 s to load in each later process (measured here).
"""

from __future__ import annotations

import os
import threading
import warnings

import numba
import numpy as np
from numba import types
from numba.core.dispatcher import Dispatcher

from . import uffd as _uffd

__all__ = ["RegionWatch"]

# libc, bound by symbol name (resolved in this process; no ctypes objects, so the
# compiled code caches on disk)
_poll = types.ExternalFunction("poll", types.int32(types.voidptr, types.uint64, types.int32))
_read = types.ExternalFunction("read", types.int64(types.int32, types.voidptr, types.uint64))
_ioctl = types.ExternalFunction("ioctl", types.int32(types.int32, types.uint64, types.voidptr))
_write = types.ExternalFunction("write", types.int64(types.int32, types.voidptr, types.uint64))

_POLLIN, _POLLOUT, _POLLERR, _POLLHUP, _POLLNVAL = 0x1, 0x4, 0x8, 0x10, 0x20
_POLL_MS = 200             # how soon a stop is seen (the thread re-checks between polls)
_GRACE_MS = 100            # after a death, how often it checks for faults left unread
_GRACE_CHECKS = 2          # ... and how many checks in a row before it answers them
_MSGS = 64                 # fault messages read at once
_PAGE = _uffd.PAGE_SIZE

_MESSAGE = (b"devpool: swap region watch thread: the handler process is gone; it fails accesses "
            b"to the lost (evicted) pages loudly from now on (SIGBUS, syscalls EFAULT)\n")


@numba.njit(nogil=True, cache=True)
def _watch(uffd, pidfd, stop_fd, base, length, page, wp_req, wake_req, poison_req,
           fault_event, flag_wp, pfd, msgs, arg, state, message):
    """Wait for the handler's pidfd or ``stop_fd``; after a death, once faults go
    unanswered (no guard), serve every fault of ``[base, base+length)`` loudly until
    ``stop_fd`` is readable. ``state``: [1 once it took over, faults answered since]."""
    # struct pollfd {int fd; short events; short revents;}: two int32 per descriptor,
    # events in the low half of the second, revents in its high half
    pfd[0] = pidfd
    pfd[2] = stop_fd
    while True:
        pfd[1] = _POLLIN
        pfd[3] = _POLLIN
        if _poll(pfd.ctypes.data, 2, _POLL_MS) > 0:
            if pfd[3] >> 16 or (pfd[1] >> 16) & _POLLNVAL:
                return        # told to stop (or a descriptor closed under us: nothing to watch)
            if (pfd[1] >> 16) & (_POLLIN | _POLLHUP):
                break         # the handler exited (POLLHUP: and was reaped)
    # the guard, when it lives, answers: step in only once faults stay unread for two
    # checks in a row (so one line on stderr, and no race with it, in the usual case)
    unread = 0
    while unread < _GRACE_CHECKS:
        pfd[0] = stop_fd
        pfd[1] = _POLLIN
        if _poll(pfd.ctypes.data, 1, _GRACE_MS) > 0:
            return
        pfd[0] = uffd
        pfd[1] = _POLLIN
        if _poll(pfd.ctypes.data, 1, 0) > 0 and (pfd[1] >> 16) & _POLLIN:
            unread += 1
        else:
            unread = 0
    pfd[2] = stop_fd
    state[0] = 1
    # the handler is gone: writers of resident pages may go, waiters the dead handler
    # had read are woken (their faults come back here)
    arg[0] = base
    arg[1] = length
    arg[2] = 0
    _ioctl(uffd, wp_req, arg.ctypes.data)
    arg[0] = base
    arg[1] = length
    _ioctl(uffd, wake_req, arg.ctypes.data)
    # then say so, if stderr takes it now: a full pipe must not stop the last line
    pfd[0] = 2
    pfd[1] = _POLLOUT
    if _poll(pfd.ctypes.data, 1, 0) > 0 and (pfd[1] >> 16) & _POLLOUT:
        _write(2, message.ctypes.data, message.shape[0])
    pfd[0] = uffd
    words = msgs.view(np.uint64)            # struct uffd_msg: 32 bytes, 4 words
    while True:
        pfd[1] = _POLLIN
        pfd[3] = _POLLIN
        if _poll(pfd.ctypes.data, 2, _POLL_MS) <= 0:
            continue
        if pfd[3] >> 16 or (pfd[1] >> 16) & (_POLLNVAL | _POLLERR):
            return
        if not (pfd[1] >> 16) & _POLLIN:
            continue
        got = _read(uffd, msgs.ctypes.data, msgs.shape[0])     # non-blocking descriptor
        for k in range(max(got, 0) // 32):
            if (words[4 * k] & np.uint64(0xFF)) != np.uint64(fault_event):
                continue
            flags = words[4 * k + 1]
            start = words[4 * k + 2] & ~np.uint64(page - 1)
            arg[0] = start
            arg[1] = page
            arg[2] = 0
            arg[3] = 0
            state[1] += 1
            if flags & np.uint64(flag_wp):
                r = _ioctl(uffd, wp_req, arg.ctypes.data)      # uffdio_writeprotect, mode 0
            else:
                r = _ioctl(uffd, poison_req, arg.ctypes.data)  # uffdio_poison: SIGBUS / EFAULT
            if r != 0:
                # EEXIST (the guard answered first) or a transient failure: the thread
                # retries its access and, if it faults again, comes back here
                arg[0] = start
                arg[1] = page
                _ioctl(uffd, wake_req, arg.ctypes.data)


class RegionWatch:
    """The thread above, for one region: ``start()`` it once the handler runs, ``stop()``
    it before asking the handler to exit (and before the descriptors close)."""

    def __init__(self, uffd_fd: int, handler_pidfd: int, base: int, length: int):
        self._args = (uffd_fd, handler_pidfd, base, length)
        self._stop_r = self._stop_w = -1         # the stop pipe, made by start()
        self._thread: threading.Thread | None = None
        self._state = np.zeros(2, np.int64)      # the thread's: [handler seen dead, faults answered]

    def start(self) -> bool:
        """Start the thread; False (with a warning) where numba's JIT is disabled
        (``NUMBA_DISABLE_JIT``): the function would run as Python, which needs the GIL."""
        if not isinstance(_watch, Dispatcher):
            warnings.warn("swap_region: numba's JIT is disabled (NUMBA_DISABLE_JIT), so the region's "
                          "watch thread cannot run without the GIL and is not started; the guard "
                          "process alone turns the handler's death into loud failures", RuntimeWarning,
                          stacklevel=3)
            return False
        uffd_fd, pidfd, base, length = self._args
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        args = (uffd_fd, pidfd, self._stop_r, base, length, _PAGE, _uffd.UFFDIO_WRITEPROTECT,
                _uffd.UFFDIO_WAKE, _uffd.UFFDIO_POISON, _uffd.UFFD_EVENT_PAGEFAULT,
                _uffd.UFFD_PAGEFAULT_FLAG_WP, np.zeros(4, np.int32), np.zeros(32 * _MSGS, np.uint8),
                np.zeros(4, np.uint64), self._state, np.frombuffer(_MESSAGE, np.uint8))
        _watch.compile(tuple(numba.typeof(a) for a in args))  # here, not in the thread: errors surface
        thread = threading.Thread(target=_watch, args=args, name="devpool-region-watch", daemon=True)
        thread.start()               # may raise (no thread to be had): then there is none to stop
        self._thread = thread
        return True

    @property
    def took_over(self) -> bool:
        """True once the thread has taken over (the handler dead and no guard answering)."""
        return bool(self._state[0])

    @property
    def faults_answered(self) -> int:
        """Faults the thread failed loudly (or un-write-protected) since the death."""
        return int(self._state[1])

    def stop(self, timeout: float = 10.0) -> bool:
        """Tell the thread to return and wait for it (it polls every 0.2 s). True when it
        has: only then may the region's descriptors close (a number it still used could
        name another file by then)."""
        if self._thread is not None:
            try:
                os.write(self._stop_w, b"x")
            except OSError:
                pass
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
            self._thread = None
        self.close_pipe()
        return True

    def close_pipe(self) -> None:
        """Close the stop pipe (``stop`` does; a fork()ed child, which has no thread, too)."""
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._stop_r = self._stop_w = -1
