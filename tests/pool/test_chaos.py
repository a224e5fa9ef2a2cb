"""The chaos storage is proven hostile: it relocates, poisons and scrambles for real.

Every suite runs on ``chaos`` to prove that nothing above storage relies on luck; that
proof is only as good as the storage's hostility. These tests fail if chaos stops
relocating live objects on every call, stops poisoning freed or moved-from bytes, or
stops scrambling handles. They look at the arena only through the storage contract
(``gather`` over the whole arena) and find each object by a unique marker it carries,
so they depend on neither the allocator's bookkeeping nor the pool's internals.
"""

from __future__ import annotations

import numpy as np
import pytest

import devpool
from devpool.pool.chaos import POISON, uncovered

MARK = 16                 # bytes of unique marker at the start of every object


def arena_bytes(storage) -> np.ndarray:
    """The whole arena, read through the storage contract."""
    cap = storage.capacity_bytes
    out = np.empty(cap, np.uint8)
    storage.gather(np.array([0], np.int64), np.array([cap], np.int64), out, np.array([0], np.int64))
    return out


def object_bytes(rng, n: int, tag: int) -> np.ndarray:
    """``n`` bytes that are neither 0 nor POISON, starting with a marker unique to ``tag``."""
    body = rng.integers(1, 255, n, dtype=np.uint8)
    body[body == POISON] = 0x5A
    marker = np.frombuffer(b"OBJ%08d" % tag + b"\x01" * (MARK - 11), np.uint8)
    body[:min(n, MARK)] = marker[:min(n, MARK)]
    return body


def find_all(arena: np.ndarray, data: np.ndarray) -> list[int]:
    """Every arena offset where ``data``'s marker appears."""
    raw, needle = arena.tobytes(), data[:MARK].tobytes()
    hits, at = [], raw.find(needle)
    while at >= 0:
        hits.append(at)
        at = raw.find(needle, at + 1)
    return hits


class Objects:
    """A chaos pool holding objects with unique markers, and what the caller knows."""

    def __init__(self, n=40, seed=7, capacity=1 << 20, **chaos):
        self.pool = devpool.open_pool("chaos", capacity, segment_bytes=16384, seed=seed, **chaos)
        self.storage = self.pool.storage
        self.rng = np.random.default_rng(seed)
        self.live: dict[int, np.ndarray] = {}
        self.dead: list[np.ndarray] = []
        self._tags = 0
        self.add(n)

    def add(self, n):
        sizes = self.rng.integers(MARK, 3000, n)
        datas = [self.new_data(int(s)) for s in sizes]
        hs = self.pool.alloc_batch(sizes)
        self.pool.write_batch(hs, np.concatenate(datas), sizes)
        self.live.update(zip(hs.tolist(), datas))
        return hs

    def new_data(self, n):
        self._tags += 1
        return object_bytes(self.rng, n, self._tags)

    def locate(self) -> dict[int, int]:
        """Handle -> the single arena offset holding that object (asserts it is unique)."""
        arena = arena_bytes(self.storage)
        where = {}
        for h, data in self.live.items():
            hits = find_all(arena, data)
            assert len(hits) == 1, f"object {h} found at {hits}: a stale copy survived"
            assert (arena[hits[0]:hits[0] + data.size] == data).all()
            where[h] = hits[0]
        return where

    def check_arena_clean(self):
        """Every arena byte outside a live object is POISON, or 0 (never written)."""
        arena = arena_bytes(self.storage)
        covered = np.zeros(arena.size, np.bool_)
        for h, off in self.locate().items():
            covered[off:off + self.live[h].size] = True
        stray = np.flatnonzero(~covered & (arena != POISON) & (arena != 0))
        assert stray.size == 0, f"{stray.size} stale bytes readable outside live objects, first at {stray[0]}"
        for data in self.dead:
            assert find_all(arena, data) == [], "a freed object's bytes are still in the arena"

    def check_contents(self):
        hs = list(self.live)
        got, _ = self.pool.read_batch(hs)
        assert got.tobytes() == b"".join(d.tobytes() for d in self.live.values())

    @property
    def calls(self) -> int:
        """Hostile steps the pool took (one before each public call on objects)."""
        return self.pool.stats()["hostile_calls"]

    @property
    def relocated(self) -> int:
        """Objects the pool migrated for the policy."""
        return self.pool.stats()["migrated_objects"]

    def close(self):
        self.pool.close()


@pytest.fixture
def objs():
    made = []

    def factory(**kw):
        o = Objects(**kw)
        made.append(o)
        return o

    yield factory
    for o in made:
        o.close()


# --- relocation -------------------------------------------------------------------------
def test_every_public_call_relocates_live_objects(objs):
    """Each public operation (single and batch forms) moves some live objects to new
    arena offsets before it runs; over a few calls most objects have moved."""
    o = objs(n=40)
    start = o.locate()
    h0 = next(iter(o.live))
    calls = [
        lambda: o.pool.read(h0),
        lambda: o.pool.read_batch(list(o.live)[:5]),
        lambda: o.pool.write(h0, o.live[h0]),
        lambda: o.pool.size_of(h0),
        lambda: o.pool.compact(),
        lambda: o.add(1),
        lambda: o.add(3),
    ]
    moved_ever: set[int] = set()
    for call in calls:
        before, calls_before, relocated_before = o.locate(), o.calls, o.relocated
        call()
        after = o.locate()
        moved = {h for h in before if after[h] != before[h]}
        assert moved, "a public call ran without relocating any live object"
        assert o.calls > calls_before
        assert o.relocated > relocated_before
        moved_ever |= moved
    assert len(moved_ever) >= 0.6 * len(start)
    o.check_contents()


def test_single_free_and_alloc_relocate_too(objs):
    o = objs(n=30)
    for step in range(4):
        before = o.locate()
        h = next(iter(o.live))
        if step % 2:
            o.pool.free(h)
            o.dead.append(o.live.pop(h))
        else:
            data = o.new_data(500)
            h = o.pool.alloc(500)
            o.pool.write(h, data)
            o.live[h] = data
        after = o.locate()
        assert any(after[k] != before[k] for k in before if k in after)
    o.check_contents()


def test_relocation_really_moves_bytes():
    """The counter is not just counted: every object it claims to move left a poisoned
    copy behind (cleaning afterwards packs them back in arena order, often where they
    were, so offsets alone would not show it)."""
    o = Objects(n=40, seed=3, migrate_per_call=1000)   # move every live object on every call
    try:
        before = o.locate()
        moved_from = o.storage.moved_from_poisoned_bytes
        o.pool.read(next(iter(o.live)))
        o.locate()                                     # each object exactly once
        assert o.relocated >= len(before)
        assert o.storage.moved_from_poisoned_bytes - moved_from >= sum(d.size for d in o.live.values())
        o.check_arena_clean()
    finally:
        o.close()


# --- poison -----------------------------------------------------------------------------
def test_freed_bytes_are_poisoned(objs):
    o = objs(n=30)
    hs = list(o.live)[::3]
    poisoned = o.storage.freed_poisoned_bytes
    o.pool.free_batch(hs)
    for h in hs:
        o.dead.append(o.live.pop(h))
    freed = sum(-(-d.size // 16) * 16 for d in o.dead)
    assert o.storage.freed_poisoned_bytes - poisoned >= freed
    o.check_arena_clean()
    o.check_contents()


def test_moved_from_bytes_are_poisoned(objs):
    """After relocation and cleaning, each live object is in the arena exactly once and
    every other written byte is poison: a stale offset reads garbage, not old data."""
    o = objs(n=50)
    for _ in range(5):
        moved_from = o.storage.moved_from_poisoned_bytes
        o.pool.read(next(iter(o.live)))
        assert o.storage.moved_from_poisoned_bytes > moved_from
        o.check_arena_clean()
    o.check_contents()


def test_a_stale_offset_reads_poison(objs):
    """The failure chaos exists to provoke: a caller that remembers where an object was
    and reads there after another call sees poison."""
    o = objs(n=40)
    before = o.locate()
    o.pool.read(next(iter(o.live)))
    after = o.locate()
    arena = arena_bytes(o.storage)
    stale = [h for h in before if after[h] != before[h]]
    assert stale
    for h in stale:
        old = arena[before[h]:before[h] + o.live[h].size]
        assert not (old == o.live[h]).all()
        # what sits at the old place is poison, unless another live object moved there
        others = [(after[k], after[k] + o.live[k].size) for k in after]
        for i, byte in enumerate(old.tolist()):
            pos = before[h] + i
            if not any(a <= pos < b for a, b in others):
                assert byte in (POISON, 0)


def test_poison_counters_in_stats(objs):
    o = objs(n=20)
    o.pool.free_batch(list(o.live)[:5])
    st = o.pool.stats()
    assert st["hostile_calls"] > 0 and st["migrated_objects"] > 0
    assert st["chaos_poisoned_bytes"] == o.storage.poisoned_bytes > 0


def test_a_free_poisons_exactly_the_freed_bytes(objs):
    """The hostility proofs read these counters: one that started above zero, or
    counted loosely, would prove poisoning that never happened. Without relocation
    (whose discards count as frees too) a fresh pool has poisoned nothing, and a free
    adds exactly the freed objects' arena bytes."""
    o = objs(n=20, migrate_per_call=0, migrate_per_object=0)
    assert o.storage.freed_poisoned_bytes == 0
    hs = list(o.live)[::4]
    o.pool.free_batch(hs)
    assert o.storage.freed_poisoned_bytes == sum(-(-o.live[h].size // 16) * 16 for h in hs)


def test_uncovered_is_what_no_destination_covers():
    """``uncovered`` names the bytes a move left behind (what gets poisoned), checked
    byte by byte on random moves: destinations starting inside a source range, before
    it, after it, back to back. (A wrong length for the gap before a destination that
    starts inside a source survived the whole suite: the pool's moves pack destinations
    from segment starts, so they hardly leave such a gap.)"""
    rng = np.random.default_rng(0)
    for _ in range(300):
        cuts = np.sort(rng.choice(np.arange(1, 400), 8, replace=False))
        ranges = np.stack([cuts[:-1], np.diff(cuts)], 1)     # back to back, never overlapping
        pick = rng.random(len(ranges)) < 0.5
        dst, dst_n = ranges[pick, 0], ranges[pick, 1]
        ends = np.sort(rng.choice(np.arange(1, 400), 6, replace=False))
        src, src_n = ends[0::2], ends[1::2] - ends[0::2]   # objects: apart from each other
        covered = np.zeros(512, np.bool_)
        for d, n in zip(dst, dst_n):
            covered[d:d + n] = True
        want = np.zeros(512, np.bool_)
        for s, n in zip(src, src_n):
            want[s:s + n] = ~covered[s:s + n]
        off, n = uncovered(src.astype(np.int64), src_n.astype(np.int64), dst.astype(np.int64),
                           dst_n.astype(np.int64))
        got = np.zeros(512, np.int64)
        for a, k in zip(off.tolist(), n.tolist()):
            got[a:a + k] += 1
        assert (n > 0).all() and (got == want).all()


# --- handles ----------------------------------------------------------------------------
def test_handles_are_scrambled_per_pool():
    """A chaos pool XORs a random key into every handle: the value an allocator would
    hand out unscrambled is refused, and two chaos pools scramble differently."""
    a = devpool.open_pool("chaos", 1 << 20, segment_bytes=16384, seed=11)
    b = devpool.open_pool("chaos", 1 << 20, segment_bytes=16384, seed=12)
    plain = devpool.open_pool("host", 1 << 20, segment_bytes=16384)
    try:
        key = a.alloc_.handle_key
        assert key != 0 and key != b.alloc_.handle_key
        hs = a.alloc_batch([100] * 10)
        a.write_batch(hs, np.zeros(1000, np.uint8))
        # a fresh pool's unscrambled handles are consecutive (slot numbers in the low
        # bits), as the host pool shows; the chaos pool's are only once unscrambled
        def steps(handles):
            handles = sorted(int(h) for h in handles)
            return [h - handles[0] for h in handles]

        assert steps(plain.alloc_batch([100] * 10)) == list(range(10))
        assert steps(h ^ key for h in hs) == list(range(10))
        assert steps(hs) != list(range(10))
        for h in hs.tolist():
            with pytest.raises(devpool.InvalidHandleError):
                a.read(h ^ key)                  # the unscrambled value is no handle
            with pytest.raises(devpool.InvalidHandleError):
                b.read(h)                        # nor is it one of another chaos pool
        a.read_batch(hs)
    finally:
        for p in (a, b, plain):
            p.close()


# --- the frontend under chaos -----------------------------------------------------------
def test_zswap_under_chaos_is_moved_and_poisoned(tmp_path):
    """The zswap suites run on chaos: a zswap workload there really is relocated and
    poisoned underneath, and every page still comes back."""
    from tests.pages import make_pages
    pool = devpool.open_pool("chaos", 4 << 20, segment_bytes=16384, seed=5)
    zs = devpool.Zswap(pool, max_pool_bytes=256 * 1024, backing=tmp_path / "swap")
    pages = make_pages(120, np.random.default_rng(5), ("text", "struct", "random"))
    zs.store_batch(np.arange(60), pages[:60])
    for i in range(60, 120):
        zs.store(i, pages[i])
    got = np.stack([zs.load(i) for i in range(0, 120, 2)])
    np.testing.assert_array_equal(got, pages[::2])
    np.testing.assert_array_equal(zs.load_batch(np.arange(1, 120, 2)), pages[1::2])
    st = pool.stats()
    assert st["migrated_objects"] > 100 and st["chaos_poisoned_bytes"] > 100_000
    zs.close()
    pool.close()
