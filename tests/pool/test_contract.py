"""The pool contract, run once per backend (host, chaos, cuda)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import devpool
from tests.conftest import cuda_usable
from tests.pages import lz4_blobs, pack
from tests.threads import run_in_threads


def snapshot(pool, handles):
    """Everything a caller can observe: live figures and every object's bytes."""
    st = pool.stats()
    data, lengths = pool.read_batch(handles)
    return st["obj_used"], st["payload_bytes"], data.tobytes(), lengths.tolist()


def fill(pool, rng, n):
    blobs = lz4_blobs(n, rng)
    payload, lengths = pack(blobs)
    hs = pool.alloc_batch(lengths)
    pool.write_batch(hs, payload, lengths)
    return hs, blobs


# --- round trips --------------------------------------------------------------------
def test_single_round_trip(make_pool, rng):
    pool = make_pool()
    data = rng.integers(0, 256, 1234, dtype=np.uint8)
    h = pool.alloc(data.size)
    assert isinstance(h, int)
    pool.write(h, data)
    assert pool.size_of(h) == 1234
    np.testing.assert_array_equal(pool.read(h), data)


def test_batch_round_trip_real_sizes(make_pool, rng):
    pool = make_pool(capacity_bytes=4 << 20)
    hs, blobs = fill(pool, rng, 40)
    payload, lengths = pool.read_batch(hs)
    assert lengths.tolist() == [len(b) for b in blobs]
    assert payload.tobytes() == b"".join(blobs)
    # a subset, in another order, into a caller's buffer
    order = hs[::-3]
    want = b"".join(blobs[i] for i in range(len(blobs))[::-3])
    out = np.empty(len(want), np.uint8)
    got, _ = pool.read_batch(order, out=out)
    assert got is out and out.tobytes() == want


def test_reads_are_copies_and_writes_copy_in(make_pool, rng):
    pool = make_pool()
    src = rng.integers(0, 256, 500, dtype=np.uint8)
    h = pool.alloc(500)
    pool.write(h, src)
    src[:] = 0                                   # the caller's buffer is not the pool
    first = pool.read(h)
    assert first.any()
    first[:] = 7                                 # neither is a returned copy
    assert not (pool.read(h) == 7).all()
    again = pool.read(h)
    assert not np.shares_memory(again, first) and not np.shares_memory(again, pool.read(h))


def test_read_with_lends_the_bytes_read_only_and_frees_only_what_was_consumed(make_pool, rng, backend):
    """``read_with`` hands a consumer the object's bytes (host RAM: the arena's own,
    uncopied), read-only; ``free=True`` frees once the consumer returned a result."""
    pool = make_pool()
    data = rng.integers(0, 256, 777, dtype=np.uint8)
    other = pool.alloc(100, data=np.full(100, 9, np.uint8))
    h = pool.alloc(data.size, data=data)
    got = pool.read_with(h, lambda block, k: (block.tobytes(), k, block.flags.writeable), "k")
    assert got == (data.tobytes(), "k", False)
    if backend == "host":                        # lent in place: a view, not a copy
        assert pool.read_with(h, lambda block: np.shares_memory(block, pool.storage._arena))

        def write_through(block):
            block.flags.writeable = True         # refused: the view is over read-only memory

        with pytest.raises(ValueError):
            pool.read_with(h, write_through)
    if backend == "cuda":                        # one copy: the pinned page buffer, lent
        assert pool.read_with(h, lambda block: np.shares_memory(block, pool.storage._page))
    assert pool.read_with(h, lambda block: None, free=True) is None      # refused: kept
    with pytest.raises(ZeroDivisionError):
        pool.read_with(h, lambda block: 1 // 0, free=True)               # raised: kept
    np.testing.assert_array_equal(pool.read(h), data)
    assert pool.read_with(h, bytes, free=True) == data.tobytes()
    with pytest.raises(devpool.InvalidHandleError):
        pool.read_with(h, bytes)
    assert pool.stats()["obj_used"] == 1 and (pool.read(other) == 9).all()


@pytest.mark.parametrize("call", ["free", "alloc", "read", "compact", "close", "read_with"])
def test_read_with_refuses_a_consumer_that_calls_back_into_the_pool(make_pool, rng, call):
    """The pool's lock is re-entrant: a consumer that freed, moved or closed what it
    was lent would read freed memory. Every such call raises; nothing changes."""
    pool = make_pool()
    data = rng.integers(0, 256, 300, dtype=np.uint8)
    h = pool.alloc(data.size, data=data)
    calls = {"free": lambda: pool.free(h), "alloc": lambda: pool.alloc(10), "read": lambda: pool.read(h),
             "compact": lambda: pool.compact(1.0), "close": pool.close,
             "read_with": lambda: pool.read_with(h, bytes)}
    before = snapshot(pool, [h])

    def consume(block):
        calls[call]()
        return block.tobytes()

    with pytest.raises(devpool.BadInputError, match="called back into the pool"):
        pool.read_with(h, consume, free=True)
    assert snapshot(pool, [h]) == before and not pool.closed
    assert pool.read_with(h, bytes, free=True) == data.tobytes()         # usable after


def test_read_with_bad_consumer_and_closed_pool(make_pool):
    pool = make_pool()
    h = pool.alloc(10)
    with pytest.raises(devpool.BadInputError, match="callable"):
        pool.read_with(h, "not a function")
    ran = []
    for free in ("False", 1, np.array([True, False]), None):
        with pytest.raises(devpool.BadInputError, match="free must be a bool"):
            pool.read_with(h, ran.append, free=free)          # refused before consume runs
        with pytest.raises(devpool.BadInputError, match="free must be a bool"):
            pool.read(h, free=free)
    assert ran == [] and pool.size_of(h) == 10               # nothing ran, nothing freed
    assert pool.read_with(h, len, free=np.bool_(True)) == 10
    pool.close()
    with pytest.raises(devpool.PoolClosedError):
        pool.read_with(h, bytes)


def test_read_only_input_is_fine(make_pool):
    pool = make_pool()
    h = pool.alloc(5)
    pool.write(h, b"hello")                      # bytes are read-only: accepted
    assert pool.read(h).tobytes() == b"hello"


def test_empty_batches(make_pool):
    pool = make_pool()
    hs = pool.alloc_batch([])
    assert hs.size == 0
    pool.write_batch(hs, b"", [])
    data, lengths = pool.read_batch(hs)
    assert data.size == 0 and lengths.size == 0
    pool.free_batch(hs)


# --- free, reuse, stale and foreign handles -----------------------------------------
def test_free_and_reuse_keeps_others(make_pool, rng):
    pool = make_pool()
    hs, blobs = fill(pool, rng, 30)
    pool.free_batch(hs[::2])
    more, more_blobs = fill(pool, rng, 15)
    keep = list(hs[1::2]) + list(more)
    want = [blobs[i] for i in range(1, 30, 2)] + more_blobs
    data, _ = pool.read_batch(keep)
    assert data.tobytes() == b"".join(want)
    assert pool.stats()["obj_used"] == len(keep)


def test_handle_table_grows_and_recycles(make_pool, rng, sized):
    pool = make_pool(capacity_bytes=16 << 20)
    sizes = rng.integers(1, 200, sized(5000, 1500, 1100))     # the table starts at 1024
    for round_ in range(3):                      # grow past the first table, free, reuse
        hs = pool.alloc_batch(sizes)
        payload = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
        pool.write_batch(hs, payload, sizes)
        keep = hs[::7]
        pool.free_batch(np.setdiff1d(hs, keep))
        data, lengths = pool.read_batch(keep)
        ends = np.cumsum(sizes)
        assert data.tobytes() == b"".join(payload[e - s:e].tobytes() for e, s in zip(ends[::7], sizes[::7]))
        pool.free_batch(keep)
        assert len(set(hs.tolist())) == hs.size
    assert pool.stats()["obj_used"] == 0


def test_stale_handle_after_slot_reuse(make_pool):
    pool = make_pool()
    h = pool.alloc(64)
    pool.write(h, bytes(range(64)))
    pool.free(h)
    h2 = pool.alloc(64)                          # very likely the same slot
    pool.write(h2, b"\x01" * 64)
    assert h2 != h
    with pytest.raises(devpool.InvalidHandleError, match="stale"):
        pool.read(h)
    with pytest.raises(KeyError):                # also a KeyError for plain callers
        pool.free(h)
    assert pool.read(h2).tobytes() == b"\x01" * 64


def test_double_free_raises(make_pool):
    pool = make_pool()
    h = pool.alloc(10)
    pool.free(h)
    with pytest.raises(devpool.InvalidHandleError):
        pool.free(h)


def test_duplicate_in_free_batch_frees_nothing(make_pool, rng):
    pool = make_pool()
    hs, blobs = fill(pool, rng, 5)
    before = snapshot(pool, hs)
    with pytest.raises(devpool.InvalidHandleError, match="twice"):
        pool.free_batch([hs[0], hs[1], hs[0]])
    assert snapshot(pool, hs) == before


def test_foreign_and_malformed_handles(make_pool, rng):
    a, b = make_pool(), make_pool()
    ha = a.alloc(100)
    hb = b.alloc(100)
    for bad in (hb, 0, -1, 12345, ha ^ 1, ha + (1 << 32)):
        with pytest.raises(devpool.InvalidHandleError):
            a.read(bad)
    with pytest.raises(devpool.InvalidHandleError, match="integers"):    # malformed, as read(1.5)
        a.read_batch(np.array([ha, 1.5]))
    a.read(ha)                                   # still fine


def test_a_bad_handle_anywhere_in_a_batch_changes_nothing(make_pool, rng):
    pool = make_pool()
    hs, _ = fill(pool, rng, 6)
    before = snapshot(pool, hs)
    dead = pool.alloc(32)
    pool.free(dead)
    with pytest.raises(devpool.InvalidHandleError, match="batch index 3"):
        pool.free_batch([hs[0], hs[1], hs[2], dead])
    assert snapshot(pool, hs) == before


# --- compaction ---------------------------------------------------------------------
def test_migrate_moves_objects_and_keeps_every_handle(make_pool, rng, sized):
    """``Pool.migrate`` (what the hostile policy runs before every call, and a public
    verb): objects change place, never bytes or handles, and the pool does not grow; bad
    arguments are refused, and so is a migration from inside ``read_with``'s consume."""
    pool = make_pool(capacity_bytes=1 << 20, segment_bytes=16384)
    hs, blobs = fill(pool, rng, sized(60, 16))
    pool.free_batch(hs[::3])                          # room in held segments to move into
    keep, data = hs[[i for i in range(len(hs)) if i % 3]], [b for i, b in enumerate(blobs) if i % 3]
    before = pool.stats()
    moved = sum(pool.migrate(5, rng=np.random.default_rng(k)) for k in range(6))
    after = pool.stats()
    assert moved > 0 and after["migrated_objects"] - before["migrated_objects"] == moved
    assert after["pool_total_size"] <= before["pool_total_size"]
    got, _ = pool.read_batch(keep)
    assert got.tobytes() == b"".join(data)
    assert pool.migrate(0) == 0
    for bad in (-1, 1.5, "3", None):
        with pytest.raises(devpool.BadInputError):
            pool.migrate(bad)
    with pytest.raises(devpool.BadInputError, match="Generator"):
        pool.migrate(3, rng=7)
    with pytest.raises(devpool.BadInputError, match="consume"):
        pool.read_with(int(keep[0]), lambda block: pool.migrate(3))


def test_compaction_keeps_bytes_and_handles_and_gives_memory_back(make_pool, rng):
    pool = make_pool(capacity_bytes=8 << 20)
    pool.CLEAN_TRIGGER = 1e9     # compact() alone: a free's cleaning step may already pack it all
    hs, blobs = fill(pool, rng, 120)
    pool.free_batch(hs[::2])
    before = pool.stats()["pool_total_size"]
    pool.compact()
    after = pool.stats()
    data, _ = pool.read_batch(hs[1::2])
    assert data.tobytes() == b"".join(blobs[1::2])
    assert after["pool_total_size"] < before
    assert after["pages_compacted"] > 0
    # next-fit packing: a full segment wastes less than one object, the last its tail
    n = after["segments_in_use"]
    assert after["pool_total_size"] == n * after["segment_bytes"]
    if "arena_bytes" in after:          # a device arena shrinks to its top (in its mapping unit, if any)
        slack = max(after["segment_bytes"], after.get("arena_unit_bytes", 0))
        assert after["arena_bytes"] <= n * after["segment_bytes"] * 9 // 8 + slack
    assert after["pool_total_size"] < after["arena_used_bytes"] + (n - 1) * 4096 + after["segment_bytes"]


def test_free_everything_returns_all_memory(make_pool, rng, hostile):
    pool = make_pool()
    hs, _ = fill(pool, rng, 50)
    assert pool.stats()["pool_total_size"] > 0
    pool.free_batch(hs)
    st = pool.stats()
    assert st["obj_used"] == 0
    # freed segments wait as spares (counted, within budget) until compact() returns them;
    # the head segment stays open, empty, for the next allocation
    assert st["spare_bytes"] <= (1 << 20) // 16
    assert st["spare_bytes"] <= st["pool_total_size"] <= st["spare_bytes"] + st["segment_bytes"]
    released = pool.compact()      # (chaos already cleaned in its per-call hook)
    assert released == st["pool_total_size"] or (hostile and released == 0)
    assert pool.stats()["pool_total_size"] == 0


def test_compact_rejects_bad_argument(make_pool):
    pool = make_pool()
    with pytest.raises(devpool.BadInputError):
        pool.compact(max_utilisation=0)


# --- capacity -----------------------------------------------------------------------
def test_capacity_exhaustion_raises_and_changes_nothing(make_pool, rng):
    pool = make_pool(capacity_bytes=64 * 1024, segment_bytes=16384)
    hs = []
    with pytest.raises(devpool.PoolFullError):
        for _ in range(1000):
            h = pool.alloc(3000)
            pool.write(h, bytes([len(hs) % 256]) * 3000)
            hs.append(h)
    assert 16 <= len(hs) <= 21                   # 5 objects per 16 KiB segment, 4 segments
    before = snapshot(pool, hs)
    with pytest.raises(MemoryError):             # a PoolFullError is a MemoryError too
        pool.alloc_batch([100] * 10 + [4000] * 10)
    assert snapshot(pool, hs) == before
    # freeing makes room again, and cleaning under pressure reuses dead space
    pool.free_batch(hs[::2])
    pool.alloc_batch([3000] * (len(hs) // 2))


def test_a_pool_above_max_total_takes_nothing_that_would_grow_it(make_pool):
    """``max_total`` below what the pool already holds (a limit lowered under a full
    pool): an object that needs a new segment is refused, single or batch, and the pool
    does not grow."""
    pool = make_pool(capacity_bytes=1 << 20, segment_bytes=16384)
    pool.alloc_batch([4096] * 16)                  # 4 full segments, no room in the head
    size = pool.stats()["pool_total_size"]
    assert pool.alloc(4096, max_total=size // 2) is None
    assert pool.alloc_batch([4096, 100], max_total=size // 2).size == 0
    st = pool.stats()
    assert st["pool_total_size"] == size and st["obj_used"] == 16


def test_a_pool_at_its_object_limit_refuses_and_does_not_grow(make_pool, rng, monkeypatch):
    """At the handle table's limit an object that would open a segment is refused, and
    the pool stays the size it was: the segment was committed before the table refused,
    and stayed committed, counted in pool_total_size, never given back. (MAX_SLOTS is
    2**28 objects; it is lowered here so the limit can be reached.)"""
    from devpool.pool import allocator as _allocator
    monkeypatch.setattr(_allocator, "MAX_SLOTS", 64)
    pool = make_pool(capacity_bytes=1 << 20, segment_bytes=16384)
    data = rng.integers(0, 256, 64 * 1024, dtype=np.uint8)
    hs = pool.alloc_batch([1024] * 64)             # 4 full segments, every slot taken
    pool.write_batch(hs, data)
    size = pool.stats()["pool_total_size"]
    for refused in (lambda: pool.alloc(1024), lambda: pool.alloc_batch([1024])):
        with pytest.raises(devpool.PoolFullError, match="at most 64 objects"):
            refused()
        assert pool.stats()["pool_total_size"] == size
    pool.free(hs[0])                               # one slot back: it allocates again
    h = pool.alloc(1024, data=data[:1024])
    assert pool.read(h).tobytes() == data[:1024].tobytes()
    assert pool.read_batch(hs[1:])[0].tobytes() == data[1024:].tobytes()


# --- bad input ----------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [[0], [-5], [4097], [10, 0, 10], [1 << 40], [1.5], [[1, 2]]])
def test_bad_sizes_raise_and_allocate_nothing(make_pool, sizes):
    pool = make_pool()
    # a bad value is InvalidSizeError; a container of the wrong shape is BadInputError
    with pytest.raises(devpool.BadInputError if np.ndim(sizes) > 1 else devpool.InvalidSizeError):
        pool.alloc_batch(sizes)
    assert pool.stats()["obj_used"] == 0 and pool.stats()["pool_total_size"] == 0


def test_bad_single_size(make_pool):
    pool = make_pool()
    for bad in (0, -1, 4097, "12", 3.0, True):
        with pytest.raises(devpool.InvalidSizeError):
            pool.alloc(bad)
    with pytest.raises(ValueError):
        pool.alloc(0)


def test_bad_writes_change_nothing(make_pool, rng):
    pool = make_pool()
    hs, blobs = fill(pool, rng, 4)
    before = snapshot(pool, hs)
    n0 = len(blobs[0])
    bad_input, bad_handle = devpool.BadInputError, devpool.InvalidHandleError
    cases = [
        (bad_input, lambda: pool.write(hs[0], b"x" * (n0 + 1))),                     # too long
        (bad_input, lambda: pool.write(hs[0], b"x" * (n0 - 1))),                     # too short
        (bad_input, lambda: pool.write(hs[0], np.zeros(n0, np.uint16))),             # dtype
        (bad_input, lambda: pool.write(hs[0], np.zeros(2 * n0, np.uint8)[::2])),     # non-contiguous
        (bad_input, lambda: pool.write(hs[0], [1, 2, 3])),                           # not bytes
        (bad_input, lambda: pool.write_batch(hs[:2], b"x" * (len(blobs[0]) + len(blobs[1])),
                                             [len(blobs[0])])),                      # lengths mismatch
        (bad_input, lambda: pool.write_batch(hs[:2], b"x" * (len(blobs[0]) + len(blobs[1])),
                                             [len(blobs[1]), len(blobs[0])])),       # swapped lengths
        (bad_input, lambda: pool.write_batch(hs[:2], b"x" * (len(blobs[0]) + len(blobs[1])),
                                             [len(blobs[0]) - 1, len(blobs[1]) + 1])),   # one off each
        (bad_input, lambda: pool.write_batch(hs[:2], b"x" * (len(blobs[0]) + len(blobs[1]) + 1),
                                             [len(blobs[0]), len(blobs[1]) + 1])),   # only the last wrong
        (bad_handle, lambda: pool.write_batch([hs[0], hs[0]], b"x" * (2 * n0))),     # duplicate
    ]
    for i, (error, case) in enumerate(cases):
        with pytest.raises(error):
            case()
        assert snapshot(pool, hs) == before, f"case {i} changed the pool"


def test_write_from_anywhere_in_a_payload(make_pool, rng):
    """``src_starts`` picks each object's bytes out of a larger buffer, in any order,
    even overlapping: no repacking needed before a write."""
    pool = make_pool()
    src = rng.integers(0, 256, 20000, dtype=np.uint8)
    sizes = np.array([700, 1500, 33, 4096, 700])
    starts = np.array([19000, 0, 5000, 8000, 18900])        # out of order, two overlap
    hs = pool.alloc_batch(sizes)
    pool.write_batch(hs, src, sizes, src_starts=starts)
    data, lens = pool.read_batch(hs)
    want = b"".join(src[s:s + n].tobytes() for s, n in zip(starts, sizes))
    assert data.tobytes() == want and lens.tolist() == sizes.tolist()


def test_bad_src_starts_change_nothing(make_pool, rng):
    pool = make_pool()
    hs, blobs = fill(pool, rng, 3)
    before = snapshot(pool, hs)
    sizes = [len(b) for b in blobs]
    src = np.zeros(10000, np.uint8)
    for starts, msg in [([0, 0, 10000 - sizes[2] + 1], "outside"), ([-1, 0, 0], "outside"),
                        ([0, 0], "shaped like"), ([0.0, 1.0, 2.0], "integers")]:
        with pytest.raises(devpool.BadInputError, match=msg):
            pool.write_batch(hs, src, sizes, src_starts=starts)
        assert snapshot(pool, hs) == before


def _device_buffer(data: np.ndarray):
    from numba import cuda
    return cuda.to_device(data)


def _to_host(buf) -> np.ndarray:
    return buf.get() if hasattr(buf, "get") else buf.copy_to_host()


def test_device_buffers_only_where_the_pool_is_device_memory(make_pool, rng, backend):
    """A pool in device memory takes a device payload and hands out device copies; a
    host pool refuses both with a clear error and changes nothing."""
    pool = make_pool()
    hs, blobs = fill(pool, rng, 3)
    sizes = np.array([len(b) for b in blobs])
    ok, _ = cuda_usable()
    if not pool.device_resident:
        before = snapshot(pool, hs)
        if ok:                                    # a device buffer exists to be refused
            with pytest.raises(devpool.BadInputError, match="device memory"):
                pool.write_batch(hs, _device_buffer(np.zeros(int(sizes.sum()), np.uint8)), sizes)
        with pytest.raises(devpool.BadInputError, match="device memory"):
            pool.read_batch(hs, device=True)
        assert snapshot(pool, hs) == before
        return
    src = rng.integers(0, 256, 3 * 4096, dtype=np.uint8)
    starts = np.array([8192, 0, 4096])
    pool.write_batch(hs, _device_buffer(src), sizes, src_starts=starts)
    want = b"".join(src[s:s + n].tobytes() for s, n in zip(starts, sizes))
    assert pool.read_batch(hs)[0].tobytes() == want
    dev, lens = pool.read_batch(hs, device=True)
    assert _to_host(dev).tobytes() == want and lens.tolist() == sizes.tolist()
    with pytest.raises(devpool.BadInputError, match="1-D uint8"):
        pool.write_batch(hs, _device_buffer(np.zeros((2, 8192), np.uint8)), sizes)
    with pytest.raises(devpool.BadInputError, match="out must be None"):
        pool.read_batch(hs, out=np.zeros(int(sizes.sum()), np.uint8), device=True)
    assert pool.read_batch(hs)[0].tobytes() == want


def test_bad_out_buffers(make_pool, rng):
    pool = make_pool()
    h = pool.alloc(100)
    pool.write(h, bytes(100))
    ro = np.zeros(100, np.uint8)
    ro.flags.writeable = False
    for out, msg in [(ro, "read-only"), (bytes(100), "read-only"), (np.zeros(99, np.uint8), "99"),
                     (np.zeros(100, np.int8), "dtype"), (np.zeros(200, np.uint8)[::2], "contiguous")]:
        with pytest.raises(devpool.BadInputError, match=msg):
            pool.read(h, out=out)
    out = bytearray(100)
    pool.read(h, out=out)                        # a writable bytearray is fine


def test_bad_handle_containers(make_pool):
    pool = make_pool()
    with pytest.raises(devpool.BadInputError):
        pool.read_batch([[1, 2]])
    with pytest.raises(devpool.InvalidHandleError):          # as free("a")
        pool.free_batch(["a"])


def test_closed_pool_refuses_and_context_manager_closes(backend):
    with devpool.open_pool(backend, 1 << 20, segment_bytes=16384) as pool:
        h = pool.alloc(10)
    with pytest.raises(devpool.PoolClosedError, match="closed"):
        pool.read(h)
    pool.close()                                 # idempotent


def test_stats_name_the_backend(make_pool, backend):
    st = make_pool().stats()
    assert st["backend"] == backend
    for key in ("pool_total_size", "obj_used", "obj_allocated", "pages_compacted"):
        assert key in st


# --- concurrency --------------------------------------------------------------------
def test_threads_share_a_pool(make_pool, sized):
    pool = make_pool(capacity_bytes=8 << 20)

    def worker(seed):
        r = np.random.default_rng(seed)
        mine = {}
        for _ in range(sized(40, 10, 3)):           # the simulator is slow
            sizes = r.integers(1, 4096, 8)
            hs = pool.alloc_batch(sizes)
            payload = r.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
            pool.write_batch(hs, payload, sizes)
            for h, s, e in zip(hs, np.cumsum(sizes) - sizes, np.cumsum(sizes)):
                mine[int(h)] = payload[s:e].tobytes()
            victims = list(mine)[: len(mine) // 3]
            pool.free_batch(victims)
            for v in victims:
                del mine[v]
            if r.random() < 0.2:
                pool.compact()
        data, _ = pool.read_batch(list(mine))
        assert data.tobytes() == b"".join(mine.values())

    run_in_threads(worker, 4, timeout=120)


# --- selection ----------------------------------------------------------------------
def test_unknown_backend_is_a_clear_error():
    with pytest.raises(devpool.BadInputError, match="unknown backend"):
        devpool.open_pool("tpu")


@pytest.mark.parametrize("cap", [0, -1, "big", 1.5])
def test_bad_capacity(cap):
    with pytest.raises(devpool.BadInputError):
        devpool.open_pool("host", cap)


def test_auto_takes_a_working_backend_and_says_why():
    with devpool.open_pool("auto", 1 << 20) as pool:
        st = pool.stats()
        assert st["backend"] in ("host", "cuda")
        assert st["backend_reason"].startswith("auto:")


class FlakyStorage:
    """Wraps a pool's storage so that the k-th commit of a batch (counted from the
    ``reserve`` that precedes a batch's commits) fails like a device OOM. Per batch,
    because under chaos the pool migrates objects before the call, committing segments
    of its own first (a migration that cannot grow moves nothing and fails nothing)."""

    def __init__(self, storage, fail_at):
        self._s, self._n, self._fail_at = storage, 0, fail_at

    def reserve(self, end):
        self._n = 0
        return self._s.reserve(end)

    def commit(self, offset, nbytes):
        self._n += 1
        if self._n == self._fail_at:
            raise devpool.PoolFullError("simulated out-of-memory while growing")
        return self._s.commit(offset, nbytes)

    def __getattr__(self, name):
        return getattr(self._s, name)


def test_failed_growth_leaves_the_pool_exactly_as_it_was(make_pool, rng, hostile):
    """A commit failing midway through a batch's new segments: the ones already
    committed are given back, spares stay spares, and the pool works on. (Chaos moves
    and cleans on every call by design, so there only the contents must match.)"""
    pool = make_pool(capacity_bytes=1 << 20, segment_bytes=16384)
    hs, blobs = fill(pool, rng, 30)
    pool.free_batch(hs[:10])                       # leave some spare segments behind

    def state():
        st = pool.stats()
        sizes = () if hostile else (st["pool_total_size"], st["spare_bytes"])
        return snapshot(pool, hs[10:]) + sizes
    before = state()
    real = pool.storage
    pool.storage = FlakyStorage(real, fail_at=2)
    with pytest.raises(devpool.PoolFullError):
        pool.alloc_batch([4000] * 40)              # needs several new segments
    pool.storage = real
    assert state() == before
    more = pool.alloc_batch([4000] * 20)           # and it still works
    pool.write_batch(more, np.zeros(80000, np.uint8))


def test_growth_for_predicts_pool_total_size(make_pool, rng, hostile):
    pool = make_pool(capacity_bytes=1 << 20, segment_bytes=16384)
    assert pool.growth_for([100]) == 16384                 # the first object opens a segment
    hs, _ = fill(pool, rng, 20)
    for n in (1, 5, 40, 120):
        sizes = rng.integers(100, 4096, n)
        if not hostile:                                 # chaos moves things before each call
            grow = pool.growth_for(sizes)
            before = pool.stats()["pool_total_size"]
            new = pool.alloc_batch(sizes)
            assert pool.stats()["pool_total_size"] - before == grow
            pool.free_batch(new)
    assert pool.growth_for([4096] * 1000) > pool.stats()["capacity_bytes"]   # cannot fit
    with pytest.raises(devpool.InvalidSizeError):
        pool.growth_for([0])


def _memory_kib(field: str) -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc")
def test_host_release_gives_memory_back_to_the_kernel(rng):
    """Freed segments leave the process's memory (at once, or lazily: MADV_FREE pages
    count as LazyFree until the kernel takes them), and pool_total_size drops."""
    pool = devpool.open_pool("host", 64 << 20, segment_bytes=1 << 20)
    hs = pool.alloc_batch([4096] * 2048)                      # 8 MiB
    pool.write_batch(hs, rng.integers(1, 256, 4096 * 2048, dtype=np.uint8))
    rss, lazy = _memory_kib("Rss"), _memory_kib("LazyFree")
    pool.free_batch(hs)
    pool.compact()                                           # spares go back too
    gone = (rss - _memory_kib("Rss")) + (_memory_kib("LazyFree") - lazy)
    assert pool.stats()["pool_total_size"] == 0
    assert gone >= 6 * 1024, f"only {gone} KiB of 8 MiB left the process"
    pool.close()


# --- handle identity over long lifetimes -------------------------------------------------
def test_a_stale_handle_never_aliases_over_many_reuse_cycles(make_pool, hostile, simulated):
    """16-bit generations reused last in, first out aliased after 65 535 alloc/free cycles
    of one object; now the slot is not even reused within them."""
    pool = make_pool()
    first = pool.alloc(64)
    pool.write(first, np.full(64, 1, np.uint8))
    pool.free(first)
    cycles = 2_000 if hostile or simulated else 70_000    # past 65 535 where it is cheap
    seen = set()
    for i in range(cycles):
        h = pool.alloc(64)
        assert h != first
        seen.add(h)
        pool.free(h)
    assert len(seen) == cycles                # no handle value ever came back
    with pytest.raises(devpool.InvalidHandleError, match="stale"):
        pool.read(first)
    live = pool.alloc(64)
    pool.write(live, np.full(64, 2, np.uint8))
    with pytest.raises(devpool.InvalidHandleError, match="stale"):
        pool.read(first)
    with pytest.raises(devpool.InvalidHandleError):
        pool.read_batch([first])


def test_handles_of_every_other_open_pool_are_foreign(backend, simulated):
    """With 15-bit random tags, two of 115 pools shared one; ids are now unique among open pools."""
    n = 20 if simulated else 200
    pools = [devpool.open_pool(backend, 1 << 16, segment_bytes=16384) for _ in range(n)]
    try:
        handles = []
        for i, p in enumerate(pools):
            h = p.alloc(16)
            p.write(h, np.full(16, i % 256, np.uint8))
            handles.append(h)
        rng = np.random.default_rng(0)
        for i, p in enumerate(pools):
            assert bytes(p.read(handles[i])) == bytes([i % 256]) * 16
            for j in rng.choice(n, 20, replace=False).tolist():
                if j != i:
                    with pytest.raises(devpool.InvalidHandleError):
                        p.read(handles[j])
                    with pytest.raises(devpool.InvalidHandleError):
                        p.free_batch([handles[j]])
    finally:
        for p in pools:
            p.close()


def test_closed_pools_give_their_ids_back():
    for _ in range(3000):                        # more pools over time than ids exist
        devpool.open_pool("host", 1 << 16, segment_bytes=16384).close()


def test_single_and_batch_verbs_refuse_the_same_bad_handles(make_pool):
    pool = make_pool()
    h = pool.alloc(32)
    for bad in [True, 1.5, "1", None, -1, 0, 2**63, 2**70, -2**63, h ^ 1, h + (1 << 28)]:
        with pytest.raises(devpool.InvalidHandleError):
            pool.read(bad)
        with pytest.raises(devpool.InvalidHandleError):     # the same error, not just any
            pool.read_batch([bad])
    pool.write(np.int64(h), np.zeros(32, np.uint8))      # numpy integers are handles too
    assert pool.size_of(np.uint64(h)) == 32


def test_a_full_pool_cleans_before_it_refuses_one_object(make_pool, hostile):
    """Every segment in use, a quarter of each dead (too little for a cleaning step on
    free): one more object fits only once the pool cleans. (A mutation that dropped the
    single alloc's clean-and-retry survived.)"""
    pool = make_pool(capacity_bytes=4 * 16384)
    handles = []
    with pytest.raises(devpool.PoolFullError):
        while True:
            handles.append(pool.alloc(1000, data=np.full(1000, len(handles) % 251, np.uint8)))
    assert pool.stats()["segments_in_use"] == 4
    for h in handles[::4]:
        pool.free(h)
    assert pool.stats()["segments_in_use"] == 4 or hostile     # chaos cleans before each call
    h = pool.alloc(1000)                  # no segment is free: it fits after cleaning
    pool.write(h, np.zeros(1000, np.uint8))
    for i, k in enumerate(handles):
        if i % 4:
            assert (pool.read(k) == i % 251).all()


def test_populating_is_advice_on_every_storage(make_pool, rng, hostile):
    """``populate`` (the pool asks it for a segment single objects will fill) is advice
    on every storage, chaos and device ones included: over any range, inside the arena
    or not, it raises nothing and changes no figure and no stored byte. (Chaos moves
    and cleans on every call by design, so there only the contents must match.)"""
    pool = make_pool(capacity_bytes=1 << 20, segment_bytes=16384)
    hs, _ = fill(pool, rng, 20)

    def state():
        st = pool.stats()
        sizes = () if hostile else (st["pool_total_size"], pool.storage.committed_bytes)
        return snapshot(pool, hs) + sizes
    before = state()
    cap = pool.storage.capacity_bytes
    for offset, nbytes in ((0, 16384), (16384, 16384), (0, cap), (-4096, 8192), (cap - 100, 4096), (cap, 4096),
                           (0, -1), (-(1 << 62), 1 << 62), ((1 << 62), (1 << 62)), (3, 5)):
        pool.storage.populate(offset, nbytes)
    assert state() == before


class RaisingPopulate:
    """A storage whose ``populate`` breaks its contract and raises."""

    def __init__(self, storage):
        self._s, self.calls = storage, 0

    def populate(self, offset, nbytes):
        self.calls += 1
        raise OSError("simulated failure to advise")

    def __getattr__(self, name):
        return getattr(self._s, name)


def test_a_storage_that_fails_to_populate_costs_the_allocation_nothing(make_pool, rng, hostile):
    """The pool calls ``populate`` between committing a segment a single allocation
    opens and placing the object there. Advice: a storage that raises from it (against
    its contract) must not fail the allocation, nor leave the segment committed with no
    object in it; the pool's figures match a twin whose storage advises quietly."""
    def run(pool):
        hs = [pool.alloc(3000, data=np.full(3000, k % 251, np.uint8)) for k in range(12)]   # opens segments
        st = pool.stats()
        return hs, (st["pool_total_size"], st["obj_used"], pool.storage.committed_bytes)
    pool = make_pool(capacity_bytes=1 << 20, segment_bytes=16384)
    twin = make_pool(capacity_bytes=1 << 20, segment_bytes=16384)
    real = pool.storage
    pool.storage = RaisingPopulate(real)
    hs, figures = run(pool)
    calls = pool.storage.calls
    pool.storage = real
    twin_hs, twin_figures = run(twin)
    assert calls >= 2
    if not hostile:                                     # (chaos moves and cleans on every call)
        assert figures == twin_figures
    for k, h in enumerate(hs):
        assert (pool.read(h) == k % 251).all()
