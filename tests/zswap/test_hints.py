"""The entry records' location hint: set where a block was stored, never trusted on a load.

A compiled load prefetches the block where the record's ``hint`` says it lay, while it
checks the handle. The hint must follow the stores (single and batch), survive the
table's renumbering, take no byte of the record, and a wrong one (an object cleaning
moved, or garbage) must change no load's result.
"""

from __future__ import annotations

import numpy as np
import pytest

import devpool
from devpool.zswap.entries import _C_LRU, _C_NO, _CH, _CN, _CREC, POOL, hint_of
from tests.pages import make_pages


def _offsets_of(zs, idx):
    """Where the pool objects of entry slots ``idx`` lie now (the pool's own answer)."""
    al = zs.pool.alloc_
    return al.location(al.decode(zs._t.word[idx]))[0]


def _pool_slots(zs):
    t = zs._t
    idx = np.flatnonzero(t.state[:int(t.meta[5])] == POOL)      # _USED: slots ever handed out
    return idx


@pytest.mark.parametrize("backing", [False, True], ids=["no-lru", "lru"])
def test_stores_single_and_batch_leave_each_record_the_offset_of_its_block(tmp_path, backing):
    rng = np.random.default_rng(3)
    pages = make_pages(120, rng, kinds=("text", "struct"))
    with devpool.open_pool("host", 1 << 24) as pool, \
            devpool.Zswap(pool, "lz4", backing=str(tmp_path / "b.swap") if backing else None) as zs:
        assert zs.stats()["single_page_compiled"]
        zs.store_batch(np.arange(100), pages[:100])
        for o in range(100, 120):
            zs.store(o, pages[o])
        zs.store(5, pages[7])                        # replaced in place
        idx = _pool_slots(zs)
        assert idx.size >= 100
        assert np.array_equal(zs._t.hint[idx], _offsets_of(zs, idx) >> 4)


def test_a_stale_or_garbage_hint_changes_no_load():
    rng = np.random.default_rng(4)
    pages = make_pages(200, rng, kinds=("text", "struct"))
    with devpool.open_pool("host", 1 << 24, segment_bytes=64 << 10) as pool, devpool.Zswap(pool, "lz4") as zs:
        zs.store_batch(np.arange(200), pages)
        zs.invalidate_batch(np.arange(0, 200, 3))    # holes, then cleaning moves the rest
        pool.compact()
        idx = _pool_slots(zs)
        moved = zs._t.hint[idx] != (_offsets_of(zs, idx) >> 4)
        assert moved.any()                           # the hints are stale now
        # and some are garbage: negative, huge, past the arena
        zs._t.hint[idx[::4]] = rng.integers(-2**31, 2**31 - 1, idx[::4].size).astype(np.int32)
        for o in range(200):
            if o % 3:
                assert zs.load(o).tobytes() == pages[o].tobytes(), o
            else:
                with pytest.raises(KeyError):
                    zs.load(o)


def test_renumbering_on_shrink_keeps_each_hint_with_its_entry():
    rng = np.random.default_rng(5)
    pages = make_pages(64, rng, kinds=("text", "struct"))
    with devpool.open_pool("host", 1 << 26) as pool, devpool.Zswap(pool, "lz4", max_pool_percent=100) as zs:
        n = 20000
        zs.store_batch(np.arange(n), pages[np.arange(n) % 64])
        slots_before = zs._t._slots
        zs.invalidate_batch(np.arange(0, n - 50))     # few left: the table shrinks and renumbers
        assert zs._t._slots < slots_before
        idx = _pool_slots(zs)
        assert idx.size == 50 and idx.max() < 50      # renumbered down
        assert np.array_equal(zs._t.hint[idx], _offsets_of(zs, idx) >> 4)
        for o in range(n - 50, n):
            assert zs.load(o).tobytes() == pages[o % 64].tobytes()


def test_the_hint_takes_no_byte_of_the_record():
    # with the LRU it fills the record's padding; without, a live entry's next (free slots' link)
    assert _C_LRU[_CREC] == 32 and _C_LRU[_CH] * 4 == 28
    assert _C_NO[_CREC] == 24 and _C_NO[_CH] == _C_NO[_CN]


def test_hint_of_names_offsets_an_int32_of_16_bytes_can():
    assert hint_of(0) == 0 and hint_of(4096) == 256
    assert hint_of((1 << 35) - 16) == (1 << 31) - 1
    assert hint_of(1 << 35) == -1 and hint_of(1 << 40) == -1
    got = hint_of(np.array([0, 32, (1 << 35) - 16, 1 << 35], np.int64))
    assert got.tolist() == [0, 2, (1 << 31) - 1, -1]


def _free_list_is_sound(t):
    """The free list threads exactly the ABSENT slots below _USED, once each; with the
    LRU, its list holds exactly the POOL slots (no hint write reached a link)."""
    from devpool.zswap import entries as E
    used = int(t.meta[E._USED])
    seen, i = [], int(t.meta[E._FREE])
    while i >= 0 and len(seen) <= used:
        seen.append(i)
        i = int(t.next[i])
    assert len(seen) == len(set(seen)) == int(t.meta[E._NFREE])
    assert sorted(seen) == np.flatnonzero(t.state[:used] == E.ABSENT).tolist()
    if t.meta[E._LRU]:
        assert sorted(t.lru_order()) == np.flatnonzero(t.state[:used] == POOL).tolist()


@pytest.mark.parametrize("backing", [False, True], ids=["no-lru", "lru"])
def test_churn_with_every_store_kind_keeps_the_free_list_and_the_lru_whole(tmp_path, backing):
    """Without the LRU a live entry's hint is its ``next``, which threads the free slots:
    slots freed and taken again by single and batch stores of every kind (pool, same-filled,
    refused to the file), loads, invalidations and cleaning, with garbage hints planted,
    must leave the free list threading exactly the free slots, and every load right."""
    rng = np.random.default_rng(11)
    pages = make_pages(32, rng, kinds=("text", "struct", "zero", "random"))
    n, model = 1500, {}
    with devpool.open_pool("host", 1 << 23, segment_bytes=64 << 10) as pool, \
            devpool.Zswap(pool, "lz4", max_pool_percent=100,
                          backing=str(tmp_path / "b.swap") if backing else None) as zs:
        t = zs._t
        for step in range(160):
            op = step % 6
            if op == 0:
                o, p = int(rng.integers(n)), int(rng.integers(32))
                kept = zs.store(o, pages[p]) or backing
                model.pop(o, None) if not kept else model.__setitem__(o, p)
            elif op == 1:
                offs, ps = rng.choice(n, 150, replace=False), rng.integers(0, 32, 150)
                for o, p, kept in zip(offs.tolist(), ps.tolist(), zs.store_batch(offs, pages[ps]).tolist()):
                    model.pop(o, None) if not (kept or backing) else model.__setitem__(o, p)
            elif op == 2:
                o = int(rng.integers(n))
                if o in model:
                    assert zs.load(o).tobytes() == pages[model.pop(o)].tobytes()
            elif op == 3:
                offs = rng.choice(n, 200, replace=False)
                zs.invalidate_batch(offs)
                for o in offs.tolist():
                    model.pop(o, None)
            elif op == 4:
                pool.compact()
                if backing:
                    zs.writeback(10)
            else:
                live = _pool_slots(zs)
                live = live[rng.random(live.size) < 0.3]
                t.hint[live] = rng.integers(-2**31, 2**31 - 1, live.size).astype(np.int32)
            _free_list_is_sound(t)
        for o, p in model.items():
            assert zs.load(o, keep=True).tobytes() == pages[p].tobytes(), o
