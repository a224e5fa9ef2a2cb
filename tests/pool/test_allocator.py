"""The allocator alone, against a simple model: placement, cleaning, the handle table.

No pool and no storage: the test plays the pool's part (it tells the allocator which
segments storage committed, gave back or kept as spares) and keeps the arena itself, a
bytearray where every object carries bytes of its own, so a cleaning or evacuation plan
is checked by carrying it out (every source read before any destination is written, as
``Storage.move`` promises) and reading every object back. Hypothesis drives single and
batch allocation, frees in both forms, compaction, bounded cleaning steps, evacuation,
stale / foreign / repeated / malformed handles; the model is a dict slot -> (size,
bytes) and a list of handles that were freed.

After every step: objects are 16-byte aligned, inside the capacity, never straddle a
segment and never overlap; every figure the allocator keeps (per segment and in total)
equals what the live objects add up to; each live handle decodes, single and batch, to
its slot, place and size; every freed handle is refused as stale.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from devpool import InvalidHandleError, InvalidSizeError, PoolFullError
from devpool.pool.allocator import ALIGN, Allocator

SEG = 4096
CAP = 12 * SEG
MAX_OBJ = 1500
SIZES = st.integers(1, MAX_OBJ)


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class AllocatorMachine(RuleBasedStateMachine):
    @initialize(spares=st.integers(0, 3))
    def open(self, spares):
        self.al = Allocator(CAP, SEG, MAX_OBJ)
        self.other = Allocator(CAP, SEG, MAX_OBJ)          # for foreign handles
        self.spare_budget = spares
        self.arena = np.zeros(CAP, np.uint8)
        self.model: dict[int, tuple[int, bytes]] = {}     # slot -> (size, bytes)
        self.handle: dict[int, int] = {}                  # slot -> its live handle
        self.dead: list[int] = []                         # handles freed
        self.tag = 0

    def teardown(self):
        for al in (getattr(self, "al", None), getattr(self, "other", None)):
            if al is not None:
                al.close()

    # --- the pool's part ------------------------------------------------------------
    def data(self, n: int) -> bytes:
        self.tag += 1
        return np.random.default_rng(self.tag).integers(0, 256, n, dtype=np.uint8).tobytes()

    def placed(self, slot: int, size: int) -> None:
        """A new object: write its bytes where the allocator put it."""
        data = self.data(size)
        off = int(self.al.locs[slot])
        self.arena[off:off + size] = np.frombuffer(data, np.uint8)
        self.model[slot] = (size, data)
        self.handle[slot] = self.al.handle_of(slot)

    def forget(self, slot: int) -> None:
        self.dead.append(self.handle.pop(slot))
        del self.model[slot]

    def retire(self, segs: np.ndarray) -> None:
        self.al.retire(np.asarray(segs, np.int64), self.spare_budget)

    def carry_out(self, plan) -> None:
        """What the pool does with a cleaning plan: move (sources read first), then
        commit, then the emptied segments become spares (or go back)."""
        assert np.array_equal(plan.src, self.al.locs[plan.slots])
        assert (np.diff(plan.src) > 0).all(), "a plan keeps arena order"
        copies = [self.arena[s:s + a].copy() for s, a in zip(plan.src.tolist(), plan.asizes.tolist())]
        for d, c in zip(plan.dst.tolist(), copies):
            self.arena[d:d + c.size] = c
        touched = np.unique(plan.dst // SEG)
        self.al.held(touched[~self.al.seg_in_use[touched]])
        freed, _ = self.al.commit_compact(plan)
        assert not self.al.seg_in_use[freed].any()
        self.retire(freed)

    def must_fit(self, sizes) -> bool:
        """The model's own verdict: each object could open a segment of its own."""
        free_segs = CAP // SEG - self.al.segs_in_use
        return len(sizes) <= free_segs

    # --- allocation -------------------------------------------------------------------
    @rule(sizes=st.lists(SIZES, min_size=1, max_size=10))
    def alloc_batch(self, sizes):
        arr = self.al.check_sizes(sizes)
        plan = self.al.plan(arr)
        if plan is None:
            assert not self.must_fit(sizes)
            event("batch: no room")
            return
        assert (plan.offsets % ALIGN == 0).all()
        self.al.held(plan.opened)
        slots = self.al.commit_alloc(arr, plan)
        assert np.array_equal(self.al.locs[slots], plan.offsets)
        assert len(set(slots.tolist())) == len(sizes) and not set(slots.tolist()) & set(self.model)
        for slot, size in zip(slots.tolist(), sizes):
            self.placed(slot, size)
        assert np.array_equal(self.al.handles(slots), [self.handle[s] for s in slots.tolist()])

    @rule(size=SIZES)
    def alloc_one(self, size):
        placed = self.al.place_one(self.al.check_size(size))
        if placed is None:
            assert not self.must_fit([size])
            event("single: no room")
            return
        offset, opened = placed
        if opened >= 0:
            self.al.held(np.array([opened], np.int64))
        else:
            assert offset // SEG == self.al.head, "a bump placement stays in the head"
        slot = self.al.commit_one(size, offset, opened)
        assert int(self.al.locs[slot]) == offset and slot not in self.model
        self.placed(slot, size)

    @rule(size=st.sampled_from([0, -1, MAX_OBJ + 1, 2**63, 1.0, "8"]))
    def bad_sizes_are_refused(self, size):
        with pytest.raises(InvalidSizeError):
            self.al.check_size(size)
        with pytest.raises(InvalidSizeError):
            self.al.check_sizes([16, size])
        with pytest.raises(InvalidSizeError):
            self.al.check_size(True)            # (in a list beside ints numpy reads a bool as 1)

    # --- free ---------------------------------------------------------------------------
    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def free_batch(self, data):
        slots = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=6, unique=True))
        hs = np.array([self.handle[s] for s in slots], np.int64)
        got = self.al.decode(hs, check_duplicates=True)
        assert got.tolist() == slots
        gens, where = self.al.gens[got].copy(), [self.arena_offset(s) for s in slots]
        offsets, asz, emptied = self.al.free(got)
        assert offsets.tolist() == where
        assert asz.tolist() == [aligned(self.model[s][0]) for s in slots]
        assert (self.al.gens[got] != gens).all() and (self.al.gens[got] > 0).all()
        for s in slots:
            self.forget(s)
        self.check_emptied(emptied)
        self.retire(emptied)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def free_one(self, data):
        slot = data.draw(st.sampled_from(sorted(self.model)))
        got, off, size = self.al.decode_one(self.handle[slot])
        assert (got, off, size) == (slot, self.arena_offset(slot), self.model[slot][0])
        asize, emptied = self.al.free_one(got)
        assert asize == aligned(size)
        self.forget(slot)
        self.check_emptied(np.array([emptied] if emptied >= 0 else [], np.int64))
        self.retire(np.array([emptied] if emptied >= 0 else [], np.int64))

    def top(self) -> int:
        used = np.flatnonzero(self.al.seg_in_use)
        return int(used.max()) if used.size else -1

    def arena_offset(self, slot: int) -> int:
        return int(self.al.locs[slot])

    def check_emptied(self, emptied):
        """A segment is emptied when its last object goes, never while one lives, and
        never the head (it stays open, its bump pointer back at 0)."""
        live_segs = {self.arena_offset(s) // SEG for s in self.model}
        assert not set(emptied.tolist()) & live_segs
        assert self.al.head not in emptied.tolist()

    # --- cleaning -----------------------------------------------------------------------
    @rule(util=st.sampled_from([0.25, 0.5, 1.0]), repack=st.booleans())
    def compact(self, util, repack):
        before = self.al.segs_in_use
        plan = self.al.plan_compact(util, repack=repack)
        if plan is None:
            event("compact: nothing to do")
            return
        self.carry_out(plan)
        assert self.al.segs_in_use <= before or repack
        event("compact: done")

    @rule(want=st.integers(0, 3 * SEG), most=st.integers(1, 4))
    def clean_step(self, want, most):
        plan = self.al.plan_clean(want, most)
        if plan is None:
            return
        assert plan.victims.size <= most and self.al.head not in plan.victims.tolist()
        before, top = self.al.segs_in_use, self.top()
        self.carry_out(plan)
        assert self.al.segs_in_use < before or self.top() < top, "a step frees a segment or lowers the top"
        event("clean step: done")

    @precondition(lambda self: self.model)
    @rule(count=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
    def evacuate(self, count, seed):
        """Every object of the victims moves to a free segment; no more segments in use."""
        rng = np.random.default_rng(seed)
        pick = self.al.sample_live(rng, count)
        assert len(set(pick.tolist())) == pick.size == min(count, len(self.model))
        assert set(pick.tolist()) <= set(self.model)
        victims = self.al.segments_of(pick)[:2]
        plan = self.al.plan_evacuation(victims)
        if plan is None:
            event("evacuate: no room")
            return
        before = self.al.segs_in_use
        in_victims = {s for s in self.model if self.arena_offset(s) // SEG in set(victims.tolist())}
        assert set(plan.slots.tolist()) == in_victims
        assert not (np.isin(plan.dst // SEG, victims)).any(), "an evacuated object lands elsewhere"
        self.carry_out(plan)
        assert self.al.segs_in_use <= before and not self.al.seg_in_use[victims].any()
        event("evacuate: done")

    @precondition(lambda self: self.model)
    @rule(count=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
    def move_within_held_space(self, count, seed):
        """Objects moved into the head's room or spares only: no segment storage must
        commit, every moved object at a new place, its old bytes dead."""
        pick = self.al.sample_live(np.random.default_rng(seed), count)
        plan = self.al.plan_move(pick)
        if plan is None:
            event("move: no held room")
            return
        assert self.al.seg_warm[plan.opened].all(), "a move opened a segment storage does not hold"
        old = self.al.locs[pick].copy()
        copies = [self.arena[o:o + aligned(self.model[s][0])].copy() for s, o in zip(pick.tolist(), old.tolist())]
        for d, c in zip(plan.offsets.tolist(), copies):
            self.arena[d:d + c.size] = c
        self.al.held(plan.opened)
        offsets, asz, emptied = self.al.commit_move(pick, plan)
        assert offsets.tolist() == old.tolist() and (self.al.locs[pick] == plan.offsets).all()
        assert (self.al.locs[pick] != old).all()
        self.check_emptied(emptied)
        self.retire(emptied)
        event("move: done")

    # --- handles ------------------------------------------------------------------------
    @precondition(lambda self: self.dead)
    @rule(data=st.data(), batch=st.booleans())
    def stale_handle(self, data, batch):
        h = data.draw(st.sampled_from(self.dead))
        with pytest.raises(InvalidHandleError, match="stale"):
            if batch:
                live = [self.handle[s] for s in list(self.model)[:3]]
                self.al.decode(np.array(live + [h], np.int64))
            else:
                self.al.decode_one(h)

    @rule(data=st.data(), batch=st.booleans())
    def foreign_handle(self, data, batch):
        slots = self.other.commit_alloc(np.array([16], np.int64), self.other.plan(np.array([16], np.int64)))
        h = int(self.other.handles(slots)[0])
        with pytest.raises(InvalidHandleError, match="another pool"):
            self.al.decode(np.array([h], np.int64)) if batch else self.al.decode_one(h)
        self.other.free(slots)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def repeated_handle(self, data):
        """A batch of live handles in which one repeats: the first repeat is named, and
        the table is as it was (duplicates are found by marking slots in place)."""
        picks = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=6, unique=True))
        again = data.draw(st.sampled_from(picks))
        picks.insert(data.draw(st.integers(picks.index(again) + 1, len(picks))), again)
        bad = next(i for i, s in enumerate(picks) if s in picks[:i])
        hs = np.array([self.handle[s] for s in picks], np.int64)
        locs, hv = self.al.locs.copy(), self.al.hv.copy()
        with pytest.raises(InvalidHandleError, match=rf"\(batch index {bad}\) appears twice"):
            self.al.decode(hs, check_duplicates=True)
        assert np.array_equal(self.al.locs, locs) and np.array_equal(self.al.hv, hv)
        assert self.al.decode(hs).tolist() == picks      # reads may repeat

    @rule(bad=st.sampled_from([-1, 0, 1, 2**62 + 12345, "1", 1.5, True]))
    def malformed_handle(self, bad):
        with pytest.raises(InvalidHandleError):
            self.al.decode_one(bad)

    # --- what must hold after every step ----------------------------------------------
    @invariant()
    def placement(self):
        spans = sorted((self.arena_offset(s), aligned(n)) for s, (n, _) in self.model.items())
        for off, a in spans:
            assert off % ALIGN == 0 and 0 <= off and off + a <= CAP
            assert off // SEG == (off + a - 1) // SEG, "an object straddles a segment"
        for (o1, a1), (o2, _) in zip(spans, spans[1:]):
            assert o1 + a1 <= o2, "two live objects overlap"

    @invariant()
    def bytes_where_the_table_says(self):
        for slot, (n, data) in self.model.items():
            off = self.arena_offset(slot)
            assert self.arena[off:off + n].tobytes() == data

    @invariant()
    def figures(self):
        al = self.al
        live = np.zeros(al.n_segs, np.int64)
        for s, (n, _) in self.model.items():
            live[self.arena_offset(s) // SEG] += aligned(n)
        assert np.array_equal(al.seg_live, live)
        assert al.seg_in_use[live > 0].all()
        assert not (al.seg_in_use & al.seg_warm).any(), "a spare is not in use"
        assert al.spare_segments == int(al.seg_warm.sum())
        assert al.live_objects == len(self.model)
        assert al.live_bytes == sum(n for n, _ in self.model.values())
        assert al.live_aligned == int(live.sum())
        assert al.segs_in_use == int(al.seg_in_use.sum())
        assert al.dead_bytes == al.segs_in_use * SEG - al.live_aligned
        if al.head >= 0:
            assert al.seg_in_use[al.head] and al.seg_fill[al.head] <= SEG
        st_ = al.stats()
        assert st_["obj_used"] == len(self.model) and st_["arena_used_bytes"] == al.live_aligned
        # every slot the table holds is live (in the model) or free (-1)
        assert set(np.flatnonzero(al.locs >= 0).tolist()) == set(self.model)

    @invariant()
    def handles_decode(self):
        if not self.model:
            return
        slots = sorted(self.model)
        hs = np.array([self.handle[s] for s in slots], np.int64)
        assert self.al.decode(hs, check_duplicates=True).tolist() == slots
        for s in slots[:4]:
            assert self.al.decode_one(self.handle[s]) == (s, self.arena_offset(s), self.model[s][0])


def test_allocator_matches_its_model():
    AllocatorMachine.TestCase.settings = settings(
        max_examples=40, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    AllocatorMachine.TestCase().runTest()


def test_a_full_table_refuses_before_anything_changes(monkeypatch):
    """Past MAX_SLOTS the table refuses with PoolFullError and the allocator's figures
    are unchanged."""
    from devpool.pool import allocator as allocator_module

    monkeypatch.setattr(allocator_module, "MAX_SLOTS", 1024)
    al = Allocator(CAP, SEG, MAX_OBJ)
    try:
        al._min_free = 16
        arr = np.full(1024, 16, np.int64)              # every slot there may be: live
        al.commit_alloc(arr, al.plan(arr))
        before = (al.live_objects, al.segs_in_use, al.seg_live.copy())
        with pytest.raises(PoolFullError):
            al.ensure_slots(1)
        assert (al.live_objects, al.segs_in_use) == before[:2] and np.array_equal(al.seg_live, before[2])
    finally:
        al.close()


def test_sample_live_is_uniform_enough_and_bounded():
    """Random live slots, distinct, every live slot reachable; a pool of mostly free
    slots still answers (draws follow the table's share of free slots)."""
    al = Allocator(1 << 22, SEG, MAX_OBJ)
    try:
        arr = np.full(300, 100, np.int64)
        slots = al.commit_alloc(arr, al.plan(arr))
        al.free(slots[::2])
        live = set(slots[1::2].tolist())
        rng = np.random.default_rng(1)
        seen = set()
        for _ in range(200):
            pick = al.sample_live(rng, 5)
            assert pick.size == 5 and len(set(pick.tolist())) == 5 and set(pick.tolist()) <= live
            seen |= set(pick.tolist())
        assert seen == live
        assert set(al.sample_live(rng, 10_000).tolist()) == live
    finally:
        al.close()


def test_the_handle_table_grows_by_an_eighth():
    """Grown one object at a time or by batches, the handle table holds the live objects
    plus its reserve of free slots and at most an eighth more (a doubling left up to
    half of it unused), and every handle still decodes."""
    from devpool.pool.allocator import MIN_FREE_SLOTS
    for batch in (1, 777):
        al = Allocator(64 << 20, 256 << 10, 64)
        slots = []
        sizes = np.full(batch, 16, np.int64)
        for _ in range(60_000 // batch):
            if batch == 1:
                off, opened = al.place_one(16)
                slots.append(al.commit_one(16, off, opened))
            else:
                slots.extend(al.commit_alloc(sizes, al.plan(sizes)).tolist())
            need = al.live_objects + MIN_FREE_SLOTS
            assert need <= al.locs.shape[0] <= max(1024, need * 9 // 8 + batch)
        assert al.table_bytes == 24 * al.locs.shape[0]
        hs = al.handles(np.array(slots, np.int64))
        assert al.decode(hs, check_duplicates=True).tolist() == slots
