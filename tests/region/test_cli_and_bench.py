"""The command line's `replay --real` and the region benchmark, at tiny sizes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tests.region.helpers import needs_uffd

pytestmark = needs_uffd


def test_replay_real_plays_the_trace_on_real_memory(tmp_path):
    import json

    from devpool.cli import main
    from tests.pages import make_pages
    np.save(tmp_path / "pages.npy", make_pages(32, np.random.default_rng(3)))
    out = tmp_path / "replay.json"
    code = main(["replay", "--real", "--pages", str(tmp_path / "pages.npy"), "--backend", "host",
                 "--compressor", "lz4", "--working-set", "64", "--ram-pages", "16", "--accesses", "600",
                 "--pool-limit-pages", "64", "--quiet", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    real = res["real"]
    assert real["first_touch"] == res["first_touch"] > 32    # each page of the trace written once
    assert real["zswap_hits"] + real["backing_reads"] > 0    # and came back from the pool
    assert real["evicted"] > 0 and real["resident_pages"] <= 16
    assert res["faults"] > 0                                 # the simulation ran beside it


def test_bench_region_smoke(tmp_path):
    import json
    from pathlib import Path

    from tests.pages import make_pages
    np.save(tmp_path / "pages.npy", make_pages(16, np.random.default_rng(4)))
    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(bench / "bench_region.py"), "--pages", str(tmp_path / "pages.npy"),
                        "--region-pages", "48", "--accesses", "200", "--policy-accesses", "200", "--passes", "1", "--no-zram",
                        "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=bench)
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert [line["pattern"] for line in res["summary"]] == ["seq", "zipf", "random"]
    for line in res["summary"]:
        assert {"zswap", "zero page", "file", "file O_DIRECT"} <= set(line)
        assert all(line[k]["bytes_ok"] for k in ("zswap", "file", "file O_DIRECT"))
        assert line["zswap"]["faults"] > 0
    assert "skipped" in res["zram"]
    assert {row.get("policy") for row in res["policy_and_fault_around"]} >= {"lfu", "fifo"}
    assert [row["delay_us"] for row in res["delay_sweep"]] == [0, 2, 5, 10]
    assert all(row["faults"] > 0 for row in res["delay_sweep"])


def test_bench_region_growth_smoke(tmp_path):
    import json
    from pathlib import Path

    from tests.pages import make_pages
    np.save(tmp_path / "pages.npy", make_pages(16, np.random.default_rng(5)))
    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    out, png = tmp_path / "g.json", tmp_path / "g.png"
    p = subprocess.run([sys.executable, str(bench / "bench_region_growth.py"), "--pages", str(tmp_path / "pages.npy"),
                        "--sizes-mib", "0.25,0.5", "--touches", "150", "--passes", "2", "--json", str(out),
                        "--plot", str(png)], capture_output=True, text=True, timeout=600, cwd=bench)
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert [s["size_mib"] for s in res["summary"]] == [0.25, 0.5]
    for s in res["summary"]:
        assert s["evicted_pages"] > 0 and s["fault_p50_us"] > 0
        assert s["handler_rss_per_evicted_page"] > 0
    assert res["summary"][0]["p50_vs_smallest"] == 1.0
    assert len(res["rows"]) == 4 and all(row["timed_faults"] > 0 for row in res["rows"])
    assert png.stat().st_size > 1000


def test_bench_region_policy_smoke(tmp_path):
    import json
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    root = bench.parent
    old = tmp_path / "residency_old.py"
    old.write_text((root / "devpool" / "region" / "residency.py").read_text())   # any residency.py
    out = tmp_path / "p.json"
    p = subprocess.run([sys.executable, str(bench / "bench_region_policy.py"), "--sizes-mib", "1,2", "--faults", "300",
                        "--passes", "1", "--old", str(old), "--json", str(out)], capture_output=True, text=True,
                       timeout=300, cwd=bench)
    assert p.returncode == 0, p.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["size_mib"], r["code"]) for r in rows} == {(1.0, "old"), (1.0, "new"), (2.0, "old"), (2.0, "new")}
    assert all(r["rounds"] > 0 and r["faults"] == 300 and r["came_in_p10_ns"] > 0 for r in rows)
