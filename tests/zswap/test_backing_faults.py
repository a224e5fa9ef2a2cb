"""The backing file under faults, on every backend: a slot that lost its page, what a
close or a crash leaves in the file, a full disk in the middle of a store_batch."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

import devpool
from devpool import WritebackError
from tests.pages import make_pages, random_page, text_page

PAGE = 4096


@pytest.fixture
def zswap(make_pool, tmp_path):
    made = []

    def factory(backing=None, capacity_bytes=4 << 20, **kw):
        pool = make_pool(capacity_bytes=capacity_bytes)
        zs = devpool.Zswap(pool, backing=tmp_path / "swap" if backing is None else backing,
                           max_pool_percent=100, **kw)
        made.append(zs)
        return zs

    yield factory
    for zs in made:
        zs.close()


def written_back(zs, offsets, pages):
    """Store ``pages`` at ``offsets`` and write them all back to the file."""
    assert zs.store_batch(offsets, pages).all()
    assert zs.writeback(len(offsets)) == len(offsets)
    assert all(zs.entry_kind(int(o)) == "backing" for o in offsets)


# --- item 3: a slot that lost its page never reads as zeros ----------------------------------
def test_a_slot_lost_to_truncation_fails_loudly_not_as_zeros(zswap, rng, tmp_path):
    """Truncate the file, then a later writeback extends it again: the lost slots are
    holes that read as zeros. Each load (single and batch) raises and counts; the entry
    stays; the page written after the truncation still loads."""
    zs = zswap()
    pages = make_pages(4, rng, ("text", "struct"))
    written_back(zs, np.arange(1, 5), pages)
    os.truncate(tmp_path / "swap", 0)                      # the file loses its pages
    late = text_page(rng)
    written_back(zs, np.array([100]), late[None])          # ... and grows past them again
    with pytest.raises(WritebackError, match="do not hold the page") as e:
        zs.load(2)
    assert e.value.offsets.tolist() == [2]
    with pytest.raises(WritebackError, match="do not hold the page") as e:
        zs.load_batch([1, 3, 100])
    assert sorted(e.value.offsets.tolist()) == [1, 3]
    st = zs.stats()
    assert st["backing_read_fail"] == 3 and st["backing_pages"] == 5
    assert zs.entry_kind(2) == "backing"                   # nothing removed on error
    np.testing.assert_array_equal(zs.load(100), late)


def test_a_slot_holding_another_offsets_page_fails(zswap, rng, tmp_path):
    """A slot's bytes copied over another slot (or the file rewritten under us, one byte
    flipped) is not that offset's page: refused, never returned."""
    zs = zswap()
    pages = make_pages(3, rng, ("text",))
    written_back(zs, np.array([5, 6, 7]), pages)
    fd = os.open(tmp_path / "swap", os.O_RDWR)
    try:
        os.pwrite(fd, os.pread(fd, PAGE, 5 * PAGE), 6 * PAGE)    # 5's page in 6's slot
        flipped = bytearray(os.pread(fd, PAGE, 7 * PAGE))
        flipped[4000] ^= 1
        os.pwrite(fd, bytes(flipped), 7 * PAGE)
    finally:
        os.close(fd)
    for o in (6, 7):
        with pytest.raises(WritebackError, match="do not hold the page"):
            zs.load(o)
    np.testing.assert_array_equal(zs.load(5), pages[0])
    assert zs.stats()["backing_read_fail"] == 2


def test_a_refused_page_in_the_file_is_checked_too(zswap, rng, tmp_path):
    """Pages zswap refused (poor compression, writeback off) go straight to the file;
    their slots are checked as written-back ones are."""
    zs = zswap(writeback=False)
    page = random_page(rng)
    assert zs.store(9, page) is False and zs.entry_kind(9) == "backing"
    os.truncate(tmp_path / "swap", 0)
    os.truncate(tmp_path / "swap", 20 * PAGE)              # a hole where 9's page was
    with pytest.raises(WritebackError, match="do not hold the page"):
        zs.load(9)


def test_check_words_name_the_page_and_its_offset(tmp_path):
    with devpool.BackingFile(tmp_path / "swap") as f:
        zero = np.zeros((2, PAGE), np.uint8)
        words = f.write_pages(np.array([3, 4]), zero)
        assert words.dtype == np.uint64 and words[0] != words[1]      # same page, two offsets
        np.testing.assert_array_equal(f.read_pages(np.array([4, 3]), expect=words[::-1]), zero)
        one = zero.copy()
        one[1, 123] = 1
        assert f.check_words(np.array([3, 4]), one)[1] != words[1]
        with pytest.raises(WritebackError) as e:
            f.read_pages(np.array([3, 4]), expect=words[::-1])
        assert sorted(e.value.offsets.tolist()) == [3, 4]
    with devpool.BackingFile(tmp_path / "swap") as g:           # a new open, a new key
        assert g.write_pages(np.array([3]), zero[:1])[0] != words[0]


# --- item 4: nothing private stays in the file -----------------------------------------------
def test_close_removes_a_file_it_made_and_empties_one_it_found(zswap, rng, tmp_path):
    zs = zswap()
    written_back(zs, np.arange(8), make_pages(8, rng))
    assert os.stat(tmp_path / "swap").st_size == 8 * PAGE
    zs.close()
    assert not (tmp_path / "swap").exists()
    mine = tmp_path / "mine"
    mine.write_bytes(b"")
    os.chmod(mine, 0o600)
    zs = zswap(backing=mine)
    written_back(zs, np.arange(8), make_pages(8, rng))
    zs.close()
    assert mine.exists() and os.stat(mine).st_size == 0 and os.stat(mine).st_blocks == 0


def test_closing_a_zswap_empties_a_backing_file_object_it_was_given(zswap, rng, tmp_path):
    bf = devpool.BackingFile(tmp_path / "given")
    zs = zswap(backing=bf)
    written_back(zs, np.arange(4), make_pages(4, rng))
    zs.close()
    assert not bf.closed and os.stat(tmp_path / "given").st_size == 0
    bf.close()
    assert not (tmp_path / "given").exists()


def test_invalidate_area_empties_the_file(zswap, rng, tmp_path):
    zs = zswap()
    written_back(zs, np.arange(4), make_pages(4, rng))
    zs.invalidate_area()
    assert os.stat(tmp_path / "swap").st_size == 0 and zs.stats()["backing_pages"] == 0
    written_back(zs, np.array([2]), make_pages(1, rng))    # and it still works


_CRASH = """
import os, sys, numpy as np, devpool
pool = devpool.open_pool("host", 1 << 20, segment_bytes=16384)
zs = devpool.Zswap(pool, max_pool_percent=100, backing=sys.argv[1])
pages = np.random.default_rng(0).integers(0, 4, (16, 4096), dtype=np.uint8)
zs.store_batch(np.arange(16), pages)
assert zs.writeback(16) == 16
os.kill(os.getpid(), 9)
"""


def test_a_file_left_by_a_crashed_process_starts_empty_on_the_next_open(zswap, tmp_path):
    """A SIGKILLed process cannot clean up: its pages stay in the 0600 file until the
    next open of the path, which empties it (no entry survives a process)."""
    path = tmp_path / "swap"
    run = subprocess.run([sys.executable, "-c", _CRASH, str(path)], capture_output=True, timeout=120)
    assert run.returncode == -9, run.stderr
    assert os.stat(path).st_size == 16 * PAGE                 # what the crash left
    zs = zswap(backing=path)
    assert os.stat(path).st_size == 0 and not zs.contains(3)
    zs.close()
    assert path.exists() and os.stat(path).st_size == 0       # found, not made: kept, empty


def test_a_forked_child_neither_empties_nor_writes_its_parents_file(tmp_path, rng):
    path = tmp_path / "swap"
    with devpool.BackingFile(path) as f:
        words = f.write_pages(np.array([1]), make_pages(1, rng))
        pid = os.fork()
        if pid == 0:                                       # the child: its copy of f
            code = 0
            try:
                try:
                    f.write_pages(np.array([2]), make_pages(1, rng))
                    code = 1
                except WritebackError:
                    pass
                f.discard()
                f.close()
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.stat(path).st_size == 2 * PAGE                # the child emptied nothing
        f.read_pages(np.array([1]), expect=words)
        with pytest.raises(WritebackError, match="in use"):    # and the lock is still ours
            devpool.BackingFile(path)


# --- item 7: a full disk in the middle of a store_batch ----------------------------------
@contextlib.contextmanager
def disk_of(folder, pages: int):
    """``folder`` on a filesystem that holds ``pages`` pages: a tmpfs mounted for the
    test where we may mount (root), else this process's RLIMIT_FSIZE (a file cannot
    grow past ``pages`` pages; SIGXFSZ ignored meanwhile). Undone on the way out."""
    os.makedirs(folder)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * PAGE},mode=0700",
                              "devpool-test", str(folder)], capture_output=True).returncode == 0
    if mounted:
        try:
            yield folder
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=True)
        return
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (pages * PAGE, old[1]))
    try:
        yield folder
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


def check_full_disk_error(zs, err, offsets, pages):
    """What the error says is what zswap holds: no probing needed, and nothing lost."""
    stored, not_kept = err.stored, err.not_kept
    assert stored is not None and stored.dtype == np.bool_ and stored.shape == (len(offsets),)
    np.testing.assert_array_equal(np.sort(not_kept), np.sort(offsets[~stored]))
    assert not_kept.size > 0
    for o, s in zip(offsets.tolist(), stored.tolist()):
        assert zs.contains(o) == s                         # the mask is the truth
    held = offsets[stored]
    if held.size:
        np.testing.assert_array_equal(zs.load_batch(held), pages[stored])


def test_store_batch_on_a_full_disk_says_what_it_stored(zswap, rng, tmp_path):
    """A limit of one segment: most pages are refused and go to the file, which the
    disk cannot hold. The error carries the mask and the offsets not kept."""
    with disk_of(tmp_path / "disk", 6) as disk:
        zs = zswap(backing=disk / "swap", capacity_bytes=1 << 20, max_pool_bytes=16384)
        pages = make_pages(24, rng, ("random",))           # incompressible: 4 fit the limit
        offsets = np.arange(24) * 3                        # spread: a run per page
        with pytest.raises(WritebackError) as e:
            zs.store_batch(offsets, pages)
        st = zs.stats()
        assert st["stored_pages"] + st["backing_pages"] == int(e.value.stored.sum())
        check_full_disk_error(zs, e.value, offsets, pages)
        zs.close()


def test_store_on_a_full_disk_says_it_kept_nothing(zswap, rng, tmp_path):
    with disk_of(tmp_path / "disk", 1) as disk:
        with contextlib.suppress(OSError):                 # fill it (tmpfs: one page)
            (disk / "filler").write_bytes(b"x" * PAGE)
        zs = zswap(backing=disk / "swap", writeback=False)
        zs.store(7, text_page(rng))
        with pytest.raises(WritebackError) as e:           # refused (poor), unwritable
            zs.store(5, random_page(rng))
        assert e.value.stored.tolist() == [False] and e.value.not_kept.tolist() == [5]
        assert not zs.contains(5) and zs.contains(7)
        zs.close()


def test_a_page_beyond_what_the_file_can_hold_is_reported_not_lost(zswap, rng, tmp_path):
    """The highest offset zswap takes: its slot lies past any filesystem's largest file."""
    zs = zswap(writeback=False, nr_pages=1 << 51)
    huge = np.array([(1 << 51) - 1, 5])
    pages = np.stack([random_page(rng), text_page(rng)])
    with pytest.raises(WritebackError) as e:
        zs.store_batch(huge, pages)
    assert e.value.stored.tolist() == [False, True] and e.value.not_kept.tolist() == [huge[0]]
    np.testing.assert_array_equal(zs.load(5), pages[1])


# --- a hostile caller -------------------------------------------------------------------------
def test_a_path_swapped_for_a_symlink_under_us_is_neither_removed_nor_written_through(rng, tmp_path):
    """Renamed away and replaced by a link to a victim while open: close empties our
    file (through its descriptor), removes nothing and leaves the victim whole."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 512)
    f = devpool.BackingFile(tmp_path / "swap")
    f.write_pages([0, 1], make_pages(2, rng))
    os.rename(tmp_path / "swap", tmp_path / "moved")
    (tmp_path / "swap").symlink_to(victim)
    f.close()
    assert victim.read_bytes() == b"precious" * 512
    assert (tmp_path / "swap").is_symlink() and os.stat(tmp_path / "moved").st_size == 0


def test_a_file_replaced_under_us_is_not_removed_and_our_pages_are_checked(zswap, rng, tmp_path):
    """Another file renamed over the path: our slots live on in our descriptor (reads
    still check out); the stranger's file is not ours to truncate or remove."""
    zs = zswap()
    pages = make_pages(3, rng, ("text",))
    written_back(zs, np.arange(3), pages)
    stranger = tmp_path / "stranger"
    stranger.write_bytes(b"not yours" * 100)
    os.chmod(stranger, 0o600)
    os.rename(stranger, tmp_path / "swap")
    np.testing.assert_array_equal(zs.load_batch(np.arange(3)), pages)
    zs.close()
    assert (tmp_path / "swap").read_bytes() == b"not yours" * 100


@pytest.mark.parametrize("call", [
    lambda f: f.write_pages([1, 2], np.zeros((1, PAGE), np.uint8)),          # one page for two slots
    lambda f: f.write_pages([1], np.zeros((1, 100), np.uint8)),              # not a page
    lambda f: f.write_pages([1], np.zeros((1, PAGE), np.int32)),             # not bytes
    lambda f: f.write_pages([-1], np.zeros((1, PAGE), np.uint8)),            # before the file
    lambda f: f.write_pages([1.5], np.zeros((1, PAGE), np.uint8)),
    lambda f: f.read_pages([1], expect=np.zeros(2, np.uint64)),              # words for two
    lambda f: f.read_pages([1], expect=np.zeros(1, np.int64)),               # not check words
    lambda f: f.read_pages([[1]]),
])
def test_bad_slots_pages_and_words_are_refused_and_change_nothing(tmp_path, call):
    with devpool.BackingFile(tmp_path / "swap") as f:
        words = f.write_pages([1], np.full((1, PAGE), 7, np.uint8))
        with pytest.raises(devpool.BadInputError):
            call(f)
        assert os.stat(tmp_path / "swap").st_size == 2 * PAGE
        assert (f.read_pages([1], expect=words) == 7).all()


def test_threads_storing_writing_back_and_loading_get_their_own_pages(zswap, rng):
    """Four threads at once on one Zswap over a one-segment limit: stores spill to the
    file, writeback runs, loads come from pool and file; every page checks out."""
    from tests.threads import run_in_threads
    zs = zswap(capacity_bytes=1 << 20, max_pool_bytes=16384)
    pages = make_pages(4 * 48, rng, ("text", "struct", "random"))

    def worker(i):
        offs = np.arange(i * 48, (i + 1) * 48)
        for lo in range(0, 48, 8):
            zs.store_batch(offs[lo:lo + 8], pages[offs[lo:lo + 8]])
            zs.writeback(4)
        for o in offs[::2].tolist():
            np.testing.assert_array_equal(zs.load(o), pages[o])
        np.testing.assert_array_equal(zs.load_batch(offs[1::2]), pages[offs[1::2]])

    run_in_threads(worker, 4, timeout=120)
    assert zs.stats()["backing_read_fail"] == 0
