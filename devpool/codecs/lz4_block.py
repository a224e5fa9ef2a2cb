"""``lz4`` and ``lz4hc``: raw LZ4 blocks through the ``lz4.block`` binding, one call per page
(the loop is :mod:`.per_page`'s, shared with ``zstd``)."""

from __future__ import annotations

import lz4.block
import numpy as np

from .._checks import check_int
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
    """lz4 and lz4hc: ``lz4.block``'s decoder, whatever mode compressed the block."""

    def _decompress_one(self, block: np.ndarray) -> bytes | bytearray:
        # a bytearray: a single-page load hands it over as the page, uncopied
        return _lz4_decompress(block, self.page_size, True)


class Lz4(_Lz4Block):
    """LZ4 raw blocks via ``lz4.block`` (default mode); ``acceleration`` trades ratio for speed."""

    codec_id = "lz4"

    def __init__(self, acceleration: int = 1):
        self.acceleration = check_int(acceleration, "acceleration", lo=1, hi=1 << 16)

    def _compress_one(self, page):
        return _lz4_compress(page, "fast" if self.acceleration > 1 else "default", False, self.acceleration)


class Lz4HC(_Lz4Block):
    """LZ4 high-compression raw blocks (``level`` 1..12); decodes like any LZ4 block."""

    codec_id = "lz4hc"

    def __init__(self, level: int = 9):
        self.level = check_int(level, "lz4hc level", lo=1, hi=12)

    def _compress_one(self, page):
        return lz4.block.compress(page, mode="high_compression", compression=self.level, store_size=False)


register_codec(Lz4)
register_codec(Lz4HC)
