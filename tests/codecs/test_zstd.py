"""The zstd codec beyond the shared codec checks: frames other tools read, corrupt and
oversized frames refused, and ``devpool bench --compressor zstd``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import zstandard

import devpool
from tests.pages import make_pages


def test_blocks_are_plain_zstd_frames_and_bad_ones_fail(rng):
    codec = devpool.get_codec({"id": "zstd", "level": 6})
    pages = make_pages(6, rng, ("text", "struct", "random", "zero"))
    data, lengths = codec.compress_batch(pages)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for i, (s, n) in enumerate(zip(starts, lengths)):             # any zstd reader decodes them
        got = zstandard.ZstdDecompressor().decompress(data[s:s + n].tobytes(), max_output_size=4096)
        assert got == pages[i].tobytes()
    mine = zstandard.ZstdCompressor(level=1).compress(pages[0].tobytes())   # and ours decodes theirs
    out = np.zeros((3, 4096), np.uint8)
    two = zstandard.ZstdCompressor().compress(pages[:2].tobytes())          # 8 KiB: not one page
    short = zstandard.ZstdCompressor().compress(pages[0, :4000].tobytes())
    blocks = [mine, two, short[:-3] if len(short) > 8 else b"\x00"]
    ok = codec.decompress_into(np.frombuffer(b"".join(blocks), np.uint8), [len(b) for b in blocks], out)
    assert ok.tolist() == [True, False, False]
    assert out[0].tobytes() == pages[0].tobytes() and not out[1:].any()


def test_devpool_bench_runs_with_zstd(tmp_path):
    pages = tmp_path / "p.npy"
    np.save(pages, make_pages(48, np.random.default_rng(2), ("text", "struct", "random", "zero")))
    report = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "devpool.cli", "bench", "--backend", "host", "--compressor", "zstd",
                           "--pages", str(pages), "--quiet", "--sweep", "1,16", "--json", str(report)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert "every page verified" in proc.stdout
    r = json.loads(report.read_text())
    assert r["pages"] == 48 and r["store_pages_per_s"] > 0
