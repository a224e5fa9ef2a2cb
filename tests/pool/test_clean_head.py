"""A cleaning step's survivors continue in an open segment of their own: the clean head.

Each step used to make its last packed segment the appends' head. The old head's unused
room (half a segment a step, on average) was dead from then on, and those segments,
placed into since the cleaning record was made, were the emptiest the next steps wanted:
at 10^6 objects a pass over the handle table followed every ~5 steps. Now a step leaves
the appends' head where it is and its survivors start in the last step's last segment,
at its fill. These tests hold the pool to that, and to what it must keep while doing it:
every segment's figures, every object's bytes, no staging copy on the host arena.
"""

from __future__ import annotations

import numpy as np
import pytest

import devpool
from devpool.pool.allocator import _least
from tests.pool.test_cleaning_record import _figures_hold

SEG = 64 * 1024


def _spread_dead_pool(rng, backend="host", **options):
    """A pool of ~2 000 objects with a third of them freed, spread over its segments (no
    cleaning as they go: the tests take the steps)."""
    pool = devpool.open_pool(backend, 32 << 20, segment_bytes=SEG, **options)
    pool.CLEAN_TRIGGER = float("inf")
    sizes = rng.integers(200, 3000, size=2000)
    hs = pool.alloc_batch(sizes)
    data = {}
    for h, n in zip(hs.tolist(), sizes.tolist()):
        data[h] = rng.integers(0, 256, n, dtype=np.uint8)
        pool.write(h, data[h])
    gone = hs[::3]
    pool.free_batch(gone)
    for h in gone.tolist():
        del data[h]
    return pool, data


def _step(pool):
    al = pool.alloc_
    with pool.lock:
        plan = al.plan_clean(4 * SEG, 6)
        assert plan is not None, "the test's premise: a step has something to free"
        pool._execute_clean(plan)
    return plan


def test_a_step_keeps_the_appends_head_and_the_next_continues_in_the_clean_head():
    rng = np.random.default_rng(5)
    pool, data = _spread_dead_pool(rng)
    try:
        al = pool.alloc_
        head, fill = al.head, int(al.seg_fill[al.head])
        first = _step(pool)
        assert first.start == -1 and first.cleaning
        assert al.head == head and al.seg_fill[head] == fill, "a step moved the appends' head"
        assert al.clean_head == first.head >= 0
        clean, clean_fill = al.clean_head, int(al.seg_fill[al.clean_head])
        assert clean_fill < SEG - 3008, "the test's premise: the clean head has room"
        second = _step(pool)
        assert second.start == clean
        assert second.dst[0] == clean * SEG + clean_fill, "the survivors did not continue at the clean head's fill"
        assert al.head == head
        _figures_hold(al)                   # (the clean head's figures were reset by its commit once)
        assert pool.storage._move_tmp.size == 0, "a step's plan was staged"
        for h, want in data.items():
            assert pool.read(h).tobytes() == want.tobytes()
    finally:
        pool.close()


def test_a_clean_head_given_back_and_opened_as_the_appends_head_is_not_continued():
    """The clean head emptied is given back like any segment; once the appends' head opens
    it again, a step must not pack survivors into it (two heads appending to one segment)."""
    rng = np.random.default_rng(6)
    pool, data = _spread_dead_pool(rng)
    try:
        al = pool.alloc_
        _step(pool)
        clean = al.clean_head
        mine = [h for h in data if al.decode_one(h)[1] // SEG == clean]
        pool.free_batch(np.array(mine, np.int64))
        for h in mine:
            del data[h]
        assert not al.seg_in_use[clean]
        while al.head != clean:             # appends open the lowest free segments
            h = pool.alloc(2000)
            data[h] = rng.integers(0, 256, 2000, dtype=np.uint8)
            pool.write(h, data[h])
        assert al._clean_head_now() == -1
        plan = _step(pool)
        assert plan.start == -1 and clean not in (plan.dst // SEG).tolist()
        _figures_hold(al)
        for h, want in data.items():
            assert pool.read(h).tobytes() == want.tobytes()
    finally:
        pool.close()


def test_compaction_and_churn_around_the_clean_head_keep_every_byte():
    """Churn that cleans as it goes, with whole-pool compactions between rounds (which may
    empty or refill the clean head): figures and bytes hold throughout."""
    from tests.pool.test_churn import churn
    rng = np.random.default_rng(8)
    pool = devpool.open_pool("host", 32 << 20, segment_bytes=SEG)
    try:
        al = pool.alloc_
        rounds = iter(range(1000))

        def each_round():
            if next(rounds) % 4 == 3:
                pool.compact(0.9)
            _figures_hold(al)
        handles, data, _ = churn(pool, rng, live=6000, rounds=24, batch=500, single=False, each_round=each_round)
        assert al.clean_steps > 5
        for i, h in enumerate(handles.tolist()):
            assert pool.read(h).tobytes() == data[i].tobytes()
    finally:
        pool.close()


def test_the_least_utilised_come_in_a_stable_sort_s_order():
    """plan_clean partitions out the segments it may take instead of sorting all: the
    same segments, in the same order (ties by index), as the whole stable sort."""
    rng = np.random.default_rng(9)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        segs = np.sort(rng.choice(1000, n, replace=False)).astype(np.int64)
        live = rng.integers(0, 8, n).astype(np.int64) * 4096          # many ties
        k = int(rng.integers(0, 70))
        want = segs[np.argsort(live, kind="stable")][:k]
        assert np.array_equal(_least(segs, live * 1000 + segs, k)[:k], want)


def test_a_step_whose_move_fails_leaves_every_object_s_bytes_on_a_scrubbing_storage():
    """A failed step changes nothing (Pool._maybe_clean counts it and goes on). The step's
    move was split in two (the clean head's survivors first): where the second failed, the
    first had moved its objects and a scrubbing storage (chaos: every moved-from byte is
    poison) had poisoned their sources, which their handles still named."""
    from devpool import DeviceError
    rng = np.random.default_rng(5)
    pool, data = _spread_dead_pool(rng, "chaos", migrate_per_call=0, migrate_per_object=0)
    try:
        al = pool.alloc_
        _step(pool)
        up = pool.storage.upstream
        real = up.move

        def failing(src, dst, lengths):
            if (dst // SEG != clean).any():          # the victims' room: no staging for it
                raise DeviceError("injected: out of device memory staging the move")
            real(src, dst, lengths)
        clean = al._clean_head_now()
        assert clean >= 0, "the test's premise: a step continues in the clean head"
        up.move = failing
        with pool.lock:
            plan = al.plan_clean(4 * SEG, 6)
            assert plan.start == clean and (plan.dst // SEG == clean).any() and (plan.dst // SEG != clean).any()
            with pytest.raises(DeviceError):
                pool._execute_clean(plan)
        up.move = real
        _figures_hold(al)
        for h, want in data.items():
            assert pool.read(h).tobytes() == want.tobytes()
    finally:
        pool.close()
