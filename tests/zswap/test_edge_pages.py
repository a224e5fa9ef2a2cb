"""Edge cases that hide: pages one byte away from same-filled, what each codec really
stored, and the accept-threshold hysteresis between the threshold and the limit.

Every test checks what zswap *stored* (the returned mask, ``entry_kind``, the counters),
not only what came back: with a backing file a wrongly refused page still comes back
from the file, so a round trip alone proves little.
"""

from __future__ import annotations

import lz4.block
import numpy as np
import pytest

import devpool
from devpool._packed import same_filled
from tests.pages import (
    FILL_WORDS,
    ODD_POSITIONS,
    PAGE,
    filled_page,
    is_same_filled,
    make_pages,
    nearly_filled_page,
    text_page,
)
from tests.zswap.test_frontend import zswap  # noqa: F401  (the fixture)

KINDS = ("text", "struct", "random", "same", "zero")


def nearly_filled_batch(words=FILL_WORDS):
    pages = [nearly_filled_page(w, p) for w in words for p in ODD_POSITIONS]
    return np.stack(pages)


# --- same-filled detection --------------------------------------------------------------
def test_same_filled_detection_on_edge_pages():
    pages = nearly_filled_batch()
    assert not any(is_same_filled(p) for p in pages)          # the reference agrees
    mask, _ = same_filled(pages)
    wrong = np.flatnonzero(mask)
    assert wrong.size == 0, f"{wrong.size} pages one byte off were taken as same-filled, e.g. " \
                            f"word {FILL_WORDS[wrong[0] // len(ODD_POSITIONS)]:#x} at byte " \
                            f"{ODD_POSITIONS[wrong[0] % len(ODD_POSITIONS)]}"
    full = np.stack([filled_page(w) for w in FILL_WORDS])
    mask, fill = same_filled(full)
    assert mask.all() and fill.tolist() == list(FILL_WORDS)


@pytest.mark.parametrize("form", ["batch", "single"])
def test_nearly_filled_pages_are_stored_compressed_not_as_a_fill_word(zswap, backend, form):
    zs = zswap(backing=False)
    words = FILL_WORDS if backend != "cuda" else FILL_WORDS[:2]     # the simulator is slow
    pages = nearly_filled_batch(words)
    offs = np.arange(pages.shape[0])
    if form == "batch":
        mask = zs.store_batch(offs, pages)
    else:
        mask = np.array([zs.store(int(o), p) for o, p in zip(offs, pages)])
    assert mask.all()
    kinds = {zs.entry_kind(int(o)) for o in offs}
    assert kinds == {"pool"}, kinds
    st = zs.stats()
    assert st["same_filled_pages"] == 0 and st["stored_pages"] == pages.shape[0]
    assert st["stored_incompressible_pages"] == 0 and zs.pool.stats()["obj_used"] == pages.shape[0]
    if form == "batch":
        got = zs.load_batch(offs)
    else:
        got = np.stack([zs.load(int(o)) for o in offs])
    np.testing.assert_array_equal(got, pages)


@pytest.mark.parametrize("form", ["batch", "single"])
def test_filled_pages_take_a_fill_word_only(zswap, form):
    zs = zswap(backing=False)
    pages = np.stack([filled_page(w) for w in FILL_WORDS])
    offs = np.arange(len(FILL_WORDS)) * 3
    if form == "batch":
        mask = zs.store_batch(offs, pages)
    else:
        mask = np.array([zs.store(int(o), p) for o, p in zip(offs, pages)])
    assert mask.all()
    assert [zs.entry_kind(int(o)) for o in offs] == ["same_filled"] * len(FILL_WORDS)
    st = zs.stats()
    assert st["same_filled_pages"] == len(FILL_WORDS) == st["same_filled_stores"]
    assert zs.pool.stats()["obj_used"] == 0 and st["pool_total_size"] == 0
    got = zs.load_batch(offs) if form == "batch" else np.stack([zs.load(int(o)) for o in offs])
    np.testing.assert_array_equal(got, pages)


# --- every codec: what was stored -------------------------------------------------------
CODECS = {"lz4": "lz4", "lz4hc": {"id": "lz4hc", "level": 3}, "raw": "raw", "lz4-njit": "lz4-njit"}


@pytest.mark.parametrize("with_backing", [True, False], ids=["backing", "no-backing"])
@pytest.mark.parametrize("codec", sorted(CODECS))
def test_every_codec_stores_what_it_should(zswap, rng, codec, with_backing):
    """Per page: same-filled -> a fill word; compressible -> a block shorter than a page
    (of liblz4's length for lz4 and lz4-njit); incompressible -> as-is with writeback,
    refused without. The mask, entry_kind and counters must all say so."""
    zs = zswap(backing=with_backing, compressor=CODECS[codec])
    pages = make_pages(20, rng, KINDS)
    mask = zs.store_batch(np.arange(20), pages)
    ref = [len(lz4.block.compress(p.tobytes(), store_size=False)) for p in pages]
    want_mask, want_kind, poor, comp_bytes, stored_raw = [], [], 0, 0, 0
    for p, n in zip(pages, ref):
        if is_same_filled(p):
            want_mask.append(True), want_kind.append("same_filled")
            continue
        incompressible = codec == "raw" or n >= PAGE
        if incompressible and not with_backing:
            poor += 1
            want_mask.append(False), want_kind.append(None)
            continue
        want_mask.append(True), want_kind.append("pool")
        stored_raw += incompressible
        comp_bytes += PAGE if incompressible else n
    assert mask.tolist() == want_mask
    assert [zs.entry_kind(i) for i in range(20)] == want_kind
    st = zs.stats()
    assert st["reject_compress_poor"] == poor
    assert st["stored_incompressible_pages"] == stored_raw
    assert st["stored_pages"] == sum(want_mask) and st["backing_pages"] == 0
    if codec == "lz4hc":                      # its own block lengths, no longer than lz4's
        assert st["stored_compressed_bytes"] <= comp_bytes
    else:                                     # byte-compatible codecs store liblz4's lengths
        assert st["stored_compressed_bytes"] == comp_bytes
    if with_backing:                          # refused pages come back from the file
        np.testing.assert_array_equal(zs.load_batch(np.arange(20)), pages)
    else:
        kept = np.flatnonzero(want_mask)
        np.testing.assert_array_equal(zs.load_batch(kept), pages[kept])


# --- hysteresis -------------------------------------------------------------------------
def test_below_the_limit_but_above_the_threshold_only_same_filled_is_accepted(zswap, rng):
    """Once the limit is hit, a page that would fit under the limit is still refused
    while the pool is above ``accept_threshold_percent`` of it (Linux's hysteresis);
    same-filled pages are accepted all along; at or below the threshold stores resume."""
    limit, seg = 256 * 1024, 16384
    zs = zswap(backing=False, max_pool_bytes=limit, accept_threshold_percent=50)
    accept = zs.stats()["accept_threshold_bytes"]
    assert accept == limit // 2
    stored, off = [], 0
    while not zs.stats()["pool_limit_reached"]:
        pages = make_pages(16, rng, ("text", "struct"))
        mask = zs.store_batch(np.arange(off, off + 16), pages)
        stored += [o for o, m in zip(range(off, off + 16), mask) if m]
        off += 16
        assert off < 2000, "the limit was never reached"
    assert zs.stats()["pool_limit_hit"] >= 1

    def pool_size():
        zs.pool.compact()
        return zs.stats()["pool_total_size"]

    # free the oldest pages until the pool sits between the threshold and one segment
    # below the limit: a new page fits without growing past the limit
    # (measured once: chaos moves objects on every pool call, stats() is no such call)
    while (size := pool_size()) > limit - seg:
        zs.invalidate_batch(stored[:8])
        del stored[:8]
    assert accept < size <= limit - seg, size
    assert zs.stats()["pool_limit_reached"]
    page = text_page(rng)
    assert zs.store(5000, page) is False, "accepted above the accept threshold while the limit was hit"
    assert zs.store_batch([5001], page[None])[0] == False      # noqa: E712 (numpy bool)
    assert zs.entry_kind(5000) is None and zs.entry_kind(5001) is None
    assert zs.store(5002, filled_page(0x0101010101010101)) is True
    assert zs.entry_kind(5002) == "same_filled"
    # at or below the threshold: accepted again, and the limit is no longer reached
    while pool_size() > accept:
        zs.invalidate_batch(stored[:8])
        del stored[:8]
    assert zs.store(5003, page) is True and zs.entry_kind(5003) == "pool"
    assert not zs.stats()["pool_limit_reached"]
    np.testing.assert_array_equal(zs.load(5003), page)
