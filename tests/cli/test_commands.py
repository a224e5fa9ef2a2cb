"""The command line, through the installed ``devpool`` entry point."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.pages import make_pages
from tests.conftest import cuda_usable

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
    from devpool.cli.measure import Passes, format_ratio
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


@pytest.mark.device
def test_cuda_backend_runs_or_says_why(pages_file):
    ok, _ = cuda_usable()
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

    from devpool.cli import capture as _capture
    from devpool.cli import main as cli_main

    def guarded_open(path, *a, **k):
        if str(path).endswith("/mem"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(_capture, "open", guarded_open, raising=False)
    out = tmp_path / "never.npy"
    rc = cli_main(["capture", "--pid", str(os.getpid()), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "not permitted" in err[0] and str(os.getpid()) in err[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_process_exiting_mid_capture_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from devpool.cli import capture as _capture
    from devpool.cli import main as cli_main
    import builtins

    def vanished(path, *a, **k):
        if str(path).endswith("/pagemap"):
            raise ProcessLookupError(3, "No such process")
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(_capture, "open", vanished, raising=False)
    rc = cli_main(["capture", "--pid", str(os.getpid()), "-o", str(tmp_path / "x.npy"), "--quiet"])
    assert rc == 1 and "exited during capture" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


def test_bench_check_catches_a_load_that_writes_nothing(tmp_path):
    """devpool bench reuses one destination across passes; it is poisoned before each
    pass, so a load that leaves it untouched is caught, not passed on stale pages."""
    import devpool
    from devpool.cli.bench import _stores_and_loads
    pages = make_pages(32, np.random.default_rng(4))
    got = pages.copy()                                  # what a previous pass left there
    zs = devpool.Zswap(devpool.open_pool("host", 16 << 20), max_pool_percent=100, backing=str(tmp_path / "swap"))
    _stores_and_loads(zs, pages, 8, lambda it, d: it, got)       # a real pass passes
    zs.load_batch = lambda offsets, out=None: out                 # now loads write nothing
    with pytest.raises(devpool.DevpoolError, match="came back different"):
        _stores_and_loads(zs, pages, 8, lambda it, d: it, got)


# --- hardening: every bad argument is one line, checked before the run --------------------
def cli(capsys, *args) -> tuple[int, str, str]:
    """``devpool ARGS`` in this process: (exit status, stdout, stderr)."""
    from devpool.cli import main
    try:
        rc = main(list(args))
    except SystemExit as exc:          # the parser's own exit
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc, out, err, *words):
    assert rc not in (0, None), (out, err)
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]


def huge_header_npy(path):
    """A .npy whose header claims (10**9, 4096) uint8 pages and holds one page."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 4096)})
        f.write(bytes(4096))
    return path


@pytest.mark.parametrize("args, words", [
    (["bench", "--batch", "0"], ["--batch", "0"]),
    (["bench", "--batch", "-5"], ["--batch", "-5"]),
    (["bench", "--batch", "1.5"], ["--batch"]),
    (["bench", "--sweep", "0"], ["--sweep", "0"]),
    (["bench", "--sweep", "abc"], ["--sweep", "abc"]),
    (["bench", "--sweep", "16,-1"], ["--sweep"]),
    (["bench", "--sweep", ","], ["--sweep"]),
    (["bench", "--max-pages", "-1"], ["--max-pages", "-1"]),
    (["bench", "--max-pages", "0"], ["--max-pages"]),
    (["capture", "--max-pages", "-1", "-o", "never.npy"], ["--max-pages"]),
    (["bench", "--pid", "0"], ["--pid", "0"]),
    (["capture", "--pid", "0", "-o", "never.npy"], ["--pid", "0"]),
    (["capture", "--pid", "-3", "-o", "never.npy"], ["--pid"]),
    (["replay", "--working-set", "1e10"], ["--working-set", "1e10"]),
    (["replay", "--working-set", "10000000000"], ["--working-set"]),
    (["replay", "--accesses", "2e9"], ["--accesses", "2e9"]),
    (["replay", "--accesses", "2000000000"], ["--accesses"]),
    (["replay", "--ram-pages", "0"], ["--ram-pages"]),
    (["replay", "--pool-limit-pages", "-1"], ["--pool-limit-pages"]),
    (["replay", "--seed", "-1"], ["--seed", "-1"]),
    (["replay", "--incompressible", "2"], ["--incompressible"]),
    (["replay", "--incompressible", "nan"], ["--incompressible"]),
    (["bench", "--no-such-flag"], ["--no-such-flag"]),
])
def test_bad_arguments_are_one_line_before_any_work(capsys, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, *args)
    assert_one_line(rc, out, err, *words)
    assert "came back different" not in out + err
    assert out == "" and not list(tmp_path.iterdir())       # refused before any work


def test_plot_to_an_unknown_format_is_refused_before_the_run(capsys, tmp_path, pages_file):
    rc, out, err = cli(capsys, "bench", "--pages", str(pages_file), "--quiet", "--plot", str(tmp_path / "out.xyz"),
                       "--json", str(tmp_path / "r.json"))
    assert_one_line(rc, out, err, "out.xyz", ".png")
    assert out == "" and not list(tmp_path.iterdir())


def test_pages_from_an_npz_is_one_line(capsys, tmp_path):
    f = tmp_path / "pages.npz"
    np.savez(f, pages=np.zeros((2, 4096), np.uint8))
    assert_one_line(*cli(capsys, "bench", "--pages", str(f), "--quiet"), "pages.npz", ".npz")


def test_a_header_claiming_a_billion_pages_is_refused_without_allocating(capsys, tmp_path):
    import resource
    f = huge_header_npy(tmp_path / "huge.npy")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert_one_line(*cli(capsys, "bench", "--pages", str(f), "--quiet"), "huge.npy", "header claims")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024   # KiB: far below 4 TB


def test_pages_file_with_max_pages_reads_a_spread(tmp_path):
    from devpool.cli.io import load_pages_file
    pages = np.repeat(np.arange(50, dtype=np.uint8)[:, None], 4096, axis=1)
    np.save(tmp_path / "p.npy", pages)
    np.save(tmp_path / "f.npy", np.asfortranarray(pages))
    for name in ("p.npy", "f.npy"):
        assert np.array_equal(load_pages_file(str(tmp_path / name)), pages)
        got = load_pages_file(str(tmp_path / name), max_pages=5)
        assert got.flags.c_contiguous and list(got[:, 0]) == [0, 12, 24, 36, 49]


@pytest.mark.parametrize("trace, words", [
    ("", ["empty"]),
    ("3000000000", ["3000000000"]),
    ("5 -1 2", ["non-negative"]),
    ("1 2 x", ["not a trace"]),
    ("99999999999999999999999", ["not a trace"]),
])
def test_bad_text_traces_are_one_line(capsys, tmp_path, pages_file, trace, words):
    f = tmp_path / "trace.txt"
    f.write_text(trace)
    rc, out, err = cli(capsys, "replay", "--pages", str(pages_file), "--quiet", "--pattern", str(f))
    assert_one_line(rc, out, err, "trace.txt", *words)


@pytest.mark.parametrize("trace, words", [
    (np.zeros(0, np.int64), ["empty"]),
    (np.array([1, 3_000_000_000], np.int64), ["3000000000"]),
    (np.array([2**64 - 1], np.uint64), ["18446744073709551615"]),
    (np.array([1.0, 2.0]), ["integer"]),
])
def test_bad_npy_traces_are_one_line(capsys, tmp_path, pages_file, trace, words):
    f = tmp_path / "trace.npy"
    np.save(f, trace)
    rc, out, err = cli(capsys, "replay", "--pages", str(pages_file), "--quiet", "--pattern", str(f))
    assert_one_line(rc, out, err, "trace.npy", *words)


def test_a_trace_header_claiming_too_much_is_refused(capsys, tmp_path, pages_file):
    f = tmp_path / "trace.npy"
    with open(f, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)})
        fh.write(bytes(64))
    rc, out, err = cli(capsys, "replay", "--pages", str(pages_file), "--quiet", "--pattern", str(f))
    assert_one_line(rc, out, err, "trace.npy", "header claims")


# --- outputs and inputs that could hang the run or redirect its bytes ---------------------
@pytest.mark.parametrize("which", ["json", "plot", "output", "pages", "pattern"])
def test_a_fifo_never_hangs_the_run(tmp_path, pages_file, which):
    fifo = tmp_path / ("f.png" if which == "plot" else "f.npy" if which in ("output", "pages", "pattern") else "f.json")
    os.mkfifo(fifo)
    args = {"json": ["bench", "--pages", str(pages_file), "--json", str(fifo)],
            "plot": ["bench", "--pages", str(pages_file), "--plot", str(fifo)],
            "output": ["capture", "--pid", str(os.getpid()), "-o", str(fifo)],
            "pages": ["bench", "--pages", str(fifo)],
            "pattern": ["replay", "--pages", str(pages_file), "--pattern", str(fifo)]}[which]
    p = run(*args, "--quiet", timeout=60)
    assert_clean_failure(p, str(fifo), "FIFO")


def test_outputs_through_a_symlink_are_refused_and_the_target_untouched(tmp_path, pages_file):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for name, args in (("c.npy", ["capture", "--pid", str(os.getpid()), "-o"]),
                       ("r.json", ["bench", "--pages", str(pages_file), "--json"])):
        (tmp_path / name).symlink_to(victim)
        p = run(*args, str(tmp_path / name), "--quiet", timeout=60)
        assert_clean_failure(p, name, "symbolic link")
        assert victim.read_bytes() == b"precious"


def test_a_capture_is_private_and_leaves_nothing_beside_it(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import sys; x = bytearray(b'devpool' * 200000); "
                              "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        out = tmp_path / "c.npy"
        out.write_bytes(b"an older capture")          # replaced whole, never written through
        os.chmod(out, 0o644)
        p = run("capture", "--pid", str(child.pid), "-o", str(out), "--quiet", "--max-pages", "64")
        assert p.returncode == 0, p.stderr
    finally:
        child.stdin.close()
        child.wait()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert np.load(out).shape == (64, 4096)
    assert sorted(os.listdir(tmp_path)) == ["c.npy"]


SMALL_REPLAY = ["--quiet", "--compressor", "lz4", "--pattern", "loop", "--working-set", "50", "--ram-pages", "20",
                "--accesses", "200", "--pool-limit-pages", "8"]


def test_a_json_that_cannot_be_written_names_the_file_and_leaves_nothing(capsys, tmp_path, pages_file, monkeypatch):
    """ENOSPC while writing --json (simulated; the tmpfs test below does it for real)."""
    from devpool.cli import io as _cli_io

    real = _cli_io.os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_cli_io.os, "fsync", full)
    out = tmp_path / "r.json"
    rc, stdout, err = cli(capsys, "replay", *SMALL_REPLAY, "--pages", str(pages_file), "--json", str(out))
    monkeypatch.setattr(_cli_io.os, "fsync", real)
    assert_one_line(rc, stdout, err, str(out), "No space left")
    assert not list(tmp_path.iterdir())


@pytest.fixture
def full_tmpfs():
    """A 64 KiB tmpfs under /tmp, filled up; unmounted afterwards. Needs root."""
    import tempfile
    where = tempfile.mkdtemp(prefix="devpool-enospc-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", where],
                             capture_output=True).returncode == 0
    try:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        fd = os.open(os.path.join(where, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 512):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield where
    finally:
        if mounted:
            subprocess.run(["umount", where], check=False)
            if os.path.ismount(where):
                subprocess.run(["umount", "-l", where], check=False)
        os.rmdir(where)


def test_enospc_on_json_in_a_full_tmpfs(full_tmpfs, pages_file):
    out = os.path.join(full_tmpfs, "r.json")
    p = run("replay", *SMALL_REPLAY, "--pages", str(pages_file), "--json", out)
    assert_clean_failure(p, out, "No space left on device")
    assert os.listdir(full_tmpfs) == ["filler"]
