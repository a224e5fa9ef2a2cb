"""Issue 12's defects, each pinned by a test that failed before the fix.

Memory bounded by what is stored, the limit's last segment, objects bigger than the
pool takes, closed objects, and the scalar arguments that used to escape as raw
TypeError / ValueError / IndexError or were silently accepted.
"""

from __future__ import annotations

import numpy as np
import pytest

import devpool
from tests.pages import make_pages, text_page


def _zs(backend, tmp_path=None, capacity=1 << 20, segment=16384, **kw):
    pool = devpool.open_pool(backend, capacity, segment_bytes=segment)
    return pool, devpool.Zswap(pool, **kw)


# --- memory follows what is stored ---------------------------------------------------------
def test_sparse_offsets_cost_what_is_stored(rng):
    pool, zs = _zs("host", capacity=16 << 20, max_pool_percent=100)
    offsets = rng.choice(1 << 32, 1000, replace=False)
    pages = make_pages(1000, rng, ("text",))
    assert zs.store_batch(offsets, pages).all()
    assert zs.stats()["entry_table_bytes"] < 10 << 20
    zs.store(2**32 - 2, text_page(rng))                    # the top offset: one more row
    assert zs.stats()["entry_table_bytes"] < 10 << 20
    np.testing.assert_array_equal(zs.load_batch(offsets[::-1]), pages[::-1])
    zs.load(2**32 - 2)
    assert zs.stats()["stored_pages"] == 0
    assert len(zs._t) == 0                                  # every entry given back
    zs.close(); pool.close()


def test_a_refused_store_grows_nothing():
    pool, zs = _zs("host", max_pool_percent=100)
    before = zs.stats()["entry_table_bytes"]
    with pytest.raises(devpool.BadInputError):
        zs.store_batch([50_000_000], np.zeros((1, 10), np.uint8))
    with pytest.raises(devpool.BadInputError):
        zs.store(50_000_000, np.zeros(10, np.uint8))
    assert zs.stats()["entry_table_bytes"] == before
    zs.close(); pool.close()


def test_rows_are_reused_after_churn_over_far_offsets(rng):
    pool, zs = _zs("host", capacity=4 << 20, max_pool_percent=100, nr_pages=1 << 41)
    page = text_page(rng)
    for o in rng.choice(1 << 40, 300, replace=False).tolist():
        zs.store(o, page)
        zs.load(o)
    assert zs.stats()["entry_table_bytes"] < 64 * 34 * 32     # a handful of rows, reused
    zs.close(); pool.close()


# --- the limit ----------------------------------------------------------------------------
@pytest.mark.parametrize("segments", [1, 2])
def test_the_last_segment_under_the_limit_is_used(backend, rng, segments, simulated):
    """Headroom counted from pool_total_size refused every store once the committed
    segments reached the limit: with a one-segment limit, 1 of 3 000 pages was stored."""
    seg = 16384
    pool, zs = _zs(backend, segment=seg, max_pool_bytes=segments * seg)
    pages = make_pages(60 if simulated else 200, rng, ("text",))
    stored = 0
    for i, p in enumerate(pages):
        stored += zs.store(i, p)
    payload = zs.stats()["stored_compressed_bytes"]
    assert stored >= 3 * segments                     # several pages per segment fit
    assert payload >= segments * seg * 0.8            # and the segments were filled
    assert zs.stats()["pool_total_size"] <= segments * seg
    zs.close(); pool.close()


def test_objects_bigger_than_the_pool_takes_are_refused_one_by_one(backend, rng, tmp_path):
    pool = devpool.open_pool(backend, 1 << 20, segment_bytes=16384, max_object_bytes=2048)
    zs = devpool.Zswap(pool, max_pool_percent=100, backing=tmp_path / "swap")
    pages = make_pages(8, rng, ("text", "random"))     # random pages need 4096 bytes
    cached = zs.store_batch(np.arange(8), pages)
    np.testing.assert_array_equal(cached, [True, False] * 4)
    assert zs.stats()["reject_alloc_fail"] == 4
    assert zs.store(20, pages[1]) is False and zs.stats()["reject_alloc_fail"] == 5
    np.testing.assert_array_equal(zs.load_batch(np.arange(8)), pages)   # refused ones in the file
    zs.close(); pool.close()


# --- closed objects -----------------------------------------------------------------------
def test_every_operation_on_a_closed_pool_is_a_closed_error(backend):
    pool = devpool.open_pool(backend, 1 << 20, segment_bytes=16384)
    h = pool.alloc(16)
    pool.close()
    pool.close()                                        # idempotent
    calls = [lambda: pool.alloc(16), lambda: pool.write(h, np.zeros(16, np.uint8)),
             lambda: pool.read(h), lambda: pool.free(h), lambda: pool.alloc_batch([16]),
             lambda: pool.read_batch([h]), lambda: pool.free_batch([h]), lambda: pool.compact(),
             lambda: pool.write_batch([h], np.zeros(16, np.uint8)), lambda: pool.size_of(h)]
    for call in calls:
        with pytest.raises(devpool.ClosedError) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, devpool.DevpoolError)


def test_a_closed_zswap_refuses_everything(backend, rng, tmp_path):
    pool, zs = _zs(backend, max_pool_percent=100, backing=tmp_path / "swap")
    zs.store(1, text_page(rng))
    zs.close()
    for call in [lambda: zs.store(2, text_page(rng)), lambda: zs.store_batch([2], make_pages(1, rng, ("text",))),
                 lambda: zs.load(1), lambda: zs.load_batch([1]), lambda: zs.invalidate(1),
                 lambda: zs.invalidate_batch([1]), lambda: zs.writeback(1), lambda: zs.invalidate_area()]:
        with pytest.raises(devpool.ClosedError):
            call()
    assert pool.stats()["obj_used"] == 0                # close dropped its entries
    pool.close()


def test_zswap_close_after_pool_close_releases_the_file(tmp_path, rng):
    pool, zs = _zs("host", max_pool_percent=100, backing=tmp_path / "swap")
    zs.store(1, text_page(rng))
    pool.close()
    zs.close()                                          # no error: the pool took its objects
    assert zs.backing.closed
    devpool.Zswap(devpool.open_pool("host", 1 << 20, segment_bytes=16384), backing=tmp_path / "swap").close()


def test_with_block_keeps_the_callers_exception(tmp_path):
    pool = devpool.open_pool("host", 1 << 20, segment_bytes=16384)
    with pytest.raises(KeyError, match="mine"):
        with devpool.Zswap(pool, max_pool_percent=100, backing=tmp_path / "swap"):
            pool.close()
            raise KeyError("mine")


def test_failed_constructions_leave_no_descriptor_and_no_file(tmp_path):
    import os
    pool = devpool.open_pool("host", 1 << 20, segment_bytes=16384)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(devpool.BadInputError):
            devpool.Zswap(pool, max_pool_bytes=100, backing=tmp_path / "swap")   # below a segment
    assert len(os.listdir("/proc/self/fd")) == before
    assert not (tmp_path / "swap").exists()
    pool.close()


# --- scalar arguments ----------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    {"max_pool_percent": "abc"}, {"max_pool_percent": True}, {"max_pool_percent": float("nan")},
    {"accept_threshold_percent": "x"}, {"nr_pages": "x"}, {"nr_pages": 0}, {"nr_pages": -5},
    {"nr_pages": 1.7}, {"nr_pages": 2**70}, {"max_pool_bytes": True}, {"max_pool_bytes": 1.5e6},
    {"backing": 3}, {"backing": "a\0b"}, {"compressor": {"id": [1]}}, {"compressor": {"id": "lz4hc", "level": True}},
    {"compressor": {"id": "lz4", "acceleration": 2.0}},
])
def test_zswap_arguments_get_clear_errors(kw):
    pool = devpool.open_pool("host", 1 << 20, segment_bytes=16384)
    with pytest.raises(devpool.DevpoolError):
        devpool.Zswap(pool, **kw)
    pool.close()


def test_tunables_assigned_later_are_checked_too():
    pool, zs = _zs("host", max_pool_percent=100)
    for name, bad in [("max_pool_bytes", True), ("max_pool_percent", 0), ("accept_threshold_percent", "9")]:
        with pytest.raises(devpool.BadInputError):
            setattr(zs, name, bad)
    zs.max_pool_bytes = 1 << 19
    assert zs.stats()["max_pool_bytes"] == 1 << 19
    zs.close(); pool.close()


def test_queries_and_compact_refuse_non_integers():
    pool, zs = _zs("host", max_pool_percent=100)
    for call in [lambda: zs.entry_kind("1"), lambda: zs.contains(1.5), lambda: pool.compact("x"),
                 lambda: pool.compact(None), lambda: pool.compact(True), lambda: zs.writeback(2.0)]:
        with pytest.raises(devpool.BadInputError):
            call()
    zs.close(); pool.close()


@pytest.mark.parametrize("codec_id", ["lz4", "raw", "lz4-njit"])
def test_decompress_refuses_what_a_cast_would_turn_into_other_bytes(codec_id):
    codec = devpool.get_codec(codec_id)
    out = np.zeros((1, 4096), np.uint8)
    for data, lengths in [([1, 2, 3], [3]), ("abc", [3]), (np.zeros(16, np.float64), [16]),
                          (np.zeros(16, np.int16), [16]), (np.zeros(16, np.uint8), [np.nan]),
                          (np.zeros(16, np.uint8), [16.0]), (np.zeros(16, np.uint8), [[16]])]:
        with pytest.raises(devpool.BadInputError):
            codec.decompress_batch(data, lengths)
        with pytest.raises(devpool.BadInputError):
            codec.decompress_into(data, lengths, out)


def test_matrix_pages_are_plain_pages(rng):
    pool, zs = _zs("host", max_pool_percent=100)
    pages = make_pages(2, rng, ("text",))
    before = pool.stats()["pool_total_size"]
    assert zs.store_batch([0, 1], np.asmatrix(pages)).all()
    np.testing.assert_array_equal(zs.load_batch([0, 1]), pages)
    assert pool.stats()["obj_used"] == 0 and pool.stats()["pool_total_size"] >= before
    zs.close(); pool.close()


def test_uint8_data_in_any_dtype_object_is_uint8_data(backend):
    """The single verbs' fast test asks for numpy's own uint8 dtype object; uint8 spelled
    another way (with metadata, '|u1') takes the checked path to the same result, and a
    byte-sized dtype that is not uint8 is refused there, changing nothing."""
    spelled = np.dtype(np.uint8, metadata={"from": "a caller"})
    assert spelled == np.uint8 and spelled is not np.dtype(np.uint8)
    data = np.arange(1000, dtype=np.uint16).view(np.uint8)[:1000].copy()
    with devpool.open_pool(backend, 1 << 20) as pool:
        h = pool.alloc(data.size, data=data.view(spelled))
        assert pool.read(h).tobytes() == data.tobytes()
        pool.write(h, (data[::-1].copy()).view(spelled))
        out = np.empty(data.size, spelled)
        assert pool.read(h, out) is out and out.tobytes() == data[::-1].tobytes()
        with pytest.raises(devpool.BadInputError, match="dtype uint8"):
            pool.write(h, data.view(np.int8))
        assert pool.read(h).tobytes() == data[::-1].tobytes()
        with pytest.raises(devpool.BadInputError, match="dtype uint8"):
            pool.read(h, np.empty(data.size, np.int8))


# --- a storage's batch verbs refuse ranges outside the arena --------------------------------
@pytest.mark.parametrize("verb", ["move from", "move to", "gather", "scatter"])
@pytest.mark.parametrize("where", [-16, "past the end", "wraps int64"])
def test_a_storage_batch_range_outside_the_arena_is_refused_and_changes_nothing(backend, verb, where):
    """The copy loops (host numba, device kernels) run unchecked: a range past the arena
    was clipped on one side of a copy and read or written past it on the other (a crash,
    or another allocation's bytes). Each batch verb now refuses it, BadInputError, before
    anything is copied; the objects keep their bytes."""
    pool = devpool.open_pool(backend, 1 << 20, segment_bytes=16384)
    try:
        data = [np.full(n, k + 1, np.uint8) for k, n in enumerate((100, 700, 3000))]
        hs = [pool.alloc(d.size, data=d) for d in data]
        st, cap = pool.storage, pool.storage.capacity_bytes
        start, n = {-16: (-16, 32), "past the end": (cap - 8, 16), "wraps int64": (1 << 62, 1 << 62)}[where]
        bad, ok = np.array([0, start], np.int64), np.array([0, 32], np.int64)
        lengths = np.array([16, n], np.int64)
        with pytest.raises(devpool.BadInputError, match="range 1"):
            if verb == "move from":
                st.move(bad, ok + 4096, lengths)
            elif verb == "move to":
                st.move(ok, bad, lengths)
            elif verb == "gather":
                st.gather(bad, lengths, np.zeros(64, np.uint8), np.array([0, 16], np.int64))
            else:
                st.scatter(np.zeros(64, np.uint8), np.array([0, 16], np.int64), bad, lengths)
        for h, d in zip(hs, data):
            assert pool.read(h).tobytes() == d.tobytes()
    finally:
        pool.close()
