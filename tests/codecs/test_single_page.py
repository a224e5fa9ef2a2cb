"""Hostile blocks and pages for every codec's single-page verbs."""

from __future__ import annotations

import numpy as np
import pytest

import devpool

CODECS = ["lz4", "lz4hc", "raw", "lz4-njit", "zstd"]
if devpool.available_backends()["cuda"][0]:
    CODECS.append("lz4-device")


def _page(kind: str) -> np.ndarray:
    if kind == "text":
        return np.frombuffer((b"hello world 123 ") * 256, np.uint8).copy()
    return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)


@pytest.mark.parametrize("kind", ["text", "random"])
@pytest.mark.parametrize("cid", CODECS)
def test_decompress_page_takes_a_block_in_any_buffer_layout(cid, kind):
    """A strided view of a valid block is still that block: decompress_page used to pass
    it to the binding as it was and report a failed decode (False) for lz4, lz4hc,
    lz4-njit and zstd."""
    codec = devpool.get_codec(cid)
    page = _page(kind)
    buf, n = codec.compress_page(page)
    block = np.array(buf[:n])
    readonly = block.copy()
    readonly.flags.writeable = False
    for form in (block, np.repeat(block, 2)[::2], block[None, :], np.repeat(block[None, :], 2, 0)[:1, :],
                 readonly, block.tobytes(), bytearray(block.tobytes()), memoryview(block.tobytes())):
        out = np.zeros(4096, np.uint8)
        assert codec.decompress_page(form, out), type(form)
        assert (out == page).all()
    for bad in (block[:-1], np.zeros(0, np.uint8), np.zeros(1 << 16, np.uint8)):
        out = np.zeros(4096, np.uint8)
        assert not codec.decompress_page(bad, out)
    for bad in ("abc", None, 3):
        with pytest.raises(devpool.BadInputError):
            codec.decompress_page(bad, np.zeros(4096, np.uint8))


@pytest.mark.parametrize("cid", CODECS)
def test_compress_page_refuses_what_is_not_one_page(cid):
    codec = devpool.get_codec(cid)
    page = _page("text")
    for bad in (page.reshape(2, -1), page[:100], np.repeat(page, 2)[::2], page.tobytes(), page.view(np.int8)):
        with pytest.raises(devpool.BadInputError):
            codec.compress_page(bad)
    for bad_out in (np.zeros(4095, np.uint8), np.zeros(4096, np.int8), np.zeros(8192, np.uint8)[::2]):
        with pytest.raises(devpool.BadInputError):
            codec.decompress_page(page, bad_out)


def test_zstd_level_follows_the_integer_rule():
    """check_int's rule: numpy integers are integers (np.int64(5) was refused)."""
    assert devpool.get_codec({"id": "zstd", "level": np.int64(5)}).level == 5
    for bad in (True, 0, 23, 3.0, "3", 10**30):
        with pytest.raises(devpool.BadInputError):
            devpool.get_codec({"id": "zstd", "level": bad})
