"""The copy kernel's wide path (8-byte words, from one source word or two shifted
together) against a plain byte copy, on every alignment of destination and source and every short length,
with canaries on both sides: the compiled twin (``cpu_copy``, bounds-checked) over all of
them, the kernel itself under the simulator over a sample (a GPU with ``--gpu``)."""

from __future__ import annotations

import numpy as np
import pytest

from devpool.kernels import _copy_kernels as K

CANARY = 0xA5
LENGTHS = list(range(0, 41)) + [63, 64, 65, 127, 128, 129, 1000, 4095, 4096]


def _reference(dst, d, src, s, n):
    out = dst.copy()
    out[d:d + n] = src[s:s + n]
    return out


@pytest.mark.parametrize("threads", [1, 3, 32])
def test_wide_copy_equals_the_byte_copy_on_every_alignment(threads):
    rng = np.random.default_rng(threads)
    src = rng.integers(0, 256, 4096 + 64, dtype=np.uint8)
    dst = np.full(4096 + 64, CANARY, np.uint8)
    src8, dst8 = src.view(np.uint64), dst.view(np.uint64)
    meta = np.zeros(3, np.int64)
    wide_used = 0
    for d in range(16):
        for s in range(16):
            for n in LENGTHS:
                if n > 4096 + 48 - max(d, s):
                    continue
                meta[:] = (s, d, n)
                dst.fill(CANARY)
                want = _reference(dst, d, src, s, n)
                for wide in (1, 0):
                    dst.fill(CANARY)
                    K.cpu_copy(dst, src, dst8, src8, meta, 0, 1, 2, 1, 0, 0, wide, threads)
                    if not np.array_equal(dst, want):
                        bad = np.flatnonzero(dst != want)
                        raise AssertionError(f"d={d} s={s} n={n} wide={wide} threads={threads}: "
                                             f"bytes {bad[:8].tolist()} differ")
                wide_used += n - (8 - d % 8) % 8 >= 8
    assert wide_used > 1000                    # the word loops ran, not only their byte ends


def test_the_wide_path_stays_inside_its_object_at_the_end_of_a_buffer():
    """An object that ends exactly at the end of both buffers: the word loop must not
    read or write the word past it (bounds-checked here)."""
    for n in range(1, 40):
        for off in range(8):
            src = np.arange(off + n, dtype=np.uint64).astype(np.uint8)
            src = np.concatenate([src, np.zeros(-src.size % 8, np.uint8)])
            dst = np.zeros_like(src)
            meta = np.array([off, off, n], np.int64)
            K.cpu_copy(dst, src, dst.view(np.uint64), src.view(np.uint64), meta, 0, 1, 2, 1, 0, 0, 1, 4)
            assert dst[off:off + n].tobytes() == src[off:off + n].tobytes() and not dst[:off].any()


def test_words_only_for_aligned_whole_word_buffers():
    a = np.zeros(64, np.uint8)
    assert K.words(a)[1] == 1 and K.words(a)[0].dtype == np.uint64
    assert K.words(a[1:9])[1] == 0 and K.words(a[8:20])[1] == 0


def test_the_kernel_itself_on_mixed_alignments():
    """The kernel (the simulator here, a GPU under --gpu): objects whose offsets agree
    modulo 8 and objects whose offsets do not, in one launch, canaries between."""
    from devpool.kernels._cuda import cuda, launch, simulated
    rng = np.random.default_rng(7)
    src = rng.integers(0, 256, 2048, dtype=np.uint8)
    cases = [(0, 0, 40), (3, 11, 37), (5, 13, 64), (8, 1, 30), (1, 2, 9), (16, 16, 100), (7, 7, 0), (6, 14, 17)]
    dst_offsets = np.cumsum([0] + [c[2] + 24 for c in cases[:-1]]) + np.array([c[1] % 8 for c in cases])
    meta = np.array([c[0] + 200 * i for i, c in enumerate(cases)] + dst_offsets.tolist()
                    + [c[2] for c in cases], np.int64)
    n = len(cases)
    host = np.full(1024, CANARY, np.uint8)
    want = host.copy()
    for i in range(n):
        want[meta[n + i]:meta[n + i] + meta[2 * n + i]] = src[meta[i]:meta[i] + meta[2 * n + i]]
    d_dst, d_src, d_meta = cuda.to_device(host), cuda.to_device(src), cuda.to_device(meta)
    launch(K.copy_kernel, n, K.threads_per_block(simulated()), None, d_dst, d_src, d_dst.view(np.uint64),
           d_src.view(np.uint64), d_meta, 0, n, 2 * n, n, 0, 0, 1)
    np.testing.assert_array_equal(d_dst.copy_to_host(), want)
