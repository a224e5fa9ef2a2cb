"""userfaultfd from Python: the syscall, the ioctls and their structs, via ctypes.

Linux's userfaultfd (``include/uapi/linux/userfaultfd.h``) hands the page faults of a
registered range to whoever reads the descriptor. The reader resolves each one with an
ioctl: ``UFFDIO_COPY`` (fill a page with bytes), ``UFFDIO_ZEROPAGE``, ``UFFDIO_WAKE``
(another thread already filled it), ``UFFDIO_WRITEPROTECT`` (arm or lift write
protection), ``UFFDIO_POISON`` (any access to the page raises SIGBUS, a syscall gets
EFAULT). The ioctls act on the address space of the process that *created* the
descriptor, whichever process calls them, which is what lets a handler in another
process serve this one's faults.

This module knows numbers and layouts only; it imports nothing but the standard library
(the region's guard process runs it without devpool's package). Numbers are x86_64 /
generic-ioctl ones and are checked against the kernel at run time: ``UFFDIO_API``
reports the features it supports, ``UFFDIO_REGISTER`` the ioctls allowed on a range.

Struct sizes (bytes), from the uapi header of Linux 6.18; each size is part of its ioctl
number, so a wrong size is ENOTTY, never a misread struct::

    uffd_msg 32    uffdio_api 24       uffdio_range 16   uffdio_register 32
    uffdio_copy 40 uffdio_zeropage 32  uffdio_writeprotect 24   uffdio_poison 32
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

__all__ = [
    "MSG_SIZE", "UffdUnavailable", "api", "copy", "open_uffd", "place", "poison", "read_faults",
    "register", "unregister", "wake", "writeprotect", "zeropage",
]

SYS_userfaultfd = 323          # x86_64; no glibc wrapper
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _IOC(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (typ << 8) | nr


def _IOWR(typ, nr, size):
    return _IOC(3, typ, nr, size)


def _IOR(typ, nr, size):
    return _IOC(2, typ, nr, size)


UFFDIO = 0xAA
UFFD_API = 0xAA
USERFAULTFD_IOC_NEW = _IOC(0, 0xAA, 0x00, 0)          # ioctl on /dev/userfaultfd

_UFFDIO_REGISTER, _UFFDIO_UNREGISTER, _UFFDIO_WAKE, _UFFDIO_COPY = 0x00, 0x01, 0x02, 0x03
_UFFDIO_ZEROPAGE, _UFFDIO_MOVE, _UFFDIO_WRITEPROTECT = 0x04, 0x05, 0x06
_UFFDIO_CONTINUE, _UFFDIO_POISON, _UFFDIO_API = 0x07, 0x08, 0x3F

UFFDIO_API = _IOWR(UFFDIO, _UFFDIO_API, 24)
UFFDIO_REGISTER = _IOWR(UFFDIO, _UFFDIO_REGISTER, 32)
UFFDIO_UNREGISTER = _IOR(UFFDIO, _UFFDIO_UNREGISTER, 16)
UFFDIO_WAKE = _IOR(UFFDIO, _UFFDIO_WAKE, 16)
UFFDIO_COPY = _IOWR(UFFDIO, _UFFDIO_COPY, 40)
UFFDIO_ZEROPAGE = _IOWR(UFFDIO, _UFFDIO_ZEROPAGE, 32)
UFFDIO_WRITEPROTECT = _IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, 24)
UFFDIO_POISON = _IOWR(UFFDIO, _UFFDIO_POISON, 32)

# uffd_msg.event
UFFD_EVENT_PAGEFAULT = 0x12
# uffd_msg.arg.pagefault.flags
UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
UFFD_PAGEFAULT_FLAG_WP = 1 << 1
UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2

# uffdio_api.features
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_SIGBUS = 1 << 7
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_EXACT_ADDRESS = 1 << 11
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_POISON = 1 << 14
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFD_FEATURE_MOVE = 1 << 16

FEATURE_NAMES = {
    UFFD_FEATURE_PAGEFAULT_FLAG_WP: "PAGEFAULT_FLAG_WP (write-protect faults)",
    UFFD_FEATURE_MISSING_SHMEM: "MISSING_SHMEM (missing faults on shared memory, Linux 4.11)",
    UFFD_FEATURE_WP_HUGETLBFS_SHMEM: "WP_HUGETLBFS_SHMEM (write protection of shared memory, Linux 5.19)",
    UFFD_FEATURE_POISON: "POISON (UFFDIO_POISON, Linux 6.6)",
}

# uffdio_register.mode
UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_REGISTER_MODE_MINOR = 1 << 2

# per-ioctl modes
UFFDIO_COPY_MODE_DONTWAKE = 1 << 0
UFFDIO_COPY_MODE_WP = 1 << 1
UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1 << 1

MSG_SIZE = 32                  # sizeof(struct uffd_msg)

_FIX = (
    "userfaultfd needs one of: running as root (or with CAP_SYS_PTRACE); read-write access "
    "to /dev/userfaultfd for your user (e.g. `sudo setfacl -m u:$USER:rw /dev/userfaultfd`); "
    "or `sudo sysctl vm.unprivileged_userfaultfd=1`")


class UffdUnavailable(OSError):
    """userfaultfd cannot be used here; the message names the fix. (The region turns it
    into a DevpoolError; this module stays free of devpool imports.)"""


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_fallocate.restype = ctypes.c_int

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``length`` bytes of a shmem/tmpfs file at ``offset`` (the pages leave the
    page cache and every mapping of them; a later access finds a hole)."""
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(PUNCH_HOLE): {os.strerror(err)}")


def open_uffd(nonblocking: bool = True) -> int:
    """A new userfaultfd (close-on-exec); handles kernel-mode faults too (no
    UFFD_USER_MODE_ONLY: a ``write()`` from the region must be served).

    Tries ``/dev/userfaultfd`` first (Linux 6.1+: access to the node is the permission),
    then syscall 323 (needs root / CAP_SYS_PTRACE while ``vm.unprivileged_userfaultfd``
    is 0). Raises :class:`UffdUnavailable` naming the fix.
    """
    flags = os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
    errors = []
    try:
        dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        errors.append(f"/dev/userfaultfd: {exc.strerror}")
    else:
        try:
            return fcntl.ioctl(dev, USERFAULTFD_IOC_NEW, flags)
        except OSError as exc:
            errors.append(f"/dev/userfaultfd ioctl: {exc.strerror}")
        finally:
            os.close(dev)
    fd = _syscall(SYS_userfaultfd, flags)
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    errors.append(f"userfaultfd(2): {os.strerror(err)}")
    if err in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        # out of descriptors or memory: no permission is missing, the fix is elsewhere
        raise OSError(err, f"userfaultfd: {os.strerror(err)}")
    if err == errno.ENOSYS:
        raise UffdUnavailable(errno.ENOSYS, "this kernel has no userfaultfd (CONFIG_USERFAULTFD is off; "
                              f"Linux 4.3+ with it enabled is needed): {'; '.join(errors)}")
    raise UffdUnavailable(err, f"userfaultfd is not permitted here ({'; '.join(errors)}). {_FIX}")


def api(fd: int, features: int) -> int:
    """UFFDIO_API handshake asking for ``features``; returns the features granted.

    A kernel lacking one raises :class:`UffdUnavailable` naming it.
    """
    probe = _supported_features()
    missing = features & ~probe
    if missing:
        names = [name for bit, name in FEATURE_NAMES.items() if missing & bit] or [hex(missing)]
        raise UffdUnavailable(errno.EINVAL, f"this kernel's userfaultfd lacks {', '.join(names)}; "
                              f"a newer kernel (6.6 or later) is needed")
    buf = bytearray(struct.pack("QQQ", UFFD_API, features, 0))
    fcntl.ioctl(fd, UFFDIO_API, buf, True)
    return struct.unpack("QQQ", buf)[1]


_FEATURES: int | None = None


def _supported_features() -> int:
    """Every feature this kernel offers (UFFDIO_API with features 0 on a scratch fd)."""
    global _FEATURES
    if _FEATURES is None:
        fd = open_uffd()
        try:
            buf = bytearray(struct.pack("QQQ", UFFD_API, 0, 0))
            fcntl.ioctl(fd, UFFDIO_API, buf, True)
            _FEATURES = struct.unpack("QQQ", buf)[1]
        finally:
            os.close(fd)
    return _FEATURES


def register(fd: int, start: int, length: int, mode: int) -> int:
    """UFFDIO_REGISTER a range; returns the bit mask of ioctls allowed on it."""
    buf = bytearray(struct.pack("QQQQ", start, length, mode, 0))
    fcntl.ioctl(fd, UFFDIO_REGISTER, buf, True)
    return struct.unpack("QQQQ", buf)[3]


def unregister(fd: int, start: int, length: int) -> None:
    fcntl.ioctl(fd, UFFDIO_UNREGISTER, struct.pack("QQ", start, length))


def ioctl_allowed(mask: int, nr: int) -> bool:
    return bool(mask >> nr & 1)


# --- fault service -------------------------------------------------------------------------
# Each call packs a small struct and makes one ioctl; errors come back as OSError with
# the errno the selftests test for (EEXIST: a page is already there; EAGAIN: the address
# space changed under the call, retry the rest).

_COPY = struct.Struct("QQQQq")
_ZERO = struct.Struct("QQQq")         # uffdio_zeropage and uffdio_poison alike
_WP = struct.Struct("QQQ")
_RANGE = struct.Struct("QQ")


def _retrying(fd: int, request: int, fmt: struct.Struct, fields: list, done_at: int,
              advance: tuple, length_at: int) -> None:
    """One filling ioctl; on EAGAIN (the address space changed under it) the kernel has
    written how many bytes it did at ``fields[done_at]``: move the ``advance`` addresses
    past them and retry the rest. EEXIST and every other error are raised."""
    while True:
        buf = bytearray(fmt.pack(*fields))
        try:
            fcntl.ioctl(fd, request, buf, True)
            return
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            done = fmt.unpack(buf)[done_at]
            if done > 0:
                for i in advance:
                    fields[i] += done
                fields[length_at] -= done
                if fields[length_at] <= 0:
                    return


def copy(fd: int, dst: int, src: int, length: int, mode: int = 0) -> None:
    """UFFDIO_COPY ``length`` bytes from ``src`` (this process) to ``dst`` (the
    registered process) and wake the faulting threads; EEXIST (already mapped) is raised
    for the caller to WAKE."""
    buf = bytearray(_COPY.pack(dst, src, length, mode, 0))
    try:                                 # first try without the retry machinery: a fault's hot path
        fcntl.ioctl(fd, UFFDIO_COPY, buf, True)
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise
        # a partial copy (the kernel stops at the first page already there, and reports
        # the bytes before it with EAGAIN) goes on after them, not from the start: from
        # the start it would meet EEXIST at once and never copy the rest
        done = max(_COPY.unpack(buf)[4], 0)
        if done < length:
            _retrying(fd, UFFDIO_COPY, _COPY, [dst + done, src + done, length - done, mode, 0], 4, (0, 1), 2)


def zeropage(fd: int, start: int, length: int, mode: int = 0) -> None:
    """UFFDIO_ZEROPAGE: map zero-filled pages and wake the faulting threads."""
    _retrying(fd, UFFDIO_ZEROPAGE, _ZERO, [start, length, mode, 0], 3, (0,), 1)


def wake(fd: int, start: int, length: int) -> None:
    fcntl.ioctl(fd, UFFDIO_WAKE, _RANGE.pack(start, length))


def writeprotect(fd: int, start: int, length: int, protect: bool, wake_: bool = True) -> None:
    """Arm (``protect``) or lift write protection; lifting wakes waiters unless told not."""
    mode = UFFDIO_WRITEPROTECT_MODE_WP if protect else (0 if wake_ else UFFDIO_WRITEPROTECT_MODE_DONTWAKE)
    while True:
        try:
            fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, _WP.pack(start, length, mode))
            return
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise


def poison(fd: int, start: int, length: int) -> None:
    """UFFDIO_POISON: accesses to these (unmapped) pages raise SIGBUS from now on."""
    _retrying(fd, UFFDIO_POISON, _ZERO, [start, length, 0, 0], 3, (0,), 1)


def place(fd: int, dst: int, length: int, src: int | None = None, *, poison_: bool = False) -> int:
    """Resolve the missing faults of ``[dst, dst + length)`` and wake their threads:
    copy the bytes at ``src`` (an address in this process), or map zero pages (``src``
    None), or poison the pages (``poison_``: an access raises SIGBUS from now on).

    A page already there (``EEXIST``: another thread's fault filled it first, or it was
    poisoned before) keeps what it has, and its waiters are woken: a thread that read
    the page table before the page went in may queue after the fill's wake, and the
    kernel wakes no one when an ioctl fails. The ioctl stops at the first such page, so
    the rest of the range goes a page at a time. ``EAGAIN`` (the address space changed
    under the call) is retried by the ioctls themselves. Returns how many pages were
    already there (0 on the common path: one ioctl, nothing else).
    """
    try:                                 # the fault's hot path: one call, one ioctl
        if src is not None:
            copy(fd, dst, src, length)
        elif poison_:
            poison(fd, dst, length)
        else:
            zeropage(fd, dst, length)
        return 0
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    if length <= PAGE_SIZE:
        wake(fd, dst, length)
        return 1
    there = 0
    for off in range(0, length, PAGE_SIZE):     # a page at a time: each one there is woken
        there += place(fd, dst + off, PAGE_SIZE, None if src is None else src + off, poison_=poison_)
    return there


_MSG = struct.Struct("B7xQQ8x")      # event, pagefault.flags, pagefault.address


def read_faults(fd: int, max_msgs: int = 256) -> list[tuple[int, int]]:
    """Every pending page-fault message as (address, flags); [] when none is pending
    (the descriptor is non-blocking). Other events (none are asked for) are skipped."""
    try:
        data = os.read(fd, MSG_SIZE * max_msgs)
    except BlockingIOError:
        return []
    out = []
    for event, flags, address in _MSG.iter_unpack(data):
        if event == UFFD_EVENT_PAGEFAULT:
            out.append((address, flags))
    return out
