"""Where objects move, handles staying: cleaning as frees go, compaction, migration.

A mixin of :class:`~devpool.pool.pool.Pool` (its allocator ``alloc_``, its ``storage``,
its segments' commit and release and its counters): the log-structured arena's upkeep,
apart from the verbs that place, copy and free objects.
"""

from __future__ import annotations

import numbers
import time

import numpy as np

from .allocator import (_M_CLEAN_AFTER, _M_LIVE_ALIGNED, _M_SEGS_IN_USE, _M_TRIGGER, _M_VACATED, TRIGGER_MAX,
                        TRIGGER_ONE, aligned)
from .._checks import check_int, check_real
from .._errors import BadInputError, DevpoolError, PoolFullError
from .locked import BATCH, locked

__all__ = ["Moving"]


class Moving:
    """Cleaning, compaction and migration for :class:`~devpool.pool.pool.Pool`."""

    # --- cleaning as you go -----------------------------------------------------------
    # A log-structured arena keeps freed bytes dead until their segment is cleaned; under
    # churn (zswap frees and stores all day) they would pile up: 5.86 bytes held per live
    # byte were measured before this. So every free checks, in O(1), whether dead space
    # has passed CLEAN_TRIGGER of the live bytes (plus two segments of slack for the
    # head's tail) and if so runs one *bounded* cleaning step: the emptiest segments,
    # enough to bring dead space down to half the trigger, at most CLEAN_STEP_SEGMENTS of
    # them, packed with one bulk move. No single call pays for a whole pass.
    #: dead bytes that start a cleaning step, as a share of live arena bytes (CLEAN_TRIGGER)
    _clean_trigger = 1 / 16

    # both kept in the allocator's meta too: a single free decides in compiled code
    # whether a step is due (_maybe_clean's test, there in 1/2**16 of the live bytes)
    @property
    def CLEAN_TRIGGER(self) -> float:
        return self._clean_trigger

    @CLEAN_TRIGGER.setter
    def CLEAN_TRIGGER(self, value: float) -> None:
        self._set_clean_trigger(value)

    def _set_clean_trigger(self, value) -> None:
        # a share of the live bytes: 0 cleans at every chance, inf never. The compiled
        # test's fixed point is truncated and capped (it may ask Python early, never
        # late); NaN, a negative share or no number is refused before anything changes
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not value >= 0:
            raise BadInputError(f"CLEAN_TRIGGER must be a share of the live bytes >= 0 (inf: never clean "
                                f"as frees go), got {value!r}")
        fixed = value * TRIGGER_ONE
        self.alloc_._mm[_M_TRIGGER] = TRIGGER_MAX if fixed >= TRIGGER_MAX else int(fixed)
        self._clean_trigger = value

    @property
    def _clean_after(self) -> int:
        return self.alloc_._mm[_M_CLEAN_AFTER]

    @_clean_after.setter
    def _clean_after(self, value: int) -> None:
        self.alloc_._mm[_M_CLEAN_AFTER] = value

    #: the most segments one cleaning step packs (bounds the work one free pays)
    CLEAN_STEP_SEGMENTS = 64

    def _maybe_clean(self) -> None:
        al = self.alloc_
        m, sb = al._mm, al.seg_bytes                     # al.dead_bytes and the rest, inline
        live = m[_M_LIVE_ALIGNED]
        dead = m[_M_SEGS_IN_USE] * sb - live
        if dead > 2 * sb and dead > live * self.CLEAN_TRIGGER and m[_M_VACATED] >= self._clean_after:
            limit = live * self.CLEAN_TRIGGER
            t0 = time.perf_counter()
            plan = al.plan_clean(int(dead - limit * 3 / 4), self.CLEAN_STEP_SEGMENTS)
            if plan is None:
                # nothing packs into fewer segments yet: wait until another segment's
                # worth of bytes has died before planning again (a plan scans the handle
                # table). Counted in vacated_bytes, which only grows: a floor on dead
                # bytes went stale when they fell (segments emptied) and held cleaning off
                self._clean_after = al.vacated_bytes + al.seg_bytes
            else:
                # the free that got here has committed: a failed step (device OOM for a
                # destination, a failed move) changes nothing and must not make that
                # free look failed (a load that frees would lose its page); it waits
                # for another segment's worth of dead bytes, as above
                try:
                    self._execute_clean(plan)
                except DevpoolError:
                    self._counters["clean_fail"] += 1
                    self._clean_after = al.vacated_bytes + al.seg_bytes
                else:
                    self._clean_after = 0
                    al.clean_steps += 1
            self._clean_seconds += time.perf_counter() - t0

    # --- compaction ------------------------------------------------------------------
    def _compact(self, max_utilisation: float, full_too: bool = False) -> int:
        return self._execute_clean(self.alloc_.plan_compact(max_utilisation, full_too=full_too))

    def _under_pressure(self, need: int, place):
        """``place()`` again once cleaning made room for ``need`` aligned bytes (the pool
        is full): first the segments below full are packed; when that frees no segment,
        the free space may still lie in holes no placement reaches (the head only grows
        at its tail), so :meth:`_repack` gathers it behind the last object. ``place``'s
        answer, None when neither made room."""
        self._compact(1.0)
        placed = place()
        if placed is None and self._repack(need):
            placed = place()
        return placed

    def _repack(self, need: int) -> bool:
        """Repack every segment below full so the free space gathers behind the last
        object, when dead bytes would hold ``need``: a whole-pool pass, not repeated while
        no object has left its place since the last one (the layout is packed already:
        another would move every byte and gather nothing). True if it ran."""
        al = self.alloc_
        if al.dead_bytes < need or al.vacated_bytes == self._repacked_at:
            return False
        self._execute_clean(al.plan_compact(1.0, repack=True))
        self._repacked_at = al.vacated_bytes
        return True

    def _execute_clean(self, plan) -> int:
        """Carry out a cleaning plan: commit destinations, one bulk move, re-point the
        slots, give emptied segments back; returns bytes freed."""
        if plan is None:
            return 0
        spares = self.alloc_.spare_segments
        src, dst, a = plan.src, plan.dst, plan.asizes
        touched = np.unique(dst // self.alloc_.seg_bytes)
        fresh = touched[~self.alloc_.seg_in_use[touched]]
        self._commit_segments(fresh)
        try:
            # one move, all or nothing: split in two (the clean head's survivors first), a
            # failed second left the first's sources scrubbed (chaos poisons moved-from
            # bytes) while their handles still named them. The clean head's room holds no
            # source, so the plan still moves in place (HostStorage.move: no staging copy)
            self.storage.move(src, dst, a)
        except BaseException:
            self._release_segments(fresh)
            raise
        freed, _ = self.alloc_.commit_compact(plan)
        # no more spares than before the step: a destination storage had to commit is
        # paid back by a victim, so cleaning (which a free may trigger) never grows the
        # pool's total, e.g. past a zswap limit that was checked before the free
        self._release_segments(freed, budget=min(self._spare_room(), spares))
        self._counters["compactions"] += 1
        return int(freed.size) * self.alloc_.seg_bytes

    @locked
    def compact(self, max_utilisation: float = 1.0) -> int:
        """Clean segments less than ``max_utilisation`` full; returns bytes given back.

        Live objects move (device-to-device on a GPU); every handle stays valid. The
        default, 1.0, packs every segment in arena order: a second call right after
        moves nothing and returns 0.
        """
        return self._clean(check_real(max_utilisation, "max_utilisation", lo=0, hi=1, lo_open=True))

    def _clean(self, max_utilisation: float) -> int:
        """Compact, then give every spare segment back; returns bytes released."""
        before = self.storage.committed_bytes
        self._compact(max_utilisation, full_too=True)
        self._release_segments(np.zeros(0, np.int64), keep_spares=False)
        return before - self.storage.committed_bytes

    # --- migration: objects move, handles stay ------------------------------------------
    @locked(kind=BATCH)        # refused while a block is lent; provokes nothing itself
    def migrate(self, count: int, *, rng: np.random.Generator | None = None) -> int:
        """Move up to ``count`` live objects, chosen at random (by ``rng``), to other
        arena space; returns how many moved. Every handle stays valid and every read
        returns the same bytes; only where the bytes lie changes, and the pool grows by
        nothing.

        The objects go where the arena has room already (the open segment's tail, then
        spare segments); their old places are dead bytes, cleaned as freed ones are. When
        there is no such room, one segment holding a chosen object (the emptiest) is
        emptied into a fresh one instead and given back. A real migration through the
        allocator and storage's own ``move`` (device to device on a GPU). The pool does
        this on its own only under a hostile storage's policy (``chaos``), before every
        call; the work follows ``count``, not the pool's size.
        """
        count = check_int(count, "count", lo=0)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise BadInputError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return self._migrate(count, np.random.default_rng() if rng is None else rng)

    def _migrate(self, count: int, rng: np.random.Generator) -> int:
        al = self.alloc_
        pick = al.sample_live(rng, count)
        if pick.size == 0:
            return 0
        plan = al.plan_move(pick)
        if plan is None and count >= al.live_objects:
            return self._evacuate(pick, pick.size)      # every object asked for: segments and all
        while plan is None and pick.size > 1:           # the longest prefix there is room for
            pick = pick[:pick.size // 2]
            plan = al.plan_move(pick)
        if plan is None:
            return self._evacuate(pick, 1)
        self._commit_segments(plan.opened)              # spares: nothing to commit, no growth
        try:
            self.storage.move(al.locs[pick], plan.offsets, aligned(al.sizes[pick]))
        except BaseException:
            self._release_segments(plan.opened)
            raise
        emptied = al.commit_move(pick, plan)[2]
        # (no discard: the old copies were the move's sources, which storage's move
        # already treats as left behind, as after a cleaning step's move)
        self._release_segments(emptied)
        # (no cleaning here: the room a move takes is held room, so the dead bytes it
        # leaves are bounded by the spares and the open segment, and cleaned as the
        # pool's own frees clean)
        self._counters["migrated_objects"] += int(pick.size)
        return int(pick.size)

    def _evacuate(self, pick: np.ndarray, most: int) -> int:
        """Empty up to ``most`` segments holding objects of ``pick`` (the emptiest first)
        into fresh segments and give as many back as they took (when the arena has no
        room elsewhere); returns the objects moved."""
        al = self.alloc_
        segs = al.segments_of(pick)
        plan = al.plan_evacuation(segs[np.argsort(al.seg_live[segs], kind="stable")][:most])
        if plan is None:
            return 0
        try:
            self._execute_clean(plan)        # grows nothing: a victim pays for each destination
        except PoolFullError:
            return 0                         # no room for the destination: nothing moved
        self._counters["migrated_objects"] += int(plan.slots.size)
        return int(plan.slots.size)
