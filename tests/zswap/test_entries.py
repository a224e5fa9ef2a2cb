"""The entry table against a model (a dict for the entries, a list for the LRU): batch
verbs (the rules compiled) and single verbs (the same rules interpreted) mixed, offsets
clustered, spread and near the top of the swap area (2**51), through growth and shrinking."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from devpool.zswap import entries as E
from devpool.zswap.entries import ABSENT, FILE, POOL, SAME, EntryTable, as_word

_TOP = 1 << 51
_offsets = st.one_of(st.integers(0, 300), st.integers(_TOP - 300, _TOP - 1), st.integers(0, _TOP - 1))
# (verb, single?, offsets, state)
_ops = st.lists(st.tuples(st.sampled_from(["put", "remove", "restate", "pick", "touch"]), st.booleans(),
                          st.lists(_offsets, min_size=1, max_size=6, unique=True),
                          st.sampled_from([POOL, SAME, FILE])), min_size=1, max_size=60)


class Model:
    def __init__(self):
        self.entries: dict[int, tuple[int, int, int]] = {}     # offset -> (state, word, length)
        self.lru: list[int] = []                                # POOL offsets, oldest first
        self.ref: dict[int, bool] = {}

    def put(self, o, state, word, length):
        self.remove(o)
        self.entries[o] = (state, word, length)
        if state == POOL:
            self.lru.append(o)
            self.ref[o] = True

    def remove(self, o):
        if self.entries.pop(o, None) is not None and o in self.ref:
            self.lru.remove(o)
            del self.ref[o]

    def restate(self, o, state):
        _, word, length = self.entries[o]
        self.put(o, state, word, length)

    def pick(self, n):
        """Linux's second chance: walk from the oldest, rotating referenced entries."""
        out, i, order = [], 0, self.lru
        while len(out) < n and i < len(order):
            o = order[i]
            if self.ref[o]:
                self.ref[o] = False
                order.append(order.pop(i))
            else:
                out.append(o)
                i += 1
        return out


def put_same(t: EntryTable, offs: np.ndarray, single: bool) -> None:
    """Same-filled entries at ``offs`` (each its own fill word): one call, or one per offset."""
    if single:
        for o in offs.tolist():
            t.put_one(o, SAME, o, 0)
    else:
        t.put(offs, SAME, offs, 0)


def check_index(t: EntryTable) -> None:
    """Every bucket holds a present slot below its slot bits, once, and that slot's
    distance from its key's home (capped at what the bits above hold)."""
    shift, nb = int(t.meta[E._SHIFT]), t.buckets.size
    assert nb == t.meta[E._N_BUCKETS] and shift >= (t._records.shape[0] - 1).bit_length()
    v = t.buckets.astype(np.int64)
    q = np.flatnonzero(v >= 0)
    slots = v[q] & ((1 << shift) - 1)
    assert sorted(slots.tolist()) == t.present().tolist()
    home = np.array([E._home(int(k), nb) for k in t.key[slots].tolist()], np.int64)
    dmax = (1 << (31 - shift)) - 1
    assert ((v[q] >> shift) == np.minimum((q - home) % nb, dmax)).all()


def check(t: EntryTable, m: Model, probe, lru: bool = True) -> None:
    assert len(t) == len(m.entries)
    check_index(t)
    for o in probe:
        i = t.find_one(o)
        assert i == int(t.find(np.array([o], np.int64))[0])
        if o not in m.entries:
            assert i < 0
            continue
        state, word, length = m.entries[o]
        assert (t.m_state[i], t.m_word[i], t.m_key[i]) == (state, word, o)
        if state == POOL:
            assert t.m_length[i] == length and bool(t.m_referenced[i]) == m.ref[o]
    assert [int(t.key[i]) for i in t.lru_order()] == (m.lru if lru else [])
    assert sorted(t.offsets_of(t.present()).tolist()) == sorted(m.entries)
    for s in (POOL, SAME, FILE):
        assert t.count(s) == sum(1 for v in m.entries.values() if v[0] == s)
    pool = [v for v in m.entries.values() if v[0] == POOL]
    assert t.pool_bytes == sum(v[2] for v in pool)
    assert t.pool_as_is == sum(1 for v in pool if v[2] >= 4096)


@pytest.mark.parametrize("lru", [True, False])
@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_entry_table_matches_a_model(lru, ops):
    """Without the LRU (no writeback), the same entries and counters, and no links."""
    t, m = EntryTable(lru=lru), Model()
    probe = set()
    for verb, single, offs, state in ops:
        probe.update(offs)
        arr = np.array(offs, np.int64)
        if verb == "put":
            length = 4096 if offs[0] % 3 == 0 else offs[0] % 4000
            if single:
                for o in offs:
                    old = m.entries.get(o, (ABSENT, 0, 0))
                    got = t.put_one(o, state, o * 7 - 3, length)[1:]
                    assert got == (old[0], old[1] if old[0] != ABSENT else 0)
                    m.put(o, state, o * 7 - 3, length)
            else:
                idx, old, words = t.put(arr, state, arr * 7 - 3, length)
                for o, s_, w in zip(offs, old.tolist(), words.tolist()):
                    was = m.entries.get(o, (ABSENT, 0, 0))
                    assert s_ == was[0] and (w == was[1] or s_ == ABSENT)
                for o in offs:
                    m.put(o, state, o * 7 - 3, length)
        elif verb == "remove":
            if single:
                for o in offs:
                    i = t.find_one(o)
                    if i >= 0:
                        t.remove_one(i)
            else:
                idx = t.find(arr)
                t.remove(idx[idx >= 0])
            for o in offs:
                m.remove(o)
        elif verb == "restate":
            idx = t.find(arr)
            t.restate(idx[idx >= 0], state)
            for o in offs:
                if o in m.entries:
                    m.restate(o, state)
        elif verb == "touch":
            for o in offs:
                i = t.find_one(o)
                if i >= 0 and o in m.ref:
                    t.m_referenced[i] = 1
                    m.ref[o] = True
        elif lru:
            n = len(offs)
            assert t.key[t.lru_pick(n)].tolist() == m.pick(n)
        else:
            assert t.lru_pick(len(offs)).size == 0
        check(t, m, probe, lru)


@pytest.mark.parametrize("lru", [True, False])
@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("spread", [False, True])
def test_memory_follows_the_entries_through_growth_and_shrinking(single, spread, lru):
    """Dense or spread over 2**51, the table grows to hold 20 000 entries in a record
    (32 bytes, 24 without the LRU) and at most 8 bytes of index each (at least 50 %
    full: its length is no power of two; slots never touched aside, and at most an
    eighth of them) and, once they are gone, shrinks back to its floor."""
    rng = np.random.default_rng(5)
    offs = (rng.choice(_TOP, 20_000, replace=False) if spread else np.arange(20_000)).astype(np.int64)
    t = EntryTable(lru=lru)
    assert t.record_bytes == (32 if lru else 24)
    empty = t.nbytes
    if single:
        for o in offs.tolist():
            t.put_one(o, POOL, o, 100)
    else:
        t.put(offs, POOL, offs, 100)
    assert len(t) == 20_000 and (t.key[t.find(offs)] == offs).all()
    grown = t.nbytes
    assert int(t.meta[E._USED]) == 20_000 and t.buckets.nbytes / 20_000 <= 4 / 0.5 + 1e-9   # >= 50 % load
    assert t.key.shape[0] <= 20_000 * 1.125 + 2                  # the records' tail: at most an eighth
    assert t.key[t.lru_order()].tolist() == (offs.tolist() if lru else [])   # stored order, oldest first
    keep = offs[::97]
    gone = np.setdiff1d(offs, keep)
    if single:
        for o in gone.tolist():
            t.remove_one(t.find_one(o))
    else:
        t.remove(t.find(gone))
    assert t.buckets.size == E._SHRINK_FLOOR and t.nbytes < grown / 7 and t.nbytes < 100_000 + 60 * empty
    assert sorted(t.key[t.present()].tolist()) == sorted(keep.tolist())
    assert t.key[t.lru_order()].tolist() == (keep.tolist() if lru else [])   # renumbered, order kept
    assert (t.find(gone) < 0).all() and (t.key[t.find(keep)] == keep).all()


def test_as_word_keeps_the_bits():
    for fill in (0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 0x8080808080808080):
        t = EntryTable()
        t.put_one(5, SAME, as_word(fill), 0)
        assert t.m_fill[t.find_one(5)] == fill and int(t.fill[t.find_one(5)]) == fill


def test_put_replaces_in_place_and_says_what_was_there():
    t = EntryTable()
    idx, old, words = t.put(np.array([3, 4], np.int64), POOL, [11, 12], 100)
    assert old.tolist() == [ABSENT, ABSENT]
    again, old, words = t.put(np.array([4, 5], np.int64), SAME, [21, 22], 0)
    assert again[0] == idx[1] and old.tolist() == [POOL, ABSENT] and words[0] == 12
    assert t.count(POOL) == 1 and t.count(SAME) == 2 and t.pool_bytes == 100


def test_a_stride_of_a_power_of_two_does_not_cluster():
    """Offsets 2**k apart (a swap device's clusters) hash to distinct buckets: the
    multiplicative hash keeps every probe short."""
    for k in (0, 9, 20, 38):
        offs = np.arange(5000, dtype=np.int64) << k          # all below 2**51
        t = EntryTable()
        t.put(offs, FILE, 0, 0)
        b = t.index_slots()
        pos = np.empty(5000, np.int64)
        pos[b[b >= 0]] = np.flatnonzero(b >= 0)
        home = ((((offs.astype(object) * E._GOLD) & E._M63) >> 32) * b.size) >> 31
        disp = (pos - np.array(home.tolist(), np.int64)) % b.size
        assert disp.mean() < 1.0 and disp.max() < 16, (k, disp.mean(), disp.max())


def test_without_numba_jit_the_same_rules_run_interpreted(tmp_path):
    """NUMBA_DISABLE_JIT (a debugging switch, and the region's guard path) runs every
    rule in the interpreter; the single-entry change, compiled through raw addresses
    otherwise, takes the interpreted path and gives the same table."""
    import os
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import numpy as np
        from devpool.zswap.entries import EntryTable, POOL, SAME, ABSENT
        for lru in (True, False):
            t = EntryTable(lru=lru)
            t.put(np.arange(50, dtype=np.int64), POOL, np.arange(50), 100)
            for o in range(40, 70):
                t.put_one(o, SAME, o, 0)
            for o in range(0, 30, 3):
                t.remove_one(t.find_one(o))
            t.remove(t.find(np.arange(60, 65, dtype=np.int64)))
            want = sorted(set(range(70)) - set(range(0, 30, 3)) - set(range(60, 65)))
            assert sorted(t.key[t.present()].tolist()) == want, lru
            assert t.count(POOL) == 40 - 10 and t.count(SAME) == 30 - 5
            assert [int(t.key[i]) for i in t.lru_order()] == ([o for o in range(40) if o % 3 or o >= 30] if lru else [])
        print("ok")
    """)
    # (RuntimeWarning an error: an interpreted numpy int64 hash wrapped with an overflow
    # warning, where the compiled rule wraps silently)
    out = subprocess.run([sys.executable, "-W", "ignore", "-W", "error::RuntimeWarning", "-c", script],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NUMBA_DISABLE_JIT": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_a_lookup_hint_never_names_a_bucket_past_a_smaller_index():
    """find_one leaves the bucket it found in meta for remove_one (no second lookup);
    the compiled removal reads ``buckets[hint]`` unchecked. A shrink after that find
    left the hint naming a bucket of the old, larger index: a removal of a slot found by
    the batch ``find`` then read (and could write) past the new index's end. Every
    table change resets it (as the interpreted hint was reset before)."""
    t = EntryTable(lru=True)
    keys = np.arange(20000, dtype=np.int64) * 7919
    t.put(keys, SAME, np.arange(keys.size), 0)
    big = t.buckets.shape[0]
    hints = [(k, t.find_one(k), int(t.meta[E._HINT])) for k in keys[:2000].tolist()]
    k = max(hints, key=lambda x: x[2])[0]
    t.remove_one(t.find_one(k))
    assert t.meta[E._HINT] >= big // 2           # a bucket only the large index has
    t.remove(t.find(keys[keys != k][:-1]))       # a batch removal shrinks the index
    assert t.buckets.shape[0] < big // 4
    assert -1 <= t.meta[E._HINT] < t.buckets.shape[0]
    j = int(t.find(keys[-1:])[0])                # found by the batch verb: no new hint
    t.remove_one(j)
    assert len(t) == 0 and t.find_one(int(keys[-1])) == -1


def test_a_single_verb_kept_after_its_table_is_gone_follows_live_arrays():
    """The compiled find_one / put_one are bound to the meta array's address; kept after
    their table was dropped (its bound method saved), they followed freed arrays. They
    keep alive the arrays in use when called, also after the table grew."""
    t = EntryTable(lru=True)
    find, set_ = t._find1, t._set1
    keys = np.arange(5000, dtype=np.int64) * 3
    t.put(keys, SAME, 1, 0)                              # grown: new index and records
    gone = [weakref.ref(a) for a in (t.meta, t.buckets, t._records)]
    slot = t.find_one(9)
    del t
    gc.collect()
    junk = [np.full(64, -1, np.int64) for _ in range(4096)]
    assert all(r() is not None for r in gone)
    assert find(9) == slot and find(10) == -1
    set_(-1 - slot, ABSENT, 0, 0, -1)
    assert find(9) == -1 and find(12) >= 0
    del junk


def _home(key: int, nb: int) -> int:
    """A key's home bucket, written out again (Fibonacci hash, top 31 bits scaled to nb)."""
    return ((((key * E._GOLD) & E._M63) >> 32) * nb) >> 31


@pytest.mark.parametrize("single", [False, True])
def test_an_index_of_any_length_finds_and_deletes_across_its_wrap(single):
    """At a length that is no power of two, a cluster that runs off the last bucket wraps
    to the first: backward-shift deletion keeps every remaining key findable in whatever
    order keys leave (a set is the model), by both speeds."""
    t = EntryTable(lru=False)
    t.put(np.arange(1000, 1070, dtype=np.int64), FILE, 0, 0)        # grown past 64 buckets
    nb = int(t.buckets.size)
    assert nb & (nb - 1) and nb == t.meta[E._N_BUCKETS]
    cands = range(10_000, 400_000)
    tail = [k for k in cands if _home(k, nb) >= nb - 2][:10]         # homes in the last two buckets
    head = [k for k in cands if _home(k, nb) <= 1][:6]               # ... and the first two
    assert len(tail) == 10 and len(head) == 6
    keys = tail + head
    t.put(np.array(keys, np.int64), POOL, 1, 100)
    b = t.index_slots()
    at = {int(t.key[s]): q for q, s in enumerate(b.tolist()) if s >= 0}
    assert t.buckets.size == nb and sum(at[k] < nb - 2 for k in tail) >= 8          # wrapped to the start
    live = set(range(1000, 1070)) | set(keys)
    rng = np.random.default_rng(11)
    for k in rng.permutation(keys).tolist():
        if single:
            t.remove_one(t.find_one(k))
        else:
            t.remove(t.find(np.array([k], np.int64)))
        live.discard(k)
        probe = np.array(sorted(live | set(keys)), np.int64)
        got = t.find(probe)
        assert ((got >= 0) == np.isin(probe, list(live))).all()
        assert (t.key[got[got >= 0]] == probe[got >= 0]).all()
        assert all(t.find_one(o) == g for o, g in zip(probe.tolist(), got.tolist()))
        b = t.index_slots()
        assert sorted(t.key[b[b >= 0]].tolist()) == sorted(live)        # no slot lost or doubled
    assert t.buckets.size == nb


@pytest.mark.parametrize("single", [False, True])
def test_the_index_is_half_to_70_percent_full_as_it_grows_and_shrinks(single):
    """Growth takes the index from 70 % to 50 % full (x1.4, a length of any size: a
    power of two left it as little as 35 % full, 11 bytes an entry); a shrink leaves
    it 35 % full, not back at its floor's length."""
    rng = np.random.default_rng(2)
    offs = rng.choice(_TOP, 30_000, replace=False).astype(np.int64)
    t = EntryTable(lru=False)
    loads = []
    for lo in range(0, offs.size, 500):
        put_same(t, offs[lo:lo + 500], single)
        loads.append(len(t) / t.buckets.size)
    assert 0.49 <= min(loads[1:]) and max(loads) <= 0.7, (min(loads[1:]), max(loads))
    assert (t.key[t.find(offs)] == offs).all()
    nb = t.buckets.size
    gone, keep = offs[:-3000], offs[-3000:]
    t.remove(t.find(gone))
    assert t.buckets.size < nb and t.buckets.size == -(-3000 * 1000 // 350)    # 35 % full
    assert (t.key[t.find(keep)] == keep).all() and (t.find(gone) < 0).all()


def test_the_index_length_stays_where_its_arithmetic_holds():
    """The home of any key at the largest length is below it, and products stay in 63
    bits (the compiled rule and the interpreted one agree there)."""
    nb = E._MAX_BUCKETS
    for key in (0, 1, (1 << 51) - 1, (1 << 63) - 1, 12345678901):
        h = (key * E._GOLD) & E._M63
        assert (h >> 32) * nb < (1 << 63) and 0 <= _home(key, nb) < nb
    assert E._MAX_BUCKETS * E._MAX_LOAD >= E.MAX_ENTRIES


def _same_home(nb: int, n: int, start: int = 1 << 40) -> list[int]:
    """``n`` keys whose probes all start at one bucket of an index of ``nb`` (a hostile
    caller's offsets: one cluster)."""
    want = E._home(start, nb)
    return [k for k in range(start, start + 400 * n * nb) if E._home(k, nb) == want][:n]


@pytest.mark.parametrize("dist_bits", [0, 1, 3])
@pytest.mark.parametrize("single", [False, True])
def test_a_cluster_longer_than_its_distance_bits_is_found_by_key(monkeypatch, dist_bits, single):
    """A bucket keeps how far its slot lies from home, so a probe skips other keys'
    records; past what its bits hold (a cluster of one home, as a hostile caller's
    offsets make) the key is read instead. Found and removed in any order, both speeds,
    with 0, 1 and 3 bits of distance."""
    monkeypatch.setattr(E, "_DIST_BITS", dist_bits)
    t = EntryTable(lru=False)
    t.put(np.arange(20, dtype=np.int64), FILE, 0, 0)                  # 64 buckets
    nb = t.buckets.size
    assert t.meta[E._SHIFT] == 31 - dist_bits
    keys = _same_home(nb, 12)
    for k in keys:
        put_same(t, np.array([k], np.int64), single)
    assert t.buckets.size == nb                                       # one cluster, no rebuild
    check_index(t)
    live = set(range(20)) | set(keys)
    for k in np.random.default_rng(dist_bits).permutation(keys).tolist():
        t.remove_one(t.find_one(k)) if single else t.remove(t.find(np.array([k], np.int64)))
        live.discard(k)
        check_index(t)
        probe = np.array(sorted(live | set(keys)), np.int64)
        got = t.find(probe)
        assert ((got >= 0) == np.isin(probe, list(live))).all()
        assert all(t.find_one(o) == g for o, g in zip(probe.tolist(), got.tolist()))


@pytest.mark.parametrize("single", [False, True])
def test_the_slot_bits_grow_with_the_records_before_a_slot_needs_them(monkeypatch, single):
    """A bucket's slot bits are as many as the records' length needs (and the rest hold
    the distance): records that grow past them rebuild the index first, also where the
    index itself does not grow. (26 distance bits: the slot bits start at 5, so a few
    hundred entries cross several widths.)"""
    monkeypatch.setattr(E, "_DIST_BITS", 26)
    t = EntryTable(lru=False)
    assert t.meta[E._SHIFT] == 5
    widths = set()
    keys = np.random.default_rng(5).permutation(np.arange(1000, dtype=np.int64) * 7919)
    for lo in range(0, 1000, 7):
        put_same(t, keys[lo:lo + 7], single)
        shift = int(t.meta[E._SHIFT])
        assert shift == max(5, (t._records.shape[0] - 1).bit_length())
        widths.add(shift)
        check_index(t)
    assert widths >= {5, 6, 7, 8, 9, 10}
    assert (t.find(keys) >= 0).all() and (t.key[t.find(keys)] == keys).all()


class _FailingAllocations:
    """numpy's np.full / np.zeros / np.empty, failing with MemoryError at the ``at``-th call
    (counted from 1) while armed: a fault injected at each allocation in turn."""

    def __init__(self, monkeypatch, at: int):
        self.at, self.calls, self.armed, self.failed = at, 0, False, False
        for name in ("full", "zeros", "empty"):
            real = getattr(np, name)
            monkeypatch.setattr(np, name, self._wrap(real))

    def _wrap(self, real):
        def alloc(*args, **kwargs):
            if self.armed:
                self.calls += 1
                if self.calls == self.at:
                    self.failed = True
                    raise MemoryError("no memory (test)")
            return real(*args, **kwargs)
        return alloc


@pytest.mark.parametrize("single", [False, True])
def test_a_memory_error_in_growth_or_shrinking_loses_no_entry(monkeypatch, single):
    """A MemoryError at any allocation of a growth (index and slots, slot bits widened:
    8 distance bits start them at 23, so 26 start them at 5) or of a shrink (which
    renumbers the slots) leaves every entry found, at its own key, in both the batch
    and the single verbs, and the table goes on working."""
    monkeypatch.setattr(E, "_DIST_BITS", 26)
    keys = np.random.default_rng(9).permutation(np.arange(1, 7001, dtype=np.int64) * 104729)

    def intact(t: EntryTable, live: np.ndarray) -> None:
        check_index(t)
        assert len(t) == live.size
        got = t.find(live)
        assert (got >= 0).all() and (t.key[got] == live).all()
        assert all(t.find_one(k) == g for k, g in zip(live[::97].tolist(), got[::97].tolist()))

    def step(t: EntryTable, live: np.ndarray, grow: np.ndarray, drop: np.ndarray) -> np.ndarray:
        if grow.size:
            put_same(t, grow, single)
            live = np.concatenate([live, grow])
        if drop.size:
            if single:
                for k in drop.tolist():
                    t.remove_one(t.find_one(k))
            else:
                t.remove(t.find(drop))
            live = live[~np.isin(live, drop)]
        return live

    for phase in ("grow", "shrink"):
        for at in range(1, 400):
            t = EntryTable(lru=False)
            live = step(t, np.zeros(0, np.int64), keys[:6000] if phase == "shrink" else keys[:20], keys[:0])
            inject = _FailingAllocations(monkeypatch, at)
            grow, drop = (keys[20:3000], keys[:0]) if phase == "grow" else (keys[:0], keys[:5700])
            inject.armed = True
            try:
                live = step(t, live, grow, drop)
            except MemoryError:
                # the verb's own entries: those it made before the fault stay, as the table says
                live = np.concatenate([live, grow])
                live = live[t.find(live) >= 0]
            inject.armed = False
            intact(t, live)
            live = step(t, live, keys[6000:6100], live[:50])      # and it goes on working
            intact(t, live)
            if not inject.failed:
                break
        else:
            raise AssertionError("more allocations than expected")


@pytest.mark.parametrize("lru", [True, False])
def test_a_negative_offset_is_refused_by_put_one_and_changes_nothing(lru):
    """The single change reads a negative key as "remove slot -1 - key" (remove_one's
    way in); put_one took one from its caller and removed an entry it never named."""
    from devpool import BadInputError
    t = EntryTable(lru=lru)
    t.put(np.arange(5, dtype=np.int64), POOL, np.arange(5), 100)
    before = (t.present().tolist(), t.count(POOL), t.pool_bytes)
    with pytest.raises(BadInputError, match="negative"):
        t.put_one(-1, SAME, 7, 0)
    assert (t.present().tolist(), t.count(POOL), t.pool_bytes) == before
    assert (t.find(np.arange(5, dtype=np.int64)) >= 0).all()
