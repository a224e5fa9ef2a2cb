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
read. Bit layout, known only to the converters :meth:`Allocator.handles`,
:meth:`Allocator.handle_of`, :meth:`Allocator.decode` and :meth:`Allocator.decode_one`::

    bit 63      0 (handles are positive int64)
    bits 62..53 pool id: unique among the pools open in this process (1..1023)
    bits 52..28 generation of the slot (1..2**25-1, bumped on free)
    bits 27..0  slot index in the handle table (up to 2**28 live objects)

How wide is wide enough. A stale handle could only alias a new object if its slot came
back with the same generation: 2**25 reuses of that one slot later. Freed slots are
reused first in, first out, and the table keeps at least ``MIN_FREE_SLOTS`` (16 384)
free, so a slot's next reuse comes at least 16 385 allocations after its free: a stale
handle stays refused for 2**25 * 16 385 = 5.5e11 allocations, 76 hours of the fastest
batch churn measured here (2 M objects/s) and weeks at the single-object rate. (The old
layout, 16-bit generations reused last in, first out, aliased after 65 535 cycles.)
Pool ids are not hashed: a registry hands each open pool an id no other open pool holds,
so another live pool's handle is always foreign; a closed pool's id is reused last.

Handles of closed pools. Ids are few (1023), so a later pool gets a closed pool's id
back (first in, first out: after 1 022 other opens). It does not get its generations
back: the registry remembers, per id, one past the highest generation any holder issued,
and the next holder starts every slot there. A closed pool's handle is then refused by
every later pool exactly as that pool's own stale handle would be: it could only be
accepted once the id's generations have gone round all 2**25 - 1 values, which takes
one pool lifetime per value (3.4e10 pool opens across the 1023 ids) or as many
generations of one slot (the 5.5e11 allocations above). The cost is nothing on any
handle check (the same equality test) and one pass over the generation table at close.

The value is not an address and says nothing about where the bytes are.
"""

from __future__ import annotations

import collections
import functools
import threading
import weakref
from typing import NamedTuple

import numba
import numpy as np

from .._checks import as_int_array
from .._compiled import JIT, Rules, at, bind
from .._errors import InvalidHandleError, InvalidSizeError, PoolFullError

__all__ = ["Allocator", "ALIGN", "CleaningPlan", "Placement"]

#: every object starts on a 16-byte boundary (device copies stay aligned)
ALIGN = 16

# the handle's fields (the docstring says why these widths: 2**28 live objects is a
# 139 GB GPU arena of 0.5 KiB objects; 25-bit generations and FIFO reuse outlive 5.5e11
# allocations; 10 bits of pool id are 1023 pools open at once)
_SLOT_BITS = 28
_GEN_BITS = 25
_ID_BITS = 10
_TAG_SHIFT = _SLOT_BITS + _GEN_BITS
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_GEN_MASK = (1 << _GEN_BITS) - 1
#: at most this many live objects per pool (the slot field's width)
MAX_SLOTS = 1 << _SLOT_BITS
#: freed slots wait behind at least this many others before reuse (see the docstring)
MIN_FREE_SLOTS = 1 << 14
#: the handle table grows by 1 / this of itself at least
_TABLE_GROWTH = 8
#: the handle table's types: a size is at most a segment, a generation 25 bits, a slot 28
_SIZE_T, _SLOT_T = np.int32, np.int32
#: a handle's generation field: one up, and back from the top to 1 (never 0)
_GEN_ONE = 1 << _SLOT_BITS
_GEN_BACK = (_GEN_MASK - 1) << _SLOT_BITS
#: the largest object a pool takes (its size is kept in 32 bits: 2 GiB - 1)
MAX_OBJECT_BYTES = (1 << 31) - 1

# --- the allocator's scalars: one int64 each in ``meta``, where both speeds read and
# write them (the Python attributes of the same names are views of these) ---------------
(_M_HEAD, _M_RING_HEAD, _M_RING_COUNT, _M_MIN_FREE, _M_NSLOTS, _M_KEY, _M_SEG_BYTES, _M_N_SEGS,
 _M_LIVE_OBJECTS, _M_LIVE_BYTES, _M_LIVE_ALIGNED, _M_SEGS_IN_USE, _M_VACATED,
 # where the arrays are (taken again whenever one is replaced), for the compiled single verbs
 # (the handle table's rows: hv and locs, side by side)
 _M_AT_FILL, _M_AT_LIVE, _M_AT_PLACED, _M_AT_IN_USE, _M_AT_RING, _M_AT_ROWS, _M_AT_SIZES,
 # what the last single verb found, beside its return value
 _M_OFF, _M_SIZE, _M_HANDLE,
 # when a free asks for a cleaning step (the pool's CLEAN_TRIGGER in 1/2**16 of the live
 # bytes, and the vacated bytes to wait for: see Pool._maybe_clean)
 _M_TRIGGER, _M_CLEAN_AFTER,
 _M_META) = range(26)
#: the free that finds dead space past the trigger returns this (see _free)
CLEAN_DUE = -2
#: the trigger's fixed point, and its ceiling (a trigger of 256x the live bytes is never reached)
TRIGGER_ONE = 1 << 16
TRIGGER_MAX = 1 << 24

_rules = Rules()


# === one object's rules: run compiled (the batch loops, and the single verbs through
# addresses) and interpreted over memoryviews (numba's JIT off) ===========================
@_rules.compiled
def _put(fill, live, placed, in_use, ring, locs, sizes, hv, meta, size, offset, opened):
    """Record one object of ``size`` placed at ``offset`` (``opened``: the segment it
    opens, or -1): a slot from the free-slot queue's head (the caller made sure one
    is there beyond the reserve), the segment's figures. Returns the slot; its handle
    goes to ``meta[_M_HANDLE]``, the offset to ``meta[_M_OFF]``."""
    rh = meta[_M_RING_HEAD]
    slot = ring[rh]
    meta[_M_RING_HEAD] = rh + 1 if rh + 1 < meta[_M_NSLOTS] else 0
    meta[_M_RING_COUNT] -= 1
    a = (size + (ALIGN - 1)) & ~(ALIGN - 1)
    sb = meta[_M_SEG_BYTES]
    seg = offset // sb
    if opened >= 0:
        in_use[seg] = True
        live[seg] = 0
        placed[seg] = 0
        meta[_M_HEAD] = seg
        meta[_M_SEGS_IN_USE] += 1
    live[seg] += a
    placed[seg] += 1
    fill[seg] = offset - seg * sb + a             # a bump placement ends the fill
    locs[slot] = offset
    sizes[slot] = size
    meta[_M_LIVE_OBJECTS] += 1
    meta[_M_LIVE_BYTES] += size
    meta[_M_LIVE_ALIGNED] += a
    meta[_M_OFF] = offset
    meta[_M_HANDLE] = hv[slot] ^ meta[_M_KEY]
    return slot


@_rules.compiled
def _bump(fill, live, placed, in_use, ring, locs, sizes, hv, meta, size):
    """:func:`_put` of one object in the head segment's room, the common case: its slot,
    or -1 (nothing changed) when the head has no room or the free-slot queue is down
    to its reserve (the long way grows the table first)."""
    head = meta[_M_HEAD]
    if head < 0 or meta[_M_RING_COUNT] <= meta[_M_MIN_FREE]:
        return -1
    f = fill[head]
    sb = meta[_M_SEG_BYTES]
    if f + ((size + (ALIGN - 1)) & ~(ALIGN - 1)) > sb:
        return -1
    return _put(fill, live, placed, in_use, ring, locs, sizes, hv, meta, size, head * sb + f, -1)


@_rules.compiled
def _locate(fill, live, placed, in_use, ring, locs, sizes, hv, meta, handle):
    """The slot of a live object's handle (its offset and size to ``meta``), or -1: a
    handle is good when its slot answers to exactly that value (pool id, generation,
    slot) and holds an object."""
    h = handle ^ meta[_M_KEY]
    slot = h & _SLOT_MASK
    if slot < meta[_M_NSLOTS] and hv[slot] == h:
        off = locs[slot]
        if off >= 0:
            meta[_M_OFF] = off
            meta[_M_SIZE] = sizes[slot]
            return slot
    return -1


@_rules.compiled
def _free(fill, live, placed, in_use, ring, locs, sizes, hv, meta, slot):
    """Free one validated slot: segment figures, its next generation, the free-slot
    queue's tail. Returns the segment it emptied; else CLEAN_DUE when dead space has
    passed the pool's cleaning trigger (more than two segments' worth and ``_M_TRIGGER``
    of the live bytes, with ``_M_CLEAN_AFTER`` bytes vacated); else -1. Its offset and
    requested size go to ``meta``.

    A segment whose last object dies is emptied, except the head: it stays open with its
    bump pointer back at 0, so a lone object allocated and freed over and over reuses
    one segment instead of opening and closing it each time."""
    off = locs[slot]
    size = sizes[slot]
    a = (size + (ALIGN - 1)) & ~(ALIGN - 1)
    seg = off // meta[_M_SEG_BYTES]
    left = live[seg] - a
    live[seg] = left
    emptied = -1
    if left == 0 and in_use[seg]:                 # its last object (sizes are > 0)
        fill[seg] = 0
        placed[seg] = 0
        if seg != meta[_M_HEAD]:
            in_use[seg] = False
            emptied = seg
            meta[_M_SEGS_IN_USE] -= 1
    locs[slot] = -1
    v = hv[slot]                                  # the next generation, never 0
    hv[slot] = v + _GEN_ONE if (v >> _SLOT_BITS) & _GEN_MASK != _GEN_MASK else v - _GEN_BACK
    n = meta[_M_RING_COUNT]
    k = meta[_M_RING_HEAD] + n
    ring[k - meta[_M_NSLOTS] if k >= meta[_M_NSLOTS] else k] = slot
    meta[_M_RING_COUNT] = n + 1
    meta[_M_LIVE_OBJECTS] -= 1
    meta[_M_LIVE_BYTES] -= size
    meta[_M_LIVE_ALIGNED] -= a
    meta[_M_VACATED] += a
    meta[_M_OFF] = off
    meta[_M_SIZE] = size
    if emptied < 0:
        sb = meta[_M_SEG_BYTES]
        dead = meta[_M_SEGS_IN_USE] * sb - meta[_M_LIVE_ALIGNED]
        if (dead > 2 * sb and dead * TRIGGER_ONE > meta[_M_LIVE_ALIGNED] * meta[_M_TRIGGER]
                and meta[_M_VACATED] >= meta[_M_CLEAN_AFTER]):
            return CLEAN_DUE
    return emptied


# --- the single verbs, compiled, called with integers only (see devpool._compiled) -------
@_rules.compiled
def _tables_at(meta_at):
    """The allocator's arrays, from the addresses its meta array (at ``meta_at``) holds."""
    meta = numba.carray(at(meta_at, numba.int64), (_M_META,))
    ns, nslots = meta[_M_N_SEGS], meta[_M_NSLOTS]
    rows = numba.carray(at(meta[_M_AT_ROWS], numba.int64), (nslots, 2))
    return (numba.carray(at(meta[_M_AT_FILL], numba.int64), (ns,)),
            numba.carray(at(meta[_M_AT_LIVE], numba.int64), (ns,)),
            numba.carray(at(meta[_M_AT_PLACED], numba.int64), (ns,)),
            numba.carray(at(meta[_M_AT_IN_USE], numba.uint8), (ns,)),
            numba.carray(at(meta[_M_AT_RING], numba.int32), (nslots,)),
            rows[:, 1],
            numba.carray(at(meta[_M_AT_SIZES], numba.int32), (nslots,)),
            rows[:, 0],
            meta)


@_rules.compiled(signature="int64(int64, int64)")
def _bump_at(meta_at, size):
    return _bump(*_tables_at(meta_at), size)


@_rules.compiled(signature="int64(int64, int64, int64, int64)")
def _put_at(meta_at, size, offset, opened):
    return _put(*_tables_at(meta_at), size, offset, opened)


@_rules.compiled(signature="int64(int64, int64)")
def _locate_at(meta_at, handle):
    return _locate(*_tables_at(meta_at), handle)


@_rules.compiled(signature="int64(int64, int64)")
def _free_at(meta_at, slot):
    return _free(*_tables_at(meta_at), slot)


class Placement(NamedTuple):
    """Where a batch would go (:meth:`Allocator.plan`); nothing is changed yet."""
    offsets: np.ndarray     # arena offset of each object
    head: int               # the head segment after the batch
    head_fill: int          # its bump pointer then
    opened: np.ndarray      # segments the batch opens (fresh or spare)


class CleaningPlan(NamedTuple):
    """Which live objects move where (:meth:`Allocator.plan_compact` / ``plan_clean``)."""
    slots: np.ndarray       # the objects, in arena order
    src: np.ndarray         # where they are
    dst: np.ndarray         # where they go (packed next-fit)
    asizes: np.ndarray      # their aligned sizes: the bytes each move copies
    victims: np.ndarray     # the segments cleaned (all emptied unless reused as dst)
    head: int               # the last packed segment: appends continue there (-1: none)
    head_fill: int          # its bump pointer
    #: the segment the packing started in at its fill (-1: a fresh one): a cleaning step's
    #: survivors continue in the last step's last segment (see Allocator.clean_head)
    start: int = -1
    #: a cleaning step's plan (plan_clean): its last segment becomes the clean head, the
    #: appends' head stays where it is; else (compaction, evacuation) the appends' head
    cleaning: bool = False


# --- pool ids: unique among open pools, generations never reused across them -----------
# re-entrant: a pool dropped unclosed gives its id back from a garbage-collection pass,
# which may run in any thread at any allocation, also inside these locked sections
_ids_lock = threading.RLock()
_free_ids = collections.deque(range(1, 1 << _ID_BITS))   # first in, first out
#: per pool id, the generation its next holder starts every slot at: one past the
#: highest its earlier holders issued, so a closed pool's handle (its id, a generation
#: it issued) is refused by every later pool with that id as if it were that pool's own
#: stale handle (see the module docstring: "Handles of closed pools")
_next_gen = [1] * (1 << _ID_BITS)


class _PoolId:
    """One allocator's lease of a pool id, and the generations it issued under it.

    Kept apart from the allocator so that a finalizer can give the id back when a pool
    is dropped unclosed (it holds this, never the allocator)."""

    __slots__ = ("id", "base", "hv")

    def __init__(self):
        with _ids_lock:
            if not _free_ids:
                raise PoolFullError(f"too many pools open at once (at most {(1 << _ID_BITS) - 1}); "
                                    f"close some first")
            self.id = _free_ids.popleft()
            self.base = _next_gen[self.id]
        self.hv = None              # the allocator's handle table, kept current

    def give_back(self) -> None:
        """Return the id, recording how far its generations went (whole-table: once,
        at close). Generations cycle through 1.._GEN_MASK, starting at ``base``."""
        hv = self.hv
        gens = None if hv is None else (hv >> _SLOT_BITS) & _GEN_MASK
        span = 0 if gens is None or gens.size == 0 else int(((gens - self.base) % _GEN_MASK).max()) + 1
        with _ids_lock:
            _next_gen[self.id] = (self.base - 1 + span) % _GEN_MASK + 1
            _free_ids.append(self.id)
        self.hv = None

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
def _decode(handles, key, tag, hv, locs, check_duplicates):
    """Handles -> slots; returns (slots, index of first bad handle or -1, error code).
    A handle is good when its slot answers to exactly that value (``hv``: pool id,
    generation, slot) and holds an object; only a bad one is taken apart, for why.
    ``check_duplicates``: the first handle that repeats an earlier one is bad too."""
    n = handles.shape[0]
    slots = np.empty(n, dtype=np.int64)
    nslots = hv.shape[0]
    for i in range(n):
        h = handles[i] ^ key
        slot = h & _SLOT_MASK
        if slot < nslots and hv[slot] == h and locs[slot] >= 0:
            slots[i] = slot
            continue
        if h <= 0:
            return slots, i, _MALFORMED
        if (h >> _TAG_SHIFT) != tag:
            return slots, i, _FOREIGN
        if slot >= nslots or (h >> _SLOT_BITS) & _GEN_MASK == 0:
            return slots, i, _MALFORMED
        return slots, i, _STALE
    if check_duplicates:
        # every slot here is live, its offset >= 0: a slot met once is marked by its
        # offset's complement (< 0), so meeting it again is the repeat. The marks are
        # undone before return (the pool's lock is held: no one else reads them). One
        # pass and no memory, where a byte of scratch per slot cost 1 byte a page (and
        # a sort, 20-60 ns a handle)
        bad = n
        for i in range(n):
            s = slots[i]
            if locs[s] < 0:
                bad = i
                break
            locs[s] = ~locs[s]
        for i in range(bad):
            s = slots[i]
            locs[s] = ~locs[s]
        if bad < n:
            return slots, bad, _DUPLICATE
    return slots, -1, _OK


@numba.njit(cache=True, nogil=True)
def _slots_in(locs, is_victim, seg_bytes):
    """The live slots whose object lies in a segment marked in ``is_victim``."""
    # a pass over every slot (10^6 at 10^6 objects): written without a branch on the
    # slot, whose outcome is a coin toss (a quarter of the segments marked), and with a
    # shift for the division where the segment size allows (the default's does): 1.5 ms
    # a pass at 10^6 where the plain loop took 5.6
    out = np.empty(locs.shape[0], dtype=np.int64)
    shift = _shift_of(seg_bytes)
    n = 0
    for slot in range(locs.shape[0]):
        off = locs[slot]
        live = off >= 0
        off = off if live else 0
        out[n] = slot
        n += live and is_victim[off >> shift if shift >= 0 else off // seg_bytes]
    return out[:n]


@numba.njit(cache=True, nogil=True)
def _shift_of(n):
    """log2(n) where ``n`` is a power of two, else -1."""
    if n <= 0 or n & (n - 1):
        return -1
    shift = 0
    while (1 << shift) < n:
        shift += 1
    return shift


@numba.njit(cache=True, nogil=True)
def _known_live_in(known, bounds, at, victims, locs, sizes, seg_live, seg_bytes):
    """The live slots of ``victims`` from a scan's record of their segments (``known``
    slots, victim ``j``'s from ``bounds[at[j]]`` to ``bounds[at[j] + 1]``), or None when
    the record no longer holds them all. A recorded slot still in its segment is one
    of its live objects; the record holds them all exactly when their aligned sizes add
    up to the segment's live bytes (every object takes at least ALIGN: any object
    placed there since, unrecorded, would make the sum fall short)."""
    n = 0
    for j in range(victims.shape[0]):
        n += bounds[at[j] + 1] - bounds[at[j]]
    out = np.empty(n, dtype=np.int64)
    n = 0
    for j in range(victims.shape[0]):
        seg = victims[j]
        total = 0
        for k in range(bounds[at[j]], bounds[at[j] + 1]):
            slot = known[k]
            if slot >= locs.shape[0]:           # (tables only grow: never, but no read past one)
                return None
            off = locs[slot]
            if seg * seg_bytes <= off < (seg + 1) * seg_bytes:    # (no division: off >= 0 too)
                out[n] = slot
                n += 1
                total += (sizes[slot] + (ALIGN - 1)) & ~(ALIGN - 1)
        if total != seg_live[seg]:
            return None
    return out[:n]


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
            seg_fill, seg_live, seg_placed, in_use, locs, size_tab):
    """Commit placed objects: segment figures and the slots' locations."""
    for k in range(opened.shape[0]):
        s = opened[k]
        in_use[s] = True
        seg_fill[s] = 0
        seg_live[s] = 0
        seg_placed[s] = 0
    total = 0
    for i in range(offsets.shape[0]):
        off = offsets[i]
        seg = off // seg_bytes
        seg_live[seg] += asizes[i]
        seg_placed[seg] += 1
        end = off - seg * seg_bytes + asizes[i]
        if end > seg_fill[seg]:
            seg_fill[seg] = end
        locs[slots[i]] = off
        size_tab[slots[i]] = sizes[i]
        total += sizes[i]
    return total


@_rules.compiled
def _forget(fill, live, placed, in_use, ring, locs, sizes, hv, meta, slots, offsets, asz, emptied):
    """:func:`_free` of each validated slot; their offsets and aligned sizes to
    ``offsets`` / ``asz``, the segments emptied to ``emptied``; returns how many."""
    n_empty = 0
    for i in range(slots.shape[0]):
        e = _free(fill, live, placed, in_use, ring, locs, sizes, hv, meta, slots[i])
        offsets[i] = meta[_M_OFF]
        asz[i] = (meta[_M_SIZE] + (ALIGN - 1)) & ~(ALIGN - 1)
        if e >= 0:
            emptied[n_empty] = e
            n_empty += 1
    return n_empty


def _least(segs: np.ndarray, key: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` of ``segs`` with the smallest ``key`` (all distinct), in that order."""
    if segs.size > k > 0:
        part = np.argpartition(key, k - 1)[:k]
        segs, key = segs[part], key[part]
    return segs[np.argsort(key)]


def _scalar(index: int, doc: str) -> property:
    """An attribute that is a view of ``meta[index]`` (read and written by both speeds)."""
    def get(self):
        return self._mm[index]

    def set_(self, value):
        self._mm[index] = value
    return property(get, set_, doc=doc)


class Allocator:
    """Segment bookkeeping and the handle table; knows offsets, never memory kinds.

    Not thread-safe by itself: the pool serialises calls. Every operation has a batch
    form (numba, one call per batch) and a single-object form: one compiled call of
    the same rule, with integers only (see :mod:`devpool._compiled`); both keep the
    same figures in ``meta``, which the model tests compare.
    """

    head = _scalar(_M_HEAD, "the open segment appends go to (-1: none)")
    _ring_head = _scalar(_M_RING_HEAD, "the free-slot queue's head")
    _ring_count = _scalar(_M_RING_COUNT, "free slots queued")
    _min_free = _scalar(_M_MIN_FREE, "free slots always kept queued (see MIN_FREE_SLOTS)")
    _nslots = _scalar(_M_NSLOTS, "slots in the handle table")
    live_objects = _scalar(_M_LIVE_OBJECTS, "objects allocated and not freed")
    live_bytes = _scalar(_M_LIVE_BYTES, "requested bytes of live objects (payload)")
    live_aligned = _scalar(_M_LIVE_ALIGNED, "arena bytes live objects occupy (the sum of seg_live)")
    segs_in_use = _scalar(_M_SEGS_IN_USE, "seg_in_use.sum(), kept as objects come and go")
    vacated_bytes = _scalar(
        _M_VACATED, "arena bytes objects have left (freed, migrated or cleaned away) since the pool opened; "
                    "only grows. Dead bytes rise and fall (segments empty, cleaning gives them back): a wait "
                    "for 'more bytes died' must count here, not in dead_bytes")

    def __init__(self, capacity_bytes: int, segment_bytes: int, max_object_bytes: int,
                 handle_key: int = 0):
        if segment_bytes <= 0 or segment_bytes % 4096:
            raise InvalidSizeError(f"segment_bytes must be a positive multiple of 4096, got {segment_bytes}")
        if max_object_bytes <= 0 or max_object_bytes > min(segment_bytes, MAX_OBJECT_BYTES):
            raise InvalidSizeError(f"max_object_bytes must be in 1..segment_bytes ({segment_bytes}) and at "
                                   f"most {MAX_OBJECT_BYTES}, got {max_object_bytes}")
        if capacity_bytes < segment_bytes:
            raise InvalidSizeError(
                f"capacity_bytes ({capacity_bytes}) is smaller than one segment ({segment_bytes})")
        self.meta = np.zeros(_M_META, np.int64)
        self._mm = memoryview(self.meta)
        self.seg_bytes = int(segment_bytes)
        self.meta[_M_SEG_BYTES] = self.seg_bytes
        self.max_object = int(max_object_bytes)
        self.n_segs = int(capacity_bytes) // self.seg_bytes
        self.capacity = self.n_segs * self.seg_bytes
        # per segment: bump pointer, live (aligned) bytes, objects ever placed; no
        # object count: every object is at least ALIGN bytes, so a segment is empty
        # exactly when its live bytes are 0 (one figure less on every alloc and free)
        self.seg_fill = np.zeros(self.n_segs, np.int64)
        self.seg_live = np.zeros(self.n_segs, np.int64)
        self.seg_placed = np.zeros(self.n_segs, np.int64)
        self.seg_in_use = np.zeros(self.n_segs, np.bool_)
        self.seg_warm = np.zeros(self.n_segs, np.bool_)   # free but still held by storage
        self._n_spare = 0                                   # seg_warm.sum(), kept
        # memoryviews of the same arrays: indexing one gives a Python int in half the
        # time a numpy scalar takes (measured 16 vs 32-68 ns)
        self._m_fill = memoryview(self.seg_fill)
        self.meta[[_M_N_SEGS, _M_AT_FILL, _M_AT_LIVE, _M_AT_PLACED, _M_AT_IN_USE]] = (
            self.n_segs, self.seg_fill.ctypes.data, self.seg_live.ctypes.data, self.seg_placed.ctypes.data,
            self.seg_in_use.ctypes.data)
        self.head = -1
        #: the segment a cleaning step's survivors continue in (the last step's last
        #: segment; -1: none). Kept apart from the appends' head: each step used to move
        #: that head to its last segment, leaving the old head's unused tail dead (half a
        #: segment a step on average), and those tails, placed since the cleaning record
        #: was made, were the emptiest segments the next steps wanted: a pass over the
        #: handle table every ~5 steps at 10^6 objects. Survivors are also the colder
        #: objects, and apart from new stores they die apart from them (LFS, RAMCloud)
        self.clean_head = -1
        self._lease = _PoolId()
        self.pool_id = self._lease.id
        #: XORed into every handle (a hostile policy's scrambling; 0: none)
        self.handle_key = int(handle_key)
        self.meta[_M_KEY] = self.handle_key
        # a pool dropped without close() gives its id back when collected: ids are few
        # (1023), and a process that leaked them could open no pool at all
        self._id_back = weakref.finalize(self, self._lease.give_back)
        self._id_back.atexit = False
        self._tag_bits = self.pool_id << _TAG_SHIFT
        # the handle table, 24 bytes a slot (were 33): per slot the arena offset (-1: free)
        # and (``hv``) the unscrambled handle it answers to, this pool's id, the slot's
        # generation and the slot (one comparison checks all three), in 64 bits each,
        # side by side in one row (``_rows``: a handle check reads one cache line, not
        # two, which at 10^6 objects are two misses); the requested size (at most 2 GiB
        # - 1) and the free-slot queue's entry (``_ring``: taken at _ring_head, freed
        # slots join at the tail) in 32.
        # Every array meta's addresses lead to: the segments' (never replaced), the
        # handle table's (replaced as it grows: _set_table keeps this current)
        self._alive = [(self.meta, self.seg_fill, self.seg_live, self.seg_placed, self.seg_in_use), ()]
        if JIT:
            # the single verbs, compiled, bound to the meta array's address (which never
            # changes) as a method's first argument: a call costs what a direct one
            # does (functools.partial added ~60 ns)
            self._bump1, self._put1, self._locate1, self._free1 = (
                bind(f, self.meta, self._alive) for f in (_bump_at, _put_at, _locate_at, _free_at))
        self._set_table(np.zeros((0, 2), np.int64), np.zeros(0, _SIZE_T), np.zeros(0, _SLOT_T))
        self._min_free = min(MIN_FREE_SLOTS, max(1, self.capacity // ALIGN))
        # cleaning figures (zsmalloc explains compaction through its stats; so do we)
        self.clean_steps = 0
        self.cleaned_segments = 0      # segments emptied by cleaning (steps and compact)
        self.cleaned_bytes_moved = 0   # live bytes cleaning copied
        self.segments_compacted = 0
        self.victim_scans = 0          # passes over the handle table to find victims' objects
        self._forget_known()

    def _set_table(self, rows, sizes, ring) -> None:
        """Install a handle table (``rows``: hv and locs, an (n, 2) int64 array): the arrays
        and their addresses in ``meta`` change together. The compiled single verbs follow
        those addresses, so nothing that can fail (allocate) runs between dropping the old
        arrays and installing the new addresses: a MemoryError leaves the old table whole,
        never a freed one named."""
        hv, locs = rows[:, 0], rows[:, 1]
        addrs = (ring.ctypes.data, rows.ctypes.data, sizes.ctypes.data, rows.shape[0])
        alive = (ring, rows, sizes)
        if not JIT:        # the same rules bound to memoryviews (they keep their arrays alive)
            views = [memoryview(a) for a in (self.seg_fill, self.seg_live, self.seg_placed, self.seg_in_use,
                                             ring, locs, sizes, hv)] + [self._mm]
            single = tuple(functools.partial(f, *views) for f in (_bump, _put, _locate, _free))
        # --- from here on nothing allocates
        self._rows, self.locs, self.sizes, self.hv, self._ring = rows, locs, sizes, hv, ring
        mm = self._mm
        mm[_M_AT_RING], mm[_M_AT_ROWS], mm[_M_AT_SIZES], mm[_M_NSLOTS] = addrs
        self._alive[1] = alive
        self._lease.hv = hv
        if not JIT:
            self._bump1, self._put1, self._locate1, self._free1 = single

    def close(self) -> None:
        """Give the pool id back (reused last); idempotent."""
        if self.pool_id:
            self._id_back()              # gives the id back, once
            self.pool_id = 0

    # --- handle encoding: the only place that knows the bit layout -------------------
    def handles(self, slots: np.ndarray) -> np.ndarray:
        """The handles of these slots."""
        return self.hv[slots] ^ np.int64(self.handle_key)

    def handle_of(self, slot: int) -> int:
        """The handle of one slot."""
        return int(self.hv[slot]) ^ self.handle_key

    def decode(self, handles: np.ndarray, check_duplicates: bool = False) -> np.ndarray:
        """Validate handles and return their slots; raise naming the first bad one."""
        slots, bad, code = _decode(handles, np.int64(self.handle_key), np.int64(self.pool_id), self.hv,
                                   self.locs, check_duplicates)
        if bad >= 0:
            raise InvalidHandleError(
                f"handle {int(handles[bad])} (batch index {bad}) {_REASONS[code]}")
        return slots

    def decode_one(self, handle) -> tuple[int, int, int]:
        """Validate one handle (an int or numpy integer) and return (slot, arena offset,
        size) of its object: one compiled call of the rule ``_locate`` (the offset comes
        with the check that the slot is live: a single read needs no second lookup);
        InvalidHandleError naming why otherwise."""
        if type(handle) is not int:
            # numpy integers and int subclasses (an IntEnum) are integers, as in a batch;
            # bools are not (True is an int subclass, np.bool_ is no np.integer)
            if isinstance(handle, bool) or not isinstance(handle, (int, np.integer)):
                raise InvalidHandleError(f"handle {handle!r} is not an integer")
            handle = int(handle)
        try:
            slot = self._locate1(handle)
        except OverflowError:                   # not an int64: no handle of ours
            slot = -1
        if slot < 0:
            raise InvalidHandleError(f"handle {handle} {_REASONS[self._why_bad(handle ^ self.handle_key)]}")
        m = self._mm
        return slot, m[_M_OFF], m[_M_SIZE]

    def _why_bad(self, h: int) -> int:
        """Why the unscrambled handle ``h`` is refused (the slow path, for the message)."""
        if not 0 < h < (1 << 63):
            return _MALFORMED
        if h >> _TAG_SHIFT != self.pool_id:
            return _FOREIGN
        if h & _SLOT_MASK >= self.hv.shape[0] or (h >> _SLOT_BITS) & _GEN_MASK == 0:
            return _MALFORMED
        return _STALE

    # --- queries ---------------------------------------------------------------------
    def location(self, slots: np.ndarray):
        """(arena offsets, requested sizes) of live slots."""
        return self.locs[slots], self.sizes[slots].astype(np.int64)

    def check_sizes(self, sizes) -> np.ndarray:
        """Sizes as int64, or InvalidSizeError naming the first bad one."""
        arr = as_int_array(sizes, "sizes", error=InvalidSizeError)
        bad = np.flatnonzero((arr <= 0) | (arr > self.max_object))
        if bad.size:
            i = int(bad[0])
            raise InvalidSizeError(
                f"size {int(arr[i])} at batch index {i} is outside 1..{self.max_object}")
        return arr

    def check_size(self, nbytes) -> int:
        """One size as an int in 1..max_object, or InvalidSizeError."""
        if type(nbytes) is int and 0 < nbytes <= self.max_object:
            return nbytes
        if isinstance(nbytes, (bool, np.bool_)) or not isinstance(nbytes, (int, np.integer)):
            raise InvalidSizeError(f"nbytes must be an integer, got {type(nbytes).__name__}")
        n = int(nbytes)
        if not 0 < n <= self.max_object:
            raise InvalidSizeError(f"size {n} is outside 1..{self.max_object}")
        return n

    # --- allocation ------------------------------------------------------------------
    def plan(self, sizes: np.ndarray) -> Placement | None:
        """Where a batch would go, changing nothing; None when it does not fit."""
        offsets, head, fill, opened = _place(aligned(sizes), self.head,
                                             self.seg_fill[self.head] if self.head >= 0 else 0,
                                             self.seg_in_use, self.seg_warm, self.seg_bytes)
        if head == -2:
            return None
        return Placement(offsets, head, fill, opened)

    def commit_alloc(self, sizes: np.ndarray, plan: Placement) -> np.ndarray:
        """Record a planned batch (the point of no return); returns its slots."""
        offsets, head, fill, opened = plan
        slots = self._take_slots(sizes.shape[0])   # may grow the table: before any mutation
        a = aligned(sizes)
        self.live_bytes += _record(slots, sizes, a, offsets, opened, self.seg_bytes,
                                   self.seg_fill, self.seg_live, self.seg_placed,
                                   self.seg_in_use, self.locs, self.sizes)
        self.live_objects += sizes.shape[0]
        self.live_aligned += int(a.sum())
        self.segs_in_use += opened.size
        self.head = head
        return slots

    def place_one(self, size: int):
        """Where one object would go: ``(offset, segment it opens or -1)``, or None when
        no segment is free. Changes nothing; the bump pointer in the head segment is the
        common case, a fresh segment is found by the batch planner."""
        a = (size + (ALIGN - 1)) & ~(ALIGN - 1)
        head = self._mm[_M_HEAD]
        if head >= 0:
            fill = self._m_fill[head]
            if fill + a <= self.seg_bytes:
                return head * self.seg_bytes + fill, -1
        plan = self.plan(np.array([size], np.int64))
        if plan is None:
            return None
        return int(plan.offsets[0]), int(plan.opened[0])

    def commit_one(self, size: int, offset: int, opened: int) -> int:
        """Record one placed object (the point of no return); returns its slot.
        The rule ``_record`` keeps for a batch's figures, on one object."""
        if self._ring_count <= self._min_free:
            self._grow_table(1)                      # before any mutation
        return self._put1(size, offset, opened)

    def ensure_slots(self, n: int) -> None:
        """Room in the handle table for ``n`` more objects, or PoolFullError (past
        ``MAX_SLOTS``). Changes no object: the pool asks before it commits segments for
        them, so a batch refused for want of slots leaves storage as it was."""
        if self._ring_count - n < self._min_free:
            self._grow_table(n)

    def _take_slots(self, n: int) -> np.ndarray:
        self.ensure_slots(n)
        cap = self._ring.shape[0]
        idx = (self._ring_head + np.arange(n, dtype=np.int64)) % cap
        slots = self._ring[idx].astype(np.int64)
        self._ring_head = (self._ring_head + n) % cap
        self._ring_count -= n
        return slots

    def _grow_table(self, n: int) -> None:
        """Room for ``n`` more slots with ``_min_free`` still queued; new slots join the
        queue behind the free ones (oldest freed first)."""
        old = self.locs.shape[0]
        need = old - self._ring_count + n + self._min_free       # live + wanted + reserve
        # an eighth more (a doubling left up to half the table unused: 29 bytes a page at
        # 10^6 pages, 25 of them needed); ~8 copies of a slot per object over the growth
        new = max(old + old // _TABLE_GROWTH, need, 1024)
        if new > MAX_SLOTS:
            new = MAX_SLOTS
            if need - self._min_free > new:
                raise PoolFullError(f"a pool holds at most {MAX_SLOTS} objects")
        if new == old:
            return
        queued = self._ring[(self._ring_head + np.arange(self._ring_count)) % max(old, 1)]
        rows = np.empty((new, 2), np.int64)
        rows[:old] = self._rows
        rows[old:, 1] = -1
        # new slots start at the id's generation floor (not 1): handles of closed pools
        # that held this id name generations below it
        rows[old:, 0] = np.int64(self._tag_bits | self._lease.base << _SLOT_BITS) | np.arange(old, new, dtype=np.int64)
        sizes = np.concatenate([self.sizes, np.zeros(new - old, _SIZE_T)])
        ring = np.empty(new, _SLOT_T)
        ring[:queued.size] = queued
        ring[queued.size:queued.size + new - old] = np.arange(old, new, dtype=_SLOT_T)
        count = queued.size + new - old
        self._set_table(rows, sizes, ring)
        self._ring_head = 0
        self._ring_count = count

    # --- segments and storage: in use, spare, or given back ----------------------------
    # A freed segment becomes a *spare*: still held by storage (counted in
    # pool_total_size), reused first, because giving a segment back and faulting it in
    # again on the next batch made host copy-in 5x slower under churn. Past a budget the
    # highest spares go back. The allocator decides; the pool tells storage.
    def cold(self, segs: np.ndarray) -> np.ndarray:
        """Of ``segs`` about to be used, those storage must commit (the others are spares)."""
        return segs[~self.seg_warm[segs]]

    def held(self, segs: np.ndarray) -> None:
        """``segs`` are committed and in use now: spares among them are spares no longer."""
        if segs.size:
            segs = np.unique(segs)
            self._n_spare -= int(self.seg_warm[segs].sum())
            self.seg_warm[segs] = False

    def retire(self, segs: np.ndarray, budget: int) -> np.ndarray:
        """Freed ``segs`` become spares; returns the spares past ``budget`` (the highest:
        the arena's top empties) that storage must take back, cold from now on. Costs
        what ``segs`` are, and a pass over the segments only when spares are given back."""
        if segs.size:
            segs = np.unique(segs)
            self._n_spare += int(segs.size - self.seg_warm[segs].sum())
            self.seg_warm[segs] = True
        if self._n_spare <= budget:
            return np.zeros(0, np.int64)
        give = np.flatnonzero(self.seg_warm)[max(budget, 0):]
        self.seg_warm[give] = False
        self._n_spare -= give.size
        return give

    @property
    def spare_segments(self) -> int:
        """Segments freed but still held by storage (kept count of: no pass)."""
        return self._n_spare

    # --- migration: objects move, handles stay ----------------------------------------
    def segments_of(self, slots: np.ndarray) -> np.ndarray:
        """The segments holding these live slots, each once, in the order first named."""
        segs = self.locs[slots] // self.seg_bytes
        _, first = np.unique(segs, return_index=True)
        return segs[np.sort(first)]

    def plan_move(self, slots: np.ndarray) -> Placement | None:
        """Where these live objects would go if moved now without the arena growing:
        the head segment's room, then spare segments (storage holds both already);
        never a segment storage would have to commit. None when they do not fit."""
        a = aligned(self.sizes[slots])
        offsets, head, fill, opened = _place(a, self.head, self.seg_fill[self.head] if self.head >= 0 else 0,
                                             self.seg_in_use | ~self.seg_warm, self.seg_warm, self.seg_bytes)
        if head == -2:
            return None
        return Placement(offsets, head, fill, opened)

    def commit_move(self, slots: np.ndarray, plan: Placement):
        """The objects now live at ``plan.offsets`` (their bytes copied there already):
        re-point the slots (same slots, so every handle stays valid), count them in
        their new segments and out of their old ones. Returns (old offsets, aligned
        sizes, segments emptied), as :meth:`free` does."""
        sizes = self.sizes[slots].astype(np.int64)
        a = aligned(sizes)
        old = self.locs[slots].copy()
        _record(slots, sizes, a, plan.offsets, plan.opened, self.seg_bytes, self.seg_fill, self.seg_live,
                self.seg_placed, self.seg_in_use, self.locs, self.sizes)
        self.head = plan.head
        src = old // self.seg_bytes
        np.subtract.at(self.seg_live, src, a)
        src = np.unique(src)
        emptied = src[(self.seg_live[src] == 0) & self.seg_in_use[src] & (src != self.head)]
        self.seg_in_use[emptied] = False
        self.seg_fill[emptied] = 0
        self.seg_placed[emptied] = 0
        self.segs_in_use += plan.opened.size - emptied.size
        self.vacated_bytes += int(a.sum())
        return old, a, emptied

    def plan_evacuation(self, victims: np.ndarray):
        """Plan moving every live object out of ``victims`` (in-use segments) into free
        segments (spares first), packed next-fit in arena order: a :class:`CleaningPlan`
        after which the victims are empty, with at most as many segments in use as
        before (each victim's objects fit one segment, so next-fit over them opens at
        most one per victim). None when the free segments do not hold them."""
        slots = self._live_in(victims)
        a = aligned(self.sizes[slots])
        dst, head, fill, _ = _place(a, -1, 0, self.seg_in_use, self.seg_warm, self.seg_bytes)
        if head == -2:
            return None
        return CleaningPlan(slots, self.locs[slots], dst, a, victims, int(head), int(fill))

    def sample_live(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Up to ``count`` distinct live slots chosen at random (all of them when fewer
        live). Draws slot numbers and keeps the live ones: the cost follows ``count``
        and the table's share of free slots (at most ``MIN_FREE_SLOTS`` + half the
        table), never the number of live objects."""
        live, nslots = self.live_objects, self.locs.shape[0]
        if count <= 0 or live == 0:
            return np.zeros(0, np.int64)
        if count >= live:
            return np.flatnonzero(self.locs >= 0)
        for _ in range(8):                    # one round finds them all with p > 0.99
            draws = rng.integers(0, nslots, int(min(4 * nslots, count * nslots / live * 3 + 32)))
            picked = list(dict.fromkeys(draws[self.locs[draws] >= 0].tolist()))   # distinct, in order
            if len(picked) >= count:
                return np.array(picked[:count], np.int64)
        return rng.permutation(np.flatnonzero(self.locs >= 0))[:count]     # (never seen: a bound)

    # --- free ------------------------------------------------------------------------
    def free(self, slots: np.ndarray):
        """Forget validated slots; returns (offsets, aligned sizes, emptied segments)."""
        n = slots.shape[0]
        offsets, asz, emptied = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
        k = _forget(self.seg_fill, self.seg_live, self.seg_placed, self.seg_in_use, self._ring, self.locs,
                    self.sizes, self.hv, self.meta, slots, offsets, asz, emptied)
        return offsets, asz, emptied[:k]

    def free_one(self, slot: int):
        """Forget one slot validated by :meth:`decode_one`; returns (aligned size, emptied
        segment, or -1, or CLEAN_DUE): one compiled call of the rule ``_free``."""
        emptied = self._free1(slot)
        return (self._mm[_M_SIZE] + (ALIGN - 1)) & ~(ALIGN - 1), emptied

    # --- cleaning --------------------------------------------------------------------
    @property
    def dead_bytes(self) -> int:
        """Bytes of in-use segments no live object occupies (freed objects, tails)."""
        return self.segs_in_use * self.seg_bytes - self.live_aligned

    def plan_compact(self, max_utilisation: float = 1.0, repack: bool = False, full_too: bool = False):
        """Plan cleaning of every in-use segment whose live share is below the bar: a
        :class:`CleaningPlan`, or None when cleaning would free nothing. Live objects keep
        their arena order, packed next-fit into the lowest-numbered candidate segments
        (free ones and the victims). ``repack`` plans it even when it frees no segment:
        the free space then gathers behind the last object (a limit needs that room).

        ``full_too`` (with ``max_utilisation`` 1.0: :meth:`Pool.compact`'s default) takes
        every segment in use, full ones too: next-fit keeps arena order, so leaving out a
        segment that happened to fill exactly changes the sequence the others pack in,
        and a second call could pack them tighter (found by the single-vs-batch machine:
        5 248 / 6 640 / 8 192 / 16 live bytes, then 3 segments). With every segment in, a
        second plan sees the same objects in the same order and places each where it
        lies: nothing to do, a true fixpoint. The pressure paths leave full segments out:
        a pool at capacity full of as-is pages (64 fill a segment exactly) would be
        planned whole on every refused allocation."""
        used = np.flatnonzero(self.seg_in_use)
        if not (full_too and max_utilisation >= 1.0):
            used = used[self.seg_live[used] < max_utilisation * self.seg_bytes]
        return self._plan_victims(used, repack)

    def plan_clean(self, want_bytes: int, max_victims: int):
        """Plan one bounded cleaning step (as RAMCloud's cleaner, greedy): the fewest of
        the least-utilised segments (never an open head) whose dead space adds up to
        ``want_bytes`` plus a segment (packing them then frees at least that much), at
        most ``max_victims`` of them; among the segments the last step's pass recorded
        where those free at least ``KNOWN_YIELD`` of it (:meth:`_live_in`). None when
        even those would free nothing."""
        used = self._cleanable()
        if used.size < 2:
            return None
        # least utilised first, ties by index (a stable sort's order); only the first
        # max_victims can be taken, so they are partitioned out, not the whole pool
        # sorted: at 10^6 objects (6 300 segments) a sort and a search of the record for
        # every segment took 0.7 ms a step, a step's plan without its pass ~1.5
        key = self.seg_live[used] * self.n_segs + used
        best = self._greedy(_least(used, key, max_victims), want_bytes, max_victims)
        start = self._clean_head_now()
        if self._known_segs.size:
            # victims whose objects the last step's pass recorded (_live_in), where they free
            # nearly as much: under churn spread evenly, segments differ by a few objects,
            # and the emptiest now were often just past the record's edge when it was made,
            # or the segment a step left behind as the head moved on, its tail empty
            # (passes skip the head: its objects are still arriving)
            rec = self._known_as_recorded(used)
            known = self._greedy(_least(used[rec], key[rec], max_victims), want_bytes, max_victims)
            # (both the step's yield and the yield a victim: fewer recorded segments free
            # less, fuller ones cost more moved bytes for what they free)
            dk, db = self._dead_in(known), self._dead_in(best)
            if known.size and dk >= self.KNOWN_YIELD * db and dk * best.size >= self.KNOWN_YIELD * db * known.size:
                plan = self._plan_victims(known, record=True, start=start)
                if plan is not None:
                    return plan
        return self._plan_victims(best, record=True, start=start)

    #: a cleaning step takes its victims from the recorded segments (:meth:`_live_in`) while
    #: they free at least this share of what the emptiest segments would, in all and a victim
    KNOWN_YIELD = 0.75

    def _known_as_recorded(self, segs: np.ndarray) -> np.ndarray:
        """Which of ``segs`` the record holds as they were: recorded, and no object placed
        since (a segment emptied and opened again counts its placements from 0)."""
        at, held = self._in_record(segs)
        return held & (self.seg_placed[segs] == self._known_placed[at])

    def _in_record(self, segs: np.ndarray):
        """``(at, held)``: where each of ``segs`` would lie in the record's sorted segments,
        and whether it is there (the record not empty)."""
        known = self._known_segs
        at = np.minimum(np.searchsorted(known, segs), known.size - 1)
        return at, known[at] == segs

    def _cleanable(self) -> np.ndarray:
        """The segments in use but the open heads (a cleaning step's candidates: the
        heads' objects are still arriving)."""
        used = np.flatnonzero(self.seg_in_use)
        return used[(used != self.head) & (used != self._clean_head_now())]

    def _clean_head_now(self) -> int:
        """:attr:`clean_head` if survivors may continue there now (in use, and not the
        appends' head: a segment emptied since is given back, and may be opened again as
        anything); else -1. Appending at any in-use segment's fill is safe: no object
        lies past it."""
        c = self.clean_head
        return c if 0 <= c < self.n_segs and c != self.head and self.seg_in_use[c] else -1

    def _greedy(self, order: np.ndarray, want_bytes: int, max_victims: int) -> np.ndarray:
        """The first segments of ``order`` (least utilised first) whose dead space adds up
        to ``want_bytes`` plus a segment, at most ``max_victims``."""
        order = order[:max_victims]
        room = np.cumsum(self.seg_bytes - self.seg_live[order])
        return order[:min(int(np.searchsorted(room, max(want_bytes, self.seg_bytes) + self.seg_bytes)) + 1,
                          order.size)]

    def _dead_in(self, segs: np.ndarray) -> int:
        return int(segs.size * self.seg_bytes - self.seg_live[segs].sum())

    #: a pass over the handle table for victims' objects also records those of this many
    #: of the least-utilised segments at least (and a quarter of those in use): the next
    #: cleaning steps find theirs there
    KNOWN_SEGMENTS = 1024

    def _live_in(self, victims: np.ndarray, record: bool = False) -> np.ndarray:
        """The live slots in segments ``victims``, in arena order.

        Only the handle table knows where each object lies, so finding a segment's
        objects is a pass over all of it (for a cleaning step's ~10 000 objects, 10^6
        slots at 10^6 stored pages). Every cleaning step made one, so a step cost more the
        bigger the pool: at 10^6 stored pages churned in batches, the passes were 5.8 of a
        step's ~11 ms (benchmarks/bench_growth_paired.py --steady). So a cleaning step's
        pass (``record``) also records the objects of the least-utilised quarter of the
        segments (at least ``KNOWN_SEGMENTS``): the next steps take their victims there
        (:meth:`plan_clean`) and their objects from the record, checked against the
        segments' live bytes (:func:`_known_live_in`: exact, never trusted). Measured
        there: 8 - 9 passes in 40 steps (planning 3 ms a step, 5.8 before); with the clean
        head (:attr:`clean_head`), 3 in 91 and 21 in 500, and the pass's slot loop 1.5 ms
        (:func:`_slots_in`). The record costs ~1 byte a stored object (int32 slots); a
        pass for anyone else (``compact``) leaves it as it is, so a cleaning step's choice
        depends on the steps before it alone."""
        # each segment once: the record answers per victim, so a segment named twice would
        # give its objects twice (a pass marks segments: once), and a plan moving an object
        # twice counts it twice in its destination's live bytes
        victims = np.unique(np.asarray(victims, np.int64))
        if self._known_segs.size:
            at, held = self._in_record(victims)
            if held.all():
                slots = _known_live_in(self._known, self._known_bounds, at, victims, self.locs, self.sizes,
                                       self.seg_live, self.seg_bytes)
                if slots is not None:
                    return slots[np.argsort(self.locs[slots])]       # (offsets: distinct, see _pass)
        self.victim_scans += 1
        if not record:          # (compact's, evacuation's: the record stays the cleaning steps')
            return self._pass(victims)
        return self._scan_live_in(victims)

    def _pass(self, segs: np.ndarray) -> np.ndarray:
        """The live slots in segments ``segs``, in arena order (so by segment): one
        compiled pass over the whole handle table."""
        marked = np.zeros(self.n_segs, np.bool_)
        marked[segs] = True
        slots = _slots_in(self.locs, marked, self.seg_bytes)
        # live objects' offsets are distinct, so any sort gives the one order: numpy's
        # stable one (timsort for int64) took 19.6 ms for the ~250 000 objects a cleaning
        # step's pass records at 10^6, its default 4.2
        return slots[np.argsort(self.locs[slots])]

    def _scan_live_in(self, victims: np.ndarray) -> np.ndarray:
        """:meth:`_live_in` by a pass over the handle table, recording the least-utilised
        segments' objects beside the victims' for the next steps."""
        used = self._cleanable()
        more = max(self.KNOWN_SEGMENTS, used.size // 4)
        if more < used.size:
            used = used[np.argpartition(self.seg_live[used], more)[:more]]
        known = np.union1d(victims, used)
        slots = self._pass(known)
        seg = self.locs[slots] // self.seg_bytes
        is_victim = np.zeros(self.n_segs, np.bool_)
        is_victim[victims] = True
        mine = slots[is_victim[seg]]              # (np.isin: 2 ms for the ~250 000 at 10^6)
        # the record's arrays are made first and installed together, nothing allocating in
        # between: a MemoryError (or Ctrl-C) half way would leave new segments beside old
        # bounds, which _known_live_in reads without a bounds check
        record = (slots.astype(np.int32), known, self.seg_placed[known],
                  np.searchsorted(seg, np.append(known, self.n_segs)).astype(np.int64))
        self._known, self._known_segs, self._known_placed, self._known_bounds = record
        return mine

    def _forget_known(self) -> None:
        """Drop the record of segments' objects (:meth:`_live_in`)."""
        self._known = np.zeros(0, np.int32)
        self._known_segs = self._known_placed = np.zeros(0, np.int64)
        self._known_bounds = np.zeros(1, np.int64)

    def _plan_victims(self, victims: np.ndarray, repack: bool = False, record: bool = False, start: int = -1):
        """Plan packing the live objects of ``victims`` next-fit in arena order, from
        segment ``start``'s fill (-1: none; a cleaning step's, ``record``: the clean head,
        never a victim) into free segments and the victims themselves; None when that
        would free nothing."""
        if victims.size == 0:
            return None
        is_victim = np.zeros(self.n_segs, np.bool_)
        is_victim[victims] = True
        slots = self._live_in(victims, record)
        a = aligned(self.sizes[slots])
        # destinations: free segments and the victims themselves (storage.move reads
        # every source before writing), lowest index first so the arena's top empties
        # (a device arena shrinks to its highest segment in use)
        blocked = self.seg_in_use & ~is_victim
        no_warmth = np.zeros(self.n_segs, np.bool_)
        dst, head, fill, opened = _place(a, start, self.seg_fill[start] if start >= 0 else 0, blocked, no_warmth,
                                         self.seg_bytes)
        assert head != -2, "next-fit in arena order never needs more segments than before"
        if not repack and opened.size >= victims.size and self._top_after(is_victim, opened) >= self._top():
            return None   # nothing would be freed, nor would the arena's top come down
        return CleaningPlan(slots, self.locs[slots], dst, a, victims, int(head), int(fill), start, record)

    def _top(self) -> int:
        """The highest segment in use (-1: none): a device arena shrinks to it."""
        used = np.flatnonzero(self.seg_in_use)
        return int(used[-1]) if used.size else -1

    def _top_after(self, is_victim: np.ndarray, opened: np.ndarray) -> int:
        """:meth:`_top` once the victims are emptied into ``opened``."""
        kept = np.flatnonzero(self.seg_in_use & ~is_victim)
        return max(int(kept[-1]) if kept.size else -1, int(opened.max()) if opened.size else -1)

    def commit_compact(self, plan: CleaningPlan) -> tuple[np.ndarray, np.ndarray]:
        """Re-point moved slots and rebuild segment figures; returns (freed, newly used)."""
        slots, dst, a, victims, head = plan.slots, plan.dst, plan.asizes, plan.victims, plan.head
        before = self.seg_in_use.copy()
        self.seg_in_use[victims] = False
        for arr in (self.seg_fill, self.seg_live, self.seg_placed):
            arr[victims] = 0
        opened = np.unique(dst // self.seg_bytes)
        opened = opened[opened != plan.start]        # (continued at its fill: its figures stand)
        _record(slots, self.sizes[slots].astype(np.int64), a, dst, opened, self.seg_bytes, self.seg_fill,
                self.seg_live, self.seg_placed, self.seg_in_use, self.locs, self.sizes)
        if plan.cleaning:
            # the next step's survivors continue in the last packed segment; appends keep
            # their head (never a victim of a step)
            self.clean_head = head
        elif head >= 0:
            # a compaction's: continue appending in the last packed segment; an old head
            # that was not cleaned keeps its unused tail until a later clean
            self.head = head
        elif self.head >= 0 and not self.seg_in_use[self.head]:
            self.head = -1
        freed = np.flatnonzero(before & ~self.seg_in_use)
        grown = np.flatnonzero(~before & self.seg_in_use)
        self.segments_compacted += freed.size
        self.cleaned_segments += freed.size
        self.cleaned_bytes_moved += int(a.sum())
        self.vacated_bytes += int(a.sum())
        self.segs_in_use = int(self.seg_in_use.sum())
        return freed, grown

    # --- figures ---------------------------------------------------------------------
    @property
    def gens(self) -> np.ndarray:
        """Each slot's generation (a copy: the table keeps them inside ``hv``)."""
        return (self.hv >> _SLOT_BITS) & _GEN_MASK

    @property
    def table_bytes(self) -> int:
        """Host bytes the handle table holds (24 a slot; slots: the most objects ever
        live at once, plus ``MIN_FREE_SLOTS``, and at most an eighth more)."""
        return self.locs.nbytes + self.sizes.nbytes + self.hv.nbytes + self._ring.nbytes

    @property
    def record_bytes(self) -> int:
        """Host bytes the cleaning steps' record of segments' objects holds (:meth:`_live_in`)."""
        return sum(int(a.nbytes) for a in (self._known, self._known_segs, self._known_placed, self._known_bounds))

    def stats(self) -> dict:
        in_use = self.segs_in_use
        return {
            "obj_used": self.live_objects,
            "obj_allocated": int(self.seg_placed.sum()),
            "payload_bytes": self.live_bytes,
            "arena_used_bytes": self.live_aligned,
            "dead_bytes": self.dead_bytes,
            "clean_steps": self.clean_steps,
            "cleaned_segments": self.cleaned_segments,
            "cleaned_bytes_moved": self.cleaned_bytes_moved,
            "segments_in_use": in_use,
            "segment_bytes": self.seg_bytes,
            "segments_compacted": self.segments_compacted,
            "compactable_bytes": self.dead_bytes,
            "capacity_bytes": self.capacity,
            "handle_table_bytes": self.table_bytes,
            "victim_scans": self.victim_scans,
            "cleaning_record_bytes": self.record_bytes,
            "segment_table_bytes": self.seg_fill.nbytes + self.seg_live.nbytes + self.seg_placed.nbytes
                                   + self.seg_in_use.nbytes + self.seg_warm.nbytes,
        }
