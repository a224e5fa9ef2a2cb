"""The device storage's one kernel: copy many byte ranges (scatter, gather and moves).

``copy_kernel(dst, src, dst8, src8, meta, src_col, dst_col, len_col, n, dst_shift,
src_shift, wide)`` copies object ``i`` (``i < n``) of ``meta[len_col + i]`` bytes from
``src[src_shift + meta[src_col + i]:]`` to ``dst[dst_shift + meta[dst_col + i]:]``. The
int64 columns live in the storage's staging buffer, which the storage wraps for numba
once (``meta`` is the whole buffer seen as int64, the columns are indices into it, so
no column can start at a misaligned address and no launch builds a view or slice). A
scatter (copy-in) is a copy into the arena, a gather (copy-out) a copy out of it, a
compaction a gather into device staging and a scatter back: the storage names which
when it launches, so an error still says which step failed. This is
:func:`devpool._packed.copy_ranges` for device memory.

One CUDA block per object; its threads stride over the object, so neighbouring threads
touch neighbouring words (coalesced) and a batch of any size is one launch. Wide words:
``dst8`` / ``src8`` are the same buffers seen as uint64 (both start 8-aligned: cudaMalloc
gives 256, the arena's mapping its granularity), and when ``wide`` is 1 an object's
bytes up to the first 8-aligned destination go one by one, every whole destination word
in the middle as one 8-byte store (from one source word where the offsets agree modulo
8, else from two neighbouring source words shifted together: compaction moves objects
to any offset), the last under 8 bytes one by one: a 4 KiB page is 512 word stores
instead of 4096 byte stores, so compaction of tens of GB is not bound by instruction
count. A buffer that cannot be seen as uint64 (``wide`` 0) goes byte by byte. The per-object loop is a device function written once and also
compiled with ``numba.njit`` (``cpu_copy``): numba's CUDA simulator runs kernels as
plain Python and does not reproduce numba's integer typing, so the compiled twin is
what catches a typing mistake on the CPU, and the tests run it over every alignment.

Launch geometry: ``THREADS`` per block on a GPU (an object of 4 KiB is 512 words: four
warps give each thread four); the simulator runs one Python thread per CUDA thread, so
it gets a handful.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

from ._cuda import cuda, device_function, kernel

__all__ = ["THREADS", "copy_kernel", "cpu_copy", "threads_per_block", "words"]

#: threads per block on a GPU
THREADS = 128
#: bytes per wide word
WORD = 8

_u8 = types.uint8[::1]
_u64 = types.uint64[::1]
_i64 = types.int64[::1]
#: the one signature every launch uses (the storage passes Python ints for the scalars)
SIGNATURE = (_u8, _u8, _u64, _u64, _i64, types.int64, types.int64, types.int64, types.int64, types.int64,
             types.int64, types.int64)


def _copy_part(dst, d, src, s, n, first, step, dst8, src8, wide):
    """This thread's share (``first``, ``first + step``, ...) of an ``n``-byte object
    from ``src[s:]`` to ``dst[d:]``: with ``wide``, every whole 8-byte word of the
    destination is written as one (from one source word, or two shifted together where
    the source sits at another offset modulo 8), the ragged ends byte by byte."""
    head = n
    if wide != 0:
        head = min(n, (8 - d % 8) % 8)        # bytes before the first 8-aligned destination
    k = first
    while k < head:
        dst[d + k] = src[s + k]
        k += step
    if head < n:
        words = (n - head) // 8
        dw = (d + head) // 8
        sw = (s + head) // 8
        shift = (s + head) % 8
        k = first
        if shift == 0:
            while k < words:
                dst8[dw + k] = src8[sw + k]
                k += step
        else:
            # little-endian: the word's low bytes are the end of source word sw + k, its high
            # bytes the start of the next, which the object itself reaches into (no read past it)
            right = numba.uint64(8 * shift)
            left = numba.uint64(64 - 8 * shift)
            while k < words:
                dst8[dw + k] = (src8[sw + k] >> right) | (src8[sw + k + 1] << left)
                k += step
        k = head + words * 8 + first          # the last, under 8 bytes
        while k < n:
            dst[d + k] = src[s + k]
            k += step


_copy_part_device = device_function(_copy_part)
_copy_part_cpu = numba.njit(inline="always")(_copy_part)


@kernel(SIGNATURE, threads=THREADS)
def copy_kernel(dst, src, dst8, src8, meta, src_col, dst_col, len_col, n, dst_shift, src_shift, wide):
    """Object ``blockIdx.x`` (see the module doc for the columns)."""
    i = cuda.blockIdx.x
    if i < n:
        _copy_part_device(dst, dst_shift + meta[dst_col + i], src, src_shift + meta[src_col + i],
                          meta[len_col + i], cuda.threadIdx.x, cuda.blockDim.x, dst8, src8, wide)


@numba.njit(boundscheck=True)
def cpu_copy(dst, src, dst8, src8, meta, src_col, dst_col, len_col, n, dst_shift, src_shift, wide, threads):
    """The copy kernel's logic on the CPU: every (block, thread) in turn."""
    for i in range(n):
        for t in range(threads):
            _copy_part_cpu(dst, dst_shift + meta[dst_col + i], src, src_shift + meta[src_col + i],
                           meta[len_col + i], t, threads, dst8, src8, wide)


def threads_per_block(simulated: bool) -> int:
    return 4 if simulated else THREADS


def words(buf):
    """``buf`` (a uint8 device or host array) seen as uint64 for the wide path, and
    whether it may be: ``(view, 1)``, or ``(None, 0)`` when it starts off an 8-byte
    boundary or its length is not whole words (the kernel then copies bytes)."""
    from ._cuda import _address
    addr = _address(buf)
    if addr is None or addr % WORD or buf.shape[0] % WORD:
        return None, 0
    try:
        return buf.view(np.uint64), 1
    except Exception:                          # noqa: BLE001 - a view the array type refuses
        return None, 0
