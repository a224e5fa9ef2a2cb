"""The device benchmark runs end to end on the CPU (simulator, tiny sizes), so CI
notices when it breaks; real figures come from a GPU run (benchmarks/results/)."""

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_bench_device_smoke(tmp_path):
    out = tmp_path / "dev.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    p = subprocess.run([sys.executable, str(BENCH / "bench_device.py"), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600, cwd=BENCH)
    assert p.returncode == 0, p.stderr
    import json
    r = json.loads(out.read_text())
    assert [row["batch"] for row in r["rows"]] == [1, 4, 16]
    assert all(row["write_pages_per_s"] > 0 and row["read_vs_raw"] > 0 for row in r["rows"])
    assert "simulator" in r["device"]


def test_bench_zswap_with_blocks_on_the_device_smoke(tmp_path):
    """The GPU session's zswap benchmark (lz4-device over the cuda pool) runs end to end."""
    import json

    import numpy as np
    sys.path.insert(0, str(BENCH.parent))
    from tests.pages import make_pages
    pages = tmp_path / "pages.npy"
    np.save(pages, make_pages(6, np.random.default_rng(1)))
    out = tmp_path / "zswap.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    p = subprocess.run([sys.executable, str(BENCH / "bench_zswap.py"), "--backend", "cuda",
                        "--compressor", "lz4-device", "--pages", str(pages), "--batch", "3",
                        "--repeats", "1", "--latency-pages", "1", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600, cwd=BENCH)
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["blocks_on_device"] is True and r["pages"] == 6 and r["store_pages_per_s"] > 0
    assert "simulator" in r["device"]


def test_bench_scaling_smoke(tmp_path):
    """The scaling probe runs every workload in 1 and 2 worker processes and in numba
    threads, and reports a positive rate and ratio for each."""
    import json

    import numpy as np
    sys.path.insert(0, str(BENCH.parent))
    from tests.pages import make_pages
    pages = tmp_path / "pages.npy"
    np.save(pages, make_pages(16, np.random.default_rng(2)))
    out = tmp_path / "scaling.json"
    p = subprocess.run([sys.executable, str(BENCH / "bench_scaling.py"), "--pages", str(pages), "--procs", "2",
                        "--window", "0.05", "--repeats", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=BENCH)
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    modes = {(row["workload"], row["mode"]) for row in r["rows"]}
    assert ("lz4.block compress", "processes") in modes and ("lz4-njit decompress", "threads") in modes
    assert len(modes) == 7
    assert all(row["one_median"] > 0 and row["many_median"] > 0 and row["scaling_median"] > 0 for row in r["rows"])
    assert r["compress_per_core_vs_loop"] > 0 and r["decompress_processes_vs_loop"] > 0
    assert {(b["workload"], b["cpu"]) for b in r["bursts"]} == {
        (w, c) for w in ("lz4.block compress", "lz4.block decompress") for c in os.sched_getaffinity(0)}
    assert all(b["fastest"] >= b["median"] > 0 for b in r["bursts"])


def test_bench_lz4_device_smoke(tmp_path):
    """The device-LZ4 kernel benchmark runs end to end on the simulator: every block it
    times is checked against lz4.block and every decoded page against the original."""
    import json
    out = tmp_path / "lz4dev.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    p = subprocess.run([sys.executable, str(BENCH / "bench_lz4_device.py"), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600, cwd=BENCH)
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert [(row["kernel"], row["workers"]) for row in r["rows"]] == [("compress", 2), ("compress", 4),
                                                                       ("decompress", 4)]
    assert all(row["GBps"] > 0 and row["vs_raw_h2d"] > 0 for row in r["rows"])
    assert r["raw_h2d_GBps"] > 0 and "simulator" in r["device"]
