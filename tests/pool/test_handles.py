"""Handle lifetimes across pools: what a handle of a closed pool may do later.

A pool id is one of 1 023, so a pool opened later gets a closed pool's id back (first
in, first out). Its generations it does not get back: every later holder of an id starts
its slots past the highest generation an earlier holder issued, so an old handle stays
as refused as that pool's own stale handle would be (the allocator's docstring gives the
bound). Issue 27: before this, ``B.read(h)`` of pool A's handle returned B's bytes.
"""

from __future__ import annotations

import numpy as np
import pytest

import devpool

ROUNDS = 1100            # more than the 1 023 ids: every id comes round again


def _later_pool_with_id(backend, pool_id, setup):
    """Open and close pools until one holds ``pool_id``; ``setup(pool)`` runs on that
    one, which is returned open."""
    for _ in range(ROUNDS):
        pool = devpool.open_pool(backend, 1 << 16, segment_bytes=4096)
        if pool.alloc_.pool_id == pool_id:
            setup(pool)
            return pool
        pool.close()
    raise AssertionError(f"no later pool got id {pool_id} back in {ROUNDS} opens")


@pytest.mark.parametrize("churn", [0, 3], ids=["fresh", "slot-reused"])
@pytest.mark.parametrize("kind", ["host", "chaos"])      # (the id registry serves every backend alike)
def test_a_closed_pools_handle_is_refused_by_the_pool_that_gets_its_id(kind, churn):
    """Pool A's handle h (its slot freed and reused ``churn`` times first, so h names a
    later generation); A closes; the pool that gets A's id allocates and frees through
    its slots past the point where it would hand out h's very value: it never does, and
    every verb refuses h, single and batch, while B's objects are untouched."""
    a = devpool.open_pool(kind, 1 << 16, segment_bytes=4096)
    for _ in range(churn):
        a.free(a.alloc(8))
    h = a.alloc(8, data=b"AAAAAAAA")
    walk = (churn + 2) * (a.alloc_._min_free + 1)   # FIFO: a slot comes back after the others
    aid = a.alloc_.pool_id
    a.close()

    def setup(pool):
        pool.mine = []
        for _ in range(walk):
            x = pool.alloc(8, data=b"BBBBBBBB")
            if x == h:                              # h's own value handed out again
                pool.mine.append(x)
                break
            pool.free(x)
        pool.mine += [pool.alloc(8, data=b"BBBBBBBB") for _ in range(4)]

    b = _later_pool_with_id(kind, aid, setup)
    try:
        assert h not in b.mine, "a later pool handed out a closed pool's handle"
        for verb in (b.read, b.free, b.size_of, lambda x: b.write(x, b"CCCCCCCC"),
                     lambda x: b.read_batch([x]), lambda x: b.free_batch([x])):
            with pytest.raises(devpool.InvalidHandleError):
                verb(h)
        for mine in b.mine:
            assert b.read(mine).tobytes() == b"BBBBBBBB"
    finally:
        b.close()


def test_generations_carry_on_across_holders_of_an_id():
    """The next holder of an id starts past the highest generation any earlier holder
    issued, also when that was many frees into one slot, and its handles work."""
    a = devpool.open_pool("host", 1 << 16, segment_bytes=4096)
    al = a.alloc_
    h = a.alloc(16)
    slot = al.decode_one(h)[0]
    al.hv[slot] += 1000 << 28                     # as after 1 000 reuses of that slot
    aid, top = al.pool_id, int(al.gens[slot])
    a.close()
    b = _later_pool_with_id("host", aid, lambda pool: None)
    try:
        hb = b.alloc(16, data=np.arange(16, dtype=np.uint8))
        assert int(b.alloc_.gens[b.alloc_.decode_one(hb)[0]]) > top
        assert b.read(hb).tolist() == list(range(16))
    finally:
        b.close()


def test_a_dropped_pools_handle_is_refused_too():
    """A pool dropped without close() gives its id back when collected; its
    generations go with it into the registry, as a closed pool's do."""
    import gc

    a = devpool.open_pool("host", 1 << 16, segment_bytes=4096)
    h = a.alloc(8, data=b"AAAAAAAA")
    aid = a.alloc_.pool_id
    del a
    gc.collect()

    def setup(pool):
        pool.mine = pool.alloc(8, data=b"BBBBBBBB")

    b = _later_pool_with_id("host", aid, setup)
    try:
        assert b.mine != h
        with pytest.raises(devpool.InvalidHandleError):
            b.read(h)
        assert b.read(b.mine).tobytes() == b"BBBBBBBB"
    finally:
        b.close()
