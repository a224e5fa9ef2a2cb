"""The zswap frontend over every backend (host, chaos, cuda)."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import devpool
from tests.conftest import cuda_usable
from devpool.codecs import register_codec
from devpool.codecs.lz4_block import Lz4
from tests.pages import make_pages, random_page, same_page, text_page, zero_page
from tests.threads import run_in_threads

KINDS = ("text", "struct", "random", "same", "zero")


@pytest.fixture
def zswap(make_pool, tmp_path):
    made = []

    def factory(backing=True, capacity_bytes=4 << 20, **kw):
        pool = make_pool(capacity_bytes=capacity_bytes)
        path = tmp_path / f"swap{len(made)}" if backing is True else backing or None
        zs = devpool.Zswap(pool, backing=path, **kw)
        made.append(zs)
        return zs

    yield factory
    for zs in made:
        zs.close()


# --- store / load -------------------------------------------------------------------
def test_round_trip_mixed_pages(zswap, rng):
    zs = zswap()
    pages = make_pages(40, rng, KINDS)
    stored = zs.store_batch(np.arange(100, 140), pages)
    assert stored.all()
    st = zs.stats()
    assert st["stored_pages"] == 40 and st["same_filled_pages"] == 16
    assert st["stored_incompressible_pages"] == 8          # the random pages
    got = zs.load_batch(np.arange(139, 120, -1))             # any order
    np.testing.assert_array_equal(got, pages[39:20:-1])
    out = np.zeros((21, 4096), np.uint8)                     # into the caller's buffer
    assert zs.load_batch(np.arange(100, 121), out=out) is out
    np.testing.assert_array_equal(out, pages[:21])


def test_single_load_into_the_callers_page(zswap, rng):
    """``load(o, out=)`` fills the caller's page for every place a page can be: a
    compressed block, a page stored as is, a same-filled word, the backing file."""
    zs = zswap()
    pages = {1: text_page(rng), 2: random_page(rng), 3: same_page(rng), 4: text_page(rng)}
    for o, p in pages.items():
        assert zs.store(o, p) is True
    assert zs.writeback(1) == 1                          # the oldest, offset 1, goes to the file
    st = zs.stats()
    assert st["written_back_pages"] == 1 and st["same_filled_pages"] == 1
    assert st["stored_incompressible_pages"] == 1
    for o, p in pages.items():
        out = np.full(4096, 0xEE, np.uint8)
        assert zs.load(o, out=out) is out
        np.testing.assert_array_equal(out, p)
    assert zs.stats()["stored_pages"] == 0


def test_a_kept_load_leaves_the_page_stored(zswap, rng):
    """``load(o, keep=True)`` (non-exclusive) gives the page and leaves it stored, in
    every place a page can be, counted as a load; a later load (kept or not) gives the
    same bytes, and invalidate frees it."""
    zs = zswap()
    pages = {1: text_page(rng), 2: random_page(rng), 3: same_page(rng), 4: text_page(rng)}
    for o, p in pages.items():
        assert zs.store(o, p) is True
    assert zs.writeback(1) == 1                          # offset 1 to the backing file
    before = zs.stats()
    for o, p in pages.items():
        out = np.full(4096, 0xEE, np.uint8)
        assert zs.load(o, out=out, keep=True) is out
        np.testing.assert_array_equal(out, p)
        np.testing.assert_array_equal(zs.load(o, keep=True), p)
    st = zs.stats()
    assert st["stored_pages"] == before["stored_pages"] and st["pool_total_size"] == before["pool_total_size"]
    assert st["loads_from_pool"] - before["loads_from_pool"] == 6
    assert st["loads_from_backing"] - before["loads_from_backing"] == 2
    np.testing.assert_array_equal(zs.load(4), pages[4])  # exclusive: gone after
    assert not zs.contains(4)
    for o in (1, 2, 3):
        zs.invalidate(o)
    assert zs.stats()["stored_pages"] == 0
    with pytest.raises(devpool.BadInputError, match="keep"):
        zs.store(5, pages[2]) and zs.load(5, keep=1)
    assert zs.contains(5)


def test_a_kept_batch_load_leaves_every_page_stored(zswap, rng):
    """``load_batch(offs, keep=True)`` (a swap device's read: the kernel may read a slot
    again) gives every page from every place one can be, removes none, and marks the
    pool's entries referenced; a later exclusive batch load gives the same bytes."""
    zs = zswap()
    pages = np.stack([text_page(rng), random_page(rng), same_page(rng), text_page(rng)])
    offs = np.array([7, 3, 11, 5])
    assert zs.store_batch(offs, pages).all()
    assert zs.writeback(1) == 1                          # one of them in the backing file
    before = zs.stats()
    for _ in range(2):
        out = np.full((4, 4096), 0xEE, np.uint8)
        assert zs.load_batch(offs, out=out, keep=True) is out
        np.testing.assert_array_equal(out, pages)
    st = zs.stats()
    assert st["stored_pages"] == before["stored_pages"] and st["backing_pages"] == before["backing_pages"]
    assert st["pool_total_size"] == before["pool_total_size"]
    assert st["loads_from_pool"] - before["loads_from_pool"] == 6
    assert st["loads_from_backing"] - before["loads_from_backing"] == 2
    np.testing.assert_array_equal(zs.load_batch(offs), pages)   # exclusive: gone after
    assert not any(zs.contains(int(o)) for o in offs)
    with pytest.raises(devpool.BadInputError, match="keep"):
        zs.store(5, pages[0]) and zs.load_batch([5], keep="yes")
    assert zs.contains(5)


@pytest.mark.parametrize("bad", ["short", "2-d", "int8", "read-only", "strided", "list"])
def test_single_load_refuses_a_bad_out_and_keeps_the_page(zswap, rng, bad):
    zs = zswap()
    page = text_page(rng)
    zs.store(9, page)
    out = {"short": np.empty(4095, np.uint8), "2-d": np.empty((1, 4096), np.uint8),
           "int8": np.empty(4096, np.int8), "read-only": np.empty(4096, np.uint8),
           "strided": np.empty(8192, np.uint8)[::2], "list": [0] * 4096}[bad]
    if bad == "read-only":
        out.flags.writeable = False
    before = zs.stats()
    with pytest.raises(devpool.BadInputError, match="out must be"):
        zs.load(9, out=out)
    assert zs.stats() == before
    np.testing.assert_array_equal(zs.load(9), page)      # still there, unchanged


def test_single_store_and_exclusive_load(zswap, rng):
    zs = zswap()
    page = text_page(rng)
    assert zs.store(7, page) is True
    np.testing.assert_array_equal(zs.load(7), page)
    with pytest.raises(devpool.EntryNotFoundError):
        zs.load(7)                                           # load is exclusive
    assert zs.stats()["stored_pages"] == 0
    assert zs.pool.stats()["obj_used"] == 0


def test_store_replaces_present_offset(zswap, rng):
    zs = zswap()
    a, b = text_page(rng), make_pages(1, rng, ("struct",))[0]
    zs.store(5, a)
    zs.store(5, b)
    assert zs.stats()["stored_pages"] == 1 and zs.pool.stats()["obj_used"] == 1
    np.testing.assert_array_equal(zs.load(5), b)


def test_same_filled_and_zero_pages_take_no_pool_space(zswap, rng):
    zs = zswap()
    pages = np.stack([zero_page(rng), same_page(rng), np.tile(np.arange(8, dtype=np.uint8), 512)])
    assert zs.store_batch([1, 2, 3], pages).all()
    assert zs.pool.stats()["obj_used"] == 0
    assert zs.stats()["same_filled_pages"] == 3
    np.testing.assert_array_equal(zs.load_batch([1, 2, 3]), pages)


def test_incompressible_stored_as_is_with_writeback(zswap, rng):
    zs = zswap()
    page = random_page(rng)
    assert zs.store(1, page)
    assert zs.stats()["stored_incompressible_pages"] == 1
    assert zs.pool.stats()["payload_bytes"] == 4096
    np.testing.assert_array_equal(zs.load(1), page)


@pytest.mark.parametrize("how", ["writeback_off", "no_backing"])
def test_incompressible_rejected_without_writeback(zswap, rng, how):
    zs = zswap(backing=(how == "writeback_off"), writeback=(how != "writeback_off"))
    page = random_page(rng)
    assert zs.store(1, page) is False
    assert zs.stats()["reject_compress_poor"] == 1
    if how == "writeback_off":                # the swap device got it
        assert zs.stats()["backing_pages"] == 1
        np.testing.assert_array_equal(zs.load(1), page)
    else:                                     # not kept: the caller still owns it
        assert not zs.contains(1)


class FailingCodec(Lz4):
    """lz4, except that pages starting with byte 0xEE fail to compress."""

    codec_id = "test-failing"

    packed_blocks = False          # a failed block's bytes stay in data, skipped by starts

    def compress_blocks_trusted(self, pages, rows):
        data, starts, lengths = super().compress_blocks_trusted(pages, rows)
        picked = pages if rows is None else pages[rows]
        return data, starts, np.where(picked[:, 0] == 0xEE, -1, lengths)


@pytest.fixture
def failing_codec():
    """Registers the failing test codec for one test, and takes it out of the registry
    again afterwards (the registry is process-wide)."""
    from devpool.codecs import registry as _codecs
    register_codec(FailingCodec)
    yield FailingCodec.codec_id
    _codecs._REGISTRY.pop(FailingCodec.codec_id, None)


def test_codec_failure_is_refused_not_lost(zswap, rng, failing_codec):
    zs = zswap(compressor=failing_codec)
    pages = make_pages(4, rng, ("text",))
    pages[2, 0] = 0xEE
    stored = zs.store_batch([10, 11, 12, 13], pages)
    assert stored.tolist() == [True, True, False, True]
    assert zs.stats()["reject_compress_fail"] == 1
    np.testing.assert_array_equal(zs.load_batch([10, 11, 12, 13]), pages)   # 12 from the file


@pytest.mark.parametrize("keep", [False, True])
def test_corrupt_block_is_a_decompress_failure(zswap, rng, keep):
    zs = zswap()
    page = text_page(rng)
    zs.store(3, page)
    h = zs._handle_of(3)
    n = zs.pool.size_of(h)
    zs.pool.write(h, np.full(n, 0xFF, np.uint8))             # corrupt it behind zswap's back
    with pytest.raises(devpool.CorruptDataError):
        zs.load(3, keep=keep)
    assert zs.stats()["decompress_fail"] == 1
    assert zs.contains(3) and zs._handle_of(3) == h          # nothing removed, nothing moved
    assert zs.pool.stats()["obj_used"] == 1


# --- limits, writeback, LRU ---------------------------------------------------------
def test_limit_hit_refuses_until_below_accept_threshold(zswap, rng):
    zs = zswap(backing=False, max_pool_bytes=256 * 1024, accept_threshold_percent=50)
    pages = make_pages(400, rng, ("text", "struct"))
    stored = zs.store_batch(np.arange(400), pages)
    st = zs.stats()
    assert st["pool_limit_hit"] >= 1 and not stored.all() and stored.any()
    assert st["pool_total_size"] <= 256 * 1024 + zs.pool.stats()["segment_bytes"]
    assert zs.store(1000, pages[0]) is False                 # still above the threshold
    # loads free space; below 50 % of the limit stores are accepted again
    kept = np.flatnonzero(stored)
    zs.load_batch(kept[: int(kept.size * 0.8)])
    zs.pool.compact()
    assert zs.store(1001, pages[1]) is True


def test_stores_resume_below_90_percent_of_the_limit_by_default(make_pool):
    """Linux's default accept_threshold_percent: once the limit is hit, stores are
    refused until the pool is back under 90 % of it."""
    zs = devpool.Zswap(make_pool(), max_pool_bytes=10 * 16384)
    st = zs.stats()
    assert zs.accept_threshold_percent == 90
    assert st["accept_threshold_bytes"] == 9 * 16384 and st["max_pool_bytes"] == 10 * 16384
    zs.close()


def test_limit_with_backing_writes_refused_pages_to_the_file(zswap, rng):
    zs = zswap(max_pool_bytes=256 * 1024)
    pages = make_pages(400, rng, ("text", "struct"))
    stored = zs.store_batch(np.arange(400), pages)
    st = zs.stats()
    assert st["pool_limit_hit"] >= 1
    assert st["backing_direct_writes"] == int((~stored).sum())
    assert st["written_back_pages"] > 0                      # the shrinker ran
    np.testing.assert_array_equal(zs.load_batch(np.arange(400)), pages)   # nothing lost


def test_writeback_moves_oldest_to_file(zswap, rng, tmp_path):
    zs = zswap()
    pages = make_pages(10, rng, ("text",))
    for i in range(10):
        zs.store(i, pages[i])
    assert zs.writeback(3) == 3
    st = zs.stats()
    assert st["written_back_pages"] == 3 and st["backing_pages"] == 3 and st["stored_pages"] == 7
    assert [zs.entry_kind(i) for i in range(4)] == ["backing"] * 3 + ["pool"]  # the three oldest went
    np.testing.assert_array_equal(zs.load_batch(np.arange(10)), pages)
    assert zs.stats()["loads_from_backing"] == 3


def test_second_chance_rotates_referenced_entries(zswap, rng):
    zs = zswap()
    pages = make_pages(3, rng, ("text",))
    zs.store_batch([0, 1], pages[:2])
    zs.writeback(1)                  # 0 and 1 both referenced: rotated once, then 0 goes
    zs.store(2, pages[2])            # new entry: referenced
    # 1 lost its bit in the first pass; 2 still has it. Without the second chance
    # the LRU would still pick 1 here, so look at the bits directly as well.
    t = zs._t
    assert not t.referenced[t.find_one(1)] and t.referenced[t.find_one(2)]
    assert zs.writeback(1) == 1 and zs.entry_kind(1) == "backing" and zs.entry_kind(2) == "pool"


def test_writeback_without_backing_is_zero(zswap, rng):
    zs = zswap(backing=False)
    zs.store(1, text_page(rng))
    assert zs.writeback(5) == 0


class BrokenBacking(devpool.BackingFile):
    def write_pages(self, offsets, pages):
        raise devpool.WritebackError("disk on fire")


def test_writeback_io_error_keeps_entries(make_pool, rng, tmp_path):
    zs = devpool.Zswap(make_pool(capacity_bytes=4 << 20), backing=BrokenBacking(tmp_path / "s"))
    pages = make_pages(5, rng, ("text",))
    zs.store_batch(np.arange(5), pages)
    with pytest.raises(devpool.WritebackError):
        zs.writeback(3)
    st = zs.stats()
    assert st["writeback_fail"] >= 1 and st["stored_pages"] == 5
    np.testing.assert_array_equal(zs.load_batch(np.arange(5)), pages)


def test_refused_page_with_failing_backing_raises_and_caller_keeps_it(make_pool, rng, tmp_path):
    zs = devpool.Zswap(make_pool(), backing=BrokenBacking(tmp_path / "s"), writeback=False)
    with pytest.raises(devpool.WritebackError):
        zs.store(1, random_page(rng))                        # refused (poor) and unwritable
    assert not zs.contains(1)


# --- invalidate ---------------------------------------------------------------------
def test_invalidate_forms(zswap, rng):
    zs = zswap()
    pages = make_pages(6, rng, KINDS)
    zs.store_batch(np.arange(6), pages)
    zs.writeback(1)
    zs.invalidate(0)
    zs.invalidate(12345)                                     # absent: no-op
    zs.invalidate_batch([1, 2])
    assert [zs.contains(i) for i in range(6)] == [False, False, False, True, True, True]
    zs.invalidate_area()
    assert zs.stats()["stored_pages"] == 0 and zs.pool.stats()["obj_used"] == 0


# --- bad input ----------------------------------------------------------------------
def test_bad_input_changes_nothing(zswap, rng):
    zs = zswap()
    pages = make_pages(3, rng, ("text",))
    zs.store_batch([0, 1, 2], pages)
    before = zs.stats()
    cases = [
        lambda: zs.store(5, np.zeros(4095, np.uint8)),                    # page size
        lambda: zs.store(5, np.zeros(4096, np.uint16)),                   # dtype
        lambda: zs.store(5, np.zeros((2, 2048), np.uint8)),               # shape
        lambda: zs.store(5, np.zeros(8192, np.uint8)[::2]),               # non-contiguous
        lambda: zs.store(-1, pages[0]),                                   # negative offset
        lambda: zs.store(1 << 40, pages[0]),                              # out of range
        lambda: zs.store_batch([3, 3], pages[:2]),                        # repeated offsets
        lambda: zs.store_batch([3, 4, 5], pages[:2]),                     # count mismatch
        lambda: zs.store_batch([3.5], pages[:1]),                         # float offset
        lambda: zs.load_batch([0, 99]),                                   # 99 absent
        lambda: zs.writeback(-1),
        lambda: zs.load_batch([0, 1], out=np.zeros((2, 4096), np.uint16)),         # bad out
        lambda: zs.load_batch([0, 1], out=np.zeros((3, 4096), np.uint8)),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(devpool.DevpoolError):
            case()
        assert zs.stats() == before, f"case {i} changed state"
    with pytest.raises(KeyError):                                         # a KeyError too
        zs.load(77)
    np.testing.assert_array_equal(zs.load_batch([0, 1, 2]), pages)


def test_bad_tunables(make_pool):
    pool = make_pool()
    for kw in ({"max_pool_percent": 0}, {"max_pool_percent": 101}, {"accept_threshold_percent": -1},
               {"max_pool_bytes": 0}, {"compressor": "zstd-9000"}):
        with pytest.raises(devpool.DevpoolError):
            devpool.Zswap(pool, **kw)
    with pytest.raises(devpool.BadInputError):
        devpool.Zswap("not a pool")


# --- the backing file ---------------------------------------------------------------
def test_backing_file_is_private(tmp_path, make_pool):
    path = tmp_path / "swap"
    zs = devpool.Zswap(make_pool(), backing=path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    zs.close()
    open_file = tmp_path / "shared-swap"
    open_file.write_bytes(b"")
    os.chmod(open_file, 0o644)
    with pytest.raises(devpool.WritebackError, match="other users"):
        devpool.Zswap(make_pool(), backing=open_file)


def test_backing_slots_hold_their_own_offset(zswap, rng):
    zs = zswap()
    pages = make_pages(3, rng, ("text",))
    zs.store_batch([4, 9, 5], pages)
    zs.writeback(3)
    data = Path(zs.backing.path).read_bytes()
    for off, page in zip([4, 9, 5], pages):
        assert data[off * 4096:(off + 1) * 4096] == page.tobytes()
    np.testing.assert_array_equal(zs.load(9), pages[1])
    with pytest.raises(devpool.EntryNotFoundError):
        zs.load(6)                                           # an empty slot is not a page


# --- the mission's claim ------------------------------------------------------------
def test_frontend_imports_only_the_pool_contract():
    src = (Path(devpool.__file__).parent / "zswap" / "frontend.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = ("." * node.level) + (node.module or "")
            imported.add(mod)
            imported |= {f"{mod}.{a.name}" for a in node.names}
    forbidden = [m for m in imported if any(w in m.split(".") for w in
                                            ("host", "kernels", "chaos", "storage", "allocator",
                                             "HostStorage", "ChaosStorage", "CudaStorage", "cupy", "numba"))]
    assert not forbidden, f"the frontend imports storage: {forbidden}"


# --- concurrency --------------------------------------------------------------------
def test_threads_mix_store_load_invalidate_writeback(zswap, rng, sized):
    zs = zswap(capacity_bytes=16 << 20, max_pool_bytes=1 << 20)
    shared = make_pages(16, rng, ("text", "struct"))

    def worker(tid):
        r = np.random.default_rng(tid)
        base = 1000 * (tid + 1)
        mine = {}
        for step in range(sized(30, 8, 3)):            # the simulator is slow
            offs = base + r.choice(200, 8, replace=False)
            pages = make_pages(8, r, KINDS)
            zs.store_batch(offs, pages)
            for o, p in zip(offs.tolist(), pages):
                mine[o] = p
            act = r.integers(4)
            if act == 0 and mine:
                o = list(mine)[r.integers(len(mine))]
                np.testing.assert_array_equal(zs.load(o), mine.pop(o))
            elif act == 1 and mine:
                o = list(mine)[r.integers(len(mine))]
                zs.invalidate(o)
                del mine[o]
            elif act == 2:
                zs.writeback(4)
            else:
                zs.pool.compact()
            zs.store(tid % 4, shared[tid % 16])          # shared offsets: last writer wins
        got = zs.load_batch(list(mine))
        for o, page in zip(mine, got):
            np.testing.assert_array_equal(page, mine[o])

    run_in_threads(worker, 4, timeout=300)
    for o in range(4):                                       # a shared offset holds one writer's page
        if zs.contains(o):
            page = zs.load(o)
            assert any((page == shared[t % 16]).all() for t in range(4))


@pytest.mark.parametrize("compressor", ["lz4", {"id": "lz4hc", "level": 3}, "raw", "lz4-njit"],
                         ids=["lz4", "lz4hc", "raw", "lz4-njit"])
def test_every_codec_behind_the_frontend(zswap, rng, compressor):
    zs = zswap(compressor=compressor)
    pages = make_pages(20, rng, KINDS)
    zs.store_batch(np.arange(20), pages)
    if compressor == "raw":                      # stored as-is: incompressible by definition
        assert zs.stats()["stored_incompressible_pages"] == 12
    np.testing.assert_array_equal(zs.load_batch(np.arange(20)), pages)


@pytest.mark.device
def test_device_codec_behind_the_frontend(zswap, rng):
    if not cuda_usable()[0]:
        pytest.skip("no CUDA device and no simulator")
    zs = zswap(compressor="lz4-device")
    pages = make_pages(3, rng, ("text", "struct", "zero"))
    zs.store_batch([5, 6, 7], pages)
    np.testing.assert_array_equal(zs.load_batch([5, 6, 7]), pages)


def test_pool_allocation_failure_is_refused_not_lost(make_pool, rng, tmp_path):
    """The pool fills before zswap's limit does: reject_alloc_fail, and with a backing
    file the refused pages land there; nothing is lost."""
    pool = make_pool(capacity_bytes=64 * 1024)
    zs = devpool.Zswap(pool, max_pool_bytes=10 << 20, backing=tmp_path / "swap")   # limit > capacity
    pages = make_pages(120, rng, ("text", "struct"))
    stored = np.concatenate([zs.store_batch(np.arange(i, i + 8), pages[i:i + 8]) for i in range(0, 120, 8)])
    st = zs.stats()
    assert not stored.all() and st["reject_alloc_fail"] > 0 and st["pool_limit_hit"] == 0
    assert st["backing_direct_writes"] == int((~stored).sum())
    np.testing.assert_array_equal(zs.load_batch(np.arange(120)), pages)
    zs.close()


def test_a_limit_below_one_segment_is_refused_up_front(make_pool):
    pool = make_pool(capacity_bytes=1 << 20, segment_bytes=16384)
    with pytest.raises(devpool.BadInputError, match="smaller than one pool segment"):
        devpool.Zswap(pool, max_pool_bytes=8192)
    devpool.Zswap(pool, max_pool_bytes=16384)              # one segment is enough


def test_one_backing_file_object_has_one_zswap(make_pool, tmp_path):
    bf = devpool.BackingFile(tmp_path / "swap")
    zs = devpool.Zswap(make_pool(), backing=bf)
    with pytest.raises(devpool.WritebackError, match="one owner"):
        devpool.Zswap(make_pool(), backing=bf)
    zs.close()
    devpool.Zswap(make_pool(), backing=bf).close()         # free again once the first closed
    bf.close()


def test_zswap_checks_pages_once_and_calls_only_the_codecs_trusted_verbs(make_pool, rng, tmp_path,
                                                                          monkeypatch):
    """The frontend checks pages at its own edge, then calls the codec's trusted verbs:
    a batch is checked once (it used to be checked by the frontend and again by the
    codec), and neither speed reaches the codec's checked public verbs or its private
    methods."""
    import devpool.codecs.base as codec_base
    import devpool.zswap.frontend as frontend

    class TrustedOnlyLz4(Lz4):
        def _refuse(self, *a, **k):
            raise AssertionError("Zswap called a checked codec verb")
        compress_batch = compress_blocks = decompress_into = decompress_batch = _refuse
        compress_page = decompress_page = _refuse

    seen = []

    def counting(real):
        def check(pages, *a):
            seen.append(pages.shape)
            return real(pages, *a)
        return check
    monkeypatch.setattr(codec_base, "check_pages", counting(codec_base.check_pages))
    monkeypatch.setattr(frontend, "check_pages", counting(frontend.check_pages))
    zs = devpool.Zswap(make_pool(capacity_bytes=4 << 20), TrustedOnlyLz4(), backing=tmp_path / "swap")
    pages = make_pages(12, rng, KINDS)
    assert zs.store_batch(np.arange(12), pages).all()
    assert seen == [(12, 4096)]                        # once, at Zswap's edge
    np.testing.assert_array_equal(zs.load_batch(np.arange(6)), pages[:6])
    for i in range(6, 12):
        np.testing.assert_array_equal(zs.load(i), pages[i])
        assert zs.store(i, pages[i])
    assert zs.writeback(3) == 3
    np.testing.assert_array_equal(zs.load_batch(np.arange(6, 12)), pages[6:])
    zs.close()


def test_a_full_entry_table_refuses_the_store_whole(make_pool, rng, monkeypatch):
    """Past the entry table's last slot a store raises PoolFullError and changes nothing:
    no pool object is left behind, every stored page is still there (the batch reserves
    the table's room before it compresses; a single store frees its object)."""
    from devpool.zswap import entries
    monkeypatch.setattr(entries, "MAX_ENTRIES", 6)
    zs = devpool.Zswap(make_pool(capacity_bytes=4 << 20), max_pool_percent=100)
    pages = make_pages(8, rng, ("text",))
    assert zs.store_batch(np.arange(4), pages[:4]).all()
    before = (zs.stats()["stored_pages"], zs.pool.stats()["obj_used"])
    with pytest.raises(devpool.PoolFullError, match="entry table"):
        zs.store_batch(np.arange(4, 7), pages[4:7])
    assert (zs.stats()["stored_pages"], zs.pool.stats()["obj_used"]) == before
    assert zs.store(4, pages[4]) and zs.store(5, pages[5])
    with pytest.raises(devpool.PoolFullError, match="entry table"):
        zs.store(6, pages[6])
    assert zs.pool.stats()["obj_used"] == 6 and not zs.contains(6)
    assert zs.store(5, pages[7])                     # a store over a stored offset needs no new slot
    np.testing.assert_array_equal(zs.load_batch(np.arange(6)), np.concatenate([pages[:5], pages[7:8]]))
    zs.close()
