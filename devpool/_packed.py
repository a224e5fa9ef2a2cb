"""Packed batches: many variable-length objects back to back in one uint8 array.

Each object is copied by an index loop over two slice views, which LLVM vectorises
(measured 22 GB/s); numba's slice assignment ``a[x:y] = b[u:v]`` took a generic
strided path (1.7 GB/s), and indexing the whole arrays with ``d + k`` kept a
wraparound branch per byte (0.7 GB/s).

The pool, the codecs and the host arena all move objects as *(packed bytes, lengths)*.
These numba-compiled range copies (no GIL; ``prange`` over objects for big batches)
are the one implementation of "copy these ranges there" on the host. One object per
loop iteration; the slice copy compiles to a memcpy-like loop. Small batches run
serially because waking the thread pool costs more than it saves.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from ._compiled import JIT, copy_bytes
from ._errors import BadInputError

#: One parallel region at a time. numba's workqueue threading layer (the fallback where
#: no OpenMP/TBB is installed) aborts the process on concurrent launches from several
#: Python threads; a region uses every core anyway, so serialising them costs little.
PARALLEL_LOCK = threading.Lock()

# Below this many bytes a batch is copied on one thread: numba's parallel launch costs
# tens of microseconds, about what 1 MiB of memcpy costs.
PARALLEL_MIN_BYTES = 1 << 20


@numba.njit(cache=True, nogil=True, inline="always")
def _copy(dst, src):
    for k in range(dst.shape[0]):
        dst[k] = src[k]


@numba.njit(cache=True, nogil=True)
def _copy_ranges_serial(dst, dst_starts, src, src_starts, lengths):
    for i in range(lengths.shape[0]):
        _copy(dst[dst_starts[i]:dst_starts[i] + lengths[i]], src[src_starts[i]:src_starts[i] + lengths[i]])


@numba.njit(cache=True, nogil=True, parallel=True)
def _copy_ranges_parallel(dst, dst_starts, src, src_starts, lengths):
    for i in numba.prange(lengths.shape[0]):
        _copy(dst[dst_starts[i]:dst_starts[i] + lengths[i]], src[src_starts[i]:src_starts[i] + lengths[i]])


@numba.njit(cache=True, nogil=True)
def _first_outside(n, starts, lengths):
    """The first ``i`` whose range leaves ``n`` bytes, or -1 (tested without forming
    start + length: an int64 sum may wrap)."""
    for i in range(lengths.shape[0]):
        s, k = starts[i], lengths[i]
        if not (k >= 0 and 0 <= s <= n and k <= n - s):
            return i
    return -1


def check_within(n: int, starts, lengths, what: str) -> None:
    """BadInputError, naming the first, where a range ``starts[i]:+lengths[i]`` leaves
    ``n`` bytes (or the two are not 1-D integer arrays of one length). The copy loops
    run unchecked: a range past an array's end was clipped on one side of a copy and
    read or written past it on the other."""
    starts, lengths = np.asarray(starts), np.asarray(lengths)
    if not (starts.ndim == lengths.ndim == 1 and starts.shape == lengths.shape
            and starts.dtype.kind in "iu" and lengths.dtype.kind in "iu"):
        raise BadInputError(f"{what}: starts and lengths must be 1-D integer arrays of one length, got "
                            f"{starts.dtype}{starts.shape} and {lengths.dtype}{lengths.shape}")
    i = _first_outside(n, starts.astype(np.int64, copy=False), lengths.astype(np.int64, copy=False))
    if i >= 0:
        raise BadInputError(f"{what} range {i} (at {int(starts[i])}, {int(lengths[i])} bytes) leaves its "
                            f"{n} bytes")


def copy_ranges(dst: np.ndarray, dst_starts: np.ndarray, src: np.ndarray, src_starts: np.ndarray,
                lengths: np.ndarray, parallel: bool = True) -> None:
    """``dst[dst_starts[i]:+lengths[i]] = src[src_starts[i]:+lengths[i]]`` for every ``i``.

    A range outside either array (or arrays of unequal lengths) is BadInputError,
    nothing copied: the copy loops run unchecked, and a slice past an array's end would
    have been clipped on one side and read past it on the other.

    ``parallel=False`` keeps the copy on the calling thread whatever its size: cleaning
    uses it, because a parallel region on a loaded 2-core machine waits for a worker
    the scheduler has parked (measured: 3 MB in 12 ms parallel, 0.06 ms serial)."""
    check_within(dst.shape[0], dst_starts, lengths, "a copy's destination")
    check_within(src.shape[0], src_starts, lengths, "a copy's source")
    if parallel and lengths.shape[0] > 1 and int(lengths.sum()) >= PARALLEL_MIN_BYTES:
        with PARALLEL_LOCK:
            _copy_ranges_parallel(dst, dst_starts, src, src_starts, lengths)
    else:
        _copy_ranges_serial(dst, dst_starts, src, src_starts, lengths)


def scatter(arena: np.ndarray, payload: np.ndarray, src_starts: np.ndarray,
            dst_offsets: np.ndarray, lengths: np.ndarray, parallel: bool = True) -> None:
    """Copy ``payload[src_starts[i]:+lengths[i]]`` to ``arena[dst_offsets[i]:]``."""
    copy_ranges(arena, dst_offsets, payload, src_starts, lengths, parallel)


def gather(arena: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
           out: np.ndarray, out_starts: np.ndarray, parallel: bool = True) -> None:
    """Copy ``arena[offsets[i]:+lengths[i]]`` to ``out[out_starts[i]:]``."""
    copy_ranges(out, out_starts, arena, offsets, lengths, parallel)


def packed_starts(lengths: np.ndarray) -> np.ndarray:
    """Exclusive prefix sum: where each object starts in a packed buffer."""
    starts = np.empty(lengths.shape[0], dtype=np.int64)
    if lengths.shape[0]:
        starts[0] = 0
        np.cumsum(lengths[:-1], out=starts[1:])
    return starts


@numba.njit(cache=True, nogil=True)
def _move_forward(base, src, dst, lengths):
    # objects that lie end to end at both ends go in one copy: a cleaning step's victims
    # are ~90 % live, so its survivors come in runs of ~10 (the same bytes, in the same
    # order: a run's copy is a memmove, as each of its objects' was)
    n = lengths.shape[0]
    i = 0
    while i < n:
        s, d, length = src[i], dst[i], lengths[i]
        i += 1
        while i < n and src[i] == s + length and dst[i] == d + length:
            length += lengths[i]
            i += 1
        copy_bytes(base + d, base + s, length)


def move_in_place(arena: np.ndarray, src: np.ndarray, dst: np.ndarray, lengths: np.ndarray) -> bool:
    """Move objects within ``arena`` (1-D uint8) from ``src`` to ``dst`` offsets in one
    copy each, in order, where that reads every source before anything overwrites it:
    the sources ascending without overlap, every range inside the arena, and no
    destination meeting a later object's source (each destination at or before its
    source is so: object i's destination ends before any later source starts; each copy
    is a memmove: an object may overlap its own destination; so is a cleaning step's
    survivors into the clean head's room, which holds no source, before the rest packed
    leftward). False, nothing copied, where the plan is not so (the caller stages it)."""
    # the copy runs on raw addresses: only an arena whose n-th byte lies n bytes past its
    # address, and that may be written (a strided or reversed view, or a wider dtype, had
    # its bytes moved by the wrong measure, some of them outside the view; a read-only one
    # was written through), and offsets that are integers already (floats were truncated,
    # a 0-d one taken as a plan of one), where the staged path copies or refuses them
    if not (JIT and isinstance(arena, np.ndarray) and arena.ndim == 1 and arena.dtype == np.uint8
            and arena.flags.c_contiguous and arena.flags.writeable):
        return False
    src, dst, lengths = (np.asarray(a) for a in (src, dst, lengths))
    if not all(a.ndim == 1 and a.dtype.kind in "iu" for a in (src, dst, lengths)):
        return False
    src, dst, lengths = (np.ascontiguousarray(a, np.int64) for a in (src, dst, lengths))
    if not src.shape == dst.shape == lengths.shape:
        return False
    # every range inside the arena, tested by _first_outside (check_within's test), which
    # never forms src + lengths: int64 sums wrap silently in numpy, and a source and a
    # length near 2**62 each summed below the arena's size, so the copy ran 2**62 bytes
    # from 2**62 past the arena (a crash, where the staged path refused to allocate its
    # buffer). Inside it, the sums below cannot wrap.
    size = arena.shape[0]
    if src.size and not (_first_outside(size, src, lengths) < 0 and _first_outside(size, dst, lengths) < 0
                         and (src[1:] >= src[:-1] + lengths[:-1]).all()
                         and ((dst <= src).all() or not _meets_a_later_source(src, dst, lengths))):
        return False
    _move_forward(arena.ctypes.data, src, dst, lengths)
    return True


def _meets_a_later_source(src: np.ndarray, dst: np.ndarray, lengths: np.ndarray) -> bool:
    """Whether any object's destination range meets the source range of an object after
    it, not yet read when the copies run in order (the sources ascending without overlap,
    every range inside the arena: no sum below wraps). Only the last source that starts
    before a destination ends can reach into it: the sources' ends ascend too. (An empty
    range inside a source counts as meeting it: declined, never wrong.)"""
    last = np.searchsorted(src, dst + lengths, side="left") - 1
    later = last > np.arange(src.size)
    return bool((src[last[later]] + lengths[last[later]] > dst[later]).any())


@numba.njit(cache=True, nogil=True)
def _same_filled(words, mask, fill):
    for i in range(words.shape[0]):
        w0 = words[i, 0]
        same = True
        for k in range(1, words.shape[1]):
            if words[i, k] != w0:        # most pages differ within the first words
                same = False
                break
        mask[i] = same
        fill[i] = w0


def same_filled(pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which (N, 4096) pages repeat one 8-byte word, and that word (zswap's same-filled)."""
    words = pages.view(np.uint64)
    mask = np.empty(pages.shape[0], np.bool_)
    fill = np.empty(pages.shape[0], np.uint64)
    _same_filled(words, mask, fill)
    return mask, fill


@numba.njit(cache=True)
def same_filled_one(page):
    """``same_filled`` of one C-contiguous (4096,) uint8 page: ``(same, fill word)``, the
    same rule in one compiled call (0.2 us a page here; a scalar look at three words
    before the batch loop cost 0.4). ``fill`` is meaningful only when ``same``."""
    words = page.view(np.uint64)
    w0 = words[0]
    for k in range(1, words.shape[0]):
        if words[k] != w0:           # most pages differ within the first words
            return False, w0
    return True, w0


@numba.njit(cache=True, nogil=True)
def has_duplicates(values):
    """True when a 1-D int array repeats a value (sort-based, no Python loop)."""
    s = np.sort(values)
    for i in range(1, s.shape[0]):
        if s[i] == s[i - 1]:
            return True
    return False
