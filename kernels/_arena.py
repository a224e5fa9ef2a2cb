"""The device storage's arena: one linear range of device memory that grows in place.

A pool must be able to use most of the card. Growing one allocation by reallocation
(allocate the larger one, copy, free the old) holds both at once: on an 80 GB card a
pool stopped between 32 and 47 GB. ``MappedArena`` reserves the pool's whole capacity
once as *virtual* addresses (CUDA's virtual memory management: ``cuMemAddressReserve``)
and maps physical memory into it a chunk at a time as the pool grows (``cuMemCreate``,
``cuMemMap``, ``cuMemSetAccess``) and out of it as it shrinks: the arena never moves,
nothing is copied, and the physical memory held is at most the arena's size rounded up
to one chunk, also while it grows.

Chunks are the granularity the driver recommends (2 MiB on current GPUs) or a 64th of
the capacity if larger, at most 256 MiB: a 60 GB pool maps ~240 chunks, a test's 1 MiB
pool one of 2 MiB.

A growth that fails part-way (the card is full) unmaps what it mapped and raises; what
was mapped before is untouched, so the pool's contents survive a refused growth.

``ReallocArena`` is the fallback where virtual memory management is not available (no
``cuda-bindings``, a driver that refuses it): one allocation, grown by at least 1.5x with
a device-to-device copy, outside CuPy's pool so a freed arena goes back to the driver
at once. It says why it is used (``describe``).

The mapping is done by a *driver* object (``reserve``, ``create``, ``map``, ``unmap``,
``release``, ``free``, ``views``): ``CudaVmm`` on a GPU (``cuda.bindings.driver``),
``SimVmm`` under numba's CUDA simulator (one lazily committed host mapping; mapped chunks
start poisoned, as uninitialised device memory is garbage), and any stand-in a test
needs. The growth logic is the arena's, the same over every driver.
"""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["CudaVmm", "MappedArena", "ReallocArena", "SimVmm", "chunk_size"]

#: the largest chunk: a pool's memory is held to within one chunk of what it commits
MAX_CHUNK = 256 << 20


def _round_up(n: int, to: int) -> int:
    return -(-int(n) // to) * to


def chunk_size(capacity: int, granularity: int) -> int:
    """The mapping unit for a pool of ``capacity`` bytes (see the module doc)."""
    want = min(MAX_CHUNK, max(granularity, int(capacity) // 64))
    return _round_up(want, granularity)


class MappedArena:
    """A reserved virtual range, physical memory mapped in chunks as it grows."""

    kind = "mapped"

    def __init__(self, driver, capacity: int):
        self.driver = driver
        self.chunk = chunk_size(capacity, driver.granularity)
        self.reserved = _round_up(max(int(capacity), 1), self.chunk)
        self.base = driver.reserve(self.reserved)
        self.handles: list = []              # chunk k is mapped at base + k * chunk
        self.size = 0                        # bytes mapped, from base
        self.peak = 0                        # the most ever mapped (what the card held)
        self.buf = self.k = None             # views for copies and for kernels, made per size
        self.why = f"virtual range of {self.reserved} bytes reserved, mapped in {self.chunk}-byte chunks"

    def target(self, end: int, capacity: int) -> int:
        """The size to grow to for ``end`` (no copy, so no headroom needed)."""
        return min(_round_up(end, self.chunk), self.reserved)

    def worth_shrinking(self, top: int) -> bool:
        return _round_up(top, self.chunk) < self.size

    def resize(self, nbytes: int, copy=None) -> None:
        """Map or unmap chunks so ``[0, nbytes)`` is mapped (rounded up to a chunk).
        Raises what the driver raises (MemoryError: the card is full), leaving the
        arena as it was."""
        want = _round_up(nbytes, self.chunk) // self.chunk
        if want * self.chunk > self.reserved:
            raise ValueError(f"{nbytes} bytes is beyond the arena's reserved {self.reserved}")
        have = len(self.handles)
        if want > have:
            added = []
            try:
                for k in range(have, want):
                    h = self.driver.create(self.chunk)
                    try:
                        self.driver.map(self.base + k * self.chunk, self.chunk, h)
                    except BaseException:
                        self.driver.release(h)
                        raise
                    added.append(h)
                    self.peak = max(self.peak, (have + len(added)) * self.chunk)
            except BaseException:
                for i in reversed(range(len(added))):           # unwind this growth only
                    self.driver.unmap(self.base + (have + i) * self.chunk, self.chunk)
                    self.driver.release(added[i])
                raise
            self.handles += added
        else:
            while len(self.handles) > want:
                k = len(self.handles) - 1
                self.driver.unmap(self.base + k * self.chunk, self.chunk)
                self.driver.release(self.handles.pop())
        self.size = len(self.handles) * self.chunk
        self.buf, self.k = self.driver.views(self.base, self.size) if self.size else (None, None)

    def close(self) -> None:
        self.resize(0)
        if self.base is not None:
            self.driver.free(self.base, self.reserved)
            self.base = None


class ReallocArena:
    """One allocation, grown by reallocation (the fallback: see the module doc)."""

    kind = "reallocated"

    def __init__(self, mem, capacity: int, why: str):
        self.mem = mem
        self.size = self.peak = 0
        self.buf = self.k = None
        self.why = why

    def target(self, end: int, capacity: int) -> int:
        """At least 1.5x (each growth copies everything), in 64 KiB steps, within capacity."""
        return min(capacity, _round_up(max(end, self.size + self.size // 2), 1 << 16))

    def worth_shrinking(self, top: int) -> bool:
        return top < self.size - self.size // 8           # at least 1/8 free at the top

    def resize(self, nbytes: int, copy) -> None:
        """Allocate ``nbytes``, ``copy(new, old, n)`` what fits, free the old one (both
        are held meanwhile: this is why it is the fallback)."""
        new = self.mem.alloc_arena(nbytes) if nbytes else None
        keep = min(self.size, nbytes)
        self.peak = max(self.peak, self.size + nbytes)
        if keep:
            copy(new, self.buf, keep)
        old, self.buf, self.size = self.buf, new, nbytes
        self.k = self.mem.kview(new)[0] if new is not None else None
        if old is not None:
            self.mem.retire(old)

    def close(self) -> None:
        self.buf = self.k = None
        self.size = 0


# --- drivers ---------------------------------------------------------------------------------
class _Span:
    """A mapped device range as a 1-D uint8 array interface (for CuPy copies and numba)."""

    def __init__(self, ptr: int, nbytes: int):
        self.nbytes = nbytes
        self.data = type("_Ptr", (), {"ptr": ptr})()            # what the CuPy provider's copies read
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (ptr, False),
                                         "strides": None, "version": 3, "stream": None}


class CudaVmm:
    """CUDA's virtual memory management through ``cuda.bindings.driver``."""

    def __init__(self, device_id: int):
        from cuda.bindings import driver as cu
        self.cu = cu
        self._check("cuInit", cu.cuInit(0))
        prop = cu.CUmemAllocationProp()
        prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = int(device_id)
        self.prop = prop
        access = cu.CUmemAccessDesc()
        access.location = prop.location
        access.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        self.access = access
        self.granularity = int(self._check("cuMemGetAllocationGranularity", cu.cuMemGetAllocationGranularity(
            prop, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED)))

    def _check(self, what: str, result):
        """A cuda.bindings call's ``(error, *values)``: the value, or an exception
        naming the call (MemoryError when the device is out of memory)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.cu.CUresult.CUDA_SUCCESS:
            text = getattr(err, "name", str(err))          # the enum's name: no driver call to name it
            if err == self.cu.CUresult.CUDA_ERROR_OUT_OF_MEMORY:
                raise MemoryError(f"{what}: {text}")
            raise RuntimeError(f"{what}: {text}")
        return values[0] if len(values) == 1 else None

    def reserve(self, nbytes: int) -> int:
        return int(self._check("cuMemAddressReserve", self.cu.cuMemAddressReserve(nbytes, self.granularity, 0, 0)))

    def free(self, base: int, nbytes: int) -> None:
        self._check("cuMemAddressFree", self.cu.cuMemAddressFree(base, nbytes))

    def create(self, nbytes: int):
        return self._check("cuMemCreate", self.cu.cuMemCreate(nbytes, self.prop, 0))

    def map(self, addr: int, nbytes: int, handle) -> None:
        self._check("cuMemMap", self.cu.cuMemMap(addr, nbytes, 0, handle, 0))
        try:
            self._check("cuMemSetAccess", self.cu.cuMemSetAccess(addr, nbytes, [self.access], 1))
        except BaseException:
            self._check("cuMemUnmap", self.cu.cuMemUnmap(addr, nbytes))
            raise

    def unmap(self, addr: int, nbytes: int) -> None:
        self._check("cuMemUnmap", self.cu.cuMemUnmap(addr, nbytes))

    def release(self, handle) -> None:
        self._check("cuMemRelease", self.cu.cuMemRelease(handle))

    def views(self, base: int, nbytes: int):
        from ._cuda import cuda
        span = _Span(base, nbytes)
        return span, cuda.from_cuda_array_interface(span.__cuda_array_interface__, owner=span, sync=False)


class SimVmm:
    """The simulator's stand-in: the reserve is one host mapping committed lazily
    (``MAP_NORESERVE``), a mapped chunk starts poisoned, an unmapped one is poisoned and
    given back. ``limit`` (bytes) makes ``create`` fail as a full card does."""

    granularity = 1 << 16

    def __init__(self, poison: int):
        self.poison = poison
        self.mapped = 0
        self.limit: int | None = None
        self._map = None

    def reserve(self, nbytes: int) -> int:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
        self._map = mmap.mmap(-1, nbytes, flags=flags)
        self._ary = np.frombuffer(self._map, np.uint8)
        return 0                                              # offsets into the mapping

    def free(self, base: int, nbytes: int) -> None:
        self._ary = None                                      # views may outlive it: the GC unmaps

    def create(self, nbytes: int):
        if self.limit is not None and self.mapped + nbytes > self.limit:
            raise MemoryError(f"cuMemCreate: CUDA_ERROR_OUT_OF_MEMORY (simulated: {self.limit}-byte device)")
        self.mapped += nbytes
        return nbytes

    def map(self, addr: int, nbytes: int, handle) -> None:
        self._ary[addr:addr + nbytes] = self.poison

    def unmap(self, addr: int, nbytes: int) -> None:
        if hasattr(self._map, "madvise"):                     # given back (reads as zeros, never poison)
            self._map.madvise(mmap.MADV_DONTNEED, addr, nbytes)
        else:
            self._ary[addr:addr + nbytes] = self.poison

    def release(self, handle) -> None:
        self.mapped -= handle

    def views(self, base: int, nbytes: int):
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        dev = FakeCUDAArray(self._ary[base:base + nbytes])
        return dev, dev
