"""``zstd``: Zstandard blocks through the ``zstandard`` binding, one frame per page.

zstd is what many distributions configure for zswap and zram: slower than LZ4, a better
ratio. A block is a bare frame (no content size, checksum or dictionary id: the page
size is known), decoded with the page size as its limit, so a block that decodes to
anything but exactly one page is a failure. The per-page loop is :mod:`.per_page`'s
(the lz4 binding codecs' too); compressor and decompressor contexts are made once per
thread (a context is not safe to share between threads).
"""

from __future__ import annotations

import threading

import zstandard

from .per_page import _PerPage
from .registry import register_codec
from .._checks import check_int

__all__ = ["Zstd"]


class Zstd(_PerPage):
    """Zstandard frames, ``level`` 1..22 (zstd's default is 3, as the kernel's)."""

    codec_id = "zstd"

    def __init__(self, level: int = 3):
        self.level = check_int(level, "zstd level", lo=1, hi=22)
        self._local = threading.local()

    def _contexts(self):
        loc = self._local
        if getattr(loc, "cctx", None) is None:
            loc.cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=False,
                                                write_content_size=False, write_dict_id=False)
            loc.dctx = zstandard.ZstdDecompressor()
        return loc.cctx, loc.dctx

    def _compress_one(self, page: bytes) -> bytes:
        return self._contexts()[0].compress(page)

    def _decompress_one(self, block) -> bytes:
        return self._contexts()[1].decompress(block, max_output_size=self.page_size)


register_codec(Zstd)
