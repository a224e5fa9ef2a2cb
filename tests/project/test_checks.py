"""_checks against plain-Python references, at the edges of int64."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from devpool._checks import first_range_outside

_I64 = st.one_of(st.integers(-2**63, 2**63 - 1), st.integers(-5, 5),
                 st.integers(2**63 - 5, 2**63 - 1), st.integers(-2**63, -2**63 + 5))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_I64, _I64), min_size=1, max_size=6), st.integers(0, 2**63 - 1))
def test_first_range_outside_matches_python_ints(ranges, size):
    starts = np.array([s for s, _ in ranges], np.int64)
    lengths = np.array([n for _, n in ranges], np.int64)
    want = next((i for i, (s, n) in enumerate(ranges) if not (n >= 0 and s >= 0 and s + n <= size)), -1)
    assert first_range_outside(starts, lengths, size) == want
