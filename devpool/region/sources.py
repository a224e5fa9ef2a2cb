"""Where a region's evicted pages go and come back from: the handler's page sources.

The handler moves pages (faults, eviction); a source keeps them. One interface, three
sources, picked by the region's ``serve`` option:

- :class:`ZswapSource` (``"zswap"``, the region): a :class:`~devpool.Zswap` over a pool
  opened by name; a faulting page loads alone (``Zswap.load``, a tenth of a batch of
  one), several with one ``load_batch``.
- :class:`ZeroSource` (``"zero"``, benchmarks only): evicted bytes are dropped and
  every fault gets a zero page: the floor of a userfaultfd round trip. ``delay_ns``
  busy-waits before each fill (a handler whose work takes that long).
- :class:`FileSource` (``"file"``, benchmarks only): a plain swap file, page ``p`` at
  ``p * 4096``, uncompressed; ``file_direct`` opens it O_DIRECT (as a swap device is
  read; also how the kernel's zram block device is driven).

A source never touches the region's memory: the handler reads victims from the memfd
and hands the bytes over, and maps what a source loads with ``UFFDIO_COPY``.
"""

from __future__ import annotations

import errno
import os

import numpy as np

from .._errors import WritebackError
from .guard import say
from .uffd import PAGE_SIZE

__all__ = ["FileSource", "PageSource", "ZeroSource", "ZswapSource", "open_source", "runs"]

SHIFT = PAGE_SIZE.bit_length() - 1


def runs(sorted_pages) -> list:
    """(lo, hi) index ranges of runs of consecutive page numbers."""
    if len(sorted_pages) == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_pages) != 1) + 1
    bounds = [0, *breaks.tolist(), len(sorted_pages)]
    return list(zip(bounds[:-1], bounds[1:]))


class PageSource:
    """What the handler asks of a source. ``load_batch`` / ``load_one`` raise on a page
    they cannot give back (the handler then poisons it); ``store`` returns per page
    whether the source keeps it (False: the page stays resident)."""

    #: the name of the ``serve`` option that picks this source
    name = ""
    #: False: the source keeps no bytes (the handler need not read the victims)
    needs_bytes = True
    #: True: a fill maps zero pages instead of copying loaded bytes
    zero_fill = False
    #: up to this many pages load one by one (``load_one``) rather than in one batch
    one_by_one = 0
    #: whether ``load_one(..., keep=True)`` + ``forget`` serve a single fault
    single_page = False
    #: busy-wait this long before each fill (a baseline knob)
    delay_ns = 0

    def store(self, pages: np.ndarray, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def load_batch(self, pages: list, out: np.ndarray) -> None:
        raise NotImplementedError

    def load_one(self, p: int, out: np.ndarray, keep: bool = False) -> None:
        self.load_batch([p], out.reshape(1, PAGE_SIZE))

    def forget(self, p: int) -> None:
        """Drop page ``p`` after a ``load_one(keep=True)`` (its copy is in place)."""

    def stats(self, st: dict) -> None:
        """Add this source's figures to the handler's ``st``."""
        st["loads_from_pool"] = 0
        st["loads_from_backing"] = 0

    def backend(self) -> str | None:
        return None

    def close(self) -> None:
        pass


class ZeroSource(PageSource):
    name = "zero"
    needs_bytes = False
    zero_fill = True

    def __init__(self, cfg: dict):
        self.delay_ns = int(cfg.get("serve_delay_us", 0) * 1000)

    def store(self, pages, rows):
        return np.ones(len(pages), np.bool_)

    def load_batch(self, pages, out):
        pass


class FileSource(PageSource):
    name = "file"

    def __init__(self, cfg: dict):
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_DIRECT if cfg.get("file_direct") else 0)
        path = cfg["file"]
        if not path.startswith("/dev/"):
            flags |= os.O_CREAT
        self.fd = os.open(path, flags, 0o600)
        self.reads = 0

    def store(self, pages, rows):
        for lo, hi in runs(pages):
            want = (hi - lo) * PAGE_SIZE
            if os.pwritev(self.fd, [rows[lo:hi]], int(pages[lo]) << SHIFT) != want:
                raise OSError(errno.EIO, "short write to the swap file")
        return np.ones(len(pages), np.bool_)

    def load_batch(self, pages, out):
        arr = np.asarray(pages, np.int64)
        for lo, hi in runs(arr):
            want = (hi - lo) * PAGE_SIZE
            if os.preadv(self.fd, [out[lo:hi]], int(arr[lo]) << SHIFT) != want:
                raise OSError(errno.EIO, "short read from the swap file")
        self.reads += len(pages)

    def stats(self, st):
        st["loads_from_pool"] = 0
        st["loads_from_backing"] = self.reads

    def close(self):
        os.close(self.fd)


class ZswapSource(PageSource):
    name = "zswap"
    one_by_one = 16
    single_page = True

    def __init__(self, cfg: dict):
        from ..pool.backends import open_pool
        from ..zswap.frontend import Zswap
        self.pool = open_pool(cfg["backend"], capacity_bytes=int(cfg["capacity_bytes"]),
                              **cfg.get("pool_options", {}))
        try:
            self.zs = Zswap(self.pool, compressor=cfg["compressor"], backing=cfg.get("backing"),
                            **cfg.get("zswap_options", {}))
            # compile / warm the codec now, on an offset the region cannot use
            scratch = np.zeros((1, PAGE_SIZE), np.uint8)
            scratch[0, ::7] = 1
            self.zs.store_batch([int(cfg["npages"])], scratch)
            self.zs.load_batch([int(cfg["npages"])], out=scratch)
        except BaseException:
            self.pool.close()
            raise

    def store(self, pages, rows):
        try:
            cached = self.zs.store_batch(pages, rows)
        except WritebackError as exc:      # refused pages whose file write failed: not kept
            say(f"devpool region handler: {exc}\n")
            return np.array([self.zs.contains(int(v)) for v in pages], np.bool_)
        if self.zs.backing is not None:
            return np.ones(len(pages), np.bool_)  # refused ones went to the file
        return cached

    def load_batch(self, pages, out):
        self.zs.load_batch(pages, out=out)

    def load_one(self, p, out, keep=False):
        self.zs.load(p, out=out, keep=keep)

    def forget(self, p):
        self.zs.invalidate(p)

    def stats(self, st):
        zst = self.zs.stats()
        st["loads_from_pool"] = zst["loads_from_pool"] - 1          # less the warm-up
        st["loads_from_backing"] = zst["loads_from_backing"]
        st["zswap"] = zst

    def backend(self):
        return self.pool.stats()["backend"]

    def close(self):
        self.zs.close()
        self.pool.close()


SOURCES = {cls.name: cls for cls in (ZswapSource, ZeroSource, FileSource)}


def open_source(cfg: dict) -> PageSource:
    """The source the configuration's ``serve`` names (default ``"zswap"``)."""
    name = cfg.get("serve", "zswap")
    if name not in SOURCES:
        raise ValueError(f"unknown serve mode {name!r}")
    return SOURCES[name](cfg)
