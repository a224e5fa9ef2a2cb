"""The backing swap file: never written through a link, one owner, nothing leaked."""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

import devpool
from devpool import BackingFile, BadInputError, WritebackError
from devpool.zswap import backing as _backing

PAGE = 4096


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def page(byte: int) -> np.ndarray:
    return np.full((1, PAGE), byte, np.uint8)


# --- links and other things that are not our regular file ---------------------------------
def test_a_symlink_in_its_place_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 1024)
    os.chmod(victim, 0o600)
    link = tmp_path / "swap"
    link.symlink_to(victim)
    with pytest.raises(WritebackError, match="symbolic link") as e:
        BackingFile(link)
    assert str(link) in str(e.value)
    assert victim.read_bytes() == b"precious" * 1024


def test_a_dangling_symlink_does_not_create_its_target(tmp_path):
    link = tmp_path / "swap"
    link.symlink_to(tmp_path / "made-by-the-link")
    with pytest.raises(WritebackError, match="symbolic link"):
        BackingFile(link)
    assert not (tmp_path / "made-by-the-link").exists()


def test_zswap_over_a_symlink_writes_no_page_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * PAGE)
    os.chmod(victim, 0o600)
    (tmp_path / "swap").symlink_to(victim)
    with devpool.open_pool("host", 1 << 20, segment_bytes=16384) as pool:
        with pytest.raises(WritebackError):
            devpool.Zswap(pool, backing=str(tmp_path / "swap"))
    assert victim.read_bytes() == b"x" * PAGE


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "swap"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(WritebackError, match="not a regular file"):
        BackingFile(fifo)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(WritebackError):
        BackingFile(tmp_path)


def test_a_hard_linked_file_is_refused(tmp_path):
    f = tmp_path / "swap"
    f.write_bytes(b"")
    os.chmod(f, 0o600)
    os.link(f, tmp_path / "other-name")
    with pytest.raises(WritebackError, match="2 links"):
        BackingFile(f)


def test_a_file_others_can_read_is_refused(tmp_path):
    f = tmp_path / "swap"
    f.write_bytes(b"")
    os.chmod(f, 0o644)
    with pytest.raises(WritebackError, match="accessible to other users"):
        BackingFile(f)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
def test_another_users_file_is_refused(tmp_path):
    f = tmp_path / "swap"
    f.write_bytes(b"")
    os.chmod(f, 0o600)
    os.chown(f, 12345, 12345)
    with pytest.raises(WritebackError, match="uid 12345"):
        BackingFile(f)


def test_a_new_file_is_created_0600_and_an_existing_private_one_taken_empty(tmp_path):
    f = tmp_path / "swap"
    with BackingFile(f) as b:
        assert b.created and stat.S_IMODE(os.stat(f).st_mode) == 0o600
        b.write_pages(np.array([1]), page(7))
    f.write_bytes(b"left by a process that died" * 1000)   # ours, 0600: taken, emptied
    os.chmod(f, 0o600)
    with BackingFile(f) as b:
        assert not b.created and os.stat(f).st_size == 0
        with pytest.raises(WritebackError, match="short read"):
            b.read_pages(np.array([1]))
    assert f.exists() and os.stat(f).st_size == 0          # not ours to remove; emptied


@pytest.mark.parametrize("path", [3, None, b"a\0b", "a\0b", "", 1.5])
def test_paths_that_are_not_paths_are_refused(path):
    with pytest.raises(BadInputError):
        BackingFile(path)


@pytest.mark.parametrize("size", [0, -1, True, 4096.0, "4096"])
def test_bad_page_sizes_are_refused(tmp_path, size):
    with pytest.raises(BadInputError, match="page_size"):
        BackingFile(tmp_path / "swap", page_size=size)
    assert not (tmp_path / "swap").exists()


# --- one swap file, one owner -------------------------------------------------------------
def test_a_second_backing_file_on_the_same_path_is_refused_until_the_first_closes(tmp_path):
    f = tmp_path / "swap"
    first = BackingFile(f)
    first.write_pages(np.array([0]), page(1))
    fds = open_fds()
    with pytest.raises(WritebackError, match="in use") as e:
        BackingFile(f)
    assert str(f) in str(e.value)
    assert open_fds() == fds and f.exists()        # the refusal leaked nothing, removed nothing
    assert (first.read_pages(np.array([0])) == 1).all()
    first.close()
    assert not f.exists()                          # it made the file: its close removed it
    with BackingFile(f) as again:
        again.write_pages(np.array([0]), page(2))
        assert (again.read_pages(np.array([0])) == 2).all()


def test_two_zswaps_on_one_path_are_refused(tmp_path):
    """They read back each other's page at the same offset; now the second is refused."""
    with devpool.open_pool("host", 1 << 20) as pool:
        a = devpool.Zswap(pool, max_pool_percent=100, backing=str(tmp_path / "swap"))
        with pytest.raises(WritebackError, match="in use"):
            devpool.Zswap(pool, max_pool_percent=100, backing=str(tmp_path / "swap"))
        a.close()
        devpool.Zswap(pool, max_pool_percent=100, backing=str(tmp_path / "swap")).close()


def test_another_process_is_refused_while_we_hold_it(tmp_path):
    f = tmp_path / "swap"
    code = ("import sys, devpool\n"
            "try:\n    devpool.BackingFile(sys.argv[1])\n"
            "except devpool.WritebackError as e:\n    print(e); sys.exit(3)\n")
    with BackingFile(f):
        other = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=120)
        assert other.returncode == 3, other.stderr
        assert "in use" in other.stdout and str(f) in other.stdout
    other = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stdout + other.stderr     # released on close


def test_attach_lets_one_frontend_claim_the_object(tmp_path):
    class User:
        pass

    a, b = User(), User()
    with BackingFile(tmp_path / "swap") as f:
        f.attach(a)
        f.attach(a)                                   # the same user again: fine
        with pytest.raises(WritebackError, match="already used"):
            f.attach(b)
        f.detach(b)                                   # not the holder: no effect
        with pytest.raises(WritebackError):
            f.attach(b)
        f.detach(a)
        f.attach(b)
        del b
        gc.collect()
        f.attach(a)                                   # a holder that is gone holds nothing


# --- nothing leaked: failed constructors and close ----------------------------------------
def test_a_constructor_failing_after_open_closes_and_removes_what_it_made(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(_backing.fcntl, "flock", no_locks)
    fds = open_fds()
    for _ in range(5):
        with pytest.raises(WritebackError, match="cannot lock"):
            BackingFile(tmp_path / "swap")
    assert open_fds() == fds
    assert not (tmp_path / "swap").exists()


def test_a_failing_constructor_leaves_an_existing_file_alone(tmp_path, monkeypatch):
    f = tmp_path / "swap"
    f.write_bytes(b"kept")
    os.chmod(f, 0o600)
    monkeypatch.setattr(_backing.fcntl, "flock", lambda fd, op: (_ for _ in ()).throw(OSError(37, "no locks")))
    with pytest.raises(WritebackError):
        BackingFile(f)
    assert f.read_bytes() == b"kept"


def test_close_is_idempotent_thread_safe_and_later_io_is_a_clear_error(tmp_path):
    fds = open_fds()
    b = BackingFile(tmp_path / "swap")
    threads = [threading.Thread(target=b.close) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert b.closed and open_fds() == fds
    with pytest.raises(WritebackError, match="closed"):
        b.write_pages(np.array([0]), page(1))
    with pytest.raises(WritebackError, match="closed"):
        b.read_pages(np.array([0]))


def test_close_remove_created_removes_only_a_file_it_created(tmp_path):
    new = BackingFile(tmp_path / "new")
    new.close(remove_created=True)
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.write_bytes(b"")
    os.chmod(old, 0o600)
    BackingFile(old).close(remove_created=True)
    assert old.exists()


def test_a_dropped_backing_file_releases_its_descriptor_and_lock(tmp_path):
    fds = open_fds()
    BackingFile(tmp_path / "swap")                    # never closed by the caller
    gc.collect()
    assert open_fds() == fds
    BackingFile(tmp_path / "swap").close()            # and the lock went with it


# --- what the file holds outlives nothing: emptying that fails is loud -------------------
def test_a_file_that_cannot_be_emptied_is_refused_and_nothing_leaks(tmp_path, monkeypatch):
    old = tmp_path / "old"
    old.write_bytes(b"left by a crash" * 100)
    os.chmod(old, 0o600)

    def eio(fd, length):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_backing.os, "ftruncate", eio)
    fds = open_fds()
    for path in (tmp_path / "new", old):
        with pytest.raises(WritebackError, match="cannot empty"):
            BackingFile(path)
    assert open_fds() == fds and not (tmp_path / "new").exists()
    monkeypatch.undo()
    BackingFile(old).close()


def test_close_says_so_when_a_file_it_did_not_make_keeps_its_pages(tmp_path, monkeypatch):
    old = tmp_path / "old"
    old.write_bytes(b"")
    os.chmod(old, 0o600)
    made, found = BackingFile(tmp_path / "made"), BackingFile(old)
    for f in (made, found):
        f.write_pages(np.array([2]), page(9))
    monkeypatch.setattr(_backing.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(5, "EIO")))
    made.close()                                     # removed: its pages went with it
    assert not (tmp_path / "made").exists()
    with pytest.raises(WritebackError, match="cannot empty"):
        found.close()
    assert found.closed                              # closed and unlocked all the same
    monkeypatch.undo()
    BackingFile(old).close()
