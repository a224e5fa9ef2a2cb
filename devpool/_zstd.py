"""``zstd``: Zstandard blocks through the ``zstandard`` binding, one frame per page.

zstd is what many distributions configure for zswap and zram: slower than LZ4, a better
ratio. A block is a bare frame (no content size, checksum or dictionary id: the page
size is known), decoded with the page size as its limit, so a block that decodes to
anything but exactly one page is a failure. Compressor and decompressor contexts are
made once per thread (a context is not safe to share between threads).
"""

from __future__ import annotations

import threading

import numpy as np
import zstandard

from ._codecs import Codec, _pack_blocks, check_decode_args, check_pages, check_rows, register_codec
from ._errors import BadInputError

__all__ = ["Zstd"]


class Zstd(Codec):
    """Zstandard frames, ``level`` 1..22 (zstd's default is 3, as the kernel's)."""

    codec_id = "zstd"

    def __init__(self, level: int = 3):
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
            raise BadInputError(f"zstd level must be an integer in 1..22, got {level!r}")
        self.level = level
        self._local = threading.local()

    def _contexts(self):
        loc = self._local
        if getattr(loc, "cctx", None) is None:
            loc.cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=False,
                                                write_content_size=False, write_dict_id=False)
            loc.dctx = zstandard.ZstdDecompressor()
        return loc.cctx, loc.dctx

    def compress_batch(self, pages, rows=None):
        pages = check_pages(pages, self.page_size)
        if rows is not None:
            pages = pages[check_rows(rows, pages.shape[0])]
        cctx, _ = self._contexts()
        blocks = []
        for p in pages:
            try:
                blocks.append(cctx.compress(p))
            except Exception:        # a codec failure refuses the page, never loses it
                blocks.append(None)
        return _pack_blocks(blocks)

    def decompress_into(self, data, lengths, out, rows=None, starts=None):
        data, lengths, rows, starts = check_decode_args(data, lengths, out, rows, starts, self.page_size)
        _, dctx = self._contexts()
        ok = np.zeros(lengths.shape[0], np.bool_)
        for i, (s, n, r) in enumerate(zip(starts.tolist(), lengths.tolist(), rows.tolist())):
            try:
                page = dctx.decompress(data[s:s + n], max_output_size=self.page_size)
            except Exception:
                continue
            if len(page) == self.page_size:
                out[r] = np.frombuffer(page, np.uint8)
                ok[i] = True
        return ok


register_codec(Zstd)
