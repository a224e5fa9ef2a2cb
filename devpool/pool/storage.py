"""The storage contract: the only layer that knows what kind of memory holds the bytes.

A storage owns one *arena*: a linear range of byte offsets ``[0, capacity)`` in memory
of its own kind (host RAM, GPU device memory, ...). It never sees a handle, a size class
or a swap offset: the allocator above decides every offset, storage only moves bytes in
bulk. Every verb takes a whole batch, so a device implementation costs O(1) transfers
per call, and data leaves as a copy (one verb, ``lend_one``, may lend host RAM in place:
see there).

Verbs an implementation provides (all offsets/lengths are int64 numpy arrays):

``commit(offset, nbytes)``
    make ``[offset, offset+nbytes)`` usable (the arena grows in chunks; capacity is a
    ceiling, not a preallocation). Raises :class:`~devpool.PoolFullError` when the memory
    kind is exhausted, leaving earlier commits untouched.
``release(offset, nbytes)``
    give that range back to the memory kind (after compaction emptied it).
``scatter(payload, src_starts, dst_offsets, lengths)``
    copy-in: object ``i`` is ``payload[src_starts[i]:src_starts[i]+lengths[i]]`` (host
    memory, packed) and lands at arena offset ``dst_offsets[i]``.
``gather(offsets, lengths, out, out_starts)``
    copy-out: the reverse, into the packed host array ``out``.
``move(src_offsets, dst_offsets, lengths)``
    compaction inside the arena; behaves as if every source were read before any
    destination is written, so plans may overlap. Bytes never leave the arena's memory.
``discard(offsets, lengths)``
    the allocator freed these ranges; nothing may read them again (chaos poisons them).
``populate(offset, nbytes)``
    a committed segment that single objects will fill one by one: back it with memory
    now, in one step, rather than on each first touch (host RAM: a page fault every two
    or three single stores, otherwise). Advice; the default does nothing.

Single objects (a swap-in fault is one page) have their own verbs, so one page costs one
copy and no batch metadata; the defaults fall back on the batch verbs:

``write_one(offset, data)``
    copy-in of one object: ``data`` (1-D host uint8) lands at arena ``offset``.
``read_one(offset, out)``
    copy-out of one object: ``out.size`` bytes from arena ``offset`` into ``out`` (1-D
    host uint8, writable); ``copy_one(offset, nbytes)`` the same into a new array.
``lend_one(offset, nbytes)``
    one object's bytes as a read-only 1-D host uint8 array, to be read at once and
    dropped while the pool's lock is held: a copy by default; host RAM lends the arena's
    own bytes, so a decoder reads them where they lie (Linux's zsmalloc does the same
    for zswap: ``zs_obj_read_begin`` maps an object in place when it can and copies it
    only when it must). A lent view is never written through and never kept.

Device memory may also take and give device buffers directly (``device_resident``):

``scatter_device(payload, src_starts, dst_offsets, lengths)``
    copy-in from a buffer already in the arena's memory (device to device), so blocks a
    device codec produced never cross PCIe.
``gather_device(offsets, lengths)``
    copy-out into a fresh packed buffer in the arena's memory (a copy, never a view).

A test policy may ask the pool to be hostile to its own callers' assumptions:
``hostility`` is None for every real storage, or a :class:`Hostility` the pool reads once
when it opens and then acts on itself (it migrates objects and scrambles handles: the
storage never sees a handle and never drives the pool).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Hostility", "Storage"]


class Hostility(NamedTuple):
    """How hostile a test storage wants the pool above it to be (``Storage.hostility``).

    The pool reads it once and acts through its own verbs; the storage is never called
    back. Hostility per call is bounded by the call, never by the pool's size, so a
    hostile pool runs at any size.
    """

    #: every random choice the pool makes for the policy (seeded by the storage, so a
    #: failing run replays)
    rng: np.random.Generator
    #: before each public operation on objects the pool migrates (:meth:`Pool.migrate`)
    #: this many random live objects, plus ``migrate_per_object`` per object the call
    #: names: an address remembered across two calls is wrong
    migrate_per_call: int
    migrate_per_object: int
    #: the pool XORs a random key (drawn from ``rng``) into every handle it hands out,
    #: so arithmetic on handles, or another pool's handles, fail loudly
    scramble_handles: bool


class Storage:
    """Base class of every storage; subclasses are named by where bytes live."""

    #: short name shown in ``stats()['backend']``
    kind = "abstract"
    #: how hostile the pool must be (a :class:`Hostility`); None: not at all
    hostility: Hostility | None = None
    #: True when ``discard`` / ``discard_one`` do something (scrub freed ranges); the
    #: pool's single free skips the call otherwise
    scrubs_freed = False
    #: where the arena starts in this process's memory, for the pool's compiled door
    #: (devpool.pool.door); 0 for memory the CPU cannot address (device memory)
    address = 0
    #: True when the arena is device memory that implements the ``*_device`` verbs
    device_resident = False

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = int(capacity_bytes)
        self._committed = 0

    # --- required verbs -------------------------------------------------------------
    def commit(self, offset: int, nbytes: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement commit()")

    def release(self, offset: int, nbytes: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement release()")

    def scatter(self, payload: np.ndarray, src_starts: np.ndarray,
                dst_offsets: np.ndarray, lengths: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement scatter()")

    def gather(self, offsets: np.ndarray, lengths: np.ndarray,
               out: np.ndarray, out_starts: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement gather()")

    def move(self, src_offsets: np.ndarray, dst_offsets: np.ndarray,
             lengths: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement move()")

    # --- single objects: one copy each (defaults: a batch of one) --------------------
    def write_one(self, offset: int, data: np.ndarray) -> None:
        """Copy ``data`` (1-D uint8, host) to arena ``offset``."""
        self.scatter(data, np.zeros(1, np.int64), np.array([offset], np.int64),
                     np.array([data.size], np.int64))

    def read_one(self, offset: int, out: np.ndarray) -> None:
        """Copy ``out.size`` bytes at arena ``offset`` into ``out`` (1-D uint8, host)."""
        self.gather(np.array([offset], np.int64), np.array([out.size], np.int64), out,
                    np.zeros(1, np.int64))

    def copy_one(self, offset: int, nbytes: int) -> np.ndarray:
        """The object at arena ``offset`` as a fresh, writable 1-D uint8 host array
        (``read_one`` into a new array; a storage may make the copy in one step)."""
        out = np.empty(nbytes, np.uint8)
        self.read_one(offset, out)
        return out

    def discard_one(self, offset: int, nbytes: int) -> None:
        """One freed range (see :meth:`discard`)."""
        self.discard(np.array([offset], np.int64), np.array([nbytes], np.int64))

    def lend_one(self, offset: int, nbytes: int) -> np.ndarray:
        """The object at arena ``offset`` as a read-only 1-D uint8 host array (a copy
        here; a storage in host RAM may lend its arena's bytes instead)."""
        out = np.empty(nbytes, np.uint8)
        self.read_one(offset, out)
        out.flags.writeable = False          # as a lent view is: one kind for every decoder
        return out

    # --- optional -------------------------------------------------------------------
    def is_device_buffer(self, obj) -> bool:
        """True when ``obj`` is a buffer in this storage's memory (never, for host RAM)."""
        return False

    def scatter_device(self, payload, src_starts: np.ndarray, dst_offsets: np.ndarray,
                       lengths: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__} holds no device memory")

    def gather_device(self, offsets: np.ndarray, lengths: np.ndarray):
        raise NotImplementedError(f"{type(self).__name__} holds no device memory")

    def reserve(self, end: int) -> None:
        """A batch is about to commit segments up to ``end``: a storage that grows in one
        piece (a device arena) grows once, here, instead of once per segment. Raises
        :class:`~devpool.PoolFullError` like ``commit``; the default does nothing."""

    def discard(self, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Freed ranges: nothing to do unless the storage wants to scrub them."""

    def populate(self, offset: int, nbytes: int) -> None:
        """A committed range that single objects will fill: back it with memory now, if
        the storage is lazily backed (advice: never raises; the default does nothing)."""

    def trim(self) -> None:
        """After a run of ``release`` calls: give back what can only go in bulk."""

    @property
    def committed_bytes(self) -> int:
        """Bytes of the memory kind this arena holds right now."""
        return self._committed

    def describe(self) -> dict:
        """Facts for ``stats()`` / ``devpool info``: backend name, device, ..."""
        return {"backend": self.kind}

    def close(self) -> None:
        """Give every byte back; the storage is unusable afterwards."""
