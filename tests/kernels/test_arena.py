"""The device arena's growth (issue 28: a 60 GB pool on an 80 GB card stopped at 32-47 GB,
the old arena and its reallocation held at once). The growth logic is tested over a
stand-in driver that holds no memory and records what a card would hold, so the card's
size can be 80 GB here; the same logic runs under every suite on the simulator's driver
and, on a GPU, over CUDA's virtual memory management (``CudaVmm``), whose every driver
call is checked here against the installed ``cuda.bindings``.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap

import pytest

from devpool.kernels import _arena
from devpool.kernels._arena import MappedArena, ReallocArena, chunk_size

GB = 10 ** 9
GiB = 1 << 30


class Card:
    """A stand-in driver: ``held`` bytes of a card of ``total`` (peak recorded), no memory."""

    granularity = 2 << 20

    def __init__(self, total: int, fail_after: int | None = None):
        self.total, self.held, self.peak = total, 0, 0
        self.fail_after = fail_after        # creates that succeed before the card "fills"
        self.mapped: dict[int, int] = {}    # address -> bytes
        self.reserved = []

    def reserve(self, nbytes):
        self.reserved.append(nbytes)
        return 1 << 40

    def free(self, base, nbytes):
        self.reserved.remove(nbytes)

    def create(self, nbytes):
        if self.held + nbytes > self.total or self.fail_after == 0:
            raise MemoryError("cuMemCreate: CUDA_ERROR_OUT_OF_MEMORY")
        if self.fail_after is not None:
            self.fail_after -= 1
        self.held += nbytes
        self.peak = max(self.peak, self.held)
        return nbytes

    def map(self, addr, nbytes, handle):
        assert addr not in self.mapped
        self.mapped[addr] = nbytes

    def unmap(self, addr, nbytes):
        assert self.mapped.pop(addr) == nbytes

    def release(self, handle):
        self.held -= handle

    def views(self, base, nbytes):
        return ("buf", base, nbytes), ("kernel", base, nbytes)


class CardMemory:
    """The reallocating arena's provider over the same card: an allocation holds its bytes."""

    def __init__(self, card: Card):
        self.card = card

    def alloc_arena(self, n):
        self.card.create(n)
        return {"bytes": n}

    def retire(self, buf):
        self.card.release(buf["bytes"])

    def kview(self, buf):
        return buf, None


def grow(arena, card, target: int, step: int = GiB) -> int:
    """Commit ``target`` bytes ``step`` at a time as the storage does; returns how far it got."""
    end = 0
    try:
        while end < target:
            end += step
            if end > arena.size:
                arena.resize(arena.target(end, target), copy=lambda new, old, n: None)
    except MemoryError:
        return end - step
    return end


def test_a_pool_of_60_gb_fits_an_80_gb_card_mapped_in_place():
    card = Card(80 * GB)
    arena = MappedArena(card, 64 * GiB)
    assert grow(arena, card, 60 * GB) == 60 * GB // GiB * GiB + GiB * (60 * GB % GiB > 0)
    assert card.peak <= arena.size <= 60 * GB + arena.chunk             # never more than one chunk over
    assert arena.chunk == _arena.MAX_CHUNK and len(card.mapped) == arena.size // arena.chunk


def test_reallocation_stops_near_half_the_card():
    """What the issue saw, reproduced on the stand-in: the fallback holds both arenas."""
    card = Card(80 * GB)
    got = grow(ReallocArena(CardMemory(card), 64 * GiB, "test"), card, 60 * GB)
    assert 30 * GB < got < 50 * GB


def test_a_failed_growth_unmaps_what_it_mapped_and_keeps_the_rest():
    card = Card(80 * GB)
    arena = MappedArena(card, 64 * GiB)
    arena.resize(4 * arena.chunk)
    before = (arena.size, list(arena.handles), dict(card.mapped), card.held, arena.buf)
    card.fail_after = 2                                     # the third new chunk fails
    with pytest.raises(MemoryError):
        arena.resize(10 * arena.chunk)
    assert (arena.size, arena.handles, card.mapped, card.held, arena.buf) == before

    def broken_map(addr, nbytes, handle):
        raise RuntimeError("cuMemMap: CUDA_ERROR_INVALID_VALUE")
    card.fail_after = None
    card.map = broken_map
    with pytest.raises(RuntimeError, match="cuMemMap"):
        arena.resize(5 * arena.chunk)
    assert card.held == before[3] and arena.size == before[0]          # the created chunk was released


def test_shrinking_gives_whole_chunks_back_from_the_top_and_close_frees_the_range():
    card = Card(80 * GB)
    arena = MappedArena(card, 1 * GiB)
    chunk = arena.chunk
    assert chunk == chunk_size(GiB, card.granularity) == 16 << 20
    arena.resize(5 * chunk + 1)
    assert arena.size == 6 * chunk and card.held == 6 * chunk
    assert not arena.worth_shrinking(5 * chunk + 7) and arena.worth_shrinking(5 * chunk)
    arena.resize(2 * chunk)
    assert arena.size == 2 * chunk and sorted(card.mapped) == [arena.base, arena.base + chunk]
    assert arena.buf == ("buf", arena.base, 2 * chunk)
    with pytest.raises(ValueError, match="beyond the arena's reserved"):
        arena.resize(GiB + 1)
    arena.close()
    assert card.held == 0 and card.mapped == {} and card.reserved == [] and arena.buf is None


def test_chunks_follow_the_capacity_within_bounds():
    g = 2 << 20
    assert chunk_size(1 << 20, g) == g                     # a test's small pool: one granule
    assert chunk_size(64 * GiB, g) == _arena.MAX_CHUNK
    assert chunk_size(3 * GiB, g) == 48 << 20
    assert chunk_size(3 * GiB + 12345, g) % g == 0


def test_a_range_too_large_to_reserve_falls_back_to_reallocation():
    """Capacity is a ceiling: a storage of a petabyte opens (nothing is committed), its
    arena reallocating because no such range can be reserved, and says so."""
    import numpy as np

    from tests.conftest import cuda_usable
    if not cuda_usable()[0]:
        pytest.skip("no CUDA device and no simulator")
    from devpool.kernels._device import CudaStorage
    st = CudaStorage(1 << 50)
    try:
        d = st.describe()
        assert d["arena"] == "reallocated" and "unavailable" in d["arena_how"], d["arena_how"]
        st.commit(0, 4096)
        page = np.arange(4096, dtype=np.uint16).view(np.uint8)[:4096].copy()
        st.write_one(0, page)
        back = np.empty(4096, np.uint8)
        st.read_one(0, back)
        assert back.tobytes() == page.tobytes()
    finally:
        st.close()


def test_without_a_driver_the_cupy_provider_says_why_it_reallocates():
    """Here (no driver) CUDA's virtual memory calls fail, and the provider falls back to
    reallocation saying why; on a GPU (``--gpu``) it maps."""
    pytest.importorskip("cupy")
    from devpool.kernels._cuda import simulated
    from devpool.kernels._device import _CupyMemory
    arena = _CupyMemory().arena(1 << 24)
    if simulated():
        assert arena.kind == "reallocated" and "virtual memory management unavailable" in arena.why
    else:
        assert arena.kind == "mapped", arena.why
        arena.close()


# --- CudaVmm's calls against the installed cuda.bindings (no GPU needed) ---------------------
def _calls() -> dict[str, int]:
    """``cu.<name>(...)`` / ``self.cu.<name>(...)`` calls in CudaVmm, with their argument counts."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(_arena.CudaVmm)))
    out = {}
    for node in ast.walk(tree):
        owner = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
        if (isinstance(owner, ast.Attribute) and owner.attr == "cu") or (isinstance(owner, ast.Name)
                                                                          and owner.id == "cu"):
            if node.func.attr.startswith("cu"):                    # functions, not structures
                out[node.func.attr] = len(node.args)
    return out


def test_every_driver_call_exists_with_the_arguments_given():
    driver = pytest.importorskip("cuda.bindings.driver")
    calls = _calls()
    assert {"cuInit", "cuMemAddressReserve", "cuMemCreate", "cuMemMap", "cuMemSetAccess", "cuMemUnmap",
            "cuMemRelease", "cuMemAddressFree", "cuMemGetAllocationGranularity"} <= set(calls)
    for name, nargs in calls.items():
        doc = getattr(driver, name).__doc__ or ""
        m = re.match(rf"\s*{name}\((.*?)\)", doc)
        assert m, f"no signature line for {name}"
        params = [p for p in m.group(1).split(",") if p.strip()]
        assert len(params) == nargs, f"{name} takes {len(params)} arguments ({m.group(1)}), CudaVmm passes {nargs}"


def test_the_structures_and_constants_exist():
    driver = pytest.importorskip("cuda.bindings.driver")
    prop = driver.CUmemAllocationProp()
    prop.type = driver.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location.type = driver.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    prop.location.id = 0
    access = driver.CUmemAccessDesc()
    access.location = prop.location
    access.flags = driver.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    assert driver.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED is not None
    assert driver.CUresult.CUDA_ERROR_OUT_OF_MEMORY != driver.CUresult.CUDA_SUCCESS


def test_driver_errors_become_exceptions_naming_the_call():
    """``_check``: an out-of-memory result is a MemoryError (the pool says PoolFullError),
    any other error a RuntimeError, each naming the call; success gives the value."""
    driver = pytest.importorskip("cuda.bindings.driver")
    vmm = _arena.CudaVmm.__new__(_arena.CudaVmm)            # no driver here: the checker alone
    vmm.cu = driver
    assert vmm._check("cuMemCreate", (driver.CUresult.CUDA_SUCCESS, 42)) == 42
    assert vmm._check("cuMemMap", (driver.CUresult.CUDA_SUCCESS,)) is None
    with pytest.raises(MemoryError, match="cuMemCreate: CUDA_ERROR_OUT_OF_MEMORY"):
        vmm._check("cuMemCreate", (driver.CUresult.CUDA_ERROR_OUT_OF_MEMORY, None))
    with pytest.raises(RuntimeError, match="cuMemMap: CUDA_ERROR_INVALID_VALUE"):
        vmm._check("cuMemMap", (driver.CUresult.CUDA_ERROR_INVALID_VALUE,))


@pytest.mark.device
def test_the_reallocating_fallback_keeps_every_byte_through_growth_and_trim(monkeypatch):
    """Where mapping is refused the storage reallocates: bytes survive each growth and
    each trim, a refused growth is PoolFullError with the pool intact, and the arena
    says how it grows."""
    import numpy as np

    import devpool
    from devpool.kernels import _device
    from tests.conftest import cuda_usable
    if not cuda_usable()[0]:
        pytest.skip("no CUDA device and no simulator")
    for provider in (_device._NumbaMemory, _device._CupyMemory, _device._SimMemory):
        monkeypatch.setattr(provider, "arena", lambda self, cap: ReallocArena(self, cap, "reallocated: the test"))
    rng = np.random.default_rng(5)
    with devpool.open_pool("cuda", 8 << 20, segment_bytes=16384) as pool:
        assert pool.stats()["arena"] == "reallocated" and pool.stats()["arena_how"] == "reallocated: the test"
        sizes = rng.integers(500, 4000, 60)
        payload = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
        cut = int(sizes[:10].sum())
        hs = pool.alloc_batch(sizes[:10])
        pool.write_batch(hs, payload[:cut], sizes[:10])
        more = pool.alloc_batch(sizes[10:])                      # grows: a copy into a larger arena
        pool.write_batch(more, payload[cut:], sizes[10:])
        hs = np.concatenate([hs, more])
        grown = pool.stats()["arena_bytes"]
        assert pool.stats()["arena_peak_bytes"] > grown            # old and new held at once while copying
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        pool.free_batch(hs[::2])
        pool.compact()
        assert pool.stats()["arena_bytes"] < grown                 # trimmed to the top
        want = b"".join(payload[s:s + n].tobytes() for s, n in zip(starts[1::2], sizes[1::2]))
        assert pool.read_batch(hs[1::2])[0].tobytes() == want

        def oom(n):
            raise MemoryError("out of memory (the test)")
        monkeypatch.setattr(pool.storage.mem, "alloc_arena", oom)
        with pytest.raises(devpool.PoolFullError, match="device out of memory"):
            pool.alloc_batch([4000] * 200)
        assert pool.read_batch(hs[1::2])[0].tobytes() == want
