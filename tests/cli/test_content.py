"""The command line's promises are about content: what was verified, on which backend,
and figures that follow from the input. An exit code of 0 alone proves none of that."""

from __future__ import annotations

import json
import os

import lz4.block
import numpy as np
import pytest

import devpool
from tests.pages import PAGE, is_same_filled
from tests.cli.test_commands import pages_file, run  # noqa: F401  (pages_file is a fixture)


def expected_counts(path, n=None) -> tuple[int, int]:
    """(same-filled, incompressible) pages of a pages file, decided here."""
    pages = np.load(path)[:n]
    same = sum(is_same_filled(p) for p in pages)
    poor = sum(not is_same_filled(p) and len(lz4.block.compress(p.tobytes(), store_size=False)) >= PAGE
               for p in pages)
    return same, poor


def check_bench(p, out, backend, path, n):
    assert p.returncode == 0, p.stderr
    first = p.stdout.splitlines()[0]
    assert f"backend {backend}" in first and "every page verified" in first, first
    r = json.loads(out.read_text())
    assert r["backend"] == backend and r["pages"] == n and r["compressor"] == "lz4"
    assert (r["same_filled_pages"], r["incompressible_pages"]) == expected_counts(path, n)
    assert r["store_pages_per_s"] > 0 and r["load_pages_per_s"] > 0
    assert 1.0 < r["compression_ratio"] < 10


def test_bench_on_chaos_verifies_every_page(pages_file, tmp_path):
    out = tmp_path / "chaos.json"
    p = run("bench", "--backend", "chaos", "--compressor", "lz4", "--pages", str(pages_file), "--quiet",
            "--sweep", "16", "--json", str(out))
    check_bench(p, out, "chaos", pages_file, 96)


@pytest.mark.device
def test_bench_on_cuda_under_the_simulator_verifies_every_page(pages_file, tmp_path):
    if not devpool.available_backends()["cuda"][0]:
        pytest.skip("no CUDA device and no simulator")       # conftest enables the simulator
    out = tmp_path / "cuda.json"
    p = run("bench", "--backend", "cuda", "--compressor", "lz4", "--pages", str(pages_file), "--quiet",
            "--max-pages", "8", "--sweep", "4", "--json", str(out), timeout=600)
    # the simulator says so in the device's name; a GPU's name (NVIDIA H100 ...) does not
    assert (os.environ.get("NUMBA_ENABLE_CUDASIM") == "1") == ("simulator" in p.stdout), p.stdout
    check_bench(p, out, "cuda", pages_file, 8)


@pytest.mark.parametrize("pages_in_trace, ram_pages", [(50, 20), (10, 20)], ids=["thrash", "fits-in-ram"])
def test_replay_trace_figures_follow_from_the_trace(pages_file, tmp_path, pages_in_trace, ram_pages):
    """A loop over more pages than RAM faults on every access; one that fits faults once
    per page and then hits RAM. Either way faults split exactly into first touches,
    zswap hits and backing-file reads."""
    trace = tmp_path / "trace.txt"
    accesses = [i % pages_in_trace for i in range(400)]
    trace.write_text(" ".join(map(str, accesses)))
    out = tmp_path / "replay.json"
    p = run("replay", "--compressor", "lz4", "--pages", str(pages_file), "--quiet", "--pattern", str(trace),
            "--ram-pages", str(ram_pages), "--pool-limit-pages", "8", "--json", str(out))
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["accesses"] == 400 and r["working_set"] == pages_in_trace
    assert r["first_touch"] == pages_in_trace
    assert r["faults"] + r["ram_hits"] == 400
    assert r["faults"] == r["first_touch"] + r["zswap_hits"] + r["backing_reads"]
    if pages_in_trace > ram_pages:              # LRU over a longer loop: every access faults
        assert r["ram_hits"] == 0 and r["zswap_hits"] > 0 and r["backing_reads"] > 0
        assert r["pool_limit_hit"] > 0
    else:
        assert r["faults"] == pages_in_trace and r["zswap_hits"] == r["backing_reads"] == 0
    assert f"faults {r['faults']}" in p.stdout
