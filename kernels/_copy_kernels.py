"""The device storage's one kernel: copy many byte ranges (scatter, gather and moves).

``copy_kernel(dst, src, meta, src_col, dst_col, len_col, n, dst_shift, src_shift)``
copies object ``i`` (``i < n``) of ``meta[len_col + i]`` bytes from
``src[src_shift + meta[src_col + i]:]`` to ``dst[dst_shift + meta[dst_col + i]:]``. The
int64 columns live in the storage's staging buffer, which the storage wraps for numba
once (``meta`` is the whole buffer seen as int64, the columns are indices into it, so
no column can start at a misaligned address and no launch builds a view or slice). A
scatter (copy-in) is a copy into the arena, a gather (copy-out) a copy out of it, a
compaction a gather into device staging and a scatter back: the storage names which
when it launches, so an error still says which step failed. This is
:func:`devpool._packed.copy_ranges` for device memory.

One CUDA block per object; its threads stride over the object's bytes, so neighbouring
threads touch neighbouring bytes (coalesced) and a batch of any size is one launch.
The per-object loop is a device function written once and also compiled with
``numba.njit`` (``cpu_copy``): numba's CUDA simulator runs kernels as plain Python and
does not reproduce numba's integer typing, so the compiled twin is what catches a typing
mistake on the CPU.

Launch geometry: ``THREADS`` per block on a GPU; the simulator runs one Python thread
per CUDA thread, so it gets a handful.
"""

from __future__ import annotations

import numba
from numba import types

from ._cuda import cuda, device_function, kernel

__all__ = ["THREADS", "copy_kernel", "cpu_copy", "threads_per_block"]

#: threads per block on a GPU
THREADS = 256

_u8 = types.uint8[::1]
_i64 = types.int64[::1]
#: the one signature every launch uses (the storage passes Python ints for the scalars)
SIGNATURE = (_u8, _u8, _i64, types.int64, types.int64, types.int64, types.int64, types.int64, types.int64)


def _copy_part(dst, d, src, s, n, first, step):
    """Bytes ``first, first+step, ...`` of an ``n``-byte object from ``src[s:]`` to ``dst[d:]``."""
    k = first
    while k < n:
        dst[d + k] = src[s + k]
        k += step


_copy_part_device = device_function(_copy_part)
_copy_part_cpu = numba.njit(inline="always")(_copy_part)


@kernel(SIGNATURE, threads=THREADS)
def copy_kernel(dst, src, meta, src_col, dst_col, len_col, n, dst_shift, src_shift):
    """Object ``blockIdx.x`` (see the module doc for the columns)."""
    i = cuda.blockIdx.x
    if i < n:
        _copy_part_device(dst, dst_shift + meta[dst_col + i], src, src_shift + meta[src_col + i],
                          meta[len_col + i], cuda.threadIdx.x, cuda.blockDim.x)


@numba.njit(boundscheck=True)
def cpu_copy(dst, src, meta, src_col, dst_col, len_col, n, dst_shift, src_shift, threads):
    """The copy kernel's logic on the CPU: every (block, thread) in turn."""
    for i in range(n):
        for t in range(threads):
            _copy_part_cpu(dst, dst_shift + meta[dst_col + i], src, src_shift + meta[src_col + i],
                           meta[len_col + i], t, threads)


def threads_per_block(simulated: bool) -> int:
    return 4 if simulated else THREADS
