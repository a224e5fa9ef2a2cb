"""Codecs: shared checks over every codec x a page corpus (after numcodecs' tests/common.py)."""

from __future__ import annotations

import json
from pathlib import Path

import lz4.block
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import devpool
from tests.conftest import cuda_usable
from devpool.codecs import Codec, registered_codecs
from devpool.codecs.registry import _LAZY
from tests.pages import make_pages
from tests.threads import run_in_threads

FIXTURES = Path(__file__).with_name("fixtures")
CONFIGS = [{"id": "lz4"}, {"id": "lz4", "acceleration": 4}, {"id": "lz4hc", "level": 4},
           {"id": "raw"}, {"id": "lz4-njit"}, {"id": "zstd"}, {"id": "zstd", "level": 19}]
LZ4_FAMILY = [c for c in CONFIGS if c["id"].startswith("lz4")]
CORPUS = {k: (k,) for k in ("text", "struct", "random", "same", "zero")}
CORPUS["mixed"] = ("text", "struct", "random", "same", "zero")


def ids(cfg):
    return "-".join(str(v) for v in cfg.values())


def unpack(data, lengths):
    starts = np.concatenate([[0], np.cumsum(lengths)])
    return [data[starts[i]:starts[i + 1]].tobytes() for i in range(len(lengths))]


# --- shared checks ---------------------------------------------------------------------
def check_roundtrip(codec: Codec, pages: np.ndarray) -> None:
    data, lengths = codec.compress_batch(pages)
    assert data.dtype == np.uint8 and data.ndim == 1 and lengths.dtype == np.int64
    assert int(lengths.sum()) == data.size and (lengths > 0).all()
    np.testing.assert_array_equal(codec.decompress_batch(data, lengths), pages)
    out = np.empty_like(pages)
    assert codec.decompress_into(data, lengths, out).all()
    np.testing.assert_array_equal(out, pages)
    pick = np.arange(len(pages))[::-2]                 # blocks where they lie, by starts
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out = np.zeros_like(pages)
    assert codec.decompress_into(data, lengths[pick], out, pick, starts[pick]).all()
    np.testing.assert_array_equal(out[pick], pages[pick])


def check_batch_matches_single(codec: Codec, pages: np.ndarray) -> None:
    data, lengths = codec.compress_batch(pages)
    blocks = unpack(data, lengths)
    for i in range(0, len(pages), 3):
        d1, l1 = codec.compress_batch(pages[i:i + 1])
        assert d1.tobytes() == blocks[i]
    rows = np.arange(len(pages))[::-2]                # a subset, picked by rows
    d2, l2 = codec.compress_batch(pages, rows)
    assert unpack(d2, l2) == [blocks[i] for i in rows]
    d3, s3, l3 = codec.compress_blocks(pages, rows)  # unpacked form: the same blocks
    assert [d3[s:s + n].tobytes() for s, n in zip(s3, l3)] == [blocks[i] for i in rows]


def check_single_page(codec: Codec, pages: np.ndarray) -> None:
    """The one-page verbs make the batch's blocks and decode every block, both ways;
    a cut block is a failure (False / None), never a page."""
    data, lengths = codec.compress_batch(pages)
    blocks = unpack(data, lengths)
    for page, block in zip(pages, blocks):
        buf, n = codec.compress_page(page)
        assert n == len(block) and buf[:n].tobytes() == block
        out = np.zeros(page.size, np.uint8)
        assert codec.decompress_page(np.frombuffer(block, np.uint8), out)
        np.testing.assert_array_equal(out, page)
        fresh = codec.decompress_page_trusted(np.frombuffer(block, np.uint8).copy())   # the frontend's form
        np.testing.assert_array_equal(fresh, page)
        assert fresh.flags.writeable
        if len(block) > 8:
            cut = np.frombuffer(block[:len(block) // 2], np.uint8)
            assert not codec.decompress_page(cut, out)


def check_config(codec: Codec) -> None:
    cfg = codec.get_config()
    again = devpool.get_codec(json.loads(json.dumps(cfg)))
    assert again == codec and repr(again) == repr(codec)


@pytest.mark.parametrize("config", CONFIGS, ids=ids)
@pytest.mark.parametrize("corpus", sorted(CORPUS))
def test_roundtrip(config, corpus, rng):
    codec = devpool.get_codec(config)
    pages = make_pages(9, rng, CORPUS[corpus])
    check_roundtrip(codec, pages)
    check_batch_matches_single(codec, pages)
    check_single_page(codec, pages)
    check_config(codec)


@pytest.mark.parametrize("acceleration", [1, 4])
def test_lz4_blocks_are_the_keyword_calls_bytes(acceleration, rng):
    """The lz4 codec calls lz4.block positionally (keyword parsing costs a tenth of a
    page's decode): its blocks and pages must be exactly what the documented keyword
    calls give, so a reordered binding fails here instead of storing other bytes."""
    codec = devpool.get_codec({"id": "lz4", "acceleration": acceleration})
    mode = "fast" if acceleration > 1 else "default"
    for page in make_pages(40, rng, sorted({k for kinds in CORPUS.values() for k in kinds})):
        block, n = codec.compress_page_trusted(page)
        want = lz4.block.compress(page, mode=mode, acceleration=acceleration, store_size=False)
        assert block[:n].tobytes() == want
        got = codec.decompress_page_trusted(np.frombuffer(want, np.uint8))
        assert got.tobytes() == lz4.block.decompress(want, uncompressed_size=4096) == page.tobytes()


@pytest.mark.parametrize("config", LZ4_FAMILY, ids=ids)
def test_golden_blocks_from_liblz4_decode_exactly(config):
    """Blocks lz4.block made (committed as fixtures) decode exactly with every LZ4 codec."""
    codec = devpool.get_codec(config)
    gold = np.load(FIXTURES / "lz4_golden.npz")
    for kind in ("default", "hc9"):
        got = codec.decompress_batch(gold[f"{kind}_data"], gold[f"{kind}_lengths"])
        np.testing.assert_array_equal(got, gold["pages"])


def test_lz4_njit_emits_liblz4s_bytes():
    gold = np.load(FIXTURES / "lz4_golden.npz")
    data, lengths = devpool.get_codec("lz4-njit").compress_batch(gold["pages"])
    np.testing.assert_array_equal(lengths, gold["default_lengths"])
    assert data.tobytes() == gold["default_data"].tobytes()


# --- byte compatibility and hostile input (lz4-njit, and its bounds-checked twin) ---------
def _padded(head: bytes, fill: int) -> bytes:
    return (head + bytes([fill]) * 4096)[:4096]


def _random(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()


pages_strategy = st.one_of(
    st.builds(_padded, st.binary(max_size=200), st.integers(0, 255)),
    st.builds(_random, st.integers(0, 2**32 - 1)),
    st.builds(lambda seed, alphabet, run: _structured(seed, alphabet, run),
              st.integers(0, 2**32 - 1), st.integers(1, 256), st.integers(1, 600)),
)


def _structured(seed, alphabet, run):
    """Repetitive pages: runs of a few symbols, long matches, short periods."""
    r = np.random.default_rng(seed)
    out = np.empty(4096, np.uint8)
    i = 0
    while i < 4096:
        n = int(r.integers(1, run + 1))
        if r.random() < 0.5:
            out[i:i + n] = r.integers(0, alphabet)
        else:
            period = int(r.integers(1, 9))
            pat = r.integers(0, alphabet, period).astype(np.uint8)
            out[i:i + n] = np.resize(pat, min(n, 4096 - i))
        i += n
    return out.tobytes()


@settings(max_examples=120, deadline=None)
@given(page=pages_strategy)
def test_lz4_njit_is_byte_compatible_both_ways(page):
    from devpool.kernels.lz4 import build_checked
    codec = devpool.get_codec("lz4-njit")
    arr = np.frombuffer(page, np.uint8).reshape(1, 4096).copy()
    data, lengths = codec.compress_batch(arr)
    ref = lz4.block.compress(page, store_size=False)
    assert data.tobytes() == ref                                  # identical bytes
    assert lz4.block.decompress(data.tobytes(), uncompressed_size=4096) == page
    hc = lz4.block.compress(page, mode="high_compression", compression=12, store_size=False)
    for blob in (ref, hc):
        np.testing.assert_array_equal(codec.decompress_batch(np.frombuffer(blob, np.uint8), [len(blob)])[0], arr[0])
    # the bounds-checked twin agrees
    cp, dp = build_checked()
    out = np.empty((1, 4200), np.uint8)
    lens = np.empty(1, np.int64)
    from devpool.kernels.lz4 import table_entries
    cp(arr, np.zeros(1, np.int64), out, lens, np.zeros((1, table_entries()), np.int32))
    assert out[0, :lens[0]].tobytes() == ref


@settings(max_examples=300, deadline=None)
@given(page=pages_strategy, cuts=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=6),
       trunc=st.integers(0, 64))
def test_hardened_decoder_never_overruns_and_never_returns_a_short_page(page, cuts, trunc):
    from devpool.kernels.lz4 import build_checked
    blob = bytearray(lz4.block.compress(page, store_size=False))
    for pos, val in cuts:                                         # flip bytes
        if blob:
            blob[pos % len(blob)] = val
    if trunc and len(blob) > trunc:
        blob = blob[:-trunc]
    data = np.frombuffer(bytes(blob), np.uint8)
    _, dp = build_checked()                                       # IndexError = out of bounds
    out = np.zeros((1, 4096), np.uint8)
    ok = np.zeros(1, np.bool_)
    dp(data, np.zeros(1, np.int64), np.array([len(blob)], np.int64), out, np.zeros(1, np.int64), ok, 1)
    try:
        ref = lz4.block.decompress(bytes(blob), uncompressed_size=4096)
    except lz4.block.LZ4BlockError:
        ref = None
    if ok[0]:
        # whatever we accept, liblz4 accepts too and decodes identically
        assert ref == out[0].tobytes()
    # the production codec reports the same verdict
    codec = devpool.get_codec("lz4-njit")
    out2 = np.zeros((1, 4096), np.uint8)
    assert codec.decompress_into(data, np.array([len(blob)]), out2)[0] == ok[0]
    # and its single-page decoder (raw pointers, whole-word copies) writes nothing
    # outside its page: canaries on both sides, accepted or not
    from devpool.kernels.lz4 import _single_page
    big = np.full(4096 + 2 * 64, 0xA5, np.uint8)
    n = _single_page()[1](data, big[64:64 + 4096])
    assert (n == 4096) == bool(ok[0])
    assert (big[:64] == 0xA5).all() and (big[64 + 4096:] == 0xA5).all()
    if ok[0]:
        assert big[64:64 + 4096].tobytes() == ref


def test_cpu_copy_helpers_write_exactly_their_range():
    """The fast twin's copies (whole words and vectors, the tail re-copied by one more
    word ending at n) equal a byte-by-byte front-to-back copy for every length up to 80
    and every offset an LZ4 match may take them at, and touch no byte outside
    ``[d, d + n)``: a disjoint copy (a literal, a match at least its length back) and a
    forward copy (a match overlapping its source, offset >= 8)."""
    import numba
    from devpool.kernels.lz4 import _cpu_helpers
    _, _, _, copy_forward, copy_disjoint, _, _ = _cpu_helpers(False)

    @numba.njit
    def both(buf, d, s, n, disjoint):
        if disjoint:
            copy_disjoint(buf, d, buf, s, n)
        else:
            copy_forward(buf, d, buf, s, n)

    rng = np.random.default_rng(11)
    d = 200
    for n in range(81):
        for off in sorted({8, 9, 15, 16, 17, 31, 32, 33, n, n + 1, n + 17, 150}):
            if off < 8 or off > d:
                continue
            for disjoint in ((False, True) if off >= n else (False,)):
                buf = rng.integers(0, 256, 400).astype(np.uint8)
                ref = buf.copy()
                for k in range(n):                     # the LZ77 meaning of the copy
                    ref[d + k] = ref[d - off + k]
                both(buf, d, d - off, n, disjoint)
                assert np.array_equal(buf, ref), (n, off, disjoint)


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), st.builds(lambda p, n: p[:n], pages_strategy, st.integers(0, 4096))))
def test_any_length_block_matches_liblz4(data):
    """Edge cases of the block format: empty, 1 byte, < 13 bytes (all literals), the
    end-of-block literal rules, long runs: same bytes as liblz4 and back again."""
    from devpool.kernels.lz4 import compress_bytes, decompress_bytes
    ref = lz4.block.compress(data, store_size=False)
    assert compress_bytes(data, checked=True) == ref
    assert decompress_bytes(ref, len(data), checked=True) == data
    if data:
        assert decompress_bytes(ref, len(data) - 1, checked=True) is None   # no room: error


def test_short_page_from_liblz4_is_a_decompress_failure():
    """lz4.block can return a short page for a corrupt block; we never do."""
    page = make_pages(1, np.random.default_rng(5), ("text",))[0]
    blob = lz4.block.compress(page.tobytes(), store_size=False)
    # a block that decodes to fewer bytes: drop the tail literals and fix the last token
    short = lz4.block.compress(page.tobytes()[:3900], store_size=False)
    assert len(lz4.block.decompress(short, uncompressed_size=4096)) == 3900   # liblz4: short
    for cfg in LZ4_FAMILY:
        codec = devpool.get_codec(cfg)
        out = np.empty((2, 4096), np.uint8)
        data = np.frombuffer(short + blob, np.uint8)
        ok = codec.decompress_into(data, np.array([len(short), len(blob)]), out)
        assert ok.tolist() == [False, True], cfg
        with pytest.raises(devpool.CorruptDataError):
            codec.decompress_batch(np.frombuffer(short, np.uint8), [len(short)])


# --- registry ---------------------------------------------------------------------------
def test_unknown_codec():
    with pytest.raises(devpool.UnknownCodecError, match="brotli.*known: .*zstd"):
        devpool.get_codec("brotli")
    with pytest.raises(ValueError):
        devpool.get_codec({"no": "id"})


def test_get_codec_leaves_callers_dict_alone():
    cfg = {"id": "lz4hc", "level": 3}
    devpool.get_codec(cfg)
    assert cfg == {"id": "lz4hc", "level": 3}


def test_bad_codec_options():
    for cfg in ({"id": "lz4hc", "level": 0}, {"id": "lz4hc", "level": 13}, {"id": "lz4", "acceleration": 0},
                {"id": "lz4", "acceleration": (1 << 16) + 1}, {"id": "lz4", "acceleration": 1 << 31},
                {"id": "lz4", "nope": 1},
                {"id": "zstd", "level": 0}, {"id": "zstd", "level": 23}, {"id": "zstd", "level": True}):
        with pytest.raises(devpool.BadInputError):
            devpool.get_codec(cfg)


def test_every_codec_subclass_is_registered():
    reg = registered_codecs()

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in subclasses(Codec):
        if cls.__name__.startswith("_") or cls.__module__.startswith("tests."):
            continue
        assert reg.get(cls.codec_id) is cls, cls
    assert set(_LAZY) - {"lz4-device", "nvcomp-lz4"} <= set(reg)      # those two need a GPU stack


def test_bad_pages():
    codec = devpool.get_codec("lz4")
    for bad in (np.zeros((2, 4095), np.uint8), np.zeros((2, 4096), np.int8), [b"x" * 4096],
                np.zeros((2, 8192), np.uint8)[:, ::2]):
        with pytest.raises(devpool.BadInputError):
            codec.compress_batch(bad)


@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_bad_arguments_are_refused_before_anything_is_written(config, rng):
    """A compiled decoder trusts its arguments, so every codec checks them first: a block
    outside the data or a row outside ``out`` is a BadInputError, and ``out`` is untouched."""
    check_bad_arguments(devpool.get_codec(config), rng)


def check_bad_arguments(codec, rng):
    pages = make_pages(3, rng)
    data, lengths = codec.compress_batch(pages)
    out = np.zeros_like(pages)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cases = [
        dict(rows=[0, 1, 3]),                                    # row outside out
        dict(rows=[0, -1, 2]),
        dict(rows=[0, 1]),                                       # too few rows
        dict(starts=starts + 1),                                 # last block runs past data
        dict(starts=[0, -5, 0]),
        dict(out=np.zeros((3, 4095), np.uint8)),
        dict(out=np.zeros((3, 8192), np.uint8)[:, ::2]),
        dict(out=np.zeros((3, 4096), np.int8)),
    ]
    for kw in cases:
        target = kw.pop("out", out)
        with pytest.raises(devpool.BadInputError):
            codec.decompress_into(data, lengths, target, **kw)
        assert not out.any(), f"{kw} wrote into out"
    with pytest.raises(devpool.BadInputError, match="rows"):
        codec.compress_batch(pages, [0, 3])
    with pytest.raises(devpool.BadInputError):
        codec.decompress_into(data, np.append(lengths[:-1], -1), out)


# --- lz4-device: the same algorithm compiled for the GPU (simulator in CI) ---------------
def _device_ok():
    return cuda_usable()[0]


@pytest.mark.device
@pytest.mark.skipif(not _device_ok(), reason="no CUDA device and no simulator")
def test_lz4_device_is_byte_identical_and_decodes_liblz4(rng):
    codec = devpool.get_codec("lz4-device")
    pages = make_pages(5, rng, ("text", "struct", "random", "same", "zero"))
    check_roundtrip(codec, pages)
    check_batch_matches_single(codec, pages)          # the shared checks, as every codec
    check_single_page(codec, pages[:2])
    check_config(codec)
    data, lengths = codec.compress_batch(pages)
    assert data.tobytes() == b"".join(lz4.block.compress(p.tobytes(), store_size=False) for p in pages)
    gold = np.load(FIXTURES / "lz4_golden.npz")
    sel = slice(20, 26)                                       # real pages, hc and default blocks
    for kind in ("default", "hc9"):
        blocks = unpack(gold[f"{kind}_data"], gold[f"{kind}_lengths"])[sel]
        got = codec.decompress_batch(np.frombuffer(b"".join(blocks), np.uint8), [len(b) for b in blocks])
        np.testing.assert_array_equal(got, gold["pages"][sel])
    # a corrupt block is a failure, not a page
    bad = bytearray(lz4.block.compress(pages[0].tobytes(), store_size=False))[:-7]
    out = np.zeros((1, 4096), np.uint8)
    assert not codec.decompress_into(np.frombuffer(bytes(bad), np.uint8), np.array([len(bad)]), out)[0]


@pytest.mark.device
@pytest.mark.skipif(not _device_ok(), reason="no CUDA device and no simulator")
def test_lz4_device_refuses_bad_arguments(rng):
    check_bad_arguments(devpool.get_codec("lz4-device"), rng)


@pytest.mark.parametrize("extra", [-1, 0, 1, 5])
@pytest.mark.parametrize("claims", [1, 2, 5])
def test_lz4_njit_workers_claim_every_page_once(claims, extra, rng):
    """The drivers' workers claim runs of CLAIM pages from a shared counter: for batches
    on and around those runs' edges, every page is compressed once, into its own slot
    (liblz4's exact block), and every block decodes into its own row."""
    from devpool.kernels.lz4 import CLAIM
    n = claims * CLAIM + extra
    codec = devpool.get_codec("lz4-njit")
    pages = make_pages(n + 3, rng, ("text", "struct", "random", "zero"))
    rows = rng.permutation(n + 3)[:n]
    data, lengths = codec.compress_batch(pages, rows)
    want = [lz4.block.compress(pages[r].tobytes(), store_size=False) for r in rows]
    assert lengths.tolist() == [len(w) for w in want]
    assert data.tobytes() == b"".join(want)
    out = np.zeros_like(pages)
    back = rng.permutation(n + 3)[:n]
    assert codec.decompress_into(data, lengths, out, back).all()
    np.testing.assert_array_equal(out[back], pages[rows])
    untouched = np.setdiff1d(np.arange(n + 3), back)
    assert not out[untouched].any()


def test_lz4_njit_from_many_threads_at_once(rng):
    """Parallel numba regions launched from several Python threads at once stay correct
    (and never abort, whatever threading layer numba found)."""
    codec = devpool.get_codec("lz4-njit")
    pages = make_pages(64, rng, ("text", "struct", "random", "zero"))
    want_data, want_len = codec.compress_batch(pages)

    def work(_):
        for _ in range(5):
            data, lengths = codec.compress_batch(pages)
            assert data.tobytes() == want_data.tobytes()
            np.testing.assert_array_equal(codec.decompress_batch(data, lengths), pages)

    run_in_threads(work, 4, timeout=60)


def test_concurrent_parallel_regions_survive_the_workqueue_layer():
    """numba's fallback threading layer aborts the process on concurrent parallel
    launches; devpool serialises its regions, so this must exit cleanly."""
    import os
    import subprocess
    import sys
    code = (
        "import threading, numpy as np, devpool\n"
        "from devpool._packed import gather\n"
        "c = devpool.get_codec('lz4-njit')\n"
        "p = np.random.default_rng(0).integers(0, 4, (64, 4096), dtype=np.uint8)\n"
        "big = np.zeros(4 << 20, np.uint8); L = np.full(1024, 4096, np.int64)\n"
        "S = np.arange(1024, dtype=np.int64) * 4096\n"
        "def w():\n"
        "    for _ in range(5):\n"
        "        d, l = c.compress_batch(p); c.decompress_batch(d, l)\n"
        "        gather(big, S, L, np.empty(4 << 20, np.uint8), S)\n"
        "ts = [threading.Thread(target=w) for _ in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "import numba; print('layer', numba.threading_layer())\n")
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "layer workqueue" in out.stdout


class _TrustedOnly(Codec):
    """A codec that implements only the trusted verbs (the contract's minimum), and
    counts how often they are reached."""

    codec_id = "test-trusted-only"
    calls = 0

    def compress_blocks_trusted(self, pages, rows):
        type(self).calls += 1
        picked = pages if rows is None else pages[rows]
        return picked.reshape(-1).copy(), np.arange(picked.shape[0]) * 4096, np.full(picked.shape[0], 4096)

    def decompress_into_trusted(self, data, lengths, out, rows, starts):
        type(self).calls += 1
        for i, (r, s, n) in enumerate(zip(rows, starts, lengths)):
            if n == 4096:
                out[r] = data[s:s + n]
        return lengths == 4096


def test_the_public_verbs_check_and_then_call_the_trusted_ones(rng):
    """The base class builds every public verb on the two trusted ones: a codec that
    implements only those round-trips through all of them, and a bad argument is
    refused before the trusted verb is reached."""
    codec = _TrustedOnly()
    pages = make_pages(5, rng, ("text", "random"))
    check_roundtrip(codec, pages)
    check_batch_matches_single(codec, pages)
    check_single_page(codec, pages)
    _TrustedOnly.calls = 0
    for bad in (np.zeros((2, 4095), np.uint8), pages.view(np.int8), pages[:, ::-1], [b"x" * 4096]):
        for verb in (codec.compress_batch, codec.compress_blocks):
            with pytest.raises(devpool.BadInputError):
                verb(bad)
    with pytest.raises(devpool.BadInputError):
        codec.compress_blocks(pages, [0, 5])                   # a row outside the batch
    with pytest.raises(devpool.BadInputError):
        codec.compress_page(pages[:2].reshape(-1))
    out = np.zeros((2, 4096), np.uint8)
    with pytest.raises(devpool.BadInputError):
        codec.decompress_into(np.zeros(4096, np.uint8), [4096, 4096], out)   # block 1 outside the data
    with pytest.raises(devpool.BadInputError):
        codec.decompress_page(np.zeros(4096, np.uint8), np.zeros(4096, np.int8))
    assert _TrustedOnly.calls == 0 and not out.any()


def test_a_codec_missing_a_trusted_verb_says_which():
    class Half(Codec):
        codec_id = "test-half"

    with pytest.raises(NotImplementedError, match="compress_blocks_trusted"):
        Half().compress_batch(np.zeros((1, 4096), np.uint8))
    with pytest.raises(NotImplementedError, match="decompress_into_trusted"):
        Half().decompress_batch(np.zeros(4, np.uint8), [4])


@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_decoding_into_rows_from_an_mmap_leaves_it_closable(config, rng):
    """The per-page codecs decode through memoryviews of ``data`` and ``out``: the views
    end with the call, even when a block fails, so the mmap behind the blocks (a host
    arena is one) can still be closed; rows land where asked, a cut block is False and
    leaves its row alone, and no blocks at all is an empty answer (a view of an out with
    no rows cannot be cast)."""
    import mmap
    codec = devpool.get_codec(config)
    pages = make_pages(6, rng, CORPUS[sorted(CORPUS)[0]])
    data, lengths = codec.compress_batch(pages)
    blocks = unpack(data, lengths)
    blocks[2] = blocks[2][:len(blocks[2]) // 2]            # cut: must fail, not decode short
    packed = b"".join(blocks)
    m = mmap.mmap(-1, len(packed) + 64)
    m[:len(packed)] = packed
    src = np.frombuffer(m, np.uint8)[:len(packed)]
    out = np.full((8, pages.shape[1]), 7, np.uint8)
    rows = [7, 0, 3, 1, 6, 4]
    ok = codec.decompress_into(src, [len(b) for b in blocks], out, rows=rows)
    assert ok.dtype == np.bool_ and ok.tolist() == [True, True, False, True, True, True]
    for i, r in enumerate(rows):
        if i != 2:
            np.testing.assert_array_equal(out[r], pages[i])
    assert (out[3] == 7).all() and (out[2] == 7).all() and (out[5] == 7).all()
    del src
    m.close()                                 # BufferError if a view outlived the call
    empty = codec.decompress_into(np.zeros(0, np.uint8), np.zeros(0, np.int64),
                                  np.zeros((0, pages.shape[1]), np.uint8))
    assert empty.dtype == np.bool_ and empty.shape == (0,)


# --- liblz4 from compiled code (devpool.codecs._liblz4) ----------------------------------
def _binding(codec):
    """The same codec with liblz4 reached through the lz4.block binding instead."""
    twin = devpool.get_codec(codec.get_config())
    twin._fns = None
    return twin


def test_lz4_reaches_liblz4_from_compiled_code_here():
    """Where numba's JIT runs (every test run but the JIT-off subprocess below) the lz4
    codec calls liblz4 itself: the compiled paths are the ones under test. lz4hc only
    decodes there (a frontend may not make its blocks with liblz4's fast mode); lz4-njit
    offers liblz4 to a frontend's compiled page; a subclass keeps its own verbs (it may
    change what a block is)."""
    from devpool.codecs import _liblz4
    from devpool.codecs.lz4_block import Lz4
    assert _liblz4.FUNCTIONS is not None, _liblz4.WHY_NOT
    with pytest.raises(ValueError):
        _liblz4.FUNCTIONS.flags.writeable = True     # what compiled code calls: never rewritable
    assert devpool.get_codec("lz4").liblz4 is not None
    assert devpool.get_codec({"id": "lz4", "acceleration": 3}).liblz4[1] == 3
    assert devpool.get_codec("lz4hc").liblz4 is None
    assert devpool.get_codec("lz4-njit").liblz4[1] == 1       # its blocks are liblz4's (pinned above)
    assert devpool.get_codec("raw").liblz4 is None

    class Watched(Lz4):
        pass
    assert Watched().liblz4 is None


@pytest.mark.parametrize("config", [{"id": "lz4"}, {"id": "lz4", "acceleration": 9}, {"id": "lz4hc", "level": 4}],
                         ids=ids)
def test_compiled_liblz4_and_the_binding_agree_block_for_block(config, rng):
    """Both ways into liblz4 make the same blocks (a Zswap's single page and its batch
    must store the same bytes) and give the same verdicts on the same blocks, corrupt
    ones included, page for page."""
    codec = devpool.get_codec(config)
    twin = _binding(codec)
    pages = make_pages(60, rng, ("text", "struct", "random", "same", "zero"))
    data, starts, lengths = codec.compress_blocks_trusted(pages, None)
    d2, s2, l2 = twin.compress_blocks_trusted(pages, None)
    np.testing.assert_array_equal(lengths, l2)
    assert unpack(data, lengths) == unpack(d2, l2)
    rows = np.array([5, 0, 5, 59], np.int64)
    d3, s3, l3 = codec.compress_blocks_trusted(pages, rows)
    assert [d3[s:s + n].tobytes() for s, n in zip(s3, l3)] == [unpack(data, lengths)[r] for r in rows]
    blocks = unpack(data, lengths)
    # corrupt blocks: bytes flipped, cut short, grown, emptied, a block of another page
    bad = []
    for i, b in enumerate(blocks[:30]):
        b = bytearray(b)
        k = int(rng.integers(0, len(b)))
        variant = i % 5
        if variant == 0:
            b[k] ^= 0xFF
        elif variant == 1:
            b = b[:k]
        elif variant == 2:
            b += b"\x00" * 7
        elif variant == 3:
            b[:] = rng.integers(0, 256, len(b), dtype=np.uint8).tobytes()
        bad.append(bytes(b))
    for batch in (blocks, bad):
        lens = np.array([len(b) for b in batch], np.int64)
        flat = np.frombuffer(b"".join(batch), np.uint8)
        out1 = np.zeros((len(batch), 4096), np.uint8)
        out2 = np.zeros((len(batch), 4096), np.uint8)
        ok1 = codec.decompress_into(flat, lens, out1)
        ok2 = twin.decompress_into(flat, lens, out2)
        np.testing.assert_array_equal(ok1, ok2)
        np.testing.assert_array_equal(out1[ok1], out2[ok2])
        for b, ok in zip(batch, ok1):
            arr = np.frombuffer(b, np.uint8)
            got = codec.decompress_page_trusted(arr)
            assert (got is not None) == ok
            assert (twin.decompress_page_trusted(arr) is not None) == ok
    assert ok1.sum() < len(bad)            # (some corrupt block was refused)


def test_a_compiled_decode_writes_nothing_outside_its_page(rng):
    """LZ4_decompress_safe is bounded by the page: a block that would make more (a page
    and a half of text, compressed) is refused, and the bytes around the page stay."""
    codec = devpool.get_codec("lz4")
    text = make_pages(2, rng, ("text",)).reshape(-1)[:6000]
    block = np.frombuffer(lz4.block.compress(text.tobytes(), store_size=False), np.uint8)
    big = np.full(4096 + 128, 0xA5, np.uint8)
    assert codec.decompress_page_trusted(block, big[64:64 + 4096]) is None
    assert (big[:64] == 0xA5).all() and (big[64 + 4096:] == 0xA5).all()


def test_without_numba_jit_lz4_runs_through_the_binding():
    """NUMBA_DISABLE_JIT: no compiled code can call liblz4, so the codec keeps the
    binding's calls (the same blocks), and a Zswap's single page its Python path."""
    import os
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import lz4.block, numpy as np, devpool
        from devpool.codecs import _liblz4
        assert _liblz4.FUNCTIONS is None and "JIT" in _liblz4.WHY_NOT
        codec = devpool.get_codec("lz4")
        assert codec.liblz4 is None
        pages = devpool.capture_workloads()[:40]
        for p in pages:
            b, n = codec.compress_page_trusted(p)
            assert b[:n].tobytes() == lz4.block.compress(p, store_size=False)
        pool = devpool.open_pool("host", 1 << 24)
        zs = devpool.Zswap(pool, codec)
        assert zs._store1 is None
        for o, p in enumerate(pages):
            zs.store(o, p)
        assert all((zs.load(o) == p).all() for o, p in enumerate(pages))
        for fill in (0x01, 0x7F, 0x80, 0xFF):            # fill words past int64's top bit too
            page = np.full(4096, fill, np.uint8)
            assert zs.store(fill, page) and (zs.load(fill) == page).all()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NUMBA_DISABLE_JIT": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_a_block_past_int32_is_never_one_page():
    """liblz4 takes an int length: a block of 2**32 + n bytes must not be read as its
    first n (a valid block followed by 4 GiB of anything would decode as one page).
    Both single and batch verbs say no, as the binding does (the zeros are never touched:
    np.zeros maps them lazily)."""
    codec = devpool.get_codec("lz4")
    page = np.zeros(4096, np.uint8)
    page[::7] = 3
    block = np.frombuffer(lz4.block.compress(page, store_size=False), np.uint8)
    for extra in (1 << 32, 1 << 31):
        big = np.zeros(extra + block.size, np.uint8)
        big[:block.size] = block
        big[block.size:block.size + 64] = 0xEE
        out = np.zeros(4096, np.uint8)
        assert not codec.decompress_page(big, out)
        assert codec.decompress_page_trusted(big, out) is None
        outs = np.zeros((1, 4096), np.uint8)
        assert not codec.decompress_into(big, np.array([big.size]), outs)[0]
        assert not _binding(codec).decompress_page(big, out)
        del big
