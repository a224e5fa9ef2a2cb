"""FUSE from Python, by hand: mount(2) via ctypes, the request and reply structs, and a
filesystem that serves exactly one file.

The kernel's side is ``include/uapi/linux/fuse.h``. This module implements protocol
**7.32** (the header of Linux 5.10; the structs used here are laid out the same in the
7.4x headers of Linux 6.18): the server answers INIT with minor 32, and by the protocol's
rule both sides then speak the smaller minor, so a newer kernel uses exactly these
layouts. A request is one ``read`` of ``/dev/fuse`` (header, then the opcode's struct,
then any data); a reply is one ``writev`` (header, then the reply struct or data).
Errors are replies with a negative errno and no body.

Struct sizes (bytes) of 7.32, checked at import by ``struct.calcsize``::

    fuse_in_header 40    fuse_out_header 16   fuse_attr 88        fuse_entry_out 128
    fuse_attr_out 104    fuse_open_out 16     fuse_read_in 40     fuse_write_in 40
    fuse_write_out 8     fuse_kstatfs 80      fuse_fallocate_in 32  fuse_init_out 64

What the swap device needs from the kernel, each measured here (see the README): the
file's open returns ``FOPEN_DIRECT_IO`` (no page cache between loop and the pool); INIT
asks for ``max_write`` 1 MiB and ``max_pages`` 256 (the swap core's writes arrive
batched, up to 256 pages a request); STATFS reports ``bsize`` 4096, and FALLOCATE
punch-hole is served, which together let loop pass the swap core's discards on; and
``/dev/fuse`` is opened ``O_CLOEXEC``: a stray holder of the descriptor (a child that
inherited it) turns the SIGBUS of a dead server into hangs.

This module imports only the standard library; the server gives it a :class:`FileOps`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import select
import stat
import struct
import time

__all__ = [
    "FUSE_MINOR", "MAX_PAGES", "MAX_WRITE", "FileOps", "FuseUnavailable", "OneFileFS",
    "clone_fuse", "mount", "open_fuse", "umount",
]

FUSE_MAJOR = 7
FUSE_MINOR = 32            # the protocol this module implements (see the module doc)
MAX_PAGES = 256            # pages per request (FUSE_MAX_PAGES, 7.28)
MAX_WRITE = MAX_PAGES * 4096
PAGE = 4096

# --- opcodes (enum fuse_opcode) ---------------------------------------------------------------
LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
OPEN, READ, WRITE, STATFS, RELEASE, FSYNC = 14, 15, 16, 17, 18, 20
GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 22, 23, 25, 26, 27, 28, 29
FSYNCDIR, ACCESS, INTERRUPT, DESTROY, BATCH_FORGET, FALLOCATE = 30, 34, 36, 38, 42, 43
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}   # the kernel expects no answer to these

# --- flags ------------------------------------------------------------------------------------
FUSE_ASYNC_READ = 1 << 0
FUSE_BIG_WRITES = 1 << 5
FUSE_ASYNC_DIO = 1 << 15
FUSE_MAX_PAGES = 1 << 22
#: what this server asks for in INIT (intersected with what the kernel offers)
WANTED_FLAGS = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES
FOPEN_DIRECT_IO = 1 << 0
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FATTR_SIZE = 1 << 3

ROOT_ID = 1
FILE_ID = 2                # the one file's node id (and inode number)

# --- structs ----------------------------------------------------------------------------------
IN_HEADER = struct.Struct("<IIQQIIII")     # len, opcode, unique, nodeid, uid, gid, pid, padding
OUT_HEADER = struct.Struct("<IiQ")         # len, error, unique
ATTR = struct.Struct("<6Q10I")             # ino size blocks atime mtime ctime, *nsec x3, mode nlink uid gid rdev blksize flags
ENTRY_OUT = struct.Struct("<4Q2I88s")      # nodeid generation entry_valid attr_valid, 2 nsec, attr
ATTR_OUT = struct.Struct("<QII88s")        # attr_valid, attr_valid_nsec, dummy, attr
OPEN_OUT = struct.Struct("<QII")           # fh, open_flags, padding
RW_IN = struct.Struct("<QQIIQII")          # fuse_read_in / fuse_write_in: fh offset size flags lock_owner flags padding
WRITE_OUT = struct.Struct("<II")
KSTATFS = struct.Struct("<5Q4I6I")         # blocks bfree bavail files ffree, bsize namelen frsize padding, spare[6]
FALLOCATE_IN = struct.Struct("<QQQII")     # fh offset length mode padding
INIT_IN = struct.Struct("<IIII")           # major minor max_readahead flags (the rest ignored)
INIT_OUT = struct.Struct("<IIIIHHIIHH8I")  # ... max_background congestion max_write time_gran max_pages map_alignment unused[8]
SETATTR_IN = struct.Struct("<IIQQ")        # valid, padding, fh, size (the rest ignored)
DIRENT = struct.Struct("<QQII")            # ino off namelen type, then the name padded to 8

for _s, _n in ((IN_HEADER, 40), (OUT_HEADER, 16), (ATTR, 88), (ENTRY_OUT, 128), (ATTR_OUT, 104),
               (OPEN_OUT, 16), (RW_IN, 40), (WRITE_OUT, 8), (KSTATFS, 80), (FALLOCATE_IN, 32),
               (INIT_OUT, 64)):
    assert _s.size == _n, (_s.format, _s.size, _n)

#: FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t): a fresh /dev/fuse descriptor joins an
#: existing session; requests are then read from either, and each reply goes back on the
#: descriptor its request was read from (the kernel keeps one processing queue per one)
FUSE_DEV_IOC_CLONE = (2 << 30) | (4 << 16) | (229 << 8) | 0

#: the read buffer: the largest request is a WRITE of MAX_WRITE bytes behind its headers
REQUEST_BUFFER = MAX_WRITE + 4096
#: a WRITE's headers: fuse_in_header and fuse_write_in; its data follows
WRITE_HEADERS = IN_HEADER.size + RW_IN.size
#: gathering writes: pages held before they go to the file together (one more request's
#: worth of room follows them), and requests held at most
GATHER_PAGES = MAX_PAGES
GATHER_REQUESTS = 64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2


class FuseUnavailable(OSError):
    """FUSE cannot be used here; the message says why. (The swap device turns it into a
    DevpoolError; this module stays free of devpool imports.)"""


def open_fuse() -> int:
    """``/dev/fuse`` opened read-write, close-on-exec and non-blocking."""
    try:
        return os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FuseUnavailable(errno.ENOENT, "no FUSE: /dev/fuse does not exist (modprobe fuse)") from None
    except OSError as exc:
        raise FuseUnavailable(exc.errno, f"no FUSE: cannot open /dev/fuse: {exc.strerror}") from None


def clone_fuse(session_fd: int) -> int:
    """A new ``/dev/fuse`` descriptor on the session of ``session_fd`` (FUSE_DEV_IOC_CLONE),
    close-on-exec and *blocking*: a reader blocked on it is woken alone (exclusively) when
    a request comes, where every poller of the session would be woken for each."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FUSE_DEV_IOC_CLONE, struct.pack("<I", session_fd))
    except OSError as exc:
        os.close(fd)
        raise OSError(exc.errno, f"FUSE_DEV_IOC_CLONE of descriptor {session_fd}: {exc.strerror}") from None
    return fd


def mount(fd: int, mountpoint: str, name: str = "devpool") -> None:
    """mount(2) a FUSE filesystem served through ``fd`` at ``mountpoint`` (a directory).

    Returns at once: the kernel queues INIT, which the server must answer before any
    other request is served."""
    opts = f"fd={fd},rootmode=40000,user_id={os.geteuid()},group_id={os.getegid()},max_read={MAX_WRITE}"
    rc = _libc.mount(name.encode(), os.fsencode(mountpoint), f"fuse.{name}".encode(),
                     MS_NOSUID | MS_NODEV, opts.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount of FUSE at {mountpoint}: {os.strerror(err)}")


def umount(mountpoint: str, lazy: bool = False) -> None:
    """umount2(2); ``lazy`` detaches now and lets the last user finish (a dead server)."""
    if _libc.umount2(os.fsencode(mountpoint), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {mountpoint}: {os.strerror(err)}")


class FileOps:
    """What the one served file does; each method may raise OSError(errno), which goes
    back to the kernel as that error. Offsets and sizes are bytes, any alignment."""

    size: int = 0

    def read(self, offset: int, size: int):
        """A buffer of exactly ``size`` bytes at ``offset`` (inside the file)."""
        raise OSError(errno.ENOSYS, "read")

    def write(self, offset: int, data: memoryview) -> None:
        raise OSError(errno.ENOSYS, "write")

    def punch(self, offset: int, length: int) -> None:
        """Forget ``length`` bytes at ``offset``: they read as zeros from now on."""
        raise OSError(errno.EOPNOTSUPP, "punch")

    def write_gathered(self, offsets: list, sizes: list, data: memoryview) -> list:
        """Several whole-page writes at once, their ranges apart from each other, in
        order: write ``k`` is ``sizes[k]`` bytes at ``offsets[k]``, its bytes the next
        ones of ``data``. Returns one errno (0: written) per write. This one writes them
        one by one; a file that stores a batch cheaper than its parts overrides it."""
        errs, at = [], 0
        for off, size in zip(offsets, sizes):
            try:
                self.write(off, data[at:at + size])
                errs.append(0)
            except OSError as exc:
                errs.append(exc.errno or errno.EIO)
            at += size
        return errs

    def served(self, opcode: int, nanoseconds: int) -> None:
        """Called after each reply with the time its service took (statistics)."""


class OneFileFS:
    """A FUSE filesystem whose root directory holds one regular file, ``name``, served
    by ``ops``. One object is one reader: its loop reads and answers requests in turn.

    ``serve`` answers requests until the connection ends; ``spin_us`` is how long the
    loop keeps polling the (non-blocking) descriptor after a request before it sleeps
    in ``poll``: waking a sleeping server costs more than serving a page here.

    More readers of the same session: :meth:`clone` gives another object (its own
    descriptor, buffers and counters; the same ``ops``, which must then be thread-safe),
    whose :meth:`serve_blocking` runs in a thread of its own.

    ``gather`` (``serve`` only): whole-page WRITEs that are already waiting when one has
    been read are read too, each request's data straight behind the last one's in one
    buffer (``readv``: the headers apart, the data in place), and go to the file as one
    :meth:`FileOps.write_gathered` before they are answered, in order. Any other request,
    or none left waiting, first sends what was gathered on, so the file sees every
    request in the order the kernel sent them.
    """

    def __init__(self, fd: int, ops: FileOps, name: str = "swap", mode: int = 0o600, gather: bool = False):
        self.fd = fd
        self.ops = ops
        self.name = name.encode()
        self.mode = mode
        self.uid, self.gid = os.geteuid(), os.getegid()
        self.buf = bytearray(REQUEST_BUFFER)           # preallocated: no allocation per request
        self.view = memoryview(self.buf)
        self.out = bytearray(OUT_HEADER.size)
        self.gather = gather
        if gather:                                     # preallocated too
            self.stage = mmap.mmap(-1, (GATHER_PAGES + MAX_PAGES) * PAGE)
            self.stage_view = memoryview(self.stage)
            self.heads = [bytearray(WRITE_HEADERS) for _ in range(GATHER_REQUESTS)]
            self.held: list = []                       # (unique, offset, size) of each held WRITE
            self.held_bytes = 0
        self.initialised = False
        self.kernel_minor = 0
        self.flags = 0
        self.requests = 0
        self.t0 = int(time.time())

    def clone(self) -> "OneFileFS":
        """Another reader of this (initialised) session: a cloned descriptor, its own
        request buffer, the same file. Close its ``fd`` once its loop has ended."""
        if not self.initialised:
            raise OSError(errno.EINVAL, "clone before the session's INIT was answered")
        other = OneFileFS(clone_fuse(self.fd), self.ops, self.name.decode(), self.mode)
        other.initialised, other.kernel_minor, other.flags, other.t0 = True, self.kernel_minor, self.flags, self.t0
        return other

    # --- replies ------------------------------------------------------------------------
    def _reply(self, unique: int, *bufs) -> None:
        n = OUT_HEADER.size + sum(len(b) for b in bufs)
        OUT_HEADER.pack_into(self.out, 0, n, 0, unique)
        self._send([self.out, *bufs])

    def _error(self, unique: int, err: int) -> None:
        OUT_HEADER.pack_into(self.out, 0, OUT_HEADER.size, -err, unique)
        self._send([self.out])

    def _send(self, bufs) -> None:
        try:
            os.writev(self.fd, bufs)
        except OSError as exc:
            # ENOENT: the request was interrupted and is gone; anything else ends the
            # connection (ENODEV after an abort) and the next read says so
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    def _attr(self, node: int) -> bytes:
        if node == ROOT_ID:
            return ATTR.pack(ROOT_ID, 0, 0, self.t0, self.t0, self.t0, 0, 0, 0,
                             stat.S_IFDIR | 0o755, 2, self.uid, self.gid, 0, PAGE, 0)
        size = self.ops.size
        return ATTR.pack(FILE_ID, size, (size + 511) // 512, self.t0, self.t0, self.t0, 0, 0, 0,
                         stat.S_IFREG | self.mode, 1, self.uid, self.gid, 0, PAGE, 0)

    # --- one request ----------------------------------------------------------------------
    def handle(self, n: int) -> bool:
        """Answer the request of ``n`` bytes in the buffer; False once the session ended."""
        _, opcode, unique, node, _, _, _, _ = IN_HEADER.unpack_from(self.buf, 0)
        self.requests += 1
        t = time.perf_counter_ns()
        try:
            if opcode == READ:
                _, off, size, *_ = RW_IN.unpack_from(self.buf, 40)
                # a read at or past the end is short, as a regular file's is: EOF, not an error
                # (else a whole-file read stops 48 bytes short and its next read fails ENOSPC)
                off = min(off, self.ops.size)
                size = min(size, self.ops.size - off)
                if size > MAX_WRITE:
                    # we told the kernel max_read=MAX_WRITE; a larger read would overrun the
                    # server's reply pages (MAX_PAGES + 2 of them: an unaligned full read
                    # spans one more) with an IndexError that ends the serving loop
                    raise OSError(errno.EINVAL, f"a read of {size} bytes, past max_read")
                self._check_io(node, off, size)
                self._reply(unique, self.ops.read(off, size) if size else b"")
            elif opcode == WRITE:
                _, off, size, *_ = RW_IN.unpack_from(self.buf, 40)
                self._check_io(node, off, size)
                if 80 + size > n:
                    raise OSError(errno.EINVAL, "short write request")
                if size:
                    self.ops.write(off, self.view[80:80 + size])
                self._reply(unique, WRITE_OUT.pack(size, 0))
            elif opcode in NO_REPLY:
                return True
            else:
                return self._meta(opcode, unique, node, n)
        except OSError as exc:
            self._error(unique, exc.errno or errno.EIO)
        self.ops.served(opcode, time.perf_counter_ns() - t)
        return True

    def _check_io(self, node: int, off: int, size: int) -> None:
        if node != FILE_ID:
            raise OSError(errno.EISDIR, "not the file")
        if off + size > self.ops.size:
            raise OSError(errno.ENOSPC if size else errno.EINVAL, "beyond the end of the device")

    def _meta(self, opcode: int, unique: int, node: int, n: int) -> bool:
        """Every request but READ and WRITE (rare: their speed does not matter)."""
        if opcode == INIT:
            major, minor, readahead, flags = INIT_IN.unpack_from(self.buf, 40)
            if major != FUSE_MAJOR:        # a kernel of another major: say ours, it retries or gives up
                self._reply(unique, INIT_OUT.pack(FUSE_MAJOR, FUSE_MINOR, 0, 0, 0, 0, 0, 0, 0, 0, *[0] * 8))
                return True
            self.kernel_minor = minor
            self.flags = flags & WANTED_FLAGS
            self._reply(unique, INIT_OUT.pack(FUSE_MAJOR, min(minor, FUSE_MINOR), readahead, self.flags,
                                              16, 12, MAX_WRITE, 1, MAX_PAGES, 0, *[0] * 8))
            self.initialised = True
        elif opcode == LOOKUP:
            name = bytes(self.buf[40:n]).rstrip(b"\0")
            if node != ROOT_ID or name != self.name:
                return self._fail(unique, errno.ENOENT)
            self._reply(unique, ENTRY_OUT.pack(FILE_ID, 1, 3600, 3600, 0, 0, self._attr(FILE_ID)))
        elif opcode == GETATTR:
            self._reply(unique, ATTR_OUT.pack(3600, 0, 0, self._attr(node)))
        elif opcode == SETATTR:
            valid, _, _, size = SETATTR_IN.unpack_from(self.buf, 40)
            if valid & FATTR_SIZE and (node != FILE_ID or size != self.ops.size):
                return self._fail(unique, errno.EPERM)    # a swap device keeps its size
            self._reply(unique, ATTR_OUT.pack(3600, 0, 0, self._attr(node)))
        elif opcode == OPEN:
            if node != FILE_ID:
                return self._fail(unique, errno.EISDIR)
            self._reply(unique, OPEN_OUT.pack(1, FOPEN_DIRECT_IO, 0))
        elif opcode == OPENDIR:
            self._reply(unique, OPEN_OUT.pack(0, 0, 0))
        elif opcode == READDIR:
            _, off, size, *_ = RW_IN.unpack_from(self.buf, 40)
            self._reply(unique, self._dirents(off, size))
        elif opcode == FALLOCATE:
            _, off, length, mode, _ = FALLOCATE_IN.unpack_from(self.buf, 40)
            if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                return self._fail(unique, errno.EOPNOTSUPP)
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                self._check_io(node, off, 0)
                self.ops.punch(off, min(length, self.ops.size - off))
            elif off + length > self.ops.size:              # plain allocation: every byte already is
                return self._fail(unique, errno.ENOSPC)
            self._reply(unique)
        elif opcode == STATFS:
            blocks = self.ops.size // PAGE
            self._reply(unique, KSTATFS.pack(blocks, blocks, blocks, 2, 0, PAGE, 255, PAGE, 0, *[0] * 6))
        elif opcode in (FLUSH, RELEASE, FSYNC, RELEASEDIR, FSYNCDIR, ACCESS):
            self._reply(unique)
        elif opcode == DESTROY:
            self._reply(unique)
            return False
        else:                               # GETXATTR, LISTXATTR, ... : the kernel remembers ENOSYS
            return self._fail(unique, errno.ENOSYS)
        return True

    def _fail(self, unique: int, err: int) -> bool:
        self._error(unique, err)
        return True

    def _dirents(self, off: int, size: int) -> bytes:
        entries = [(ROOT_ID, b".", 4), (ROOT_ID, b"..", 4), (FILE_ID, self.name, 8)]
        out = b""
        for i, (ino, name, kind) in enumerate(entries[off:], start=off + 1):
            rec = DIRENT.pack(ino, i, len(name), kind) + name
            rec += b"\0" * (-len(rec) % 8)
            if len(out) + len(rec) > size:
                break
            out += rec
        return out

    # --- the loop --------------------------------------------------------------------------
    def read_request(self, bufs=None) -> int:
        """Bytes of the next request (into ``bufs``, default the request buffer), 0 when
        none is pending; raises ConnectionError once the filesystem is unmounted or the
        connection aborted."""
        try:
            return os.readv(self.fd, bufs or [self.buf])
        except BlockingIOError:
            return 0
        except InterruptedError:
            return 0
        except OSError as exc:
            if exc.errno == errno.ENOENT:     # the request was interrupted before we read it
                return 0
            if exc.errno in (errno.ENODEV, errno.ECONNABORTED):
                raise ConnectionError(exc.errno, "the FUSE connection ended") from None
            raise

    # --- gathering writes -------------------------------------------------------------------
    def _read_gathering(self) -> int:
        """:meth:`read_request` with the headers into the next free head and the data
        into the stage behind what is held (what is held goes first when full)."""
        if len(self.held) == GATHER_REQUESTS or self.held_bytes > GATHER_PAGES * PAGE:
            self._flush()
        return self.read_request([self.heads[len(self.held)], self.stage_view[self.held_bytes:]])

    def _handle_gathering(self, n: int) -> bool:
        """Hold a whole-page WRITE inside the file whose range no held one touches;
        anything else goes after what is held, the ordinary way."""
        head = self.heads[len(self.held)]
        if n >= WRITE_HEADERS:
            _, opcode, unique, node, _, _, _, _ = IN_HEADER.unpack_from(head, 0)
            if opcode == WRITE and node == FILE_ID:
                _, off, size, *_ = RW_IN.unpack_from(head, IN_HEADER.size)
                if (0 < size == n - WRITE_HEADERS and not (off | size) % PAGE and off + size <= self.ops.size
                        and all(off + size <= o or o + z <= off for _, o, z in self.held)):
                    self.requests += 1
                    self.held.append((unique, off, size))
                    self.held_bytes += size
                    return True
        # not one to hold: its bytes together in the request buffer (the data part was
        # read into the stage), what is held goes first, then it is handled as ever
        self.buf[:min(n, WRITE_HEADERS)] = head[:min(n, WRITE_HEADERS)]
        if n > WRITE_HEADERS:
            self.buf[WRITE_HEADERS:n] = self.stage_view[self.held_bytes:self.held_bytes + n - WRITE_HEADERS]
        self._flush()
        return self.handle(n)

    def _flush(self) -> None:
        """Send the held WRITEs to the file as one, then answer each (in order)."""
        if not self.gather or not self.held:
            return
        held, self.held = self.held, []
        nbytes, self.held_bytes = self.held_bytes, 0
        t = time.perf_counter_ns()
        try:
            errs = self.ops.write_gathered([o for _, o, _ in held], [z for _, _, z in held],
                                           self.stage_view[:nbytes])
        except OSError as exc:
            errs = [exc.errno or errno.EIO] * len(held)
        for (unique, _, size), err in zip(held, errs):
            if err:
                self._error(unique, err)
            else:
                self._reply(unique, WRITE_OUT.pack(size, 0))
        self.ops.served(WRITE, time.perf_counter_ns() - t)

    def serve_blocking(self) -> None:
        """Answer requests, sleeping in a blocking read between them (a descriptor from
        :func:`clone_fuse`), until the connection ends: unmount or abort wakes every
        reader with ENODEV."""
        while True:
            try:
                n = self.read_request()
            except ConnectionError:
                return
            if n and not self.handle(n):
                return

    def serve(self, spin_us: float = 0, other=None, on_other=None, stop=None) -> None:
        """Answer requests until the connection ends (unmount, abort, DESTROY) or
        ``stop()`` is true. ``other``: a descriptor polled beside ``/dev/fuse``; when it is
        readable, ``on_other()`` runs (the control socket)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if other is not None:
            poller.register(other, select.POLLIN)
        spin_ns = int(spin_us * 1000)
        clock = time.monotonic_ns
        last = 0
        read, handle = (self._read_gathering, self._handle_gathering) if self.gather else \
            (self.read_request, self.handle)
        while stop is None or not stop():
            try:
                n = read()
            except ConnectionError:
                self._flush()                   # answered into a closed session: nothing, quietly
                return
            if n:
                if not handle(n):
                    return
                last = clock()
                continue
            self._flush()                       # none waiting: what was gathered goes now
            if spin_ns and clock() - last < spin_ns:
                continue
            for fd, ev in poller.poll(1000):
                if fd == other and on_other is not None:
                    on_other()
                elif fd == self.fd and ev & (select.POLLERR | select.POLLHUP):
                    return
        self._flush()                           # stopped: what was held is answered first
