"""A region of this process's memory swapped into a devpool pool through userfaultfd.

``swap_region(nbytes, resident_bytes=...)`` maps ``nbytes`` of real memory and hands
its page faults to a handler process that owns a :class:`~devpool.Zswap` and its pool
(on the host or in GPU memory). ``region.array`` is a plain writable numpy ``uint8``
array over that memory: numpy, C code and syscalls load and store it directly. Pages
beyond the resident budget are evicted into Zswap and come back, byte for byte, on the
next access; pages never written read as zeros and take no pool space. The region is a
client of Zswap as Zswap is a client of the pool: it calls only ``store_batch``,
``load`` (one faulting page) / ``load_batch`` (several), ``stats`` and ``close``.

Which process does what (the handler's module, ``handler.py``, draws it): this
process maps the memory (a memfd, ``MAP_SHARED``), creates the userfaultfd, registers
the range for missing and write-protect faults, and starts two processes: the handler
and a small guard that turns a handler's death into loud failures (SIGBUS / EFAULT on
lost pages, :class:`~devpool.DevpoolError` from every call here) instead of a hang or
zeros. No thread of this process serves a fault while the handler lives, so a numpy
pass that holds the GIL while it faults cannot deadlock; if no guard can answer either
(both killed, a stopped guard), a thread here that never needs the GIL does the guard's
work (``watch.py``).

Not supported: I/O that pins the region's pages and writes them later by DMA (an
``O_DIRECT`` read into the region, io_uring fixed buffers, RDMA). No user-space call
shows a pin, so eviction may drop a pinned page before the I/O lands in it: the read
reports success and the page keeps its old bytes. Buffered I/O is served page by page
through the faults and is correct.

Costs: a fault is a round trip to another process (tens of microseconds from Python,
see ``benchmarks/bench_region.py``) plus a Zswap load; eviction runs in batches in the
handler, between faults. Linux only, x86_64; needs userfaultfd permission (root,
``/dev/userfaultfd`` access, or ``vm.unprivileged_userfaultfd=1``).
"""

from __future__ import annotations

import ctypes
import errno
import math
import mmap
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Mapping

import numpy as np

from .. import _errors
from . import protocol
from . import uffd as _uffd
from .._checks import check_int, check_real
from .._errors import BackendUnavailableError, BadInputError, DevpoolError, RegionError
from .guard import MEMFD_NAME, start_guard, stop_guard, wait_or_kill
from .protocol import ask, recv, reply_to, send
from .residency import POLICIES
from .sources import SOURCES
from .watch import RegionWatch

__all__ = ["SwapRegion", "swap_region"]

PAGE_SIZE = mmap.PAGESIZE

#: features the region needs from the kernel's userfaultfd
FEATURES = (_uffd.UFFD_FEATURE_MISSING_SHMEM | _uffd.UFFD_FEATURE_PAGEFAULT_FLAG_WP
            | _uffd.UFFD_FEATURE_WP_HUGETLBFS_SHMEM | _uffd.UFFD_FEATURE_POISON)
#: ioctls the registered range must allow
IOCTLS = (_uffd._UFFDIO_WAKE, _uffd._UFFDIO_COPY, _uffd._UFFDIO_ZEROPAGE,
          _uffd._UFFDIO_WRITEPROTECT, _uffd._UFFDIO_POISON)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value
_HANDLER_MAIN = "import sys; from devpool.region.handler import handler_main; sys.exit(handler_main(sys.argv[1:]))"
#: the handler keeps 18 bytes of state per page (residency.py; and 16 per resident page
#: in its victim queue): a 1 TiB region costs it 4.5 GiB
MAX_NBYTES = 1 << 40
#: descriptors an open region holds in this process: the userfaultfd, the memfd, the
#: handler's pidfd, two sockets, the watch thread's pipe (two ends)
FDS_PER_REGION = 7
MADV_DONTFORK = 10          # a fork()ed child gets no mapping: it could fill holes with zeros
MADV_NOHUGEPAGE = 15        # faults and evictions go a page at a time


def swap_region(nbytes: int, *, resident_bytes: int, backend: str = "auto", compressor: str = "lz4",
                capacity_bytes: int | None = None, backing=None, max_pool_percent: float = 100,
                max_pool_bytes: int | None = None, accept_threshold_percent: float = 90,
                writeback: bool = True, policy: str = "lfu", fault_around: int = 0,
                spin_us: float = 100, start_timeout: float = 120.0, **options) -> "SwapRegion":
    """Map ``nbytes`` of memory whose pages beyond ``resident_bytes`` live in a Zswap.

    Use it as a context manager (or call ``close()``)::

        with devpool.swap_region(64 << 20, resident_bytes=16 << 20) as r:
            a = r.array                 # np.uint8, writable, len nbytes
            a[:] = 1                    # faults; pages beyond 16 MiB are evicted
            r.stats()["evicted_pages"]

    ``backend``, ``compressor``, ``backing`` (a path: refused and written-back pages go
    there), ``max_pool_percent``, ``max_pool_bytes``, ``accept_threshold_percent`` and
    ``writeback`` are those of :class:`~devpool.Zswap` and :func:`~devpool.open_pool`;
    the pool holds ``capacity_bytes`` (default: 5/4 of ``nbytes``, at least 4 MiB) and,
    unlike a shared Zswap, the limit defaults to all of it. ``policy`` picks victims:
    ``"lfu"`` (fault frequency with aging, the default) or ``"fifo"``. ``fault_around``
    (0 or a power of two) brings back the evicted pages of the aligned window of that
    many pages around a faulting one. ``spin_us``: how long the handler keeps polling
    after a fault before it sleeps.

    Raises BadInputError for bad sizes, BackendUnavailableError (naming the fix) where
    userfaultfd cannot be used, and whatever opening the pool raises, from the handler.
    """
    return SwapRegion(nbytes, resident_bytes=resident_bytes, backend=backend, compressor=compressor,
                      capacity_bytes=capacity_bytes, backing=backing, max_pool_percent=max_pool_percent,
                      max_pool_bytes=max_pool_bytes, accept_threshold_percent=accept_threshold_percent,
                      writeback=writeback, policy=policy, fault_around=fault_around, spin_us=spin_us,
                      start_timeout=start_timeout, **options)


class _Resources:
    """Everything a region holds outside Python's heap, released exactly once (by
    ``close()``, or by a finalizer when a region is dropped unclosed)."""

    def __init__(self):
        self.fds: list[int] = []
        self.socks: list[socket.socket] = []
        self.handler: subprocess.Popen | None = None
        self.guard: subprocess.Popen | None = None
        self.handler_sock: socket.socket | None = None
        self.guard_sock: socket.socket | None = None
        self.watch: RegionWatch | None = None
        self.addr = 0
        self.length = 0
        self.keep_reserved = False
        self.owner = os.getpid()

    def release(self, timeout: float = 30.0) -> None:
        if os.getpid() != self.owner:
            return          # a fork()ed child exiting: the region is its parent's to close
        # 0. the watch thread: from here on the handler's exit is not a death. Until it
        #    has returned, no descriptor of ours may close (it polls and reads them)
        if self.watch is not None:
            if not self.watch.stop():
                self.fds.clear()     # leaked rather than reused under a thread still on them
            self.watch = None
        # 1. the handler stops watching the guard (else it would take the guard's exit
        #    below for a death and start another) and dismisses any guard it started
        answers = self.handler is not None and self.handler.poll() is None
        stopped = False
        if answers:
            # a stopped handler (SIGSTOP, a debugger) answers nothing: noticed within
            # STOPPED_CHECK_S, not waited out for the whole timeout
            wait = _reply_waiter(self.handler.pid, timeout)
            answers = ask(self.handler_sock, (protocol.UNGUARD, "unguard"), timeout, wait)
            stopped = not answers and wait.stopped
        # 2. the guard: from here on the handler's exit is not a death
        if self.guard is not None:
            stop_guard(self.guard, self.guard_sock)
            self.guard = None
        # 3. the handler frees its pool and exits
        if self.handler is not None:
            if answers:
                wait = _reply_waiter(self.handler.pid, timeout)
                answers = ask(self.handler_sock, (protocol.CLOSE, "close"), timeout, wait)
                stopped = not answers and wait.stopped
            if not answers and self.handler.poll() is None:
                # no answer (stopped, wedged) or no socket (closed under us): the
                # handler serves until this process exits, so it cannot be asked. A
                # guard it started (after ours died) would take its death for a crash
                # and linger: those go with it
                spawned = _children(self.handler.pid)
                self.handler.kill()
                for pid in spawned:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            pid = self.handler.pid
            wait_or_kill(self.handler, 10.0)
            self.handler = None
            if stopped:
                warnings.warn(f"swap region close(): the handler process {pid} was stopped (SIGSTOP or a "
                              f"debugger) and could not be asked to close; it was killed, and the region's "
                              f"evicted pages, which only it held, were discarded with its pool",
                              RuntimeWarning, stacklevel=3)
        # 3. the memory: unmapped, or (an array over it is still referenced) reserved with
        # no access, so a stale array faults instead of reading someone else's mapping
        if self.addr:
            # forgotten first: a fork in another thread (its hook marks every live
            # region MADV_DONTFORK) must not reach an address another mapping may take
            addr, self.addr = self.addr, 0
            if self.keep_reserved:
                got = _libc.mmap(addr, self.length, 0,                      # PROT_NONE
                                 mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x10 | 0x4000, -1, 0)  # FIXED, NORESERVE
                if got in (None, _MAP_FAILED):
                    _libc.munmap(addr, self.length)
            else:
                _libc.munmap(addr, self.length)
        for s in self.socks:
            try:
                s.close()
            except OSError:     # its descriptor was closed under it (EBADF)
                pass
        self.socks.clear()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


#: every region's resources not yet released, for the fork hook below
_LIVE: "weakref.WeakSet[_Resources]" = weakref.WeakSet()


def _drop_inherited() -> None:
    """In a fork()ed child: close its copies of every region's descriptors. Held by a
    child, the control sockets would never reach EOF, so after the owner died the handler
    and guard (and, through the memfd, the region's memory) would live on for as long as
    any forked worker did. The child has no mapping of the region (MADV_DONTFORK) and its
    release() does nothing, so it needs none of them."""
    for res in list(_LIVE):
        for s in res.socks:
            try:
                s.close()
            except OSError:
                pass
        for fd in res.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        res.socks, res.fds = [], []      # their numbers may be reused in the child
        if res.watch is not None:        # the child has no watch thread, only its pipe
            res.watch.close_pipe()
            res.watch = None


def _keep_out_of_children() -> None:
    """Before every fork() of this process through Python (``os.fork``, multiprocessing's
    fork, ...): mark each region's memory MADV_DONTFORK again, whatever the caller did
    with it since. A child that got the mapping (after ``madvise(MADV_DOFORK)``) would
    not have the userfaultfd registration (the kernel drops it in a child), so its read
    of an evicted page would fill the memfd's hole with zeros: it would read zeros and
    the parent's page would read zeros for good. Without the mapping, the child's access
    faults (SIGSEGV): loud, and the parent's pages stay whole. A fork() made from C
    outside Python is not seen here (see the README)."""
    for res in list(_LIVE):
        if res.addr and res.owner == os.getpid():
            _libc.madvise(res.addr, res.length, MADV_DONTFORK)


os.register_at_fork(before=_keep_out_of_children, after_in_child=_drop_inherited)


def _refused(what: str, exc: OSError) -> RegionError:
    """``exc``, an OSError of the system's, as a RegionError that says what it refused."""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        why += (f" (this process may hold {soft} file descriptors, RLIMIT_NOFILE; an open region "
                f"holds {FDS_PER_REGION} of them)" if exc.errno == errno.EMFILE else " (the whole system's limit)")
    elif exc.errno in (errno.EAGAIN, errno.ENOMEM):
        why += " (no process or memory to be had: RLIMIT_NPROC, a pids cgroup, or memory)"
    err = RegionError(f"{what}: {why}")
    err.errno = exc.errno                   # (strerror stays unset: str() is the whole message)
    return err


class _NoAnswer(OSError):
    """The handler will not answer: it is stopped, or the wait ran out."""


def _reply_waiter(pid: int, timeout: float):
    """A ``wait(sock)`` for :func:`protocol.reply_to` that returns once a reply can be
    read and raises :class:`_NoAnswer` when process ``pid`` is stopped (looked at every
    STOPPED_CHECK_S) or ``timeout`` seconds have passed; ``.stopped`` says which."""
    deadline = time.monotonic() + timeout

    def wait(sock: socket.socket) -> None:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _NoAnswer(errno.ETIMEDOUT, f"the region's handler process {pid} did not answer")
            if poller.poll(min(left, STOPPED_CHECK_S) * 1000):
                return
            if _process_state(pid) in ("T", "t"):
                wait.stopped = True
                raise _NoAnswer(errno.EAGAIN, f"the region's handler process {pid} is stopped")

    wait.stopped = False
    return wait


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (from /proc; empty when it cannot be read)."""
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


class SwapRegion:
    """``nbytes`` of this process's memory whose cold pages live in a Zswap.

    ``array`` is the memory; ``evict(n)`` pushes pages out now; ``stats()`` reports the
    region's counters with the Zswap's under ``"zswap"``; ``close()`` stops the handler,
    frees the pool and unmaps the memory. Thread-safe: any thread may touch the array
    (faults are served whoever holds the GIL) and call the methods.

    Baselines for benchmarks (not for use): ``serve="zero"`` answers every fault with a
    zero page and drops evicted bytes (the floor of a fault round trip), with
    ``serve_delay_us`` busy-waiting that long first (a handler whose work takes that
    long); ``serve="file"`` keeps evicted pages uncompressed in ``file``.
    """

    def __init__(self, nbytes: int, *, resident_bytes: int, backend: str = "auto", compressor: str = "lz4",
                 capacity_bytes: int | None = None, backing=None, max_pool_percent: float = 100,
                 max_pool_bytes: int | None = None, accept_threshold_percent: float = 90,
                 writeback: bool = True, policy: str = "lfu", fault_around: int = 0,
                 spin_us: float = 100, start_timeout: float = 120.0, serve: str = "zswap",
                 file=None, file_direct: bool = False, serve_delay_us: float = 0,
                 pool_options: dict | None = None):
        nbytes = check_int(nbytes, "nbytes", lo=1, hi=MAX_NBYTES)
        if nbytes % PAGE_SIZE:
            raise BadInputError(f"nbytes must be a multiple of the page size ({PAGE_SIZE}), got {nbytes}")
        resident_bytes = check_int(resident_bytes, "resident_bytes", lo=0)
        if resident_bytes < PAGE_SIZE:
            raise BadInputError(f"resident_bytes must be at least one page ({PAGE_SIZE} bytes), got {resident_bytes}")
        if policy not in POLICIES:
            raise BadInputError(f"policy must be one of {POLICIES}, got {policy!r}")
        fault_around = check_int(fault_around, "fault_around", lo=0, hi=1 << 20)
        if fault_around & (fault_around - 1):
            raise BadInputError(f"fault_around must be 0 or a power of two, got {fault_around}")
        if serve not in SOURCES:
            raise BadInputError(f"serve must be one of {tuple(SOURCES)}, got {serve!r}")
        if serve == "file" and file is None:
            raise BadInputError("serve='file' needs file= (a path for the plain swap file)")
        serve_delay_us = check_real(serve_delay_us, "serve_delay_us", lo=0, hi=1e4)
        if serve_delay_us and serve != "zero":
            raise BadInputError("serve_delay_us is a baseline of serve='zero' only")
        if pool_options is not None and not isinstance(pool_options, Mapping):
            raise BadInputError(f"pool_options must be a dict of open_pool options, got "
                                f"{type(pool_options).__name__}")
        try:
            pool_options = dict(pool_options or {})
        except Exception as exc:
            raise BadInputError(f"pool_options cannot be read as a dict: {exc!r}") from None
        for key in pool_options:
            if not isinstance(key, str):
                raise BadInputError(f"pool_options keys must be option names (str), got {key!r}")
            if key == "capacity_bytes":
                raise BadInputError("pool_options may not set capacity_bytes: it is swap_region's own argument")
        if backing is not None and not isinstance(backing, (str, os.PathLike)):
            raise BadInputError("backing must be a path (the handler process opens the file)")
        if capacity_bytes is None:
            capacity_bytes = max(nbytes * 5 // 4, 4 << 20)
        capacity_bytes = check_int(capacity_bytes, "capacity_bytes", lo=1)
        spin_us = check_real(spin_us, "spin_us", lo=0, hi=1e6)
        start_timeout = check_real(start_timeout, "start_timeout", lo=0, lo_open=True)
        self.nbytes = nbytes
        self.resident_bytes = resident_bytes
        self._lock = threading.RLock()
        self._closed = False
        self._dead: str | None = None
        self._serial = 0                # of the last request to the handler
        self._res = res = _Resources()
        _LIVE.add(res)
        self._finalizer = weakref.finalize(self, res.release)
        cfg = {
            "npages": nbytes // PAGE_SIZE, "resident_pages": resident_bytes // PAGE_SIZE,
            "serve": serve, "policy": policy, "fault_around": fault_around, "spin_us": spin_us,
            "serve_delay_us": serve_delay_us,
            "backend": backend, "compressor": compressor, "capacity_bytes": capacity_bytes,
            "backing": os.fspath(backing) if backing is not None else None,
            "file": os.fspath(file) if file is not None else None, "file_direct": bool(file_direct),
            "pool_options": pool_options,
            "zswap_options": {"max_pool_percent": max_pool_percent, "max_pool_bytes": max_pool_bytes,
                              "accept_threshold_percent": accept_threshold_percent,
                              "writeback": writeback},
        }
        try:
            self._open(cfg, start_timeout)
        except OSError as exc:
            self._finalizer()
            if isinstance(exc, DevpoolError):
                raise
            raise _refused("swap_region", exc) from exc
        except BaseException:
            self._finalizer()
            raise
        # From here the resources live as long as the memory's buffer object, not as
        # long as this object: every array handed out holds the buffer (through its
        # base), so ``a = swap_region(...).array`` keeps its memory mapped and served
        # while ``a`` (or a view of it) lives, and releases it when the last one goes.
        # Tied to the region, a dropped region would unmap the memory under live arrays.
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self._cbuf, res.release)

    # --- construction ------------------------------------------------------------------
    def _open(self, cfg: dict, start_timeout: float) -> None:
        res = self._res
        try:
            fd = _uffd.open_uffd()
            res.fds.append(fd)
            _uffd.api(fd, FEATURES)
        except _uffd.UffdUnavailable as exc:
            raise BackendUnavailableError(f"swap_region: {exc.strerror}") from exc
        self._uffd = fd
        memfd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
        res.fds.append(memfd)
        try:
            os.ftruncate(memfd, self.nbytes)
        except OSError as exc:
            raise DevpoolError(f"swap_region: cannot size the region's memory to {self.nbytes} bytes: "
                               f"{exc.strerror}") from exc
        addr = _libc.mmap(None, self.nbytes, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_SHARED | 0x4000, memfd, 0)          # MAP_NORESERVE
        if addr in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise DevpoolError(f"swap_region: mmap of {self.nbytes} bytes failed: {os.strerror(err)}")
        res.addr, res.length = addr, self.nbytes
        _libc.madvise(addr, self.nbytes, MADV_DONTFORK)
        _libc.madvise(addr, self.nbytes, MADV_NOHUGEPAGE)
        try:
            allowed = _uffd.register(fd, addr, self.nbytes,
                                     _uffd.UFFDIO_REGISTER_MODE_MISSING | _uffd.UFFDIO_REGISTER_MODE_WP)
        except OSError as exc:
            raise BackendUnavailableError(f"swap_region: UFFDIO_REGISTER of shared memory failed "
                                          f"({exc.strerror}); Linux 6.6 or later is needed") from exc
        lacking = [nr for nr in IOCTLS if not _uffd.ioctl_allowed(allowed, nr)]
        if lacking:
            raise BackendUnavailableError(f"swap_region: this kernel does not allow userfaultfd ioctls "
                                          f"{lacking} on shared memory; Linux 6.6 or later is needed")
        cfg["base"] = addr
        cfg["client_pid"] = os.getpid()
        # the handler: owns the Zswap and its pool
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        res.socks += [mine, theirs]
        res.handler_sock = mine
        res.handler = subprocess.Popen(
            [sys.executable, "-c", _HANDLER_MAIN, str(fd), str(memfd), str(theirs.fileno())],
            pass_fds=(fd, memfd, theirs.fileno()), stdin=subprocess.DEVNULL, close_fds=True,
            process_group=0)            # out of the terminal's foreground group: Ctrl-C is ours, not its
        theirs.close()
        res.socks.remove(theirs)
        mine.settimeout(start_timeout)
        try:
            send(mine, cfg)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            # the options travel pickled: a lambda, a lock, an open file cannot
            raise BadInputError(f"swap_region: an option cannot be handed to the handler process "
                                f"(it must be picklable): {exc}") from None
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            # one SOCK_SEQPACKET message carries the options: a path or option of
            # megabytes cannot be sent (nor be a real path or codec name)
            size = len(pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL))
            raise BadInputError(f"swap_region: the options are too large ({size} bytes pickled) to hand "
                                f"to the handler process; a path, codec name or pool option is far "
                                f"longer than any real one") from None
        try:
            kind, *info = recv(mine)
        except (OSError, EOFError) as exc:
            raise DevpoolError(f"swap_region: the handler process did not start "
                               f"(exit code {res.handler.poll()}): {exc}") from exc
        if kind != "ready":
            _raise_remote(info[0], info[1])
        self._handler_info = info[0]
        # the guard: turns the handler's death into loud failures
        pidfd = os.pidfd_open(res.handler.pid)
        res.fds.append(pidfd)
        try:
            res.guard, res.guard_sock = start_guard(fd, pidfd, addr, self.nbytes, os.getpid())
        except OSError as exc:
            raise _refused("swap_region: the guard process did not start", exc) from exc
        except subprocess.SubprocessError as exc:
            raise DevpoolError(f"swap_region: the guard process did not start: {exc}") from exc
        res.socks.append(res.guard_sock)
        # the last line, for when the guard cannot answer either (both killed at once, a
        # stopped guard): a thread here that never needs the GIL (watch.py)
        res.watch = RegionWatch(fd, pidfd, addr, self.nbytes)
        if not res.watch.start():
            res.watch = None
        mine.settimeout(None)
        # the handler watches the guard from now on and starts another if it dies
        self._request(protocol.GUARD, res.guard.pid)
        self._cbuf = (ctypes.c_uint8 * self.nbytes).from_address(addr)
        self._array = np.ctypeslib.as_array(self._cbuf)

    # --- the public surface ----------------------------------------------------------------
    @property
    def array(self) -> np.ndarray:
        """The region's memory as a writable ``uint8`` array of ``nbytes`` elements."""
        self._check_usable()
        return self._array

    @property
    def handler_pid(self) -> int:
        """Process id of the handler (the process that owns the pool)."""
        return self._handler_info["pid"]

    @property
    def closed(self) -> bool:
        return self._closed

    def evict(self, n: int | None = None) -> int:
        """Push pages out now: those beyond the resident budget (``n=None``) or ``n``
        resident pages chosen by the policy. Returns the pages evicted (pages Zswap
        refuses stay resident)."""
        if n is not None:
            n = check_int(n, "n", lo=0)
        return self._request(protocol.EVICT, n)

    def stats(self) -> dict:
        """Counters: faults, zero_fills, loads_from_pool, loads_from_backing, evicted_pages,
        resident_pages, fault_p50_us / fault_p99_us (service time in the handler), ...,
        and the Zswap's own statistics under ``"zswap"``."""
        st = self._request(protocol.STATS)
        st["nbytes"] = self.nbytes
        st["resident_bytes"] = self.resident_bytes
        return st

    def close(self) -> None:
        """Stop the handler and its guard, free the pool, unmap the memory. Idempotent.

        An array taken from ``.array`` must not be used afterwards: if one is still
        referenced, its address range stays reserved without access (an access faults),
        so it can never read or write another mapping.
        """
        with self._lock:
            if self._closed:
                # an earlier close() may have been interrupted (an exception from a signal
                # handler): release() resumes where it stopped, and does nothing when done
                self._res.release()
                return
            self._closed = True
            res = self._res
            arr = self.__dict__.pop("_array", None)
            cbuf = self.__dict__.pop("_cbuf", None)
            # referenced elsewhere: more than our local name and getrefcount's argument
            res.keep_reserved = ((arr is not None and sys.getrefcount(arr) > 2)
                                 or (cbuf is not None and sys.getrefcount(cbuf) > 3))
            # released here, while ``cbuf`` is held: were it dropped first, its finalizer
            # would run from the deallocation, where an exception (a KeyboardInterrupt
            # while waiting for the handler) is printed and lost instead of raised
            self._finalizer()
            del arr, cbuf

    def __enter__(self) -> "SwapRegion":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("handler dead" if self._dead else "open")
        return f"<SwapRegion {self.nbytes} bytes, resident budget {self.resident_bytes}, {state}>"

    # --- talking to the handler --------------------------------------------------------
    def _check_usable(self) -> None:
        if self._closed:
            raise DevpoolError("the swap region is closed")
        if os.getpid() != self._res.owner:
            raise DevpoolError(f"this swap region belongs to process {self._res.owner} (a fork()ed child "
                               f"has no mapping of it)")
        if self._dead is None:
            code = self._res.handler.poll()
            if code is not None:
                self._dead = (f"the region's handler process {self._res.handler.pid} died (exit status {code}); "
                              f"its evicted pages are lost")
            # a dead guard is the handler's to replace (it watches the guard in office);
            # if it cannot, it answers every request with the reason
        if self._dead is not None:
            raise DevpoolError(f"{self._dead}; close() the region")

    def _wait_for_reply(self, sock: socket.socket) -> None:
        """Wait until a reply can be read. A stopped handler (SIGSTOP, a debugger) answers
        nothing until continued: that is raised, not waited out in silence. The region
        stays usable; the request runs once the handler continues, and its late reply is
        skipped by the next request."""
        pid = self._res.handler.pid
        try:
            _reply_waiter(pid, math.inf)(sock)
        except _NoAnswer:
            raise DevpoolError(f"the region's handler process {pid} is stopped (SIGSTOP or a debugger): "
                               f"it serves no fault and answers no request until it is continued "
                               f"(SIGCONT); this request was sent and runs then") from None

    def _request(self, *req):
        with self._lock:
            self._check_usable()
            sock = self._res.handler_sock
            # the handler ends each reply with the request's last element: a serial
            # number, by which reply_to tells this request's reply from late ones
            self._serial += 1
            serial = self._serial
            try:
                send(sock, (*req, serial))
                kind, *rest = reply_to(sock, serial, self._wait_for_reply)
                rest.pop()
            except (OSError, EOFError) as exc:
                code = self._res.handler.poll()
                if code is None:
                    try:
                        code = self._res.handler.wait(2.0)
                    except subprocess.TimeoutExpired:
                        code = None
                if code is None:        # alive: the socket itself failed (closed under us)
                    self._dead = (f"the region's control socket failed ({exc!r}); its handler process "
                                  f"{self._res.handler.pid} still serves its pages, but takes no request")
                else:
                    self._dead = (f"the region's handler process {self._res.handler.pid} died (exit status "
                                  f"{code}); its evicted pages are lost")
                raise DevpoolError(f"{self._dead}; close() the region") from exc
            if kind == "ok":
                return rest[0]
            _raise_remote(rest[0], rest[1])


#: while waiting for a reply, how often to look whether the handler is stopped
STOPPED_CHECK_S = 1.0


def _process_state(pid: int) -> str:
    """The state letter of process ``pid`` (R, S, T, t, Z, ...), '' when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def _raise_remote(name: str, message: str):
    cls = getattr(_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, DevpoolError):
        raise cls(message)
    raise DevpoolError(f"region handler: {name}: {message}")
