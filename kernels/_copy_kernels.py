"""The device storage's kernels: scatter (copy-in), gather (copy-out), both for moves.

One CUDA block per object; its threads stride over the object's bytes, so neighbouring
threads touch neighbouring bytes (coalesced) and a batch of any size is one launch.
The per-object loop is a device function written once and also compiled with
``numba.njit`` (``cpu_scatter`` / ``cpu_gather``): numba's CUDA simulator runs kernels
as plain Python and does not reproduce numba's integer typing, so the compiled twin is
what catches a typing mistake on the CPU.

Launch geometry: ``THREADS`` per block on a GPU; the simulator runs one Python thread
per CUDA thread, so it gets a handful.
"""

from __future__ import annotations

import numba
from numba import cuda

__all__ = ["cpu_gather", "cpu_scatter", "gather_kernel", "scatter_kernel", "threads_per_block"]


def _copy_part(dst, d, src, s, n, first, step):
    """Bytes ``first, first+step, ...`` of an ``n``-byte object from ``src[s:]`` to ``dst[d:]``."""
    k = first
    while k < n:
        dst[d + k] = src[s + k]
        k += step


_copy_part_device = cuda.jit(device=True)(_copy_part)
_copy_part_cpu = numba.njit(inline="always")(_copy_part)


@cuda.jit
def scatter_kernel(arena, staging, src_starts, dst_offsets, lengths):
    """Object ``blockIdx.x``: ``staging[src_starts[i]:+lengths[i]]`` -> ``arena[dst_offsets[i]:]``."""
    i = cuda.blockIdx.x
    if i < lengths.shape[0]:
        _copy_part_device(arena, dst_offsets[i], staging, src_starts[i], lengths[i],
                          cuda.threadIdx.x, cuda.blockDim.x)


@cuda.jit
def gather_kernel(arena, offsets, lengths, staging, out_starts):
    """Object ``blockIdx.x``: ``arena[offsets[i]:+lengths[i]]`` -> ``staging[out_starts[i]:]``."""
    i = cuda.blockIdx.x
    if i < lengths.shape[0]:
        _copy_part_device(staging, out_starts[i], arena, offsets[i], lengths[i],
                          cuda.threadIdx.x, cuda.blockDim.x)


@numba.njit(boundscheck=True)
def cpu_scatter(arena, staging, src_starts, dst_offsets, lengths, threads):
    """The scatter kernel's logic on the CPU: every (block, thread) in turn."""
    for i in range(lengths.shape[0]):
        for t in range(threads):
            _copy_part_cpu(arena, dst_offsets[i], staging, src_starts[i], lengths[i], t, threads)


@numba.njit(boundscheck=True)
def cpu_gather(arena, offsets, lengths, staging, out_starts, threads):
    """The gather kernel's logic on the CPU: every (block, thread) in turn."""
    for i in range(lengths.shape[0]):
        for t in range(threads):
            _copy_part_cpu(staging, out_starts[i], arena, offsets[i], lengths[i], t, threads)


def threads_per_block(simulated: bool) -> int:
    return 4 if simulated else 256
