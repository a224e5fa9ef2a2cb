"""The device backend's own parts: kernel logic compiled for the CPU, staging, faults.

The contract and frontend suites already run on the cuda backend (the simulator here,
a GPU with ``--gpu``); these tests cover what only the device storage has.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import devpool
from devpool.kernels import _copy_kernels as K

CUDA_OK, CUDA_WHY = devpool.available_backends()["cuda"]


@pytest.mark.parametrize("index_dtype", [np.int64, np.int32, np.uint32, np.uint64])
@pytest.mark.parametrize("threads", [1, 3, 32])
def test_kernel_logic_compiled_with_njit(index_dtype, threads):
    """The copy kernel's per-object loop, compiled by numba for the CPU with bounds
    checks, both ways (scatter into an arena, gather out of it), over every index dtype
    a caller might hand it (the simulator does not reproduce numba's integer typing)."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 300, 40).astype(index_dtype)
    starts = np.concatenate([[0], np.cumsum(lengths.astype(np.int64))[:-1]]).astype(index_dtype)
    offsets = (np.arange(40) * 320 + 16).astype(index_dtype)
    payload = rng.integers(0, 256, int(lengths.astype(np.int64).sum()), dtype=np.uint8)
    arena = np.zeros(40 * 320 + 64, np.uint8)
    K.cpu_copy(arena, offsets, payload, starts, lengths, threads)           # scatter
    for s, o, n in zip(starts.astype(np.int64), offsets.astype(np.int64), lengths.astype(np.int64)):
        assert arena[o:o + n].tobytes() == payload[s:s + n].tobytes()
    out = np.zeros_like(payload)
    K.cpu_copy(out, starts, arena, offsets, lengths, threads)               # gather
    assert out.tobytes() == payload.tobytes()
    with pytest.raises(IndexError):            # bounds-checked: an overrun is caught
        K.cpu_copy(arena[:100], offsets, payload, starts, lengths, threads)


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
def test_device_oom_while_growing_is_pool_full_and_changes_nothing(rng, monkeypatch):
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    hs = pool.alloc_batch([3000] * 4)
    payload = rng.integers(0, 256, 12000, dtype=np.uint8)
    pool.write_batch(hs, payload)
    before = pool.stats()

    def oom(n):
        raise MemoryError("simulated device OOM")
    monkeypatch.setattr(pool.storage.mem, "device_empty", oom)
    with pytest.raises(devpool.PoolFullError, match="device out of memory"):
        pool.alloc_batch([4000] * 40)            # needs the arena to grow
    after = pool.stats()
    assert after["obj_used"] == before["obj_used"] and after["pool_total_size"] == before["pool_total_size"]
    monkeypatch.undo()
    assert pool.read_batch(hs)[0].tobytes() == payload.tobytes()
    pool.close()


@needs_cuda
def test_kernel_failure_is_a_device_error_with_context(rng, monkeypatch):
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    h = pool.alloc(100)

    class Broken:
        def __getitem__(self, cfg):
            def launch(*args):
                raise RuntimeError("an illegal memory access was encountered")
            return launch
    from devpool.kernels import _device
    monkeypatch.setattr(_device.K, "copy_kernel", Broken())
    with pytest.raises(devpool.DeviceError, match="scatter kernel over 1 objects failed") as info:
        pool.write(h, bytes(100))
    assert isinstance(info.value.__cause__, RuntimeError)
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
def test_failed_compaction_scatter_restores_every_object(rng, monkeypatch):
    """The scatter of a compaction fails after overwriting part of the arena: every
    object is put back from the device temporary, and the pool still reads right."""
    from devpool.kernels import _device
    pool = devpool.open_pool("cuda", 1 << 20, segment_bytes=16384)
    sizes = rng.integers(500, 3000, 24)
    hs = pool.alloc_batch(sizes)
    payload = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
    pool.write_batch(hs, payload, sizes)
    pool.free_batch(hs[::2])
    want = pool.read_batch(hs[1::2])[0].tobytes()
    real = _device.K.copy_kernel
    arena = pool.storage._arena
    scatters = {"n": 0}

    class HalfDone:
        def __getitem__(self, cfg):
            def launch(dst, dst_starts, src, src_starts, lengths):
                if dst is arena:                     # a scatter: into the arena
                    scatters["n"] += 1
                    if scatters["n"] == 1:           # the compaction's scatter: copy some, then fail
                        real[cfg](dst, dst_starts[:3], src, src_starts[:3], lengths[:3])
                        raise RuntimeError("simulated kernel fault")
                return real[cfg](dst, dst_starts, src, src_starts, lengths)
            return launch
    monkeypatch.setattr(_device.K, "copy_kernel", HalfDone())
    with pytest.raises(devpool.DeviceError, match="scatter kernel over .* failed: simulated kernel fault"):
        pool.compact()
    assert scatters["n"] == 2                        # the failed scatter, then the restore
    monkeypatch.setattr(_device.K, "copy_kernel", real)
    assert pool.read_batch(hs[1::2])[0].tobytes() == want
    pool.compact()                                   # and compaction works afterwards
    assert pool.read_batch(hs[1::2])[0].tobytes() == want
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
