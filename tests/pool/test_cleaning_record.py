"""A cleaning step finds its victims' objects in a record, not a pass over the handle table.

Only the handle table knows where each object lies; a pass over it for every cleaning
step made a step cost more the bigger the pool. ``Allocator._live_in`` keeps a record
of the least-utilised segments' objects from its last pass and takes a step's victims
from it, checked against the segments' live bytes. These tests hold the record to the
truth (a pass, here in numpy) through churn that cleans, empties and reopens segments,
and check that it is used: passes are rare where steps are many.
"""

from __future__ import annotations

import numpy as np
import pytest

import devpool
from devpool.pool.allocator import aligned
from tests.pool.test_churn import churn

SEG = 64 * 1024
CAP = 16 << 20


def _truth(al, victims):
    """The live slots in ``victims``, in arena order, from the handle table itself."""
    live = np.flatnonzero(al.locs >= 0)
    mine = live[np.isin(al.locs[live] // al.seg_bytes, victims)]
    return mine[np.argsort(al.locs[mine])]


def _figures_hold(al):
    """Every segment's live bytes are those of the objects the handle table puts there."""
    live = np.flatnonzero(al.locs >= 0)
    want = np.bincount(al.locs[live] // al.seg_bytes, weights=aligned(al.sizes[live].astype(np.int64)),
                       minlength=al.n_segs).astype(np.int64)
    assert np.array_equal(al.seg_live, want)
    assert al.seg_in_use[want > 0].all()


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("known", [1024, 6])
def test_the_record_answers_what_a_pass_would(single, known):
    """Through churn that cleans as it goes (and records only ``known`` segments, so that
    victims fall outside it too): every cleaning step's victims, and any other segments
    asked, get exactly the live objects a pass finds, in arena order; the figures stay
    true; every object keeps its bytes."""
    rng = np.random.default_rng(7)
    pool = devpool.open_pool("host", CAP, segment_bytes=SEG)
    try:
        al = pool.alloc_
        al.KNOWN_SEGMENTS = known
        asked = []
        real = al._live_in

        def spy(victims, record=False):
            got = real(victims, record)
            assert np.array_equal(got, _truth(al, victims)), "the record gave other objects than a pass"
            asked.append(len(victims))
            return got
        al._live_in = spy

        def check():
            _figures_hold(al)
            used = np.flatnonzero(al.seg_in_use)
            for victims in (rng.choice(used, min(3, used.size), replace=False),
                            used[np.argsort(al.seg_live[used])][:5]):
                victims = np.sort(victims)
                assert np.array_equal(real(victims), _truth(al, victims))

        handles, data, _ = churn(pool, rng, live=4000, rounds=30, batch=200 if not single else 60, single=single,
                                 each_round=check)
        assert al.clean_steps > 5 and asked, "the churn never cleaned: the test tests nothing"
        for i, h in enumerate(handles.tolist()):
            assert pool.read(h).tobytes() == data[i].tobytes()
    finally:
        pool.close()


def test_passes_are_rare_where_steps_are_many():
    """Churn spread evenly over a pool of ~1 000 segments: most cleaning steps take their
    victims from the record (a pass each was the cost this record removes)."""
    rng = np.random.default_rng(3)
    pool = devpool.open_pool("host", 256 << 20, segment_bytes=SEG)
    try:
        al = pool.alloc_
        churn(pool, rng, live=40_000, rounds=60, batch=1000, single=False)
        steps, passes = al.clean_steps, al.victim_scans
        assert steps >= 20, f"{steps} cleaning steps: the churn did not reach the steady state"
        assert passes * 4 <= steps, f"{passes} passes over the handle table for {steps} cleaning steps"
        _figures_hold(al)
    finally:
        pool.close()


def test_a_recorded_segment_emptied_and_reopened_is_not_taken_from_the_record():
    """A segment the record holds, emptied and filled again with other objects: its live
    bytes no longer add up to the recorded objects', so the answer comes from a pass."""
    pool = devpool.open_pool("host", CAP, segment_bytes=SEG)
    try:
        al = pool.alloc_
        hs = pool.alloc_batch(np.full(160, 1000))           # ~2.4 segments of 64 KiB
        first = int(al.locs[al.decode(hs[:1])[0]] // SEG)
        al._live_in(np.array([first]), record=True)         # the record now holds it
        assert first in al._known_segs.tolist()
        in_first = [h for h in hs.tolist() if al.decode_one(h)[1] // SEG == first]
        pool.free_batch(in_first)                           # emptied (given back or kept spare)
        assert not al.seg_in_use[first]
        new = pool.alloc_batch(np.full(len(in_first) // 2, 1400))   # the lowest free segment again
        assert any(al.decode_one(h)[1] // SEG == first for h in new.tolist()), "the test's premise"
        scans = al.victim_scans
        got = al._live_in(np.array([first]))
        assert np.array_equal(got, _truth(al, [first]))
        assert al.victim_scans == scans + 1, "the stale record was trusted"
        # and the record serves a segment it holds as it was, without a pass
        other = int(al.locs[al.decode(hs[-1:])[0]] // SEG)
        if other in al._known_segs.tolist():
            scans = al.victim_scans
            assert np.array_equal(al._live_in(np.array([other])), _truth(al, [other]))
            assert al.victim_scans == scans
    finally:
        pool.close()


def test_a_segment_named_twice_gives_its_objects_once():
    """Victims named twice (or out of order) get each live object once, from the record as
    from a pass: an evacuation planned over them moves each object once, and every
    segment's live bytes stay those of its objects."""
    pool = devpool.open_pool("host", CAP, segment_bytes=SEG)
    try:
        al = pool.alloc_
        hs = pool.alloc_batch(np.full(160, 1000))
        segs = np.unique(al.locs[al.decode(hs)] // SEG)
        first, second = int(segs[0]), int(segs[1])
        al._live_in(np.array([first, second]), record=True)       # the record now holds them
        for victims in ([first, first], [second, first, second]):
            scans = al.victim_scans
            assert np.array_equal(al._live_in(np.array(victims)), _truth(al, victims))
            assert al.victim_scans == scans, "answered by a pass: the record was not tried"
        plan = al.plan_evacuation(np.array([first, first]))
        assert np.unique(plan.slots).size == plan.slots.size
        pool._execute_clean(plan)
        _figures_hold(al)
        assert not al.seg_in_use[first]
    finally:
        pool.close()


def _record_whole(al):
    """The record's arrays belong together: one bound past each segment, the last at its end."""
    assert al._known_placed.size == al._known_segs.size
    assert al._known_bounds.size == al._known_segs.size + 1
    assert al._known_bounds[0] == 0 and al._known_bounds[-1] == al._known.size
    assert (np.diff(al._known_bounds) >= 0).all()


def test_a_pass_that_fails_half_way_leaves_the_record_whole(monkeypatch):
    """A pass that records and fails while it makes the record (MemoryError, here from the
    bounds' np.append) leaves the record it had: were the new slots and segments installed
    beside the old bounds, the compiled lookup would read past them (no bounds check) and
    every later cleaning step would read garbage."""
    pool = devpool.open_pool("host", CAP, segment_bytes=SEG)
    try:
        al = pool.alloc_
        al.KNOWN_SEGMENTS = 1                                         # (records a few segments)
        hs = pool.alloc_batch(np.full(1000, 1000))
        segs = np.unique(al.locs[al.decode(hs)] // SEG)[:-1]          # (not the head)
        for _ in range(2):                                            # from none, then from one
            victims = np.setdiff1d(segs, al._known_segs)[:2]          # a pass's: the record lacks them
            with monkeypatch.context() as m:
                def no_memory(*args, **kwargs):
                    raise MemoryError("injected")
                m.setattr(np, "append", no_memory)
                with pytest.raises(MemoryError):
                    al._live_in(victims, record=True)
            _record_whole(al)
            for s in segs.tolist():
                assert np.array_equal(al._live_in(np.array([s])), _truth(al, [s]))
            al._live_in(segs[:2], record=True)                        # a record to keep, next time
            _record_whole(al)
    finally:
        pool.close()


def test_a_step_takes_the_emptiest_where_the_record_holds_too_few_victims():
    """The record's segments are taken only where they free nearly as much as the
    emptiest would, in all (not only victim for victim): two recorded segments as empty
    as the best, beside four others as empty that no pass has seen, must not make a
    step that frees a third of what was asked (40 of each 64 objects freed in six)."""
    pool = devpool.open_pool("host", CAP, segment_bytes=SEG)
    try:
        al = pool.alloc_
        al.KNOWN_SEGMENTS = 1
        hs = pool.alloc_batch(np.full(11 * 64, 1008)).tolist()      # 64 a segment: 11 segments
        by_seg = {}
        for h in hs:
            by_seg.setdefault(al.decode_one(h)[1] // SEG, []).append(h)
        assert len(by_seg) == 11
        pool.CLEAN_TRIGGER = float("inf")                          # (no step but the one asked)
        pool.free_batch(by_seg[0][:40] + by_seg[1][:40] + by_seg[2][:1])
        al._live_in(np.array([0]), record=True)                    # records 0 and 1, the emptiest
        pool.free_batch([h for s in (5, 6, 7, 8) for h in by_seg[s][:40]])
        assert not set(al._known_segs.tolist()) & {5, 6, 7, 8}, "the test's premise"
        assert {0, 1} <= set(al._known_segs.tolist())
        plan = al.plan_clean(5 * 40 * 1008, 64)
        assert {5, 6, 7, 8} <= set(plan.victims.tolist())
        assert np.array_equal(plan.slots, _truth(al, plan.victims))
    finally:
        pool.close()


@pytest.mark.parametrize("seg", [48 * 1024, 64 * 1024])
def test_a_pass_finds_the_same_objects_whatever_the_segment_size(seg):
    """The pass divides by a shift where the segment size is a power of two, and by the
    size where it is not (a multiple of 4 KiB, 48 KiB here): the same objects either way."""
    from devpool.pool.allocator import _slots_in
    rng = np.random.default_rng(11)
    pool = devpool.open_pool("host", CAP, segment_bytes=seg)
    try:
        al = pool.alloc_
        churn(pool, rng, live=3000, rounds=6, batch=300, single=False)
        used = np.flatnonzero(al.seg_in_use)
        for victims in (used[:1], used[::3], used):
            marked = np.zeros(al.n_segs, np.bool_)
            marked[victims] = True
            got = _slots_in(al.locs, marked, al.seg_bytes)
            assert np.array_equal(np.sort(got), np.sort(_truth(al, victims)))
            assert np.array_equal(al._pass(victims), _truth(al, victims))
    finally:
        pool.close()
