"""The backing swap file: where written-back and refused pages go, at ``offset * 4096``.

Swapped pages are other programs' memory, so the file is created with mode 0600 and an
existing file that group or others can read is refused. A slot is only ever read for
the offset whose page was written there (the frontend tracks which offsets live in the
file), so one offset's page is never returned as another's.

Runs of consecutive offsets go out in one ``pwritev`` / come back in one ``preadv``.
OS errors become :class:`~devpool.WritebackError`, chained.
"""

from __future__ import annotations

import os
import stat

import numpy as np

from ._errors import WritebackError

__all__ = ["BackingFile"]


def _runs(offsets: np.ndarray):
    """(start index, end index) of runs of consecutive values in sorted ``offsets``."""
    breaks = np.flatnonzero(np.diff(offsets) != 1) + 1
    bounds = np.concatenate([[0], breaks, [offsets.size]])
    return zip(bounds[:-1].tolist(), bounds[1:].tolist())


class BackingFile:
    """A swap file of fixed-size slots; slot ``i`` holds the page of swap offset ``i``."""

    def __init__(self, path, page_size: int = 4096):
        self.path = os.fspath(path)
        self.page_size = page_size
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise WritebackError(f"cannot open backing file {self.path!r}: {exc.strerror}") from exc
        mode = os.fstat(self.fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            os.close(self.fd)
            raise WritebackError(
                f"backing file {self.path!r} is accessible to other users (mode {stat.filemode(mode)}); "
                f"swapped pages are private memory: chmod 600 it or choose another path")

    def write_pages(self, offsets: np.ndarray, pages: np.ndarray) -> None:
        """Write ``pages[i]`` to the slot of ``offsets[i]``; all or raise WritebackError."""
        order = np.argsort(offsets, kind="stable")
        offs = offsets[order]
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
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
