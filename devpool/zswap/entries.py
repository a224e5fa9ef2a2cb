"""Zswap's entry table: swap offset -> entry, with memory that follows what is stored.

Linux keys zswap entries by swap offset in an xarray, so a store at offset 2**32 - 2
costs one entry, not four gigabytes. This table does the same with two levels: offsets
are grouped in chunks of ``CHUNK`` (64) consecutive offsets; a dict maps a chunk number
to a *row* of flat numpy arrays (state, handle, length, fill word, LRU age, referenced
bit), and a row is given back once every entry in it is absent. An *entry index* is
``row * CHUNK + offset % CHUNK``: the frontend reads and writes the field arrays with
those indices, vectorised for a batch, by scalar for one page.

Cost. A row is 64 entries x 34 bytes = 2.2 KiB: dense swap (consecutive offsets) costs
34 bytes per stored page, and the worst case, every page in a chunk of its own, 2.2 KiB
per page (1 000 pages at random offsets below 2**32: 2.2 MB). A batch looks its chunks
up with one ``np.unique`` and one C-level ``map`` over the distinct chunks (no Python
loop over pages); one page costs a dict lookup.
"""

from __future__ import annotations

import itertools

import numba
import numpy as np

__all__ = ["ABSENT", "CHUNK", "EntryTable"]

#: offsets per row: small enough that a lone page costs 2 KiB, large enough that dense
#: swap pays one dict entry per 64 pages
CHUNK_BITS = 6
CHUNK = 1 << CHUNK_BITS
_LOW = CHUNK - 1

#: the state of an offset that holds nothing
ABSENT = 0


@numba.njit(cache=True, nogil=True)
def _runs(values):
    """``(distinct values, inverse, True)`` of values that never decrease, in one pass;
    ``(.., .., False)`` as soon as one decreases."""
    n = values.shape[0]
    uniq = np.empty(n, np.int64)
    inv = np.empty(n, np.int64)
    k = -1
    for i in range(n):
        v = values[i]
        if k < 0 or v != uniq[k]:
            if k >= 0 and v < uniq[k]:
                return uniq[:0], inv[:0], False
            k += 1
            uniq[k] = v
        inv[i] = k
    return uniq[:k + 1], inv, True


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` (inverse flat): one compiled pass when
    ``values`` are 1-D int64 that never decrease (swap offsets come in runs: the common
    case; the six numpy passes it replaces cost 6.7 us per 1024 offsets, measured, on
    every batch store and load), a sort otherwise (any other dtype too: the pass keeps
    int64, so uint64 or float values would be merged or wrapped)."""
    ok = values.dtype == np.int64 and values.ndim == 1
    if ok:
        uniq, inv, ok = _runs(values)
    if not ok:
        uniq, inv = np.unique(values, return_inverse=True)
        inv = inv.reshape(-1)
    return uniq, inv


@numba.njit(cache=True, nogil=True)
def _indices(rows, inv, offsets):
    """Entry index of each offset from its chunk's row (-1 where the chunk has none)."""
    idx = np.empty(offsets.shape[0], np.int64)
    for i in range(offsets.shape[0]):
        r = rows[inv[i]]
        idx[i] = r * CHUNK + (offsets[i] & _LOW) if r >= 0 else -1
    return idx


class EntryTable:
    """Fields per entry (public arrays, indexed by entry index): ``state`` (uint8, 0 =
    absent), ``handle``, ``length``, ``fill``, ``seq``, ``referenced``. Each also has a
    memoryview ``m_<field>`` over the same memory, for the single-page paths: indexing
    one yields a Python int in a quarter of a numpy scalar's time."""

    _FIELDS = (("state", np.uint8), ("handle", np.int64), ("length", np.int64),
               ("fill", np.uint64), ("seq", np.int64), ("referenced", np.bool_))

    def __init__(self):
        self._dir: dict[int, int] = {}              # chunk number -> row
        self._free_rows: list[int] = []
        self._row_chunk = np.zeros(0, np.int64)     # row -> chunk number (-1: free)
        self._row_used = np.zeros(0, np.int64)      # present entries per row
        for name, dtype in self._FIELDS:
            setattr(self, name, np.zeros(0, dtype))
        self._views()

    def _views(self) -> None:
        for name, _ in self._FIELDS:
            setattr(self, "m_" + name, memoryview(getattr(self, name)))
        self._m_used = memoryview(self._row_used)

    # --- rows ----------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes the table's arrays hold (the dict not counted: ~100 bytes per row)."""
        return sum(getattr(self, n).nbytes for n, _ in self._FIELDS) + \
            self._row_chunk.nbytes + self._row_used.nbytes

    def _grow(self, rows_needed: int) -> None:
        old = self._row_chunk.shape[0]
        new = max(old * 2, old + rows_needed, 16)
        for name, dtype in self._FIELDS:
            arr = getattr(self, name)
            setattr(self, name, np.concatenate([arr, np.zeros((new - old) * CHUNK, dtype)]))
        self._row_chunk = np.concatenate([self._row_chunk, np.full(new - old, -1, np.int64)])
        self._row_used = np.concatenate([self._row_used, np.zeros(new - old, np.int64)])
        self._views()
        self._free_rows.extend(range(new - 1, old - 1, -1))   # lowest row taken first

    def _new_rows(self, chunks: list[int]) -> list[int]:
        if len(self._free_rows) < len(chunks):
            self._grow(len(chunks) - len(self._free_rows))
        # ascending, as the chunks come (a batch's chunks are sorted): the entry indices
        # of a run of offsets then ascend too, and set_state finds their rows in one
        # linear pass instead of a sort (rows given back by _release would otherwise come
        # out in reverse)
        rows = sorted(self._free_rows[-len(chunks):])
        del self._free_rows[-len(chunks):]
        self._dir.update(zip(chunks, rows))
        self._row_chunk[rows] = chunks
        return rows

    # --- lookups -------------------------------------------------------------------------
    def find(self, offsets: np.ndarray, create: bool = False) -> np.ndarray:
        """Entry indices of ``offsets`` (int64 array); -1 where the chunk has no row
        (``create`` makes the rows first, so every index is valid)."""
        if offsets.size == 0:
            return np.zeros(0, np.int64)
        chunks, inv = _distinct(offsets >> CHUNK_BITS)
        keys = chunks.tolist()
        rows = np.fromiter(map(self._dir.get, keys, itertools.repeat(-1)), np.int64, len(keys))
        if create:
            missing = np.flatnonzero(rows < 0)
            if missing.size:
                rows[missing] = self._new_rows([keys[i] for i in missing.tolist()])
        return _indices(rows, inv, offsets)

    def find_one(self, offset: int, create: bool = False) -> int:
        """Entry index of one offset, or -1 when nothing in its chunk is stored."""
        row = self._dir.get(offset >> CHUNK_BITS)
        if row is None:
            if not create:
                return -1
            row = self._new_rows([offset >> CHUNK_BITS])[0]
        return row * CHUNK + (offset & _LOW)

    def offsets_of(self, idx: np.ndarray) -> np.ndarray:
        """The swap offsets of entry indices."""
        return (self._row_chunk[idx >> CHUNK_BITS] << CHUNK_BITS) | (idx & _LOW)

    def states(self, idx: np.ndarray) -> np.ndarray:
        """``state`` at indices from :meth:`find`, ABSENT where the index is -1."""
        out = np.zeros(idx.shape[0], np.uint8)
        ok = idx >= 0
        out[ok] = self.state[idx[ok]]
        return out

    def present(self) -> np.ndarray:
        """Entry indices of every present entry."""
        return np.flatnonzero(self.state != ABSENT)

    # --- state changes: the only writers of ``state`` -------------------------------------
    def set_state(self, idx: np.ndarray, value: int) -> None:
        """Set entries' state (valid indices); rows left with no entry are given back."""
        if idx.size == 0:
            return
        self.state[idx] = value
        rows = _distinct(idx >> CHUNK_BITS)[0]
        used = (self.state.reshape(-1, CHUNK)[rows] != ABSENT).sum(axis=1)
        self._row_used[rows] = used
        if value == ABSENT:
            self._release(rows[used == 0])

    def set_state_one(self, i: int, value: int) -> None:
        """Set one entry's state (the rule of :meth:`set_state`, on scalars)."""
        was = self.m_state[i]
        if value == ABSENT:
            if was != ABSENT:
                self.clear_one(i)
            return
        self.m_state[i] = value
        if was == ABSENT:
            self._m_used[i >> CHUNK_BITS] += 1

    def clear_one(self, i: int) -> None:
        """A present entry leaves (its row is given back when it was the last)."""
        self.m_state[i] = ABSENT
        row = i >> CHUNK_BITS
        used = self._m_used
        left = used[row] - 1
        used[row] = left
        if left == 0:                               # the rule of _release, for one row
            del self._dir[int(self._row_chunk[row])]
            self._row_chunk[row] = -1
            self._free_rows.append(row)

    def _release(self, rows) -> None:
        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            return
        list(map(self._dir.pop, self._row_chunk[rows].tolist()))   # C-level, no bytecode per row
        self._row_chunk[rows] = -1
        self._free_rows.extend(rows.tolist())
