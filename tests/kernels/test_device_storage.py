"""The device backend's own parts: kernel logic compiled for the CPU, staging, faults.

The contract and frontend suites already run on the cuda backend (the simulator here,
a GPU with ``--gpu``); these tests cover what only the device storage has. Each runs on a
GPU too (``--gpu``), where what only the simulator can show is left out, never faked:
the strict provider is the simulator's own; a race left unguarded need not corrupt on
hardware; and a fault is injected where a GPU reports it (at synchronisation) instead of
by a kernel that really faults, which would leave the test process's CUDA context dead.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import devpool
from tests.conftest import cuda_usable
from devpool.kernels import _copy_kernels as K
from devpool.kernels._cuda import simulated

CUDA_OK, CUDA_WHY = cuda_usable()
SIMULATED = simulated()


@pytest.mark.parametrize("threads", [1, 3, 32])
def test_kernel_logic_compiled_with_njit(threads):
    """The copy kernel's per-object loop, compiled by numba for the CPU with bounds
    checks, both ways (scatter into an arena, gather out of it), with the int64 columns
    and byte shifts the storage launches it with (the simulator does not reproduce
    numba's integer typing)."""
    rng = np.random.default_rng(3)
    n = 40
    lengths = rng.integers(1, 300, n).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    offsets = (np.arange(n) * 320 + 16).astype(np.int64)
    meta = np.concatenate([[-1] * 5, starts, offsets, lengths]).astype(np.int64)   # columns at 5, 5+n, 5+2n
    shift = 24
    payload = rng.integers(0, 256, shift + int(lengths.sum()), dtype=np.uint8)
    arena = np.zeros(n * 320 + 64, np.uint8)
    w = np.zeros(1, np.uint64)                 # the wide path off (wide=0): word views unread
    K.cpu_copy(arena, payload, w, w, meta, 5, 5 + n, 5 + 2 * n, n, 0, shift, 0, threads)             # scatter
    for s_, o, ln in zip(starts, offsets, lengths):
        assert arena[o:o + ln].tobytes() == payload[shift + s_:shift + s_ + ln].tobytes()
    out = np.zeros_like(payload)
    K.cpu_copy(out, arena, w, w, meta, 5 + n, 5, 5 + 2 * n, n, shift, 0, 0, threads)                 # gather
    assert out[shift:].tobytes() == payload[shift:].tobytes()
    with pytest.raises(IndexError):            # bounds-checked: an overrun is caught
        K.cpu_copy(arena[:100], payload, w, w, meta, 5, 5 + n, 5 + 2 * n, n, 0, shift, 0, threads)


needs_cuda = pytest.mark.skipif(not CUDA_OK, reason=f"cuda backend unusable: {CUDA_WHY}")


@needs_cuda
def test_staging_is_allocated_once_and_grown(rng):
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    st = pool.storage
    sizes = rng.integers(100, 2000, 6)
    hs = pool.alloc_batch(sizes)
    payload = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
    pool.write_batch(hs, payload, sizes)
    pinned = st._pinned
    for _ in range(3):                           # same size: the same pinned buffer
        pool.write_batch(hs, payload, sizes)
        pool.read_batch(hs)
        assert st._pinned is pinned
    big = pool.alloc_batch([4096] * 40)          # bigger batch: grown once
    pool.write_batch(big, np.zeros(4096 * 40, np.uint8))
    assert st._pinned.size >= 4096 * 40 and st._pinned is not pinned
    pool.close()


@needs_cuda
def test_pipelined_copy_in_keeps_every_byte(rng, monkeypatch):
    from devpool.kernels import _device
    monkeypatch.setattr(_device, "PIPELINE_CHUNK", 5000)    # force many chunks
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    sizes = rng.integers(500, 3000, 12)
    hs = pool.alloc_batch(sizes)
    payload = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
    pool.write_batch(hs, payload, sizes)
    data, _ = pool.read_batch(hs)
    assert data.tobytes() == payload.tobytes()
    pool.close()


@needs_cuda
def test_pipelined_halves_are_aligned_and_guarded(rng, monkeypatch):
    """Mixed object sizes over many chunks: every chunk's columns start 8-aligned in
    staging (the strict simulator refuses a misaligned int64 argument), and without the
    wait on a half's event the strict simulator's queued copies read the next chunk's
    bytes, so the data comes back wrong: the guard is what keeps it right."""
    from devpool.kernels import _device
    monkeypatch.setattr(_device, "PIPELINE_CHUNK", 5000)
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    sizes = np.array([1, 4096, 3, 2500, 2501, 7, 4000, 999, 4095, 13, 3000, 2997])
    hs = pool.alloc_batch(sizes)
    payload = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
    pool.write_batch(hs, payload, sizes)
    assert pool.read_batch(hs)[0].tobytes() == payload.tobytes()
    if SIMULATED:                       # on a GPU the race may or may not corrupt: no proof either way
        monkeypatch.setattr(pool.storage, "_wait", lambda half, what: None)      # forget the guard
        pool.write_batch(hs, payload[::-1].copy(), sizes)
        assert pool.read_batch(hs)[0].tobytes() != payload[::-1].tobytes()
    pool.close()


@pytest.mark.skipif(not SIMULATED, reason="tests the simulator's strict provider, which a GPU run does not use")
def test_strict_simulator_behaves_like_a_gpu_where_bugs_hide():
    """Queued work runs at synchronisation (a host write before then reaches the copy),
    retired buffers are poisoned, and a misaligned typed argument is refused."""
    from devpool.kernels import _device
    from devpool.kernels._cuda import check_launch
    mem = _device._SimMemory()
    stream = mem.stream()
    host = np.full(64, 1, np.uint8)
    dev = mem.alloc(64)
    mem.h2d(dev, 0, host, 0, 64, stream)
    host[:] = 2                                      # written before the copy ran
    mem.sync(stream)
    assert (dev._ary[:64] == 2).all()
    ev = mem.event()
    mem.d2h(host, 0, dev, 0, 8, stream)
    mem.record(ev, stream)
    mem.d2h(host, 8, dev, 0, 8, stream)
    mem.wait(ev)                                     # runs up to the event, not past it
    assert len(stream.queue) == 1
    mem.retire(dev)
    assert (dev._ary == _device.POISON).all()
    u8, i64 = mem.kview(mem.alloc(1024))
    u64 = u8.view(np.uint64)
    check_launch(K.copy_kernel, (u8, u8, u64, u64, i64, 0, 0, 0, 0, 0, 0, 1))      # aligned: accepted
    mis = mem.alloc(1024)
    bad = type(u8)(mis._ary[1:1017].view(np.int64))       # an int64 view at an odd address
    with pytest.raises(TypeError, match="misaligned"):
        check_launch(K.copy_kernel, (u8, u8, u64, u64, bad, 0, 0, 0, 0, 0, 0, 1))
    with pytest.raises(TypeError, match="none of its declared signatures"):
        check_launch(K.copy_kernel, (u8, u8, u64, u64, u8, 0, 0, 0, 0, 0, 0, 1))


def test_every_kernel_declares_its_launch_types():
    import devpool.kernels.lz4_device  # noqa: F401  (declares its kernels on import)
    from devpool.kernels._cuda import KERNELS
    names = {k.rsplit(".", 1)[1] for k in KERNELS}
    assert {"copy_kernel", "compress_kernel", "decompress_kernel"} <= names
    assert all(k.signatures and all(len(s) == k.py_func.__code__.co_argcount for s in k.signatures)
               for k in KERNELS.values())


@needs_cuda
def test_single_object_verbs_are_one_direct_copy(rng, monkeypatch):
    """write_one / read_one: one copy between the pinned page buffer (allocated once)
    and the arena, one synchronisation, no staging and no kernel."""
    from devpool.kernels._device import CudaStorage
    st = CudaStorage(1 << 20)
    st.commit(0, 1 << 16)
    calls = []
    for verb in ("h2d", "d2h", "d2d", "launch", "sync"):
        real = getattr(st.mem, verb)
        monkeypatch.setattr(st.mem, verb, lambda *a, _v=verb, _r=real: (calls.append(_v), _r(*a))[1])
    data = rng.integers(0, 256, 4096, dtype=np.uint8)
    st.write_one(12345, data)
    page = st._page
    assert calls == ["h2d", "sync"] and st._stage_size == 0
    calls.clear()
    out = np.zeros(4096, np.uint8)
    st.read_one(12345, out)
    assert calls == ["d2h", "sync"] and st._page is page and out.tobytes() == data.tobytes()
    small = np.zeros(5, np.uint8)
    st.read_one(12345 + 4091, small)
    assert small.tobytes() == data[-5:].tobytes() and st._page is page
    with pytest.raises(devpool.DeviceError, match="outside"):
        st.read_one((1 << 16) * 2, out)
    st.close()


@needs_cuda
def test_single_write_takes_a_device_buffer_of_the_objects_size(rng):
    """``Pool.write`` with a device buffer, as ``write_batch`` takes a device payload:
    copied device to device; a buffer of another size is refused and writes nothing."""
    from numba import cuda
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    data = rng.integers(0, 256, 1000, dtype=np.uint8)
    h = pool.alloc(1000, data=np.zeros(1000, np.uint8))
    pool.write(h, cuda.to_device(data))
    assert pool.read(h).tobytes() == data.tobytes()
    with pytest.raises(devpool.BadInputError, match="999 bytes"):
        pool.write(h, cuda.to_device(np.zeros(999, np.uint8)))
    assert pool.read(h).tobytes() == data.tobytes()
    pool.close()


@needs_cuda
def test_arena_grows_in_place_within_one_chunk_and_once_for_a_reserved_batch(monkeypatch):
    """The storage's arena maps memory as it grows (under the simulator its stand-in
    driver; on a GPU CUDA's): what the card holds never exceeds the arena by more than
    one chunk, a reserved batch grows it once, and a trim gives whole chunks back."""
    from devpool.kernels._device import CudaStorage
    st = CudaStorage(1 << 30)
    if st.arena.kind != "mapped":
        pytest.skip(f"this device's arena is reallocated: {st.arena.why}")
    chunk = st.arena.chunk
    resizes = []
    real = st.arena.resize
    monkeypatch.setattr(st.arena, "resize", lambda n, copy=None: (resizes.append(n), real(n, copy))[1])
    seg = 1 << 16
    for s_ in range(160):                             # 10 MiB, one segment at a time
        st.commit(s_ * seg, seg)
    assert st.arena.size == -(-160 * seg // chunk) * chunk and st.arena.peak <= 160 * seg + chunk
    assert len(resizes) == -(-160 * seg // chunk)     # once per chunk crossed, never per segment
    resizes.clear()
    st.reserve(40 << 20)
    for s_ in range(160, 640):
        st.commit(s_ * seg, seg)
    assert resizes == [-(-(40 << 20) // chunk) * chunk] and st.arena.peak <= (40 << 20) + chunk
    for s_ in range(320, 640):
        st.release(s_ * seg, seg)
    st.trim()
    assert st.arena.size == -(-320 * seg // chunk) * chunk     # the top chunks unmapped
    st.close()


@needs_cuda
def test_device_oom_while_growing_is_pool_full_and_changes_nothing(rng, monkeypatch):
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    hs = pool.alloc_batch([3000] * 4)
    payload = rng.integers(0, 256, 12000, dtype=np.uint8)
    pool.write_batch(hs, payload)
    before = pool.stats()

    arena = pool.storage.arena
    if arena.kind == "mapped":                   # the card is full: mapping another chunk fails
        def oom(nbytes):
            raise MemoryError("cuMemCreate: CUDA_ERROR_OUT_OF_MEMORY (stand-in)")
        monkeypatch.setattr(arena.driver, "create", oom)
    else:
        def oom(n):
            raise MemoryError("simulated device OOM")
        monkeypatch.setattr(pool.storage.mem, "alloc_arena", oom)
    with pytest.raises(devpool.PoolFullError, match="device out of memory"):
        pool.alloc_batch([4000] * 40)            # needs the arena to grow
    after = pool.stats()
    assert after["obj_used"] == before["obj_used"] and after["pool_total_size"] == before["pool_total_size"]
    monkeypatch.undo()
    assert pool.read_batch(hs)[0].tobytes() == payload.tobytes()
    pool.close()


def _faulty_kernel(real, fail):
    """A stand-in for the copy kernel, declared like it, whose launch runs ``fail(args)``
    on the device (when the stream is synchronised) before or instead of the real one."""
    class Faulty:
        _devpool_kernel = real._devpool_kernel

        def __getitem__(self, cfg):
            def run(*args):
                if fail(args):
                    raise RuntimeError("an illegal memory access was encountered")
                return real[cfg](*args)
            return run
    return Faulty()


#: where a fault is injected: in the kernel (the simulator runs it when its stream is
#: synchronised) or at the synchronisation after real work (on a GPU, and here too)
FAULT_AT = ["kernel", "sync"] if SIMULATED else ["sync"]


def _inject_fault(monkeypatch, storage, fail, at):
    """The next copy kernel for which ``fail(args)`` holds faults. ``at="kernel"``: the
    kernel itself faults when its stream runs it (the simulator); ``at="sync"``: the work
    runs for real and the synchronisation after it reports the fault, as a GPU reports
    one (a kernel that really faulted would leave this process's CUDA context dead for
    every later test)."""
    from devpool.kernels import _device
    if at == "kernel":
        monkeypatch.setattr(_device.K, "copy_kernel", _faulty_kernel(_device.K.copy_kernel, fail))
        return
    hit = []
    real_launch, real_sync = storage.mem.launch, storage.mem.sync

    def launch(what, kernel, grid, block, stream, args):
        if fail(args):
            hit.append(what)
        return real_launch(what, kernel, grid, block, stream, args)

    def sync(stream):
        real_sync(stream)
        if hit:
            raise RuntimeError(f"an illegal memory access was encountered ({hit[0]})")
    monkeypatch.setattr(storage.mem, "launch", launch)
    monkeypatch.setattr(storage.mem, "sync", sync)


@needs_cuda
@pytest.mark.parametrize("at", FAULT_AT)
def test_kernel_fault_is_a_device_error_and_the_storage_refuses_further_calls(rng, monkeypatch, at):
    """A fault while a kernel runs leaves a real CUDA context unusable (the error is
    sticky): the storage names the step, says so, refuses every later call with a
    DeviceError instead of pretending, and still closes."""
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    hs = pool.alloc_batch([100, 200])
    _inject_fault(monkeypatch, pool.storage, lambda a: True, at)
    with pytest.raises(devpool.DeviceError, match="scatter.*context unusable") as info:
        pool.write_batch(hs, bytes(300))
    assert isinstance(info.value.__cause__, RuntimeError)
    monkeypatch.undo()
    with pytest.raises(devpool.DeviceError, match="unusable after an earlier fault"):
        pool.read_batch(hs)
    with pytest.raises(devpool.DeviceError, match="unusable after an earlier fault"):
        pool.read(hs[0])
    st, far = pool.storage, np.array([1 << 40], np.int64)      # (a bad range too: the fault first)
    for verb in (lambda: st.gather(far, np.array([16], np.int64), np.zeros(16, np.uint8), np.zeros(1, np.int64)),
                 lambda: st.move(far, np.zeros(1, np.int64), np.array([16], np.int64)),
                 lambda: st.scatter(np.zeros(16, np.uint8), np.zeros(1, np.int64), far, np.array([16], np.int64))):
        with pytest.raises(devpool.DeviceError, match="unusable after an earlier fault"):
            verb()
    assert "scatter kernel" in pool.stats()["device_fault"]
    pool.close()


@needs_cuda
def test_launch_error_runs_nothing_and_the_storage_stays_usable(rng, monkeypatch):
    """A launch refused before anything ran (here: argument types no signature declares)
    is a DeviceError; the arena is untouched and the storage goes on working."""
    from devpool.kernels import _device
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    hs = pool.alloc_batch([100, 200])
    payload = rng.integers(0, 256, 300, dtype=np.uint8)
    pool.write_batch(hs, payload)
    real = _device.K.copy_kernel
    from devpool.kernels._cuda import check_launch

    def launch(what, kernel, grid, block, stream, args):
        bad = args[:4] + (args[4].view(np.int32),) + args[5:]          # the int64 columns as int32
        check_launch(kernel, bad)            # what the simulator checks at every launch; on a GPU
        return real_launch(what, kernel, grid, block, stream, bad)       # the bad launch never runs
    real_launch = pool.storage.mem.launch
    monkeypatch.setattr(pool.storage.mem, "launch", launch)
    with pytest.raises(devpool.DeviceError, match="gather kernel over 2 objects failed to launch.*declared"):
        pool.read_batch(hs)
    monkeypatch.undo()
    assert real is _device.K.copy_kernel
    assert pool.read_batch(hs)[0].tobytes() == payload.tobytes()
    pool.close()


def test_cuda_unavailable_is_a_clear_devpool_error():
    """Without a GPU and without the simulator, asking for cuda names what is missing."""
    code = ("import devpool\n"
            "ok, why = devpool.available_backends()['cuda']\n"
            "try:\n"
            "    devpool.open_pool('cuda', 1 << 20)\n"
            "    print('OPENED', why)\n"
            "except devpool.BackendUnavailableError as e:\n"
            "    assert isinstance(e, RuntimeError) and 'cuda' in str(e)\n"
            "    print('REFUSED', e)\n"
            "p = devpool.open_pool('auto', 1 << 20)\n"
            "print('AUTO', p.stats()['backend'], p.stats()['backend_reason'])\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    if "REFUSED" in out.stdout:                   # no GPU here: auto falls back to host and says why
        assert "AUTO host auto: cuda unusable" in out.stdout
    else:                                         # a real GPU: auto takes it
        assert "AUTO cuda" in out.stdout


@needs_cuda
@pytest.mark.parametrize("at", FAULT_AT)
def test_a_fault_in_compaction_is_reported_not_papered_over(rng, monkeypatch, at):
    """The compaction's scatter faults after overwriting part of the arena. On a GPU
    the context is then dead, so no restore can run: the storage says the contents are
    lost and refuses further calls (no pretend restore)."""
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    sizes = rng.integers(500, 3000, 24)
    hs = pool.alloc_batch(sizes)
    pool.write_batch(hs, rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8), sizes)
    pool.free_batch(hs[::2])
    arena = pool.storage._arena_k
    _inject_fault(monkeypatch, pool.storage, lambda a: a[0] is arena, at)
    with pytest.raises(devpool.DeviceError, match="move.*contents lost"):
        pool.compact()
    monkeypatch.undo()
    with pytest.raises(devpool.DeviceError, match="unusable"):
        pool.read_batch(hs[1::2])
    pool.close()


@needs_cuda
def test_lz4_device_blocks_never_leave_the_device(rng, tmp_path, monkeypatch):
    """Zswap with lz4-device over a device pool: pages go in raw, blocks are compressed
    into the arena device to device (byte-identical to lz4.block), loads decode on the
    device; the host copy paths carry only pages stored as-is."""
    import lz4.block

    from tests.pages import make_pages
    pool = devpool.open_pool("cuda", 1 << 22, segment_bytes=16384)
    zs = devpool.Zswap(pool, "lz4-device", max_pool_percent=100, backing=tmp_path / "swap")
    assert zs.stats()["blocks_on_device"]
    st = pool.storage
    host_in, host_out, dev_in, dev_out = [], [], [], []

    def spy(log, real, arg):                          # log each call's lengths
        def wrapper(*args):
            log.append(args[arg].copy())
            return real(*args)
        return wrapper
    monkeypatch.setattr(st, "scatter", spy(host_in, st.scatter, 3))
    monkeypatch.setattr(st, "gather", spy(host_out, st.gather, 1))
    monkeypatch.setattr(st, "scatter_device", spy(dev_in, st.scatter_device, 3))
    monkeypatch.setattr(st, "gather_device", spy(dev_out, st.gather_device, 1))

    def no_host_blocks(*a, **k):
        raise AssertionError("blocks were brought back to the host")
    monkeypatch.setattr(zs.codec, "compress_batch", no_host_blocks)
    monkeypatch.setattr(zs.codec, "compress_blocks_trusted", no_host_blocks)

    pages = make_pages(7, rng, ("text", "struct", "random", "same", "struct", "text", "random"))
    offsets = np.arange(100, 107)
    assert zs.store_batch(offsets, pages).all()
    compressed = [0, 1, 4, 5]                          # text, struct, struct, text
    assert [x.tolist() for x in dev_in] == \
        [[len(lz4.block.compress(pages[i].tobytes(), store_size=False)) for i in compressed]]
    assert [x.tolist() for x in host_in] == [[4096, 4096]]          # the two random pages, as-is
    for i in compressed:                                             # the arena holds lz4's bytes
        blob = pool.read(zs._handle_of(offsets[i]))
        assert blob.tobytes() == lz4.block.compress(pages[i].tobytes(), store_size=False)
    host_out.clear()
    zs.writeback(1)                                   # oldest entry: decoded on the device, to the file
    assert zs.entry_kind(100) == "backing" and len(dev_out) == 1 and host_out == []
    got = zs.load_batch(offsets)
    np.testing.assert_array_equal(got, pages)
    assert [x.tolist() for x in host_out] == [[4096, 4096]]          # only the as-is pages
    assert len(dev_out) == 2 and dev_out[1].size == 3                # rows 1, 4, 5 on the device
    st_ = zs.stats()
    assert st_["stored_pages"] == 0 and st_["decompress_fail"] == 0
    zs.close()
    pool.close()


@needs_cuda
def test_device_path_faults_lose_no_page(rng, monkeypatch):
    """With blocks on the device: a failed device-to-device copy-in leaves the old
    entries in place, and a corrupt block is a counted decompress failure, not a page."""
    from tests.pages import make_pages
    pool = devpool.open_pool("cuda", 1 << 22, segment_bytes=16384)
    zs = devpool.Zswap(pool, "lz4-device", max_pool_percent=100)
    old = make_pages(3, rng, ("text", "struct"))
    zs.store_batch([1, 2, 3], old)
    used = pool.stats()["obj_used"]

    def broken(*args):
        raise devpool.DeviceError("simulated fault in the device scatter")
    monkeypatch.setattr(pool.storage, "scatter_device", broken)
    with pytest.raises(devpool.DeviceError, match="simulated"):
        zs.store_batch([2, 3, 4], make_pages(3, rng, ("struct",)))
    monkeypatch.undo()
    assert pool.stats()["obj_used"] == used and zs.entry_kind(4) is None
    h = zs._handle_of(2)
    pool.write(h, np.full(pool.size_of(h), 0xFF, np.uint8))        # corrupt one block in place
    with pytest.raises(devpool.CorruptDataError, match="offsets \\[2\\]"):
        zs.load_batch([1, 2, 3])
    assert zs.stats()["decompress_fail"] == 1 and zs.entry_kind(1) == "pool"
    np.testing.assert_array_equal(zs.load_batch([1, 3]), old[[0, 2]])
    zs.close()
    pool.close()


@needs_cuda
def test_lz4_compress_kernel_strides_by_workers_with_interleaved_tables(rng):
    """More threads than workers (a grid rounded up to whole blocks): each worker strides
    by the number of workers, so no page is skipped, and the interleaved tables give
    every page liblz4's bytes."""
    import lz4.block

    from devpool.kernels import _lz4_core as core
    from devpool.kernels._cuda import cuda, launch
    from devpool.kernels.lz4_device import TABLE, compress_kernel
    from tests.pages import make_pages
    pages = make_pages(7, rng, ("text", "struct", "zero", "random"))
    d_pages = cuda.to_device(pages)
    d_out = cuda.device_array((7, core.PAGE_BOUND), np.uint8)
    lengths = np.full(7, -1, np.int64)
    d_len = cuda.to_device(lengths)
    workers = 3
    d_tab = cuda.to_device(np.full(workers * TABLE, 12345, np.int32))   # dirty: cleared per page
    launch(compress_kernel, 2, 4, None, d_pages, d_out, d_len, d_tab, workers)     # 8 threads, 3 workers
    got, rows = d_len.copy_to_host(), d_out.copy_to_host()
    for i in range(7):
        want = lz4.block.compress(pages[i].tobytes(), store_size=False)
        assert got[i] == len(want) and rows[i, :got[i]].tobytes() == want, i
