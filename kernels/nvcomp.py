"""``nvcomp-lz4``: NVIDIA nvCOMP's batched LZ4 on the GPU, as a devpool codec.

nvCOMP is what a GPU user would pick for LZ4. Here it runs on the pool's pages with the
RAW bitstream (plain LZ4 blocks, no nvCOMP header) and one 4 KiB chunk per page, so its
blocks are ordinary raw LZ4 blocks: every ``lz4*`` codec decodes them, and it decodes
theirs (its bytes differ from liblz4's: another match finder). Pages go to the device in
one copy, blocks come back in one copy; decoding sends the blocks at 16-byte aligned
offsets (nvCOMP's required alignment, at most 16) in one copy.

Registered when ``nvidia.nvcomp`` imports (``pip install 'devpool[nvcomp]'``); the
import works without a GPU but its ``Codec()`` does not, so ``get_codec("nvcomp-lz4")``
then raises a :class:`~devpool.DeviceError` saying why.
"""

from __future__ import annotations

import nvidia.nvcomp as nvcomp   # not ``from nvidia import nvcomp``: with the CUDA wheels the
import numpy as np                # ``nvidia`` namespace always exists, and that form then raises a plain
                                  # ImportError where this raises ModuleNotFoundError (nvCOMP absent)

from devpool.codecs.base import Codec, _pack_blocks, check_decode_args, check_pages, check_rows
from devpool.codecs.registry import register_codec
from devpool._errors import DeviceError
from devpool._checks import PAGE_SIZE

__all__ = ["NvcompLz4"]

PAGE = PAGE_SIZE          # the one page size (devpool._checks)
ALIGN = 16


class NvcompLz4(Codec):
    """nvCOMP's batched LZ4 (RAW blocks, 4 KiB chunks) on the current CUDA device."""

    codec_id = "nvcomp-lz4"

    def __init__(self):
        try:
            import cupy
            self._cp = cupy
            self._codec = nvcomp.Codec(algorithm="LZ4", bitstream_kind=nvcomp.BitstreamKind.RAW,
                                       uncomp_chunk_size=PAGE)
        except Exception as exc:
            raise DeviceError(f"nvcomp-lz4 cannot run here (nvCOMP {nvcomp.__version__} needs a CUDA GPU, "
                              f"its driver and CuPy): {type(exc).__name__}: {exc}") from exc

    def get_config(self) -> dict:
        return {"id": self.codec_id}

    def compress_batch(self, pages, rows=None):
        pages = check_pages(pages, self.page_size)
        if rows is not None:
            pages = pages[check_rows(rows, pages.shape[0])]
        n = pages.shape[0]
        if n == 0:
            return np.zeros(0, np.uint8), np.zeros(0, np.int64)
        try:
            d = self._cp.asarray(np.ascontiguousarray(pages).reshape(-1))           # one copy in
            enc = self._codec.encode(nvcomp.as_arrays(d, (np.arange(n) * PAGE).tolist(), [PAGE] * n))
            host = enc.cpu()                                                        # one copy out
            blocks = [np.asarray(host[i]).view(np.uint8).reshape(-1).tobytes() for i in range(n)]
        except Exception as exc:
            raise DeviceError(f"nvCOMP LZ4 compression of {n} pages failed: {exc}") from exc
        return _pack_blocks(blocks)

    def _decode(self, data, starts, lengths) -> list:
        """Decoded pages (host arrays) of the blocks, or raises."""
        room = -(-lengths // ALIGN) * ALIGN
        at = np.concatenate([[0], np.cumsum(room)[:-1]]).astype(np.int64)
        buf = np.zeros(max(int(room.sum()), ALIGN), np.uint8)
        for a, s, n in zip(at.tolist(), starts.tolist(), lengths.tolist()):
            buf[a:a + n] = data[s:s + n]
        dec = self._codec.decode(nvcomp.as_arrays(self._cp.asarray(buf), at.tolist(), lengths.tolist()))
        sizes = dec.buffer_sizes
        host = dec.cpu()
        return [np.asarray(host[i]).view(np.uint8).reshape(-1) if sizes[i] == PAGE else None
                for i in range(len(sizes))]

    def decompress_into(self, data, lengths, out, rows=None, starts=None):
        data, lengths, rows, starts = check_decode_args(data, lengths, out, rows, starts, self.page_size)
        n = lengths.shape[0]
        ok = np.zeros(n, np.bool_)
        todo = np.flatnonzero(lengths > 0)                   # an empty block is no page
        if todo.size == 0:
            return ok
        try:
            pages = self._decode(data, starts[todo], lengths[todo])
        except Exception:                                    # a corrupt block may fail the batch:
            pages = []                                       # then each block on its own
            for i in todo.tolist():
                try:
                    pages.append(self._decode(data, starts[i:i + 1], lengths[i:i + 1])[0])
                except Exception:
                    pages.append(None)
        for i, page in zip(todo.tolist(), pages):
            if page is not None and page.size == PAGE:
                out[rows[i]] = page
                ok[i] = True
        return ok


register_codec(NvcompLz4)
