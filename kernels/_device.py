"""``CudaStorage``: the pool's arena in GPU device memory, reached only by batched copies.

Mechanism and cost, per verb:

- copy-in (``scatter``): the batch's metadata (int64 columns: packed starts, arena
  offsets, lengths) and its packed payload are written into a **pinned host staging
  buffer allocated once** (grown geometrically, never per call); **one host-to-device
  copy** moves both to device staging; one **copy kernel** launch (one block per
  object) places every object at its arena offset. Batches above ``PIPELINE_CHUNK``
  bytes go in chunks through two staging halves, sized once per call for the largest
  chunk and aligned, so packing chunk k+1 on the host overlaps the transfer and kernel
  of chunk k; a CUDA event guards each half's reuse, and nothing is reallocated while
  a copy is in flight.
- copy-out (``gather``): metadata in (one small copy), the kernel packs the objects
  into device staging, **one device-to-host copy** into pinned memory, then the host
  unpacks into the caller's buffer.
- single objects (``write_one`` / ``read_one``, a swap-in fault is one page): **one
  direct copy** between a pinned page buffer (allocated once) and the object's place in
  the arena, then one synchronisation: no staging pack, no metadata, no kernel.
- compaction (``move``): gather into device staging and scatter back, two launches on
  one stream and one synchronisation: nothing crosses PCIe but the metadata.
- device-resident blocks (``scatter_device`` / ``gather_device``): a device codec's
  output is scattered into the arena straight from device memory, and loads gather into
  a fresh device buffer for a device decoder; only the int64 metadata (24 bytes per
  object) crosses PCIe.
- growth (:mod:`._arena`): the pool's capacity is reserved once as virtual addresses and
  physical memory is mapped into it in chunks up to the highest committed end
  (``reserve(end)`` grows once for a whole batch); ``trim`` unmaps whole chunks above
  the top. Nothing moves or is copied, and the card holds at most one chunk more than
  the arena, so a pool can use most of the card. Where the driver cannot map, the arena
  is one allocation grown by 1.5x with a device-to-device copy (``describe()['arena']``
  says which, and why). Device OOM while growing is a ``PoolFullError`` and leaves the
  arena as it was.

Kernels take their arguments wrapped for numba once (the arena when it is allocated,
staging when it grows), so a launch costs numba's dispatch and nothing per argument;
metadata columns are indices into the staging buffer seen as int64 (aligned by
construction). Every call synchronises before returning, so the caller's buffers are
free to reuse.

A fault in a kernel or a copy (seen at synchronisation) leaves a CUDA context unusable
(the error is sticky: every later call fails too) and the arena's contents lost: the
storage says so and refuses every further call; ``close()`` still works.

Memory comes from a thin provider: CuPy on a real GPU (memory, pinned memory, raw
``cudaMemcpyAsync``), numba device arrays where CuPy cannot run, and, under numba's
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), a strict provider that behaves like a GPU
where a bug would otherwise hide: every copy and launch is queued on its stream and
runs only when the stream or an event is synchronised (a host write to pinned memory
that a queued copy has not read yet corrupts the copy, as on a GPU), retired buffers
are poisoned at once, and a typed array argument must be aligned.
"""

from __future__ import annotations

import weakref

import numpy as np

from devpool._errors import BackendUnavailableError, DeviceError, PoolFullError
from devpool._packed import check_within
from devpool._packed import gather as host_gather
from devpool._packed import packed_starts
from devpool.pool.storage import Storage

from . import _copy_kernels as K
from ._arena import CudaVmm, MappedArena, ReallocArena, SimVmm
from ._cuda import launch, simulated

__all__ = ["CudaStorage", "probe", "simulated"]

#: bytes per pipelined chunk of a large copy-in: big enough that one cudaMemcpyAsync
#: (5-7 us) is well amortised at 35-55 GB/s (8 MiB: ~0.2 ms of transfer), small enough
#: that packing the next chunk on the host overlaps most of a batch's transfer
PIPELINE_CHUNK = 8 << 20
#: alignment of every staging region (cudaMalloc gives 256)
ALIGN = 256
#: the byte a retired buffer is filled with under the simulator
POISON = 0xDB


def _align(n: int, a: int = ALIGN) -> int:
    return -(-int(n) // a) * a


def probe() -> tuple[bool, str]:
    """(usable, reason) for the cuda backend; never raises."""
    try:
        from ._cuda import cuda
    except Exception as exc:
        return False, f"numba-cuda is not usable ({type(exc).__name__}: {exc}); pip install 'devpool[cuda]'"
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
# Buffers are addressed by (buffer, byte offset): no verb slices a device array per call.
class _NumbaMemory:
    """numba device arrays, pinned arrays, streams and events (a GPU without CuPy)."""

    name = "numba"

    def __init__(self):
        from ._cuda import cuda
        self.cuda = cuda
        self.oom = (MemoryError,)
        try:
            from numba.cuda.cudadrv.driver import CudaAPIError
            self.oom = (MemoryError, CudaAPIError)
        except ImportError:
            pass

    def alloc(self, n: int):
        return self.cuda.device_array(_align(max(n, 1)), np.uint8)

    def kview(self, buf):
        """(uint8, int64) views of a device buffer as kernel arguments, made once."""
        return buf, buf.view(np.int64)

    def kernel_arg(self, buf):
        """Any uint8 device buffer as a kernel argument (no stream handshake)."""
        if self.cuda.devicearray.is_cuda_ndarray(buf):
            return buf
        return self.cuda.as_cuda_array(buf, sync=False)

    def pinned(self, n: int) -> np.ndarray:
        return self.cuda.pinned_array(max(n, 1), np.uint8)

    def stream(self):
        return self.cuda.stream()

    def kernel_stream(self, stream):
        return stream

    def event(self):
        return self.cuda.event(timing=False)

    def record(self, event, stream) -> None:
        event.record(stream)

    def wait(self, event) -> None:
        event.synchronize()

    def sync(self, stream) -> None:
        stream.synchronize()

    def h2d(self, dst, doff: int, host: np.ndarray, hoff: int, n: int, stream) -> None:
        if n:
            dst[doff:doff + n].copy_to_device(host[hoff:hoff + n], stream=stream)

    def d2h(self, host: np.ndarray, hoff: int, src, soff: int, n: int, stream) -> None:
        if n:
            src[soff:soff + n].copy_to_host(host[hoff:hoff + n], stream=stream)

    def d2d(self, dst, doff: int, src, soff: int, n: int, stream) -> None:
        if n:
            dst[doff:doff + n].copy_to_device(src[soff:soff + n], stream=stream)

    def launch(self, what: str, kernel, grid: int, block: int, stream, args) -> None:
        launch(kernel, grid, block, stream, *args)

    def retire(self, buf) -> None:
        """A buffer the storage no longer uses (the caller synchronised first)."""

    def arena(self, capacity: int):
        """The arena of a pool of ``capacity`` bytes (:mod:`._arena`): numba alone maps no
        virtual memory here, so it grows by reallocation."""
        return ReallocArena(self, capacity, "reallocated: numba device arrays (CuPy is not usable)")

    def alloc_arena(self, n: int):
        """A reallocated arena's one allocation."""
        return self.alloc(n)

    def discard_queue(self) -> None:
        """Forget queued work (after a fault): only the simulator queues."""

    def device_name(self) -> str:
        name = self.cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)


class _CupyMemory(_NumbaMemory):
    """CuPy memory, pinned memory and streams; raw cudaMemcpyAsync; numba kernels."""

    name = "cupy"

    def __init__(self):
        super().__init__()
        import cupy
        self.cp = cupy
        self.rt = cupy.cuda.runtime
        self.oom = (cupy.cuda.memory.OutOfMemoryError, MemoryError)
        self._addrs: dict[int, tuple] = {}       # id(pinned array) -> (weakref to it, address)

    def alloc(self, n: int):
        return self.cp.empty(_align(max(n, 1)), self.cp.uint8)

    def kview(self, buf):
        u8 = self.cuda.as_cuda_array(buf, sync=False)
        return u8, u8.view(np.int64)

    def pinned(self, n: int) -> np.ndarray:
        mem = self.cp.cuda.alloc_pinned_memory(max(n, 1))
        a = np.frombuffer(mem, np.uint8, max(n, 1))     # the array's base keeps ``mem`` alive
        key = id(a)
        self._addrs[key] = (weakref.ref(a), a.__array_interface__["data"][0])
        # the record goes with its array (no pass over the others, safe between threads)
        weakref.finalize(a, self._addrs.pop, key, None)
        return a

    def stream(self):
        return self.cp.cuda.Stream(non_blocking=True)

    def kernel_stream(self, stream):
        return self.cuda.external_stream(stream.ptr)

    def event(self):
        return self.cp.cuda.Event(block=False, disable_timing=True)

    def _host(self, a: np.ndarray) -> int:
        """The host address of ``a``. Asking an array (``__array_interface__``) costs
        ~0.8 us, a large share of a one-page copy, so the pinned buffers made here have
        theirs on record; the weak reference makes sure a record answers only for the
        very array it was made for (an id is reused once its array is gone)."""
        rec = self._addrs.get(id(a))
        if rec is not None and rec[0]() is a:
            return rec[1]
        return a.__array_interface__["data"][0]

    def h2d(self, dst, doff, host, hoff, n, stream) -> None:
        if n:
            self.rt.memcpyAsync(dst.data.ptr + doff, self._host(host) + hoff, n,
                                self.rt.memcpyHostToDevice, stream.ptr)

    def d2h(self, host, hoff, src, soff, n, stream) -> None:
        if n:
            self.rt.memcpyAsync(self._host(host) + hoff, src.data.ptr + soff, n,
                                self.rt.memcpyDeviceToHost, stream.ptr)

    def d2d(self, dst, doff, src, soff, n, stream) -> None:
        if n:
            self.rt.memcpyAsync(dst.data.ptr + doff, src.data.ptr + soff, n,
                                self.rt.memcpyDeviceToDevice, stream.ptr)

    def arena(self, capacity: int):
        return _mapped_or_reallocated(self, lambda: CudaVmm(self.cp.cuda.Device().id), capacity)

    def alloc_arena(self, n: int):
        # straight from the driver, outside CuPy's pool: a freed arena goes back at once
        # (the pool would keep every old arena), and nobody else's pool is emptied for it
        mem = self.cp.cuda.Memory(_align(max(n, 1)))
        return self.cp.ndarray((_align(max(n, 1)),), self.cp.uint8, self.cp.cuda.MemoryPointer(mem, 0))

    def device_name(self) -> str:
        props = self.rt.getDeviceProperties(self.cp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)


class _SimStream:
    """A queue of work, run in order when it (or an event in it) is synchronised."""

    def __init__(self):
        self.queue: list = []                    # (label, callable) or (None, event marker)

    def run(self, until=None) -> None:
        while self.queue:
            what, op = self.queue.pop(0)
            if what is None:                      # an event: everything before it is done
                op.done = True
                if op is until:
                    return
                continue
            try:
                op()
            except Exception as exc:
                self.queue.clear()                # a faulted context runs nothing more
                raise RuntimeError(f"{what} failed on the (simulated) device: {type(exc).__name__}: {exc}") from exc

    def synchronize(self) -> None:
        self.run()


class _SimEvent:
    def __init__(self):
        self.done = True
        self.stream = None


class _SimMemory(_NumbaMemory):
    """The simulator's device arrays, with a GPU's asynchrony made strict (module doc)."""

    name = "numba-simulator (strict)"

    def __init__(self):
        super().__init__()
        self._streams: list[_SimStream] = []

    def stream(self):
        s = _SimStream()
        self._streams.append(s)
        return s

    def event(self):
        return _SimEvent()

    def record(self, event, stream) -> None:
        event.done = False
        event.stream = stream
        stream.queue.append((None, event))

    def wait(self, event) -> None:
        if not event.done:
            event.stream.run(until=event)

    def discard_queue(self) -> None:
        for s in self._streams:
            s.queue.clear()

    def sync(self, stream) -> None:
        stream.run()

    @staticmethod
    def _ary(buf) -> np.ndarray:
        return getattr(buf, "_ary", buf)

    def h2d(self, dst, doff, host, hoff, n, stream) -> None:
        if n:
            d = self._ary(dst)

            def op():                              # reads the host buffer when it runs
                d[doff:doff + n] = host[hoff:hoff + n]
            stream.queue.append((f"host-to-device copy of {n} bytes", op))

    def d2h(self, host, hoff, src, soff, n, stream) -> None:
        if n:
            s = self._ary(src)

            def op():
                host[hoff:hoff + n] = s[soff:soff + n]
            stream.queue.append((f"device-to-host copy of {n} bytes", op))

    def d2d(self, dst, doff, src, soff, n, stream) -> None:
        if n:
            d, s = self._ary(dst), self._ary(src)

            def op():
                d[doff:doff + n] = s[soff:soff + n]
            stream.queue.append((f"device-to-device copy of {n} bytes", op))

    def launch(self, what, kernel, grid, block, stream, args) -> None:
        from ._cuda import check_launch
        check_launch(kernel, args)                # a launch error shows at launch

        def op():
            kernel[grid, block](*args)
        stream.queue.append((what, op))

    def retire(self, buf) -> None:
        self._ary(buf).fill(POISON)

    def arena(self, capacity: int):
        return _mapped_or_reallocated(self, lambda: SimVmm(POISON), capacity)

    def device_name(self) -> str:
        return "numba CUDA simulator (CPU)"


def _mapped_or_reallocated(mem, driver, capacity: int):
    """A reserved virtual range mapped as it grows (:mod:`._arena`), tried once with one
    chunk (map, set access, wrap for numba); where the driver refuses any of it (no
    cuda-bindings, a range too large to reserve), reallocation, saying why."""
    try:
        arena = MappedArena(driver(), capacity)
    except Exception as exc:                   # noqa: BLE001 - the reason is reported
        return ReallocArena(mem, capacity, f"reallocated: virtual memory management unavailable "
                                           f"({type(exc).__name__}: {exc})")
    try:
        arena.resize(arena.chunk)
        arena.resize(0)
        return arena
    except Exception as exc:                   # noqa: BLE001 - the reason is reported
        try:
            arena.close()
        except Exception:                      # noqa: BLE001 - already failing
            pass
        return ReallocArena(mem, capacity, f"reallocated: mapping device memory failed "
                                           f"({type(exc).__name__}: {exc})")


def _provider():
    if simulated():
        return _SimMemory()
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        return _CupyMemory()
    except Exception:
        return _NumbaMemory()


class CudaStorage(Storage):
    """Arena in GPU device memory; only batched copies in, out and within, and one
    direct copy per single object."""

    kind = "cuda"
    device_resident = True

    def __init__(self, capacity_bytes: int):
        super().__init__(capacity_bytes)
        ok, why = probe()
        if not ok:
            raise BackendUnavailableError(f"backend 'cuda' is unavailable: {why}")
        try:
            self.mem = _provider()
            self.stream = self.mem.stream()
            self._kstream = self.mem.kernel_stream(self.stream)
            self._events = [self.mem.event(), self.mem.event()]
            self.arena = self.mem.arena(self.capacity_bytes)
        except Exception as exc:
            raise DeviceError(f"could not set up the CUDA device: {exc}") from exc
        self.threads = K.threads_per_block(simulated())
        self._arena = None                    # the arena's buffer (copies address it)
        self._arena_k = None                  # the same, wrapped for kernels once per size
        self._arena_w = self._dev_w = None    # arena and staging seen as uint64 (wide copies)
        self._size = 0
        self._live: dict[int, int] = {}       # committed ranges: offset -> bytes
        self._live_bytes = 0
        self._stage_size = 0
        self._pinned = np.zeros(0, np.uint8)
        self._pinned64 = self._pinned.view(np.int64)
        self._dev = self._dev_u8 = self._dev_i64 = None
        self._page = None                     # pinned page buffer for write_one / read_one
        self._dead: str | None = None

    # --- faults -------------------------------------------------------------------------
    def _alive(self) -> None:
        if self._dead is not None:
            raise DeviceError(f"the device storage is unusable after an earlier fault ({self._dead}); "
                              f"close the pool and open a new one")

    def _fault(self, what: str, exc: BaseException) -> DeviceError:
        self._dead = f"{what}: {exc}"
        self.mem.discard_queue()
        return DeviceError(f"{what}: the device reported a fault ({exc}). A fault in a kernel or copy leaves "
                           f"the CUDA context unusable and the arena's contents lost: this storage refuses "
                           f"every further call; close the pool")

    def _sync(self, what: str) -> None:
        try:
            self.mem.sync(self.stream)
        except Exception as exc:
            raise self._fault(what, exc) from exc

    def _wait(self, half: int, what: str) -> None:
        try:
            self.mem.wait(self._events[half])
        except Exception as exc:
            raise self._fault(what, exc) from exc

    def _copy(self, what: str, fn, *args) -> None:
        """Enqueue one copy; an error here (bad arguments) ran nothing."""
        try:
            fn(*args, self.stream)
        except Exception as exc:
            raise DeviceError(f"{what} failed: {exc}") from exc

    def _words(self, buf):
        """``buf`` seen as uint64 for the copy kernel's wide path: made once for the arena
        and staging; ``None`` where it cannot be (the kernel then copies bytes)."""
        if buf is self._arena_k:
            return self._arena_w
        if buf is self._dev_u8:
            return self._dev_w
        return K.words(buf)[0]

    def _launch(self, what: str, n: int, dst, src, src_col: int, dst_col: int, len_col: int,
                dst_shift: int = 0, src_shift: int = 0) -> None:
        """The copy kernel over ``n`` objects whose int64 columns are in device staging."""
        if n == 0:
            return
        dst8, src8 = self._words(dst), self._words(src)
        wide = int(dst8 is not None and src8 is not None)
        if not wide:                          # the signature wants uint64 arrays: any will do, unread
            dst8 = src8 = self._dev_w
        try:
            self.mem.launch(f"{what} kernel over {n} objects", K.copy_kernel, n, self.threads, self._kstream,
                            (dst, src, dst8, src8, self._dev_i64, src_col, dst_col, len_col, n, dst_shift, src_shift,
                             wide))
        except Exception as exc:
            raise DeviceError(f"{what} kernel over {n} objects failed to launch: {exc}") from exc

    # --- growth -------------------------------------------------------------------------
    def _grown(self, end: int) -> int:
        """The size to grow to for ``end``, within capacity (the arena's policy)."""
        return self.arena.target(end, self.capacity_bytes)

    def _resize(self, new_size: int) -> None:
        """Grow or shrink the arena (:mod:`._arena`); device OOM is a ``PoolFullError``
        and leaves the arena as it was."""
        self._alive()
        try:
            self.arena.resize(new_size, self._arena_copy)
        except self.mem.oom + (MemoryError,) as exc:
            raise PoolFullError(f"device out of memory growing the arena to {new_size} bytes: {exc}") from exc
        except DeviceError:
            raise
        except Exception as exc:
            raise DeviceError(f"resizing the device arena to {new_size} bytes failed: {exc}") from exc
        self._arena, self._arena_k, self._size = self.arena.buf, self.arena.k, self.arena.size
        self._arena_w = K.words(self._arena_k)[0] if self._arena_k is not None else None

    def _arena_copy(self, new, old, nbytes: int) -> None:
        """A reallocated arena's contents into its new allocation (one copy, one sync)."""
        self._copy(f"copying {nbytes} bytes into the resized arena", self.mem.d2d, new, 0, old, 0, nbytes)
        self._sync("resizing the device arena")

    def reserve(self, end: int) -> None:
        """Grow once to hold ``[0, end)`` (a batch's highest end), before its commits."""
        if int(end) > self._size:
            self._resize(self._grown(int(end)))

    def commit(self, offset: int, nbytes: int) -> None:
        offset, nbytes = int(offset), int(nbytes)
        if offset + nbytes > self._size:
            self._resize(self._grown(offset + nbytes))
        self._live_bytes += nbytes - self._live.get(offset, 0)
        self._live[offset] = nbytes

    def release(self, offset: int, nbytes: int) -> None:
        self._live_bytes -= self._live.pop(int(offset), 0)   # memory goes back in trim(), in bulk

    def trim(self) -> None:
        top = max((o + n for o, n in self._live.items()), default=0)
        if self.arena.worth_shrinking(top):
            self._resize(top)

    @property
    def committed_bytes(self) -> int:
        # the segments the pool holds, as on the host; the allocation's growth headroom
        # is reported separately (describe()['arena_bytes'])
        return self._live_bytes

    # --- staging ------------------------------------------------------------------------
    def _stage(self, nbytes: int) -> None:
        """Pinned host and device staging of at least ``nbytes``, grown geometrically.
        Only called with nothing in flight (every verb synchronises before it returns,
        and a pipelined copy-in sizes its staging before its first chunk)."""
        if self._stage_size >= nbytes:
            return
        size = _align(max(nbytes, 2 * self._stage_size, 1 << 16), 1 << 16)
        try:
            dev = self.mem.alloc(size)
        except self.mem.oom as exc:
            raise PoolFullError(f"device out of memory for a {size}-byte staging buffer") from exc
        except Exception as exc:
            raise DeviceError(f"allocating {size} bytes of device staging failed: {exc}") from exc
        try:
            pinned = self.mem.pinned(size)
        except Exception as exc:
            raise DeviceError(f"allocating {size} bytes of pinned host staging failed: {exc}") from exc
        if self._dev is not None:
            self.mem.retire(self._dev)
            self.mem.retire(self._pinned)
        self._dev = dev
        self._dev_u8, self._dev_i64 = self.mem.kview(dev)
        self._dev_w = K.words(self._dev_u8)[0]
        self._pinned = pinned
        self._pinned64 = pinned[:size].view(np.int64)
        self._stage_size = size

    def _meta(self, base: int, *columns: np.ndarray) -> int:
        """int64 columns at byte ``base`` of pinned staging; returns the bytes used."""
        n = columns[0].shape[0]
        b = base // 8
        for c, col in enumerate(columns):
            self._pinned64[b + c * n:b + (c + 1) * n] = col
        return 8 * n * len(columns)

    def _page_buffer(self, n: int) -> np.ndarray:
        if self._page is None or self._page.size < n:
            page = self.mem.pinned(_align(max(n, 4096), 4096))
            if self._page is not None:
                self.mem.retire(self._page)
            self._page = page
        return self._page

    def _check_range(self, offset: int, n: int) -> None:
        if offset < 0 or offset + n > self._size:
            raise DeviceError(f"[{offset}, {offset + n}) lies outside the {self._size}-byte device arena")

    def _check_ranges(self, offsets, lengths, what: str) -> None:
        """BadInputError where a batch's range leaves the arena: the kernels copy unchecked
        (a device write past the arena is another allocation's memory)."""
        check_within(self._size, offsets, lengths, what)

    # --- verbs ----------------------------------------------------------------------------
    def scatter(self, payload, src_starts, dst_offsets, lengths):
        self._alive()
        self._check_ranges(dst_offsets, lengths, "a scatter's arena")
        check_within(np.asarray(payload).size, src_starts, lengths, "a scatter's payload")
        n = lengths.shape[0]
        if n == 0:
            return
        ends = np.cumsum(lengths)
        total = int(ends[-1])
        if total <= PIPELINE_CHUNK or n < 2:
            bounds = np.array([0, n])
        else:                                    # chunk boundaries by bytes
            cuts = np.searchsorted(ends, np.arange(PIPELINE_CHUNK, total, PIPELINE_CHUNK), side="right")
            bounds = np.unique(np.concatenate([[0], cuts, [n]]))
        # both halves sized once, for the largest chunk, aligned: no half ever starts at
        # an odd offset, overlaps the other or is reallocated while a copy is in flight
        cum = np.concatenate([[0], ends])
        counts, sizes = np.diff(bounds), np.diff(cum[bounds])
        half = int(max(_align(24 * c) + _align(s) for c, s in zip(counts.tolist(), sizes.tolist())))
        halves = 1 if bounds.size == 2 else 2
        self._stage(halves * half)
        for k, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
            h = k % halves
            if k >= 2:
                self._wait(h, "scatter (waiting for a staging half)")   # the GPU is done with it
            base = h * half
            c = hi - lo
            ln = lengths[lo:hi]
            packed = packed_starts(ln)
            pay = base + _align(self._meta(base, packed, dst_offsets[lo:hi], ln))
            nbytes = int(cum[hi] - cum[lo])
            host_gather(payload, src_starts[lo:hi], ln, self._pinned[pay:pay + nbytes], packed)
            self._copy(f"host-to-device copy of {pay - base + nbytes} bytes", self.mem.h2d,
                       self._dev, base, self._pinned, base, pay - base + nbytes)   # the chunk's one copy
            col = base // 8
            self._launch("scatter", c, self._arena_k, self._dev_u8, col, col + c, col + 2 * c, 0, pay)
            if halves == 2:
                self.mem.record(self._events[h], self.stream)
        self._sync("scatter")

    def _packed(self, lengths):
        """A batch's objects packed back to back: ``(count, starts, total bytes)``, or
        None for an empty batch (after checking that the device still works)."""
        self._alive()
        n = lengths.shape[0]
        return (n, packed_starts(lengths), int(lengths.sum())) if n else None

    def gather(self, offsets, lengths, out, out_starts):
        self._alive()                           # (a faulted device says so before a bad range does)
        self._check_ranges(offsets, lengths, "a gather's arena")
        check_within(np.asarray(out).size, out_starts, lengths, "a gather's output")
        batch = self._packed(lengths)
        if batch is None:
            return
        n, packed, total = batch
        pay = _align(24 * n)
        self._stage(pay + total)
        self._meta(0, offsets, packed, lengths)
        self._copy("host-to-device copy of the metadata", self.mem.h2d, self._dev, 0, self._pinned, 0, 24 * n)
        self._launch("gather", n, self._dev_u8, self._arena_k, 0, n, 2 * n, pay, 0)
        self._copy(f"device-to-host copy of {total} bytes", self.mem.d2h,
                   self._pinned, pay, self._dev, pay, total)            # the batch's one copy out
        self._sync("gather")
        host_gather(self._pinned[pay:pay + total], packed, lengths, out, out_starts)

    def write_one(self, offset: int, data: np.ndarray) -> None:
        self._alive()
        offset, n = int(offset), int(data.size)
        self._check_range(offset, n)
        page = self._page_buffer(n)
        page[:n] = data
        self._copy(f"host-to-device copy of {n} bytes", self.mem.h2d, self._arena, offset, page, 0, n)
        self._sync("write_one")

    def read_one(self, offset: int, out: np.ndarray) -> None:
        out[:] = self._fetch_one(offset, int(out.size), "read_one")

    def lend_one(self, offset: int, nbytes: int) -> np.ndarray:
        # the pinned page buffer itself, read-only: the one copy a device object needs
        # (the base class would copy it once more into a fresh array)
        block = self._fetch_one(offset, int(nbytes), "lend_one").view()
        block.flags.writeable = False
        return block

    def _fetch_one(self, offset: int, n: int, verb: str) -> np.ndarray:
        """One object copied into the pinned page buffer (valid until the next call)."""
        self._alive()
        offset = int(offset)
        self._check_range(offset, n)
        page = self._page_buffer(n)
        self._copy(f"device-to-host copy of {n} bytes", self.mem.d2h, page, 0, self._arena, offset, n)
        self._sync(verb)
        return page[:n]

    def move(self, src_offsets, dst_offsets, lengths):
        self._alive()
        self._check_ranges(src_offsets, lengths, "a move's source")
        self._check_ranges(dst_offsets, lengths, "a move's destination")
        batch = self._packed(lengths)
        if batch is None:
            return
        n, packed, total = batch
        tmp = _align(32 * n)                                    # device temporary after the columns
        self._stage(tmp + total)
        self._meta(0, src_offsets, packed, lengths, dst_offsets)
        self._copy("host-to-device copy of the metadata", self.mem.h2d, self._dev, 0, self._pinned, 0, 32 * n)
        # every source is read (into staging) before any destination is written: the
        # two launches are ordered on one stream
        self._launch("move (gather)", n, self._dev_u8, self._arena_k, 0, n, 2 * n, tmp, 0)
        self._launch("move (scatter)", n, self._arena_k, self._dev_u8, n, 3 * n, 2 * n, 0, tmp)
        self._sync("move")

    # --- device-resident blocks ------------------------------------------------------------
    def is_device_buffer(self, obj) -> bool:
        from ._cuda import cuda
        return hasattr(obj, "__cuda_array_interface__") or cuda.devicearray.is_cuda_ndarray(obj)

    def scatter_device(self, payload, src_starts, dst_offsets, lengths):
        self._alive()
        self._check_ranges(dst_offsets, lengths, "a scatter's arena")
        check_within(int(payload.size), src_starts, lengths, "a scatter's device payload")
        n = lengths.shape[0]
        if n == 0:
            return
        self._stage(24 * n)
        self._meta(0, src_starts, dst_offsets, lengths)
        self._copy("host-to-device copy of the metadata", self.mem.h2d, self._dev, 0, self._pinned, 0, 24 * n)
        try:
            src = self.mem.kernel_arg(payload)
        except Exception as exc:
            raise DeviceError(f"the device payload cannot be passed to a kernel: {exc}") from exc
        self._launch("scatter from device memory", n, self._arena_k, src, 0, n, 2 * n)
        self._sync("scatter from device memory")

    def gather_device(self, offsets, lengths):
        self._alive()
        self._check_ranges(offsets, lengths, "a gather's arena")
        n = lengths.shape[0]
        total = int(lengths.sum())
        try:
            out = self.mem.alloc(total)
        except self.mem.oom as exc:
            raise DeviceError(f"device out of memory for a {total}-byte copy-out buffer") from exc
        out_k = self.mem.kview(out)[0]
        if n:
            self._stage(24 * n)
            self._meta(0, offsets, packed_starts(lengths), lengths)
            self._copy("host-to-device copy of the metadata", self.mem.h2d, self._dev, 0, self._pinned, 0, 24 * n)
            self._launch("gather into device memory", n, out_k, self._arena_k, 0, n, 2 * n)
            self._sync("gather into device memory")
        return out_k[:total]

    def describe(self) -> dict:
        d = {"backend": self.kind, "device": self.mem.device_name(), "memory": self.mem.name,
             "arena": self.arena.kind, "arena_how": self.arena.why, "arena_bytes": self._size,
             "arena_unit_bytes": getattr(self.arena, "chunk", 0),
             "arena_peak_bytes": self.arena.peak, "staging_bytes": int(self._stage_size)}
        if self._dead is not None:
            d["device_fault"] = self._dead
        return d

    def close(self) -> None:
        self.mem.discard_queue()
        self._arena = self._arena_k = self._arena_w = None
        self._dev = self._dev_u8 = self._dev_i64 = self._dev_w = None
        self._pinned = np.zeros(0, np.uint8)
        self._pinned64 = self._pinned.view(np.int64)
        self._page = None
        self._stage_size = 0
        self._size = 0
        self._live.clear()
        self._live_bytes = 0
        try:
            self.arena.close()
        except Exception:                     # a dead context: nothing more to give back
            pass
