"""Zswap's single page in one compiled call (devpool.zswap.one_page) against the Python
path it replaces: the same answers, pages, errors, counters and pool, op for op."""

from __future__ import annotations

import numpy as np
import pytest

import devpool
from devpool.pool.door import DOOR_OPEN
from tests.pages import make_pages

SEG = 1 << 15


def _python_path(zs):
    zs._store1 = zs._load1 = zs._invalidate1 = zs._warm1 = None
    return zs


def test_the_compiled_page_runs_where_every_layer_can_be_reached(tmp_path):
    """host pool + the lz4 codec: compiled; a chaos pool, another codec, a codec
    subclass: the Python path (nothing else could honour them)."""
    from devpool.codecs.lz4_block import Lz4

    class Mine(Lz4):
        pass
    cases = [("host", "lz4", True), ("chaos", "lz4", False), ("host", "lz4hc", False), ("host", "lz4-njit", True),
             ("host", Mine(), False)]
    for backend, codec, compiled in cases:
        pool = devpool.open_pool(backend, 1 << 22)
        zs = devpool.Zswap(pool, codec)
        assert (zs._store1 is not None) == compiled, (backend, codec)
        assert zs.stats()["single_page_compiled"] == compiled
        assert pool.stats()["door_open"] == (backend == "host")
        page = make_pages(1, np.random.default_rng(1), ("text",))[0]
        assert zs.store(3, page) and (zs.load(3) == page).all()
        zs.close()
        pool.close()


def test_a_compiled_store_never_asks_the_codec_in_python(rng):
    """Proof the single verbs under test on host are the compiled ones: the codec's
    Python verbs may fail, and a store and load of a compressible page still work."""
    pool = devpool.open_pool("host", 1 << 22)
    zs = devpool.Zswap(pool, "lz4")
    pages = make_pages(8, rng, ("text", "struct"))
    zs.store_batch(np.arange(8), pages)                  # the pool's first segment, the long way
    codec = zs.codec

    def boom(*a, **k):
        raise AssertionError("the Python codec was called")
    codec.compress_page_trusted = codec.decompress_page_trusted = boom
    for o, p in enumerate(pages):
        assert zs.store(100 + o, p)
        assert (zs.load(100 + o) == p).all()
    zs.close()
    pool.close()


def _stats(zs):
    """Zswap's figures but the one that names the path (compiled, or not)."""
    st = zs.stats()
    del st["single_page_compiled"]
    return st


def _twins(tmp_path, writeback, limit, codec="lz4"):
    out = []
    for name in ("compiled", "python"):
        pool = devpool.open_pool("host", 1 << 22, segment_bytes=SEG)
        backing = str(tmp_path / f"{name}.swap") if writeback else None
        zs = devpool.Zswap(pool, codec, max_pool_bytes=limit, backing=backing)
        out.append((pool, zs if name == "compiled" else _python_path(zs)))
    assert out[0][1]._store1 is not None
    return out


def _outcome(fn):
    try:
        r = fn()
    except devpool.DevpoolError as exc:
        return type(exc).__name__
    return r.tobytes() if isinstance(r, np.ndarray) else r


@pytest.mark.parametrize("writeback", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_compiled_and_python_single_pages_are_indistinguishable(tmp_path, writeback, seed):
    _indistinguishable(tmp_path, writeback, seed, "lz4")


@pytest.mark.parametrize("seed", range(2))
def test_lz4_njit_single_pages_compiled_through_liblz4_are_its_own(tmp_path, seed):
    """lz4-njit's blocks are liblz4's byte for byte, so its compiled single page makes
    them with liblz4: the same blocks, pages and figures as its own Python path."""
    _indistinguishable(tmp_path, True, seed, "lz4-njit")


def _indistinguishable(tmp_path, writeback, seed, codec):
    """Random stores (compressible, incompressible, same-filled, zero pages, over what
    is stored), loads (exclusive and kept, of absent offsets too), invalidations,
    writeback, corrupted blocks and a tight limit (refusals, the pool's long way,
    cleaning): every answer, page and error, the counters and the pool's figures are
    the same on both paths, op for op."""
    rng = np.random.default_rng(seed)
    pages = make_pages(64, rng, ("text", "struct", "random", "same", "zero", "struct"))
    (pa, za), (pb, zb) = _twins(tmp_path, writeback, limit=6 * SEG, codec=codec)
    for step in range(700):
        op = rng.integers(0, 10)
        o = int(rng.integers(0, 48))
        if op < 5:
            p = pages[rng.integers(0, len(pages))]
            calls = [lambda z=z: z.store(o, p) for z in (za, zb)]
        elif op < 8:
            keep = bool(rng.integers(0, 4) == 0)
            calls = [lambda z=z: z.load(o, keep=keep) for z in (za, zb)]
        elif op == 8:
            calls = [lambda z=z: z.invalidate(o) for z in (za, zb)]
        elif writeback and rng.integers(0, 3) == 0:
            k = int(rng.integers(1, 4))
            calls = [lambda z=z: z.writeback(k) for z in (za, zb)]
        else:                                           # corrupt one stored block in both
            kinds = [za.entry_kind(o), zb.entry_kind(o)]
            assert kinds[0] == kinds[1], (step, o)
            if kinds[0] == "pool":
                for pool, z in ((pa, za), (pb, zb)):
                    h = z._handle_of(o)
                    n = pool.size_of(h)
                    if n < 4096:
                        pool.write(h, np.full(n, 0xEE, np.uint8))
            continue
        got = [_outcome(c) for c in calls]
        assert got[0] == got[1], (step, op, o, got)
    sa, sb = _stats(za), _stats(zb)
    assert sa == sb
    qa, qb = pa.stats(), pb.stats()
    for k in ("obj_used", "payload_bytes", "pool_total_size", "segments_in_use", "dead_bytes", "clean_steps",
              "compactions", "alloc_fail"):
        assert qa[k] == qb[k], k
    assert sa["same_filled_pages"] and sa["stored_pages"] and sa["decompress_fail"]
    assert sa["pool_limit_hit"] or sa["reject_compress_poor"] or sa["written_back_pages"]
    for z in (za, zb):
        z.close()
    pa.close()
    pb.close()


def test_a_closed_pool_under_a_compiled_zswap_says_so(rng):
    """The pool's door shuts with the pool: the compiled page answers "not here" and the
    Python path says why, as it did before the compiled page."""
    pool = devpool.open_pool("host", 1 << 22)
    zs = devpool.Zswap(pool, "lz4")
    pages = make_pages(4, rng, ("text",))
    for o, p in enumerate(pages):
        zs.store(o, p)
    pool.close()
    assert pool.door[DOOR_OPEN] == 0
    with pytest.raises(devpool.DevpoolError) as err:
        zs.load(1)
    twin_pool = devpool.open_pool("host", 1 << 22)
    twin = _python_path(devpool.Zswap(twin_pool, "lz4"))
    for o, p in enumerate(pages):
        twin.store(o, p)
    twin_pool.close()
    with pytest.raises(devpool.DevpoolError) as want:
        twin.load(1)
    assert type(err.value) is type(want.value)
    with pytest.raises(type(want.value)):
        zs.store(9, pages[0])
    with pytest.raises(devpool.DevpoolError) as inval:
        zs.invalidate(2)
    with pytest.raises(type(inval.value)):
        twin.invalidate(2)
    assert zs.contains(2) and twin.contains(2)
    zs.close()
    twin.close()


def test_a_kept_compiled_call_follows_live_arrays(rng):
    """The compiled store and load are bound to the Zswap's ctx address; kept after the
    Zswap (and its pool) were dropped, they still reach live tables and a live arena."""
    import gc
    pool = devpool.open_pool("host", 1 << 22)
    zs = devpool.Zswap(pool, "lz4")
    pages = make_pages(40, rng, ("text", "struct"))
    zs.store_batch(np.arange(40), pages)
    store1, load1 = zs._store1, zs._load1
    del zs, pool
    gc.collect()
    out = np.zeros(4096, np.uint8)
    for o in range(40):
        assert load1(o, out, True) == 0 and (out == pages[o]).all()
    assert store1(77, pages[0]) in (0, 3)


def test_an_acceleration_set_out_of_range_is_the_bindings_to_judge(tmp_path, rng):
    """A codec's acceleration set after it was made (a public attribute) to what liblz4
    cannot take as asked: the codec and a Zswap over it answer as the binding does (a
    page refused as a compression failure, or compressed in default mode), and building
    the Zswap no longer raises OverflowError (with its swap file created)."""
    page = make_pages(1, rng, ("text",))[0]
    for acc in (1 << 70, 1 << 40, 0, "3"):
        codec, twin = devpool.get_codec("lz4"), devpool.get_codec("lz4")
        codec.acceleration = twin.acceleration = acc
        twin._fns = None                                     # the binding's calls
        assert codec.liblz4 is None
        (b1, n1), (b2, n2) = codec.compress_page_trusted(page), twin.compress_page_trusted(page)
        assert n1 == n2 and b1[:n1].tobytes() == b2[:n2].tobytes()
        d1, _, l1 = codec.compress_blocks_trusted(page[None], None)
        d2, _, l2 = twin.compress_blocks_trusted(page[None], None)
        assert l1.tolist() == l2.tolist() and d1.tobytes() == d2.tobytes()
        answers = []
        for c in (codec, twin):
            pool = devpool.open_pool("host", 1 << 22)
            path = tmp_path / "swap"
            zs = devpool.Zswap(pool, c, backing=str(path), writeback=False)
            assert zs._store1 is None
            answers.append((zs.store(1, page), zs.stats()["reject_compress_fail"]))
            assert (zs.load(1) == page).all()                # (in the pool, or refused to the file)
            zs.close()
            pool.close()
            assert not path.exists()
        assert answers[0] == answers[1], acc


def test_a_zswap_that_cannot_bind_its_compiled_page_opens_nothing(tmp_path):
    """Every check and every fallible step first, the swap file last: a codec whose
    liblz4 settings cannot be bound fails the constructor with no file created or
    claimed, even while the caller still holds the error (its traceback holds the
    half-built Zswap, which used to hold the file)."""
    from devpool.codecs.lz4_block import Lz4
    from devpool.zswap.backing import BackingFile

    class Bad(Lz4):
        liblz4 = (Lz4._fns, 1 << 70)
    pool = devpool.open_pool("host", 1 << 22)
    path = tmp_path / "swap"
    try:
        devpool.Zswap(pool, Bad(), backing=str(path))
    except OverflowError:
        assert not path.exists()
    else:
        raise AssertionError("built")
    shared = BackingFile(str(tmp_path / "shared"))
    try:
        devpool.Zswap(pool, Bad(), backing=shared)
    except OverflowError:
        devpool.Zswap(pool, "lz4", backing=shared).close()    # the file is no one's
    else:
        raise AssertionError("built")
    shared.close()
    pool.close()


@pytest.mark.parametrize("segment_bytes, max_object, trigger", [(4096, 4096, 0.0), (8192, 2048, 0.0)])
def test_two_zswaps_sharing_a_pool_are_the_python_paths_twins(tmp_path, segment_bytes, max_object, trigger):
    """Two Zswaps on one pool (one lock, one door), segments of a page or two, pages
    stored as-is bigger than the pool's largest object, a cleaning step due on every
    free (CLEAN_TRIGGER 0: segments move under the compiled calls between them), single
    and batch verbs interleaved: answers, counters and pool figures equal the Python
    paths' op for op."""
    rng = np.random.default_rng(segment_bytes + max_object)
    pages = make_pages(40, rng, ("text", "struct", "random", "same", "zero", "struct"))
    worlds = []
    for name in ("compiled", "python"):
        pool = devpool.open_pool("host", 1 << 22, segment_bytes=segment_bytes, max_object_bytes=max_object)
        pool.CLEAN_TRIGGER = trigger
        zss = [devpool.Zswap(pool, "lz4", max_pool_bytes=32 * segment_bytes, nr_pages=4000,
                             backing=str(tmp_path / f"{name}{k}.swap")) for k in range(2)]
        assert all(z._store1 is not None for z in zss)
        worlds.append((pool, zss if name == "compiled" else [_python_path(z) for z in zss]))
    for step in range(500):
        op, k = int(rng.integers(0, 12)), int(rng.integers(0, 2))
        o = int(rng.integers(0, 2000 if rng.random() < 0.2 else 50))
        if op < 5:
            p = pages[rng.integers(0, len(pages))]
            calls = [lambda z=zss[k]: z.store(o, p) for _, zss in worlds]
        elif op < 8:
            keep = bool(rng.integers(0, 4) == 0)
            calls = [lambda z=zss[k]: z.load(o, keep=keep) for _, zss in worlds]
        elif op == 8:
            offs = rng.choice(2000, size=int(rng.integers(1, 30)), replace=False)
            idx = rng.integers(0, len(pages), offs.size)
            calls = [lambda z=zss[k]: z.store_batch(offs, pages[idx]) for _, zss in worlds]
        elif op == 9:
            calls = [lambda z=zss[k]: z.invalidate(o) for _, zss in worlds]
        elif op == 10:
            calls = [lambda z=zss[k]: z.writeback(3) for _, zss in worlds]
        else:
            calls = [lambda pool=pool: pool.compact() for pool, _ in worlds]
        got = [_outcome(c) for c in calls]
        assert got[0] == got[1], (step, op, o)
    (pa, za), (pb, zb) = worlds
    assert [_stats(z) for z in za] == [_stats(z) for z in zb]
    qa, qb = pa.stats(), pb.stats()
    assert qa["clean_steps"] and (max_object == 4096 or za[0].stats()["reject_alloc_fail"])    # (reached)
    for key in ("obj_used", "payload_bytes", "pool_total_size", "segments_in_use", "dead_bytes", "clean_steps",
                "compactions", "alloc_fail", "spare_bytes"):
        assert qa[key] == qb[key], key
    for pool, zss in worlds:
        for z in zss:
            z.close()
        pool.close()


def test_uint8_pages_in_any_dtype_object_store_and_load():
    """The fast tests ask for numpy's own uint8 dtype object; uint8 spelled with metadata
    is still a page, stored and loaded the same."""
    spelled = np.dtype(np.uint8, metadata={"from": "a caller"})
    page = np.frombuffer((b"devpool " * 512), np.uint8).copy()
    with devpool.open_pool("host", 1 << 22) as pool, devpool.Zswap(pool, "lz4") as zs:
        zs.store(7, page.view(spelled))
        out = np.empty(4096, spelled)
        zs.load(7, out)
        assert out.tobytes() == page.tobytes()
        with pytest.raises(devpool.BadInputError, match="uint8"):
            zs.load(7, np.empty(4096, np.int8))


class _LyingShape(np.ndarray):
    """A hostile subclass: 100 bytes that say they are a page."""

    @property
    def shape(self):
        return (4096,)


def test_a_subclass_that_lies_about_its_shape_is_refused_not_overrun():
    page = np.frombuffer((b"devpool " * 512), np.uint8).copy()
    with devpool.open_pool("host", 1 << 22) as pool, devpool.Zswap(pool, "lz4") as zs:
        zs.store(3, page)
        liar = np.zeros(100, np.uint8).view(_LyingShape)
        with pytest.raises(devpool.BadInputError, match="out must be"):
            zs.load(3, liar)
        assert zs.load(3).tobytes() == page.tobytes()      # nothing changed
        # an honest subclass is filled through its plain view
        honest = np.zeros(4096, np.uint8).view(type("Honest", (np.ndarray,), {}))
        zs.store(4, page)
        zs.load(4, honest)
        assert honest.tobytes() == page.tobytes()


def test_a_load_and_an_invalidation_warm_their_lookup_first_and_change_nothing(rng):
    """Each single load and invalidation asks ``warm_one`` for its offset's index line
    before its checks and lock (at 10^6 entries the lookup's first miss then overlaps
    them: benchmarks/bench_growth_paired.py); the warm-up itself changes no table,
    answers for any key, the table at any size, and after the Zswap closed."""
    from devpool.zswap import one_page
    pool = devpool.open_pool("host", 1 << 22)
    zs = devpool.Zswap(pool, "lz4")
    pages = make_pages(30, rng, ("text", "struct"))
    zs.store_batch(np.arange(30), pages)
    warmed, real = [], zs._warm1
    zs._warm1 = lambda o: warmed.append(o) or real(o)
    assert (zs.load(4) == pages[4]).all()
    zs.invalidate(7)
    zs.invalidate(500)                                      # (not stored: warmed all the same)
    assert (zs.load(9, keep=True) == pages[9]).all()
    assert warmed == [4, 7, 500, 9]
    with pytest.raises(devpool.BadInputError):
        zs.invalidate(-1)                                   # refused before anything is asked
    assert warmed == [4, 7, 500, 9]
    t = zs._t
    before = [a.copy() for a in (t.buckets, t._records, t.meta)]
    for key in (0, 1, 29, 2**40, 2**63 - 1, -1, -2**63):
        assert real(key) == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, (t.buckets, t._records, t.meta)))
    zs.close()
    pool.close()
    assert real(3) == 0                                     # a closed Zswap's: a prefetch at most
    assert one_page.warm_one.__doc__
