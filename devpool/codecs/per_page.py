"""The per-page loop shared by every codec whose library compresses one buffer per call
(``lz4``, ``lz4hc``, ``zstd``): a block that fails to compress is refused (length -1),
never lost, and a block that decodes to anything but exactly one page is a failure.

It imports no codec library, so one library's absence (the GPU image has neither lz4
nor zstandard) leaves the others' codecs usable.
"""

from __future__ import annotations

import numpy as np

from .base import Codec, _pack_blocks, check_decode_args, check_pages, check_rows

__all__: list[str] = []

_NO_BYTES = np.zeros(0, np.uint8)


class _PerPage(Codec):
    """A binding's call per page, both ways (lz4, lz4hc, zstd)."""

    def _compress_one(self, page: bytes) -> bytes:
        raise NotImplementedError

    def _decompress_one(self, block: np.ndarray) -> bytes | bytearray:
        raise NotImplementedError

    def compress_batch(self, pages, rows=None):
        pages = check_pages(pages, self.page_size)
        if rows is not None:
            pages = pages[check_rows(rows, pages.shape[0])]
        blocks = []
        for p in pages:
            try:
                blocks.append(self._compress_one(p))
            except Exception:        # a codec failure refuses the page, never loses it
                blocks.append(None)
        return _pack_blocks(blocks)

    def _compress_page(self, page):
        try:
            block = self._compress_one(page)
        except Exception:            # a codec failure refuses the page, never loses it
            return _NO_BYTES, -1
        return np.frombuffer(block, np.uint8), len(block)

    def _decompress_page(self, block, out=None):
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

    def decompress_into(self, data, lengths, out, rows=None, starts=None):
        data, lengths, rows, starts = check_decode_args(data, lengths, out, rows, starts, self.page_size)
        ok = np.zeros(lengths.shape[0], np.bool_)
        rows = rows.tolist()
        for i, (s, n, r) in enumerate(zip(starts.tolist(), lengths.tolist(), rows)):
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
