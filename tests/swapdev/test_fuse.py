"""The FUSE protocol module against the kernel (a real mount, never a mock): one file
served from a dict, reached through ordinary system calls."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import threading
import time

import pytest

from devpool.swapdev import fuse

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                                reason="mounting FUSE needs root and /dev/fuse")

SIZE = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class DictFile(fuse.FileOps):
    """A file in a bytearray that records what the kernel asked of it."""

    def __init__(self):
        self.size = SIZE
        self.data = bytearray(SIZE)
        self.calls = []
        self.fail_reads_at = None

    def read(self, offset, size):
        self.calls.append(("read", offset, size))
        if self.fail_reads_at is not None and offset <= self.fail_reads_at < offset + size:
            raise OSError(errno.EIO, "lost")
        return self.data[offset:offset + size]

    def write(self, offset, data):
        self.calls.append(("write", offset, len(data)))
        self.data[offset:offset + len(data)] = data

    def punch(self, offset, length):
        self.calls.append(("punch", offset, length))
        self.data[offset:offset + length] = bytes(length)


@pytest.fixture
def served(tmp_path):
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    fd = fuse.open_fuse()
    ops = DictFile()
    fs = fuse.OneFileFS(fd, ops)
    try:
        fuse.mount(fd, mnt)
    except BaseException:
        os.close(fd)
        raise
    thread = threading.Thread(target=fs.serve, kwargs={"spin_us": 20}, daemon=True)
    thread.start()
    try:
        yield mnt, ops, fs, thread
    finally:
        if os.path.ismount(mnt):
            fuse.umount(mnt, lazy=True)
        thread.join(5)
        os.close(fd)
    assert not thread.is_alive()


def test_a_cloned_reader_serves_the_session_alone_and_ends_at_unmount(tmp_path):
    """FUSE_DEV_IOC_CLONE: once the session's first reader has answered INIT and
    stopped, a clone (its own descriptor, blocking, close-on-exec) serves every request,
    replying on its own descriptor; unmounting wakes its blocked read, and it returns."""
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    fd = fuse.open_fuse()
    ops = DictFile()
    fs = fuse.OneFileFS(fd, ops)
    with pytest.raises(OSError, match="INIT"):
        fs.clone()                                      # nothing to join yet
    clone = None
    try:
        fuse.mount(fd, mnt)
        deadline = time.monotonic() + 10
        while not fs.initialised and time.monotonic() < deadline:   # INIT, queued by mount
            n = fs.read_request()
            if n:
                fs.handle(n)
        assert fs.initialised
        clone = fs.clone()
        assert clone.fd != fd and clone.ops is ops and clone.initialised
        assert fcntl.fcntl(clone.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert not os.get_blocking(fd) and os.get_blocking(clone.fd)
        reader = threading.Thread(target=clone.serve_blocking, daemon=True)
        reader.start()
        before = fs.requests
        f = os.open(os.path.join(mnt, "swap"), os.O_RDWR)
        try:
            assert os.pwrite(f, b"cloned" * 700, 8192) == 4200
            assert os.pread(f, 4200, 8192) == b"cloned" * 700
        finally:
            os.close(f)
        assert fs.requests == before and clone.requests >= 3      # open, write, read: all the clone's
        assert ops.data[8192:8198] == b"cloned"
        fuse.umount(mnt)
        reader.join(5)
        assert not reader.is_alive(), "unmounting did not wake the blocked reader"
    finally:
        if os.path.ismount(mnt):
            fuse.umount(mnt, lazy=True)
        if clone is not None:
            os.close(clone.fd)
        os.close(fd)


def test_clone_of_a_descriptor_that_is_no_session_is_refused():
    r, w = os.pipe()
    try:
        with pytest.raises(OSError, match="FUSE_DEV_IOC_CLONE"):
            fuse.clone_fuse(r)
    finally:
        os.close(r)
        os.close(w)


def test_dev_fuse_is_close_on_exec():
    fd = fuse.open_fuse()
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)


def test_one_file_with_the_size_and_mode_served(served):
    mnt, ops, fs, _ = served
    assert os.listdir(mnt) == ["swap"]
    st = os.stat(os.path.join(mnt, "swap"))
    assert st.st_size == SIZE and oct(st.st_mode & 0o777) == "0o600" and st.st_uid == os.geteuid()
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(mnt, "other"))
    assert fs.kernel_minor >= fuse.FUSE_MINOR
    assert fs.flags & fuse.FUSE_MAX_PAGES, "the kernel must have accepted max_pages"


def test_reads_and_writes_at_any_alignment_reach_the_file(served):
    mnt, ops, *_ = served
    fd = os.open(os.path.join(mnt, "swap"), os.O_RDWR)
    try:
        assert os.pwrite(fd, b"hello" * 1000, 4096 + 7) == 5000
        assert os.pread(fd, 5000, 4096 + 7) == b"hello" * 1000
        assert ops.data[4096 + 7:4096 + 12] == b"hello"
        assert ("write", 4096 + 7, 5000) in ops.calls   # FOPEN_DIRECT_IO: as asked, no page cache
        # the largest write (from a page-aligned buffer) is one request of max_write (1 MiB)
        ops.calls.clear()
        big = mmap.mmap(-1, SIZE)
        big[:] = b"\x01" * SIZE
        assert os.pwrite(fd, big, 0) == SIZE
        big.close()
        assert [c for c in ops.calls if c[0] == "write"] == [("write", 0, SIZE)]
    finally:
        os.close(fd)


def test_o_direct_page_reads(served):
    mnt, ops, *_ = served
    ops.data[8192:12288] = b"\xab" * 4096
    fd = os.open(os.path.join(mnt, "swap"), os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    try:
        assert os.preadv(fd, [buf], 8192) == 4096
        assert buf[:] == b"\xab" * 4096
    finally:
        os.close(fd)
        buf.close()


def test_punch_hole_reaches_the_file_and_statfs_says_4096(served):
    mnt, ops, *_ = served
    ops.data[:] = b"\x07" * SIZE
    fd = os.open(os.path.join(mnt, "swap"), os.O_RDWR)
    try:
        rc = _libc.fallocate(fd, fuse.FALLOC_FL_PUNCH_HOLE | fuse.FALLOC_FL_KEEP_SIZE, 4096, 2 << 20 >> 4)
        assert rc == 0, os.strerror(ctypes.get_errno())
        assert ("punch", 4096, 2 << 20 >> 4) in ops.calls
        assert os.pread(fd, 4096, 4096) == bytes(4096)
        assert _libc.fallocate(fd, 0x08, 0, 4096) != 0          # COLLAPSE_RANGE: not served
        assert ctypes.get_errno() == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    sv = os.statvfs(mnt)
    assert sv.f_bsize == 4096 and sv.f_frsize == 4096 and sv.f_blocks == SIZE // 4096


def test_errors_come_back_as_errno(served):
    mnt, ops, *_ = served
    path = os.path.join(mnt, "swap")
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x" * 10, SIZE - 4)          # past the end: the device is full
        assert e.value.errno == errno.ENOSPC
        ops.fail_reads_at = 4096
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 4096)
        assert e.value.errno == errno.EIO                # a lost page is an error, never zeros
        with pytest.raises(OSError) as e:
            os.truncate(path, 4096)
        assert e.value.errno == errno.EPERM              # a swap device keeps its size
    finally:
        os.close(fd)


def test_the_file_reads_to_its_end_and_then_eof_as_a_regular_file_does(served):
    """cat, cp, dd of the device file: a read across the end is short, one at the end
    returns nothing (a read past the end was ENOSPC, so a whole-file read came back
    48 bytes short and the next one failed)."""
    mnt, ops, *_ = served
    ops.data[:] = os.urandom(SIZE)
    with open(os.path.join(mnt, "swap"), "rb", buffering=0) as f:
        assert f.read() == ops.data                          # read until EOF
        assert os.pread(f.fileno(), 8192, SIZE - 4096) == ops.data[-4096:]
        assert os.pread(f.fileno(), 4096, SIZE) == b""
        assert os.pread(f.fileno(), 4096, 2**62) == b""


def test_unmount_ends_the_serving_loop(served):
    mnt, ops, fs, thread = served
    fuse.umount(mnt)
    thread.join(5)
    assert not thread.is_alive()


# --- hostile requests, straight into the dispatcher (replies read back from a pipe) ----------
def request(fs, opcode, node, body=b"", unique=7):
    """Put one request in ``fs``'s buffer and dispatch it; the reply (error, body) or None."""
    msg = fuse.IN_HEADER.pack(fuse.IN_HEADER.size + len(body), opcode, unique, node, 0, 0, 0, 0) + body
    fs.buf[:len(msg)] = msg
    fs.handle(len(msg))
    try:
        data = os.read(fs._reply_pipe, 1 << 21)
    except BlockingIOError:
        return None
    length, error, uniq = fuse.OUT_HEADER.unpack_from(data)
    assert length == len(data) and uniq == unique
    return error, data[fuse.OUT_HEADER.size:]


@pytest.fixture
def dispatcher():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)      # a reply too big for the pipe fails the test, never hangs it
    fs = fuse.OneFileFS(w, DictFile())
    fs._reply_pipe = r
    yield fs
    os.close(r)
    os.close(w)


def rw_in(offset, size):
    return fuse.RW_IN.pack(1, offset, size, 0, 0, 0, 0)


def test_hostile_requests_get_errors_not_crashes(dispatcher):
    fs = dispatcher
    assert request(fs, fuse.READ, fuse.FILE_ID, rw_in(4096, 0)) == (0, b"")          # empty read
    assert request(fs, fuse.WRITE, fuse.FILE_ID, rw_in(0, 0)) == (0, fuse.WRITE_OUT.pack(0, 0))
    assert request(fs, fuse.READ, fuse.FILE_ID, rw_in(2**64 - 4096, 4096)) == (0, b"")   # past the end: EOF
    assert request(fs, fuse.READ, fuse.FILE_ID, rw_in(SIZE, 1)) == (0, b"")
    assert request(fs, fuse.READ, fuse.FILE_ID, rw_in(SIZE - 3, 4096)) == (0, b"\0" * 3)   # short at the end
    assert request(fs, fuse.READ, fuse.ROOT_ID, rw_in(0, 4096))[0] == -errno.EISDIR
    assert request(fs, fuse.READ, 99, rw_in(0, 4096))[0] == -errno.EISDIR
    # a WRITE that claims more bytes than the request carries
    assert request(fs, fuse.WRITE, fuse.FILE_ID, rw_in(0, 4096) + b"x" * 10)[0] == -errno.EINVAL
    assert request(fs, fuse.FALLOCATE, fuse.FILE_ID, fuse.FALLOCATE_IN.pack(1, 0, 4096, 0x40, 0))[0] \
        == -errno.EOPNOTSUPP
    assert request(fs, fuse.FALLOCATE, fuse.FILE_ID, fuse.FALLOCATE_IN.pack(1, 0, SIZE + 1, 0, 0))[0] \
        == -errno.ENOSPC
    assert request(fs, fuse.LOOKUP, fuse.ROOT_ID, b"../etc\0")[0] == -errno.ENOENT
    assert request(fs, fuse.OPEN, fuse.ROOT_ID, b"\0" * 8)[0] == -errno.EISDIR
    assert request(fs, fuse.SETATTR, fuse.FILE_ID, fuse.SETATTR_IN.pack(fuse.FATTR_SIZE, 0, 0, 0)
                   + b"\0" * 64)[0] == -errno.EPERM
    assert request(fs, 4242, fuse.FILE_ID)[0] == -errno.ENOSYS
    assert request(fs, fuse.FORGET, fuse.FILE_ID, b"\0" * 8) is None                 # no reply expected
    assert fs.ops.data == bytearray(SIZE)                                              # nothing written
    # a punch past the end is cut at the end
    assert request(fs, fuse.FALLOCATE, fuse.FILE_ID, fuse.FALLOCATE_IN.pack(
        1, SIZE - 4096, 1 << 30, fuse.FALLOC_FL_PUNCH_HOLE | fuse.FALLOC_FL_KEEP_SIZE, 0)) == (0, b"")
    assert fs.ops.calls[-1] == ("punch", SIZE - 4096, 4096)


def test_a_read_past_max_read_is_refused_before_the_file_sees_it(dispatcher):
    """max_read is what we told the kernel; a larger READ (a kernel that ignored it, or a
    hostile writer on /dev/fuse) is EINVAL, not an overrun of the server's reply pages,
    and a read within it still goes through. (A reply of max_read bytes is not read back
    here: it would not fit the test's pipe.)"""
    fs = dispatcher
    fs.ops.size = 4 * fuse.MAX_WRITE
    fs.ops.data = bytearray(fs.ops.size)
    assert request(fs, fuse.READ, fuse.FILE_ID, rw_in(0, fuse.MAX_WRITE + 4096))[0] == -errno.EINVAL
    assert request(fs, fuse.READ, fuse.FILE_ID, rw_in(100, 2**31))[0] == -errno.EINVAL
    assert not [c for c in fs.ops.calls if c[0] == "read"]
    err, body = request(fs, fuse.READ, fuse.FILE_ID, rw_in(fuse.MAX_WRITE - 100, 8192))
    assert err == 0 and len(body) == 8192


# --- gathering writes (a SEQPACKET socket stands in for /dev/fuse: one request a read) ----------
class GatherFile(DictFile):
    def __init__(self):
        super().__init__()
        self.gathered = []

    def write_gathered(self, offsets, sizes, data):
        self.gathered.append((list(offsets), list(sizes)))
        return super().write_gathered(offsets, sizes, data)


def write_req(unique, offset, data, node=fuse.FILE_ID):
    body = fuse.RW_IN.pack(1, offset, len(data), 0, 0, 0, 0) + data
    return fuse.IN_HEADER.pack(fuse.IN_HEADER.size + len(body), fuse.WRITE, unique, node, 0, 0, 0, 0) + body


def read_req(unique, offset, size):
    body = fuse.RW_IN.pack(1, offset, size, 0, 0, 0, 0)
    return fuse.IN_HEADER.pack(fuse.IN_HEADER.size + len(body), fuse.READ, unique, fuse.FILE_ID, 0, 0, 0, 0) + body


def serve_queued(requests, ops):
    """Queue ``requests``, serve them with gathering on, return the replies (unique,
    error, body) in the order they were sent back."""
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    fs = fuse.OneFileFS(a.fileno(), ops, gather=True)
    fs.initialised = True
    for r in requests:
        b.send(r)
    done = threading.Event()
    t = threading.Thread(target=fs.serve, kwargs={"stop": done.is_set}, daemon=True)
    t.start()
    replies = []
    b.settimeout(10)
    try:
        while len(replies) < len(requests):
            data = b.recv(1 << 21)
            length, error, unique = fuse.OUT_HEADER.unpack_from(data)
            assert length == len(data)
            replies.append((unique, error, data[fuse.OUT_HEADER.size:]))
    finally:
        done.set()
        t.join(5)
        a.close()
        b.close()
    assert not t.is_alive()
    return replies, fs


def test_whole_page_writes_waiting_together_reach_the_file_as_one_in_order():
    ops = GatherFile()
    pages = [bytes([k]) * (4096 * (k + 1)) for k in range(4)]
    reqs = [write_req(1, 0, pages[0]), write_req(2, 8 * 4096, pages[1]), write_req(3, 20 * 4096, pages[2]),
            read_req(4, 8 * 4096, 4096),                    # a read goes after the writes before it
            write_req(5, 40 * 4096, pages[3]),
            write_req(6, 41 * 4096, b"x" * 4096),           # overlaps the held write 5: 5 goes first, 6 alone
            write_req(7, 100 * 4096 + 7, b"unaligned"),     # not whole pages: alone, as ever
            write_req(8, 0, b"y" * 4096, node=fuse.ROOT_ID)]  # not the file: its error, as ever
    replies, fs = serve_queued(reqs, ops)
    assert [u for u, _, _ in replies] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert ops.gathered == [([0, 8 * 4096, 20 * 4096], [4096, 8192, 12288]), ([40 * 4096], [16384])]
    assert ops.calls[-3:] == [("write", 40 * 4096, 16384), ("write", 41 * 4096, 4096),   # 6 after 5, alone
                              ("write", 100 * 4096 + 7, 9)]
    assert replies[3] == (4, 0, pages[1][:4096])
    sizes = {1: 4096, 2: 8192, 3: 12288, 5: 16384, 6: 4096}
    for unique, error, body in replies[:3] + replies[4:6]:
        assert error == 0 and body == fuse.WRITE_OUT.pack(sizes[unique], 0)
    assert replies[6][1] == 0 and bytes(ops.data[100 * 4096 + 7:100 * 4096 + 16]) == b"unaligned"
    assert replies[7][1] == -errno.EISDIR
    assert bytes(ops.data[0:4096]) == pages[0] and bytes(ops.data[20 * 4096:23 * 4096]) == pages[2]
    assert bytes(ops.data[40 * 4096:41 * 4096]) == pages[3][:4096] and bytes(ops.data[41 * 4096:42 * 4096]) == b"x" * 4096
    assert fs.requests == 8


def test_a_gathered_write_the_file_refuses_gets_its_own_error():
    ops = GatherFile()
    ops.size = SIZE
    real = ops.write

    def write(offset, data):
        if offset == 4096:
            raise OSError(errno.EIO, "planted")
        real(offset, data)
    ops.write = write
    replies, _ = serve_queued([write_req(1, 0, b"a" * 4096), write_req(2, 4096, b"b" * 4096),
                               write_req(3, 8192, b"c" * 4096)], ops)
    assert [(u, e) for u, e, _ in replies] == [(1, 0), (2, -errno.EIO), (3, 0)]
    assert ops.gathered == [([0, 4096, 8192], [4096] * 3)]


@pytest.mark.parametrize("room, at_most", [(4, 64), (1024, 2)], ids=["pages", "requests"])
def test_more_than_the_gathering_room_goes_in_several_batches(monkeypatch, room, at_most):
    """What is held goes to the file once the pages held pass GATHER_PAGES (the next
    request must still find a whole request's room behind them) or GATHER_REQUESTS
    requests are held (small here: a socket takes no 1 MiB message)."""
    monkeypatch.setattr(fuse, "GATHER_PAGES", room)
    monkeypatch.setattr(fuse, "GATHER_REQUESTS", at_most)
    ops = GatherFile()
    data = [bytes([65 + k]) * (3 * 4096) for k in range(3)]
    replies, _ = serve_queued([write_req(k + 1, k * 3 * 4096, d) for k, d in enumerate(data)], ops)
    assert [(u, e) for u, e, _ in replies] == [(1, 0), (2, 0), (3, 0)]
    assert [len(o) for o, _ in ops.gathered] == [2, 1]
    assert bytes(ops.data[:9 * 4096]) == b"".join(data)
