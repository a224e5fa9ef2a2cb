"""The sparse entry table against a dict model: batch and single verbs mixed, offsets
clustered, spread and near the top of the swap area (2**51)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from devpool.zswap.entries import ABSENT, CHUNK, EntryTable

_TOP = 1 << 51
_offsets = st.one_of(st.integers(0, 300), st.integers(_TOP - 300, _TOP - 1), st.integers(0, _TOP - 1))
_ops = st.lists(st.tuples(st.booleans(), st.lists(_offsets, min_size=1, max_size=6, unique=True),
                          st.integers(0, 3)), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_entry_table_matches_a_dict(ops):
    t = EntryTable()
    model: dict[int, int] = {}
    for single, offs, state in ops:
        if single:
            for o in offs:
                i = t.find_one(o, create=state != ABSENT)
                if i >= 0:
                    t.set_state_one(i, state)
                    t.m_handle[i] = o
        else:
            arr = np.array(offs, np.int64)
            idx = t.find(arr, create=state != ABSENT)
            ok = idx >= 0
            t.set_state(idx[ok], state)
            t.handle[idx[ok]] = arr[ok]
        for o in offs:
            if state == ABSENT:
                model.pop(o, None)
            else:
                model[o] = state
        # every offset agrees in both lookups; rows follow the entries stored
        for o in {o for _, os_, _ in ops for o in os_}:
            i = t.find_one(o)
            j = int(t.find(np.array([o], np.int64))[0])
            assert i == j
            assert (t.m_state[i] if i >= 0 else ABSENT) == model.get(o, ABSENT)
            if o in model:
                assert t.m_handle[i] == o
                assert int(t.offsets_of(np.array([i]))[0]) == o
        chunks = {o // CHUNK for o in model}
        assert set(t._dir) == chunks
        assert len(t._dir) + len(t._free_rows) == t._row_chunk.size
        assert int((t._row_chunk >= 0).sum()) == len(chunks)
        for c, row in t._dir.items():
            assert t._row_used[row] == sum(1 for o in model if o // CHUNK == c)
        assert sorted(t.offsets_of(t.present()).tolist()) == sorted(model)


def test_reused_rows_keep_a_run_of_offsets_ascending():
    """Rows given back and taken again come out ascending, as fresh ones do: a batch of
    consecutive offsets then has ascending entry indices, and the table finds their rows
    in one linear pass, not a sort (rows reused in reverse made every ``set_state`` of a
    swap-in/swap-out cycle sort: the batch paths ran 5 - 7 % slower)."""
    t = EntryTable()
    run = np.arange(16 * CHUNK, dtype=np.int64)
    for cycle in range(3):
        idx = t.find(run, create=True)
        assert (np.diff(idx) > 0).all(), f"cycle {cycle}: entry indices of a run not ascending"
        t.set_state(idx, 1)
        t.set_state(idx, ABSENT)                     # every row given back
        assert not t._dir
    # a partial reuse: some rows back, taken by a later run
    idx = t.find(run, create=True)
    t.set_state(idx, 1)
    t.set_state(idx[: 8 * CHUNK], ABSENT)
    again = t.find(run[: 8 * CHUNK] + (1 << 20), create=True)
    assert (np.diff(again) > 0).all()


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.integers(-2**62, 2**62), max_size=40), ascending=st.booleans())
def test_distinct_is_np_unique_with_inverse(values, ascending):
    """The compiled one-pass run finder (taken while values never decrease) and its
    fallback sort give np.unique's values and inverse, in either order, repeats and all."""
    from devpool.zswap.entries import _distinct
    v = np.array(sorted(values) if ascending else values, np.int64)
    uniq, inv = _distinct(v)
    want, want_inv = np.unique(v, return_inverse=True)
    assert np.array_equal(uniq, want) and np.array_equal(inv, want_inv.reshape(-1))


@pytest.mark.parametrize("values", [np.array([2**53, 2**53 + 1], np.uint64), np.array([2**63, 2**63 + 1], np.uint64),
                                    np.array([0.5, 0.7]), np.array([1, 2, 2], np.int32),
                                    np.array([[3, 1], [1, 2]], np.int64)], ids=["u64-2**53", "u64-2**63", "float", "i32", "2d"])
def test_distinct_of_other_dtypes_is_np_unique_too(values):
    """Values the compiled pass cannot hold as int64 take the sort: none merged or wrapped."""
    from devpool.zswap.entries import _distinct
    uniq, inv = _distinct(values)
    want, want_inv = np.unique(values, return_inverse=True)
    assert uniq.dtype == want.dtype and np.array_equal(uniq, want) and np.array_equal(inv, want_inv.reshape(-1))
