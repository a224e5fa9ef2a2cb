"""``raw``: every block is the page itself (a baseline, the transport floor, and tests)."""

from __future__ import annotations

import numpy as np

from .._packed import gather
from .base import Codec

__all__ = ["Raw"]


class Raw(Codec):
    """Store as-is: every block is the page itself (useful as a baseline and for tests)."""

    codec_id = "raw"

    def compress_blocks_trusted(self, pages, rows):
        # the pages where they lie, no copy: the frontend copies them into the pool at
        # once, and compress_batch packs them (packed_blocks is False)
        rows = np.arange(pages.shape[0], dtype=np.int64) if rows is None else rows
        return pages.reshape(-1), rows * self.page_size, np.full(rows.shape[0], self.page_size, np.int64)

    def compress_page_trusted(self, page):
        return page, self.page_size           # the page itself: the pool copies it in

    def decompress_page_trusted(self, block, out=None):
        if block.size != self.page_size:
            return None
        if out is None:
            return block.copy()
        out[:] = block
        return out

    def decompress_into_trusted(self, data, lengths, out, rows, starts):
        ok = lengths == self.page_size
        flat = out.reshape(-1)
        gather(data, starts[ok], lengths[ok], flat, rows[ok] * self.page_size)
        return ok
