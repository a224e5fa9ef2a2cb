"""Every benchmark runs end to end on the CPU (tiny sizes; the device ones under numba's
CUDA simulator), so CI notices when one breaks; real figures come from full runs
(benchmarks/results/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.pages import make_pages

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def run_bench(tmp_path, script: str, *args: str, simulator: bool = False) -> dict:
    """Run ``benchmarks/<script>`` with ``args`` and ``--json``; its exit status must be 0;
    returns the JSON it wrote."""
    out = tmp_path / (Path(script).stem + ".json")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"} if simulator else None
    p = subprocess.run([sys.executable, str(BENCH / script), *args, "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600, cwd=BENCH)
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text())


def pages_file(tmp_path, n: int, seed: int) -> str:
    """``n`` synthetic pages saved as .npy (what ``--pages`` reads)."""
    path = tmp_path / "pages.npy"
    np.save(path, make_pages(n, np.random.default_rng(seed)))
    return str(path)


def test_bench_device_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_device.py", "--smoke", simulator=True)
    assert [row["batch"] for row in r["rows"]] == [1, 4, 16]
    assert all(row["write_pages_per_s"] > 0 and row["read_vs_raw"] > 0 for row in r["rows"])
    assert "simulator" in r["device"]


def test_bench_zswap_with_blocks_on_the_device_smoke(tmp_path):
    """The GPU session's zswap benchmark (lz4-device over the cuda pool) runs end to end."""
    r = run_bench(tmp_path, "bench_zswap.py", "--backend", "cuda", "--compressor", "lz4-device",
                  "--pages", pages_file(tmp_path, 6, 1), "--batch", "3", "--repeats", "1",
                  "--latency-pages", "1", simulator=True)
    assert r["blocks_on_device"] is True and r["pages"] == 6 and r["store_pages_per_s"] > 0
    assert "simulator" in r["device"]


def test_bench_scaling_smoke(tmp_path):
    """The scaling probe runs every workload in 1 and 2 worker processes and in numba
    threads, and reports a positive rate and ratio for each."""
    r = run_bench(tmp_path, "bench_scaling.py", "--pages", pages_file(tmp_path, 16, 2), "--procs", "2",
                  "--window", "0.05", "--repeats", "2")
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
    r = run_bench(tmp_path, "bench_lz4_device.py", "--smoke", simulator=True)
    assert [(row["kernel"], row["workers"]) for row in r["rows"]] == [("compress", 2), ("compress", 4),
                                                                       ("decompress", 4)]
    assert all(row["GBps"] > 0 and row["vs_raw_h2d"] > 0 for row in r["rows"])
    assert r["raw_h2d_GBps"] > 0 and "simulator" in r["device"]


def test_bench_latency_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_latency.py", "--pages", pages_file(tmp_path, 300, 5), "--n", "60",
                  "--passes", "1", "--backends", "host", "--codecs", "lz4")
    run = [x for x in r["runs"] if "single_page" in x][0]
    for verb in ("store", "load", "invalidate"):
        v = run["single_page"][verb]
        assert v["zswap"]["p50_us"] > 0 and v["bare"]["p50_us"] > 0 and v["p50_vs_bare"]["median"] > 0
    assert "skipped" in r["zram"] or r["zram"]["load"]["p50_us"] > 0
    parts = run["load_parts"]
    assert parts["decode_p50_us"] > 0 and parts["pool_read_with_free_p50_us"] > 0
    assert parts["compiled_page"] is True            # host + lz4: one compiled call a load
    assert abs(parts["decode_p50_us"] + parts["frontend_rest_us"] - parts["load_p50_us"]) < 1e-6


def _uffd_usable() -> bool:
    from devpool.region import uffd as _uffd
    try:
        os.close(_uffd.open_uffd())
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _uffd_usable(), reason="userfaultfd unusable here (as tests/region/test_region.py)")
def test_bench_uffd_ioctl_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_uffd_ioctl.py", "--pages", "64", "--passes", "1")
    assert r["copy"]["p50_us"] > 0 and r["zeropage"]["p50_us"] > 0


def test_bench_churn_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_churn.py", "--pages", pages_file(tmp_path, 400, 6), "--live", "300",
                  "--churn", "1500", "--batch", "50", "--rounds", "10", "--no-zram", "--compressor", "lz4")
    assert r["pool"]["held_per_live_after_compact"] < r["pool"]["held_per_live_max"] + 1e-9
    assert r["pool"]["clean_steps"] >= 0 and r["zswap"]["pool_limit_hit"] == 0
    assert r["zram"] == {"skipped": "--no-zram"}


def test_bench_first_store_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_first_store.py", "--runs", "2")
    assert len(r["runs"]) == 2 and all(x["import_and_first_store_s"] > 0 for x in r["runs"])


def test_batch_ab_smoke(tmp_path):
    """benchmarks/batch_ab.sh: two trees installed apart, run alternately, each printing
    its store and load figures; its temporary worktree and installs are gone after."""
    root = BENCH.parent
    pages_file(tmp_path, 200, 3)
    p = subprocess.run(["bash", str(BENCH / "batch_ab.sh"), "HEAD", "1", "pages.npy"],   # relative to cwd
                       env={**os.environ, "PY": sys.executable}, capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "== base (round 1)" in p.stdout and "== head (round 1)" in p.stdout
    assert p.stdout.count("store_batch") == 2 and p.stdout.count("load_batch") == 2
    worktrees = subprocess.run(["git", "-C", str(root), "worktree", "list"], capture_output=True, text=True).stdout
    assert "devpool-batch-ab" not in worktrees
    # an option where the commit goes is refused, not passed to git (it compared HEAD with HEAD)
    p = subprocess.run(["bash", str(BENCH / "batch_ab.sh"), "--force", "1"], env={**os.environ, "PY": sys.executable},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "is not a commit" in p.stderr


def test_bench_serial_threshold_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_serial_threshold.py", "--pages", pages_file(tmp_path, 64, 8), "--sizes", "4,16",
                  "--passes", "1", "--total", "32")
    assert [row["pages"] for row in r["rows"]] == [4, 16]
    assert all(row["compress_parallel_vs_serial"][0] > 0 and row["serial_us_per_page"][1] > 0 for row in r["rows"])


@pytest.fixture
def haltpoll(tmp_path, monkeypatch):
    """benchmarks/_haltpoll.py on a stand-in parameter file (never the real sysfs one)."""
    sys.path.insert(0, str(BENCH))
    try:
        import _haltpoll
    finally:
        sys.path.pop(0)
    param = tmp_path / "guest_halt_poll_ns"
    param.write_text("0\n")
    monkeypatch.setattr(_haltpoll, "PARAM", str(param))
    monkeypatch.setattr(_haltpoll, "LOCK", str(tmp_path / "lock"))
    return _haltpoll


def test_guest_halt_poll_is_set_for_the_block_and_restored(haltpoll):
    with haltpoll.guest_halt_poll(200_000) as hp:
        assert hp.why is None and hp.ns == 200_000 and haltpoll.read() == 200_000
    assert haltpoll.read() == 0
    with pytest.raises(RuntimeError, match="boom"):
        with haltpoll.guest_halt_poll(50_000):
            assert haltpoll.read() == 50_000
            raise RuntimeError("boom")
    assert haltpoll.read() == 0
    with haltpoll.guest_halt_poll(None) as hp:             # the machine as found
        assert hp.why is None and hp.ns == 0
    for bad in (-1, 1 << 32, 1.5, True, "200"):
        with pytest.raises(ValueError, match="guest_halt_poll_ns"):
            with haltpoll.guest_halt_poll(bad):
                pass
    assert haltpoll.read() == 0


def test_guest_halt_poll_repairs_what_a_dead_run_left(haltpoll, capsys):
    """A run killed inside its block leaves the value it found in the lock file; the next
    run puts it back before reading the value (which would otherwise be taken as found)."""
    from pathlib import Path
    Path(haltpoll.PARAM).write_text("200000\n")           # changed, and the run died
    Path(haltpoll.LOCK).write_text("0")
    with haltpoll.guest_halt_poll(100_000) as hp:
        assert hp.why is None and haltpoll.read() == 100_000
    assert haltpoll.read() == 0 and Path(haltpoll.LOCK).read_text() == ""
    assert "left changed by a run that died" in capsys.readouterr().err


def test_guest_halt_poll_refuses_a_planted_lock_link_and_odd_values(haltpoll, tmp_path):
    from pathlib import Path
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, haltpoll.LOCK)
    with haltpoll.guest_halt_poll(200_000) as hp:
        assert "cannot be opened safely" in hp.why
    assert victim.read_text() == "precious\n" and haltpoll.read() == 0
    os.unlink(haltpoll.LOCK)
    Path(haltpoll.PARAM).write_text("garbage\n")
    with haltpoll.guest_halt_poll(200_000) as hp:
        assert "not a number" in hp.why
    os.unlink(haltpoll.PARAM)
    with haltpoll.guest_halt_poll(200_000) as hp:
        assert "does not exist" in hp.why


def test_guest_halt_poll_restore_failure_is_loud(haltpoll, monkeypatch, capsys):
    """A restore that fails names the value to put back; it never hides the block's own
    error, and the next run repairs it (the value stays recorded)."""
    real = haltpoll._write

    def broken(ns):
        raise OSError(5, "I/O error")

    with pytest.raises(RuntimeError, match="could not put .* back to 0"):
        with haltpoll.guest_halt_poll(200_000):
            monkeypatch.setattr(haltpoll, "_write", broken)
    monkeypatch.setattr(haltpoll, "_write", real)
    assert haltpoll.read() == 200_000
    with haltpoll.guest_halt_poll(300_000):                  # repairs first, then sets
        assert haltpoll.read() == 300_000
    assert haltpoll.read() == 0
    with pytest.raises(KeyError):
        with haltpoll.guest_halt_poll(200_000):
            monkeypatch.setattr(haltpoll, "_write", broken)
            raise KeyError("the block's own")
    assert "could not put" in capsys.readouterr().err
    monkeypatch.setattr(haltpoll, "_write", real)
    with haltpoll.guest_halt_poll(100_000):
        pass
    assert haltpoll.read() == 0


def _working_in(dirs: set[str]) -> list[int]:
    """Processes whose working directory is in one of ``dirs`` (or was: deleted)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if any(cwd == d or cwd.startswith(d + os.sep) for d in dirs):
                pids.append(int(entry))
    return pids


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_mutation_run_interrupted_leaves_no_copies(sig):
    """benchmarks/mutation.py works in copies of the tree under /tmp; interrupted (Ctrl-C,
    or a SIGTERM) while its baseline pytest runs, it must stop that pytest and remove the
    copies promptly (killed runs had left five behind; an interrupted one waited for its
    baseline, minutes on a busy machine, before it looked)."""
    import glob
    import signal
    import time

    before = set(glob.glob("/tmp/devpool-mutation-*"))
    # pool.py's baseline runs eight test files: minutes, far past the wait below
    p = subprocess.Popen([sys.executable, str(BENCH / "mutation.py"), "--module", "devpool/pool/pool.py",
                          "--sample", "1", "--jobs", "1"], cwd=BENCH,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    made: set[str] = set()
    try:
        # generous waits up to the interrupt (listing the mutants takes seconds, more on
        # a busy machine); the interrupt comes once the baseline pytest runs in a copy
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and p.poll() is None:
            made = set(glob.glob("/tmp/devpool-mutation-*")) - before
            if made and _working_in(made):
                break
            time.sleep(0.1)
        assert made and _working_in(made), "the run started no baseline in a copy of the tree"
        p.send_signal(getattr(signal, sig))
        p.wait(60)                                  # its own cleanup: seconds, not a baseline's minutes
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not any(os.path.exists(d) for d in made), "an interrupted run left its copies behind"
    assert not _working_in(made), "an interrupted run left its pytest running"


def test_bench_chaos_scale_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_chaos_scale.py", "--sizes", "60,240", "--calls", "12", "--passes", "2")
    assert [row["live_objects"] for row in r["rows"]] == [60, 240]
    assert all(row["us_per_call_median"] > 0 and row["migrated_objects"] > 0 for row in r["rows"])


def test_bench_pool_single_smoke(tmp_path):
    """Against this very tree as the base: both sides run, and the ratio is reported."""
    tree = str(BENCH.parent)
    r = run_bench(tmp_path, "bench_pool_single.py", "--base", tree, "--pairs", "1", "--n", "50", "--passes", "1")
    assert r["this_four_p50_us"]["median"] > 0 and r["base_two_p50_us"]["median"] > 0
    assert r["ratio_four_p50_us"]["median"] > 0


def test_bench_pool_single_interleaved_smoke(tmp_path):
    """Both trees in one process (here this tree twice, as two module copies): a p50 per
    tree per pass, and their ratio, near 1 for the same code."""
    tree = str(BENCH.parent)
    r = run_bench(tmp_path, "bench_pool_single.py", "--base", tree, "--interleaved", "--n", "200", "--passes", "2")
    assert len(r["passes_p50_us"]["four_p50_us"]) == 2
    assert r["this_four_p50_us"]["median"] > 0 and r["base_two_p50_us"]["median"] > 0
    assert 0.2 < r["ratio_four_p50_us"]["median"] < 5


def test_bench_growth_parts_smoke(tmp_path):
    """Every structure at both sizes, dense and sparse: a p50 per pass, and the growth."""
    r = run_bench(tmp_path, "bench_growth_parts.py", "--small", "1000", "--big", "5000", "--n", "200", "--passes", "2")
    assert [row["subject"] for row in r["rows"]] == ["entries dense", "dict dense", "entries sparse", "dict sparse",
                                                    "pool handle"]
    assert all(len(v) == 2 and min(v) > 0 for v in r["p50_ns"].values())
    assert all(row["ratio"] > 0 for row in r["rows"])


def test_bench_pool_bytes_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_pool_bytes.py", "--sizes", "100,1000")
    assert [row["live_objects"] for row in r["rows"]] == [100, 1000]
    assert all(row["handle_table_bytes"] >= 21 * row["slots"] for row in r["rows"])


def test_bench_backing_smoke(tmp_path):
    """The slot check's cost: checked and unchecked file I/O, per batch size."""
    r = run_bench(tmp_path, "bench_backing.py", "--passes", "3", "--batches", "1,4")
    assert [row["batch"] for row in r["rows"]] == [1, 4]
    for row in r["rows"]:
        assert row["per_page_us"]["words"] > 0 and row["write_checked_over_before"]["median"] > 0
        assert row["read_checked_over_before"]["median"] > 0


def test_bench_capture_smoke(tmp_path):
    """Both ways of finding a sparse mapping's pages run and find every touched page."""
    r = run_bench(tmp_path, "bench_capture.py", "--gib", "1", "--passes", "1")
    assert set(r["seconds"]) == {"pagemap", "scan"} and r["pagemap_over_scan"]["median"] > 0


def test_bench_growth_smoke(tmp_path):
    """The growth benchmark runs end to end at tiny sizes: both layouts, every verb timed
    against the smallest size, the bare dict loop at every size beside them, memory
    measured in its own processes, replay at two sizes."""
    r = run_bench(tmp_path, "bench_growth.py", "--pages", pages_file(tmp_path, 40, 3), "--sizes", "300,1200",
                  "--passes", "2", "--probe", "20", "--batch", "64", "--batch-pages", "128", "--replay-pages", "300",
                  "--sweep-to", "6400", "--plot", str(tmp_path / "g.png"))
    assert [(x["pages"], x["layout"]) for x in r["subjects"]] == [(300, "dense"), (300, "sparse"),
                                                                 (1200, "dense"), (1200, "sparse")]
    for x in r["subjects"]:
        assert all(v > 0 for v in x["p50_us"].values()) and x["batch_pages_per_s"]["load_batch"] > 0
        assert x["p50_vs_smallest"]["load"]["median"] > 0
    assert [(x["pages"], x["layout"]) for x in r["bare_subjects"]] == [(300, "dense"), (300, "sparse"),
                                                                      (1200, "dense"), (1200, "sparse")]
    for x in r["bare_subjects"]:
        assert all(v > 0 for v in x["p50_us"].values())
        assert all(q["median"] > 0 for q in x["p50_vs_smallest"].values())
    assert {(m["pages"], m["layout"]) for m in r["memory"]} == {(300, "dense"), (300, "sparse"),
                                                               (1200, "dense"), (1200, "sparse")}
    assert all(0 < m["stored_pages"] <= m["pages"] and m["structures_per_page"]["entry_index"] > 0 for m in r["memory"])
    # and churned to a steady state (a cleaning step at least), what the pool keeps then
    assert all(m["steady_churned_pages"] > 0 and m["steady_tracemalloc_per_page"] > 0 for m in r["memory"])
    assert all(m["steady_structures_per_page"]["move_staging"] == 0 for m in r["memory"])
    assert [x["pages"] for x in r["replay"]] == [300] and all("failed" not in x for x in r["replay"])
    sw = r["table_sweep"]
    assert sw["top"] == 6400 and set(sw) == {"top", "batch", "from_160", "from_800"}
    assert all(0 < v["touched_mean"] <= v["touched_max"] <= v["allocated_max"] for k, v in sw.items() if k[:5] == "from_")
    assert (tmp_path / "g.png").stat().st_size > 0


def _can_swap() -> bool:
    from tests.swapdev.conftest import can_swap
    return can_swap()[0]


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                    reason="the swap device benchmark needs root, FUSE, loop and a memory cgroup")
def test_bench_swapdev_smoke(tmp_path):
    """The machine-swap benchmark (devpool against a plain swap file, and the IOPS part
    against zram) runs end to end, loses no page and puts every setting back."""
    assert _can_swap()
    before = {p: open(p).read() for p in ("/proc/sys/vm/page-cluster", "/sys/module/zswap/parameters/enabled",
                                         "/sys/block/zram0/disksize") if os.path.exists(p)}
    r = run_bench(tmp_path, "bench_swapdev.py", "--pages", pages_file(tmp_path, 256, 5), "--limit-mb", "32",
                  "--region-mb", "64", "--touches", "100", "--passes", "1", "--subjects", "devpool-lz4,swapfile",
                  "--iops", "--iops-mb", "4", "--iops-seconds", "0.2")
    for s in ("devpool-lz4", "swapfile"):
        row = r["summary"][s]
        assert row["passes"] == 1 and row["pages_lost"] == 0 and row["failed_runs"] == 0, row
        assert row["fill_mb_s"][0] > 0 and row["zipf_faults"][0] > 0
    assert r["summary"]["devpool-lz4"]["compression_ratio"][0] > 1
    assert r["targets"]["fill devpool-lz4 / swapfile (>= 1)"][0] > 0
    # what decides the fill: the machine's CPUs, the workload's own, the server's per page
    for s in ("devpool-lz4", "swapfile"):
        assert 0 < r["summary"][s]["fill_machine_busy"][0] <= 1
        assert r["summary"][s]["fill_cpu_us_per_page"][0] > 0
    assert r["summary"]["devpool-lz4"]["server_cpu_us_per_page"][0] > 0
    assert r["summary"]["swapfile"]["server_cpu_us_per_page"][0] is None
    assert r["iops"]["devpool-lz4"][0]["read_qd16"] > 0
    after = {p: open(p).read() for p in before}
    assert after == before
    assert open("/proc/swaps").read().count("\n") == 1          # the header only: no swap left


def test_bench_swapdev_iops_without_fio(tmp_path, monkeypatch):
    """The IOPS fallback when fio is not installed: threads doing O_DIRECT I/O."""
    sys.path.insert(0, str(BENCH))
    try:
        import bench_swapdev
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(bench_swapdev.shutil, "which", lambda name: None)
    target = tmp_path / "dev"
    target.write_bytes(bytes(1 << 20))
    for rw in ("read", "write"):
        assert bench_swapdev.iops(str(target), rw, 2, 0.1, 1 << 20) > 0


def test_bench_per_page_decode_smoke(tmp_path):
    old = tmp_path / "old_per_page.py"              # the loop against itself: ratios near 1
    old.write_text((BENCH.parent / "devpool" / "codecs" / "per_page.py").read_text())
    r = run_bench(tmp_path, "bench_per_page_decode.py", "--old", str(old), "--passes", "2",
                  "--batches", "1", "--pages", pages_file(tmp_path, 1100, 9))
    assert len(r["ratio_new_old"]) == 2 and all(x > 0 for x in r["pages_per_s"]["old"])


def test_bench_growth_ab_smoke(tmp_path):
    """The alternating comparison runs end to end at a tiny size, this tree against
    itself: memory rows from both trees' children in turn, the entry tables' single
    verbs side by side in one process, zswap's passes in fresh processes, ratios."""
    root = str(BENCH.parent)
    r = run_bench(tmp_path, "bench_growth_ab.py", "--base", root, "--pages", pages_file(tmp_path, 40, 4),
                  "--size", "3000", "--rounds", "2", "--passes", "1", "--entries-passes", "2", "--batch-pages", "128")
    turns = ["base", "this", "this", "base"]                       # the trees alternate round by round
    assert [(m["tree"], m["layout"]) for m in r["memory"]] == [(t, lay) for t in turns for lay in ("dense", "sparse")]
    assert all(m["pages"] == 3000 and m["structures_per_page"]["entry_index"] > 0 for m in r["memory"])
    for layout in ("sparse", "dense"):
        t = r["table_verbs"][layout]
        assert t["index_bytes_per_entry"]["base"] == t["index_bytes_per_entry"]["this"] > 0   # the same code
        assert all(t[v]["base_ns"] > 0 and t[v]["ratio"]["median"] > 0 for v in ("find_hit", "find_miss", "remove",
                                                                                  "put_new"))
        q = r["zswap_this_vs_base"]["dense" if layout == "dense" else "sparse"]
        assert all(q[v]["low"] <= q[v]["median"] <= q[v]["high"] for v in q)
    assert [(x["tree"], x["round"]) for x in r["zswap_runs"]] == [("base", 0), ("this", 0), ("this", 1), ("base", 1)]


def test_bench_growth_paired_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_growth_paired.py", "--pages", pages_file(tmp_path, 300, 7), "--small", "60",
                  "--big", "400", "--passes", "2", "--n", "40", "--huge-pages", "--no-hints", "--layout", "sparse")
    assert r["single_page_compiled"] is True and r["huge_pages"] is True and r["no_hints"] is True
    assert r["layout"] == "sparse"
    for name in ("bare loop", "devpool", "devpool no hint", "devpool huge"):
        for verb in ("load", "store", "invalidate"):
            v = r["subjects"][name][verb]
            assert v["small_p50_us"] > 0 and v["big_p50_us"] > 0 and v["big_vs_small"]["median"] > 0


def test_bench_growth_paired_base_smoke(tmp_path):
    """Another tree's devpool (here this tree again, as a second copy of its modules)
    timed beside this one's in one process: both subjects, and the growth of one over
    the other's, pass by pass."""
    tree = str(BENCH.parent)
    r = run_bench(tmp_path, "bench_growth_paired.py", "--pages", pages_file(tmp_path, 300, 7), "--small", "60",
                  "--big", "400", "--passes", "2", "--n", "40", "--base", tree)
    assert r["base_devpool"].startswith(tree) and r["base"] == tree
    for verb in ("load", "store", "invalidate"):
        assert r["subjects"]["devpool base"][verb]["big_p50_us"] > 0
        q = r["this_vs_base"][verb]["growth_ratio"]
        assert 0 < q["low"] <= q["median"] <= q["high"]


def test_bench_growth_paired_batch_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_growth_paired.py", "--pages", pages_file(tmp_path, 300, 7), "--small", "60",
                  "--big", "400", "--passes", "2", "--n", "40", "--batch", "8")
    assert r["batch"] == 8 and set(r["subjects"]) == {"devpool"}
    for verb in ("load", "store"):
        v = r["subjects"]["devpool"][verb]
        assert v["small_p50_us"] > 0 and v["big_p50_us"] > 0 and v["big_vs_small"]["median"] > 0


def test_bench_growth_paired_steady_batch_smoke(tmp_path):
    """--steady churns each store past its first cleaning step before the batches are
    timed, and batch mode reports page faults, the bytes cleaning moved a page and the
    dead bytes each pool held a live byte."""
    r = run_bench(tmp_path, "bench_growth_paired.py", "--pages", pages_file(tmp_path, 300, 7), "--small", "5000",
                  "--big", "20000", "--passes", "2", "--n", "200", "--batch", "50", "--steady")
    assert r["steady"] is not None and set(r["steady"]["devpool"]) == {"5000", "20000"}
    assert all(x["clean_steps"] >= 1 and x["churned_pages"] > 0 for x in r["steady"]["devpool"].values())
    d = r["subjects"]["devpool"]
    assert d["faults_per_page"]["small"] >= 0 and d["faults_per_page"]["big"] >= 0
    assert d["cleaning_bytes_moved_per_page"]["small"] >= 0 and d["cleaning_bytes_moved_per_page"]["big"] >= 0
    assert all(0 <= d["dead_bytes_per_live_byte"][s] < 1 for s in ("small", "big"))
    mean = d["cycle mean"]                 # (every step in it: at least the p50's batches' time, most runs)
    assert mean["small_p50_us"] > 0 and mean["big_p50_us"] > 0 and mean["big_vs_small"]["median"] > 0
    assert d["cycle"]["big_vs_small"]["median"] > 0


def test_bench_liblz4_smoke(tmp_path):
    r = run_bench(tmp_path, "bench_liblz4.py", "--pages", pages_file(tmp_path, 200, 8), "--batch", "32",
                  "--passes", "2")
    for verb in ("store_batch", "load_batch"):
        assert r["ratio"][verb]["median"] > 0 and len(r["rates"]["binding"][verb]) == 2
