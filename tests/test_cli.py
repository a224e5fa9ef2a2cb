"""The command line, through the installed ``devpool`` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.pages import make_pages

DEVPOOL = str(Path(sys.executable).with_name("devpool"))


def run(*args, timeout=300):
    env = dict(os.environ)
    return subprocess.run([DEVPOOL, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def pages_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "pages.npy"
    np.save(path, make_pages(96, np.random.default_rng(1), ("text", "struct", "struct", "random", "zero")))
    return path


def assert_clean_failure(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_info():
    p = run("info")
    assert p.returncode == 0, p.stderr
    assert "backend host" in p.stdout and "backend cuda" in p.stdout and "auto ->" in p.stdout
    codecs = next(line for line in p.stdout.splitlines() if "codecs:" in line)
    assert "lz4-njit" in codecs and "lz4hc" in codecs


def test_bench_runs_checks_and_writes_json_and_plot(pages_file, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    p = run("bench", "--backend", "host", "--compressor", "lz4", "--pages", str(pages_file), "--quiet",
            "--sweep", "1,16,64", "--json", str(out), "--plot", str(png))
    assert p.returncode == 0, p.stderr
    assert "every page verified" in p.stdout and "x lz4.block loop" in p.stdout
    r = json.loads(out.read_text())
    assert r["pages"] == 96 and r["backend"] == "host" and r["store_pages_per_s"] > 0
    assert r["same_filled_pages"] >= 19 and [s["batch"] for s in r["sweep"]] == [1, 16, 64]
    assert png.read_bytes()[:4] == b"\x89PNG"
    ratio = r["store_vs_lz4_loop"]
    assert r["passes"] == 5 and ratio["low"] <= ratio["median"] <= ratio["high"] and ratio["best_vs_best"] > 0


def test_passes_report_the_median_of_paired_ratios():
    """Benchmarks' ratios pair each pass's baseline with the same pass's subject."""
    from devpool._bench import Passes, format_ratio
    p = Passes()
    for base, subject in [(2.0, 1.0), (1.0, 1.0), (3.0, 1.0), (4.0, 0.5), (1.0, 2.0)]:
        p.add("loop", base)
        p.add("ours", subject)
    r = p.ratio("loop", "ours")
    assert r == {"median": 2.0, "low": 0.5, "high": 8.0, "best_vs_best": 2.0}   # best: 1.0 / 0.5
    assert format_ratio(r) == "2.00x (0.50-8.00; best 2.00x)" and format_ratio(None) == "1.00x"
    assert p.time("sleep", lambda: None) >= 0 and p.best("sleep") == p.times["sleep"][0]


def test_bench_on_chaos(pages_file):
    p = run("bench", "--backend", "chaos", "--compressor", "lz4", "--pages", str(pages_file), "--quiet",
            "--sweep", "16")
    assert p.returncode == 0, p.stderr
    assert "backend chaos" in p.stdout


def test_replay_reports_and_plots(pages_file, tmp_path):
    png, out = tmp_path / "replay.png", tmp_path / "replay.json"
    p = run("replay", "--backend", "host", "--compressor", "lz4", "--pages", str(pages_file), "--quiet",
            "--pattern", "loop", "--working-set", "600", "--ram-pages", "200", "--accesses", "3000",
            "--pool-limit-pages", "40", "--plot", str(png), "--json", str(out))
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    # a loop just larger than RAM faults on every revisit: pages come back from zswap and
    # from the file, the pool limit forces writeback
    assert r["zswap_hits"] > 0 and r["backing_reads"] > 0 and r["written_back_pages"] > 0
    assert r["pool_limit_hit"] > 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_replay_trace_file(pages_file, tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text(" ".join(str(i % 50) for i in range(400)))
    p = run("replay", "--compressor", "lz4", "--pages", str(pages_file), "--quiet", "--pattern", str(trace),
            "--ram-pages", "20", "--pool-limit-pages", "8")
    assert p.returncode == 0, p.stderr
    assert "faults" in p.stdout


def test_capture_summary(tmp_path):
    out = tmp_path / "cap.npy"
    p = run("capture", "-o", str(out), "--max-pages", "500", "--quiet")
    assert p.returncode == 0, p.stderr
    pages = np.load(out)
    assert pages.shape == (500, 4096) and pages.dtype == np.uint8
    assert "LZ4 ratio" in p.stdout and "500 pages" in p.stdout


def test_capture_own_child_by_pid(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import sys; x = bytearray(b'devpool' * 200000); sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        out = tmp_path / "c.npy"
        import time
        time.sleep(0.5)
        p = run("capture", "--pid", str(child.pid), "-o", str(out), "--quiet")
        assert p.returncode == 0, p.stderr
        assert b"devpool" * 10 in np.load(out).tobytes()
    finally:
        child.stdin.close()
        child.wait()


# --- bad input: one clear line, non-zero exit, no traceback -------------------------------
def test_unknown_backend(pages_file):
    assert_clean_failure(run("bench", "--backend", "tpu", "--pages", str(pages_file), "--quiet"), "unknown backend")


def test_cuda_backend_runs_or_says_why(pages_file):
    import devpool
    ok, _ = devpool.available_backends()["cuda"]
    env_run = subprocess.run([DEVPOOL, "bench", "--backend", "cuda", "--compressor", "lz4", "--pages",
                              str(pages_file), "--quiet", "--max-pages", "8", "--sweep", "4"],
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "NUMBA_ENABLE_CUDASIM": os.environ.get("NUMBA_ENABLE_CUDASIM", "0")})
    if ok:
        assert env_run.returncode == 0, env_run.stderr
    else:
        assert_clean_failure(env_run, "cuda")


def test_unknown_codec(pages_file):
    assert_clean_failure(run("bench", "--compressor", "zstd-42", "--pages", str(pages_file), "--quiet"),
                         "unknown codec")


def test_unreadable_pid():
    assert_clean_failure(run("capture", "--pid", "999999999", "-o", "/tmp/x.npy"), "999999999")


@pytest.mark.parametrize("content", ["dtype", "shape", "garbage"])
def test_malformed_npy(tmp_path, content):
    f = tmp_path / "bad.npy"
    if content == "dtype":
        np.save(f, np.zeros((3, 4096), np.float32))
    elif content == "shape":
        np.save(f, np.zeros((3, 100), np.uint8))
    else:
        f.write_bytes(b"this is not numpy")
    assert_clean_failure(run("bench", "--pages", str(f), "--quiet"), "bad.npy")


def test_missing_pages_file():
    assert_clean_failure(run("bench", "--pages", "/nonexistent/pages.npy", "--quiet"), "/nonexistent/pages.npy")


def test_unwritable_output(pages_file):
    assert_clean_failure(run("bench", "--pages", str(pages_file), "--json", "/nonexistent/dir/r.json", "--quiet"),
                         "/nonexistent/dir/r.json")
    assert_clean_failure(run("capture", "-o", "/nonexistent/dir/c.npy"), "/nonexistent/dir/c.npy")


def test_bad_replay_pattern(pages_file):
    assert_clean_failure(run("replay", "--pages", str(pages_file), "--pattern", "spiral", "--quiet"), "spiral")


def test_capture_refused_by_the_os_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    """ptrace rules refuse /proc/PID/mem (simulated here: the tests run as root, who may
    read anything): one clear line, exit 1, and no output file at all."""
    import builtins

    from devpool import _capture, _cli

    def guarded_open(path, *a, **k):
        if str(path).endswith("/mem"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(_capture, "open", guarded_open, raising=False)
    out = tmp_path / "never.npy"
    rc = _cli.main(["capture", "--pid", str(os.getpid()), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "not permitted" in err[0] and str(os.getpid()) in err[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_process_exiting_mid_capture_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from devpool import _capture, _cli
    import builtins

    def vanished(path, *a, **k):
        if str(path).endswith("/pagemap"):
            raise ProcessLookupError(3, "No such process")
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(_capture, "open", vanished, raising=False)
    rc = _cli.main(["capture", "--pid", str(os.getpid()), "-o", str(tmp_path / "x.npy"), "--quiet"])
    assert rc == 1 and "exited during capture" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


def test_bench_check_catches_a_load_that_writes_nothing(tmp_path):
    """devpool bench reuses one destination across passes; it is poisoned before each
    pass, so a load that leaves it untouched is caught, not passed on stale pages."""
    import devpool
    from devpool._bench import _stores_and_loads
    pages = make_pages(32, np.random.default_rng(4))
    got = pages.copy()                                  # what a previous pass left there
    zs = devpool.Zswap(devpool.open_pool("host", 16 << 20), max_pool_percent=100, backing=str(tmp_path / "swap"))
    _stores_and_loads(zs, pages, 8, lambda it, d: it, got)       # a real pass passes
    zs.load_batch = lambda offsets, out=None: out                 # now loads write nothing
    with pytest.raises(devpool.DevpoolError, match="came back different"):
        _stores_and_loads(zs, pages, 8, lambda it, d: it, got)
