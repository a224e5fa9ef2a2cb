"""Zswap: a compressed cache for pages on their way to swap, over any devpool pool.

What it is and when it pays (as mm/zswap.c puts it): pages being swapped out are
compressed into a pool instead of going to the swap device; a later swap-in
decompresses them, which is far cheaper than disk I/O. When the pool reaches its limit
the oldest entries are written back to the real swap file. This frontend models Linux
6.18's zswap, keeps its parameter and debugfs statistic names, and sees only the pool
contract: handles, batched copy-in / copy-out, ``read_with`` (a single load decodes
its block where it lies), ``compact``, ``stats``. It never learns whether the pool
lives in RAM or on a GPU.

With a backing file, ``Zswap`` plays both zswap *and* the swap device: a page zswap
refuses (limit hit, poor compression with writeback off, codec error) is written
straight to the file, as the swap core does after a failed ``zswap_store``; ``store``
returns False ("not cached") and ``load`` finds the page in the file. Without a
backing file a refused page is not kept: the caller still owns it.

A page is never lost: it is in the pool, in the backing file, or the store said it
was refused (and, with a backing file whose write failed, raised).

Two speeds, one set of rules (as ``zswap_store`` calls ``zswap_store_page``): every verb
has a batch form, vectorised over numpy arrays, and a single-page form that works on
Python scalars (a fault is one page, and a zswap hit must cost less than the swap
device it saves). Both call the same deciders: :meth:`Zswap._verdict` (which pages may
be stored, and how), :meth:`Zswap._admitting` (the limit's hysteresis), ``_admit`` /
``_admit_one`` (the limit, checked by the pool with the allocation), :meth:`Zswap._limit_hit`
and :meth:`Zswap._tally_refusals`.

Reading order: statistics, tunables, limits, the deciders, entries, compress /
decompress, writeback (second-chance LRU) and shrinking, then the main API (store,
load, invalidate, batch forms first).
"""

from __future__ import annotations

import os

import numpy as np

from .backing import BackingFile
from .._checks import as_int_array, check_flag, check_int, check_real
from ..codecs import Codec, get_codec
from ..codecs.base import check_pages
from . import one_page
from .entries import ABSENT, FILE, POOL, SAME, EntryTable, as_word
from .one_page import verdict
from .._errors import (
    BadInputError,
    ClosedError,
    CorruptDataError,
    EntryNotFoundError,
    PoolFullError,
    WritebackError,
)
from .._packed import gather, has_duplicates, packed_starts, same_filled, same_filled_one
from ..pool import DOOR_ARENA, Pool, door_settle
from .._compiled import bind
from .._checks import PAGE_SIZE, U8, plain_view

__all__ = ["Zswap"]

# entry states (POOL, SAME, FILE; ABSENT) are the entry table's: see entries.py
_KIND_NAMES = {ABSENT: None, POOL: "pool", SAME: "same_filled", FILE: "backing"}

#: pages written back per round of the shrinker: big enough to batch the file I/O,
#: small enough that one store at the limit does not stall on a long writeback
SHRINK_BATCH = 256
#: the largest swap offset + 1: a slot's byte position (offset * 4096) must fit in int64
MAX_NR_PAGES = 1 << 51


def _percent(value, name: str) -> float:
    return check_real(value, name, lo=0, hi=100, lo_open=True)


def _bytes_or_none(value, name: str) -> int | None:
    return None if value is None else check_int(value, name, lo=1)


class _Tunable:
    """A Zswap tunable: read as an attribute; an assignment is checked as the
    constructor's argument is, then the limits are worked out again (a limit that could
    hold nothing is refused, and the tunable keeps its old value)."""

    def __init__(self, check, doc: str = ""):
        self.check = check
        self.__doc__ = doc

    def __set_name__(self, owner, name: str) -> None:
        self.name, self.field = name, "_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj, self.field, None)

    def __set__(self, obj, value) -> None:
        obj._tune(self.field, self.check(value, self.name))


class Zswap:
    """zswap over a devpool pool.

    ``max_pool_percent`` of the pool's capacity (or ``max_pool_bytes``) bounds the pool;
    once hit, stores are refused until usage falls below ``accept_threshold_percent``
    of the limit, and the shrinker writes back meanwhile. ``backing`` is a swap-file
    path (created 0600), a :class:`BackingFile`, or None. ``writeback=False`` forbids
    writeback (and, as in Linux, then refuses incompressible pages). Swap offsets lie
    in ``0..nr_pages-1``; the entry table's memory follows the entries stored.
    """

    max_pool_percent = _Tunable(_percent, "The limit as a share of the pool's capacity.")
    max_pool_bytes = _Tunable(_bytes_or_none, "An absolute limit; overrides max_pool_percent unless None.")
    accept_threshold_percent = _Tunable(_percent, "Once the limit is hit, stores resume below this share of it.")

    # --- statistics (debugfs names); one comment per counter -------------------------
    _COUNTERS = (
        "pool_limit_hit",          # a store found the pool at its limit
        "reject_compress_fail",    # the codec failed on a page
        "reject_compress_poor",    # a page did not compress below PAGE_SIZE, writeback off
        "reject_alloc_fail",       # the pool could not allocate room (full, or too big)
        "reject_reclaim_fail",     # the shrinker's writeback failed while at the limit
        "decompress_fail",         # a stored block failed to decode to one page
        "written_back_pages",      # pages the shrinker / writeback() moved to the file
        "writeback_fail",          # writeback I/O errors (entries stayed in the pool)
        "same_filled_stores",      # stores satisfied by a fill word alone
        "backing_direct_writes",   # refused pages written straight to the backing file
        "loads_from_pool",         # loads served from the pool (or a fill word)
        "loads_from_backing",      # loads served from the backing file
        "backing_read_fail",       # pages the file could not give back (I/O error, short
                                   # read, or a slot that failed its check: lost)
    )

    # --- tunables ----------------------------------------------------------------------
    def __init__(self, pool: Pool, compressor: str | dict | Codec = "lz4", *,
                 max_pool_percent: float = 20, max_pool_bytes: int | None = None,
                 accept_threshold_percent: float = 90, backing=None, writeback: bool = True,
                 nr_pages: int = 1 << 32):
        # every check first; the backing file, the only thing opened, last
        if not isinstance(pool, Pool):
            raise BadInputError(f"pool must be a devpool Pool, got {type(pool).__name__}")
        if pool.closed:
            raise ClosedError("the pool is closed")
        self.pool = pool
        self._max_pool_bytes = self._max_pool_percent = self._accept_threshold_percent = None
        # checked by the setters; the limits are worked out (and checked) once all are set
        self.max_pool_bytes = max_pool_bytes
        self.max_pool_percent = max_pool_percent
        self.accept_threshold_percent = accept_threshold_percent
        self.nr_pages = check_int(nr_pages, "nr_pages", lo=1, hi=MAX_NR_PAGES)
        self._codec = get_codec(compressor)
        self._decode_page = self._codec.decompress_page_trusted     # bound once: a load's decoder
        if not (backing is None or isinstance(backing, (BackingFile, str, bytes, os.PathLike))):
            raise BadInputError(f"backing must be a path, a BackingFile or None, got {type(backing).__name__}")
        if isinstance(backing, (str, bytes)) and ("\0" in backing if isinstance(backing, str) else b"\0" in backing):
            raise BadInputError("backing path contains a NUL byte")
        # a device codec over a pool in device memory keeps blocks on the device: they
        # go into the arena device to device and are decoded there on load
        self._blocks_on_device = bool(self._codec.device_resident and pool.device_resident)
        self._max_object = pool.max_object_bytes   # fixed with the pool: read once, not per store
        # the pool's own lock: one lock for both, so a compiled single page (which
        # changes the pool's tables through its door) holds what the pool's verbs hold
        self._lock = pool.lock
        self._closed = False
        self._decoding = False                     # a single load's decoder is running (see load)
        self._reached_full = False
        self._counters = dict.fromkeys(self._COUNTERS, 0)
        self._scratch = np.zeros(0, np.uint8)      # copy-out staging for decompression
        self._writeback_enabled = bool(writeback) and backing is not None
        # swap offset -> entry; the LRU only where writeback will walk it
        self._t = EntryTable(PAGE_SIZE, lru=self._writeback_enabled)
        # the compiled single page, where it runs
        self._store1 = self._load1 = self._invalidate1 = self._warm1 = None
        liblz4 = self._codec.liblz4
        if liblz4 is not None and pool.door[DOOR_ARENA] != 0 and not self._blocks_on_device:
            self._compile_one_page(*liblz4)
        # the backing file, the only thing opened, last: nothing above may fail after it
        self._own_backing = not (backing is None or isinstance(backing, BackingFile))
        self.backing = BackingFile(backing) if self._own_backing else backing
        if self.backing is not None:
            try:
                self.backing.attach(self)           # one swap file, one owner
            except BaseException:
                if self._own_backing:
                    self.backing.close(remove_created=True)
                raise

    def _compile_one_page(self, functions, acceleration: int) -> None:
        """Bind :mod:`.one_page`'s store and load to this Zswap's tables, its pool's door
        and its codec (a host pool and liblz4's blocks: see there)."""
        ctx = np.zeros(one_page.X_FIELDS, np.int64)
        scratch = np.empty(one_page.BOUND, np.uint8)
        ctx[one_page.X_ENTRIES] = self._t.meta.ctypes.data
        ctx[one_page.X_DOOR] = self.pool.door.ctypes.data
        ctx[one_page.X_FNS] = functions.ctypes.data
        ctx[one_page.X_ACCELERATION] = acceleration
        ctx[one_page.X_WRITEBACK] = self._writeback_enabled
        ctx[one_page.X_MAX_OBJECT] = self._max_object
        ctx[one_page.X_SCRATCH] = scratch.ctypes.data
        self._ctx = memoryview(ctx)
        self._scratch1 = scratch
        # what ctx's addresses lead to, kept alive by the bound calls (see bind): the
        # table and the pool keep the arrays their meta arrays name
        alive = [ctx, scratch, functions, self._t, self.pool]
        self._store1 = bind(one_page.store_one, ctx, alive)
        self._load1 = bind(one_page.load_one, ctx, alive)
        self._invalidate1 = bind(one_page.invalidate_one, ctx, alive)
        self._warm1 = bind(one_page.warm_one, ctx, alive)

    def __enter__(self) -> "Zswap":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:          # never replace the caller's exception
                raise

    def close(self) -> None:
        """Drop every entry from the pool (not the pool itself) and empty the backing
        file (no entry survives: its slots held only our pages); one this Zswap opened
        from a path is closed too, and removed if it created it. Idempotent; safe after
        the pool was closed. Every later operation raises :class:`~devpool.ClosedError`."""
        with self._lock:
            if self._closed:
                return
            if self._decoding:
                self._check_open()                 # refused: nothing changes
            refused = False
            try:
                if not self.pool.closed:
                    self._drop_idx(self._t.present())
            except BadInputError:
                # the pool refused before freeing anything (a call from inside its
                # read_with, as from a codec's decoder): nothing changed, still open
                refused = True
                raise
            finally:
                if not refused:
                    self._closed = True
                    # a closed pool took its objects with it: the entries name nothing now
                    self._t.remove(self._t.present())
                    if self.backing is not None:
                        self.backing.detach(self)
                        if self._own_backing:
                            self.backing.close()       # emptied, and removed if it made it
                        elif not self.backing.closed:
                            self.backing.discard()     # no entry of ours is in it any more

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Zswap is closed")
        if self._decoding:
            # the lock is re-entrant: a codec's decoder, run by a single load under it,
            # could otherwise change the table under the load (a same-filled page needs
            # no pool call, so the pool's own refusal would not stop it)
            raise BadInputError("a codec's decoder called back into this Zswap during a load; refused")

    # --- argument checks ----------------------------------------------------------------
    def _offset(self, offset) -> int:
        """One swap offset as an int, or BadInputError."""
        if type(offset) is int and 0 <= offset < self.nr_pages:
            return offset
        return check_int(offset, "swap offset", lo=0, hi=self.nr_pages - 1)

    def _offsets(self, offsets) -> np.ndarray:
        """A batch of distinct swap offsets as int64, or BadInputError."""
        if np.ndim(offsets) == 0:
            offsets = [offsets]
        arr = as_int_array(offsets, "offsets")
        bad = np.flatnonzero((arr < 0) | (arr >= self.nr_pages))
        if bad.size:
            raise BadInputError(f"swap offset {int(arr[bad[0]])} is outside 0..{self.nr_pages - 1}")
        if arr.size > 1 and has_duplicates(arr):
            raise BadInputError("offsets repeat within one batch")
        return arr

    @staticmethod
    def _page(page) -> np.ndarray:
        """One page as a C-contiguous (4096,) uint8 array, or BadInputError."""
        if (type(page) is np.ndarray and page.dtype is U8 and page.shape == (PAGE_SIZE,)
                and page.flags.c_contiguous):
            return page
        pages = check_pages(page)
        if pages.shape[0] != 1:
            raise BadInputError(f"store takes one page, got {pages.shape[0]}: use store_batch")
        return pages[0]

    # --- limits ------------------------------------------------------------------------
    # The tunables (_Tunable, below the class) are checked on every assignment like a
    # constructor argument, and the limits in bytes are worked out once per change, not
    # on every store.
    def _tune(self, field: str, value) -> None:
        """Set a checked tunable and work the limits out again; a limit that could hold
        nothing is refused (BadInputError) and the tunable keeps its old value."""
        old = getattr(self, field)
        setattr(self, field, value)
        try:
            self._set_limits()
        except BadInputError:
            setattr(self, field, old)
            raise

    def _set_limits(self) -> None:
        if self._max_pool_percent is None or self._accept_threshold_percent is None:
            return                                   # still constructing
        limit = (self._max_pool_bytes if self._max_pool_bytes is not None
                 else int(self.pool.capacity_bytes * self._max_pool_percent / 100))
        if limit < self.pool.segment_bytes:
            raise BadInputError(
                f"the zswap limit ({limit} bytes) is smaller than one pool segment "
                f"({self.pool.segment_bytes} bytes): nothing could ever be stored; open the pool "
                f"with a smaller segment_bytes or raise the limit")
        self._limit = limit
        self._accept = int(limit * self._accept_threshold_percent / 100)


    def _admitting(self) -> bool:
        """False while the limit is hit and the pool has not yet fallen to the accept
        threshold (Linux's hysteresis): then every store is refused without asking."""
        if self._reached_full:
            if self.pool.total_bytes > self._accept:
                return False
            self._reached_full = False
        return True

    def _limit_hit(self) -> None:
        self._counters["pool_limit_hit"] += 1
        self._reached_full = True

    # The limit itself is checked by the pool, in the same locked call as the allocation
    # (``max_total``): checked here first and allocated there second, a chaos storage, or
    # any other user of a shared pool, could move or grow it in between. The pool also
    # cleans dead bytes before it refuses (they are not pressure), so a store that needs
    # no new segment is accepted with the pool at its limit, and one whose bytes dead
    # space would hold is accepted after cleaning.
    def _admit(self, sizes: np.ndarray) -> np.ndarray:
        """Handles for the prefix of ``sizes`` the limit lets in (counts a limit hit);
        PoolFullError when the pool cannot hold them for another reason."""
        handles = self.pool.alloc_batch(sizes, max_total=self._limit) if self._admitting() else sizes[:0]
        if handles.size < sizes.size:
            self._limit_hit()
        return handles

    def _admit_one(self, size: int, data) -> int | None:
        """:meth:`_admit` for one object, written with ``data``: its handle, or None."""
        handle = self.pool.alloc(size, data=data, max_total=self._limit) if self._admitting() else None
        if handle is None:
            self._limit_hit()
        return handle

    # --- the deciders shared by both speeds (scalars or arrays alike) ----------------------
    def _verdict(self, lengths):
        """:func:`.one_page.verdict` with this Zswap's settings: ``(accepted, as_is, sizes)``."""
        return verdict(lengths, self._writeback_enabled, self._max_object)

    def _tally_refusals(self, lengths, accepted) -> None:
        """Count each refusal :meth:`_verdict` made under its kernel name."""
        failed = lengths < 0
        poor = (lengths >= PAGE_SIZE) & (not self._writeback_enabled)
        self._add("reject_compress_fail", failed)
        self._add("reject_compress_poor", poor)
        self._add("reject_alloc_fail", (accepted | failed | poor) ^ True)     # too big for the pool

    def _add(self, counter: str, mask) -> None:
        self._counters[counter] += int(mask) if type(mask) is bool else int(np.count_nonzero(mask))

    # --- entries -------------------------------------------------------------------------
    def _record(self, offs: np.ndarray, state: int, handles=None, lengths=None, fill=None) -> None:
        """Entries at ``offs`` now hold pages in ``state``, replacing what they held (the
        POOL objects old entries named are freed); POOL entries join the LRU's young end."""
        if offs.size == 0:
            return
        if state == POOL:
            idx, old, old_words = self._t.put(offs, POOL, handles, lengths)
            self._hint(idx, handles)
        else:                       # SAME: the fill word; FILE: the slot's check word (or 0)
            old, old_words = self._t.put(offs, state, 0 if fill is None else fill.view(np.int64), 0)[1:]
        if (old == POOL).any():
            self.pool.free_batch(old_words[old == POOL])

    def _hint(self, idx: np.ndarray, handles) -> None:
        """Entry slots ``idx`` now name pool objects ``handles``: their records learn where
        the blocks lie, the compiled load's prefetch (:mod:`.entries`: ``hint``)."""
        if self._load1 is not None:
            ctx = self._ctx
            one_page.set_hints(ctx[one_page.X_ENTRIES], ctx[one_page.X_DOOR], idx,
                               np.asarray(handles, np.int64).reshape(-1))

    def _record_one(self, o: int, state: int, word: int = 0, length: int = 0) -> None:
        """:meth:`_record` for one offset (if the table cannot take it, a new POOL object
        is freed and the store fails whole)."""
        try:
            i, old, old_word = self._t.put_one(o, state, word, length)
        except BaseException:
            if state == POOL:
                self.pool.free(word)
            raise
        if state == POOL:
            self._hint(np.array([i], np.int64), word)
        if old == POOL:
            self.pool.free(old_word)

    def _drop_idx(self, idx: np.ndarray) -> None:
        """Forget present entries (valid slots): pool objects are freed."""
        t = self._t
        pooled = idx[t.state[idx] == POOL]
        if pooled.size:
            self.pool.free_batch(t.word[pooled])
        t.remove(idx)

    def _drop(self, offs: np.ndarray) -> None:
        """Forget whatever ``offs`` hold (absent ones are ignored)."""
        idx = self._t.find(offs)
        self._drop_idx(idx[idx >= 0])

    def _drop_one(self, o: int) -> None:
        """:meth:`_drop` for one offset."""
        t = self._t
        i = t.find_one(o)
        if i < 0:
            return
        if t.m_state[i] == POOL:
            self.pool.free(t.m_word[i])
        t.remove_one(i)

    # --- compress / decompress -----------------------------------------------------------
    def _compress(self, pages: np.ndarray, todo: np.ndarray):
        """``(data, starts, lengths)`` of rows ``todo``: block ``i`` is at ``data[starts[i]:]``
        (the codec's trusted verbs: the pages were checked once, at our edge)."""
        if not todo.size:
            return np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self._blocks_on_device:
            return self._codec.compress_to_device_trusted(pages, todo)
        return self._codec.compress_blocks_trusted(pages, todo)

    def _decompress_into(self, idx: np.ndarray, out: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Decode POOL entries ``idx`` into ``out[rows]``; returns the ok mask.

        One batched copy-out from the pool, then the codec writes each page straight
        into its row; a page stored as-is (length == PAGE_SIZE) is copied over. With
        blocks on the device, the compressed ones are copied out into device memory and
        decoded there (a second copy-out brings any as-is pages to the host). The
        entries stay in the pool.
        """
        t = self._t
        raw = t.length[idx] == PAGE_SIZE
        if self._blocks_on_device and not raw.all():
            ok = np.ones(idx.size, np.bool_)
            if raw.any():
                self._decompress_into(idx[raw], out, rows[raw])        # as-is pages only
            comp = np.flatnonzero(~raw)
            data, lens = self.pool.read_batch(t.word[idx[comp]], device=True)
            ok[comp] = self._codec.decompress_into_trusted(data, lens, out, rows[comp], packed_starts(lens))
            self._counters["decompress_fail"] += int((~ok).sum())
            return ok
        total = int(t.length[idx].sum())
        if self._scratch.size < total:       # reused: a fresh buffer faults in per batch
            self._scratch = np.empty(max(total, 2 * self._scratch.size), np.uint8)
        data, lens = self.pool.read_batch(t.word[idx], out=self._scratch[:total])
        ok = np.ones(idx.size, np.bool_)
        starts = packed_starts(lens)
        if raw.any():
            gather(data, starts[raw], lens[raw], out.reshape(-1), rows[raw] * PAGE_SIZE)
        if raw.all():
            return ok
        comp = np.flatnonzero(~raw)
        if comp.size == idx.size:
            ok = self._codec.decompress_into_trusted(data, lens, out, rows, starts)
        else:                                # the compressed blocks where they lie: no copy
            ok[comp] = self._codec.decompress_into_trusted(data, lens[comp], out, rows[comp], starts[comp])
        self._counters["decompress_fail"] += int((~ok).sum())
        return ok

    # --- writeback and the shrinker ------------------------------------------------------
    def _writeback(self, n: int) -> int:
        if not self.writeback_enabled or n <= 0:
            return 0
        t = self._t
        written = 0
        failed = np.zeros(0, np.int64)
        while written < n:
            victims = t.lru_pick(n - written)        # the second chance given on the way
            victims = victims[~np.isin(victims, failed)]
            if victims.size == 0:
                break
            pages = np.empty((victims.size, PAGE_SIZE), np.uint8)
            ok = self._decompress_into(victims, pages, np.arange(victims.size))
            failed = np.concatenate([failed, victims[~ok]])
            good = victims[ok]
            if good.size == 0:
                continue
            try:
                words = self.backing.write_pages(t.offsets_of(good), pages[ok])
            except WritebackError:
                self._counters["writeback_fail"] += good.size
                raise                       # the entries stay in the pool
            self.pool.free_batch(t.word[good])
            t.word[good] = words.view(np.int64)     # what load checks the slot against
            t.restate(good, FILE)
            written += good.size
            self._counters["written_back_pages"] += good.size
        return written

    def _shrink(self) -> None:
        """At the limit: compact first (no I/O), then write back down to the threshold."""
        accept = self._accept
        if self.pool.total_bytes > accept:
            self.pool.compact()
        try:
            while self.pool.total_bytes > accept and self.writeback_enabled:
                if self._writeback(SHRINK_BATCH) == 0:
                    break
                self.pool.compact(0.9)
        except WritebackError:
            self._counters["reject_reclaim_fail"] += 1

    def _write_refused(self, offs: np.ndarray, pages: np.ndarray, cached: np.ndarray) -> None:
        """The pages zswap refused (``~cached``) go to the backing file, as the swap core
        does. If the write fails none of them is kept (the caller still owns them): the
        WritebackError carries ``stored`` (``cached``) and ``not_kept`` (their offsets),
        so the caller learns what happened without probing ``contains()``."""
        refused = np.flatnonzero(~cached)
        try:
            words = self.backing.write_pages(offs[refused], pages[refused])
        except WritebackError as exc:
            exc.stored, exc.not_kept = cached, offs[refused]
            raise
        self._record(offs[refused], FILE, fill=words)
        self._counters["backing_direct_writes"] += refused.size

    def _read_file(self, offs: np.ndarray, words: np.ndarray) -> np.ndarray:
        """The pages of FILE entries at ``offs``, each checked against its slot's word;
        a failure is counted (``backing_read_fail``) and raised: nothing is removed."""
        try:
            return self.backing.read_pages(offs, expect=words)
        except WritebackError as exc:
            self._counters["backing_read_fail"] += offs.size if exc.offsets is None else exc.offsets.size
            raise

    # --- main API ------------------------------------------------------------------------
    def store_batch(self, offsets, pages) -> np.ndarray:
        """Store pages at swap offsets; returns a mask, True where zswap cached the page.

        A False page was refused (limit, poor compression without writeback, codec
        error, no pool room, an object too big for the pool): with a backing file it is
        now in the file, else it is not kept. Any previous entry at those offsets is
        replaced either way. Bad input raises BadInputError and changes nothing. If a
        refused page's write to the backing file fails, WritebackError is raised after
        everything else committed; those offsets are then empty and the caller still
        owns the pages. The error says which: ``exc.stored`` is the mask this call would
        have returned (the cached pages), ``exc.not_kept`` the offsets held nowhere.
        """
        offs = self._offsets(offsets)
        pages = check_pages(pages)
        if pages.shape[0] != offs.size:
            raise BadInputError(f"{offs.size} offsets but {pages.shape[0]} pages")
        with self._lock:
            self._check_open()
            return self._store(offs, pages)

    def _store(self, offs: np.ndarray, pages: np.ndarray) -> np.ndarray:
        self._t.reserve_for(offs)            # the table's room first: the commit cannot fail on it
        same, fill = same_filled(pages)
        cached = same.copy()
        # 1. fallible work first: compress, decide, allocate, copy in
        todo = np.flatnonzero(~same)
        data, starts, lens = self._compress(pages, todo)
        accepted, as_is, sizes = self._verdict(lens)
        want = np.flatnonzero(accepted)
        if want.size < accepted.size:
            self._tally_refusals(lens, accepted)
        handles = np.zeros(0, np.int64)
        if want.size:
            try:
                handles = self._admit(sizes[want])
                want = want[:handles.size]
            except PoolFullError:
                self._counters["reject_alloc_fail"] += want.size
                want = want[:0]
        if want.size:
            try:
                self._write(handles, pages, todo, data, starts, sizes, want, as_is)
            except BaseException:
                self.pool.free_batch(handles)
                raise
        # 2. commit point: nothing below fails except the backing write of refused pages
        stored = todo[want]
        cached[stored] = True
        self._record(offs[stored], POOL, handles, sizes[want])      # replacing what they held
        self._record(offs[same], SAME, fill=fill[same])
        self._drop(offs[~cached])                                   # refused: the stale entry goes
        self._counters["same_filled_stores"] += int(same.sum())
        if self._reached_full:
            self._shrink()
        if self.backing is not None and not cached.all():
            self._write_refused(offs, pages, cached)
        return cached

    def _write(self, handles, pages, todo, data, starts, sizes, want, as_is) -> None:
        """Copy the accepted pages in: their blocks from ``data`` where they are (no
        repacking), pages stored as-is from ``pages``; one pool call for each kind."""
        raw = as_is[want]
        comp = ~raw
        if comp.any():
            self.pool.write_batch(handles[comp], data, sizes[want[comp]], src_starts=starts[want[comp]])
        if raw.any():
            self.pool.write_batch(handles[raw], pages.reshape(-1), sizes[want[raw]],
                                  src_starts=todo[want[raw]] * PAGE_SIZE)

    def store(self, offset: int, page) -> bool:
        """Store one page; True if cached (the rules of :meth:`store_batch`, one page)."""
        o = self._offset(offset)
        page = self._page(page)
        lock = self._lock
        try:                            # (not ``with``: devpool._locking says why and how)
            lock.acquire()
            answer = one_page.SLOW
            # the whole store, compiled (not at the limit: refused the long way; not
            # closed or decoding: the long way says why)
            if self._store1 is not None and not (self._reached_full or self._closed or self._decoding):
                answer = self._store1(o, page)
                if answer <= one_page.DONE_SAME:
                    if answer == one_page.DONE_SAME:
                        self._counters["same_filled_stores"] += 1
                    freed = self._ctx[one_page.X_FREED]
                    if freed != -1:
                        door_settle(self.pool, freed)
            stored = answer <= one_page.DONE_SAME or self._store_long(o, page, answer)
        except BaseException:
            try:                        # nothing may run before the release: devpool._locking
                lock.release()
            except RuntimeError:        # an interrupted wait: no level of ours to give back
                pass
            raise
        lock.release()
        return stored

    def _store_long(self, o: int, page: np.ndarray, answer: int) -> bool:
        """:meth:`store` after the compiled store's ``answer`` (SLOW: not tried), under the lock."""
        if self._closed or self._decoding:
            self._check_open()
        if self._blocks_on_device:        # the device codec works in batches
            return bool(self._store(np.array([o], np.int64), page.reshape(1, -1))[0])
        block = None
        if answer != one_page.SLOW:       # compressed, refused or the pool's long way: on from here
            block, n = self._scratch1, self._ctx[one_page.X_LENGTH]
        same = False
        if block is None:
            same, fill = same_filled_one(page)
            if not same:
                # 1. fallible work first
                block, n = self._codec.compress_page_trusted(page)     # page checked at our edge
        handle = None
        if not same:
            accepted, as_is, size = self._verdict(n)
            if not accepted:
                self._tally_refusals(n, accepted)
            else:
                try:
                    handle = self._admit_one(size, page if as_is else block[:n])
                except PoolFullError:
                    self._counters["reject_alloc_fail"] += 1
        # 2. commit point
        if same:
            self._record_one(o, SAME, as_word(fill))
            self._counters["same_filled_stores"] += 1
        elif handle is not None:
            self._record_one(o, POOL, handle, size)
        else:
            self._drop_one(o)
        if self._reached_full:
            self._shrink()
        if same or handle is not None:
            return True
        if self.backing is not None:
            self._write_refused(np.array([o], np.int64), page.reshape(1, -1), np.zeros(1, np.bool_))
        return False

    def load_batch(self, offsets, out=None, *, keep: bool = False) -> np.ndarray:
        """Load pages (N, 4096); exclusive: each leaves zswap and the backing file.

        ``out`` may be a writable (N, 4096) uint8 array to fill instead of a new one.
        An offset held nowhere raises EntryNotFoundError; a block that fails to decode
        raises CorruptDataError (``decompress_fail`` counted); a file read error raises
        WritebackError, as does a slot of the file that does not hold the page written
        there (truncated or changed under us: ``backing_read_fail`` counted, never zeros
        or another page returned). In every error case nothing is removed (``out`` may
        have been partly written). ``keep=True`` makes the loads non-exclusive, as in
        :meth:`load` (a swap device's reads: the kernel may read a slot again).
        """
        offs = self._offsets(offsets)
        if keep is not False and keep is not True:
            keep = check_flag(keep, "keep")
        n = offs.size
        if out is not None:
            if (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (n, PAGE_SIZE)
                    or not out.flags.c_contiguous or not out.flags.writeable):
                raise BadInputError(f"out must be a writable C-contiguous ({n}, {PAGE_SIZE}) uint8 array")
        with self._lock:
            self._check_open()
            t = self._t
            idx = t.find(offs)
            state = t.states(idx)
            missing = np.flatnonzero(state == ABSENT)
            if missing.size:
                raise EntryNotFoundError(f"swap offset {int(offs[missing[0]])} is not stored")
            if out is None:
                out = np.empty((n, PAGE_SIZE), np.uint8)
            in_pool = np.flatnonzero(state == POOL)
            if in_pool.size:
                ok = self._decompress_into(idx[in_pool], out, in_pool)
                if not ok.all():
                    bad = offs[in_pool[~ok]]
                    raise CorruptDataError(f"{bad.size} stored page(s) failed to decompress: offsets {bad[:8].tolist()}")
            same = np.flatnonzero(state == SAME)
            if same.size:
                out.view(np.uint64)[same] = t.fill[idx[same], None]
            in_file = np.flatnonzero(state == FILE)
            if in_file.size:
                out[in_file] = self._read_file(offs[in_file], t.fill[idx[in_file]])
            # commit: exclusive load
            self._counters["loads_from_pool"] += in_pool.size + same.size
            self._counters["loads_from_backing"] += in_file.size
            if keep:
                t.referenced[idx[in_pool]] = True    # used again: a second chance before writeback
            else:
                self._drop_idx(idx)                  # commit: exclusive load
            return out

    def load(self, offset: int, out=None, *, keep: bool = False) -> np.ndarray:
        """Load one page (4096,) uint8 (the rules of :meth:`load_batch`, one page).

        ``out`` may be a writable C-contiguous (4096,) uint8 array to fill instead of a
        new one (a fault handler copies from one buffer whose address it knows).
        ``keep=True`` makes the load non-exclusive (Linux zswap's ``exclusive_loads=N``):
        the page stays stored, marked recently used, until :meth:`invalidate`. A fault
        handler copies the page into place first and frees it after, off the faulting
        thread's wait."""
        o = offset if type(offset) is int and 0 <= offset < self.nr_pages else self._offset(offset)
        if self._warm1 is not None:
            self._warm1(o)              # the lookup's first line loads while the checks run
        if out is not None and type(out) is not np.ndarray and isinstance(out, np.ndarray):
            out = plain_view(out)           # a subclass: its true shape (a property could lie)
        if out is not None and not (isinstance(out, np.ndarray) and out.shape == (PAGE_SIZE,)
                                    and (out.dtype is U8 or out.dtype == np.uint8) and (f := out.flags).c_contiguous
                                    and f.writeable):
            raise BadInputError(f"out must be a writable C-contiguous ({PAGE_SIZE},) uint8 array")
        if keep is not False and keep is not True:      # check_flag's test, inline
            keep = check_flag(keep, "keep")
        lock = self._lock
        try:                            # (not ``with``: devpool._locking says why and how)
            lock.acquire()
            answer = one_page.SLOW
            if self._load1 is not None and not (self._closed or self._decoding):    # the whole load, compiled
                page = np.empty(PAGE_SIZE, U8) if out is None else out
                answer = self._load1(o, page, keep)
                if answer == one_page.DONE:
                    self._counters["loads_from_pool"] += 1
                    freed = self._ctx[one_page.X_FREED]
                    if freed != -1:
                        door_settle(self.pool, freed)
                    if not keep:
                        self._t.after_remove()
            if answer != one_page.DONE:
                page = self._load_long(o, out, keep, answer)
        except BaseException:
            try:                        # nothing may run before the release: devpool._locking
                lock.release()
            except RuntimeError:        # an interrupted wait: no level of ours to give back
                pass
            raise
        lock.release()
        return page

    def _load_long(self, o: int, out, keep: bool, answer: int) -> np.ndarray:
        """:meth:`load` after the compiled load's ``answer`` (SLOW: not tried), under the lock."""
        if self._closed or self._decoding:
            self._check_open()
        if answer == one_page.NOT_STORED:
            raise EntryNotFoundError(f"swap offset {o} is not stored")
        if answer == one_page.CORRUPT:
            self._counters["decompress_fail"] += 1
            raise CorruptDataError(f"stored page at swap offset {o} failed to decompress")
        t = self._t
        i = t.find_one(o)
        state = t.m_state[i] if i >= 0 else ABSENT
        if state == ABSENT:
            raise EntryNotFoundError(f"swap offset {o} is not stored")
        if state == POOL:
            handle, n = t.m_word[i], t.m_length[i]
            free = not keep
            if n == PAGE_SIZE:
                page = self.pool.read(handle, out, free=free)
            elif self._blocks_on_device:
                page = np.empty(PAGE_SIZE, np.uint8) if out is None else out
                ok = self._decompress_into(np.array([i]), page.reshape(1, -1), np.zeros(1, np.int64))
                if not ok[0]:
                    raise CorruptDataError(f"stored page at swap offset {o} failed to decompress")
                if free:
                    self.pool.free(handle)
            else:
                # decoded where the block lies (host RAM) and freed only once it made
                # a page: a corrupt block stays stored, as in load_batch
                self._decoding = True
                try:
                    page = self.pool.read_with(handle, self._decode_page, out, free=free)
                finally:
                    self._decoding = False
                if page is None:
                    self._counters["decompress_fail"] += 1
                    raise CorruptDataError(f"stored page at swap offset {o} failed to decompress")
            self._counters["loads_from_pool"] += 1
        elif state == SAME:
            page = np.empty(PAGE_SIZE, np.uint8) if out is None else out
            page.view(np.uint64)[:] = t.m_fill[i]
            self._counters["loads_from_pool"] += 1
        else:
            got = self._read_file(np.array([o], np.int64), t.fill[i:i + 1])[0]
            if out is None:
                page = got
            else:
                page = out
                out[:] = got
            self._counters["loads_from_backing"] += 1
        if keep:
            t.m_referenced[i] = 1        # used again: a second chance before writeback
        else:
            t.remove_one(i)              # commit: exclusive load
        return page

    def invalidate_batch(self, offsets) -> None:
        """Forget these offsets (swap slots freed); absent ones are ignored."""
        offs = self._offsets(offsets)
        with self._lock:
            self._check_open()
            self._drop(offs)

    def invalidate(self, offset: int) -> None:
        """Forget one offset; a no-op when it is not stored."""
        o = offset if type(offset) is int and 0 <= offset < self.nr_pages else self._offset(offset)
        if self._warm1 is not None:
            self._warm1(o)              # the lookup's first line loads while the lock is taken
        lock = self._lock
        try:                            # (not ``with``: devpool._locking says why and how)
            lock.acquire()
            answer = one_page.SLOW
            if self._invalidate1 is not None and not (self._closed or self._decoding):
                answer = self._invalidate1(o)                        # compiled, where it runs
                if answer != one_page.SLOW:
                    freed = self._ctx[one_page.X_FREED]
                    if freed != -1:
                        door_settle(self.pool, freed)
                    if answer == one_page.DONE:
                        self._t.after_remove()
            if answer == one_page.SLOW:
                if self._closed or self._decoding:
                    self._check_open()
                self._drop_one(o)
        except BaseException:
            try:                        # nothing may run before the release: devpool._locking
                lock.release()
            except RuntimeError:        # an interrupted wait: no level of ours to give back
                pass
            raise
        lock.release()

    def invalidate_area(self) -> None:
        """Forget every offset (swapoff of the whole area); the backing file is emptied."""
        with self._lock:
            self._check_open()
            self._drop_idx(self._t.present())
            if self.backing is not None:
                self.backing.discard()

    def writeback(self, n: int) -> int:
        """Write up to ``n`` least-recently-stored pages to the backing file now.

        Referenced entries get a second chance (rotated once). Returns the pages
        written; 0 without a backing file or with writeback disabled. On an I/O error
        the affected entries stay in the pool and WritebackError is raised.
        """
        n = check_int(n, "n", lo=0)
        with self._lock:
            self._check_open()
            return self._writeback(n)

    def entry_kind(self, offset: int) -> str | None:
        """Where ``offset``'s page is: "pool", "same_filled", "backing", or None."""
        o = self._offset(offset)
        with self._lock:
            i = self._t.find_one(o)
            return _KIND_NAMES[self._t.m_state[i]] if i >= 0 else None

    def _handle_of(self, offset: int) -> int:
        """The pool handle of a POOL entry (for tests that corrupt a stored block)."""
        i = self._t.find_one(self._offset(offset))
        if i < 0 or self._t.m_state[i] != POOL:
            raise EntryNotFoundError(f"swap offset {offset} is not in the pool")
        return self._t.m_word[i]

    def contains(self, offset: int) -> bool:
        """True when ``offset`` is held in zswap or the backing file."""
        return self.entry_kind(offset) is not None

    @property
    def writeback_enabled(self) -> bool:
        """Whether the shrinker may write pages back (a backing file, and writeback=True);
        fixed at construction: the LRU is kept only when it is True."""
        return self._writeback_enabled

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def codec(self):
        """The codec, fixed at construction (a load binds its decoder once)."""
        return self._codec

    def stats(self) -> dict:
        """Kernel debugfs names, plus same-filled and backing counts and the ratio."""
        with self._lock:
            pst = self.pool.stats()
            t = self._t                 # counted as entries change: no scan of the table
            compressed = t.pool_bytes
            n_pool = t.count(POOL)
            n_same = t.count(SAME)
            st = dict(self._counters)
            st.update({
                "stored_pages": n_pool + n_same,
                "same_filled_pages": n_same,
                "stored_incompressible_pages": t.pool_as_is,
                "backing_pages": t.count(FILE),
                "pool_total_size": pst["pool_total_size"],
                "stored_compressed_bytes": compressed,
                "compression_ratio": (n_pool * PAGE_SIZE / compressed) if compressed else 0.0,
                "max_pool_bytes": self._limit,
                "accept_threshold_bytes": self._accept,
                "pool_limit_reached": self._reached_full,
                "entry_table_bytes": t.nbytes,
                "compressor": self._codec.codec_id,
                "blocks_on_device": self._blocks_on_device,
                "backend": pst["backend"],
                # one compiled call a single page (devpool.zswap.one_page), else Python
                "single_page_compiled": self._store1 is not None,
            })
            return st
