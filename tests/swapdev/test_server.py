"""The server's semantics (Linux swap with zswap in front), on every backend: what a
WRITE, READ and punch-hole do to the Zswap behind the file. ``ZswapFile`` is driven the
way the FUSE loop drives it (tests/swapdev/test_device.py drives it through the kernel)."""

from __future__ import annotations

import errno
import subprocess
import sys
import threading

import numpy as np
import pytest

import devpool
from devpool.swapdev.server import SERIAL_MAX, ZswapFile
from tests.pages import random_page, text_page

PAGE = 4096
NPAGES = 64


@pytest.fixture
def zfile(make_pool, tmp_path, sized):
    made = []

    def factory(backing=True, readers=1, **kw):
        pool = make_pool(capacity_bytes=4 << 20)
        zs = devpool.Zswap(pool, backing=tmp_path / f"b{len(made)}" if backing else None,
                           nr_pages=NPAGES, **kw)
        made.append(zs)
        return ZswapFile(zs, NPAGES * PAGE, readers=readers)
    yield factory
    for zs in made:
        zs.close()


def pages_of(rng, n):
    return np.stack([text_page(rng) if i % 3 else random_page(rng) for i in range(n)])


@pytest.mark.parametrize("n", [5, SERIAL_MAX + 8], ids=["page-by-page", "batched"])
def test_a_write_of_n_pages_is_stored_and_reads_back_any_number_of_times(zfile, rng, n):
    f = zfile()
    pages = pages_of(rng, n)
    f.write(8 * PAGE, memoryview(pages.reshape(-1)))
    st = f.zs.stats()
    assert st["stored_pages"] == n and f.c["written_pages"] == n
    for _ in range(3):                                  # the kernel may read a slot again
        got = np.frombuffer(bytes(f.read(8 * PAGE, n * PAGE)), np.uint8).reshape(n, PAGE)
        np.testing.assert_array_equal(got, pages)
        np.testing.assert_array_equal(np.frombuffer(bytes(f.read(9 * PAGE, PAGE)), np.uint8), pages[1])
    assert f.zs.stats()["stored_pages"] == n            # reads never drop a page


def test_an_unwritten_slot_reads_as_zeros(zfile, rng):
    f = zfile()
    f.write(3 * PAGE, memoryview(text_page(rng)))
    got = np.frombuffer(bytes(f.read(2 * PAGE, 3 * PAGE)), np.uint8).reshape(3, PAGE)
    assert not got[0].any() and not got[2].any() and got[1].any()
    assert f.c["zero_reads"] == 2


def test_writes_and_reads_at_any_alignment(zfile, rng):
    f = zfile()
    blob = np.concatenate([text_page(rng), text_page(rng)])[:6000]
    f.write(5 * PAGE + 100, memoryview(blob))
    assert bytes(f.read(5 * PAGE + 100, 6000)) == blob.tobytes()
    assert bytes(f.read(5 * PAGE, 100)) == bytes(100)
    assert f.zs.stats()["stored_pages"] == 2


def test_overwrite_replaces_the_page(zfile, rng):
    f = zfile()
    a, b = text_page(rng), text_page(rng)
    f.write(4 * PAGE, memoryview(a))
    f.write(4 * PAGE, memoryview(b))
    assert bytes(f.read(4 * PAGE, PAGE)) == b.tobytes()
    assert f.zs.stats()["stored_pages"] == 1


def test_punch_invalidates_whole_pages_and_zeroes_partial_ones(zfile, rng):
    f = zfile()
    pages = pages_of(rng, 8)
    f.write(0, memoryview(pages.reshape(-1)))
    f.punch(PAGE + 10, 3 * PAGE)                        # page 1 partly, 2 and 3 whole, 4 partly
    assert not f.zs.contains(2) and not f.zs.contains(3)
    assert f.c["discarded_pages"] == 2
    got = np.frombuffer(bytes(f.read(0, 8 * PAGE)), np.uint8).reshape(8, PAGE)
    np.testing.assert_array_equal(got[1, :10], pages[1, :10])
    assert not got[1, 10:].any() and not got[2].any() and not got[3].any()
    assert not got[4, :10].any()
    np.testing.assert_array_equal(got[4, 10:], pages[4, 10:])
    np.testing.assert_array_equal(got[[0, 5, 6, 7]], pages[[0, 5, 6, 7]])
    f.punch(0, NPAGES * PAGE)                           # a whole-device discard
    assert f.zs.stats()["stored_pages"] == 0 and f.zs.stats()["backing_pages"] == 0


def test_a_page_that_cannot_be_produced_is_eio_never_zeros(zfile, rng, backend):
    f = zfile()
    f.write(6 * PAGE, memoryview(text_page(rng)))
    # the page's block is lost (as if the pool lost it): Zswap no longer has the slot
    f.zs.invalidate(6)
    with pytest.raises(OSError) as e:
        f.read(6 * PAGE, PAGE)
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError) as e:
        f.read(5 * PAGE, 3 * PAGE)                      # in a batch too
    assert e.value.errno == errno.EIO
    assert f.c["read_errors"] == 2


def test_a_corrupt_block_is_eio(zfile, rng):
    f = zfile()
    f.write(2 * PAGE, memoryview(text_page(rng)))
    h = f.zs._handle_of(2)
    n = f.zs.pool.size_of(h)
    f.zs.pool.write(h, np.full(n, 0xFF, np.uint8))      # garbage where the block was
    with pytest.raises(OSError) as e:
        f.read(2 * PAGE, PAGE)
    assert e.value.errno == errno.EIO


def test_refused_pages_go_to_the_backing_file(zfile, rng):
    f = zfile(max_pool_bytes=16384 * 4)
    pages = np.stack([random_page(rng) for _ in range(NPAGES // 2)])  # incompressible: fill the limit fast
    f.write(0, memoryview(pages.reshape(-1)))
    st = f.zs.stats()
    assert st["backing_pages"] + st["written_back_pages"] > 0
    got = np.frombuffer(bytes(f.read(0, pages.nbytes)), np.uint8).reshape(pages.shape)
    np.testing.assert_array_equal(got, pages)


def test_without_a_backing_file_a_refused_page_fails_its_write(zfile, rng):
    f = zfile(backing=False)
    with pytest.raises(OSError) as e:
        f.write(0, memoryview(random_page(rng)))        # incompressible, no writeback: refused
    assert e.value.errno == errno.EIO and f.c["write_errors"] == 1
    with pytest.raises(OSError) as e:
        f.read(0, PAGE)                                 # the slot holds nothing: EIO, not zeros
    assert e.value.errno == errno.EIO


def test_the_stats_name_what_was_served(zfile, rng):
    f = zfile()
    f.write(0, memoryview(pages_of(rng, 4).reshape(-1)))
    f.read(0, PAGE)
    f.served(15, 12_000)                                # READ took 12 us
    st = f.stats()
    assert st["writes"] == 1 and st["reads"] == 1 and st["read_service_p50_us"] == 12.0
    assert st["zswap"]["stored_pages"] == 4 and st["slots_written"] == 4


LOCKED = """
import ctypes, numpy as np, devpool
libc = ctypes.CDLL(None, use_errno=True)
assert libc.mlockall(3) == 0, ctypes.get_errno()
pool = devpool.open_pool("host", 8 << 20, segment_bytes=65536)
zs = devpool.Zswap(pool, max_pool_percent=100)
rng = np.random.default_rng(0)
pages = rng.integers(0, 4, size=(1024, 4096), dtype=np.uint8)
for r in range(3):                     # stores, loads and frees empty segments again and again
    zs.store_batch(np.arange(1024), pages)
    assert (zs.load_batch(np.arange(1024)) == pages).all()
    pool.compact()
print("ok", pool.stats()["pool_total_size"])
"""


def test_a_host_pool_works_in_a_locked_process():
    """The server mlockall's before it opens its pool: releasing an empty segment's
    memory (madvise) is refused on locked memory, and the pool keeps the pages instead
    of failing."""
    done = subprocess.run([sys.executable, "-c", LOCKED], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")


def test_warm_up_leaves_nothing_stored_and_nothing_counted(zfile, rng):
    f = zfile()
    f.warm_up()
    st = f.stats()
    assert st["zswap"]["stored_pages"] == 0 and st["zswap"]["backing_pages"] == 0
    assert st["reads"] == st["writes"] == st["slots_written"] == 0
    f.write(NPAGES * PAGE - PAGE, memoryview(text_page(rng)))     # the slots it used work as any
    assert f.zs.stats()["stored_pages"] == 1


# --- several reader threads (swapon threads=N) -------------------------------------------------------
def in_threads(*targets):
    """Run each target in a thread of its own; re-raise the first failure."""
    errors = []

    def run(target):
        try:
            target()
        except BaseException as exc:        # noqa: B902 - handed to the test's thread
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_a_read_reply_stays_its_own_while_another_thread_reads(zfile, rng):
    """A read's pages go back to the kernel after the file's lock is released: each
    reader thread has reply pages of its own, or another thread's read would overwrite
    them before the reply is written."""
    f = zfile(readers=2)
    pages = pages_of(rng, 2)
    f.write(0, memoryview(pages.reshape(-1)))
    first_read, second_read = threading.Event(), threading.Event()
    got = {}

    def a():
        reply = f.read(0, PAGE)                   # page 0, handed out ...
        first_read.set()
        assert second_read.wait(10)
        got["a"] = bytes(reply)                   # ... still page 0 after b's read

    def b():
        assert first_read.wait(10)
        got["b"] = bytes(f.read(PAGE, PAGE))
        second_read.set()
    in_threads(a, b)
    assert got["a"] == pages[0].tobytes() and got["b"] == pages[1].tobytes()


def test_more_reader_threads_than_the_file_was_made_for_is_an_error(zfile, rng):
    f = zfile(readers=1)
    f.read(0, PAGE)                               # this thread takes the one set of reply pages
    failed = []

    def other():
        try:
            f.read(0, PAGE)
        except OSError as exc:
            failed.append(exc.errno)
    in_threads(other)
    assert failed == [errno.EBUSY]


def test_threads_writing_reading_and_punching_at_once_keep_every_page(zfile, rng):
    """Four threads on one file: three write, read back and overwrite their own slots
    (page by page and batched), one writes and punches a slot of its own over and over.
    Every page reads back as written, the punched slot as its page or zeros (never an
    error: a store and its ``written`` mark stay together), and the counters add up."""
    f = zfile(readers=4)
    per = 16
    mine = [pages_of(np.random.default_rng(k), per) for k in range(3)]
    punched = text_page(rng)
    rounds = 4

    def writer(k):
        def run():
            first = 4 + k * per
            for r in range(rounds):
                n = per if r % 2 else 3                   # batched, then page by page
                f.write(first * PAGE, memoryview(mine[k][:n].reshape(-1)))
                got = np.frombuffer(bytes(f.read(first * PAGE, n * PAGE)), np.uint8).reshape(n, PAGE)
                np.testing.assert_array_equal(got, mine[k][:n])
        return run

    def puncher():
        for _ in range(rounds * 3):
            f.write(60 * PAGE, memoryview(punched))
            f.punch(60 * PAGE, PAGE)
            got = bytes(f.read(60 * PAGE, PAGE))
            assert got in (bytes(PAGE), punched.tobytes())
    in_threads(writer(0), writer(1), writer(2), puncher)
    st = f.stats()
    assert st["writes"] == 3 * rounds + rounds * 3 and st["reads"] == 3 * rounds + rounds * 3
    assert st["read_errors"] == st["write_errors"] == 0
    assert st["discards"] == rounds * 3 and st["slots_written"] == 3 * per
    assert st["zswap"]["stored_pages"] == 3 * per


def test_a_punch_waits_for_a_store_in_flight_on_its_slot(zfile, rng):
    """A store and its slot's ``written`` mark are one step under the file's lock: a
    punch of the slot from another thread, made while the store is inside zswap, runs
    after it (the slot then reads as zeros), never between the two (the mark would then
    name a page zswap no longer holds: EIO)."""
    f = zfile(readers=2)
    store, punching, punched = f.zs.store, threading.Event(), threading.Event()

    def slow_store(offset, page):
        ok = store(offset, page)
        punching.set()
        punched.wait(0.5)                        # the punch cannot get in: it waits on the lock
        return ok
    f.zs.store = slow_store

    def punch():
        assert punching.wait(10)
        f.punch(5 * PAGE, PAGE)
        punched.set()
    in_threads(lambda: f.write(5 * PAGE, memoryview(text_page(rng))), punch)
    assert bytes(f.read(5 * PAGE, PAGE)) == bytes(PAGE)
    assert f.stats()["slots_written"] == 0 and f.zs.stats()["stored_pages"] == 0


def test_a_reader_thread_that_fails_ends_the_serving_loop_with_its_error():
    """With reader threads, a reader's unexpected error (a bug) ends the server as it
    would end the one-thread loop: serve raises it (and the process exits), rather than
    serving on with fewer readers or none."""
    import socket
    from devpool.swapdev.server import Server

    class Failing:
        requests, fd = 0, -1

        def serve_blocking(self):
            raise RuntimeError("planted reader failure")

    class Session:
        def clone(self):
            return Failing()
    srv = Server.__new__(Server)                # the serving loop alone: no mount, no pool
    srv.threads, srv.fs, srv.stopping, srv.failure, srv.readers = 2, Session(), False, None, []
    srv.control = lambda: None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv.ctl:
        with pytest.raises(RuntimeError, match="planted reader failure"):
            srv.serve()
    assert len(srv.readers) == 2 and not any(t.is_alive() for _, t in srv.readers)


@pytest.mark.parametrize("n", [2, SERIAL_MAX], ids=["page-by-page", "batched"])
def test_gathered_writes_are_one_store_and_read_back(zfile, rng, n):
    f = zfile()
    pages = pages_of(rng, 3 * n)
    offsets = [40 * PAGE, 2 * PAGE, 20 * PAGE]                  # any order, apart from each other
    assert f.write_gathered(offsets, [n * PAGE] * 3, memoryview(pages.reshape(-1))) == [0, 0, 0]
    st = f.stats()
    assert st["writes"] == 3 and st["written_pages"] == 3 * n and st["stores"] == 1
    assert st["slots_written"] == 3 * n and st["zswap"]["stored_pages"] + st["zswap"]["backing_pages"] == 3 * n
    for k, off in enumerate(offsets):
        got = np.frombuffer(bytes(f.read(off, n * PAGE)), np.uint8).reshape(n, PAGE)
        np.testing.assert_array_equal(got, pages[k * n:(k + 1) * n])


def test_a_gathered_write_with_a_refused_page_fails_alone(zfile, rng):
    """No backing file: the write holding a page zswap refused (random: it does not
    compress) is EIO, and its slot reads as EIO, never zeros; the others are stored."""
    f = zfile(backing=False)
    good, bad = np.stack([text_page(rng), text_page(rng)]), random_page(rng)
    data = np.concatenate([good[:1], bad[None], good[1:]])
    assert f.write_gathered([0, 10 * PAGE, 20 * PAGE], [PAGE] * 3, memoryview(data.reshape(-1))) \
        == [0, errno.EIO, 0]
    assert f.stats()["write_errors"] == 1
    assert bytes(f.read(20 * PAGE, PAGE)) == good[1].tobytes()
    with pytest.raises(OSError) as e:
        f.read(10 * PAGE, PAGE)
    assert e.value.errno == errno.EIO
