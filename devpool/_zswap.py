"""Zswap: a compressed cache for pages on their way to swap, over any devpool pool.

What it is and when it pays (as mm/zswap.c puts it): pages being swapped out are
compressed into a pool instead of going to the swap device; a later swap-in
decompresses them, which is far cheaper than disk I/O. When the pool reaches its limit
the oldest entries are written back to the real swap file. This frontend models Linux
6.18's zswap, keeps its parameter and debugfs statistic names, and sees only the pool
contract: handles, batched copy-in / copy-out, ``compact``, ``stats``. It never
learns whether the pool lives in RAM or on a GPU.

With a backing file, ``Zswap`` plays both zswap *and* the swap device: a page zswap
refuses (limit hit, poor compression with writeback off, codec error) is written
straight to the file, as the swap core does after a failed ``zswap_store``; ``store``
returns False ("not cached") and ``load`` finds the page in the file. Without a
backing file a refused page is not kept: the caller still owns it.

A page is never lost: it is in the pool, in the backing file, or the store said it
was refused (and, with a backing file whose write failed, raised).

Reading order: statistics, tunables, entry table, limits, compress / decompress,
writeback (second-chance LRU) and shrinking, then the main API (store, load,
invalidate and their batch forms).
"""

from __future__ import annotations

import threading

import numpy as np

from ._backing import BackingFile
from ._codecs import Codec, check_pages, get_codec
from ._errors import (
    BadInputError,
    CorruptDataError,
    EntryNotFoundError,
    PoolFullError,
    WritebackError,
)
from ._packed import gather, has_duplicates, packed_starts, same_filled
from ._pool import PAGE_SIZE, Pool

__all__ = ["Zswap"]

# --- entry states (one byte per swap offset) -------------------------------------------
ABSENT = 0     # not held by zswap nor the backing file
POOL = 1       # compressed (or, at length == PAGE_SIZE, stored as-is) in the pool
SAME = 2       # same-filled page: only the 8-byte fill word is kept, no pool space
FILE = 3       # in the backing swap file (written back, or refused by zswap)

_KIND_NAMES = {ABSENT: None, POOL: "pool", SAME: "same_filled", FILE: "backing"}

#: pages written back per round of the shrinker
SHRINK_BATCH = 256


class Zswap:
    """zswap over a devpool pool.

    ``max_pool_percent`` of the pool's capacity (or ``max_pool_bytes``) bounds the pool;
    once hit, stores are refused until usage falls below ``accept_threshold_percent``
    of the limit, and the shrinker writes back meanwhile. ``backing`` is a swap-file
    path (created 0600), a :class:`BackingFile`, or None. ``writeback=False`` forbids
    writeback (and, as in Linux, then refuses incompressible pages).
    """

    # --- statistics (debugfs names); one comment per counter -------------------------
    _COUNTERS = (
        "pool_limit_hit",          # a store found the pool at its limit
        "reject_compress_fail",    # the codec failed on a page
        "reject_compress_poor",    # a page did not compress below PAGE_SIZE, writeback off
        "reject_alloc_fail",       # the pool could not allocate room
        "reject_reclaim_fail",     # the shrinker's writeback failed while at the limit
        "decompress_fail",         # a stored block failed to decode to one page
        "written_back_pages",      # pages the shrinker / writeback() moved to the file
        "writeback_fail",          # writeback I/O errors (entries stayed in the pool)
        "same_filled_stores",      # stores satisfied by a fill word alone
        "backing_direct_writes",   # refused pages written straight to the backing file
        "loads_from_pool",         # loads served from the pool (or a fill word)
        "loads_from_backing",      # loads served from the backing file
    )

    # --- tunables ----------------------------------------------------------------------
    def __init__(self, pool: Pool, compressor: str | dict | Codec = "lz4", *,
                 max_pool_percent: float = 20, max_pool_bytes: int | None = None,
                 accept_threshold_percent: float = 90, backing=None, writeback: bool = True,
                 nr_pages: int = 1 << 32):
        if not isinstance(pool, Pool):
            raise BadInputError(f"pool must be a devpool Pool, got {type(pool).__name__}")
        if not 0 < float(max_pool_percent) <= 100:
            raise BadInputError(f"max_pool_percent must be in (0, 100], got {max_pool_percent}")
        if not 0 < float(accept_threshold_percent) <= 100:
            raise BadInputError(f"accept_threshold_percent must be in (0, 100], got {accept_threshold_percent}")
        if max_pool_bytes is not None and (not isinstance(max_pool_bytes, int) or max_pool_bytes <= 0):
            raise BadInputError(f"max_pool_bytes must be a positive integer, got {max_pool_bytes!r}")
        self.pool = pool
        self.codec = get_codec(compressor)
        # a device codec over a pool in device memory keeps blocks on the device: they
        # go into the arena device to device and are decoded there on load
        self._blocks_on_device = bool(self.codec.device_resident and pool.device_resident)
        self.max_pool_percent = float(max_pool_percent)
        self.max_pool_bytes = max_pool_bytes
        self.accept_threshold_percent = float(accept_threshold_percent)
        self.nr_pages = int(nr_pages)
        if backing is None or isinstance(backing, BackingFile):
            self.backing = backing
            self._own_backing = False
        else:
            self.backing = BackingFile(backing)
            self._own_backing = True
        self.writeback_enabled = bool(writeback) and self.backing is not None
        if self._limit_bytes() < pool.segment_bytes:
            raise BadInputError(
                f"the zswap limit ({self._limit_bytes()} bytes) is smaller than one pool segment "
                f"({pool.segment_bytes} bytes): nothing could ever be stored; open the pool with "
                f"a smaller segment_bytes or raise the limit")
        self._lock = threading.RLock()
        self._reached_full = False
        self._counters = dict.fromkeys(self._COUNTERS, 0)
        # --- entry table, indexed by swap offset, grown on demand ---------------------
        self._state = np.zeros(0, np.uint8)
        self._handle = np.zeros(0, np.int64)
        self._length = np.zeros(0, np.int64)
        self._fill = np.zeros(0, np.uint64)
        self._seq = np.zeros(0, np.int64)          # LRU age: smaller is older
        self._referenced = np.zeros(0, np.bool_)   # second chance before writeback
        self._next_seq = 0
        self._scratch = np.zeros(0, np.uint8)      # copy-out staging for decompression

    def __enter__(self) -> "Zswap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop every entry from the pool (not the pool itself) and close an owned file."""
        with self._lock:
            self._invalidate_mask(self._state != ABSENT)
            if self._own_backing and self.backing is not None:
                self.backing.close()

    def _grow(self, top: int) -> None:
        size = self._state.shape[0]
        if top < size:
            return
        new = max(top + 1, size * 2, 1024)
        pad = new - size
        self._state = np.concatenate([self._state, np.zeros(pad, np.uint8)])
        self._handle = np.concatenate([self._handle, np.zeros(pad, np.int64)])
        self._length = np.concatenate([self._length, np.zeros(pad, np.int64)])
        self._fill = np.concatenate([self._fill, np.zeros(pad, np.uint64)])
        self._seq = np.concatenate([self._seq, np.zeros(pad, np.int64)])
        self._referenced = np.concatenate([self._referenced, np.zeros(pad, np.bool_)])

    def _check_offsets(self, offsets, grow: bool) -> np.ndarray:
        if type(offsets) is list and len(offsets) == 1 and type(offsets[0]) is int:
            o = offsets[0]                    # the single-page fast path
            if not 0 <= o < self.nr_pages:
                raise BadInputError(f"swap offset {o} is outside 0..{self.nr_pages - 1}")
            if grow:
                self._grow(o)
            return np.array([o], np.int64)
        arr = np.asarray(offsets)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise BadInputError(f"offsets must be a 1-D sequence, got shape {arr.shape}")
        if arr.size == 0:
            return np.zeros(0, np.int64)
        if arr.dtype.kind not in "iu" or arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
            raise BadInputError(f"offsets must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        bad = np.flatnonzero((arr < 0) | (arr >= self.nr_pages))
        if bad.size:
            raise BadInputError(f"swap offset {int(arr[bad[0]])} is outside 0..{self.nr_pages - 1}")
        if arr.size > 1 and has_duplicates(arr):
            raise BadInputError("offsets repeat within one batch")
        if grow:
            self._grow(int(arr.max()))
        return arr

    # --- limits ------------------------------------------------------------------------
    def _limit_bytes(self) -> int:
        if self.max_pool_bytes is not None:
            return self.max_pool_bytes
        return int(self.pool.capacity_bytes * self.max_pool_percent / 100)

    def _accept_bytes(self) -> int:
        return int(self._limit_bytes() * self.accept_threshold_percent / 100)

    def _pool_size(self) -> int:
        return self.pool.total_bytes

    def _headroom(self) -> int:
        """Bytes a store may still add; 0 while the limit is hit (with hysteresis)."""
        total = self._pool_size()
        limit = self._limit_bytes()
        if self._reached_full:
            if total > self._accept_bytes():
                return 0
            self._reached_full = False
        return max(0, limit - total)

    def _fitting_prefix(self, sizes: np.ndarray, room: int) -> int:
        """How many of ``sizes`` (in order) the pool can take without growing past
        ``room`` bytes, segment tails included: one placement query when all fit, a
        binary search over prefixes when not."""
        if room <= 0:
            return 0
        if self.pool.growth_for(sizes) <= room:
            return sizes.size
        lo, hi = 0, sizes.size - 1          # lo fits, hi + 1 does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.pool.growth_for(sizes[:mid]) <= room:
                lo = mid
            else:
                hi = mid - 1
        return lo

    # --- compress / decompress -----------------------------------------------------------
    def _decompress_into(self, offs: np.ndarray, out: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Decode POOL entries ``offs`` into ``out[rows]``; returns the ok mask.

        One batched copy-out from the pool, then the codec writes each page straight
        into its row; a page stored as-is (length == PAGE_SIZE) is copied over. With
        blocks on the device, the compressed ones are copied out into device memory and
        decoded there (a second copy-out brings any as-is pages to the host). The
        entries stay in the pool.
        """
        raw = self._length[offs] == PAGE_SIZE
        if self._blocks_on_device and not raw.all():
            ok = np.ones(offs.size, np.bool_)
            if raw.any():
                self._decompress_into(offs[raw], out, rows[raw])        # as-is pages only
            comp = np.flatnonzero(~raw)
            data, lens = self.pool.read_batch(self._handle[offs[comp]], device=True)
            ok[comp] = self.codec.decompress_into(data, lens, out, rows[comp])
            self._counters["decompress_fail"] += int((~ok).sum())
            return ok
        total = int(self._length[offs].sum())
        if self._scratch.size < total:       # reused: a fresh buffer faults in per batch
            self._scratch = np.empty(max(total, 2 * self._scratch.size), np.uint8)
        data, lens = self.pool.read_batch(self._handle[offs], out=self._scratch[:total])
        ok = np.ones(offs.size, np.bool_)
        starts = packed_starts(lens)
        if raw.any():
            gather(data, starts[raw], lens[raw], out.reshape(-1), rows[raw] * PAGE_SIZE)
        if raw.all():
            return ok
        comp = np.flatnonzero(~raw)
        if comp.size == offs.size:
            ok = self.codec.decompress_into(data, lens, out, rows)
        else:                                # the compressed blocks where they lie: no copy
            ok[comp] = self.codec.decompress_into(data, lens[comp], out, rows[comp], starts[comp])
        self._counters["decompress_fail"] += int((~ok).sum())
        return ok

    # --- writeback and the shrinker ------------------------------------------------------
    def _pick_lru(self, n: int) -> np.ndarray:
        """Up to ``n`` oldest POOL entries, giving referenced ones a second chance."""
        while True:
            cand = np.flatnonzero(self._state == POOL)
            if cand.size == 0:
                return cand
            k = min(n, cand.size)
            oldest = cand[np.argpartition(self._seq[cand], k - 1)[:k]] if k < cand.size else cand
            oldest = oldest[np.argsort(self._seq[oldest], kind="stable")]
            ref = self._referenced[oldest]
            if not ref.any():
                return oldest
            # rotate: clear the bit and move to the young end, then look again
            rot = oldest[ref]
            self._referenced[rot] = False
            self._seq[rot] = self._next_seq + np.arange(rot.size)
            self._next_seq += rot.size
            if (~ref).any():
                return oldest[~ref]

    def _writeback(self, n: int) -> int:
        if not self.writeback_enabled or n <= 0:
            return 0
        written = 0
        failed = np.zeros(0, np.int64)
        while written < n:
            victims = self._pick_lru(n - written)
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
                self.backing.write_pages(good, pages[ok])
            except WritebackError:
                self._counters["writeback_fail"] += good.size
                raise                       # the entries stay in the pool
            self.pool.free_batch(self._handle[good])
            self._state[good] = FILE
            written += good.size
            self._counters["written_back_pages"] += good.size
        return written

    def _shrink(self) -> None:
        """At the limit: compact first (no I/O), then write back down to the threshold."""
        accept = self._accept_bytes()
        if self._pool_size() > accept:
            self.pool.compact()
        try:
            while self._pool_size() > accept and self.writeback_enabled:
                if self._writeback(SHRINK_BATCH) == 0:
                    break
                self.pool.compact(0.9)
        except WritebackError:
            self._counters["reject_reclaim_fail"] += 1

    # --- main API ------------------------------------------------------------------------
    def store_batch(self, offsets, pages) -> np.ndarray:
        """Store pages at swap offsets; returns a mask, True where zswap cached the page.

        A False page was refused (limit, poor compression without writeback, codec
        error, no pool room): with a backing file it is now in the file, else it is
        not kept. Any previous entry at those offsets is replaced either way. Bad input
        raises BadInputError and changes nothing. If a refused page's write to the
        backing file fails, WritebackError is raised after everything else committed;
        those offsets are then empty and the caller still owns the pages.
        """
        with self._lock:
            offs = self._check_offsets(offsets, grow=True)
            pages = check_pages(pages)
            if pages.shape[0] != offs.size:
                raise BadInputError(f"{offs.size} offsets but {pages.shape[0]} pages")
            return self._store(offs, pages)

    def _store(self, offs: np.ndarray, pages: np.ndarray) -> np.ndarray:
        same, fill = same_filled(pages)
        cached = same.copy()
        # 1. fallible work first: compress, classify, allocate, copy in
        todo = np.flatnonzero(~same)
        data, starts, lens = self._compress(pages, todo)
        ok = lens >= 0
        self._counters["reject_compress_fail"] += int((~ok).sum())
        poor = ok & (lens >= PAGE_SIZE)
        if not self.writeback_enabled:
            self._counters["reject_compress_poor"] += int(poor.sum())
            ok &= ~poor
            poor[:] = False
        sizes = np.where(poor, PAGE_SIZE, lens)
        # the limit: accept the longest prefix whose allocation keeps the pool within it
        want = np.flatnonzero(ok)
        if want.size:
            keep = self._fitting_prefix(sizes[want], self._headroom())
            if keep < want.size:
                self._counters["pool_limit_hit"] += 1
                self._reached_full = True
                want = want[:keep]
        handles = np.zeros(0, np.int64)
        if want.size:
            try:
                handles = self.pool.alloc_batch(sizes[want])
            except PoolFullError:
                self._counters["reject_alloc_fail"] += want.size
                want = want[:0]
        if want.size:
            try:
                self._write(handles, pages, todo, data, starts, sizes, want, poor)
            except BaseException:
                self.pool.free_batch(handles)
                raise
        # 2. commit point: nothing below fails except the backing write of refused pages
        self._invalidate_mask_at(offs)
        stored = todo[want]
        cached[stored] = True
        so = offs[stored]
        self._state[so] = POOL
        self._handle[so] = handles
        self._length[so] = sizes[want]
        self._seq[so] = self._next_seq + np.arange(so.size)
        self._next_seq += so.size
        self._referenced[so] = True
        sf = offs[same]
        self._state[sf] = SAME
        self._fill[sf] = fill[same]
        self._counters["same_filled_stores"] += int(same.sum())
        refused = np.flatnonzero(~cached)
        if self._reached_full:
            self._shrink()
        if refused.size and self.backing is not None:
            self.backing.write_pages(offs[refused], pages[refused])   # may raise: not kept
            self._state[offs[refused]] = FILE
            self._counters["backing_direct_writes"] += refused.size
        return cached

    def _compress(self, pages: np.ndarray, todo: np.ndarray):
        """``(data, starts, lengths)`` of rows ``todo``: block ``i`` is at ``data[starts[i]:]``."""
        if not todo.size:
            return np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self._blocks_on_device:
            return self.codec.compress_to_device(pages, todo)
        return self.codec.compress_blocks(pages, todo)

    def _write(self, handles, pages, todo, data, starts, sizes, want, poor) -> None:
        """Copy the accepted pages in: their blocks from ``data`` where they are (no
        repacking), pages stored as-is from ``pages``; one pool call for each kind."""
        raw = poor[want]
        comp = ~raw
        if comp.any():
            self.pool.write_batch(handles[comp], data, sizes[want[comp]], src_starts=starts[want[comp]])
        if raw.any():
            self.pool.write_batch(handles[raw], pages.reshape(-1), sizes[want[raw]],
                                  src_starts=todo[want[raw]] * PAGE_SIZE)

    def store(self, offset: int, page) -> bool:
        """Store one page; True if cached (see :meth:`store_batch`)."""
        return bool(self.store_batch([offset], check_pages(page))[0])

    def load_batch(self, offsets, out=None) -> np.ndarray:
        """Load pages (N, 4096); exclusive: each leaves zswap and the backing file.

        ``out`` may be a writable (N, 4096) uint8 array to fill instead of a new one.
        An offset held nowhere raises EntryNotFoundError; a block that fails to decode
        raises CorruptDataError (``decompress_fail`` counted); a file read error raises
        WritebackError. In every error case nothing is removed (``out`` may have been
        partly written).
        """
        with self._lock:
            offs = self._check_offsets(offsets, grow=False)
            n = offs.size
            if out is not None:
                if (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (n, PAGE_SIZE)
                        or not out.flags.c_contiguous or not out.flags.writeable):
                    raise BadInputError(f"out must be a writable C-contiguous ({n}, {PAGE_SIZE}) uint8 array")
            known = offs < self._state.shape[0]
            state = np.zeros(n, np.uint8)
            state[known] = self._state[offs[known]]
            missing = np.flatnonzero(state == ABSENT)
            if missing.size:
                raise EntryNotFoundError(f"swap offset {int(offs[missing[0]])} is not stored")
            if out is None:
                out = np.empty((n, PAGE_SIZE), np.uint8)
            in_pool = np.flatnonzero(state == POOL)
            if in_pool.size:
                ok = self._decompress_into(offs[in_pool], out, in_pool)
                if not ok.all():
                    bad = offs[in_pool[~ok]]
                    raise CorruptDataError(f"{bad.size} stored page(s) failed to decompress: offsets {bad[:8].tolist()}")
            same = np.flatnonzero(state == SAME)
            if same.size:
                out.view(np.uint64)[same] = self._fill[offs[same], None]
            in_file = np.flatnonzero(state == FILE)
            if in_file.size:
                out[in_file] = self.backing.read_pages(offs[in_file])
            # commit: exclusive load
            self._counters["loads_from_pool"] += in_pool.size + same.size
            self._counters["loads_from_backing"] += in_file.size
            self._invalidate_mask_at(offs)
            return out

    def load(self, offset: int) -> np.ndarray:
        """Load one page (4096,) uint8; see :meth:`load_batch`."""
        return self.load_batch([offset])[0]

    def _invalidate_mask_at(self, offs: np.ndarray) -> None:
        offs = offs[offs < self._state.shape[0]]
        pooled = offs[self._state[offs] == POOL]
        if pooled.size:
            self.pool.free_batch(self._handle[pooled])
        self._state[offs] = ABSENT

    def _invalidate_mask(self, mask: np.ndarray) -> None:
        self._invalidate_mask_at(np.flatnonzero(mask))

    def invalidate_batch(self, offsets) -> None:
        """Forget these offsets (swap slots freed); absent ones are ignored."""
        with self._lock:
            self._invalidate_mask_at(self._check_offsets(offsets, grow=False))

    def invalidate(self, offset: int) -> None:
        """Forget one offset; a no-op when it is not stored."""
        self.invalidate_batch([offset])

    def invalidate_area(self) -> None:
        """Forget every offset (swapoff of the whole area)."""
        with self._lock:
            self._invalidate_mask(self._state != ABSENT)

    def writeback(self, n: int) -> int:
        """Write up to ``n`` least-recently-stored pages to the backing file now.

        Referenced entries get a second chance (rotated once). Returns the pages
        written; 0 without a backing file or with writeback disabled. On an I/O error
        the affected entries stay in the pool and WritebackError is raised.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise BadInputError(f"n must be a non-negative integer, got {n!r}")
        with self._lock:
            return self._writeback(int(n))

    def entry_kind(self, offset: int) -> str | None:
        """Where ``offset``'s page is: "pool", "same_filled", "backing", or None."""
        with self._lock:
            if not 0 <= offset < self._state.shape[0]:
                return None
            return _KIND_NAMES[int(self._state[offset])]

    def contains(self, offset: int) -> bool:
        """True when ``offset`` is held in zswap or the backing file."""
        with self._lock:
            return 0 <= offset < self._state.shape[0] and self._state[offset] != ABSENT

    def stats(self) -> dict:
        """Kernel debugfs names, plus same-filled and backing counts and the ratio."""
        with self._lock:
            pst = self.pool.stats()
            in_pool = self._state == POOL
            compressed = int(self._length[in_pool].sum())
            st = dict(self._counters)
            st.update({
                "stored_pages": int(in_pool.sum() + (self._state == SAME).sum()),
                "same_filled_pages": int((self._state == SAME).sum()),
                "stored_incompressible_pages": int((in_pool & (self._length == PAGE_SIZE)).sum()),
                "backing_pages": int((self._state == FILE).sum()),
                "pool_total_size": pst["pool_total_size"],
                "stored_compressed_bytes": compressed,
                "compression_ratio": (int(in_pool.sum()) * PAGE_SIZE / compressed) if compressed else 0.0,
                "max_pool_bytes": self._limit_bytes(),
                "accept_threshold_bytes": self._accept_bytes(),
                "pool_limit_reached": self._reached_full,
                "compressor": self.codec.codec_id,
                "blocks_on_device": self._blocks_on_device,
                "backend": pst["backend"],
            })
            return st

