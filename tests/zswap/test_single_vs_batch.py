"""Adversarial checks of Zswap's single-page verbs against its batch verbs, and of its
lifecycle (close, a closed pool, threads)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import devpool
from devpool.codecs.lz4_block import Lz4

SEG = 8192


def _pages(n: int, rng) -> np.ndarray:
    """Zero, same-filled, incompressible, compressible and half-compressible pages."""
    out = []
    for i in range(n):
        k = i % 5
        if k == 0:
            p = np.zeros(4096, np.uint8)
        elif k == 1:
            p = np.full(512, 0x1122334455667788 + i, np.uint64).view(np.uint8)
        elif k == 2:
            p = rng.integers(0, 256, 4096, dtype=np.uint8)
        elif k == 3:
            p = np.frombuffer((b"hello world %d " % i) * 300, np.uint8)[:4096]
        else:
            p = rng.integers(0, 256, 4096, dtype=np.uint8)
            p[:1500] = 7
        out.append(p)
    return np.stack(out)


def test_close_over_a_closed_pool_forgets_every_entry(tmp_path, rng):
    """The pool's close took the objects: a closed Zswap used to keep naming them
    (entry_kind said "pool", contains said True) though nothing holds those pages."""
    pool = devpool.open_pool("host", 1 << 20, segment_bytes=SEG)
    zs = devpool.Zswap(pool, max_pool_percent=100, backing=tmp_path / "swap")
    pages = _pages(5, rng)
    zs.store_batch(np.arange(5), pages)
    assert zs.entry_kind(3) == "pool" and zs.entry_kind(2) == "pool" and zs.contains(0)
    pool.close()
    zs.close()
    assert [zs.entry_kind(i) for i in range(5)] == [None] * 5
    assert not zs.contains(3)


@pytest.mark.parametrize("cfg", [
    dict(backing=True), dict(backing=True, writeback=False), dict(),
    dict(max_object_bytes=2048, backing=True), dict(limit=6 * SEG, backing=True), dict(limit=6 * SEG),
    dict(capacity=4 * SEG, backing=True),          # the pool fills before the limit: PoolFullError
])
@pytest.mark.parametrize("codec", ["lz4", "raw", "zstd"])
def test_single_and_batch_verbs_agree(cfg, codec, tmp_path, rng):
    """Every page stored by ``store`` in one Zswap and by ``store_batch`` of one in
    another: same verdicts, same counters, same figures; then the same for loads."""
    pages = _pages(40, rng)

    def make(name):
        pool = devpool.open_pool("host", cfg.get("capacity", 64 * SEG), segment_bytes=SEG,
                                 max_object_bytes=cfg.get("max_object_bytes", 4096))
        return devpool.Zswap(pool, codec, max_pool_bytes=cfg.get("limit", 64 * SEG),
                             backing=tmp_path / name if cfg.get("backing") else None,
                             writeback=cfg.get("writeback", True))

    a, b = make("a"), make("b")
    try:
        for i, p in enumerate(pages):
            assert a.store(i, p) == bool(b.store_batch([i], p[None])[0]), i
        assert a.stats() == b.stats()
        for i, p in enumerate(pages):
            if a.entry_kind(i) is None:
                for load in (a.load, lambda o: b.load_batch([o])):
                    with pytest.raises(devpool.EntryNotFoundError):
                        load(i)
            else:
                assert (a.load(i) == p).all() and (b.load_batch([i])[0] == p).all()
        assert a.stats() == b.stats()
    finally:
        for z in (a, b):
            z.close()
            z.pool.close()


def test_store_takes_one_page_in_every_form_store_batch_takes_it(rng):
    """A (4096,) page, a (1, 4096) batch of one, an array subclass: accepted by both;
    bytes, a list, two pages: BadInputError from both (not an AttributeError)."""
    page = _pages(4, rng)[3]

    class Sub(np.ndarray):
        pass

    forms = [page, page[None], page.view(Sub), page.tobytes(), page.tolist(), np.stack([page, page])]
    with devpool.open_pool("host", 1 << 20, segment_bytes=SEG) as pool:
        zs = devpool.Zswap(pool, max_pool_percent=100)

        def outcome(call):
            try:
                return bool(np.all(call()))
            except devpool.BadInputError:
                return "BadInputError"

        got = [(outcome(lambda: zs.store(i, f)), outcome(lambda: zs.store_batch([100 + i], f)))
               for i, f in enumerate(forms)]
        assert got == [(True, True)] * 3 + [("BadInputError", "BadInputError")] * 3
        assert (zs.load(0) == page).all() and (zs.load(2) == page).all()
        zs.close()


def test_an_offset_outside_the_area_is_bad_input_for_every_verb(rng):
    """Not "not stored" (EntryNotFoundError, a KeyError): a caller's bug, BadInputError."""
    page = _pages(4, rng)[3]
    with devpool.open_pool("host", 1 << 20, segment_bytes=SEG) as pool:
        zs = devpool.Zswap(pool, max_pool_percent=100, nr_pages=1000)
        zs.store_batch([998, 999], np.stack([page, page]))
        for bad in (-1, 1000, 1 << 40):
            for verb in (zs.load, lambda o: zs.load_batch([o]), lambda o: zs.store(o, page),
                         lambda o: zs.store_batch([o], page[None]), zs.invalidate,
                         lambda o: zs.invalidate_batch([o]), zs.entry_kind, zs.contains):
                with pytest.raises(devpool.BadInputError):
                    verb(bad)
        assert (zs.load_batch([998, 999]) == page).all()
        zs.close()


class _CloseFails(Exception):
    pass


def test_a_with_block_never_loses_an_error(monkeypatch):
    """Zswap as a context manager: close()'s error is raised when the block ran clean,
    and never replaces an exception the block raised."""
    with devpool.open_pool("host", 1 << 20, segment_bytes=SEG) as pool:
        for raised_inside, expected in ((None, _CloseFails), (KeyError, KeyError)):
            zs = devpool.Zswap(pool, max_pool_percent=100)

            def failing_close():
                raise _CloseFails("close failed")
            monkeypatch.setattr(zs, "close", failing_close)
            with pytest.raises(expected):
                with zs:
                    if raised_inside:
                        raise raised_inside("raised inside the block")
            monkeypatch.undo()
            zs.close()


@pytest.mark.parametrize("kind", ["host", "chaos"])
def test_two_threads_single_and_batch_lose_nothing(kind, tmp_path):
    """One thread on single verbs, one on batch verbs, over one Zswap at a small limit
    (the shrinker writes back meanwhile: ~200 pages a run, not asserted as the threads'
    interleaving decides it), each on its own offsets plus a shared few: every page
    comes back as stored, and the only error is EntryNotFoundError on the shared."""
    pool = devpool.open_pool(kind, 64 * SEG, segment_bytes=SEG)
    zs = devpool.Zswap(pool, "lz4", max_pool_bytes=3 * SEG, backing=tmp_path / "swap")
    errors = []

    def worker(tid, single):
        try:
            r = np.random.default_rng(tid)
            pages = r.integers(0, 256, (100, 4096), dtype=np.uint8)
            pages[:, :3000] = r.integers(0, 4, (100, 1))
            pages[::7] = 0
            base, held = tid * 1000, {}
            for _ in range(150):
                op = r.integers(0, 4)
                if op < 2:
                    offs = base + r.choice(100, r.integers(1, 6), replace=False)
                    if single:
                        for o in offs.tolist():
                            zs.store(o, pages[o - base])
                    else:
                        zs.store_batch(offs, pages[offs - base])
                    held.update({o: o - base for o in offs.tolist()})
                elif op == 2 and held:
                    ks = list(held)[:3]
                    got = [zs.load(o) for o in ks] if single else zs.load_batch(ks)
                    for g, o in zip(got, ks):
                        assert (g == pages[held.pop(o)]).all(), o
                elif held:
                    o = held.popitem()[0]
                    zs.invalidate(o) if single else zs.invalidate_batch([o])
                shared = 50000 + int(r.integers(0, 4))
                try:
                    if r.random() < 0.5:
                        zs.store(shared, pages[0]) if single else zs.store_batch([shared], pages[:1])
                    else:
                        zs.load(shared) if single else zs.load_batch([shared])
                except devpool.EntryNotFoundError:
                    pass
            for o, i in held.items():
                assert (zs.load(o) == pages[i]).all(), o
        except BaseException as exc:      # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, i == 0)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    zs.close()
    pool.close()


class _FlakyLz4(Lz4):
    """lz4 that fails on pages whose byte 100 is 13 (a codec fault on chosen pages)."""

    def _compress_one(self, page):
        if page[100] == 13:
            raise RuntimeError("codec fault")
        return super()._compress_one(page)


@pytest.mark.parametrize("seed", range(16))
def test_single_and_batch_agree_over_random_sequences(seed, tmp_path):
    """Interleaved store / load / invalidate / writeback, one Zswap on single verbs and
    one on batches of one, under a tight limit with hysteresis, objects over the pool's
    max_object_bytes and codec failures: same verdicts, errors and counters each step."""
    r = np.random.default_rng(seed)
    cfg = dict(backing=bool(r.integers(0, 2)), wb=bool(r.integers(0, 2)),
               mob=int(r.choice([2048, 3000, 4096])), limit=int(r.choice([2, 3, 4, 6])) * SEG,
               accept=float(r.choice([50, 90, 100])))
    pages = r.integers(0, 256, (80, 4096), dtype=np.uint8)
    for i, k in enumerate(r.integers(0, 5, 80)):
        if k == 0:
            pages[i] = 0
        elif k in (1, 2):
            pages[i, :(3500 if k == 1 else 2000)] = k
        elif k == 3:
            pages[i, 100] = 13
    zz = []
    for name in "ab":
        pool = devpool.open_pool("host", 64 * SEG, segment_bytes=SEG, max_object_bytes=cfg["mob"])
        zz.append(devpool.Zswap(pool, _FlakyLz4(), max_pool_bytes=cfg["limit"],
                                accept_threshold_percent=cfg["accept"], writeback=cfg["wb"],
                                backing=tmp_path / name if cfg["backing"] else None))
    a, b = zz

    def outcome(call):
        try:
            return ("ok", bool((call() == pages[o]).all()))
        except devpool.DevpoolError as exc:
            return (type(exc).__name__,)

    try:
        for _ in range(200):
            op, o = int(r.integers(0, 5)), int(r.integers(0, 80))
            if op <= 1:
                assert a.store(o, pages[o]) == bool(b.store_batch([o], pages[o:o + 1])[0])
            elif op == 2:
                got = outcome(lambda: a.load(o))
                assert got == outcome(lambda: b.load_batch([o])[0]) and got[-1] is not False
            elif op == 3:
                a.invalidate(o)
                b.invalidate_batch([o])
            else:
                k = int(r.integers(0, 4))
                assert a.writeback(k) == b.writeback(k)
            assert a.stats() == b.stats()
    finally:
        for z in zz:
            z.close()
            z.pool.close()


def test_tunables_refuse_a_limit_below_one_segment_like_the_constructor():
    """The constructor refuses a limit smaller than one pool segment (nothing could ever
    be stored); an assignment took it silently. Now refused, and nothing changes."""
    with devpool.open_pool("host", 1 << 20, segment_bytes=SEG) as pool:
        zs = devpool.Zswap(pool, max_pool_percent=50)
        before = zs.stats()
        for name, value in (("max_pool_bytes", 1), ("max_pool_bytes", SEG - 1),
                            ("max_pool_percent", 0.1)):
            with pytest.raises(devpool.BadInputError, match="smaller than one pool segment"):
                setattr(zs, name, value)
            assert (zs.max_pool_bytes, zs.max_pool_percent) == (None, 50) and zs.stats() == before
        zs.max_pool_bytes = SEG                    # one segment: allowed
        zs.max_pool_percent = 0.1                  # overridden by max_pool_bytes: allowed
        with pytest.raises(devpool.BadInputError):
            zs.max_pool_bytes = None               # would leave the 0.1 % limit
        assert zs.max_pool_bytes == SEG and zs.stats()["max_pool_bytes"] == SEG
        # the order of the constructor's arguments does not matter either
        assert devpool.Zswap(pool, max_pool_percent=0.001, max_pool_bytes=SEG).stats()["max_pool_bytes"] == SEG
        zs.close()


@pytest.mark.parametrize("kind", ["host", "chaos"])
def test_a_corrupt_block_in_a_full_pool_still_raises_corrupt_data(kind):
    """load() once freed a block before decoding it and put it back if it was corrupt;
    in a full pool the put-back failed and load() raised the pool's PoolFullError. It
    decodes the block where it lies and frees it only once it made a page: it raises
    CorruptDataError, the entry stays (as load_batch leaves it), no other page is touched."""
    pool = devpool.open_pool(kind, 4 * SEG, segment_bytes=SEG)
    zs = devpool.Zswap(pool, "lz4", max_pool_percent=100)
    r = np.random.default_rng(0)
    stored = {}
    while True:
        page = r.integers(0, 256, 4096, dtype=np.uint8)
        page[:2500] = 1
        if not zs.store(len(stored), page):
            break
        stored[len(stored)] = page
    victim = len(stored) // 2
    h = zs._handle_of(victim)
    pool.write(h, np.full(pool.size_of(h), 0xFF, np.uint8))
    with pytest.raises(devpool.CorruptDataError):
        zs.load(victim)
    assert zs.stats()["decompress_fail"] == 1
    assert zs.contains(victim) and zs._handle_of(victim) == h      # kept, same handle
    with pytest.raises(devpool.CorruptDataError):                  # fails the same way again
        zs.load(victim)
    assert zs.stats()["decompress_fail"] == 2
    del stored[victim]
    for o, page in stored.items():
        assert (zs.load(o) == page).all()
    zs.close()
    pool.close()


@pytest.mark.parametrize("kind", ["host", "chaos"])
@pytest.mark.parametrize("call", ["close", "store", "load", "load_same", "invalidate_same", "store_zero"])
def test_a_decoder_that_calls_back_into_zswap_changes_nothing(kind, call, rng):
    """A single load decodes under the pool's lock (the block is lent in place); a codec
    whose decoder calls back into the Zswap that owns the pool (close, a store that
    needs the pool, a load of another page) is refused: the load raises, the Zswap
    stays open, every page is still there and loads once the decoder behaves."""
    from devpool.codecs.lz4_block import Lz4

    class Hostile(Lz4):
        armed = False

        def decompress_page_trusted(self, block, out=None):
            if Hostile.armed:
                Hostile.armed = False
                {"close": zs.close, "store": lambda: zs.store(99, pages[3]),
                 "load": lambda: zs.load(4), "load_same": lambda: zs.load(1),
                 "invalidate_same": lambda: zs.invalidate(5),
                 "store_zero": lambda: zs.store(42, pages[0])}[call]()
            return super().decompress_page_trusted(block, out)

    pool = devpool.open_pool(kind, 1 << 20, segment_bytes=SEG)
    zs = devpool.Zswap(pool, Hostile(), max_pool_percent=100)
    pages = _pages(10, rng)
    kept = np.flatnonzero(zs.store_batch(np.arange(10), pages))   # the incompressible are refused
    assert {3, 4, 8} <= set(kept.tolist()) and zs.entry_kind(8) == "pool"
    before = (zs.stats()["stored_pages"], pool.stats()["obj_used"])
    Hostile.armed = True
    with pytest.raises(devpool.BadInputError, match="called back into"):
        zs.load(8)
    # the calls that need no pool (same-filled pages) are refused too: they used to
    # change the entry table under the load
    assert not zs.closed and not zs.contains(99) and not zs.contains(42)
    assert zs.entry_kind(1) == zs.entry_kind(5) == "same_filled" and zs.entry_kind(8) == "pool"
    assert (zs.stats()["stored_pages"], pool.stats()["obj_used"]) == before
    np.testing.assert_array_equal(zs.load_batch(kept), pages[kept])
    with pytest.raises(AttributeError):
        zs.codec = Lz4()                       # fixed at construction: a load bound its decoder
    zs.close()
    assert pool.stats()["obj_used"] == 0
    pool.close()
