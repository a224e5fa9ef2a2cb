"""``lz4`` and ``lz4hc``: raw LZ4 blocks, as the ``lz4.block`` binding makes them.

liblz4 is called from compiled code where it can be (:mod:`._liblz4`: both codecs'
decoding, ``lz4``'s compression; the same blocks, byte for byte), else through the
binding, one call per page (the loop is :mod:`.per_page`'s, shared with ``zstd``)."""

from __future__ import annotations

import lz4.block
import numpy as np

from .._checks import check_int
from .._compiled import entry
from . import _liblz4
from .per_page import _PerPage
from .registry import register_codec

__all__ = ["Lz4", "Lz4HC"]

# lz4.block's C functions are called with positional arguments, in python-lz4's order
# (compress: source, mode, store_size, acceleration; decompress: source,
# uncompressed_size, return_bytearray): parsing keywords cost ~0.2 us a call, a tenth of
# a page's decode and more of a single load's margin (measured); a test pins the blocks
# and pages to the keyword calls', byte for byte, so a reordering there fails here.
_lz4_compress = lz4.block.compress
_lz4_decompress = lz4.block.decompress


class _Lz4Block(_PerPage):
    """lz4 and lz4hc: liblz4's decoder, whatever mode compressed the block."""

    def _decompress_one(self, block: np.ndarray) -> bytes | bytearray:
        # a bytearray: a single-page load hands it over as the page, uncopied
        return _lz4_decompress(block, self.page_size, True)

    # liblz4 from compiled code (None: through the binding); read by every call, so a
    # test can take it away
    _fns = _liblz4.FUNCTIONS

    def decompress_page_trusted(self, block, out=None):
        fns = self._fns
        if fns is None:
            return super().decompress_page_trusted(block, out)
        page = np.empty(self.page_size, np.uint8) if out is None else out
        # (the compiled entry point trusts its arguments' types: the caller checked them)
        return page if _decompress_page(fns, block, page) else None

    def decompress_into_trusted(self, data, lengths, out, rows, starts):
        fns = self._fns
        if fns is None:
            return super().decompress_into_trusted(data, lengths, out, rows, starts)
        ok = np.zeros(lengths.shape[0], np.bool_)
        if ok.size:
            _liblz4.decompress_rows(fns, data, lengths, starts, out, rows, ok)
        return ok


_MAX_ACCELERATION = 1 << 16


class Lz4(_Lz4Block):
    """LZ4 raw blocks via ``lz4.block`` (default mode); ``acceleration`` trades ratio for speed."""

    codec_id = "lz4"

    def __init__(self, acceleration: int = 1):
        self.acceleration = check_int(acceleration, "acceleration", lo=1, hi=_MAX_ACCELERATION)

    def _compress_one(self, page):
        return _lz4_compress(page, "fast" if self.acceleration > 1 else "default", False, self.acceleration)

    def _compress_fns(self):
        """liblz4's functions where compression may call them itself: the acceleration
        is still one it takes as asked (an int in 1..65536, as checked when made); one
        set since to anything else goes through the binding, which judges it as it
        always did (a refused page, or default mode), never truncated to 32 bits here."""
        acc = self.acceleration
        return self._fns if type(acc) is int and 1 <= acc <= _MAX_ACCELERATION else None

    @property
    def liblz4(self):
        # a subclass may change what a block is (or watch the calls): its own verbs run
        fns = self._compress_fns() if type(self) is Lz4 else None
        return None if fns is None else (fns, self.acceleration)

    # (lz4.block's "default" mode is acceleration 1, "fast" any other: one call for both)
    def compress_page_trusted(self, page):
        fns = self._compress_fns()
        if fns is None:
            return super().compress_page_trusted(page)
        block = np.empty(_liblz4.BOUND, np.uint8)
        return block, _compress_page(fns, page, block, self.acceleration)

    def compress_blocks_trusted(self, pages, rows):
        fns = self._compress_fns()
        if fns is None:
            return super().compress_blocks_trusted(pages, rows)
        if rows is None:
            rows = np.arange(pages.shape[0], dtype=np.int64)
        n = rows.shape[0]
        starts = np.empty(n, np.int64)
        lengths = np.empty(n, np.int64)
        data = np.empty(n * _liblz4.BOUND, np.uint8)
        used = _liblz4.compress_rows(fns, pages, rows, self.acceleration, data, starts, lengths) if n else 0
        return data[:used], starts, lengths      # packed: the blocks lie back to back


class Lz4HC(_Lz4Block):
    """LZ4 high-compression raw blocks (``level`` 1..12); decodes like any LZ4 block."""

    codec_id = "lz4hc"

    def __init__(self, level: int = 9):
        self.level = check_int(level, "lz4hc level", lo=1, hi=12)

    def _compress_one(self, page):
        return lz4.block.compress(page, mode="high_compression", compression=self.level, store_size=False)


# the single-page verbs' compiled entry points (compiled, or loaded from numba's cache,
# with the first codec's first page)
def _compress_page(fns, page, block, acceleration):
    global _compress_page
    _compress_page = entry(_liblz4.compress_page)
    return _compress_page(fns, page, block, acceleration)


def _decompress_page(fns, block, page):
    global _decompress_page
    _decompress_page = entry(_liblz4.decompress_page)
    return _decompress_page(fns, block, page)


register_codec(Lz4)
register_codec(Lz4HC)
