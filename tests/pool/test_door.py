"""The pool's door for compiled callers (devpool.pool.door): the allocator's own rules,
open only where a compiled caller may use them, and a shut door changes nothing."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import devpool
from devpool._compiled import copy_bytes, prefetch_range
from devpool.pool import door as D


@numba.njit
def _alloc(door_at, src):
    return D.door_alloc_copy(door_at, src.ctypes.data, src.shape[0])


@numba.njit
def _read(door_at, handle, out, free):
    """Copy the object out through lend; free it when asked: (slot, size, freed)."""
    slot, address, size = D.door_lend(door_at, handle)
    if slot < 0:
        return slot, 0, -1
    copy_bytes(out.ctypes.data, address, size)
    return slot, size, (D.door_free(door_at, slot) if free else -1)


def _warm(pool, n=3):
    """A few objects the long way (the first segment, the handle table's reserve)."""
    return [pool.alloc(64, data=np.full(64, k, np.uint8)) for k in range(n)]


def test_door_is_open_on_host_and_shut_where_a_compiled_caller_may_not_go():
    host = devpool.open_pool("host", 1 << 22)
    chaos = devpool.open_pool("chaos", 1 << 22)
    try:
        assert host.door[D.DOOR_OPEN] == 1 and host.door[D.DOOR_ARENA] != 0
        assert chaos.door[D.DOOR_OPEN] == 0             # hostile: every verb is Python's
        with pytest.raises(ValueError):
            host.door[D.DOOR_OPEN] = 0                  # the caller's to read, not to set
        with pytest.raises(ValueError):
            host.door.flags.writeable = True            # not even by asking: it names raw memory
        seen = []
        h = _warm(host)[0]
        host.read_with(h, lambda block: seen.append(int(host.door[D.DOOR_OPEN])) or 1)
        assert seen == [0] and host.door[D.DOOR_OPEN] == 1          # shut while lending, open after
        with pytest.raises(RuntimeError):
            host.read_with(h, lambda block: (_ for _ in ()).throw(RuntimeError("consume failed")))
        assert host.door[D.DOOR_OPEN] == 1
    finally:
        host.close()
        chaos.close()
    assert host.door[D.DOOR_OPEN] == 0                  # closed: shut


def test_door_verbs_are_the_pools_verbs(rng):
    pool = devpool.open_pool("host", 1 << 22)
    at = pool.door.ctypes.data
    _warm(pool)
    data = rng.integers(0, 256, 1000, dtype=np.uint8)
    h = _alloc(at, data)
    assert h != 0
    np.testing.assert_array_equal(pool.read(h), data)        # the Python verbs see it
    out = np.zeros(1000, np.uint8)
    slot, size, _ = _read(at, h, out, False)
    assert slot >= 0 and size == 1000 and (out == data).all()
    h2 = pool.alloc(500, data=data[:500])                    # and the door sees theirs
    out2 = np.zeros(500, np.uint8)
    assert _read(at, h2, out2, True)[1] == 500 and (out2 == data[:500]).all()
    with pytest.raises(devpool.InvalidHandleError):
        pool.read(h2)                                        # freed through the door: stale
    assert _read(at, h2, out2, False)[0] == -1               # ... there too
    assert _read(at, h ^ (1 << 40), out2, False)[0] == -1    # a foreign / malformed handle
    assert _read(at, 0, out2, False)[0] == -1
    assert pool.stats()["obj_used"] == 4
    pool.close()


def test_a_shut_door_changes_nothing(rng):
    pool = devpool.open_pool("host", 1 << 22)
    at = pool.door.ctypes.data
    h = _warm(pool)[1]
    before = pool.stats()
    pool._door[D.DOOR_OPEN] = 0                                 # as while lending
    assert _alloc(at, np.ones(10, np.uint8)) == 0
    assert _read(at, h, np.zeros(64, np.uint8), True)[0] == -1
    assert pool.stats() == {**before, "door_open": False}
    pool._door[D.DOOR_OPEN] = 1
    assert _read(at, h, np.zeros(64, np.uint8), True)[0] >= 0
    pool.close()


@numba.njit
def _lend(door_at, handle, warm):
    """door_lend (which leaves what it found in the allocator's meta), and door_warm_free
    when asked: of the object's own offset, and of guesses (a stale record's) anywhere."""
    slot, address, size = D.door_lend(door_at, handle)
    if warm:
        D.door_warm_free(door_at, address - D.door_arena(door_at))
        for guess in (-1, -(1 << 62), 1 << 40, (1 << 63) - 1, 0):
            D.door_warm_free(door_at, guess)
    return slot


def test_warming_a_free_changes_nothing():
    """door_warm_free only asks the CPU to load the figures a free will update (a load
    calls it before its decode, an invalidation before its handle check, by a guess of
    the object's offset): the pool's tables, its stats and the object stay as they were,
    whatever the guess, and the free that follows is the same free."""
    pool = devpool.open_pool("host", 1 << 22)
    at = pool.door.ctypes.data
    hs = _warm(pool, 5)
    al = pool.alloc_
    tables = lambda: [a.copy() for a in (al.locs, al.sizes, al.hv, al.seg_live, al.seg_in_use, al.seg_fill,   # noqa: E731
                                         al.seg_placed, al.meta)]
    for h in hs:
        assert _lend(at, h, False) >= 0
    before, stats = tables(), pool.stats()
    for h in hs:
        assert _lend(at, h, True) >= 0
    assert all((a == b).all() for a, b in zip(tables(), before)) and pool.stats() == stats
    out = np.zeros(64, np.uint8)
    assert _read(at, hs[2], out, True)[2] == -1 and (out == 2).all()
    assert pool.stats()["obj_used"] == stats["obj_used"] - 1
    pool.close()


@numba.njit
def _prefetch_range(address, nbytes):
    prefetch_range(address, nbytes)


def test_prefetching_a_range_never_faults_nor_writes():
    """prefetch_range is a hint: over unmapped addresses (0, the top of the address
    space, a range reaching past a mapping's end) it neither faults nor changes a byte."""
    buf = np.arange(256, dtype=np.uint8)
    for address, nbytes in ((0, 4096), (1 << 47, 1 << 16), (-4096, 8192), (buf.ctypes.data, 1 << 20),
                            (buf.ctypes.data + 3, 0), (buf.ctypes.data, -64)):
        _prefetch_range(address, nbytes)
    assert (buf == np.arange(256, dtype=np.uint8)).all()


_PREFETCH_AT_THE_TOP = """
import numba
from devpool._compiled import prefetch_range

@numba.njit
def lines(address, nbytes):
    prefetch_range(address, nbytes)

for address, nbytes in (((1 << 63) - 100, 99), ((1 << 63) - 64, 4096), ((1 << 63) - 1, 1), (-(1 << 63), 64)):
    lines(address, nbytes)
print("done")
"""


def test_prefetching_a_range_at_the_top_of_the_address_space_ends():
    """A range whose last line sits at the top of int64 (a garbage address): the walk
    ends after the range's lines. It walked by address, and the address past the last
    line wrapped to -2**63, below the end: ~2**57 prefetches, holding the GIL (so the
    check runs in a child, under a timeout)."""
    import os
    import subprocess
    import sys
    got = subprocess.run([sys.executable, "-c", _PREFETCH_AT_THE_TOP], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert got.returncode == 0 and got.stdout.strip() == "done", got.stderr[-2000:]


def test_frees_through_the_door_give_segments_back_once_settled():
    """A door free that empties a segment says so; door_settle gives it back (as a
    Python free would), and the pool's figures match a twin freed the Python way."""
    def fill(pool):
        hs = _warm(pool, 1)
        hs += [pool.alloc(3000, data=np.full(3000, 7, np.uint8)) for _ in range(400)]
        return hs
    a = devpool.open_pool("host", 1 << 24, segment_bytes=1 << 16)
    b = devpool.open_pool("host", 1 << 24, segment_bytes=1 << 16)
    ha, hb = fill(a), fill(b)
    out = np.zeros(3000, np.uint8)
    answers = []
    for h in ha[1:]:
        with a.lock:
            got = _read(a.door.ctypes.data, h, out, True)[2]
            answers.append(got)
            if got != -1:
                D.door_settle(a, got)
    for h in hb[1:]:
        b.free(h)
    assert any(g >= 0 for g in answers)                      # segments were emptied
    sa, sb = a.stats(), b.stats()
    for k in ("obj_used", "pool_total_size", "segments_in_use", "spare_bytes", "dead_bytes"):
        assert sa[k] == sb[k], k
    a.close()
    b.close()


_LOW = (1 << 53) - 1        # a handle's generation and slot (above: the pool's id)


@pytest.mark.parametrize("seed", range(3))
def test_single_verbs_through_the_door_and_in_python_are_indistinguishable(seed):
    """A host pool's single verbs run through its door; a twin with the door shut runs
    them in Python. Random allocs (with and without data), writes, reads (fresh, into a
    buffer, freeing), frees, and bad calls (stale, foreign, huge, negative and numpy
    handles, wrong sizes, read-only and wrong outs), with cleaning on every free: the
    same handles (but for the pool id), bytes, errors and figures, op for op."""
    rng = np.random.default_rng(seed)
    door = devpool.open_pool("host", 1 << 22, segment_bytes=1 << 14)
    py = devpool.open_pool("host", 1 << 22, segment_bytes=1 << 14)
    py._door_opens = False
    for p in (door, py):
        p.CLEAN_TRIGGER = 0.0
    live: list[tuple] = []          # (door's handle, python's handle)
    dead: list[tuple] = []

    def both(fn, hs=(None, None)):
        out = []
        for p, h in zip((door, py), hs):
            try:
                r = fn(p, h)
            except devpool.DevpoolError as exc:
                r = type(exc).__name__
            out.append(r.tobytes() if isinstance(r, np.ndarray) else r)
        if isinstance(out[0], int) and not isinstance(out[0], bool) and out[0] > 1 << 53:
            assert out[0] & _LOW == out[1] & _LOW, out           # handles: the same but for the id
            return tuple(out)
        assert out[0] == out[1], out
        return out[0]

    for step in range(1500):
        op = int(rng.integers(0, 9))
        n = int(rng.integers(1, 3000))
        data = rng.integers(0, 256, n, dtype=np.uint8)
        hs = live[int(rng.integers(0, len(live)))] if live else (12345, 12345)
        if op == 0:
            live.append(both(lambda p, h: p.alloc(n)))
        elif op == 1:
            live.append(both(lambda p, h: p.alloc(n, data=data)))
        elif op == 2:
            size = both(lambda p, h: p.size_of(h), hs)
            good = rng.integers(0, 256, size if isinstance(size, int) else 5, dtype=np.uint8)
            pick = good if rng.integers(0, 4) else data
            both(lambda p, h: p.write(h, pick), hs)
        elif op == 3:
            both(lambda p, h: p.read(h), hs)
        elif op == 4 and live:
            size = both(lambda p, h: p.size_of(h), hs)
            free = bool(rng.integers(0, 2))
            both(lambda p, h: p.read(h, np.zeros(size, np.uint8), free=free), hs)
            if free:
                live.remove(hs)
                dead.append(hs)
        elif op == 5 and live:
            both(lambda p, h: p.free(h), hs)
            live.remove(hs)
            dead.append(hs)
        elif op == 6:
            k = int(rng.integers(0, 7))
            bad = [dead[-1] if dead else (7, 7), (1 << 70,) * 2, (-5, -5), (0, 0), tuple(map(np.int64, hs)),
                   (True, True), tuple(h ^ (1 << 60) for h in hs)][k]
            verb = int(rng.integers(0, 3))
            both([lambda p, h: p.read(h), lambda p, h: p.free(h), lambda p, h: p.write(h, data)][verb], bad)
            if k == 4 and verb == 1 and hs in live:         # a numpy handle is a handle: freed
                live.remove(hs)
                dead.append(hs)
        elif op == 7 and live:
            ro = np.zeros(both(lambda p, h: p.size_of(h), hs), np.uint8)
            ro.flags.writeable = False
            both(lambda p, h: p.read(h, ro), hs)
            both(lambda p, h: p.read(h, np.zeros(3, np.uint16)), hs)
        elif op == 8 and live:
            size = both(lambda p, h: p.size_of(h), hs)
            both(lambda p, h: p.read(h, np.zeros(size + 1, np.uint8)), hs)
    for k in ("obj_used", "payload_bytes", "pool_total_size", "segments_in_use", "dead_bytes", "clean_steps",
              "alloc_fail", "spare_bytes"):
        assert door.stats()[k] == py.stats()[k], k
    assert door.stats()["clean_steps"] > 0
    door.close()
    py.close()


def test_door_settle_refuses_what_no_door_free_answers(rng):
    """door_settle is public: an answer no door free gave (a segment still in use, one
    out of range, anything but an int) is refused and changes nothing; a segment in use
    given back would have had its live objects' memory handed to the kernel."""
    pool = devpool.open_pool("host", 1 << 24, segment_bytes=1 << 16)
    datas = [rng.integers(0, 256, 3000, dtype=np.uint8) for _ in range(60)]
    hs = [pool.alloc(3000, data=d) for d in datas]
    before = pool.stats()
    in_use = int(np.flatnonzero(pool.alloc_.seg_in_use)[0])
    for bad in (in_use, pool.alloc_.n_segs, 1 << 40, -7, 1.0, True, "0", None):
        with pytest.raises(devpool.BadInputError):
            D.door_settle(pool, bad)
        assert pool.stats() == before, bad
    assert all((pool.read(h) == d).all() for h, d in zip(hs, datas))
    D.door_settle(pool, -1)                                   # nothing to finish: fine
    D.door_settle(pool, D.CLEAN_DUE)                          # a cleaning step: fine
    pool.close()


@pytest.mark.parametrize("step", [-1, 2, -3])
def test_strided_arrays_reach_the_door_and_are_refused_there_not_copied(step):
    """The single verbs hand a 1-D uint8 ndarray to the compiled door unchecked for
    layout (the flag costs ~0.1 us a call): the door refuses any stride but 1, changing
    nothing, and the Python verb then says why. A reversed array (its data pointer at
    its last byte) copied as if contiguous would read and write past its buffer."""
    pool = devpool.open_pool("host", 1 << 22)
    assert pool.stats()["door_open"]
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, 64 * abs(step), dtype=np.uint8)
    strided = base[::step]
    assert strided.ndim == 1 and strided.size == 64 and not strided.flags.c_contiguous
    before = pool.stats()
    with pytest.raises(devpool.BadInputError, match="contiguous"):
        pool.alloc(64, data=strided)
    assert pool.stats()["obj_allocated"] == before["obj_allocated"]
    original = rng.integers(0, 256, 64, dtype=np.uint8)
    h = pool.alloc(64, data=original)
    with pytest.raises(devpool.BadInputError, match="contiguous"):
        pool.write(h, strided)
    assert pool.read(h).tobytes() == original.tobytes()
    out_base = np.zeros(64 * abs(step), np.uint8)
    with pytest.raises(devpool.BadInputError, match="contiguous"):
        pool.read(h, out_base[::step], free=True)
    assert not out_base.any(), "the refused read wrote into the caller's buffer"
    assert pool.read(h, free=True).tobytes() == original.tobytes()      # not freed before
    pool.close()


def test_a_one_byte_object_takes_a_one_element_view_of_any_stride():
    """numpy calls a one-element array contiguous whatever its stride; the door refuses
    the stride, and the long way takes it: the same answer as before, the right byte."""
    pool = devpool.open_pool("host", 1 << 22)
    src = np.arange(10, dtype=np.uint8)[3::5][:1]
    assert src.strides == (5,) and src.flags.c_contiguous
    h = pool.alloc(1, data=src)
    pool.write(h, np.array([9, 0], np.uint8)[::2])
    out = np.zeros(4, np.uint8)[::4]
    assert pool.read(h, out) is out and out[0] == 9
    assert pool.read(h, free=True).tolist() == [9]
    pool.close()
