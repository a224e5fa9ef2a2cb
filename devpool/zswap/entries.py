"""Zswap's entry table: swap offset -> entry, and the LRU, in memory that follows what is stored.

Linux keys zswap entries by swap offset in an xarray and strings the pool's entries on
a list_lru; a ``zswap_entry`` plus its xarray slot costs about 60-70 bytes. This table
does the same work in 30 bytes an entry without the LRU and 38 with it (measured at
10^6 entries by ``benchmarks/bench_growth.py``; 30 - 32 / 38 - 40 at any size), whether
the offsets are dense or spread over the whole swap area:

- **entries** live in *slots*: one record per slot holding ``key`` (the swap offset,
  int64), ``word`` (the pool handle, or a same-filled page's fill word, int64),
  ``length`` (uint16), ``state`` (uint8: ABSENT, POOL, SAME, FILE), ``referenced``
  (uint8), the LRU's links ``prev`` / ``next`` (int32) and ``hint``, where the block
  lay in the pool (int32, in padding or in a live entry's unused ``next``): 32 bytes, 24
  without the LRU. Each field is a strided numpy view of the records (and a memoryview of it), so
  the frontend reads and writes fields by slot index, vectorised for a batch, by
  scalar for one page. Slots are taken lowest first (a free list threads the freed
  ones through ``next``), so the records' untouched tail costs no RAM.
- **the index** is an open-addressing hash of offset -> slot: an int32 array of any
  length, 50 - 70 % full as it grows (5.7 - 8 bytes an entry; a power of two long it
  was 35 - 70 %, up to 11.4), with linear probing, Fibonacci hashing (the top bits of
  ``offset * 2**63/phi``: sequential and strided offsets spread evenly) scaled to the
  length by Lemire's multiply-shift (``(top 31 bits * length) >> 31``: no division)
  and backward-shift deletion (no tombstones, so a lookup's cost never grows with
  churn). A bucket holds its slot in the low bits (as many as the records' length
  needs: ``meta[_SHIFT]``) and, in the rest (up to ``_DIST_BITS``), how far it lies
  from its key's home. A probe compares that distance with its own before it reads the
  slot's record, and a removal's backward shift takes homes from it: at 10^6 sparse
  offsets a lookup passes 0.87 other keys' buckets on average (1.87 probes; dense
  offsets, spread evenly by the hash, 1.03), each a record, a cache miss, read for
  nothing. Past what the bits hold (a cluster a hostile caller's offsets build) the
  key decides, as before.
- **the LRU** (kept only when writeback may walk it) is intrusive: POOL entries form a
  doubly linked list through ``prev`` / ``next``, oldest at the head; a store appends
  at the tail, a load or an invalidation unlinks in O(1), and writeback walks from the
  head giving referenced entries their second chance (:meth:`EntryTable.lru_pick`) —
  no scan of the table.
- **counters** per state (and the POOL entries' bytes) are kept as entries change, so
  ``Zswap.stats()`` costs the same at any size.

Both speeds run the same code: every change of an entry (a new one, a new state, a
removal) is one plain Python function, :func:`_set`, and a lookup another,
:func:`_bucket`, written in the integer arithmetic Python and numba share (63-bit
products, masked). The batch verbs run them compiled by numba, in loops over numpy
arrays. One page: a lookup runs the compiled :func:`_bucket` through :func:`_find_one`,
a change the compiled :func:`_set` through :func:`_set_one`, each a call that takes
integers only (the table's arrays are found from their addresses:
:mod:`devpool._compiled` says why; a lookup so costs 0.12 us here, 0.25 interpreted).
``tests/zswap/test_entries.py`` holds both speeds against a model.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from .._compiled import JIT, Rules, at, bind
from .._errors import BadInputError, PoolFullError

__all__ = ["ABSENT", "POOL", "SAME", "FILE", "EntryTable", "as_word"]

# --- entry states (one byte per entry) ---------------------------------------------------
ABSENT = 0     # a free slot (never in the index)
POOL = 1       # compressed (or, at length == the page size, stored as-is) in the pool
SAME = 2       # same-filled page: only the 8-byte fill word is kept, no pool space
FILE = 3       # in the backing swap file (written back, or refused by zswap); its word
               # is the slot's check word (BackingFile.write_pages), checked on load
_STATES = 4

# --- the index's hash ---------------------------------------------------------------------
#: 2**63 / phi, odd: the top bits of ``key * _GOLD`` (mod 2**63) spread any arithmetic
#: progression of keys evenly over the buckets (Knuth's multiplicative hashing)
_GOLD = 0x4F1BBCDCBFA53E0B
_M63 = (1 << 63) - 1
#: the index is rebuilt larger once more than this share of its buckets is taken
#: (linear probing: 2.2 probes a hit, 6 a miss on average at the most), and smaller
#: once fewer than a tenth are (memory follows what is stored)
_MAX_LOAD = 0.7
#: ... larger by this factor (and to at most this load): 1.4 takes it from 0.7 to 0.5, so
#: it is 50 - 70 % full while it grows (a doubling left it 35 - 70 %: 4 more bytes an
#: entry after each growth, for 0.4 fewer probes a hit)
_INDEX_GROWTH = 1.4
_GROWN_LOAD = 0.5
#: ... and a shrunk one is this full (room to grow back 2x before it is rebuilt again)
_SHRUNK_LOAD = 0.35
#: the slot records grow by this factor (and to this much more than asked): a quarter
#: left the untouched tail at up to a fifth of the records (no RAM, but allocated and
#: traced); an eighth costs ~8 copies of a record per entry over the table's growth
#: (~20 ns an entry) and keeps the tail under 1/9
_SLOT_GROWTH = 1.125
_MIN_BUCKETS = 64
_MIN_SLOTS = 32
#: a table never shrinks below this many buckets (and the slots to fill 70 % of them,
#: ~85 KB in all): a zswap that fills and empties a few thousand pages over and over
#: (a region's working set, a benchmark's pass) would otherwise rebuild it every time
_SHRINK_FLOOR = 4096
#: slot numbers are int32 (the index and the LRU's links): at most this many entries
MAX_ENTRIES = (1 << 31) - 1
#: _bucket's product (31 bits of hash times the length) stays below 2**63 up to here
#: (MAX_ENTRIES at 70 % need 3.07e9)
_MAX_BUCKETS = (1 << 32) - 1
#: a bucket holds its slot in the low bits and, in the rest of its 31, how far it lies
#: from its home, up to this many bits (a probe compares that before it reads a record)
_DIST_BITS = 8

# --- the meta array: the table's scalars, one int64 each (shared by both speeds) ---------
_COUNT = 0          # entries present (in the index)
_HEAD = 1           # the LRU's oldest slot (-1: empty)
_TAIL = 2           # the LRU's youngest slot
_FREE = 3           # first slot of the free list (-1: none)
_NFREE = 4          # slots on the free list
_USED = 5           # slots ever handed out: slots at or above it were never touched
_N_BUCKETS = 6      # the index's length: _bucket scales a hash's top bits to it
_FULL = 7           # the page size: a POOL entry this long is stored as-is
_POOL_BYTES = 8     # sum of the POOL entries' lengths
_N_FULL = 9         # POOL entries stored as-is
_LRU = 10           # 1: POOL entries are kept on the LRU (0: no writeback will ever ask)
_N_STATE = 11       # 11 + state: entries in each state
_OLD_STATE = _N_STATE + _STATES     # what the last single-entry call replaced (see _set_one)
_OLD_WORD = _OLD_STATE + 1
_HINT = _OLD_WORD + 1               # the bucket the last single lookup found (see find_one)
_AT_BUCKETS = _HINT + 1             # where the index and the records are, and their lengths,
_AT_RECORDS = _AT_BUCKETS + 1       # for _set_one (set whenever an array is replaced)
_N_SLOTS = _AT_RECORDS + 1
_GROW_AT = _N_SLOTS + 1             # entries past which the index grows (see _room)
_SHIFT = _GROW_AT + 1               # the index's slot bits: a bucket holds slot | distance << _SHIFT
_META = _SHIFT + 1

# --- slot records: one per slot (field, dtype, byte offset), not one array per field: a
# single-page verb at a random offset then touches one or two cache lines of slots rather
# than one per field (a dependent load that misses costs ~350 ns on these VMs, measured by
# pointer chasing over 8 MiB, 8 ns within 16 KiB). Without the LRU there is no ``prev``
# (``next`` still threads the free list): 24 bytes, not 32.
# ``hint``: where a POOL entry's block lay in the pool's arena when it was stored (its
# offset / 16, -1: none), so that a compiled load can start reading the block while it
# checks the handle (a dependent miss less at 10^6 pages: :func:`hint_of`). Only a guess,
# never trusted: an object cleaning moved leaves it stale, and a stale one costs one
# wasted prefetch. It takes no byte: the LRU's record had 4 bytes of padding, and
# without the LRU ``next`` threads only free slots, so a live entry's ``next`` holds it.
_FIELDS_LRU = (("key", np.int64, 0), ("word", np.int64, 8), ("prev", np.int32, 16), ("next", np.int32, 20),
               ("length", np.uint16, 24), ("state", np.uint8, 26), ("referenced", np.uint8, 27),
               ("hint", np.int32, 28))
_FIELDS_NO_LRU = (("key", np.int64, 0), ("word", np.int64, 8), ("next", np.int32, 16),
                  ("length", np.uint16, 20), ("state", np.uint8, 22), ("referenced", np.uint8, 23),
                  ("hint", np.int32, 16))


_CK, _CW, _CP, _CN, _CL, _CS, _CR, _CH, _CREC = range(9)


def _columns(fields, record):
    """Each field's column when a record row is read as that field's dtype (in the order
    of the _C* indices; a table without ``prev`` names ``next`` there), and the size."""
    col = {name: at // np.dtype(dt).itemsize for name, dt, at in fields}
    col.setdefault("prev", col["next"])
    return tuple(col[f] for f in ("key", "word", "prev", "next", "length", "state", "referenced", "hint")) \
        + (record,)


#: a hint's unit (the pool's ALIGN) and the offsets it can name (int32 of them: 32 GiB)
_HINT_SHIFT = 4
_HINT_LIMIT = (1 << 31) << _HINT_SHIFT


def hint_of(offset):
    """An arena offset (an int or an int64 array) as the records' ``hint``: offset / 16,
    or -1 (none) past what an int32 of them names."""
    return (offset < _HINT_LIMIT) * ((offset >> _HINT_SHIFT) + 1) - 1


_C_LRU, _C_NO = _columns(_FIELDS_LRU, 32), _columns(_FIELDS_NO_LRU, 24)


# === the rules, one function each: run compiled (batch) and interpreted (one page) =======
def _home(key, nb):
    """The bucket where ``key``'s probe starts (``nb``: the number of buckets): the hash's
    top 31 bits times ``nb``, over 2**31; the product stays below 2**63 for any ``nb``
    under 2**32, in Python as in numba. (``int``: compiled, a no-op on an int64;
    interpreted, a numpy int64 key wrapped with an overflow warning, where a Python int
    keeps every bit the mask takes.)"""
    return ((((int(key) * _GOLD) & _M63) >> 32) * nb) >> 31


def _dmax(shift):
    """The largest distance a bucket with ``shift`` slot bits holds (a farther one holds
    this, and the key decides)."""
    return (1 << (31 - shift)) - 1


def _bucket(buckets, keys, nb, shift, key):
    """The bucket holding ``key``'s slot, or the empty bucket where it would go (``nb``:
    the number of buckets, ``shift``: their slot bits). A bucket whose distance from its
    entry's home is not this probe's holds another key: its record is not read."""
    b = _home(key, nb)
    dmax = _dmax(shift)
    d = 0
    while True:
        v = buckets[b]
        if v < 0:
            return b
        if (v >> shift) == (d if d < dmax else dmax) and keys[v & ((1 << shift) - 1)] == key:
            return b
        d += 1
        b += 1
        if b == nb:
            b = 0


def _slot(buckets, b, shift):
    """The slot bucket ``b`` holds, or -1 (empty)."""
    v = buckets[b]
    return v if v < 0 else v & ((1 << shift) - 1)


def _lookup(buckets, keys, meta, key):
    """``(bucket, slot)``: :func:`_bucket` and :func:`_slot` of ``key``, by the index's
    length and slot bits in ``meta`` (slot -1: not stored)."""
    shift = meta[_SHIFT]
    b = _bucket(buckets, keys, meta[_N_BUCKETS], shift, key)
    return b, _slot(buckets, b, shift)


def _distance(b, key, nb):
    """How far bucket ``b`` lies past ``key``'s home, going round the end (no division:
    ~40 cycles each, on every step of a backward shift)."""
    d = b - _home(key, nb)
    return d if d >= 0 else d + nb


def _entry(slot, d, shift):
    """A bucket's value: ``slot``, and its distance ``d`` from its home (capped at the
    bits above ``shift``: a capped one is the key's to tell, read from its record)."""
    dmax = _dmax(shift)
    return slot | ((d if d < dmax else dmax) << shift)


def _set(buckets, key_, word, length, state, referenced, prev, nxt, meta, key, st, w, n, b):
    """Every change of an entry: ``key`` now holds ``(st, w, n)``, or nothing when ``st``
    is ABSENT. ``b`` is the bucket holding ``key``'s slot if the caller knows it (a
    stale or -1 hint is looked up). Returns ``(slot, old state, old word)``; the old
    state is ABSENT where ``key`` held nothing (the caller frees what an old POOL word
    names). Room for a new entry was made beforehand.

    Written flat, as one function (leaving the old state, taking the new one, the LRU's
    links, the index's backward-shift deletion), because the single-page verbs run it
    in the interpreter, where each call costs more than the work in it."""
    nb = meta[_N_BUCKETS]
    shift = meta[_SHIFT]
    if b < 0 or buckets[b] < 0 or key_[_slot(buckets, b, shift)] != key:
        b = _bucket(buckets, key_, nb, shift, key)
    i = _slot(buckets, b, shift)
    if i >= 0:                                  # leave the old state
        old_st = state[i]
        old_w = word[i]
        meta[_N_STATE + old_st] -= 1
        if old_st == POOL:
            m = length[i]
            meta[_POOL_BYTES] -= m
            if m >= meta[_FULL]:
                meta[_N_FULL] -= 1
            if meta[_LRU]:                      # unlink from the LRU
                a = prev[i]
                z = nxt[i]
                if a >= 0:
                    nxt[a] = z
                else:
                    meta[_HEAD] = z
                if z >= 0:
                    prev[z] = a
                else:
                    meta[_TAIL] = a
    elif st == ABSENT:
        return -1, ABSENT, 0
    else:                                       # a new slot: the free list's first, or a fresh one
        old_st = ABSENT
        old_w = 0
        i = meta[_FREE]
        if i >= 0:
            meta[_FREE] = nxt[i]
            meta[_NFREE] -= 1
        else:
            i = meta[_USED]
            meta[_USED] = i + 1
        buckets[b] = _entry(i, _distance(b, key, nb), shift)
        key_[i] = key
        meta[_COUNT] += 1
    state[i] = st
    if st == ABSENT:                            # out of the index (backward shift) and freed
        dmax = _dmax(shift)
        q = b
        while True:
            q += 1
            if q == nb:
                q = 0
            v = buckets[q]
            if v < 0:
                break
            s = v & ((1 << shift) - 1)
            dh = v >> shift                     # how far s is from home (its record read
            if dh >= dmax:                      # only past what the bucket holds), and
                dh = _distance(q, key_[s], nb)  # from the hole, going round the end
            db = q - b
            if db < 0:
                db += nb
            if dh >= db:                        # the hole lies on s's probe path
                buckets[b] = _entry(s, dh - db, shift)
                b = q
        buckets[b] = -1
        nxt[i] = meta[_FREE]
        meta[_FREE] = i
        meta[_NFREE] += 1
        meta[_COUNT] -= 1
        return i, old_st, old_w
    word[i] = w                                 # take the new state
    length[i] = n
    meta[_N_STATE + st] += 1
    if st == POOL:
        meta[_POOL_BYTES] += n
        if n >= meta[_FULL]:
            meta[_N_FULL] += 1
        referenced[i] = 1                       # a second chance before writeback
        if meta[_LRU]:                          # join the LRU's young end
            t = meta[_TAIL]
            prev[i] = t
            nxt[i] = -1
            if t >= 0:
                nxt[t] = i
            else:
                meta[_HEAD] = i
            meta[_TAIL] = i
    return i, old_st, old_w


def _room(meta):
    """True when a new entry can be set without growing the table first (a free slot,
    and the index below its load limit)."""
    return meta[_COUNT] < meta[_GROW_AT] and (meta[_NFREE] > 0 or meta[_USED] < meta[_N_SLOTS])


# --- compiled: the same rules, for the batch verbs -------------------------------------------
_rules = Rules()
_compiled = _rules.compiled

for _rule in (_home, _dmax, _bucket, _slot, _lookup, _distance, _entry, _set, _room):
    _compiled(_rule)


# --- batch loops over the rules (compiled only) ------------------------------------------------
@_compiled
def _find_many(buckets, key_, meta, offs, idx):
    for j in range(offs.shape[0]):
        idx[j] = _lookup(buckets, key_, meta, offs[j])[1]


@_compiled
def _set_many(buckets, key_, word, length, state, referenced, prev, nxt, meta, offs, st, words, lengths, idx, old,
              old_words):
    """:func:`_set` for each offset (``words`` and ``lengths`` per offset)."""
    for j in range(offs.shape[0]):
        i, o, w = _set(buckets, key_, word, length, state, referenced, prev, nxt, meta, offs[j], st,
                       words[j], lengths[j], -1)
        idx[j] = i
        old[j] = o
        old_words[j] = w


@_compiled
def _restate_many(buckets, key_, word, length, state, referenced, prev, nxt, meta, idx, st):
    """Present slots take state ``st``, keeping their word and length."""
    for j in range(idx.shape[0]):
        i = idx[j]
        _set(buckets, key_, word, length, state, referenced, prev, nxt, meta, key_[i], st, word[i], length[i], -1)


# --- one entry, compiled, called with integers only (see devpool._compiled) ------------------
@_rules.compiled
def _table_at(meta_at):
    """The table's arrays in the order the rules take them (buckets, key, word, length,
    state, referenced, prev, next, meta), from the addresses its meta array (at
    ``meta_at``) holds. Without the LRU, prev is next: never touched."""
    meta = numba.carray(at(meta_at, numba.int64), (_META,))
    records_at, n_slots = meta[_AT_RECORDS], meta[_N_SLOTS]
    c = _C_LRU if meta[_LRU] else _C_NO
    r = c[_CREC]
    r64 = numba.carray(at(records_at, numba.int64), (n_slots, r // 8))
    r32 = numba.carray(at(records_at, numba.int32), (n_slots, r // 4))
    r16 = numba.carray(at(records_at, numba.uint16), (n_slots, r // 2))
    r8 = numba.carray(at(records_at, numba.uint8), (n_slots, r))
    return (numba.carray(at(meta[_AT_BUCKETS], numba.int32), (meta[_N_BUCKETS],)), r64[:, c[_CK]],
            r64[:, c[_CW]], r16[:, c[_CL]], r8[:, c[_CS]], r8[:, c[_CR]], r32[:, c[_CP]], r32[:, c[_CN]], meta)


@_rules.compiled
def _hints_at(meta_at):
    """The records' ``hint`` column of the table whose meta array is at ``meta_at``."""
    meta = numba.carray(at(meta_at, numba.int64), (_META,))
    c = _C_LRU if meta[_LRU] else _C_NO
    return numba.carray(at(meta[_AT_RECORDS], numba.int32), (meta[_N_SLOTS], c[_CREC] // 4))[:, c[_CH]]


_rules.compiled(hint_of)


@_rules.compiled(signature="int64(int64, int64, int64, int64, int64, int64)")
def _set_one(meta_at, key, st, w, n, b):
    """:func:`_set` on the table whose meta array is at ``meta_at`` (it holds the other
    arrays' addresses); the old state and word go to meta. Returns the slot."""
    table = _table_at(meta_at)
    meta = table[8]
    if key < 0:                                # -1 - key: remove this slot (its key read here)
        key = table[1][-1 - key]
    i, old, old_w = _set(*table, key, st, w, n, b)
    meta[_OLD_STATE] = old
    meta[_OLD_WORD] = old_w
    return i


@_rules.compiled(signature="int64(int64, int64)")
def _find_one(meta_at, key):
    """:func:`_bucket` on the table whose meta array is at ``meta_at``: the slot holding
    ``key`` or -1; the bucket goes to meta (a removal that follows needs no second
    lookup)."""
    table = _table_at(meta_at)
    meta = table[8]
    meta[_HINT], i = _lookup(table[0], table[1], meta, key)
    return i


def _find_interpreted(table: "EntryTable", key):
    """:func:`_find_one`'s contract, interpreted over the table's memoryviews."""
    meta = table.m_meta
    meta[_HINT], i = _lookup(table.m_buckets, table.m_key, meta, key)
    return i


@_compiled
def _lru_pick(buckets, key_, word, length, state, referenced, prev, nxt, meta, n, out):
    """Up to ``n`` oldest unreferenced POOL slots into ``out``, walking from the LRU's
    head: a referenced entry passed on the way loses its bit and moves to the young
    end (its second chance), where the walk meets it again. Returns how many."""
    k = 0
    i = meta[_HEAD]
    while i >= 0 and k < n:
        z = nxt[i]
        if referenced[i]:               # rotate: leave and rejoin at the young end, unreferenced
            _set(buckets, key_, word, length, state, referenced, prev, nxt, meta, key_[i], POOL, word[i],
                 length[i], -1)
            referenced[i] = 0
            if z < 0:                    # it was the youngest: meet it again at once
                z = i
        else:
            out[k] = i
            k += 1
        i = z
    return k


@_compiled
def _rebuild(buckets, key_, state, used, shift):
    """Index every present slot below ``used`` in empty ``buckets`` (``shift``: their slot bits)."""
    nb = buckets.shape[0]
    for i in range(used):
        if state[i] != ABSENT:
            b = _bucket(buckets, key_, nb, shift, key_[i])
            buckets[b] = _entry(i, _distance(b, key_[i], nb), shift)


@_compiled
def _renumber(key_, word, length, state, referenced, prev, nxt, hint, meta, new_of):
    """Move the present slots down to 0..count-1, in order, links and all (slot ids
    change: called only between verbs). The free list is empty afterwards."""
    used = meta[_USED]
    k = 0
    for i in range(used):
        if state[i] != ABSENT:
            new_of[i] = k
            k += 1
    for i in range(used):
        if state[i] != ABSENT:            # j <= i, and slot i is intact until it moves
            j = new_of[i]
            key_[j] = key_[i]
            word[j] = word[i]
            length[j] = length[i]
            state[j] = state[i]
            referenced[j] = referenced[i]
            hint[j] = hint[i]                   # (without the LRU, next's bytes: not links)
            if state[i] == POOL and meta[_LRU]:
                a = prev[i]
                z = nxt[i]
                prev[j] = new_of[a] if a >= 0 else -1
                nxt[j] = new_of[z] if z >= 0 else -1
    for i in range(k, used):
        state[i] = ABSENT
    if meta[_HEAD] >= 0:
        meta[_HEAD] = new_of[meta[_HEAD]]
        meta[_TAIL] = new_of[meta[_TAIL]]
    meta[_FREE] = -1
    meta[_NFREE] = 0
    meta[_USED] = k


def as_word(fill: int) -> int:
    """A uint64 fill word as the int64 ``word`` field holds it (the same 64 bits)."""
    fill = int(fill)          # (a numpy uint64 where numba's JIT is off: its << 64 is 0)
    return fill - ((fill >> 63) << 64)


def _set_interpreted(table: "EntryTable", key, st, w, n, b):
    """:func:`_set_one`'s contract, running :func:`_set` in the interpreter over the
    table's memoryviews (numba's JIT off)."""
    meta = table.m_meta
    if key < 0:
        key = table.m_key[-1 - key]
    i, old, old_w = _set(table.m_buckets, table.m_key, table.m_word, table.m_length, table.m_state,
                         table.m_referenced, table.m_prev, table.m_next, meta, key, st, w, n, b)
    meta[_OLD_STATE] = old
    meta[_OLD_WORD] = old_w
    return i


def _shift_for(slots: int) -> int:
    """The index's slot bits for slot numbers below ``slots``: the bits they need, and
    at least 31 - _DIST_BITS (more distance bits than that are never needed: a probe
    that long reads the key)."""
    return min(31, max(int(slots - 1).bit_length(), 31 - _DIST_BITS))


def _buckets_for(count: int, load: float) -> int:
    """Buckets that hold ``count`` entries at ``load`` (any length, not a power of two)."""
    return max(_MIN_BUCKETS, -(-int(count) * 1000 // int(load * 1000)))


class EntryTable:
    """Swap offset -> entry (see the module docstring). Fields per slot are public
    arrays (``key``, ``word``, ``length``, ``state``, ``referenced``), each with a
    memoryview ``m_<field>`` over the same memory for the single-page verbs; ``fill``
    is ``word`` read as uint64. Slot indices are valid until the next verb that
    removes entries (a shrink renumbers them)."""

    def __init__(self, page_size: int = 4096, lru: bool = True):
        self.meta = np.zeros(_META, np.int64)
        self.meta[[_HEAD, _TAIL, _FREE]] = -1
        self.meta[_FULL] = page_size
        self.meta[_LRU] = bool(lru)            # without writeback nothing walks it: no links kept
        self.m_meta = memoryview(self.meta)    # (the meta array is never replaced)
        # one change, one lookup of one entry: compiled, bound to the meta array's address
        # (which holds the other arrays' addresses), or, with numba's JIT off, where the
        # intrinsic behind them cannot run, the same rules interpreted
        self._alive = [self.meta, ()]          # what meta's addresses lead to (kept by _views)
        self._set1, self._find1 = ((bind(_set_one, self.meta, self._alive),
                                    bind(_find_one, self.meta, self._alive)) if JIT
                                   else (functools.partial(_set_interpreted, self),
                                         functools.partial(_find_interpreted, self)))
        self._fields = _FIELDS_LRU if lru else _FIELDS_NO_LRU
        self.record_bytes = (_C_LRU if lru else _C_NO)[_CREC]
        self.prev = np.zeros(1, np.int32)      # (with the LRU, a field of the records)
        self.m_prev = memoryview(self.prev)
        self._records = np.zeros((_MIN_SLOTS, self.record_bytes), np.uint8)
        self.buckets = np.zeros(0, np.int32)
        self._views(_shift_for(_MIN_SLOTS))
        self._set_buckets(_MIN_BUCKETS)

    # --- memory: slots and buckets grow and shrink with the entries ------------------------
    def _views(self, shift: int | None = None) -> None:
        """Install the arrays (and ``shift``, the index's slot bits, where they change) for
        both speeds."""
        rec = self._records
        if shift is None:
            shift = int(self.m_meta[_SHIFT])
        # where the arrays are, for the compiled single verbs: installed first, and with
        # nothing that allocates between taking the addresses and installing them, so an
        # error below (a MemoryError) leaves them naming arrays the old views keep alive
        # (the index's slot bits with them: read over another index, they name other slots)
        addrs = (self.buckets.ctypes.data, rec.ctypes.data, self.buckets.shape[0], rec.shape[0], shift)
        alive = (self.buckets, rec)
        mm = self.m_meta
        mm[_AT_BUCKETS], mm[_AT_RECORDS], mm[_N_BUCKETS], mm[_N_SLOTS], mm[_SHIFT] = addrs
        self._alive[1] = alive
        # the last lookup's bucket names the old index: a removal would read it unchecked
        # (past a shrunk index's end); -1 makes it look the key up
        mm[_HINT] = -1
        for name, dtype, at in self._fields:
            field = rec[:, at:at + np.dtype(dtype).itemsize].view(dtype)[:, 0]
            setattr(self, name, field)
            setattr(self, "m_" + name, memoryview(field))
        self.fill = rec[:, 8:16].view(np.uint64)[:, 0]
        self.m_fill = memoryview(self.fill)
        self.m_buckets = memoryview(self.buckets)
        self._slots = rec.shape[0]
        nb = self.buckets.shape[0]
        self._grow_at = mm[_GROW_AT] = min(int(nb * _MAX_LOAD), MAX_ENTRIES)
        self._shrink_at = nb // 10 if nb > _SHRINK_FLOOR else -1

    def _set_buckets(self, nb: int, slots: int = 0) -> None:
        """A new index of ``nb`` buckets, with slot bits for ``slots`` (at least the
        records' length) slots; the rest of each bucket holds its distance from home."""
        buckets = np.full(int(nb), -1, np.int32)
        shift = self._index(buckets, max(slots, self._records.shape[0]))
        self.buckets = buckets
        self._views(shift)             # (meta[_N_BUCKETS] and meta[_SHIFT] follow the array)

    def _index(self, buckets: np.ndarray, slots: int) -> int:
        """Index the present slots (of the records the views show) in empty ``buckets``,
        with slot bits for ``slots`` slots; returns those bits."""
        shift = _shift_for(slots)
        _rebuild(buckets, self.key, self.state, self.meta[_USED], shift)
        return shift

    def _set_slots(self, n: int) -> None:
        used = int(self.meta[_USED])
        rec = np.zeros((n, self.record_bytes), np.uint8)         # the untouched tail costs no RAM
        rec[:used] = self._records[:used]
        if _shift_for(n) > self.meta[_SHIFT]:
            # slot numbers past the index's slot bits: the index first, so that a
            # MemoryError leaves a wider index over the old records, never the reverse
            self._set_buckets(self.buckets.shape[0], n)
        self._records = rec
        self._views()

    def reserve(self, k: int) -> None:
        """Make room for ``k`` more entries now, or raise :class:`~devpool.PoolFullError`
        (past ``MAX_ENTRIES``) or MemoryError, changing nothing: a caller that reserves
        before its fallible work cannot fail once it commits."""
        meta = self.meta
        count = int(meta[_COUNT])
        if count + k > MAX_ENTRIES:
            raise PoolFullError(f"the entry table holds at most {MAX_ENTRIES} entries ({count} stored, "
                                f"{k} more asked for)")
        spare = int(meta[_NFREE]) + self._slots - int(meta[_USED])
        # an eighth more slots than asked at least: a batch filled to the last slot would
        # make every single store after it look for room first
        slots = min(MAX_ENTRIES, int((self._slots + k - spare) * _SLOT_GROWTH) + 1) if spare < k else 0
        if count + k > self._grow_at:          # (first: the new index has the slot bits of both)
            nb = self.buckets.shape[0]
            self._set_buckets(min(_MAX_BUCKETS, max(int(nb * _INDEX_GROWTH), _buckets_for(count + k, _GROWN_LOAD))),
                              slots)
        if slots:
            self._set_slots(slots)

    def _shrink(self) -> None:
        """Few entries left: renumber the slots down, then a smaller index and arrays."""
        count = int(self.meta[_COUNT])
        nb = max(_SHRINK_FLOOR, _buckets_for(count, _SHRUNK_LOAD))
        # every array first: once the slots are renumbered, a MemoryError would leave the
        # index naming the old slot numbers (other keys' records)
        new_of = np.empty(int(self.meta[_USED]), np.int64)
        old = self._records[:max(2 * count, int(nb * _MAX_LOAD))]
        rec = np.empty(old.shape, np.uint8)
        buckets = np.full(nb, -1, np.int32)
        _renumber(self.key, self.word, self.length, self.state, self.referenced, self.prev, self.next, self.hint,
                  self.meta, new_of)
        np.copyto(rec, old)
        shift = self._index(buckets, rec.shape[0])       # (the renumbered slots, read in the old records)
        self._records, self.buckets = rec, buckets
        self._views(shift)

    def _arrays(self):
        """The arrays every rule takes, in its order."""
        return (self.buckets, self.key, self.word, self.length, self.state, self.referenced, self.prev,
                self.next, self.meta)

    def reserve_for(self, offsets: np.ndarray) -> None:
        """:meth:`reserve` for those of ``offsets`` not stored yet (as :meth:`put_one`
        grows only for a new entry: both speeds hold the same memory)."""
        self.reserve(int(np.count_nonzero(self.find(offsets) < 0)))

    @property
    def nbytes(self) -> int:
        """Bytes the table's arrays hold (slots never touched cost no RAM, but count here)."""
        return self._records.nbytes + self.buckets.nbytes + self.meta.nbytes

    def index_slots(self) -> np.ndarray:
        """The slot each bucket of the index holds, -1 where empty (for tests and benchmarks:
        a bucket's value also holds the slot's distance from its home)."""
        b = self.buckets.astype(np.int64)
        return np.where(b < 0, -1, b & ((1 << int(self.meta[_SHIFT])) - 1))

    def __len__(self) -> int:
        return int(self.meta[_COUNT])

    # --- batch verbs (compiled) -----------------------------------------------------------
    def find(self, offsets: np.ndarray) -> np.ndarray:
        """Slot of each offset (int64 array), -1 where none is stored."""
        idx = np.empty(offsets.shape[0], np.int64)
        _find_many(self.buckets, self.key, self.meta, offsets, idx)
        return idx

    def put(self, offsets: np.ndarray, state: int, words, lengths):
        """Distinct ``offsets`` now hold ``(state, words, lengths)`` (arrays or one value
        for all): new slots, or old ones replaced in place; POOL entries join the LRU's
        young end in this order. Returns ``(slots, old states, old words)`` (the
        caller frees what old POOL words name). :meth:`put_one`'s rule, per offset."""
        n = offsets.shape[0]
        self.reserve_for(offsets)
        idx = np.empty(n, np.int64)
        old = np.empty(n, np.int64)
        old_words = np.empty(n, np.int64)
        _set_many(*self._arrays(), offsets, state, np.broadcast_to(np.asarray(words, np.int64), (n,)),
                  np.broadcast_to(np.asarray(lengths, np.int64), (n,)), idx, old, old_words)
        return idx, old, old_words

    def remove(self, idx: np.ndarray) -> None:
        """Present slots leave the table (their slot indices are invalid afterwards)."""
        if idx.size:
            n = idx.shape[0]
            _set_many(*self._arrays(), self.key[idx], ABSENT, np.zeros(n, np.int64), np.zeros(n, np.int64),
                      np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64))
            if self.meta[_COUNT] < self._shrink_at:
                self._shrink()

    def restate(self, idx: np.ndarray, state: int) -> None:
        """Present slots take ``state`` (a POOL entry written back becomes FILE)."""
        if idx.size:
            _restate_many(*self._arrays(), idx, state)

    def lru_pick(self, n: int) -> np.ndarray:
        """Up to ``n`` oldest POOL slots, oldest first, after the second chance: referenced
        entries on the way lose their bit and move to the young end. Nothing leaves."""
        out = np.empty(min(n, int(self.meta[_N_STATE + POOL])) if self.meta[_LRU] else 0, np.int64)
        k = _lru_pick(*self._arrays(), out.shape[0], out)
        return out[:k]

    def lru_order(self) -> list[int]:
        """The LRU's slots, oldest first (for tests)."""
        out, i = [], int(self.meta[_HEAD])
        while i >= 0:
            out.append(i)
            i = int(self.next[i])
        return out

    def states(self, idx: np.ndarray) -> np.ndarray:
        """``state`` of slots from :meth:`find`, ABSENT where the slot is -1."""
        return np.where(idx >= 0, self.state[idx], ABSENT).astype(np.uint8)

    def present(self) -> np.ndarray:
        """Slots of every present entry."""
        return np.flatnonzero(self.state[:int(self.meta[_USED])] != ABSENT)

    def offsets_of(self, idx: np.ndarray) -> np.ndarray:
        """The swap offsets of slots."""
        return self.key[idx]

    def count(self, state: int) -> int:
        """Entries in ``state``."""
        return int(self.meta[_N_STATE + state])

    @property
    def pool_bytes(self) -> int:
        """Sum of the POOL entries' lengths."""
        return int(self.meta[_POOL_BYTES])

    @property
    def pool_as_is(self) -> int:
        """POOL entries stored as-is (length == the page size)."""
        return int(self.meta[_N_FULL])

    # --- single-entry verbs (the same rules, interpreted over memoryviews) ------------------
    def find_one(self, offset: int) -> int:
        """Slot of one offset, or -1 (one compiled call)."""
        return self._find1(offset)

    def put_one(self, offset: int, state: int, word: int, length: int):
        """Offset ``offset`` now holds ``(state, word, length)``: returns ``(slot, old
        state, old word)`` (old state ABSENT when it held nothing; the caller frees what
        an old POOL word names). A negative offset is BadInputError, nothing changed (the
        single change reads one as "remove slot -1 - key": :meth:`remove_one`'s)."""
        if offset < 0:
            raise BadInputError(f"swap offset {offset} is negative")
        meta = self.m_meta
        if not _room(meta) and self.find_one(offset) < 0:      # a new entry, and no room for it yet
            self.reserve(1)
            meta = self.m_meta
        i = self._set1(offset, state, word, length, -1)
        return i, meta[_OLD_STATE], meta[_OLD_WORD]

    def remove_one(self, i: int) -> None:
        """Present slot ``i`` leaves the table (where find_one found it: no second lookup)."""
        self._set1(-1 - i, ABSENT, 0, 0, self.m_meta[_HINT])
        self.after_remove()

    def after_remove(self) -> None:
        """Shrink if entries have fallen far enough (after a removal made elsewhere: the
        frontend's compiled single page)."""
        if self.m_meta[_COUNT] < self._shrink_at:
            self._shrink()
