"""Bound checks that trust caller integers must hold for every int64, near 2**63 too.

Each case is checked against Python's unbounded integers: a range is accepted exactly
when it lies inside the buffer, and a refused call changes nothing.
"""

from __future__ import annotations

import collections
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import devpool
from devpool._checks import first_range_outside

I64 = st.one_of(st.integers(-2**63, 2**63 - 1),
                st.sampled_from([2**63 - 1, 2**63 - 100, -2**63, -1, 0, 1, 4095, 4096, 4097]))


@settings(max_examples=400, deadline=None)
@given(starts=st.lists(I64, min_size=1, max_size=4), lengths=st.lists(I64, min_size=1, max_size=4),
       size=st.integers(0, 1 << 20))
def test_first_range_outside_agrees_with_unbounded_arithmetic(starts, lengths, size):
    n = min(len(starts), len(lengths))
    s, ln = starts[:n], lengths[:n]
    want = next((i for i in range(n) if not (0 <= ln[i] and 0 <= s[i] and s[i] + ln[i] <= size)), -1)
    got = first_range_outside(np.array(s, np.int64), np.array(ln, np.int64), size)
    assert got == want


@pytest.mark.parametrize("codec_id", ["lz4", "lz4-njit", "raw", "lz4hc"])
@settings(max_examples=40, deadline=None)
@given(start=I64)
def test_decompress_into_refuses_every_block_outside_data(codec_id, start):
    codec = devpool.get_codec(codec_id)
    data = np.zeros(64, np.uint8)
    out = np.full((1, 4096), 7, np.uint8)
    if 0 <= start and start + 16 <= data.size:
        ok = codec.decompress_into(data, [16], out, starts=[start])   # inside: may be corrupt
        assert ok.dtype == np.bool_
    else:
        with pytest.raises(devpool.BadInputError, match="outside"):
            codec.decompress_into(data, [16], out, starts=[start])
        assert (out == 7).all()


@settings(max_examples=60, deadline=None)
@given(start=I64)
def test_write_batch_refuses_every_source_outside_payload(backend, start):
    pool = devpool.open_pool(backend, 1 << 20, segment_bytes=16384)
    try:
        h = pool.alloc(64)
        pool.write(h, np.full(64, 3, np.uint8))
        payload = np.arange(100, dtype=np.uint8)
        if 0 <= start and start + 64 <= payload.size:
            pool.write_batch([h], payload, [64], src_starts=[start])
            assert bytes(pool.read(h)) == bytes(payload[start:start + 64])
        else:
            with pytest.raises(devpool.BadInputError, match="outside"):
                pool.write_batch([h], payload, [64], src_starts=[start])
            assert (pool.read(h) == 3).all()
    finally:
        pool.close()


@pytest.mark.parametrize("values", [[16, True], (False,), [1, 2, np.True_], collections.deque([16, True]),
                                    [16, np.array(True)]], ids=["list", "tuple", "np-bool", "deque", "0d-array"])
def test_a_bool_among_integers_is_refused_not_read_as_one(values):
    """numpy reads [16, True] as [16, 1]; a flag where a size or handle belongs is a
    caller's mistake, and the pool refuses it before it allocates anything."""
    from devpool._checks import as_int_array
    with pytest.raises(devpool.BadInputError, match="bool"):
        as_int_array(values, "sizes")
    pool = devpool.open_pool("host", 1 << 20)
    try:
        with pytest.raises(devpool.InvalidSizeError, match="bool"):
            pool.alloc_batch(values)
        assert pool.stats()["obj_used"] == 0
    finally:
        pool.close()
    assert as_int_array([16, 1], "sizes").tolist() == [16, 1]      # plain ints still pass


def test_a_strided_memoryview_is_bad_input_not_a_buffer_error():
    """A non-contiguous memoryview (``memoryview(a)[::2]``) where bytes belong is the
    caller's mistake: BadInputError naming the argument, nothing written or allocated
    (np.frombuffer raised a raw BufferError, which is not a ValueError, out of
    Pool.write (its payload), Pool.alloc(data=), Pool.read(out=) and Codec.decompress_into)."""
    from devpool.codecs import get_codec
    strided = memoryview(np.arange(16, dtype=np.uint8))[::2]
    pool = devpool.open_pool("host", 1 << 20)
    try:
        h = pool.alloc(8, data=np.full(8, 5, np.uint8))
        with pytest.raises(devpool.BadInputError, match="payload"):
            pool.write(h, strided)
        with pytest.raises(devpool.BadInputError, match="data"):
            pool.alloc(8, data=strided)
        with pytest.raises(devpool.BadInputError, match="out"):
            pool.read(h, out=memoryview(bytearray(16))[::2])
        assert pool.stats()["obj_used"] == 1 and (pool.read(h) == 5).all()
    finally:
        pool.close()
    out = np.zeros((1, 4096), np.uint8)
    with pytest.raises(devpool.BadInputError, match="data"):
        get_codec("raw").decompress_into(memoryview(bytearray(8192))[::2], [4096], out)
