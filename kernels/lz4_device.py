"""``lz4-device``: the same LZ4 block codec compiled for the GPU (one page per thread).

:mod:`._lz4_core` is compiled with ``cuda.jit(device=True)`` and GPU helpers that load
bytes one at a time (a misaligned word load faults on a GPU, and numba's simulator
runs plain Python, so nothing target-specific may hide in the shared code). Pages go
to the device raw (one copy per batch), a kernel compresses or decodes each page in
its own thread with its own 16 KiB hash table, and blocks come back in one copy. The
output is byte-identical to ``lz4.block`` and ``lz4-njit``.

Not done yet: compressing straight into the device arena (so that compressed blocks
never cross PCIe) needs a pool verb that takes pages and a codec; today the blocks
return to the host and are written to the pool like any codec's.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba import cuda

from devpool._codecs import Codec, check_pages, register_codec
from devpool._errors import DeviceError
from devpool._packed import gather, packed_starts

from . import _lz4_core as core
from ._device import probe, simulated

__all__ = ["Lz4Device"]

PAGE = 4096
TABLE = 1 << core.HASH_U32_LOG


# the GPU's helpers are the plain ones (byte loads: a misaligned word load faults there)
_compress_block, _decompress_block = core.build(
    cuda.jit(device=True), *core.plain_helpers(cuda.jit(device=True)), hash5=True)


@cuda.jit
def compress_kernel(pages, out, lengths, tables):
    """Grid-stride over pages; thread t uses hash table ``tables[t]``."""
    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    if t >= tables.shape[0]:
        return
    table = tables[t]
    i = t
    while i < pages.shape[0]:
        for k in range(table.shape[0]):
            table[k] = 0
        lengths[i] = _compress_block(pages[i], 0, pages.shape[1], out[i], 0, table, 0)
        i += stride


@cuda.jit
def decompress_kernel(data, starts, lengths, out, ok):
    i = cuda.grid(1)
    if i < lengths.shape[0]:
        got = _decompress_block(data, starts[i], lengths[i], out[i], 0, out.shape[1])
        ok[i] = got == out.shape[1]


class Lz4Device(Codec):
    """LZ4 raw blocks compressed and decoded on the GPU (byte-compatible with lz4)."""

    codec_id = "lz4-device"

    def __init__(self):
        usable, why = probe()
        if not usable:
            raise DeviceError(f"lz4-device needs a CUDA device (or the simulator): {why}")
        self._threads = 32 if not simulated() else 1

    def get_config(self) -> dict:
        return {"id": self.codec_id}

    def _grid(self, n: int) -> int:
        return max(1, -(-n // self._threads))

    def compress_batch(self, pages, rows=None):
        pages = check_pages(pages, self.page_size)
        if rows is not None:
            pages = pages[np.asarray(rows, np.int64)]
        n = pages.shape[0]
        if n == 0:
            return np.zeros(0, np.uint8), np.zeros(0, np.int64)
        workers = min(n, 4096)
        try:
            with warnings.catch_warnings():          # the simulator's numpy scalars warn on wraparound
                warnings.simplefilter("ignore", RuntimeWarning)
                d_pages = cuda.to_device(pages)
                d_out = cuda.device_array((n, core.PAGE_BOUND), np.uint8)
                d_len = cuda.device_array(n, np.int64)
                d_tab = cuda.device_array((workers, TABLE), np.int32)
                compress_kernel[self._grid(workers), self._threads](d_pages, d_out, d_len, d_tab)
                lengths = d_len.copy_to_host()
                rows_out = d_out.copy_to_host()
        except Exception as exc:
            raise DeviceError(f"device LZ4 compression of {n} pages failed: {exc}") from exc
        data = np.empty(int(lengths.sum()), np.uint8)
        gather(rows_out.reshape(-1), np.arange(n, dtype=np.int64) * core.PAGE_BOUND, lengths, data,
               packed_starts(lengths))
        return data, lengths

    def decompress_into(self, data, lengths, out, rows=None):
        lengths = np.asarray(lengths, np.int64)
        n = lengths.shape[0]
        ok = np.zeros(n, np.bool_)
        if n == 0:
            return ok
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                d_data = cuda.to_device(np.ascontiguousarray(data, np.uint8) if data.size else np.zeros(1, np.uint8))
                d_starts = cuda.to_device(packed_starts(lengths))
                d_len = cuda.to_device(lengths)
                d_out = cuda.device_array((n, PAGE), np.uint8)
                d_ok = cuda.device_array(n, np.bool_)
                decompress_kernel[self._grid(n), self._threads](d_data, d_starts, d_len, d_out, d_ok)
                ok = d_ok.copy_to_host()
                pages = d_out.copy_to_host()
        except Exception as exc:
            raise DeviceError(f"device LZ4 decompression of {n} blocks failed: {exc}") from exc
        dst = np.arange(n) if rows is None else np.asarray(rows, np.int64)
        out[dst[ok]] = pages[ok]
        return ok


register_codec(Lz4Device)
