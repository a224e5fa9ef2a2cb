"""The allocator: where each object lives in the arena. Written once for every backend.

Design — a log-structured arena with cleaning (RAMCloud), not zsmalloc's size classes
-----------------------------------------------------------------------------------
zsmalloc rounds each object up to a size class (16-byte steps up to 4096 B) and carves
*zspages* of 1–4 pages per class into equal slots. Two wastes follow: the class rounding
(7.5 B per object on average) and, worse, the tails: every class keeps a partly filled
zspage, and a zspage's size is rarely a multiple of its class. Worked example: class
1552 B in one 4 KiB page holds 2 objects and wastes 992 B (24 %); zsmalloc picks 4 pages
(16 KiB) for it, 10 objects, 864 B (5 %) waste. With ~250 classes, fixed 4-page zspages
measured 1.04–1.06 pool bytes per payload byte on real LZ4 page sizes.

A pool that is only reached by bulk copies does not need slots at all. This allocator
packs objects back to back (16-byte aligned, so the only rounding is <16 B) into
fixed-size *segments* (default 256 KiB, a multiple of the OS page size): a batch is
placed by a bump pointer in the head segment, so its copy-in lands in one contiguous
range. Objects never straddle a segment, so a segment can be cleaned and given back to
storage on its own. Freeing only marks bytes dead; a segment whose objects all died is
released at once. ``compact()`` *cleans*: it takes the segments with the most dead
space, packs their live objects into as few segments as possible (a single bulk
``storage.move``, device-to-device on a GPU) and releases the rest. When an allocation
finds no free segment, the allocator cleans before it gives up.

Why handles are indirect (as zsmalloc's handle slots are)
--------------------------------------------------------
A handle names a *slot* of the handle table; the slot holds the object's current arena
offset and size. Compaction re-points the slot (``record_obj`` in zsmalloc), so a
caller's handle stays valid while the bytes move. Each slot has a generation counter,
bumped on free: a stale handle's generation no longer matches and it is refused, never
read. Bit layout, known only to :meth:`Allocator.handles` and :func:`_decode`::

    bit 63      0
    bits 62..48 pool tag (random per pool, never 0): a handle of another pool is foreign
    bits 47..32 generation of the slot (1..65535, bumped on free)
    bits 31..0  slot index in the handle table

The tag and generation make forged or stale values fail loudly; the value is not an
address and says nothing about where the bytes are.
"""

from __future__ import annotations

import secrets

import numba
import numpy as np

from ._errors import InvalidHandleError, InvalidSizeError

__all__ = ["Allocator", "ALIGN"]

#: every object starts on a 16-byte boundary (device copies stay aligned)
ALIGN = 16

_SLOT_BITS = 32
_GEN_BITS = 16
_TAG_SHIFT = _SLOT_BITS + _GEN_BITS
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_GEN_MASK = (1 << _GEN_BITS) - 1
_TAG_MASK = (1 << 15) - 1

# _decode's error codes
_OK, _MALFORMED, _FOREIGN, _STALE, _DUPLICATE = 0, 1, 2, 3, 4
_REASONS = {
    _MALFORMED: "is not a handle of this pool (malformed)",
    _FOREIGN: "belongs to another pool",
    _STALE: "was freed (stale handle)",
    _DUPLICATE: "appears twice in one batch",
}


def aligned(sizes: np.ndarray) -> np.ndarray:
    """Arena bytes an object of each size occupies."""
    return (sizes + (ALIGN - 1)) & ~np.int64(ALIGN - 1)


@numba.njit(cache=True, nogil=True)
def _decode(handles, key, tag, gens, locs, check_duplicates, seen):
    """Handles -> slots; returns (slots, index of first bad handle or -1, error code)."""
    n = handles.shape[0]
    slots = np.empty(n, dtype=np.int64)
    nslots = gens.shape[0]
    for i in range(n):
        h = handles[i] ^ key
        if h <= 0:
            return slots, i, _MALFORMED
        if (h >> _TAG_SHIFT) != tag:
            return slots, i, _FOREIGN
        slot = h & _SLOT_MASK
        gen = (h >> _SLOT_BITS) & _GEN_MASK
        if slot >= nslots or gen == 0:
            return slots, i, _MALFORMED
        if gens[slot] != gen or locs[slot] < 0:
            return slots, i, _STALE
        slots[i] = slot
    if check_duplicates:
        # seen[] is all-zero on entry and restored before return
        bad = -1
        for i in range(n):
            if seen[slots[i]]:
                bad = i
                break
            seen[slots[i]] = 1
        for i in range(n):
            seen[slots[i]] = 0
        if bad >= 0:
            return slots, bad, _DUPLICATE
    return slots, -1, _OK


@numba.njit(cache=True, nogil=True)
def _next_segment(blocked, warm, want_warm, cursor):
    """First segment at or after ``cursor`` that is not blocked and has warm == want_warm."""
    n = blocked.shape[0]
    while cursor < n:
        if not blocked[cursor] and warm[cursor] == want_warm:
            return cursor
        cursor += 1
    return -1


@numba.njit(cache=True, nogil=True)
def _place(asizes, head, head_fill, blocked, warm, seg_bytes):
    """Next-fit placement of a batch, no object straddling a segment.

    Starts in segment ``head`` at ``head_fill`` (head < 0: none open) and opens
    segments that are not ``blocked``: warm ones (still held by storage) first, then
    cold ones, lowest index first. Returns (offsets, new head, its fill, opened
    segments), or opened = None-like empty with head = -2 when it runs out of room.
    Pure: it changes no allocator state.
    """
    n = asizes.shape[0]
    offsets = np.empty(n, dtype=np.int64)
    opened = np.empty(n, dtype=np.int64)
    n_opened = 0
    warm_cursor = 0
    cold_cursor = 0
    for i in range(n):
        a = asizes[i]
        if head < 0 or head_fill + a > seg_bytes:
            seg = -1
            if warm_cursor >= 0:
                seg = _next_segment(blocked, warm, True, warm_cursor)
                warm_cursor = seg + 1 if seg >= 0 else -1
            if seg < 0:
                seg = _next_segment(blocked, warm, False, cold_cursor)
                if seg < 0:
                    return offsets, -2, 0, opened[:0]
                cold_cursor = seg + 1
            opened[n_opened] = seg
            n_opened += 1
            head = seg
            head_fill = 0
        offsets[i] = head * seg_bytes + head_fill
        head_fill += a
    return offsets, head, head_fill, opened[:n_opened]


@numba.njit(cache=True, nogil=True)
def _record(slots, sizes, asizes, offsets, opened, seg_bytes,
            seg_fill, seg_live, seg_objs, seg_placed, in_use, locs, size_tab):
    """Commit placed objects: segment figures and the slots' locations."""
    for k in range(opened.shape[0]):
        s = opened[k]
        in_use[s] = True
        seg_fill[s] = 0
        seg_live[s] = 0
        seg_objs[s] = 0
        seg_placed[s] = 0
    total = 0
    for i in range(offsets.shape[0]):
        off = offsets[i]
        seg = off // seg_bytes
        seg_live[seg] += asizes[i]
        seg_objs[seg] += 1
        seg_placed[seg] += 1
        end = off - seg * seg_bytes + asizes[i]
        if end > seg_fill[seg]:
            seg_fill[seg] = end
        locs[slots[i]] = off
        size_tab[slots[i]] = sizes[i]
        total += sizes[i]
    return total


@numba.njit(cache=True, nogil=True)
def _forget(slots, locs, size_tab, gens, seg_bytes, seg_fill, seg_live, seg_objs, seg_placed,
            in_use, free_stack, n_free):
    """Free validated slots: segment figures, generations, free-slot stack.

    Returns (offsets, aligned sizes, emptied segments, new n_free, requested bytes).
    """
    n = slots.shape[0]
    offsets = np.empty(n, dtype=np.int64)
    asz = np.empty(n, dtype=np.int64)
    emptied = np.empty(n, dtype=np.int64)
    n_empty = 0
    total = 0
    for i in range(n):
        slot = slots[i]
        off = locs[slot]
        size = size_tab[slot]
        a = (size + (ALIGN - 1)) & ~(ALIGN - 1)
        seg = off // seg_bytes
        seg_live[seg] -= a
        seg_objs[seg] -= 1
        if seg_objs[seg] == 0 and in_use[seg]:
            in_use[seg] = False
            seg_fill[seg] = 0
            seg_placed[seg] = 0
            emptied[n_empty] = seg
            n_empty += 1
        offsets[i] = off
        asz[i] = a
        total += size
        locs[slot] = -1
        g = gens[slot] + 1
        gens[slot] = 1 if g > _GEN_MASK else g        # wrap, never 0
        free_stack[n_free] = slot
        n_free += 1
    return offsets, asz, emptied[:n_empty], n_free, total


class Allocator:
    """Segment bookkeeping and the handle table; knows offsets, never memory kinds.

    Not thread-safe by itself: the pool serialises calls.
    """

    def __init__(self, capacity_bytes: int, segment_bytes: int, max_object_bytes: int):
        if segment_bytes <= 0 or segment_bytes % 4096:
            raise InvalidSizeError(f"segment_bytes must be a positive multiple of 4096, got {segment_bytes}")
        if max_object_bytes <= 0 or max_object_bytes > segment_bytes:
            raise InvalidSizeError(
                f"max_object_bytes must be in 1..segment_bytes ({segment_bytes}), got {max_object_bytes}")
        if capacity_bytes < segment_bytes:
            raise InvalidSizeError(
                f"capacity_bytes ({capacity_bytes}) is smaller than one segment ({segment_bytes})")
        self.seg_bytes = int(segment_bytes)
        self.max_object = int(max_object_bytes)
        self.n_segs = int(capacity_bytes) // self.seg_bytes
        self.capacity = self.n_segs * self.seg_bytes
        # per segment: bump pointer, live bytes, live objects, objects ever placed
        self.seg_fill = np.zeros(self.n_segs, np.int64)
        self.seg_live = np.zeros(self.n_segs, np.int64)
        self.seg_objs = np.zeros(self.n_segs, np.int64)
        self.seg_placed = np.zeros(self.n_segs, np.int64)
        self.seg_in_use = np.zeros(self.n_segs, np.bool_)
        self.seg_warm = np.zeros(self.n_segs, np.bool_)   # free but still held by storage
        self.head = -1
        # handle table: slot -> arena offset (-1: free), requested size, generation
        self.tag = secrets.randbelow(_TAG_MASK) + 1
        self.locs = np.full(0, -1, np.int64)
        self.sizes = np.zeros(0, np.int64)
        self.gens = np.zeros(0, np.int64)
        self._seen = np.zeros(0, np.uint8)
        self._free_slots = np.zeros(0, np.int64)   # a stack; top = _n_free
        self._n_free = 0
        self.live_objects = 0
        self.live_bytes = 0            # requested bytes of live objects (payload)
        self.segments_compacted = 0

    # --- handle encoding: the only place that knows the bit layout -------------------
    def handles(self, slots: np.ndarray) -> np.ndarray:
        """The (unscrambled) handles of these slots."""
        return (np.int64(self.tag) << _TAG_SHIFT) | (self.gens[slots] << _SLOT_BITS) | slots

    def decode(self, handles: np.ndarray, key: int, check_duplicates: bool = False) -> np.ndarray:
        """Validate handles and return their slots; raise naming the first bad one."""
        slots, bad, code = _decode(handles, np.int64(key), np.int64(self.tag), self.gens,
                                   self.locs, check_duplicates, self._seen)
        if bad >= 0:
            raise InvalidHandleError(
                f"handle {int(handles[bad])} (batch index {bad}) {_REASONS[code]}")
        return slots

    # --- queries ---------------------------------------------------------------------
    def location(self, slots: np.ndarray):
        """(arena offsets, requested sizes) of live slots."""
        return self.locs[slots], self.sizes[slots]

    def check_sizes(self, sizes) -> np.ndarray:
        """Sizes as int64, or InvalidSizeError naming the first bad one."""
        arr = np.asarray(sizes)
        if arr.ndim != 1:
            raise InvalidSizeError(f"sizes must be a 1-D sequence, got shape {arr.shape}")
        if arr.size and arr.dtype.kind not in "iu":
            raise InvalidSizeError(f"sizes must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        bad = np.flatnonzero((arr <= 0) | (arr > self.max_object))
        if bad.size:
            i = int(bad[0])
            raise InvalidSizeError(
                f"size {int(arr[i])} at batch index {i} is outside 1..{self.max_object}")
        return arr

    # --- allocation ------------------------------------------------------------------
    def plan(self, sizes: np.ndarray):
        """Where a batch would go, changing nothing; None when it does not fit.

        Returns (offsets, new head, head fill, segments it opens).
        """
        offsets, head, fill, opened = _place(aligned(sizes), self.head,
                                             self.seg_fill[self.head] if self.head >= 0 else 0,
                                             self.seg_in_use, self.seg_warm, self.seg_bytes)
        if head == -2:
            return None
        return offsets, head, fill, opened

    def commit_alloc(self, sizes: np.ndarray, plan) -> np.ndarray:
        """Record a planned batch (the point of no return); returns its slots."""
        offsets, head, fill, opened = plan
        slots = self._take_slots(sizes.shape[0])   # may grow the table: before any mutation
        self.live_bytes += _record(slots, sizes, aligned(sizes), offsets, opened, self.seg_bytes,
                                   self.seg_fill, self.seg_live, self.seg_objs, self.seg_placed,
                                   self.seg_in_use, self.locs, self.sizes)
        self.live_objects += sizes.shape[0]
        self.head = head
        return slots

    def _take_slots(self, n: int) -> np.ndarray:
        if self._n_free < n:
            old = self.locs.shape[0]
            new = max(old * 2, old + n - self._n_free, 1024)
            self.locs = np.concatenate([self.locs, np.full(new - old, -1, np.int64)])
            self.sizes = np.concatenate([self.sizes, np.zeros(new - old, np.int64)])
            self.gens = np.concatenate([self.gens, np.ones(new - old, np.int64)])
            self._seen = np.zeros(new, np.uint8)
            # the stack can hold every slot; fresh slots go under the old free ones,
            # lowest fresh slot nearest the top
            stack = np.empty(new, np.int64)
            nf = new - old
            stack[:nf] = np.arange(new - 1, old - 1, -1, dtype=np.int64)
            stack[nf:nf + self._n_free] = self._free_slots[:self._n_free]
            self._free_slots = stack
            self._n_free += nf
        self._n_free -= n
        return self._free_slots[self._n_free:self._n_free + n][::-1].copy()

    # --- free ------------------------------------------------------------------------
    def free(self, slots: np.ndarray):
        """Forget validated slots; returns (offsets, aligned sizes, emptied segments)."""
        offsets, asz, emptied, self._n_free, total = _forget(
            slots, self.locs, self.sizes, self.gens, self.seg_bytes, self.seg_fill, self.seg_live,
            self.seg_objs, self.seg_placed, self.seg_in_use, self._free_slots, self._n_free)
        self.live_objects -= slots.shape[0]
        self.live_bytes -= total
        if self.head >= 0 and not self.seg_in_use[self.head]:
            self.head = -1
        return offsets, asz, emptied

    # --- cleaning --------------------------------------------------------------------
    def plan_compact(self, max_utilisation: float = 1.0):
        """Plan cleaning of every in-use segment whose live share is below the bar.

        Returns (slots, src offsets, dst offsets, aligned sizes, victims) or None when
        cleaning would free nothing. Live objects keep their arena order, packed next-fit
        into the lowest-numbered candidate segments (free ones and the victims).
        """
        used = np.flatnonzero(self.seg_in_use)
        victims = used[self.seg_live[used] < max_utilisation * self.seg_bytes]
        if victims.size == 0:
            return None
        live = np.flatnonzero(self.locs >= 0)
        is_victim = np.zeros(self.n_segs, np.bool_)
        is_victim[victims] = True
        slots = live[is_victim[self.locs[live] // self.seg_bytes]]
        slots = slots[np.argsort(self.locs[slots], kind="stable")]
        a = aligned(self.sizes[slots])
        # destinations: free segments and the victims themselves (storage.move reads
        # every source before writing), lowest index first so the arena's top empties
        blocked = self.seg_in_use & ~is_victim
        no_warmth = np.zeros(self.n_segs, np.bool_)
        dst, head, fill, opened = _place(a, -1, 0, blocked, no_warmth, self.seg_bytes)
        assert head != -2, "next-fit in arena order never needs more segments than before"
        if opened.size >= victims.size:
            return None   # nothing would be freed
        return slots, self.locs[slots], dst, a, victims, head, fill

    def commit_compact(self, plan) -> tuple[np.ndarray, np.ndarray]:
        """Re-point moved slots and rebuild segment figures; returns (freed, newly used)."""
        slots, _src, dst, a, victims, head, fill = plan
        before = self.seg_in_use.copy()
        self.seg_in_use[victims] = False
        for arr in (self.seg_fill, self.seg_live, self.seg_objs, self.seg_placed):
            arr[victims] = 0
        opened = np.unique(dst // self.seg_bytes)
        _record(slots, self.sizes[slots], a, dst, opened, self.seg_bytes, self.seg_fill,
                self.seg_live, self.seg_objs, self.seg_placed, self.seg_in_use, self.locs, self.sizes)
        # continue appending in the last packed segment; an old head that was not
        # cleaned keeps its unused tail until a later clean.
        if head >= 0:
            self.head = head
        elif self.head >= 0 and not self.seg_in_use[self.head]:
            self.head = -1
        freed = np.flatnonzero(before & ~self.seg_in_use)
        grown = np.flatnonzero(~before & self.seg_in_use)
        self.segments_compacted += freed.size
        return freed, grown

    # --- figures ---------------------------------------------------------------------
    def stats(self) -> dict:
        in_use = int(self.seg_in_use.sum())
        return {
            "obj_used": self.live_objects,
            "obj_allocated": int(self.seg_placed.sum()),
            "payload_bytes": self.live_bytes,
            "arena_used_bytes": int(self.seg_live.sum()),
            "segments_in_use": in_use,
            "segment_bytes": self.seg_bytes,
            "segments_compacted": self.segments_compacted,
            "compactable_bytes": in_use * self.seg_bytes - int(self.seg_live.sum()),
            "capacity_bytes": self.capacity,
        }

