"""The swap device through the kernel: swapon, a workload in a memory cgroup at twice
its limit whose every page is verified, swapoff; discards; a killed or hung server; bad
options; two devices. Each test leaves nothing behind (the ``swap_env`` fixture checks
swap, loop devices, mounts, cgroups and processes after it)."""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import time

import numpy as np
import pytest

import devpool
from devpool.cli.main import main as cli
from devpool.swapdev import SwapDeviceError, device, swap_device, swapoff_all, swapon, workload
from tests.pages import random_page, text_page
from tests.swapdev.conftest import can_swap

_OK, _WHY = can_swap()
needs_swap = pytest.mark.skipif(not _OK, reason=f"the swap device cannot run here: {_WHY}")

#: the workload: 64 MiB of pages in a 32 MiB cgroup (numpy's own 14 MiB included)
LIMIT = 32 << 20
PAGES = 16384
PAGE = 4096


def run_workload(**cfg):
    return workload.run({"pages": PAGES, "touches": 200, "pattern": "uniform", **cfg}, LIMIT, timeout=240)


@needs_swap
@pytest.mark.parametrize("threads, gather", [(1, True), (2, False), (1, False)],
                         ids=["one-reader", "two-readers", "one-reader-writes-alone"])
def test_a_cgroup_workload_swaps_through_the_pool_and_every_page_comes_back(swap_env, threads, gather):
    pool_backend = "host"
    with swap_device("128M", backend=pool_backend, max_pool_percent=1, threads=threads, _gather=gather) as dev:
        assert dev.device in device.active_swaps()
        assert dev.stats()["threads"] == threads and dev.stats()["gather"] == gather
        result = run_workload()
        assert result["returncode"] == 0, result
        assert result["bad_after_fill"] == 0 and result["bad_pages"] == 0
        assert result["majflt"] > 0 and result["faults"] > 0, "nothing was swapped in"
        st = dev.stats()
        assert st["written_pages"] >= PAGES // 4 and st["read_pages"] > 0, st
        assert st["read_errors"] == 0 and st["write_errors"] == 0
        z = st["zswap"]
        assert z["backend"] == pool_backend and z["compressor"] == "lz4"
        # the pool compresses: the workload's pages are mostly text (a tenth random), but
        # the kernel also swaps the process's own heap (interpreter, numpy), which packs
        # worse, and how much of it goes varies with the machine's load (1.41 seen in CI,
        # more on a quiet day); an uncompressing device would sit at 1.0
        assert z["loads_from_pool"] > 0 and z["compression_ratio"] > 1.25, z
        # discards reach the pool: the workload's slots were freed and punched
        assert st["discards"] > 0 and st["discarded_pages"] > 0
        assert st["slots_written"] < st["written_pages"]
        rows = device.status()
        assert [r["device"] for r in rows] == [dev.device] and rows[0]["reads"] > 0


@needs_swap
@pytest.mark.parametrize("pool_backend", ["host", "chaos", "cuda"])
def test_the_block_device_over_the_pool_loses_no_page_on_every_backend(swap_env, pool_backend):
    """The loop device (not activated as swap) written and read by O_DIRECT at random
    slots, overwritten, discarded: every page as written, discarded ones zero, on every
    backend (cuda under numba's simulator here: a few pages)."""
    n = 24 if pool_backend == "cuda" else 96
    rng = np.random.default_rng(7)
    pages = np.stack([text_page(rng) if i % 4 else random_page(rng) for i in range(n)])
    slots = rng.choice(4096, size=n, replace=False)
    buf = mmap.mmap(-1, PAGE)
    with swap_device("16M", backend=pool_backend, activate=False) as dev:
        assert dev.device not in device.active_swaps()
        fd = os.open(dev.device, os.O_RDWR | os.O_DIRECT)
        try:
            for slot, page in zip(slots, pages):
                buf[:] = page.tobytes()
                assert os.pwritev(fd, [buf], int(slot) * PAGE) == PAGE
            pages[0] = text_page(rng)                          # an overwrite replaces the page
            buf[:] = pages[0].tobytes()
            os.pwritev(fd, [buf], int(slots[0]) * PAGE)
            for slot, page in zip(slots, pages):
                assert os.preadv(fd, [buf], int(slot) * PAGE) == PAGE
                assert buf[:] == page.tobytes(), f"slot {slot}"
            st = dev.stats()
            assert st["zswap"]["backend"] == pool_backend and st["zswap"]["stored_pages"] == n
            subprocess.run(["blkdiscard", "-o", str(int(slots[1]) * PAGE), "-l", str(PAGE), dev.device],
                           check=True, capture_output=True)
            assert os.preadv(fd, [buf], int(slots[1]) * PAGE) == PAGE and buf[:] == bytes(PAGE)
            st = dev.stats()
            assert st["discarded_pages"] == 1 and st["zswap"]["stored_pages"] == n - 1
            assert st["read_errors"] == st["write_errors"] == 0
        finally:
            os.close(fd)
            buf.close()


@needs_swap
@pytest.mark.parametrize("threads", [1, 2], ids=["one-reader", "two-readers"])
def test_a_killed_server_gives_sigbus_not_a_hang_and_swapoff_cleans_up(swap_env, threads):
    dev = swapon("128M", backend="host", max_pool_percent=1, threads=threads)
    with workload.memory_cgroup(LIMIT) as procs:
        child = workload.start({"pages": PAGES, "pause": True}, procs)
        try:
            filled = json.loads(child.stdout.readline())
            assert filled["filled"]
            assert dev.stats()["written_pages"] > 0          # pages live only in the server now
            os.kill(dev.pid, signal.SIGKILL)
            child.stdin.write("go\n")
            child.stdin.flush()
            rc = child.wait(timeout=60)                       # no hang
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert rc == -signal.SIGBUS, rc
    assert device.status()[0]["error"].startswith("server dead")
    steps = swapoff_all()
    assert any(s.startswith("swapoff") for s in steps), steps


@needs_swap
def test_a_hung_server_with_pages_out_is_cut_off_and_cleaned_up(swap_env):
    """A server that stops answering while it holds swapped-out pages: swapoff would
    wait on it forever; ``swapoff`` cuts its connection off first, the pages' owner gets
    SIGBUS, and nothing is left."""
    dev = swapon("128M", backend="host", max_pool_percent=1)
    with workload.memory_cgroup(LIMIT) as procs:
        child = workload.start({"pages": PAGES, "pause": True}, procs)
        try:
            assert json.loads(child.stdout.readline())["filled"]
            os.kill(dev.pid, signal.SIGSTOP)
            child.stdin.write("go\n")                      # it blocks on its first swap-in
            child.stdin.flush()
            time.sleep(0.5)
            t = time.monotonic()
            steps = dev.swapoff()
            assert time.monotonic() - t < 60
            rc = child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert any("aborted" in s or "killed" in s for s in steps), steps
    assert rc == -signal.SIGBUS, rc


@needs_swap
def test_a_live_server_whose_state_file_is_lost_is_found_and_stopped(swap_env):
    dev = swapon("64M", backend="host")
    pid = dev.pid
    os.unlink(dev.state_path)
    lost = device.devices()[0]
    assert lost.state == {} and lost.pid == pid
    steps = lost.swapoff()
    assert f"server {pid} stopped" in steps and not device._server_alive(pid)


@needs_swap
def test_what_a_crashed_run_left_is_cleaned_by_swapoff_all(swap_env, capsys):
    dev = swapon("64M", backend="host")
    os.kill(dev.pid, signal.SIGKILL)
    with open(dev.state_path) as f:
        state = json.load(f)
    os.unlink(dev.state_path)                                 # even the state file is gone
    assert device.loops_over(dev.file) == [state["loop"]]
    assert cli(["swapoff", "--all"]) == 0
    assert state["loop"] not in device.active_swaps()


@needs_swap
def test_two_devices_at_once_the_higher_priority_one_takes_the_pages(swap_env):
    # the one taking the pages serves them with two reader threads
    with swap_device("64M", backend="host", priority=10) as low, \
            swap_device("128M", backend="host", priority=20, max_pool_percent=1, threads=2) as high:
        assert low.device != high.device
        swaps = device.active_swaps()
        assert low.device in swaps and high.device in swaps
        result = run_workload()
        assert result["returncode"] == 0 and result["bad_pages"] == 0, result
        assert high.stats()["written_pages"] > 0
        assert low.stats()["written_pages"] <= 1               # the swap header mkswap wrote
        assert sorted(r["device"] for r in device.status()) == sorted([low.device, high.device])


@needs_swap
def test_a_failed_setup_undoes_every_step(swap_env, monkeypatch):
    real = device._run

    def failing(argv, timeout=120):
        if argv[0] == "mkswap":
            raise SwapDeviceError(5, "mkswap failed: planted")
        return real(argv, timeout)
    monkeypatch.setattr(device, "_run", failing)
    with pytest.raises(SwapDeviceError, match="planted"):
        swapon("64M", backend="host")
    assert device.devices() == []                              # and the fixture finds nothing left


@needs_swap
def test_the_cli_sets_up_reports_and_undoes(swap_env, capsys):
    assert cli(["swapon", "--size", "64M", "--backend", "host", "--priority", "7"]) == 0
    out = capsys.readouterr().out
    loop = out.split(":")[0]
    assert loop.startswith("/dev/loop") and f"devpool swapoff {loop}" in out and ", 64.0M, backend host," in out
    assert cli(["status"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["NAME", "BACKEND", "ALGORITHM", "DISKSIZE"]
    assert table[1].split()[:4] == [loop, "host", "lz4", "64.0M"]
    assert cli(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["device"] == loop
    assert cli(["swapoff", loop]) == 0
    assert loop not in device.active_swaps()


# --- bad input: a clear error, nothing set up (no root needed) ----------------------------------
@pytest.mark.parametrize("size", ["0", "4X", "-1G", "4097", "2T", "1.5G", "", "36K", True, 4097])
def test_bad_sizes_are_refused(size, tmp_path, monkeypatch):
    monkeypatch.setenv("DEVPOOL_RUN_DIR", str(tmp_path / "run"))
    with pytest.raises(devpool.BadInputError, match="size"):
        swapon(size)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value, match", [
    ("backend", "gpu", "backend"), ("compressor", "nope", "codec"), ("max_pool_percent", 0, "max_pool_percent"),
    ("max_pool_percent", 101, "max_pool_percent"), ("max_pool_percent", float("nan"), "max_pool_percent"),
    ("priority", -1, "priority"), ("priority", 40000, "priority"), ("backing", "", "backing"),
    ("backing", "a\0b", "backing"), ("spin_us", -1, "spin_us"), ("threads", 0, "threads"),
    ("threads", 17, "threads"), ("threads", 1.5, "threads"), ("threads", True, "threads"),
])
def test_bad_options_are_refused(option, value, match, tmp_path, monkeypatch):
    monkeypatch.setenv("DEVPOOL_RUN_DIR", str(tmp_path / "run"))
    with pytest.raises(ValueError, match=match) as e:      # BadInputError, UnknownCodecError
        swapon("64M", **{option: value})
    assert isinstance(e.value, devpool.DevpoolError)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("missing, says", [("root", "needs root"), ("/dev/fuse", "no FUSE"),
                                           ("/dev/loop-control", "no loop devices")])
def test_a_missing_prerequisite_is_one_clear_error(missing, says, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEVPOOL_RUN_DIR", str(tmp_path / "run"))
    if missing == "root":
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    else:
        exists = os.path.exists
        monkeypatch.setattr(os.path, "exists", lambda p: p != missing and exists(p))
        monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(SwapDeviceError, match=says):
        swapon("64M")
    assert cli(["swapon", "--size", "64M"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Errno" not in err[0]
    assert not (tmp_path / "run").exists()


def test_cli_usage_errors_are_one_line(capsys):
    for argv in (["swapon", "--size", "4X"], ["swapon", "--max-pool-percent", "0"],
                 ["swapon", "--backend", "gpu"], ["swapon", "--priority", "-5"]):
        with pytest.raises(SystemExit) as e:
            cli(argv)
        assert e.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert cli(["swapoff"]) == 1
    assert "--all" in capsys.readouterr().err


def test_swapoff_of_an_unknown_device_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEVPOOL_RUN_DIR", str(tmp_path / "run"))
    assert cli(["swapoff", "/dev/sda"]) == 1
    assert "not a devpool swap device" in capsys.readouterr().err


@pytest.mark.parametrize("planted", ["link", "group-writable", "too-long"])
def test_a_planted_or_unfit_run_directory_is_refused(planted, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        monkeypatch.setattr(device, "check_prerequisites", lambda: None)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    run = tmp_path / "run"
    if planted == "link":
        run.symlink_to(target)
    elif planted == "group-writable":
        run.mkdir()
        run.chmod(0o775)
    else:
        run = tmp_path / ("x" * 100)
    monkeypatch.setenv("DEVPOOL_RUN_DIR", str(run))
    with pytest.raises((SwapDeviceError, devpool.BadInputError), match="run directory"):
        swapon("64M")
    assert list(target.iterdir()) == []
    if planted == "group-writable":
        assert list(run.iterdir()) == []


@needs_swap
def test_a_backing_file_others_can_read_is_refused_and_nothing_is_set_up(swap_env, tmp_path):
    bad = tmp_path / "shared.swap"
    bad.write_bytes(b"")
    bad.chmod(0o644)
    with pytest.raises(SwapDeviceError, match="shared.swap"):
        swapon("64M", backend="host", backing=str(bad))
    assert device.devices() == []


def test_status_table_has_zramctl_columns_and_says_when_a_server_is_dead():
    z = {"stored_pages": 10, "backing_pages": 2, "stored_compressed_bytes": 9000, "pool_total_size": 262144,
         "same_filled_pages": 1, "written_back_pages": 2, "backend": "host", "compressor": "lz4"}
    rows = [{"name": "swap0", "device": "/dev/loop7", "size": 64 << 20, "disksize": 64 << 20, "zswap": z,
             "reads": 5, "writes": 3, "read_service_p50_us": 21.4},
            {"name": "swap1", "device": None, "disksize": 1 << 30,
             "error": "server dead or not answering: `devpool swapoff` cleans up"}]
    lines = device.format_status(rows).splitlines()
    assert lines[0].split() == list(device.COLUMNS)
    assert lines[1].split() == ["/dev/loop7", "host", "lz4", "64.0M", "48.0K", "8.8K", "256.0K", "10", "1", "2",
                                "5", "3", "21us"]
    assert lines[2].startswith("swap1") and "1.0G" in lines[2] and lines[2].endswith("cleans up")


@needs_swap
def test_a_stray_sigterm_does_not_drop_the_swapped_pages(swap_env):
    """The server ignores SIGTERM (its pages are other processes' memory); swapoff still
    stops it."""
    with swap_device("64M", backend="host", activate=False) as dev:
        fd = os.open(dev.device, os.O_RDWR | os.O_DIRECT)
        buf = mmap.mmap(-1, PAGE)
        try:
            buf[:] = b"\x5a" * PAGE
            os.pwritev(fd, [buf], 7 * PAGE)
            os.kill(dev.pid, signal.SIGTERM)
            time.sleep(0.3)
            buf[:] = bytes(PAGE)
            assert os.preadv(fd, [buf], 7 * PAGE) == PAGE and buf[:] == b"\x5a" * PAGE
            assert dev.stats()["zswap"]["stored_pages"] == 1
        finally:
            os.close(fd)
            buf.close()
