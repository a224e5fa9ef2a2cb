"""``lz4-device``: the same LZ4 block codec compiled for the GPU (one page per thread).

:mod:`._lz4_core` is compiled with ``cuda.jit(device=True)`` and GPU helpers that load
bytes one at a time (a misaligned word load faults on a GPU, and numba's simulator
runs plain Python, so nothing target-specific may hide in the shared code). A kernel
compresses or decodes each page in its own thread, a compressing worker with its own
16 KiB hash table (interleaved with its neighbours', so clearing it is coalesced); the
grid covers every multiprocessor (``WORKERS_PER_SM`` workers each, blocks of
``THREADS``). The output is byte-identical to ``lz4.block`` and ``lz4-njit``.

Each thread has its own non-blocking stream and its own staging (``_Staging``): one
pinned host area and device areas, grown and reused. A batch is one copy in from the
pinned area (pages; or block offsets, lengths and blocks), one kernel, one copy out
into the pinned area (lengths; or pages and their ok flags) and one synchronisation:
no pageable transfer, no fresh host array per call, nothing on the legacy default
stream. The storage's copies run on its own stream; the two meet only through host
synchronisation (each side's call returns after its stream is done), so they stay
ordered without the codec knowing the storage.

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

import numba.cuda
import numpy as np
from numba import types

from devpool.codecs.base import Codec, check_decode_args, check_pages, check_rows, on_device
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
#: threads per block on a GPU: two warps, so the grid has blocks for every multiprocessor
#: (a grid of 32 blocks of 128 threads had left 100 of an H100's 132 idle)
THREADS = 64
#: compression workers per multiprocessor (each has a 16 KiB hash table in device memory:
#: 132 SMs x 128 = 16 896 workers, 264 MiB of tables on an H100)
WORKERS_PER_SM = 128


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


class _Staging:
    """One thread's working set: its own non-blocking stream, one pinned host area and
    one device area per role, each grown geometrically and reused (a fresh cudaMalloc or
    pinned allocation per batch costs more than a small batch's kernel).

    Host code reaches numba's CUDA API as ``numba.cuda``, never through this module's
    ``cuda``: while a kernel runs, the simulator swaps every global bound to that module
    for its kernel-side stand-in, and another thread's staging would meet that."""

    def __init__(self):
        self.stream = numba.cuda.stream()
        self.host = np.zeros(0, np.uint8)
        self.dev: dict = {}

    def pinned(self, nbytes: int) -> np.ndarray:
        """The pinned host area, at least ``nbytes`` (its contents do not survive a growth)."""
        if self.host.size < nbytes:
            self.host = numba.cuda.pinned_array(_grown(nbytes, self.host.size), np.uint8)
        return self.host

    def device(self, role: str, nbytes: int):
        """The device area of ``role`` (uint8, whole: its uint64 view is the copy
        kernel's wide path), at least ``nbytes``."""
        have = self.dev.get(role)
        if have is None or have.shape[0] < nbytes:
            have = self.dev[role] = numba.cuda.device_array(_grown(nbytes, 0 if have is None else have.shape[0]),
                                                            np.uint8)
        return have


def _grown(nbytes: int, have: int) -> int:
    return -(-max(nbytes, 2 * have, 1 << 16) // (1 << 16)) * (1 << 16)


def _launch_geometry() -> tuple[int, int]:
    """(threads per block, streaming multiprocessors) on this device."""
    if simulated():
        return 1, 1                          # one Python thread per CUDA thread: keep it small
    sms = getattr(numba.cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 0) or 1
    return THREADS, int(sms)


class Lz4Device(Codec):
    """LZ4 raw blocks compressed and decoded on the GPU (byte-compatible with lz4)."""

    codec_id = "lz4-device"
    device_resident = True

    def __init__(self):
        usable, why = probe()
        if not usable:
            raise DeviceError(f"lz4-device needs a CUDA device (or the simulator): {why}")
        self._threads, self._sms = _launch_geometry()
        self._local = threading.local()

    def _state(self) -> _Staging:
        st = getattr(self._local, "staging", None)
        if st is None:
            st = self._local.staging = _Staging()
        return st

    def get_config(self) -> dict:
        return {"id": self.codec_id}

    def _grid(self, n: int) -> int:
        return max(1, -(-n // self._threads))

    def workers(self, n: int) -> int:
        """Compression threads for ``n`` pages: ``WORKERS_PER_SM`` on every
        multiprocessor (each with a 16 KiB hash table in device memory), at most one
        per page."""
        return max(1, min(n, WORKERS_PER_SM * self._sms))

    def _compress_on_device(self, pages, rows):
        """Pages in (one copy from pinned staging), one kernel, the lengths back (one
        copy into pinned staging), one synchronisation; returns (device blocks as an
        (N, PAGE_BOUND) array, lengths). The blocks stay in this thread's staging,
        valid until its next call."""
        pages = check_pages(pages, self.page_size)
        if rows is not None:
            pages = pages[check_rows(rows, pages.shape[0])]
        n = pages.shape[0]
        st = self._state()
        workers = self.workers(n)
        try:
            with warnings.catch_warnings():          # the simulator's numpy scalars warn on wraparound
                warnings.simplefilter("ignore", RuntimeWarning)
                host = st.pinned(n * PAGE + 8 * n)
                d_pages = st.device("pages", max(n, 1) * PAGE)
                d_out = st.device("blocks", max(n, 1) * core.PAGE_BOUND)
                d_len = st.device("lengths", 8 * max(n, 1))[:8 * max(n, 1)].view(np.int64)
                d_tab = st.device("tables", 4 * workers * TABLE)[:4 * workers * TABLE].view(np.int32)
                lengths = host[n * PAGE:n * PAGE + 8 * n].view(np.int64)
                if n:
                    host[:n * PAGE] = pages.reshape(-1)
                    d_pages[:n * PAGE].copy_to_device(host[:n * PAGE], stream=st.stream)   # the batch's one copy in
                    launch(compress_kernel, self._grid(workers), self._threads, st.stream,
                           d_pages[:n * PAGE].reshape(n, PAGE), d_out[:n * core.PAGE_BOUND].reshape(n, core.PAGE_BOUND),
                           d_len[:n], d_tab, workers)
                    d_len[:n].copy_to_host(lengths, stream=st.stream)
                    st.stream.synchronize()
        except Exception as exc:
            raise DeviceError(f"device LZ4 compression of {n} pages failed: {exc}") from exc
        return d_out[:max(n, 1) * core.PAGE_BOUND].reshape(max(n, 1), core.PAGE_BOUND), lengths.copy()

    def compress_batch(self, pages, rows=None):
        """Blocks packed on the device by the storage's copy kernel (one metadata copy
        in, one copy of exactly their bytes out, one synchronisation)."""
        d_out, lengths = self._compress_on_device(pages, rows)
        n = lengths.shape[0]
        if n == 0:
            return np.zeros(0, np.uint8), lengths
        packed = packed_starts(lengths)
        total = int(lengths.sum())
        st = self._state()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                host = st.pinned(24 * n + total)
                meta = host[:24 * n].view(np.int64)
                meta[:n] = np.arange(n, dtype=np.int64) * core.PAGE_BOUND
                meta[n:2 * n] = packed
                meta[2 * n:] = lengths
                d_meta = st.device("meta", 24 * n)
                d_meta[:24 * n].copy_to_device(host[:24 * n], stream=st.stream)
                d_packed = st.device("packed", total)
                blocks = st.device("blocks", 0)                      # d_out's whole area (uint64-viewable)
                _, wide = _copy.words(blocks)
                _, wide_dst = _copy.words(d_packed)
                launch(_copy.copy_kernel, n, _copy.threads_per_block(simulated()), st.stream, d_packed, blocks,
                       d_packed.view(np.uint64), blocks.view(np.uint64), d_meta[:24 * n].view(np.int64),
                       0, n, 2 * n, n, 0, 0, wide & wide_dst)
                d_packed[:total].copy_to_host(host[24 * n:24 * n + total], stream=st.stream)
                st.stream.synchronize()
                data = host[24 * n:24 * n + total].copy()
        except Exception as exc:
            raise DeviceError(f"packing and copying {n} device LZ4 blocks to the host failed: {exc}") from exc
        return data, lengths

    def compress_to_device(self, pages, rows=None):
        """Blocks left in device memory: ``(device data, starts, lengths)``, valid until
        this thread's next call (the pool copies them into its arena at once)."""
        d_out, lengths = self._compress_on_device(pages, rows)
        starts = np.arange(lengths.shape[0], dtype=np.int64) * core.PAGE_BOUND
        return d_out.reshape(d_out.shape[0] * core.PAGE_BOUND), starts, lengths

    def decompress_into(self, data, lengths, out, rows=None, starts=None):
        """Decode on the device; ``data`` may be host bytes or already in device memory.
        One copy in from pinned staging (starts, lengths and, from the host, the blocks),
        one kernel, one copy out (pages and their ok flags), one synchronisation."""
        data, lengths, rows, starts = check_decode_args(data, lengths, out, rows, starts, self.page_size,
                                                        device_ok=True)
        n = lengths.shape[0]
        ok = np.zeros(n, np.bool_)
        if n == 0:
            return ok
        st = self._state()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                blocks_in = 0 if on_device(data) else int(data.size)
                inbytes = 16 * n + blocks_in
                outbytes = n * PAGE + n
                host = st.pinned(max(inbytes, outbytes))
                cols = host[:16 * n].view(np.int64)
                cols[:n] = starts
                cols[n:] = lengths
                if blocks_in:
                    host[16 * n:inbytes] = data
                d_in = st.device("in", inbytes)
                d_in[:inbytes].copy_to_device(host[:inbytes], stream=st.stream)   # the batch's one copy in
                d_data = data if on_device(data) else d_in[16 * n:16 * n + max(blocks_in, 1)]
                d_res = st.device("out", outbytes)
                d_pages = d_res[:n * PAGE].reshape(n, PAGE)
                d_ok = d_res[n * PAGE:outbytes].view(np.bool_)
                launch(decompress_kernel, self._grid(n), self._threads, st.stream, d_data,
                       d_in[:8 * n].view(np.int64), d_in[8 * n:16 * n].view(np.int64), d_pages, d_ok)
                # stream order: the copy in has read the pinned area before this writes it
                d_res[:outbytes].copy_to_host(host[:outbytes], stream=st.stream)  # the batch's one copy out
                st.stream.synchronize()
                ok = host[n * PAGE:outbytes].view(np.bool_).copy()
                pages = host[:n * PAGE].reshape(n, PAGE)
                out[rows[ok]] = pages[ok]
        except Exception as exc:
            raise DeviceError(f"device LZ4 decompression of {n} blocks failed: {exc}") from exc
        return ok


register_codec(Lz4Device)
