"""``CudaStorage``: the pool's arena in GPU device memory, reached only by batched copies.

Mechanism and cost, per verb:

- copy-in (``scatter``): the batch's metadata (source starts, arena offsets, lengths)
  and its packed payload are written into a **pinned host staging buffer allocated
  once** (grown geometrically, never per call); **one host-to-device copy** moves it
  to a device staging buffer; one **scatter kernel** launch (one block per object)
  places every object at its arena offset. Batches above ``PIPELINE_CHUNK`` bytes go
  in chunks through two pinned halves, so packing chunk k+1 on the host overlaps the
  transfer and kernel of chunk k (a CUDA event guards each half's reuse).
- copy-out (``gather``): metadata in (one small copy), a **gather kernel** packs the
  objects into device staging, **one device-to-host copy** into pinned memory, then
  the host unpacks into the caller's buffer.
- compaction (``move``): gather into a device temporary, scatter back: device to
  device, nothing crosses PCIe.
- device-resident blocks (``scatter_device`` / ``gather_device``): a device codec's
  output is scattered into the arena straight from device memory, and loads gather into
  a fresh device buffer for a device decoder; only the int64 metadata (24 bytes per
  object) crosses PCIe.
- growth: the arena is one device allocation sized to the highest committed segment
  (plus 1/8 headroom when it grows, within capacity); ``trim`` shrinks it to the top
  once an eighth is free there. Growing or shrinking allocates the new size and
  copies device to device (the allocator fills low segments first, so compaction
  empties the top). Device OOM while growing is a ``PoolFullError`` and
  leaves the old arena untouched.

Memory comes from a thin provider: CuPy on a real GPU (its memory pool, pinned
allocator and OOM error), numba device arrays where CuPy cannot run (numba's CUDA
simulator, ``NUMBA_ENABLE_CUDASIM=1``). The kernels are numba's in both cases.
Every call synchronises before returning, so the caller's buffers are free to reuse.
"""

from __future__ import annotations

import os

import numpy as np

from devpool._errors import DeviceError, PoolFullError
from devpool._packed import gather as host_gather
from devpool._packed import packed_starts
from devpool._storage import Storage

from . import _copy_kernels as K

__all__ = ["CudaStorage", "probe", "simulated"]

#: bytes per pipelined chunk of a large copy-in
PIPELINE_CHUNK = 8 << 20


def simulated() -> bool:
    """True when numba's CUDA simulator is on (kernels run as Python on the CPU)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def probe() -> tuple[bool, str]:
    """(usable, reason) for the cuda backend; never raises."""
    try:
        from numba import cuda
    except ImportError as exc:
        return False, f"numba-cuda is not installed ({exc}); pip install 'devpool[cuda]'"
    if simulated():
        return True, "numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): device code runs on the CPU"
    try:
        if not cuda.is_available():
            return False, "no CUDA GPU or driver found (numba.cuda.is_available() is False)"
        name = cuda.get_current_device().name
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # driver/runtime mismatch and the like
        return False, f"the CUDA runtime failed to start: {type(exc).__name__}: {exc}"
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        provider = "CuPy"
    except Exception:
        provider = "numba device arrays (CuPy unusable)"
    return True, f"{name} via {provider}"


# --- memory providers -----------------------------------------------------------------------
class _NumbaMemory:
    """numba device arrays and pinned arrays (the simulator's only option)."""

    name = "numba"

    def __init__(self):
        from numba import cuda
        self.cuda = cuda
        self.oom = (MemoryError,)
        try:
            from numba.cuda.cudadrv.driver import CudaAPIError
            self.oom = (MemoryError, CudaAPIError)
        except ImportError:
            pass

    def device_empty(self, n: int):
        return self.cuda.device_array(max(n, 1), np.uint8)

    def pinned_empty(self, n: int) -> np.ndarray:
        return self.cuda.pinned_array(max(n, 1), np.uint8)

    def stream(self):
        return self.cuda.stream()

    def kernel_stream(self, stream):
        return stream

    def event(self):
        return self.cuda.event()

    def h2d(self, host, dev, stream) -> None:
        dev.copy_to_device(host, stream=stream)

    def d2h(self, dev, host, stream) -> None:
        dev.copy_to_host(host, stream=stream)

    def d2d(self, src, dst, stream) -> None:
        dst.copy_to_device(src, stream=stream)

    def view64(self, dev):
        return dev.view(np.int64)

    def device_name(self) -> str:
        if simulated():
            return "numba CUDA simulator (CPU)"
        name = self.cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)


class _CupyMemory(_NumbaMemory):
    """CuPy allocations (memory pool, pinned memory) driven by numba kernels."""

    name = "cupy"

    def __init__(self):
        super().__init__()
        import cupy
        self.cp = cupy
        self.oom = (cupy.cuda.memory.OutOfMemoryError, MemoryError)

    def device_empty(self, n: int):
        return self.cp.empty(max(n, 1), self.cp.uint8)

    def pinned_empty(self, n: int) -> np.ndarray:
        mem = self.cp.cuda.alloc_pinned_memory(max(n, 1))
        return np.frombuffer(mem, np.uint8, max(n, 1))  # the array's base keeps ``mem`` alive

    def stream(self):
        return self.cp.cuda.Stream(non_blocking=True)

    def kernel_stream(self, stream):
        return self.cuda.external_stream(stream.ptr)

    def event(self):
        return self.cp.cuda.Event()

    def h2d(self, host, dev, stream) -> None:
        dev.set(host, stream=stream)

    def d2h(self, dev, host, stream) -> None:
        dev.get(stream=stream, out=host)

    def d2d(self, src, dst, stream) -> None:
        with stream:
            dst[...] = src

    def view64(self, dev):
        return dev.view(self.cp.int64)


def _provider():
    if simulated():
        return _NumbaMemory()
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        return _CupyMemory()
    except Exception:
        return _NumbaMemory()


class CudaStorage(Storage):
    """Arena in GPU device memory; only batched copies in, out and within."""

    kind = "cuda"
    device_resident = True

    def __init__(self, capacity_bytes: int):
        super().__init__(capacity_bytes)
        ok, why = probe()
        if not ok:
            from devpool._errors import BackendUnavailableError
            raise BackendUnavailableError(f"backend 'cuda' is unavailable: {why}")
        try:
            self.mem = _provider()
            self.stream = self.mem.stream()
            self._kstream = self.mem.kernel_stream(self.stream)
            self._events = [self.mem.event(), self.mem.event()]
        except Exception as exc:
            raise DeviceError(f"could not set up the CUDA device: {exc}") from exc
        self.threads = K.threads_per_block(simulated())
        self._arena = None
        self._size = 0
        self._live: dict[int, int] = {}       # committed ranges: offset -> bytes
        self._pinned = np.zeros(0, np.uint8)
        self._dev_stage = None
        self._dev_stage_size = 0

    # --- growth -------------------------------------------------------------------------
    def _resize(self, new_size: int) -> None:
        """Reallocate the arena (device to device copy); OOM leaves the old one intact."""
        try:
            new = self.mem.device_empty(new_size) if new_size else None
            keep = min(self._size, new_size)
            if keep:
                self.mem.d2d(self._arena[:keep], new[:keep], self.stream)
                self.stream.synchronize()
        except self.mem.oom as exc:
            raise PoolFullError(f"device out of memory growing the arena to {new_size} bytes") from exc
        except Exception as exc:
            raise DeviceError(f"resizing the device arena to {new_size} bytes failed: {exc}") from exc
        self._arena, self._size = new, new_size

    def commit(self, offset: int, nbytes: int) -> None:
        end = int(offset) + int(nbytes)
        if end > self._size:
            self._resize(min(self.capacity_bytes, end + end // 8))
        self._live[int(offset)] = int(nbytes)

    def release(self, offset: int, nbytes: int) -> None:
        self._live.pop(int(offset), None)      # memory goes back in trim(), in bulk

    def trim(self) -> None:
        top = max((o + n for o, n in self._live.items()), default=0)
        if top < self._size - self._size // 8:  # at least 1/8 free at the top: shrink to it
            self._resize(top)

    @property
    def committed_bytes(self) -> int:
        # the segments the pool holds, as on the host; the allocation's growth headroom
        # is reported separately (describe()['arena_bytes'])
        return sum(self._live.values())

    # --- staging ------------------------------------------------------------------------
    def _stage(self, nbytes: int):
        """Pinned host and device staging of at least ``nbytes`` (grown, never per call)."""
        if self._pinned.size < nbytes:
            self._pinned = self.mem.pinned_empty(max(nbytes, 2 * self._pinned.size, 1 << 16))
        if self._dev_stage_size < nbytes:
            size = max(nbytes, 2 * self._dev_stage_size, 1 << 16)
            try:
                self._dev_stage = self.mem.device_empty(size)
            except self.mem.oom as exc:
                raise PoolFullError(f"device out of memory for a {size}-byte staging buffer") from exc
            self._dev_stage_size = size
        return self._pinned, self._dev_stage

    def _launch(self, what: str, nobj: int, dst, dst_starts, src, src_starts, lengths) -> None:
        """The copy kernel over ``nobj`` objects; ``what`` (scatter, gather) names it in errors."""
        try:
            K.copy_kernel[nobj, self.threads, self._kstream](dst, dst_starts, src, src_starts, lengths)
        except Exception as exc:
            raise DeviceError(f"{what} kernel over {nobj} objects failed: {exc}") from exc

    def _sync(self, what: str) -> None:
        try:
            self.stream.synchronize()
        except Exception as exc:
            raise DeviceError(f"{what}: CUDA error at synchronisation: {exc}") from exc

    @staticmethod
    def _meta(pinned: np.ndarray, *columns: np.ndarray) -> int:
        """Write int64 columns at the start of ``pinned``; returns the bytes used."""
        n = columns[0].shape[0]
        m = pinned[:8 * n * len(columns)].view(np.int64).reshape(len(columns), n)
        for row, col in zip(m, columns):
            row[:] = col
        return 8 * n * len(columns)

    def _device_meta(self, *columns: np.ndarray, room: int = 0):
        """int64 columns in device staging (one small host-to-device copy), followed by
        ``room`` bytes of device staging; returns (columns on the device, pinned, device
        staging, bytes of metadata)."""
        n = columns[0].shape[0]
        pinned, dev = self._stage(8 * n * len(columns) + room)
        meta = self._meta(pinned, *columns)
        try:
            self.mem.h2d(pinned[:meta], dev[:meta], self.stream)
        except Exception as exc:
            raise DeviceError(f"host-to-device copy of {meta} bytes of metadata failed: {exc}") from exc
        return self.mem.view64(dev[:meta]).reshape(len(columns), n), pinned, dev, meta

    # --- verbs ----------------------------------------------------------------------------
    def scatter(self, payload, src_starts, dst_offsets, lengths):
        n = lengths.shape[0]
        total = int(lengths.sum())
        if total <= PIPELINE_CHUNK or n < 2:
            self._scatter_chunk(payload, src_starts, dst_offsets, lengths, half=None)
        else:
            # chunk boundaries by bytes; two pinned halves alternate
            ends = np.cumsum(lengths)
            cuts = np.searchsorted(ends, np.arange(PIPELINE_CHUNK, total, PIPELINE_CHUNK), side="right")
            bounds = np.unique(np.concatenate([[0], cuts, [n]]))
            for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                self._scatter_chunk(payload, src_starts[lo:hi], dst_offsets[lo:hi], lengths[lo:hi], half=k % 2)
        self._sync("scatter")

    def _scatter_chunk(self, payload, src_starts, dst_offsets, lengths, half):
        n = lengths.shape[0]
        total = int(lengths.sum())
        need = 24 * n + total
        whole = need if half is None else 2 * max(need, PIPELINE_CHUNK + 24 * n)
        pinned, dev = self._stage(whole)
        base = 0 if half is None else half * (whole // 2)
        if half is not None:
            self._events[half].synchronize()          # the GPU is done with this half
        p = pinned[base:base + need]
        meta = self._meta(p, packed_starts(lengths), dst_offsets, lengths)
        # pack the payload behind the metadata (host work that overlaps the previous chunk)
        host_gather(payload, src_starts, lengths, p[meta:], packed_starts(lengths))
        d = dev[base:base + need]
        try:
            self.mem.h2d(p, d, self.stream)                          # the batch's one H2D copy
        except Exception as exc:
            raise DeviceError(f"host-to-device copy of {need} bytes failed: {exc}") from exc
        m = self.mem.view64(d[:meta]).reshape(3, n) if n else None
        self._launch("scatter", n, self._arena, m[1], d[meta:], m[0], m[2])
        if half is not None:
            self._events[half].record(self.stream)

    def gather(self, offsets, lengths, out, out_starts):
        n = lengths.shape[0]
        total = int(lengths.sum())
        packed = packed_starts(lengths)
        m, pinned, dev, meta = self._device_meta(offsets, lengths, packed, room=total)
        need = meta + total
        self._launch("gather", n, dev[meta:need], m[2], self._arena, m[0], m[1])
        try:
            self.mem.d2h(dev[meta:need], pinned[meta:need], self.stream)   # the batch's one D2H copy
        except Exception as exc:
            raise DeviceError(f"device-to-host copy of {total} bytes failed: {exc}") from exc
        self._sync("gather")
        host_gather(pinned[meta:need], packed, lengths, out, out_starts)

    def move(self, src_offsets, dst_offsets, lengths):
        n = lengths.shape[0]
        total = int(lengths.sum())
        packed = packed_starts(lengths)
        m, _, dev, meta = self._device_meta(src_offsets, lengths, packed, dst_offsets, room=total)
        tmp = dev[meta:meta + total]                            # device temporary: no PCIe round trip
        self._launch("gather", n, tmp, m[2], self._arena, m[0], m[1])
        self._sync("move (gather)")
        try:
            self._launch("scatter", n, self._arena, m[3], tmp, m[2], m[1])
            self._sync("move (scatter)")
        except DeviceError as exc:
            # destinations may overlap sources that the allocator still points at: put
            # every source back from the temporary before reporting the failure
            try:
                self._launch("scatter", n, self._arena, m[0], tmp, m[2], m[1])
                self._sync("move (restore)")
            except DeviceError as again:
                raise DeviceError(f"{exc}; restoring the moved objects failed too ({again}): "
                                  f"the device arena may be corrupt") from exc
            raise

    # --- device-resident blocks ------------------------------------------------------------
    def is_device_buffer(self, obj) -> bool:
        from numba import cuda
        return hasattr(obj, "__cuda_array_interface__") or cuda.devicearray.is_cuda_ndarray(obj)

    def scatter_device(self, payload, src_starts, dst_offsets, lengths):
        n = lengths.shape[0]
        m, *_ = self._device_meta(src_starts, dst_offsets, lengths)
        self._launch("scatter", n, self._arena, m[1], payload, m[0], m[2])
        self._sync("scatter from device memory")

    def gather_device(self, offsets, lengths):
        n = lengths.shape[0]
        total = int(lengths.sum())
        try:
            out = self.mem.device_empty(total)
        except self.mem.oom as exc:
            raise DeviceError(f"device out of memory for a {total}-byte copy-out buffer") from exc
        if n:
            m, *_ = self._device_meta(offsets, lengths, packed_starts(lengths))
            self._launch("gather", n, out, m[2], self._arena, m[0], m[1])
            self._sync("gather into device memory")
        return out[:total]

    def describe(self) -> dict:
        return {"backend": self.kind, "device": self.mem.device_name(), "memory": self.mem.name,
                "arena_bytes": self._size, "staging_bytes": int(self._pinned.size)}

    def close(self) -> None:
        self._arena = None
        self._dev_stage = None
        self._pinned = np.zeros(0, np.uint8)
        self._size = 0
        self._live.clear()
