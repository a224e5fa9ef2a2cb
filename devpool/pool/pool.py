"""The pool contract: opaque handles over allocator + storage, batch first.

A :class:`Pool` joins the one :class:`~devpool.pool.allocator.Allocator` (where objects
live) with a :class:`~devpool.pool.storage.Storage` (what memory holds them). Rules it keeps:

1. Nothing it returns aliases pool memory: every read is a fresh copy, every write
   copies in.
2. Handles are opaque, generation-checked integers; a freed, stale or foreign handle
   raises :class:`~devpool.InvalidHandleError` and never reads anyone's bytes.
3. Objects may move between any two calls (compaction); handles stay valid.
4. Every verb has a batch form costing O(1) storage calls, and a single-object form
   that is not a batch of one: one handle decode, one bump placement, one storage copy
   (``write_one`` / ``read_one``), a few scalar updates. Both obey the same rules.
5. Bad input raises a :class:`~devpool.DevpoolError` naming the problem *before* any
   state changes: every check runs first, the allocator commits last.

Every public method holds one re-entrant lock, so a pool is safe to share between
threads (the copies themselves run in numba or on the device, without the GIL).

Under a hostile storage (``storage.hostility``, the chaos test policy) the pool turns on
its own callers' assumptions: before each operation on objects it migrates a few random
live objects, and one more per object the call names (:meth:`Pool.migrate`); it scrambles every
handle with a random key. The storage only states the policy; the pool acts on it.

Here: the contract's verbs. Where objects move (cleaning as frees go, compaction,
migration) is :mod:`.moving`; how every verb takes the lock, :mod:`.locked`.
"""

from __future__ import annotations

import threading

import numpy as np

from .allocator import _M_HANDLE, _M_OFF, _M_SIZE, Allocator, aligned
from .._checks import (PAGE_SIZE, U8, as_int_array, check_flag, check_int, first_range_outside,
                       plain_view)
from .._packed import packed_starts
from .._errors import BadInputError, InvalidHandleError, PoolClosedError, PoolFullError
from . import door as _door
from .door import DOOR_ALLOC, DOOR_ARENA, DOOR_OPEN, DOOR_FIELDS, NOT_DONE
from .._compiled import JIT, bind
from .locked import BATCH, ONE, QUERY, locked
from .moving import Moving
from .storage import Storage

__all__ = ["Pool", "PAGE_SIZE", "DEFAULT_SEGMENT_BYTES"]

#: 256 KiB segments: the partly filled tail of each costs ~0.3 % of it at LZ4 page sizes
DEFAULT_SEGMENT_BYTES = 256 * 1024


_NO_ARG = object()          # read_with's arg left out


def _as_bytes_array(data, what: str) -> np.ndarray:
    """A read-only-OK, 1-D, C-contiguous, plain (no subclass) uint8 view of caller data,
    or BadInputError. Plain: the single verbs' compiled calls take it unchecked, and a
    subclass may stay 2-D through ``reshape(-1)`` (``np.matrix``)."""
    if isinstance(data, np.ndarray):
        arr = plain_view(data)
    else:
        try:
            arr = np.frombuffer(memoryview(data), dtype=np.uint8) if not isinstance(data, (list, tuple)) \
                else None
        except (TypeError, ValueError, BufferError) as exc:     # BufferError: a strided memoryview
            raise BadInputError(f"{what} must be a bytes-like object or uint8 array: {exc}") from exc
        if arr is None:
            raise BadInputError(f"{what} must be a bytes-like object or uint8 array, got {type(data).__name__}")
    if arr.dtype != np.uint8:
        raise BadInputError(f"{what} must have dtype uint8, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise BadInputError(f"{what} must be C-contiguous")
    return arr.reshape(-1)


def _check_out(out, nbytes: int) -> np.ndarray:
    """The caller's copy-out buffer: writable, contiguous uint8 of exactly ``nbytes``, as
    a plain 1-D view (:func:`_as_bytes_array`: a subclass may stay 2-D)."""
    if isinstance(out, np.ndarray):
        out = plain_view(out)
    else:
        try:
            out = np.frombuffer(memoryview(out), dtype=np.uint8)
        except (TypeError, ValueError, BufferError) as exc:     # BufferError: a strided memoryview
            raise BadInputError(f"out must be a writable uint8 buffer: {exc}") from exc
    if out.dtype != np.uint8:
        raise BadInputError(f"out must have dtype uint8, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise BadInputError("out must be C-contiguous")
    if not out.flags.writeable:
        raise BadInputError("out is read-only")
    if out.size != nbytes:
        raise BadInputError(f"out holds {out.size} bytes, the objects need {nbytes}")
    return out if out.ndim == 1 else out.reshape(-1)


def _limit(max_total) -> int | None:
    """A caller's ``max_total``: None, or a byte count as a Python int (BadInputError
    else). Used as given, np.uint64(100) minus the committed bytes wrapped to near 2**64
    (no limit at all), True was a 1-byte limit and a negative one made the pool repack
    itself for a store it could never take."""
    return None if max_total is None else check_int(max_total, "max_total", lo=0)


def _as_handles(handles) -> np.ndarray:
    """Handles as int64; anything that is not an integer is a malformed handle, as in
    the single verbs (InvalidHandleError)."""
    return as_int_array(handles, "handles", error=InvalidHandleError)


class Pool(Moving):
    """A compressed-object pool: opaque handles, batched copy-in / copy-out.

    Build one with :func:`devpool.open_pool`. ``capacity_bytes`` is a ceiling: storage
    grows in segments as objects arrive and gives segments back after compaction.
    """

    def __init__(self, storage: Storage, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 max_object_bytes: int = PAGE_SIZE, backend_reason: str = ""):
        self.storage = storage
        #: the storage's test policy (a :class:`~devpool.pool.storage.Hostility`) or None
        self._hostility = storage.hostility
        key = 0
        if self._hostility is not None and self._hostility.scramble_handles:
            key = int(self._hostility.rng.integers(1, 1 << 62))
        self.alloc_ = Allocator(storage.capacity_bytes, segment_bytes, max_object_bytes, handle_key=key)
        self._lock = threading.RLock()
        self._closed = False
        self._lending = False          # read_with's consume is running (see there)
        self._scrubs = storage.scrubs_freed   # discard_one does something: call it
        # True when _enter must run before a verb: closed, lending, or hostile (one
        # test on the single verbs' path instead of three)
        self._slow = self._hostility is not None
        self.backend_reason = backend_reason
        self._counters = {"alloc_fail": 0, "compactions": 0, "clean_fail": 0,
                          "hostile_calls": 0, "migrated_objects": 0}
        #: bytes of freed segments kept for reuse (1/16 of capacity, at most 8 MiB, and
        #: never more than 1/64 of the live bytes: spares count in pool_total_size)
        self._spare_budget = min(8 << 20, self.alloc_.capacity // 16)
        self._clean_after = 0          # see _maybe_clean
        # into the allocator's meta, for its free: what CLEAN_TRIGGER names now (a value
        # set on the class, as when it was a plain class attribute, holds for new pools)
        self._set_clean_trigger(self.CLEAN_TRIGGER)
        self._repacked_at = -1         # see Moving._repack
        self._clean_seconds = 0.0      # time spent in cleaning steps
        #: the door for compiled callers (see devpool.pool.door): open where the storage
        #: is host RAM it can address, no hostile policy acts and nothing is freed by
        #: scrubbing; shut whenever ``_slow`` holds (closed, lending)
        door = np.zeros(DOOR_FIELDS, np.int64)
        door[DOOR_ALLOC] = self.alloc_.meta.ctypes.data
        door[DOOR_ARENA] = storage.address
        self._door_opens = JIT and bool(storage.address) and not self._slow and not self._scrubs
        door[DOOR_OPEN] = self._door_opens
        self._door = memoryview(door)          # ours to change, the caller's to read
        # (over a read-only memoryview, as the arena's loans: a view's flag could be set
        # writable again, and then a closed pool's door opened onto unmapped memory)
        self.door = np.frombuffer(self._door.toreadonly(), np.int64)
        if self._door_opens:                   # the single verbs' compiled calls, through it
            alive = [door, self.alloc_, storage]
            self._alloc1, self._alloc_w1, self._write1, self._read1, self._size1, self._free1 = (
                bind(f, door, alive) for f in (_door.alloc_one, _door.alloc_write_one, _door.write_one,
                                               _door.read_one, _door.size_one, _door.free_one))
        self._max_object = self.alloc_.max_object      # (the single verbs' test, one lookup)

    def _enter(self, kind=ONE) -> None:
        """The checks behind ``_slow``, made after taking the lock: a closed pool
        refuses; while ``read_with`` lends a block, every verb on objects refuses (a
        consume that called back into the pool could free, move or close what it is
        reading: the lock is re-entrant); under a hostile policy, a verb on one object
        provokes a hostile step (a batch verb does so itself, once it knows its size)."""
        if self._closed:
            raise PoolClosedError("the pool is closed")
        if kind is QUERY:
            return
        if self._lending:
            raise BadInputError("read_with's consume called back into the pool it is reading; "
                                "a lent block must be consumed without touching the pool")
        if kind is ONE and self._hostility is not None:
            self._provoke(1)

    def _provoke(self, named: int) -> None:
        """The hostile policy's step before a call naming ``named`` objects: migrate a
        few random live objects and more per object named (bounded by the call, not
        the pool)."""
        h = self._hostility
        self._counters["hostile_calls"] += 1
        self.migrate(h.migrate_per_call + h.migrate_per_object * named, rng=h.rng)   # public: a subclass sees it

    # --- context manager -------------------------------------------------------------
    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.alloc_.live_objects} objects"
        return f"<devpool.Pool backend={self.storage.kind!r} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lock(self) -> threading.RLock:
        """The re-entrant lock every verb holds: hold it to make several calls one step
        (and around every call through :attr:`door`)."""
        return self._lock

    @property
    def backend(self) -> str:
        return self.storage.kind

    @property
    def max_object_bytes(self) -> int:
        return self.alloc_.max_object

    @property
    def segment_bytes(self) -> int:
        """The unit the pool grows and shrinks by."""
        return self.alloc_.seg_bytes

    @property
    def capacity_bytes(self) -> int:
        """The ceiling the pool may grow to."""
        return self.alloc_.capacity

    @property
    def device_resident(self) -> bool:
        """True when the bytes live in device memory and device buffers may be written
        and read directly (``write_batch`` with a device payload, ``read_batch(device=True)``)."""
        return self.storage.device_resident

    @property
    def total_bytes(self) -> int:
        """``pool_total_size`` without building the whole stats dict (a hot-path read)."""
        return self.storage.committed_bytes

    # --- segments <-> storage (the allocator decides which; the pool tells storage) -----
    def _commit_segments(self, segs: np.ndarray) -> None:
        """Make segments usable (a spare needs nothing); all or nothing."""
        sb = self.alloc_.seg_bytes
        cold = self.alloc_.cold(segs)
        done = []
        if cold.size:
            self.storage.reserve((int(cold.max()) + 1) * sb)   # one growth for the batch
        try:
            for s in cold.tolist():
                self.storage.commit(s * sb, sb)
                done.append(s)
        except BaseException:
            for s in done:
                self.storage.release(s * sb, sb)
            self.storage.trim()
            raise
        self.alloc_.held(segs)                     # only once the commit stands

    def _spare_room(self) -> int:
        """How many spare segments the pool keeps: 1/16 of capacity, at most 8 MiB, at
        most 1/64 of the live bytes but two segments at least."""
        sb = self.alloc_.seg_bytes
        return min(self._spare_budget, max(2 * sb, self.alloc_.live_aligned // 64)) // sb

    def _release_segments(self, segs: np.ndarray, keep_spares: bool = True, budget: int | None = None) -> None:
        """Freed segments become spares; past the budget (``budget`` spares when given)
        the highest go back to storage."""
        sb = self.alloc_.seg_bytes
        if budget is None:
            budget = self._spare_room() if keep_spares else 0
        give = self.alloc_.retire(segs, budget)
        if give.size:
            for s in give.tolist():
                self.storage.release(s * sb, sb)
            self.storage.trim()

    # --- allocation ------------------------------------------------------------------
    @locked(kind=BATCH)
    def alloc_batch(self, sizes, *, max_total: int | None = None) -> np.ndarray:
        """Allocate one object per size; returns their handles (int64 array).

        Raises InvalidSizeError for a size outside 1..max_object_bytes and PoolFullError
        when the batch does not fit even after cleaning; nothing is allocated then.

        ``max_total`` (a limit such as zswap's): allocate only the longest prefix of
        ``sizes`` that keeps ``pool_total_size`` within it, cleaning dead bytes first if
        that makes room; the handles returned are that prefix's (maybe none). Decided in
        the same locked call as the allocation, so nothing can move in between.
        """
        sizes = self.alloc_.check_sizes(sizes)
        max_total = _limit(max_total)
        if self._hostility is not None:
            self._provoke(sizes.size)
        if max_total is not None:
            sizes = sizes[:self._within(sizes, max_total)]
            if not sizes.size:
                return np.zeros(0, np.int64)
        plan = self.alloc_.plan(sizes)
        if plan is None:                       # clean under pressure, then retry
            plan = self._under_pressure(int(aligned(sizes).sum()), lambda: self.alloc_.plan(sizes))
        if plan is None:
            self._counters["alloc_fail"] += 1
            raise PoolFullError(
                f"pool full: {sizes.shape[0]} objects ({int(aligned(sizes).sum())} bytes) do not fit "
                f"in capacity {self.alloc_.capacity} ({self.alloc_.live_bytes} bytes live)")
        self.alloc_.ensure_slots(sizes.shape[0])   # a full handle table refuses before storage grows
        self._commit_segments(plan.opened)     # fallible: device OOM -> PoolFullError
        slots = self.alloc_.commit_alloc(sizes, plan)
        return self.alloc_.handles(slots)

    # --- a limit on the pool's size, checked with the allocation --------------------------
    def _growth(self, sizes: np.ndarray) -> int:
        """Bytes ``pool_total_size`` grows by if ``sizes`` are placed now (more than the
        capacity when they do not fit)."""
        plan = self.alloc_.plan(sizes)
        return self.alloc_.capacity + 1 if plan is None else self.alloc_.cold(plan.opened).size * self.alloc_.seg_bytes

    def _growth_one(self, placed) -> int:
        """:meth:`_growth` of one object placed by ``place_one``: a segment when it opens
        a cold one, nothing in the head or a spare, more than the capacity if unplaced."""
        if placed is None:
            return self.alloc_.capacity + 1
        seg = placed[1]                             # opened, or -1: the head had room
        return self.alloc_.seg_bytes if seg >= 0 and not self.alloc_.seg_warm[seg] else 0

    def _fitting(self, sizes: np.ndarray, room: int) -> int:
        """How many of ``sizes`` (a prefix) fit in ``room`` more bytes: one placement
        when all do, a binary search over prefixes when not."""
        if room < 0:
            return 0
        if self._growth(sizes) <= room:
            return sizes.size
        lo, hi = 0, sizes.size - 1          # lo fits, hi + 1 does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._growth(sizes[:mid]) <= room:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _within(self, sizes: np.ndarray, max_total: int) -> int:
        """The longest prefix of ``sizes`` that keeps ``pool_total_size`` within
        ``max_total``. Dead bytes and spare segments are not pressure: when the prefix is
        short, give the spares back (they count in the total), then clean in bounded
        steps sized to what is still missing (the emptiest segments: the work follows
        the call, not the pool), and only if dead bytes would hold the rest and no step
        frees anything, repack every segment so the free space gathers behind the last
        object (a whole-pool pass, not repeated while no object has left its place since
        the last one: the layout is packed already, so another would move every byte
        and gather nothing; any byte that leaves may let the next one help)."""
        keep = self._fitting(sizes, max_total - self.storage.committed_bytes)
        if keep == sizes.size:
            return keep
        al, none = self.alloc_, np.zeros(0, np.int64)
        need = int(aligned(sizes[keep:keep + 1]).sum())
        if al.dead_bytes < need and not al.spare_segments:
            return keep
        if al.spare_segments:
            self._release_segments(none, keep_spares=False)
            keep = self._fitting(sizes, max_total - self.storage.committed_bytes)
        while keep < sizes.size and al.dead_bytes >= need:
            plan = al.plan_clean(int(aligned(sizes[keep:]).sum()), self.CLEAN_STEP_SEGMENTS)
            if plan is None:
                break
            self._execute_clean(plan)
            self._release_segments(none, keep_spares=False)
            more = self._fitting(sizes, max_total - self.storage.committed_bytes)
            if more == keep:
                break
            keep = more
        if keep < sizes.size and self._repack(need):
            self._release_segments(none, keep_spares=False)
            keep = self._fitting(sizes, max_total - self.storage.committed_bytes)
        return keep

    @locked(kind=QUERY)      # a question about placement, not an operation on objects
    def growth_for(self, sizes) -> int:
        """Bytes by which ``pool_total_size`` would grow if ``sizes`` were allocated now.

        Counts whole segments, tails included (0 when the batch fits in open or spare
        segments); a batch that would need cleaning or does not fit answers more than
        the capacity. Changes nothing.
        """
        return self._growth(self.alloc_.check_sizes(sizes))

    def growth_for_one(self, size: int) -> int:
        """:meth:`growth_for` of one object of ``size``."""
        with self._lock:
            if self._closed:
                raise PoolClosedError("the pool is closed")
            return self._growth_one(self.alloc_.place_one(self.alloc_.check_size(size)))

    def alloc(self, nbytes: int, *, data=None, max_total: int | None = None) -> int | None:
        """Allocate one object of ``nbytes``; returns its handle (see :meth:`alloc_batch`).

        With ``data`` (exactly ``nbytes`` of host bytes) the object is also written: one
        call instead of ``alloc`` + ``write``, and nothing is allocated when ``data`` is bad.
        With ``max_total``, the object is allocated only if ``pool_total_size`` stays
        within it (after cleaning, as :meth:`alloc_batch`); else None, nothing allocated.
        """
        lock = self._lock
        try:                            # (not ``with``: devpool._locking says why and how)
            lock.acquire()
            handle = 0
            # the common case in one compiled call through the door: room in the open
            # segment (which grows nothing, so a valid limit has nothing to say); it
            # places, records and names the object (and copies it in). A shut door
            # (closed, lending), data that is not plain, or no room answers 0, changing
            # nothing: the long way says why
            if (self._door_opens and type(nbytes) is int and 0 < nbytes <= self._max_object
                    and (max_total is None or type(max_total) is int and max_total >= 0)):
                if data is None:
                    handle = self._alloc1(nbytes)
                elif (type(data) is np.ndarray and data.dtype is U8 and data.ndim == 1
                      and data.shape[0] == nbytes):
                    handle = self._alloc_w1(data)        # (0 for strided data too)
            if not handle:
                handle = self._alloc_long(nbytes, data, max_total)
        except BaseException:
            try:                        # nothing may run before the release: devpool._locking
                lock.release()
            except RuntimeError:        # an interrupted wait: no level of ours to give back
                pass
            raise
        lock.release()
        return handle

    def _alloc_long(self, nbytes, data, max_total) -> int | None:
        """:meth:`alloc`, every case (under the lock)."""
        if data is not None and not (type(data) is np.ndarray and data.dtype is U8
                                     and data.ndim == 1 and data.flags.c_contiguous):
            data = _as_bytes_array(data, "data")
        if max_total is not None and (type(max_total) is not int or max_total < 0):
            max_total = _limit(max_total)
        if self._slow:                      # locked's test, inline
            self._enter()
        al = self.alloc_
        size = nbytes if type(nbytes) is int and 0 < nbytes <= al.max_object else al.check_size(nbytes)
        if data is not None and data.size != size:
            raise BadInputError(f"data holds {data.size} bytes, the object needs {size}")
        if self._door_opens:
            handle = self._alloc1(size) if data is None else self._alloc_w1(data)
            if handle:
                return handle
            slot = -1
        else:
            slot = al._bump1(size)
        if slot >= 0:
            m = al._mm
            offset, handle = m[_M_OFF], m[_M_HANDLE]
        else:
            if max_total is not None and not self._fits_one(size, max_total):
                return None
            slot, offset, handle = self._alloc_one(size)
        if data is not None:
            try:
                self.storage.write_one(offset, data)
            except BaseException:
                self._free_slot(slot)
                raise
        return handle

    def _fits_one(self, size: int, max_total: int) -> bool:
        """:meth:`_within` for one object, with the common case first: the head segment
        (or a spare) has room, so the pool does not grow at all."""
        if self._growth_one(self.alloc_.place_one(size)) == 0:
            return True
        return self._within(np.array([size], np.int64), max_total) == 1

    def _alloc_one(self, size: int):
        """Allocate one object (a valid size) the long way: a new segment, cleaning
        under pressure, a growing table; returns ``(slot, offset, handle)``."""
        al = self.alloc_
        placed = al.place_one(size)
        if placed is None:                     # clean under pressure, then retry
            placed = self._under_pressure(aligned(size), lambda: al.place_one(size))
        if placed is None:
            self._counters["alloc_fail"] += 1
            raise PoolFullError(f"pool full: an object of {size} bytes does not fit in capacity "
                                f"{al.capacity} ({al.live_bytes} bytes live)")
        offset, opened = placed
        if opened >= 0:
            al.ensure_slots(1)                 # a full handle table refuses before storage grows
            self._commit_segments(np.array([opened], np.int64))   # fallible: before commit
            # single objects fill it from here, one by one (the compiled single stores
            # among them): backed now, not a page fault every few of them. Advice: a
            # storage that fails to give it costs the allocation nothing (raising here
            # would leave the segment committed and counted, with no object in it)
            try:
                self.storage.populate(opened * al.seg_bytes, al.seg_bytes)
            except Exception:
                pass
        slot = al.commit_one(size, offset, opened)
        return slot, offset, al._mm[_M_HANDLE]

    # --- copy-in ---------------------------------------------------------------------
    def _payload(self, payload) -> tuple[object, int]:
        """(buffer, bytes) of a write's source: host bytes, or a device buffer the
        storage's memory can read directly."""
        if not isinstance(payload, np.ndarray) and self.storage.is_device_buffer(payload):
            if payload.dtype != np.uint8 or len(payload.shape) != 1:
                raise BadInputError(f"a device payload must be 1-D uint8, got {payload.dtype} {payload.shape}")
            return payload, int(payload.shape[0])
        if not isinstance(payload, np.ndarray) and (hasattr(payload, "__cuda_array_interface__")
                                                    or hasattr(payload, "copy_to_host")):
            raise BadInputError(f"payload is in device memory, but this pool's storage "
                                f"({self.storage.kind}) holds host memory: copy it to the host first")
        data = _as_bytes_array(payload, "payload")
        return data, data.size

    @locked(kind=BATCH)
    def write_batch(self, handles, payload, lengths=None, *, src_starts=None) -> None:
        """Copy ``payload`` into the objects, ``lengths[i]`` bytes to ``handles[i]``.

        ``payload`` is 1-D uint8 (or bytes-like) holding the objects back to back, or at
        ``src_starts[i]`` when given (ranges may be anywhere, in any order). Each length
        must equal its object's allocated size; ``lengths`` may be omitted. On a pool
        whose storage is device memory (``device_resident``), ``payload`` may be a
        device buffer: it is copied device to device.
        """
        hs = _as_handles(handles)
        data, nbytes = self._payload(payload)
        if self._hostility is not None:
            self._provoke(hs.size)
        slots = self.alloc_.decode(hs, check_duplicates=True)
        offsets, sizes = self.alloc_.location(slots)
        if lengths is not None:
            lens = as_int_array(lengths, "lengths")
            if lens.shape != hs.shape:
                raise BadInputError(f"lengths has shape {lens.shape}, handles {hs.shape}")
            bad = np.flatnonzero(lens != sizes)
            if bad.size:
                i = int(bad[0])
                raise BadInputError(f"length {int(lens[i])} at batch index {i} differs from the "
                                    f"object's allocated size {int(sizes[i])}")
        if src_starts is None:
            total = int(sizes.sum())
            if nbytes != total:
                raise BadInputError(f"payload holds {nbytes} bytes, the objects need {total}")
            starts = packed_starts(sizes)
        else:
            starts = as_int_array(src_starts, "src_starts")
            if starts.shape != hs.shape:
                raise BadInputError(f"src_starts must be shaped like handles {hs.shape}, got {starts.shape}")
            i = first_range_outside(starts, sizes, nbytes)
            if i >= 0:
                raise BadInputError(f"object {i} at src_starts {int(starts[i])} (+{int(sizes[i])} bytes) "
                                    f"lies outside the {nbytes}-byte payload")
        if not hs.size:
            return
        if isinstance(data, np.ndarray):
            self.storage.scatter(data, starts, offsets, sizes)
        else:
            self.storage.scatter_device(data, starts, offsets, sizes)

    def _write_device(self, slots, data) -> None:
        offsets, sizes = self.alloc_.location(np.asarray(slots, np.int64))
        if int(sizes.sum()) != int(data.shape[0]):
            raise BadInputError(f"payload holds {int(data.shape[0])} bytes, the objects need {int(sizes.sum())}")
        self.storage.scatter_device(data, np.zeros(1, np.int64), offsets, sizes)

    def write(self, handle: int, data) -> None:
        """Copy ``data`` (exactly the object's size) into the object: one storage copy."""
        lock = self._lock
        try:                            # (not ``with``: devpool._locking says why and how)
            lock.acquire()
            # one compiled call decodes, checks and copies (``is``: the dtype is numpy's own
            # uint8 object; ``==`` converted np.uint8 on every call, ~60 ns); it answers
            # NOT_DONE, changing nothing, for a shut door, a size or a stride it does not take
            got = NOT_DONE
            if (self._door_opens and type(handle) is int and type(data) is np.ndarray
                    and data.dtype is U8 and data.ndim == 1):
                try:
                    got = self._write1(handle, data)
                except OverflowError:                       # no int64: the long way says why
                    pass
            if got == NOT_DONE:
                self._write_long(handle, data)
        except BaseException:
            try:                        # nothing may run before the release: devpool._locking
                lock.release()
            except RuntimeError:        # an interrupted wait: no level of ours to give back
                pass
            raise
        lock.release()

    def _write_long(self, handle, data) -> None:
        """:meth:`write`, every case (under the lock)."""
        if not (type(data) is np.ndarray and data.dtype is U8 and data.ndim == 1 and data.flags.c_contiguous):
            data = self._payload(data)[0]
        if self._slow:                      # locked's test, inline
            self._enter()
        slot, offset, size = self.alloc_.decode_one(handle)
        if not isinstance(data, np.ndarray):       # a device buffer
            return self._write_device([slot], data)
        if data.size != size:
            raise BadInputError(f"data holds {data.size} bytes, the object's allocated size is {size}")
        self.storage.write_one(offset, data)          # 1-D: the test above, or _payload's view

    # --- copy-out --------------------------------------------------------------------
    @locked(kind=BATCH)
    def read_batch(self, handles, out=None, *, device: bool = False) -> tuple[object, np.ndarray]:
        """Copy objects out: returns ``(payload, lengths)``, payload packed back to back.

        ``out`` may be a writable uint8 buffer of exactly the total size to fill instead.
        ``device=True`` (only where ``device_resident``) returns the payload as a fresh
        buffer in device memory, for a device decoder: nothing crosses PCIe but metadata.
        """
        hs = _as_handles(handles)
        if device:
            if not self.storage.device_resident:
                raise BadInputError(f"read_batch(device=True) needs a pool in device memory; "
                                    f"this pool's storage is {self.storage.kind}")
            if out is not None:
                raise BadInputError("read_batch(device=True) returns a fresh device buffer; out must be None")
        if self._hostility is not None:
            self._provoke(hs.size)
        slots = self.alloc_.decode(hs)
        offsets, sizes = self.alloc_.location(slots)
        if device:
            return self.storage.gather_device(offsets, sizes), sizes.copy()
        total = int(sizes.sum())
        buf = np.empty(total, np.uint8) if out is None else _check_out(out, total)
        if hs.size:
            self.storage.gather(offsets, sizes, buf, packed_starts(sizes))
        return buf, sizes.copy()

    def read(self, handle: int, out=None, *, free: bool = False) -> np.ndarray:
        """Copy one object out (a new uint8 array, or ``out`` filled): one storage copy.

        ``free=True`` frees the object once it is copied out (an exclusive load, as
        zswap's: one call instead of ``read`` + ``free``); if the copy fails, nothing is
        freed.
        """
        lock = self._lock
        try:                            # (not ``with``: devpool._locking says why and how)
            lock.acquire()
            # through the door: a fresh array sized by one compiled call and filled by
            # another (~0.5 us less than a slice's copy after a decode), or the caller's
            # plain ``out`` (writable: the compiled call cannot see the flag; contiguous and
            # of the object's size it checks) filled by one; NOT_DONE changes nothing
            got, filled = NOT_DONE, out
            if self._door_opens and type(handle) is int and (free is False or free is True):
                try:
                    if out is None:
                        size = self._size1(handle)
                        if size != NOT_DONE:
                            got = self._read1(handle, filled := np.empty(size, U8), free)
                    elif (type(out) is np.ndarray and out.dtype is U8 and out.ndim == 1
                          and out.flags.writeable):
                        got = self._read1(handle, out, free)    # decoded, checked, copied (and freed)
                except OverflowError:                       # no int64: the long way says why
                    pass
            if got == NOT_DONE:
                filled = self._read_long(handle, out, free)
            elif got != -1:
                self._settle_free(got)
        except BaseException:
            try:                        # nothing may run before the release: devpool._locking
                lock.release()
            except RuntimeError:        # an interrupted wait: no level of ours to give back
                pass
            raise
        lock.release()
        return filled

    def _read_long(self, handle, out, free) -> np.ndarray:
        """:meth:`read`, every case (under the lock)."""
        if free is not False and free is not True:      # check_flag's test, inline
            free = check_flag(free, "free")
        if self._slow:                      # locked's test, inline
            self._enter()
        slot, offset, size = self.alloc_.decode_one(handle)
        if out is None:
            out = self.storage.copy_one(offset, size)
        else:
            if not (type(out) is np.ndarray and out.size == size and out.dtype is U8 and out.ndim == 1
                    and (flags := out.flags).c_contiguous and flags.writeable):
                out = _check_out(out, size)
            self.storage.read_one(offset, out)
        if free:
            self._free_slot(slot)
        return out

    def read_with(self, handle: int, consume, arg=_NO_ARG, *, free: bool = False):
        """Call ``consume(block)`` (``consume(block, arg)`` when ``arg`` is given) on one
        object's bytes where they lie and return what it returns: a decoder reads a
        block in place instead of copying it out first (zswap decompresses from
        zsmalloc so: ``zs_obj_read_begin``/``_end``).

        ``block`` is a read-only 1-D uint8 host array, valid only during the call: host
        RAM lends the arena's own bytes (never keep them, never write through them),
        other storages a copy. ``free=True`` frees the object once ``consume`` returned
        something other than None; None (it refused the bytes: a corrupt block) or an
        exception frees nothing.
        """
        if free is not False and free is not True:      # check_flag's test, inline
            free = check_flag(free, "free")
        if not callable(consume):
            raise BadInputError(f"consume must be callable, got {type(consume).__name__}")
        with self._lock:
            if self._slow:                      # locked's test, inline
                self._enter()
            slot, offset, size = self.alloc_.decode_one(handle)
            # the lock is re-entrant: a consume that called back into the pool could
            # free, move or close what it is reading; every verb refuses until it returns
            slow, self._lending, self._slow = self._slow, True, True
            door = self._door
            door[DOOR_OPEN] = 0                    # and so does the compiled door
            try:
                block = self.storage.lend_one(offset, size)
                # one optional argument, not *args: packing a tuple cost ~60 ns a load
                result = consume(block) if arg is _NO_ARG else consume(block, arg)
            finally:
                self._lending, self._slow = False, slow
                door[DOOR_OPEN] = self._door_opens and not self._closed
            if free and result is not None:
                self._free_slot(slot)
            return result

    @locked
    def size_of(self, handle: int) -> int:
        """The allocated size of the object ``handle`` names."""
        return self.alloc_.decode_one(handle)[2]

    # --- free ------------------------------------------------------------------------
    @locked(kind=BATCH)
    def free_batch(self, handles) -> None:
        """Free every object; a stale, foreign or repeated handle frees none."""
        hs = _as_handles(handles)
        if self._hostility is not None:
            self._provoke(hs.size)
        slots = self.alloc_.decode(hs, check_duplicates=True)
        offsets, asz, released = self.alloc_.free(slots)
        self.storage.discard(offsets, asz)
        self._release_segments(released)
        self._maybe_clean()

    def free(self, handle: int) -> None:
        """Free one object; its handle (and any copy of it) is stale from now on."""
        lock = self._lock
        try:                            # (not ``with``: devpool._locking says why and how)
            lock.acquire()
            got = NOT_DONE
            if self._door_opens and type(handle) is int:
                try:
                    got = self._free1(handle)               # decoded, checked and freed
                except OverflowError:                       # no int64: the long way says why
                    pass
            if got == NOT_DONE:
                if self._slow:                  # locked's test, inline
                    self._enter()
                self._free_slot(self.alloc_.decode_one(handle)[0])
            elif got != -1:
                self._settle_free(got)
        except BaseException:
            try:                        # nothing may run before the release: devpool._locking
                lock.release()
            except RuntimeError:        # an interrupted wait: no level of ours to give back
                pass
            raise
        lock.release()

    def _free_slot(self, slot: int) -> None:
        """Free one slot ``decode_one`` validated: one compiled call, which also says whether
        storage, the segments or cleaning need anything (now and then)."""
        self._settle_free(self.alloc_._free1(slot))

    def _settle_free(self, got: int) -> None:
        """Finish a single free in Python: ``got`` is what the allocator's compiled free
        answered (a segment it emptied, CLEAN_DUE, or -1: nothing to do unless the storage
        scrubs freed bytes). For :mod:`devpool.pool.door`'s callers, under :attr:`lock`."""
        if got != -1 or self._scrubs:
            if self._scrubs:
                m = self.alloc_._mm
                self.storage.discard_one(m[_M_OFF], aligned(m[_M_SIZE]))
            if got >= 0:
                self._release_segments(np.array([got], np.int64))
            self._maybe_clean()

    # --- figures and teardown --------------------------------------------------------
    @locked(kind=QUERY)      # reading figures is not an operation on objects
    def stats(self) -> dict:
        """Pool figures (zsmalloc names where one exists) and the backend in use."""
        st = self.alloc_.stats()
        st["pool_total_size"] = self.storage.committed_bytes
        st["spare_bytes"] = self.alloc_.spare_segments * self.alloc_.seg_bytes
        st["pages_compacted"] = st["segments_compacted"] * (self.alloc_.seg_bytes // PAGE_SIZE)
        st["clean_seconds"] = self._clean_seconds
        st.update(self._counters)
        st.update(self.storage.describe())
        st["door_open"] = bool(self._door[DOOR_OPEN])     # single verbs compiled (devpool.pool.door)
        if self.backend_reason:
            st["backend_reason"] = self.backend_reason
        return st

    def close(self) -> None:
        """Free every object and give the arena back; idempotent."""
        with self._lock:
            if self._lending:
                self._enter()                    # refuses: a consume may not close the pool
            if not self._closed:
                self._closed = self._slow = True
                self._door[DOOR_OPEN] = 0
                try:
                    self.storage.close()
                finally:
                    self.alloc_.close()

