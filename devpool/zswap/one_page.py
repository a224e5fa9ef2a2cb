"""One page in one compiled call: zswap's single store, load and invalidation, where they
can run so.

The kernel's zswap stores a page in a few C calls: look the entry up, compress, take
room from zsmalloc and copy the block in, record the entry. Through Python verbs the
same step cost ~4 us around a 5.6 us compression here, and a load ~2 us around a 1.3 us
decode: each layer's checks, lock and calls. So where every layer can be reached from
compiled code, one call does it all, through each layer's own rules:

- the entry table's :func:`~devpool.zswap.entries._lookup` / ``_set`` / ``_room``;
- the pool's door (``door_*``, :mod:`devpool.pool.door`: its allocator's rules, host RAM
  only);
- liblz4 (:mod:`devpool.codecs._liblz4`: the ``lz4`` codec's blocks, byte for byte);
- :func:`verdict`, the store's decider, which the Python paths call too.

It commits only the common case and answers anything else *before changing anything*:
a refused page, a page that needs the pool's long way (a new segment, cleaning, its
limit), a table that must grow, a shut door (a chaos pool, a closed one), a FILE
entry. ``Zswap`` then goes on in Python from where this stopped (a refused or
compressed page keeps its block in the scratch buffer, no second compression).

``ctx`` is the Zswap's int64 array of addresses and settings (``X_*``); the calls take
it by address, the page as an array (numba unboxes a typed array in ~50 ns).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

from .._compiled import Rules, at, copy_bytes, prefetch, prefetch_range
from .._packed import same_filled_one
from ..codecs._liblz4 import BOUND, _compress_at, _decompress_at
from ..pool import door_alloc, door_arena, door_free, door_lend, door_open, door_warm_free
from . import entries
from .entries import (_HINT_SHIFT, ABSENT, POOL, SAME, _home, _hints_at, _lookup, _room, _set,  # (compiled below)
                      _table_at, hint_of)

__all__ = ["verdict", "store_one", "load_one", "invalidate_one", "warm_one", "set_hints", "X_FIELDS", "BOUND"]

PAGE = 4096

# --- ctx: what the calls need to reach (set once) and what they answer ----------------------
(X_ENTRIES,         # the entry table's meta address
 X_DOOR,            # the pool's door address
 X_FNS,             # liblz4's functions (codecs._liblz4.FUNCTIONS' data)
 X_ACCELERATION,    # the codec's acceleration
 X_WRITEBACK,       # 1: pages that do not compress are stored as-is (writeback may take them)
 X_MAX_OBJECT,      # the pool's max_object_bytes
 X_SCRATCH,         # BOUND bytes the block is compressed into
 X_LENGTH,          # out: the compressed length (store), -1: failed
 X_FREED,           # out: what the pool's free answered (-1: nothing for Python to settle)
 X_FIELDS) = range(10)

# --- answers ---------------------------------------------------------------------------------
DONE = 0            # stored in the pool / loaded: done (settle X_FREED)
DONE_SAME = 1       # stored as a same-filled page: done (settle X_FREED)
REFUSED = 2         # store: the verdict refused the block (X_LENGTH); nothing changed
LONG_WAY = 3        # store: accepted, but the pool needs its long way; nothing changed
SLOW = 4            # nothing done: take the Python path (shut door, growth, FILE entry)
NOT_STORED = 5      # load: nothing stored at that offset
CORRUPT = 6         # load: the block did not decode to one page; nothing changed


def verdict(lengths, writeback, max_object):
    """Which compressed lengths (an int or an array; -1 failed) may be stored, and how:
    ``(accepted, as_is, sizes)``. A block that did not shrink below a page is stored
    as-is (``sizes`` = PAGE) when writeback may later take it, else refused (Linux
    without writeback); an object larger than the pool's ``max_object_bytes`` is
    refused. (Scalars or arrays alike: one decider for the batch, the single page and
    the compiled page.)"""
    as_is = (lengths >= PAGE) & writeback
    sizes = lengths + (PAGE - lengths) * as_is
    accepted = (lengths >= 0) & ((lengths < PAGE) | writeback) & (sizes <= max_object)
    return accepted, as_is, sizes


_rules = Rules()
_rules.include(entries._rules)           # _lookup, _set, _room compiled
_rules.compiled(verdict)

_page_t = types.Array(types.uint8, 1, "C", readonly=True)
_out_t = types.Array(types.uint8, 1, "C")


@_rules.compiled(signature=types.int64(types.int64, types.int64, _page_t))
def store_one(ctx_at, key, page):
    """Store one page at swap offset ``key``: DONE, DONE_SAME, or an answer that changed
    nothing (REFUSED, LONG_WAY with the block in the scratch buffer, SLOW)."""
    ctx = numba.carray(at(ctx_at, numba.int64), (X_FIELDS,))
    ctx[X_FREED] = -1
    door_at = ctx[X_DOOR]
    if not door_open(door_at):
        return SLOW
    table = _table_at(ctx[X_ENTRIES])
    buckets, keys, word, state, meta = table[0], table[1], table[2], table[4], table[8]
    b, i = _lookup(buckets, keys, meta, key)
    if i < 0 and not _room(meta):
        return SLOW                              # the table grows first
    old = -1                                     # the replaced POOL object's slot
    if i >= 0 and state[i] == POOL:
        old = door_lend(door_at, word[i])[0]
        if old < 0:
            return SLOW                          # (the Python path says why)
    same = same_filled_one(page)[0]
    if same:
        _set(*table, key, SAME, page.view(np.int64)[0], 0, b)
    else:
        n = _compress_at(ctx[X_FNS], page.ctypes.data, ctx[X_SCRATCH], BOUND, ctx[X_ACCELERATION])
        ctx[X_LENGTH] = n
        accepted, as_is, size = verdict(n, ctx[X_WRITEBACK] != 0, ctx[X_MAX_OBJECT])
        if not accepted:
            return REFUSED
        handle, address = door_alloc(door_at, size)
        if handle == 0:
            return LONG_WAY
        copy_bytes(address, page.ctypes.data if as_is else ctx[X_SCRATCH], size)
        i = _set(*table, key, POOL, handle, size, b)[0]
        _hints_at(ctx[X_ENTRIES])[i] = hint_of(address - door_arena(door_at))
    if old >= 0:
        ctx[X_FREED] = door_free(door_at, old)
    return DONE_SAME if same else DONE


@_rules.compiled(signature=types.int64(types.int64, types.int64, _out_t, types.boolean))
def load_one(ctx_at, key, out, keep):
    """Load the page at swap offset ``key`` into ``out``: DONE (the entry gone, or with
    ``keep`` marked used again), or an answer that changed nothing (NOT_STORED, CORRUPT,
    SLOW: a FILE entry or a shut door)."""
    ctx = numba.carray(at(ctx_at, numba.int64), (X_FIELDS,))
    ctx[X_FREED] = -1
    table = _table_at(ctx[X_ENTRIES])
    buckets, keys, word, length, state, referenced, meta = table[0], table[1], table[2], table[3], table[4], table[5], \
        table[8]
    b, i = _lookup(buckets, keys, meta, key)
    if i < 0:
        return NOT_STORED
    st = state[i]
    slot = -1
    if st == SAME:
        out.view(np.int64)[:] = word[i]
    elif st == POOL:
        door_at = ctx[X_DOOR]
        hint = _hints_at(ctx[X_ENTRIES])[i]
        if hint >= 0:
            # the block's lines, and the figures the free after the decode updates, load
            # while the handle is checked (only a guess: the check decides what is read)
            lay = hint << _HINT_SHIFT
            prefetch_range(door_arena(door_at) + lay, length[i])
            if not keep:
                door_warm_free(door_at, lay)
        slot, address, size = door_lend(door_at, word[i])
        if slot < 0:
            return SLOW
        if size == PAGE:                         # stored as-is
            copy_bytes(out.ctypes.data, address, PAGE)
        elif not _decompress_at(ctx[X_FNS], address, size, out.ctypes.data):
            return CORRUPT
    else:
        return SLOW                              # in the backing file: Python reads it
    if keep:
        referenced[i] = 1                        # used again: a second chance before writeback
        return DONE
    if slot >= 0:
        ctx[X_FREED] = door_free(ctx[X_DOOR], slot)
    _set(*table, key, ABSENT, 0, 0, b)           # the entry leaves
    return DONE


@_rules.compiled(signature=types.int64(types.int64, types.int64))
def invalidate_one(ctx_at, key):
    """Forget swap offset ``key``: DONE (its pool object freed), NOT_STORED, or SLOW (a
    POOL entry behind a shut door; nothing changed)."""
    ctx = numba.carray(at(ctx_at, numba.int64), (X_FIELDS,))
    ctx[X_FREED] = -1
    table = _table_at(ctx[X_ENTRIES])
    buckets, keys, word, state, meta = table[0], table[1], table[2], table[4], table[8]
    b, i = _lookup(buckets, keys, meta, key)
    if i < 0:
        return NOT_STORED
    if state[i] == POOL:
        door_at = ctx[X_DOOR]
        hint = _hints_at(ctx[X_ENTRIES])[i]
        if hint >= 0:                            # (the free's figures load while the handle is checked)
            door_warm_free(door_at, hint << _HINT_SHIFT)
        slot = door_lend(door_at, word[i])[0]
        if slot < 0:
            return SLOW
        ctx[X_FREED] = door_free(door_at, slot)
    _set(*table, key, ABSENT, 0, 0, b)
    return DONE


@_rules.compiled(signature=types.int64(types.int64, types.int64))
def warm_one(ctx_at, key):
    """Start loading the index bucket where a lookup of ``key`` starts (a prefetch: it
    reads the table's length and address, and changes nothing). A single load or
    invalidation asks it before its checks and its lock, so that at a million entries
    the lookup's first miss is under way while Python does them. Without the lock the
    table may be changing: a stale address costs one wasted prefetch, never a fault."""
    table = _table_at(numba.carray(at(ctx_at, numba.int64), (X_FIELDS,))[X_ENTRIES])
    buckets, meta = table[0], table[8]
    nb = meta[entries._N_BUCKETS]
    if nb > 0:
        prefetch(buckets.ctypes.data + _home(key, nb) * buckets.itemsize)
    return 0


@_rules.compiled
def set_hints(entries_at, door_at, idx, handles):
    """The records at ``idx`` learn where their pool objects (``handles``, just stored by a
    batch) lie now: the hint :func:`load_one` prefetches. Under the pool's lock."""
    hints = _hints_at(entries_at)
    arena = door_arena(door_at)
    for j in range(idx.shape[0]):
        slot, address, size = door_lend(door_at, handles[j])
        hints[idx[j]] = hint_of(address - arena) if slot >= 0 else -1
