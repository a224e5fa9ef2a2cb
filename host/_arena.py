"""``HostStorage``: an arena in host RAM, reserved once and committed lazily.

Mechanism: one anonymous ``mmap`` of ``capacity_bytes`` with ``MAP_NORESERVE`` reserves
address space only; the kernel backs a page when it is first written, so an unused
arena costs nothing and capacity is a ceiling, not a preallocation. ``release`` hands
ranges back with ``madvise(MADV_FREE)`` (``MADV_DONTNEED`` where the kernel lacks it):
the kernel may take the pages at once, without I/O, whenever it needs memory, but
until it does, writing them again costs no page fault and no zeroing. Measured here:
refilling 32 MiB after MADV_DONTNEED took 16 ms, after MADV_FREE 4.2 ms, untouched
3.5 ms; under churn (zswap stores after loads) that was ~10 % of a store batch. The
process's RSS keeps such pages until the kernel reclaims them (``LazyFree`` in
/proc/meminfo); ``pool_total_size`` never counts them. Copies run in numba, no GIL.
Cost: scatter/gather are memcpy-bound (several GB/s per core); no transfers. A segment
that single objects will fill is backed in one call when it opens (``populate``), not a
page fault every two or three single stores.

Huge pages are the caller's choice (``hugepages=True``: ``MADV_HUGEPAGE``; the default,
False, advises ``MADV_NOHUGEPAGE``, so that the kernel's ``always`` mode does not give the
arena huge pages unasked). Measured on this repository's VM with
``benchmarks/bench_growth_paired.py`` (10^6 stored pages against 10^4, interleaved):

- for: a single page's block sits at a random place in gigabytes, and on 4 KiB pages
  each access also misses the TLB (zsmalloc's pages sit in the kernel's direct map,
  mapped with huge pages). A single store grew x1.03 with huge pages, x1.15 - 1.17
  without; a single load x1.21 - 1.26 against x1.22 - 1.24 (the location hints do most
  of that: ``devpool.zswap.entries``). (Found later: most of the store's difference
  was page faults, one per 4 KiB of fresh arena against one per 2 MiB; ``populate``
  now takes them out of the single store on small pages: x0.99 - 1.01.)
- against: timed interleaved beside other pools, a batch of stores at 10^6 pages took
  +3.6 - 5.8 us a page with huge pages (a load + store batch cycle's throughput 0.67 -
  0.81x 10^4's, against 1.02 - 1.04x on 4 KiB pages: ``--batch``), under the issue's
  >= 0.90x. One pool alone showed no such cost (a cycle of 1 024: 11.6 ms against 12.3);
  the cause was not found.

So the default keeps small pages. Where the kernel has no transparent huge pages, the
advice is refused and ``describe()`` says ``hugepages: False``.
"""

from __future__ import annotations

import errno
import mmap
import sys

import numpy as np

from devpool._checks import check_flag
from devpool._errors import PoolFullError
from devpool.pool.storage import Storage

from devpool import _packed as _copy

__all__ = ["HostStorage"]

# Python < 3.13 does not export MAP_NORESERVE; its value is fixed by the Linux ABI.
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)
#: how released ranges go back: lazily freeable if the platform has it
RELEASE_ADVICE = getattr(mmap, "MADV_FREE", getattr(mmap, "MADV_DONTNEED", None))
#: how a segment is backed at once (Linux 5.14: ``MADV_POPULATE_WRITE``, 23 in the generic
#: ABI; Python's mmap does not export it: not in 3.6 - 3.13, built against headers that
#: define it): see ``HostStorage.populate``
POPULATE_ADVICE = getattr(mmap, "MADV_POPULATE_WRITE", 23 if sys.platform == "linux" else None)


#: the kernel's transparent huge page mode: ``[always]``, ``[madvise]`` or ``[never]``
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_never() -> bool:
    """True where the kernel says it never gives transparent huge pages (the advice is
    then taken without error, and changes nothing)."""
    try:
        with open(THP_ENABLED) as f:
            return "[never]" in f.read()
    except OSError:
        return False                     # (no such file: madvise's EINVAL says so below)


def _advise_hugepages(region: mmap.mmap, hugepages: bool) -> bool:
    """Ask for transparent huge pages over ``region``, or (``hugepages`` False) for none:
    under THP ``always`` the kernel gives an anonymous mapping huge pages unasked, so
    opting out is advice too (MADV_NOHUGEPAGE). Whether the region may get huge pages:
    False where the platform or the kernel (no THP: EINVAL; ``never``) says no. Only
    advice: nothing is allocated here."""
    advice = getattr(mmap, "MADV_HUGEPAGE" if hugepages else "MADV_NOHUGEPAGE", None)
    if advice is None:
        return False
    try:
        region.madvise(advice)
    except OSError:
        return False
    return hugepages and not _thp_never()


class HostStorage(Storage):
    """Arena in host RAM (numpy view over an anonymous mmap), numba-compiled moves."""

    kind = "host"

    def __init__(self, capacity_bytes: int, *, hugepages: bool = False):
        hugepages = check_flag(hugepages, "hugepages")      # before anything is reserved
        super().__init__(capacity_bytes)
        try:
            self._map = mmap.mmap(-1, self.capacity_bytes,
                                  flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
        except (OSError, OverflowError, ValueError) as exc:
            raise PoolFullError(
                f"cannot reserve {self.capacity_bytes} bytes of host address space: {exc}"
            ) from exc
        #: whether the kernel took the MADV_HUGEPAGE advice and gives huge pages (module docstring)
        self.hugepages = _advise_hugepages(self._map, hugepages)
        self._arena = np.frombuffer(self._map, dtype=np.uint8)
        # one page copied through memoryviews costs about half what numpy's slice and
        # assignment do (~100 ns against ~250 for 2 KiB): the single-object verbs use it
        self._bytes = memoryview(self._map)
        # what lend_one hands out: the arena, read-only (a decoder reads a block where it
        # lies instead of copying it out first: a single load ~1 us faster, measured)
        # (over a read-only memoryview, so its flag cannot be set writable again: a guard
        # against mistakes; code set on writing could still reach the mmap through .base)
        self._ro_bytes = self._bytes.toreadonly()
        self._lent = np.frombuffer(self._ro_bytes, np.uint8)
        self._move_tmp = np.zeros(0, np.uint8)
        self.address = self._arena.ctypes.data     # (the mapping never moves)
        self._to_release: list[tuple[int, int]] = []      # released, advice not given yet
        self._populate_advice = POPULATE_ADVICE                # None once the kernel refused it

    def commit(self, offset: int, nbytes: int) -> None:
        # Pages are backed on first touch (or by populate); the account is what
        # pool_total_size reports.
        if self._to_release:         # never advise away a range that is in use again
            self.trim()
        self._committed += int(nbytes)

    def populate(self, offset: int, nbytes: int) -> None:
        """Back ``nbytes`` at ``offset`` with pages now, in one call (already backed ones
        cost nothing: a spare released lazily and not yet taken). The pool asks it for a
        segment that single stores will fill: on first touch, a pool growing into fresh
        memory took a page fault every two or three of them, in the middle of a store
        (measured: 0.37 faults a single store at 10^6 stored pages, store p50 +1.1 us;
        ~1 us a page populated against ~1.3 touched, 10 where the VM's host backs the
        page for the first time). Batches are left to first touch: their copies fault on
        every worker thread at once, where this runs on one. Only advice, for any int
        range (clipped to the arena; nothing on a closed one): where the kernel refuses
        (older than 5.14: EINVAL, never asked again; no memory: ENOMEM), pages are
        backed on first touch, as before."""
        offset, nbytes = int(offset), int(nbytes)
        end = min(offset + nbytes, self.capacity_bytes)
        offset = max(offset, 0) & ~(mmap.PAGESIZE - 1)     # (madvise takes whole pages)
        if self._populate_advice is None or self._map is None or offset >= end:
            return
        try:
            self._map.madvise(self._populate_advice, offset, end - offset)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS):
                self._populate_advice = None

    def release(self, offset: int, nbytes: int) -> None:
        # the advice waits for trim(): the pool releases segments in runs, and one
        # madvise per run instead of per segment took a tenth off a load batch that
        # emptied its segments (91 calls of ~22 us per 16 384 pages)
        self._to_release.append((int(offset), int(nbytes)))
        self._committed -= int(nbytes)

    def trim(self) -> None:
        ranges = sorted(self._to_release)
        self._to_release.clear()
        run_start = run_end = None
        for off, n in ranges + [(None, 0)]:
            if run_end is not None and off == run_end:
                run_end += n
                continue
            if run_start is not None:
                self._advise(run_start, run_end - run_start)
            run_start, run_end = off, (None if off is None else off + n)

    def _advise(self, offset: int, nbytes: int) -> None:
        if RELEASE_ADVICE is not None:
            try:
                self._map.madvise(RELEASE_ADVICE, offset, nbytes)
            except OSError:          # MADV_FREE unsupported by this kernel: eager release
                try:
                    self._map.madvise(mmap.MADV_DONTNEED, offset, nbytes)
                except OSError as exc:
                    # EINVAL on locked memory: a process that mlockall'ed (the swap
                    # device's server) wants its pool resident; the pages stay, reused
                    if exc.errno != errno.EINVAL:
                        raise

    def scatter(self, payload, src_starts, dst_offsets, lengths):
        _copy.scatter(self._arena, payload, src_starts, dst_offsets, lengths)

    def gather(self, offsets, lengths, out, out_starts):
        _copy.gather(self._arena, offsets, lengths, out, out_starts)

    def write_one(self, offset, data):
        self._bytes[offset:offset + data.size] = data

    def read_one(self, offset, out):
        memoryview(out)[:] = self._bytes[offset:offset + out.size]

    def copy_one(self, offset, nbytes):
        # a slice's copy is one allocation and one memcpy: ~40 % less than a new array
        # filled through memoryviews (measured on 2 KiB)
        return self._arena[offset:offset + nbytes].copy()

    def lend_one(self, offset, nbytes):
        return self._lent[offset:offset + nbytes]

    def discard_one(self, offset, nbytes):
        pass                                   # host RAM keeps freed bytes until reuse

    def move(self, src_offsets, dst_offsets, lengths):
        # one copy each, no staging, where no copy can overwrite a source not yet read
        # (_copy.move_in_place says when, for each plan). A cleaning plan is so in every
        # churn measured: its first objects go to the clean head's room, which holds no
        # source, and the rest next-fit in arena order into the free segments and the
        # victims, from the lowest, at or before their sources. Staged, a step at 10^6
        # stored pages copied its ~15 MB twice and kept a buffer as large for the next
        if _copy.move_in_place(self._arena, src_offsets, dst_offsets, lengths):
            return
        size = self._arena.shape[0]             # (before the buffer: 2**62 bytes asked is no MemoryError)
        _copy.check_within(size, src_offsets, lengths, "a move's source")
        _copy.check_within(size, dst_offsets, lengths, "a move's destination")
        # Read every source before writing any destination: plans may overlap. The
        # staging buffer is kept: a fresh one faults in page by page on every move.
        total = int(lengths.sum())
        if self._move_tmp.size < total:
            self._move_tmp = np.empty(max(total, 2 * self._move_tmp.size), np.uint8)
        tmp = self._move_tmp[:total]
        starts = _copy.packed_starts(lengths)
        _copy.gather(self._arena, src_offsets, lengths, tmp, starts, parallel=False)
        _copy.scatter(self._arena, tmp, starts, dst_offsets, lengths, parallel=False)

    def describe(self) -> dict:
        return {"backend": self.kind, "device": "host RAM", "hugepages": self.hugepages}

    def close(self) -> None:
        if self._map is not None:
            self._arena = self._lent = None
            self.address = 0
            self._ro_bytes.release()
            self._bytes.release()
            try:
                self._map.close()
            except BufferError:
                # A transient view (e.g. a frame kept alive by a traceback) still exports
                # the buffer: hand the memory back now; the mapping goes with the last ref.
                self._map.madvise(mmap.MADV_DONTNEED, 0, self.capacity_bytes)
            self._map = None
            self._committed = 0
