"""The backing swap file: where written-back and refused pages go, at ``offset * 4096``.

Swapped pages are other programs' memory, so the file must be ours alone:

- it is created with mode 0600 (``O_CREAT | O_EXCL``), and an existing one is opened
  with ``O_NOFOLLOW``: a symbolic link in its place is refused, never written through;
  an existing file must be a regular file, ours, with one link, that group and others
  cannot reach;
- one swap file has one owner: an exclusive ``flock`` is taken on it, so a second
  ``BackingFile`` of the same path (in this process or another) is refused with a
  :class:`~devpool.WritebackError` naming the path, and :meth:`BackingFile.attach` lets
  one frontend claim a ``BackingFile`` object so a second is refused too;
- a constructor that fails after opening closes what it opened and removes a file it
  created; :meth:`BackingFile.close` releases the lock and is idempotent and thread-safe.

What is in the file lives no longer than the process that wrote it (the frontend's
entries, which say what each slot holds, are in its memory):

- **the file starts empty**: an existing file is truncated once it is locked and
  checked, so a file left behind by a process that died (a crash, SIGKILL) is emptied
  by the next open of its path; until then its pages stay there, 0600;
- **close empties it** (``ftruncate`` to 0: the blocks holding swapped pages are freed
  even if another descriptor still refers to the file) and removes the file if this
  object created it; :meth:`BackingFile.discard` empties it without closing (a
  frontend that closes or drops every entry). A forked child that inherited the object
  never empties, unlocks or writes the file: it is its parent's.

**Every slot is checked.** :meth:`BackingFile.write_pages` returns one 64-bit check
word per page (a keyed hash of the page and its swap offset; the key is drawn at open,
so words never outlive the open), which the frontend keeps with the entry, and
:meth:`BackingFile.read_pages` compares the page it read against it: a slot that lost
its page (the file truncated, then extended by a later write: a hole reads as zeros),
or holds another offset's page, or was changed under us, raises
:class:`~devpool.WritebackError` naming the offsets, never returns the wrong bytes. A
slot is only ever read for the offset whose page was written there (the frontend
tracks which offsets live in the file). Runs of consecutive offsets go out in one
``pwritev`` / come back in one ``preadv``. OS errors become
:class:`~devpool.WritebackError`, chained.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import weakref

import numba
import numpy as np

from .._checks import as_int_array, check_int
from .._errors import BadInputError, WritebackError

__all__ = ["BackingFile"]

_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


# --- the check word of a slot --------------------------------------------------------------
# xxHash64's round and avalanche (multiply-rotate, four independent lanes), seeded with a
# per-open random key and the swap offset: a page moved to another offset's slot, a hole
# (zeros) or any changed word gives another word, but for a chance of about 2**-64.
# 0.38 us a page in a batch, 1.8 us for one (the call's dispatch), against 3-12 us of
# file I/O a page (benchmarks/bench_backing.py); nothing on the pool's paths pays for it.
# Eight bytes per written-back page, kept in the entry's spare word.
_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)


@numba.njit(inline="always")
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@numba.njit(inline="always")
def _round(acc, word):
    return _rotl(acc + word * _P2, 31) * _P1


@numba.njit(cache=True, nogil=True)
def _check_words(words, offsets, key):
    """One check word per row of ``words`` ((N, W) uint64, a page each) at ``offsets``."""
    n, w = words.shape
    out = np.empty(n, np.uint64)
    for i in range(n):
        seed = key ^ (np.uint64(offsets[i]) * _P3)
        a0, a1, a2, a3 = seed + _P1 + _P2, seed + _P2, seed, seed - _P1
        for j in range(0, w - 3, 4):
            a0 = _round(a0, words[i, j])
            a1 = _round(a1, words[i, j + 1])
            a2 = _round(a2, words[i, j + 2])
            a3 = _round(a3, words[i, j + 3])
        for j in range(w - w % 4, w):
            a0 = _round(a0, words[i, j])
        h = _rotl(a0, 1) + _rotl(a1, 7) + _rotl(a2, 12) + _rotl(a3, 18) + np.uint64(w)
        h ^= h >> np.uint64(33)
        h *= _P2
        h ^= h >> np.uint64(29)
        h *= _P3
        h ^= h >> np.uint64(32)
        out[i] = h
    return out


@numba.njit(cache=True, nogil=True)
def _mismatched(words, offsets, key, expect):
    """Rows of ``words`` whose check word is not ``expect``'s (one compiled call: a
    single page's load pays one dispatch, not a hash and a numpy compare)."""
    got = _check_words(words, offsets, key)
    bad = np.empty(got.shape[0], np.int64)
    k = 0
    for i in range(got.shape[0]):
        if got[i] != expect[i]:
            bad[k] = i
            k += 1
    return bad[:k]


def _runs(offsets: np.ndarray):
    """(start index, end index) of runs of consecutive values in sorted ``offsets``."""
    breaks = np.flatnonzero(np.diff(offsets) != 1) + 1
    bounds = np.concatenate([[0], breaks, [offsets.size]])
    return zip(bounds[:-1].tolist(), bounds[1:].tolist())


class BackingFile:
    """A swap file of fixed-size slots; slot ``i`` holds the page of swap offset ``i``.

    ``path`` is created (0600) or, when it exists, must be a regular file of ours that
    only we can reach; either way it starts empty (what an existing one held is
    discarded: no entry survives the process that wrote it). The file is locked for as
    long as this object is open, and emptied (removed, if this object created it) on
    :meth:`close`.
    """

    def __init__(self, path, page_size: int = 4096):
        self.fd = -1
        self.created = False               # this object made the file (its close removes it)
        self._lock = threading.Lock()
        self._user = None                  # weakref to the frontend that attached
        self._owner = os.getpid()          # a fork()ed child never empties, unlocks or writes
        try:
            self.path = os.fspath(path)
        except TypeError:
            raise BadInputError(f"backing must be a path, a BackingFile or None, got {path!r} "
                                f"({type(path).__name__})") from None
        if not self.path or (b"\0" if isinstance(self.path, bytes) else "\0") in self.path:
            raise BadInputError(f"backing file path {self.path!r} is empty or holds a NUL byte")
        self.page_size = check_int(page_size, "page_size", lo=8)
        if self.page_size % 8:
            raise BadInputError(f"page_size must be a multiple of 8 bytes (a slot is checked "
                                f"word by word), got {self.page_size}")
        # the check words' key: drawn per open, so a word means nothing to another open
        self._key = np.uint64(int.from_bytes(os.urandom(8), "little"))
        fd, self.created = self._open()
        try:
            self._claim(fd)
            self._empty(fd)                # the file starts empty: see the module docstring
        except BaseException:
            self._unlink_if_created(fd)
            os.close(fd)
            raise
        self.fd = fd

    # --- opening: create exclusively, never follow a link, lock, check -------------------
    def _open(self) -> tuple[int, bool]:
        try:
            return os.open(self.path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600), True
        except FileExistsError:
            pass
        except OSError as exc:
            raise WritebackError(f"cannot create backing file {self.path!r}: {exc.strerror}") from exc
        try:
            st = os.lstat(self.path)
            if not stat.S_ISREG(st.st_mode):     # a FIFO or device is never even opened
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise WritebackError(f"backing file {self.path!r} is {kind}; refused "
                                     f"(swapped pages go only to a regular file of ours)")
            return os.open(self.path, _OPEN_FLAGS), False
        except OSError as exc:
            if isinstance(exc, WritebackError):
                raise
            why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror   # O_NOFOLLOW
            raise WritebackError(f"cannot open backing file {self.path!r}: {why}") from exc

    def _claim(self, fd: int) -> None:
        """Lock ``fd`` exclusively, then check what it is; WritebackError if anything is off."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.created = False               # someone else holds it: their file, not ours to remove
            raise WritebackError(
                f"backing file {self.path!r} is in use (locked by another BackingFile, in this or "
                f"another process); a swap file has one owner: choose another path") from None
        except OSError as exc:
            raise WritebackError(f"cannot lock backing file {self.path!r}: {exc.strerror}") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise WritebackError(f"backing file {self.path!r} is not a regular file")
        if st.st_uid != os.geteuid():
            raise WritebackError(f"backing file {self.path!r} belongs to uid {st.st_uid}, not to us "
                                 f"(uid {os.geteuid()}); swapped pages are private memory")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise WritebackError(
                f"backing file {self.path!r} is accessible to other users (mode {stat.filemode(st.st_mode)}); "
                f"swapped pages are private memory: chmod 600 it or choose another path")
        if st.st_nlink != 1:
            raise WritebackError(f"backing file {self.path!r} has {st.st_nlink} links; a swap file "
                                 f"must have one name only")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)

    def _empty(self, fd: int) -> None:
        """Truncate the file to nothing: its blocks (swapped pages) are freed at once,
        whatever other descriptor still refers to it."""
        try:
            os.ftruncate(fd, 0)
        except OSError as exc:
            raise WritebackError(f"cannot empty backing file {self.path!r}: {exc.strerror}") from exc

    def _unlink_if_created(self, fd: int) -> bool:
        """Remove the file this object created, if ``path`` still names it; True if removed."""
        if not self.created:
            return False
        self.created = False
        try:
            st, now = os.fstat(fd), os.lstat(self.path)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                os.unlink(self.path)
                return True
        except OSError:
            pass
        return False

    # --- one frontend per file -------------------------------------------------------------
    def attach(self, user) -> None:
        """Claim this file for ``user`` (a frontend such as a Zswap): a second live user
        is refused with WritebackError, as a second lock on the path is."""
        with self._lock:
            self._check_open()
            holder = self._user() if self._user is not None else None
            if holder is not None and holder is not user:
                raise WritebackError(f"backing file {self.path!r} is already used by another "
                                     f"{type(holder).__name__}; a swap file has one owner")
            self._user = weakref.ref(user)

    def detach(self, user) -> None:
        """Release the claim of ``user`` (no-op if it holds none)."""
        with self._lock:
            if self._user is not None and self._user() is user:
                self._user = None

    def _check_open(self) -> None:
        if self.fd < 0:
            raise WritebackError(f"backing file {self.path!r} is closed")

    def _check_owner(self, what: str) -> None:
        if os.getpid() != self._owner:
            raise WritebackError(f"backing file {self.path!r} belongs to process {self._owner}; "
                                 f"a fork()ed child may not {what} it (its parent's slots)")

    # --- slots ---------------------------------------------------------------------------
    @staticmethod
    def _slots(offsets) -> np.ndarray:
        """Slot numbers as 1-D int64 (what the frontend passes goes straight through)."""
        if type(offsets) is np.ndarray and offsets.dtype == np.int64 and offsets.ndim == 1:
            return offsets
        return as_int_array(offsets, "offsets")

    @staticmethod
    def _sorted(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(order, offsets[order])``; BadInputError for a slot before the file's start."""
        order = np.argsort(offsets, kind="stable")
        offs = offsets[order]
        if offs.size and offs[0] < 0:
            raise BadInputError(f"slot offsets must be >= 0, got {int(offs[0])}")
        return order, offs

    def _pages(self, pages, n: int) -> np.ndarray:
        pages = np.asarray(pages)
        if pages.dtype != np.uint8 or pages.shape != (n, self.page_size):
            raise BadInputError(f"pages must be ({n}, {self.page_size}) uint8, got {pages.dtype} {pages.shape}")
        return pages

    def check_words(self, offsets, pages) -> np.ndarray:
        """The check word of each ``pages[i]`` in the slot of ``offsets[i]`` (uint64)."""
        offsets = self._slots(offsets)
        return self._words(offsets, self._pages(pages, offsets.size))

    def _words(self, offsets: np.ndarray, pages: np.ndarray) -> np.ndarray:
        return _check_words(np.ascontiguousarray(pages).view(np.uint64), offsets, self._key)

    def write_pages(self, offsets, pages) -> np.ndarray:
        """Write ``pages[i]`` to the slot of ``offsets[i]``; all or raise WritebackError.
        Returns the pages' check words, for :meth:`read_pages`'s ``expect``."""
        offsets = self._slots(offsets)
        pages = self._pages(pages, offsets.size)
        order, offs = self._sorted(offsets)
        words = self._words(offsets, pages)
        with self._lock:
            self._check_open()
            self._check_owner("write")
            self._write_runs(offsets, offs, order, pages)
        return words

    def _write_runs(self, offsets, offs, order, pages) -> None:
        try:
            for lo, hi in _runs(offs):
                bufs = [pages[order[k]] for k in range(lo, hi)]
                want = (hi - lo) * self.page_size
                done = os.pwritev(self.fd, bufs, int(offs[lo]) * self.page_size)
                if done != want:
                    raise OSError(28, f"short write ({done} of {want} bytes)")
        except OSError as exc:
            raise WritebackError(f"writing {offsets.size} page(s) to {self.path!r} failed: "
                                 f"{exc.strerror or exc}") from exc

    def read_pages(self, offsets: np.ndarray, expect: np.ndarray | None = None) -> np.ndarray:
        """The pages in the slots of ``offsets`` (N, page); WritebackError on failure.

        ``expect``: the check words :meth:`write_pages` returned for these slots; a slot
        whose page does not match raises WritebackError (its ``offsets`` attribute names
        them) instead of returning bytes that are not the page written there."""
        offsets = self._slots(offsets)
        if expect is not None:
            if type(expect) is not np.ndarray:
                expect = np.asarray(expect)
            if expect.dtype != np.uint64 or expect.shape != offsets.shape:
                raise BadInputError(f"expect must be {offsets.size} uint64 check words, got "
                                    f"{expect.dtype} {expect.shape}")
        order, offs = self._sorted(offsets)
        out = np.empty((offsets.size, self.page_size), np.uint8)
        with self._lock:
            self._check_open()
            self._read_runs(offsets, offs, order, out)
        if expect is not None:
            bad = _mismatched(out.view(np.uint64), offsets, self._key, expect)
            if bad.size:
                lost = offsets[bad]
                exc = WritebackError(
                    f"{bad.size} slot(s) of backing file {self.path!r} do not hold the page written "
                    f"there (the file was truncated or changed under us): swap offsets "
                    f"{lost[:8].tolist()}{' ...' if lost.size > 8 else ''}; those pages are lost")
                exc.offsets = lost
                raise exc
        return out

    def _read_runs(self, offsets, offs, order, out) -> None:
        try:
            for lo, hi in _runs(offs):
                rows = order[lo:hi]
                buf = np.empty((hi - lo, self.page_size), np.uint8)
                got = os.preadv(self.fd, [buf], int(offs[lo]) * self.page_size)
                if got != buf.nbytes:
                    raise OSError(5, f"short read ({got} of {buf.nbytes} bytes)")
                out[rows] = buf
        except OSError as exc:
            raise WritebackError(f"reading {offsets.size} page(s) from {self.path!r} failed: "
                                 f"{exc.strerror or exc}") from exc

    def discard(self) -> None:
        """Empty the file (every slot's page is dropped, its blocks freed): what a
        frontend does when none of its entries is in the file any more."""
        with self._lock:
            self._check_open()
            if os.getpid() == self._owner:      # a forked child's no-op, as its close is
                self._empty(self.fd)

    def close(self, remove_created: bool = True) -> None:
        """Empty the file, remove it if this object created it (``remove_created=False``
        keeps it, empty), release the lock and close; again is a no-op (safe from any
        thread). In a fork()ed child it only closes the child's descriptor. If the file
        cannot be emptied, WritebackError is raised once everything else is done."""
        with self._lock:
            fd, self.fd = self.fd, -1
            self._user = None
            if fd < 0:
                return
            failed, removed = None, False
            try:
                if os.getpid() == self._owner:
                    try:
                        self._empty(fd)
                    except WritebackError as exc:
                        failed = exc
                    if remove_created:
                        removed = self._unlink_if_created(fd)
                    fcntl.flock(fd, fcntl.LOCK_UN)   # even if a forked child shares the descriptor
            except OSError:
                pass
            finally:
                os.close(fd)
            if failed is not None and not removed:   # its pages are still there: say so
                raise failed

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def __enter__(self) -> "BackingFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"<devpool.BackingFile {self.path!r} {'closed' if self.closed else 'open'}>"
