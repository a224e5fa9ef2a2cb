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

A slot is only ever read for the offset whose page was written there (the frontend
tracks which offsets live in the file), so one offset's page is never returned as
another's. Runs of consecutive offsets go out in one ``pwritev`` / come back in one
``preadv``. OS errors become :class:`~devpool.WritebackError`, chained.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import weakref

import numpy as np

from .._checks import check_int
from .._errors import BadInputError, WritebackError

__all__ = ["BackingFile"]

_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _runs(offsets: np.ndarray):
    """(start index, end index) of runs of consecutive values in sorted ``offsets``."""
    breaks = np.flatnonzero(np.diff(offsets) != 1) + 1
    bounds = np.concatenate([[0], breaks, [offsets.size]])
    return zip(bounds[:-1].tolist(), bounds[1:].tolist())


class BackingFile:
    """A swap file of fixed-size slots; slot ``i`` holds the page of swap offset ``i``.

    ``path`` is created (0600) or, when it exists, must be a regular file of ours that
    only we can reach. The file is locked for as long as this object is open.
    """

    def __init__(self, path, page_size: int = 4096):
        self.fd = -1
        self.created = False               # this object made the file (its failure removes it)
        self._lock = threading.Lock()
        self._user = None                  # weakref to the frontend that attached
        try:
            self.path = os.fspath(path)
        except TypeError:
            raise BadInputError(f"backing must be a path, a BackingFile or None, got {path!r} "
                                f"({type(path).__name__})") from None
        if not self.path or (b"\0" if isinstance(self.path, bytes) else "\0") in self.path:
            raise BadInputError(f"backing file path {self.path!r} is empty or holds a NUL byte")
        self.page_size = check_int(page_size, "page_size", lo=1)
        fd, self.created = self._open()
        try:
            self._claim(fd)
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

    def _unlink_if_created(self, fd: int) -> None:
        """Remove the file this object created, if ``path`` still names it."""
        if not self.created:
            return
        try:
            st, now = os.fstat(fd), os.lstat(self.path)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                os.unlink(self.path)
        except OSError:
            pass
        self.created = False

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

    def write_pages(self, offsets: np.ndarray, pages: np.ndarray) -> None:
        """Write ``pages[i]`` to the slot of ``offsets[i]``; all or raise WritebackError."""
        order = np.argsort(offsets, kind="stable")
        offs = offsets[order]
        with self._lock:
            self._check_open()
            self._write_runs(offsets, offs, order, pages)

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

    def read_pages(self, offsets: np.ndarray) -> np.ndarray:
        """The pages in the slots of ``offsets`` (N, page); WritebackError on failure."""
        out = np.empty((offsets.size, self.page_size), np.uint8)
        order = np.argsort(offsets, kind="stable")
        offs = offsets[order]
        with self._lock:
            self._check_open()
            self._read_runs(offsets, offs, order, out)
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

    def close(self, remove_created: bool = False) -> None:
        """Release the lock and close the file; again is a no-op (safe from any thread).

        ``remove_created=True`` also deletes the file if this object created it (what a
        frontend whose own constructor failed wants: nothing left behind).
        """
        with self._lock:
            fd, self.fd = self.fd, -1
            self._user = None
            if fd < 0:
                return
            try:
                if remove_created:
                    self._unlink_if_created(fd)
                fcntl.flock(fd, fcntl.LOCK_UN)   # even if a forked child shares the descriptor
            except OSError:
                pass
            finally:
                os.close(fd)

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
