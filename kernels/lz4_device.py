"""``lz4-device``: the same LZ4 block codec compiled for the GPU (one page per thread).

:mod:`._lz4_core` is compiled with ``cuda.jit(device=True)`` and GPU helpers that load
bytes one at a time (a misaligned word load faults on a GPU, and numba's simulator
runs plain Python, so nothing target-specific may hide in the shared code). Pages go
to the device raw (one copy per batch), a kernel compresses or decodes each page in
its own thread with its own 16 KiB hash table (interleaved with its neighbours', so
clearing it is coalesced), and blocks come back in one copy. The
output is byte-identical to ``lz4.block`` and ``lz4-njit``.

Over a pool in device memory (``Pool.device_resident``) the frontend asks for
``compress_to_device``: the blocks stay on the device and the pool copies them into
the arena device to device; a load gathers blocks into device memory and decodes them
there. Only raw pages (host to device on store, device to host on load) and int64
metadata cross PCIe. Over a host pool, ``compress_batch`` packs the blocks on the device
(the storage's copy kernel) and brings back exactly their bytes.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
from numba import types

from devpool.codecs.base import Codec, on_device
from devpool.codecs.registry import register_codec
from devpool._errors import DeviceError
from devpool._packed import packed_starts

from . import _copy_kernels as _copy
from . import _lz4_core as core
from ._cuda import cuda, device_function, kernel, launch
from ._device import probe, simulated
from devpool._checks import PAGE_SIZE

__all__ = ["Lz4Device"]

PAGE = PAGE_SIZE          # the one page size (devpool._checks)
TABLE = 1 << core.HASH_U32_LOG


# the GPU's helpers are the plain ones (byte loads: a misaligned word load faults there)
_compress_block, _decompress_block = core.build(device_function, *core.plain_helpers(device_function), hash5=True)

_u8_2d = types.uint8[:, ::1]
_i64 = types.int64[::1]
#: threads per block on a GPU (four warps: one-warp blocks capped a GPU at 32 per SM)
THREADS = 128


@kernel((_u8_2d, _u8_2d, _i64, types.int32[::1], types.int64), threads=THREADS)
def compress_kernel(pages, out, lengths, tables, workers):
    """Grid-stride over pages with ``workers`` threads; thread t's hash table is entries
    ``t, t + workers, t + 2*workers, ...`` of ``tables`` (TABLE of them): interleaved, so
    the 32 lanes of a warp clearing entry k write one contiguous 128-byte line. The stride
    is the number of workers, not the grid: threads past the last worker return, so a
    stride of the whole grid would skip the pages between them."""
    t = cuda.grid(1)
    stride = min(cuda.gridsize(1), workers)
    if t >= workers:
        return
    table = tables[t:TABLE * workers:workers]
    i = t
    while i < pages.shape[0]:
        for k in range(table.shape[0]):
            table[k] = 0
        lengths[i] = _compress_block(pages[i], 0, pages.shape[1], out[i], 0, table)
        i += stride


@kernel((types.uint8[::1], _i64, _i64, _u8_2d, types.boolean[::1]), threads=THREADS)
def decompress_kernel(data, starts, lengths, out, ok):
    i = cuda.grid(1)
    if i < lengths.shape[0]:
        got = _decompress_block(data, starts[i], lengths[i], out[i], 0, out.shape[1])
        ok[i] = got == out.shape[1]


class Lz4Device(Codec):
    """LZ4 raw blocks compressed and decoded on the GPU (byte-compatible with lz4)."""

    codec_id = "lz4-device"
    device_resident = True

    def __init__(self):
        usable, why = probe()
        if not usable:
            raise DeviceError(f"lz4-device needs a CUDA device (or the simulator): {why}")
        self._threads = THREADS if not simulated() else 1
        # device buffers per thread, grown geometrically and reused: a fresh cudaMalloc
        # per batch costs more than a small batch's kernel
        self._local = threading.local()

    def _buffer(self, name: str, rows: int, width: int | None, dtype):
        """A device array of ``rows`` (x ``width``) elements, a view of a reused one."""
        bufs = self._local.__dict__.setdefault("bufs", {})
        have = bufs.get(name)
        if have is None or have.shape[0] < rows:
            cap = max(rows, 2 * (have.shape[0] if have is not None else 0), 16)
            have = cuda.device_array((cap,) if width is None else (cap, width), dtype)
            bufs[name] = have
        return have[:rows]

    def get_config(self) -> dict:
        return {"id": self.codec_id}

    def _grid(self, n: int) -> int:
        return max(1, -(-n // self._threads))

    def _compress_on_device(self, pages, rows):
        """Pages in (one host-to-device copy), one kernel; returns (device blocks, lengths).

        Block ``i`` is row ``i`` of an (N, PAGE_BOUND) device array; only the lengths
        come back to the host."""
        if rows is not None:
            pages = pages[rows]
        n = pages.shape[0]
        workers = max(1, min(n, 4096))
        try:
            with warnings.catch_warnings():          # the simulator's numpy scalars warn on wraparound
                warnings.simplefilter("ignore", RuntimeWarning)
                d_pages = self._buffer("pages", max(n, 1), PAGE, np.uint8)
                d_out = self._buffer("blocks", max(n, 1), core.PAGE_BOUND, np.uint8)
                d_len = self._buffer("lengths", max(n, 1), None, np.int64)
                d_tab = self._buffer("tables", workers * TABLE, None, np.int32)
                if n:
                    d_pages.copy_to_device(pages)                 # the batch's one copy in
                    launch(compress_kernel, self._grid(workers), self._threads, None, d_pages, d_out, d_len, d_tab,
                           workers)
                lengths = d_len.copy_to_host()[:n]
        except Exception as exc:
            raise DeviceError(f"device LZ4 compression of {n} pages failed: {exc}") from exc
        return d_out, lengths

    packed_blocks = True

    def compress_blocks_trusted(self, pages, rows):
        """Blocks packed on the device by the storage's copy kernel, then one copy of
        exactly their bytes to the host (not every 4 KiB row)."""
        d_out, lengths = self._compress_on_device(pages, rows)
        n = lengths.shape[0]
        if n == 0:
            return np.zeros(0, np.uint8), np.zeros(0, np.int64), lengths
        packed = packed_starts(lengths)
        total = int(lengths.sum())
        meta = np.concatenate([np.arange(n, dtype=np.int64) * core.PAGE_BOUND, packed, lengths])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                d_meta = self._buffer("meta", 3 * n, None, np.int64)
                d_meta.copy_to_device(meta)
                d_packed = self._buffer("packed", total, None, np.uint8)
                launch(_copy.copy_kernel, n, _copy.threads_per_block(simulated()), None, d_packed,
                       d_out.reshape(n * core.PAGE_BOUND), d_meta, 0, n, 2 * n, n, 0, 0)
                data = d_packed.copy_to_host()
        except Exception as exc:
            raise DeviceError(f"packing and copying {n} device LZ4 blocks to the host failed: {exc}") from exc
        return data, packed, lengths

    def compress_to_device_trusted(self, pages, rows):
        """Blocks left in device memory: ``(device data, starts, lengths)``."""
        d_out, lengths = self._compress_on_device(pages, rows)
        starts = np.arange(lengths.shape[0], dtype=np.int64) * core.PAGE_BOUND
        return d_out.reshape(d_out.shape[0] * core.PAGE_BOUND), starts, lengths

    def decompress_into_trusted(self, data, lengths, out, rows, starts):
        """Decode on the device; ``data`` may be host bytes or already in device memory."""
        n = lengths.shape[0]
        ok = np.zeros(n, np.bool_)
        if n == 0:
            return ok
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                if on_device(data):
                    d_data = data
                else:
                    d_data = self._buffer("data", max(data.size, 1), None, np.uint8)
                    if data.size:
                        d_data[:data.size].copy_to_device(data)
                d_starts = self._buffer("starts", n, None, np.int64)
                d_starts.copy_to_device(np.ascontiguousarray(starts))
                d_len = self._buffer("lengths", n, None, np.int64)
                d_len.copy_to_device(lengths)
                d_out = self._buffer("pages", n, PAGE, np.uint8)
                d_ok = self._buffer("ok", n, None, np.bool_)
                launch(decompress_kernel, self._grid(n), self._threads, None, d_data, d_starts, d_len, d_out, d_ok)
                ok = d_ok.copy_to_host()
                pages = d_out.copy_to_host()
        except Exception as exc:
            raise DeviceError(f"device LZ4 decompression of {n} blocks failed: {exc}") from exc
        out[rows[ok]] = pages[ok]
        return ok


register_codec(Lz4Device)
