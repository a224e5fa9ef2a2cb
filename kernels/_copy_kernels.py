"""The device storage's one kernel: copy many byte ranges (scatter, gather and moves).

``copy_kernel(dst, dst_starts, src, src_starts, lengths)`` copies object ``i`` from
``src[src_starts[i]:+lengths[i]]`` to ``dst[dst_starts[i]:]``. A scatter (copy-in) is a
copy into the arena, a gather (copy-out) a copy out of it, a compaction a gather into a
device temporary and a scatter back: the storage names which when it launches, so an
error still says which step failed. This is :func:`devpool._packed.copy_ranges` for
device memory.

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
from numba import cuda

__all__ = ["copy_kernel", "cpu_copy", "threads_per_block"]


def _copy_part(dst, d, src, s, n, first, step):
    """Bytes ``first, first+step, ...`` of an ``n``-byte object from ``src[s:]`` to ``dst[d:]``."""
    k = first
    while k < n:
        dst[d + k] = src[s + k]
        k += step


_copy_part_device = cuda.jit(device=True)(_copy_part)
_copy_part_cpu = numba.njit(inline="always")(_copy_part)


@cuda.jit
def copy_kernel(dst, dst_starts, src, src_starts, lengths):
    """Object ``blockIdx.x``: ``src[src_starts[i]:+lengths[i]]`` -> ``dst[dst_starts[i]:]``."""
    i = cuda.blockIdx.x
    if i < lengths.shape[0]:
        _copy_part_device(dst, dst_starts[i], src, src_starts[i], lengths[i],
                          cuda.threadIdx.x, cuda.blockDim.x)


@numba.njit(boundscheck=True)
def cpu_copy(dst, dst_starts, src, src_starts, lengths, threads):
    """The copy kernel's logic on the CPU: every (block, thread) in turn."""
    for i in range(lengths.shape[0]):
        for t in range(threads):
            _copy_part_cpu(dst, dst_starts[i], src, src_starts[i], lengths[i], t, threads)


def threads_per_block(simulated: bool) -> int:
    return 4 if simulated else 256
