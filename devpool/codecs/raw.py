"""``raw``: every block is the page itself (a baseline, the transport floor, and tests)."""

from __future__ import annotations

import numpy as np

from .._packed import gather
from .base import Codec, check_decode_args, check_pages, check_rows

__all__ = ["Raw"]


class Raw(Codec):
    """Store as-is: every block is the page itself (useful as a baseline and for tests)."""

    codec_id = "raw"

    def compress_batch(self, pages, rows=None):
        pages = check_pages(pages, self.page_size)
        if rows is not None:
            pages = pages[check_rows(rows, pages.shape[0])]
        return pages.reshape(-1).copy(), np.full(pages.shape[0], self.page_size, np.int64)

    def _compress_page(self, page):
        return page, self.page_size           # the page itself: the pool copies it in

    def _decompress_page(self, block, out=None):
        if block.size != self.page_size:
            return None
        if out is None:
            return block.copy()
        out[:] = block
        return out

    def decompress_into(self, data, lengths, out, rows=None, starts=None):
        data, lengths, rows, starts = check_decode_args(data, lengths, out, rows, starts, self.page_size)
        ok = lengths == self.page_size
        flat = out.reshape(-1)
        gather(data, starts[ok], lengths[ok], flat, rows[ok] * self.page_size)
        return ok
