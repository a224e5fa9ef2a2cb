"""``lz4`` and ``lz4hc``: raw LZ4 blocks through the ``lz4.block`` binding, one call per page.

The per-page loop here is shared with every codec whose library compresses one buffer
per call (``zstd`` too): a block that fails to compress is refused (length -1), never
lost, and a block that decodes to anything but exactly one page is a failure.
"""

from __future__ import annotations

import lz4.block
import numpy as np

from .._checks import check_int
from .base import Codec, _pack_blocks
from .registry import register_codec

__all__ = ["Lz4", "Lz4HC"]

_NO_BYTES = np.zeros(0, np.uint8)

# lz4.block's C functions are called with positional arguments, in python-lz4's order
# (compress: source, mode, store_size, acceleration; decompress: source,
# uncompressed_size, return_bytearray): parsing keywords cost ~0.2 us a call, a tenth of
# a page's decode and more of a single load's margin (measured); a test pins the blocks
# and pages to the keyword calls', byte for byte, so a reordering there fails here.
_lz4_compress = lz4.block.compress
_lz4_decompress = lz4.block.decompress


class _Lz4Block(Codec):
    """Shared by lz4, lz4hc (and zstd): a binding's call per page, both ways."""

    def _compress_one(self, page: bytes) -> bytes:
        raise NotImplementedError

    def _decompress_one(self, block: np.ndarray) -> bytes | bytearray:
        # a bytearray: a single-page load hands it over as the page, uncopied
        return _lz4_decompress(block, self.page_size, True)

    # a fresh bytes object per block, joined: packed already
    packed_blocks = True

    def compress_blocks_trusted(self, pages, rows):
        if rows is not None:
            pages = pages[rows]
        blocks = []
        for p in pages:
            try:
                blocks.append(self._compress_one(p))
            except Exception:        # a codec failure refuses the page, never loses it
                blocks.append(None)
        return _pack_blocks(blocks)

    def compress_page_trusted(self, page):
        try:
            block = self._compress_one(page)
        except Exception:            # a codec failure refuses the page, never loses it
            return _NO_BYTES, -1
        return np.frombuffer(block, np.uint8), len(block)

    def decompress_page_trusted(self, block, out=None):
        try:
            page = self._decompress_one(block)
        except Exception:
            return None
        if len(page) != self.page_size:       # a short page is a failure (see below)
            return None
        arr = np.frombuffer(page, np.uint8)
        if out is None:                       # the library's fresh buffer is the page
            return arr if arr.flags.writeable else arr.copy()
        out[:] = arr
        return out

    def decompress_into_trusted(self, data, lengths, out, rows, starts):
        ok = np.zeros(lengths.shape[0], np.bool_)
        for i, (s, n, r) in enumerate(zip(starts.tolist(), lengths.tolist(), rows.tolist())):
            try:
                page = self._decompress_one(data[s:s + n])
            except Exception:
                continue
            # lz4.block silently returns a short page for some corrupt blocks: a page of
            # the wrong length is a failure, never a page
            if len(page) == self.page_size:
                out[r] = np.frombuffer(page, np.uint8)
                ok[i] = True
        return ok


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
