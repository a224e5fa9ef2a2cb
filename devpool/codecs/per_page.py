"""The per-page loop shared by every codec whose library compresses one buffer per call
(``lz4``, ``lz4hc``, ``zstd``): a block that fails to compress is refused (length -1),
never lost, and a block that decodes to anything but exactly one page is a failure.

It imports no codec library, so one library's absence (the GPU image has neither lz4
nor zstandard) leaves the others' codecs usable.
"""

from __future__ import annotations

import numpy as np

from .base import Codec, _pack_blocks

__all__: list[str] = []

_NO_BYTES = np.zeros(0, np.uint8)


class _PerPage(Codec):
    """A binding's call per page, both ways (lz4, lz4hc, zstd)."""

    def _compress_one(self, page: bytes) -> bytes:
        raise NotImplementedError

    def _decompress_one(self, block: np.ndarray) -> bytes | bytearray:
        raise NotImplementedError

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
        # memoryviews, not numpy, inside the loop: a memoryview slice and a slice
        # assignment from the library's buffer are plain memcpy-backed calls, where a
        # numpy slice, np.frombuffer and a row assignment each build an array (1.3 of
        # 3.4 us a page went there; 2.4 us now, the bare decode 1.9). ``data`` is flat
        # contiguous and ``out`` C-contiguous (check_decode_args); the views are released
        # on the way out, so an mmap behind either can still be closed
        ok = [False] * lengths.shape[0]
        if not ok:                    # no blocks (out may have no rows: a view cannot cast that)
            return np.zeros(0, np.bool_)
        ps = self.page_size
        with memoryview(data) as src, memoryview(out) as whole, whole.cast("B") as dst:
            for i, (s, n, r) in enumerate(zip(starts.tolist(), lengths.tolist(), rows.tolist())):
                try:
                    page = self._decompress_one(src[s:s + n])
                except Exception:
                    continue
                # lz4.block silently returns a short page for some corrupt blocks: a page
                # of the wrong length is a failure, never a page
                if len(page) == ps:
                    o = r * ps
                    dst[o:o + ps] = page
                    ok[i] = True
        return np.array(ok, np.bool_)
