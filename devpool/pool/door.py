"""The pool's single-object verbs for compiled callers: its door.

A frontend that does a whole single-page step in one compiled call (zswap's store and
load: the entry, the codec and the pool at once, as the kernel's zswap calls zsmalloc)
cannot call Python verbs from there. It calls these instead: each takes the address of
a pool's door (:attr:`Pool.door`, an int64 array) and runs the allocator's own rules, so
the pool keeps one decider per rule for all three speeds (batch, single, compiled).

A door is **open** only while the pool's storage is host RAM it can address (``host``),
no hostile policy acts on it (``chaos`` migrates objects before every verb: that is
Python's), it is open, and no ``read_with`` is lending a block. A shut door changes
nothing and answers "no" (a handle of 0, a slot of -1): the caller then takes the
pool's Python verbs, which say why.

Rules for a caller:

- Hold :attr:`Pool.lock` around every call, as the Python verbs do.
- A handle is opaque as ever: :func:`door_lend` checks it (pool id, generation, slot) exactly
  as ``read`` does. The address it returns is the block where it lies in host RAM,
  valid until the lock is let go or the object is freed (``read_with``'s loan, or the
  kernel's ``zs_obj_read_begin``): read it, never write through it, never keep it.
- :func:`door_free` returns what the pool must finish in Python (a segment emptied, a
  cleaning step due: anything but -1); pass it to :func:`door_settle` before letting
  the lock go.
- The door array is read-only to its callers: the pool opens and shuts it.
"""

from __future__ import annotations

import numba
from numba import types

from .._compiled import Rules, at, copy_bytes, prefetch
from .._checks import check_int
from .._errors import BadInputError
from .allocator import CLEAN_DUE, _M_HANDLE, _M_OFF, _M_SEG_BYTES, _M_SIZE, _bump, _free, _locate, _tables_at

__all__ = ["DOOR_ALLOC", "DOOR_ARENA", "DOOR_OPEN", "DOOR_FIELDS", "door_open", "door_alloc", "door_alloc_copy",
           "door_arena", "door_lend", "door_warm_free", "door_free", "door_settle"]

#: the door's fields: the allocator's meta address, the arena's address, open (1) or shut
DOOR_ALLOC, DOOR_ARENA, DOOR_OPEN, DOOR_FIELDS = range(4)


@numba.njit(cache=True)
def _door(door_at):
    return numba.carray(at(door_at, numba.int64), (DOOR_FIELDS,))


@numba.njit(cache=True)
def door_open(door_at):
    """True while the door is open (see above); a caller may ask before it starts."""
    return _door(door_at)[DOOR_OPEN] != 0


@numba.njit(cache=True)
def door_alloc(door_at, size):
    """``(handle, address)`` of one new object of ``size`` (as :func:`door_alloc_copy`)
    in the open segment's room, for the caller to fill before letting the lock go; or
    ``(0, 0)`` (nothing changed): the door is shut, or the object needs the long way."""
    door = _door(door_at)
    if door[DOOR_OPEN] == 0:
        return 0, 0
    tables = _tables_at(door[DOOR_ALLOC])
    if _bump(*tables, size) < 0:
        return 0, 0
    meta = tables[8]
    return meta[_M_HANDLE], door[DOOR_ARENA] + meta[_M_OFF]


@numba.njit(cache=True)
def door_alloc_copy(door_at, src_at, size):
    """Allocate one object of ``size`` (1 .. the pool's max_object_bytes: the caller's
    to know) in the open segment's room and copy ``size`` bytes from ``src_at`` into it:
    its handle, or 0 (nothing changed) when the door is shut or the object needs the
    long way (a new segment, cleaning, a limit: :meth:`Pool.alloc`)."""
    handle, address = door_alloc(door_at, size)
    if handle != 0:
        copy_bytes(address, src_at, size)
    return handle


@numba.njit(cache=True)
def door_arena(door_at):
    """The arena's address: an object's offset is its address minus this."""
    return _door(door_at)[DOOR_ARENA]


@numba.njit(cache=True)
def door_lend(door_at, handle):
    """``(slot, address, size)`` of a live object, or slot -1 (a shut door, or a handle
    that names no live object of this pool: the Python verb says which)."""
    door = _door(door_at)
    if door[DOOR_OPEN] == 0:
        return -1, 0, 0
    tables = _tables_at(door[DOOR_ALLOC])
    slot = _locate(*tables, handle)
    if slot < 0:
        return -1, 0, 0
    meta = tables[8]
    return slot, door[DOOR_ARENA] + meta[_M_OFF], meta[_M_SIZE]


@numba.njit(cache=True)
def door_warm_free(door_at, offset):
    """Start loading what a :func:`door_free` of the object at arena ``offset`` will
    update: its segment's figures, which at a million objects are a cache miss of their
    own. Changes nothing, and ``offset`` may be a guess (a caller's record of where the
    object lay, which cleaning may have made stale: a wasted prefetch). A caller with
    work to do before the free (a load's decode), or that can ask before it checks the
    handle (an invalidation), calls it first, so that the free finds them in cache."""
    tables = _tables_at(_door(door_at)[DOOR_ALLOC])
    live, in_use, meta = tables[1], tables[3], tables[8]
    seg = offset // meta[_M_SEG_BYTES]
    if 0 <= seg < live.shape[0]:
        prefetch(live.ctypes.data + seg * live.itemsize)
        prefetch(in_use.ctypes.data + seg * in_use.itemsize)


@numba.njit(cache=True)
def door_free(door_at, slot):
    """Free the object :func:`door_lend` found at ``slot`` (the door open, the lock held since):
    -1, or what :func:`door_settle` must finish."""
    return _free(*_tables_at(_door(door_at)[DOOR_ALLOC]), slot)


def door_settle(pool, got: int) -> None:
    """Finish in Python what a :func:`door_free` answered (anything but -1: a segment it
    emptied goes back, a cleaning step that came due runs), under the pool's lock.
    An answer no free could have given (a segment still in use: giving it back would
    hand its live objects' memory to the kernel) is BadInputError, nothing changed."""
    with pool.lock:
        if type(got) is not int or got != -1:
            got = check_int(got, "a door free's answer")
            al = pool.alloc_
            if not (got in (-1, CLEAN_DUE) or 0 <= got < al.n_segs and not al.seg_in_use[got]):
                raise BadInputError(f"{got} is not what a door free answers (-1, CLEAN_DUE or an emptied segment)")
        pool._settle_free(got)


# --- the pool's own single verbs, through the door: one compiled call each ------------------
# (Pool.alloc / write / read / free take these where the door opens: a handle decoded,
# checked and its bytes copied in one call, where the Python verb took a decode, a
# storage call and a slice each. Each answers NOT_DONE, changing nothing, for anything
# but the plain case, and the Python verb then runs to say why.)
NOT_DONE = -3
_rules = Rules()
_bytes_t = types.Array(types.uint8, 1, "C", readonly=True)
_out_t = types.Array(types.uint8, 1, "C")


@_rules.compiled(signature=types.int64(types.int64, types.int64))
def alloc_one(door_at, size):
    """:func:`door_alloc_copy` of nothing: the handle, or 0."""
    return door_alloc(door_at, size)[0]


@_rules.compiled(signature=types.int64(types.int64, _bytes_t))
def alloc_write_one(door_at, data):
    """:func:`door_alloc_copy` of ``data``: the handle, or 0."""
    if data.strides[0] != 1:
        return 0
    return door_alloc_copy(door_at, data.ctypes.data, data.shape[0])


@_rules.compiled(signature=types.int64(types.int64, types.int64, _bytes_t))
def write_one(door_at, handle, data):
    """Copy ``data`` into the object (exactly its size): 0, or NOT_DONE."""
    slot, address, size = door_lend(door_at, handle)
    if slot < 0 or size != data.shape[0] or data.strides[0] != 1:
        return NOT_DONE
    copy_bytes(address, data.ctypes.data, size)
    return 0


@_rules.compiled(signature=types.int64(types.int64, types.int64, _out_t, types.boolean))
def read_one(door_at, handle, out, free):
    """Copy the object into ``out`` (exactly its size), then free it when asked: what
    :func:`door_free` answered (-1 without a free), or NOT_DONE."""
    slot, address, size = door_lend(door_at, handle)
    if slot < 0 or size != out.shape[0] or out.strides[0] != 1:
        return NOT_DONE
    copy_bytes(out.ctypes.data, address, size)
    return door_free(door_at, slot) if free else -1


@_rules.compiled(signature=types.int64(types.int64, types.int64))
def free_one(door_at, handle):
    """Free the object: what :func:`door_free` answered, or NOT_DONE."""
    slot = door_lend(door_at, handle)[0]
    return NOT_DONE if slot < 0 else door_free(door_at, slot)


@_rules.compiled(signature=types.int64(types.int64, types.int64))
def size_one(door_at, handle):
    """The object's size, or NOT_DONE (a fresh ``read`` sizes its array by this, then
    copies with :func:`read_one`)."""
    slot, address, size = door_lend(door_at, handle)
    return NOT_DONE if slot < 0 else size
