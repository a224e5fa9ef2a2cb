"""The kernel's zram, measured on the same pages in the same run, and left as found.

Rules (DESIGN.md): only as root, only when ``/dev/zram0`` exists with ``disksize`` 0
(nobody uses it), lz4 as the compressor, I/O by ``O_DIRECT`` one page at a time (so the
page cache never answers for zram), and ``reset`` written when done, also on error.
Never used as swap. A lock file keeps two benchmarks of this project off it at once.

    with zram_device(nbytes) as z:          # or None, with z.why saying why
        z.write(offset_pages, page); z.read(offset_pages, out); z.mm_stat()
"""

from __future__ import annotations

import contextlib
import mmap
import os

import numpy as np

from _common import machine_lock

ZRAM = "/sys/block/zram0"
DEV = "/dev/zram0"
LOCK = "/tmp/devpool-zram.lock"
PAGE = 4096
#: mm_stat's columns (Documentation/admin-guide/blockdev/zram.rst)
MM_STAT = ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
           "same_pages", "pages_compacted", "huge_pages", "huge_pages_since")


class Zram:
    """An open zram device: one-page O_DIRECT writes and reads through an aligned buffer."""

    def __init__(self, fd: int):
        self.fd = fd
        self._buf = mmap.mmap(-1, PAGE)                 # page-aligned, as O_DIRECT wants
        self._view = np.frombuffer(self._buf, np.uint8)

    def write(self, slot: int, page: np.ndarray) -> None:
        self._view[:] = page
        if os.pwrite(self.fd, self._buf, slot * PAGE) != PAGE:
            raise OSError("short write to zram")

    def read(self, slot: int, out: np.ndarray) -> None:
        if os.preadv(self.fd, [self._buf], slot * PAGE) != PAGE:
            raise OSError("short read from zram")
        out[:] = self._view

    def mm_stat(self) -> dict:
        with open(f"{ZRAM}/mm_stat") as f:
            values = [int(v) for v in f.read().split()]
        return dict(zip(MM_STAT, values))

    def compact(self) -> None:
        with open(f"{ZRAM}/compact", "w") as f:
            f.write("1")


def why_not() -> str | None:
    """None when zram can be used now, else the reason."""
    if os.geteuid() != 0:
        return "not root"
    if not os.path.exists(DEV) or not os.path.exists(f"{ZRAM}/disksize"):
        return f"{DEV} does not exist"
    with open(f"{ZRAM}/disksize") as f:
        if int(f.read().strip() or 0) != 0:
            return f"{DEV} is in use (disksize is not 0): left alone"
    return None


@contextlib.contextmanager
def zram_device(nbytes: int):
    """Yield a :class:`Zram` of ``nbytes`` (lz4), or None with the reason as ``.why``."""
    with machine_lock(LOCK) as held:
        if isinstance(held, str):
            yield _Skipped(held)
            return
        why = why_not()
        if why:
            yield _Skipped(why)
            return
        fd = -1
        try:
            with open(f"{ZRAM}/comp_algorithm", "w") as f:
                f.write("lz4")
            with open(f"{ZRAM}/disksize", "w") as f:
                f.write(str((nbytes + PAGE - 1) // PAGE * PAGE))
            fd = os.open(DEV, os.O_RDWR | os.O_DIRECT)
            yield Zram(fd)
        finally:
            if fd >= 0:
                os.close(fd)
            with open(f"{ZRAM}/reset", "w") as f:   # always: leave the device as found
                f.write("1")


class _Skipped:
    """Stands in for a device that could not be used; falsy, with the reason."""

    def __init__(self, why: str):
        self.why = why

    def __bool__(self) -> bool:
        return False
