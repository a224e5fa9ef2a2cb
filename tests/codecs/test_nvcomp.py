"""nvcomp-lz4: registered when nvCOMP imports, refused with a clear DeviceError where it
cannot run, and on a GPU (``pytest --gpu``) checked like every codec and against liblz4
both ways (its blocks are plain raw LZ4)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import lz4.block
import numpy as np
import pytest

import devpool
from tests.absent import without
from tests.pages import make_pages

nvcomp = pytest.importorskip("nvidia.nvcomp")


def test_refused_clearly_without_a_driver():
    if ctypes.util.find_library("cuda") is not None:
        pytest.skip("a CUDA driver is installed here: the codec may run (see the --gpu tests)")
    with pytest.raises(devpool.DeviceError, match="nvcomp-lz4 cannot run here"):
        devpool.get_codec("nvcomp-lz4")


def test_not_registered_when_nvcomp_does_not_import():
    """As on the GPU image: the ``nvidia`` namespace is there (CUDA wheels), nvCOMP is not."""
    code = (without("nvidia.nvcomp") +
            "import devpool\n"
            "try:\n    devpool.get_codec('nvcomp-lz4')\n"
            "except devpool.UnknownCodecError as e:\n    print('UNKNOWN', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert "UNKNOWN" in out.stdout and "nvidia.nvcomp" in out.stdout


@pytest.fixture
def gpu(request):
    if not request.config.getoption("--gpu"):
        pytest.skip("needs a CUDA GPU (pytest --gpu)")


@pytest.mark.gpu
def test_roundtrip_and_liblz4_both_ways(gpu, rng):
    from tests.codecs.test_contract import check_bad_arguments, check_config, check_roundtrip
    codec = devpool.get_codec("nvcomp-lz4")
    pages = make_pages(12, rng, ("text", "struct", "random", "same", "zero"))
    check_roundtrip(codec, pages)
    check_config(codec)
    check_bad_arguments(codec, rng)
    data, lengths = codec.compress_batch(pages)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for i, (s, n) in enumerate(zip(starts, lengths)):             # liblz4 decodes nvCOMP's blocks
        assert lz4.block.decompress(data[s:s + n].tobytes(), uncompressed_size=4096) == pages[i].tobytes()
    theirs = [lz4.block.compress(p.tobytes(), store_size=False) for p in pages]
    got = codec.decompress_batch(np.frombuffer(b"".join(theirs), np.uint8), [len(b) for b in theirs])
    np.testing.assert_array_equal(got, pages)                     # nvCOMP decodes liblz4's
    bad = theirs[0][:-7]
    out = np.zeros((2, 4096), np.uint8)
    ok = codec.decompress_into(np.frombuffer(bad + theirs[1], np.uint8), [len(bad), len(theirs[1])], out)
    assert ok.tolist() == [False, True] and out[1].tobytes() == pages[1].tobytes()
