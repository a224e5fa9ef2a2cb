"""Fixtures for the swap device: each test runs in its own run directory, and leaves the
machine as it found it — no swap, loop device, mount, cgroup or server process of ours —
checked after the test (and cleaned up first, so one failure does not leak into the next)."""

from __future__ import annotations

import glob
import os

import pytest

# (devpool is imported inside the functions: this conftest loads before the root one
# sets NUMBA_ENABLE_CUDASIM, and numba reads it once, at its import)


def can_swap() -> tuple[bool, str]:
    from devpool.swapdev.workload import cgroup_version
    if os.geteuid() != 0:
        return False, "needs root"
    for path, what in (("/dev/fuse", "FUSE"), ("/dev/loop-control", "loop devices")):
        if not os.path.exists(path):
            return False, f"no {what} ({path})"
    if cgroup_version() is None:
        return False, "no memory cgroup hierarchy"
    return True, ""


def leftovers(run_dir: str) -> dict:
    """What of ours exists on the machine now (swap, loops, mounts, cgroups, servers)."""
    from devpool.swapdev import device, workload
    mine = [d.file for d in device.devices()]
    loops = sorted({loop for f in mine for loop in device.loops_over(f)})
    for bf in glob.glob("/sys/block/loop*/loop/backing_file"):
        with open(bf) as f:
            if f.read().startswith(run_dir):
                loops.append("/dev/" + bf.split("/")[3])
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if line.split()[4].startswith(run_dir)]
    swaps = [s for s in device.active_swaps() if s in loops]
    cg_root = workload.V1 if workload.cgroup_version() == 1 else workload.V2
    cgroups = sorted(os.path.basename(p) for p in glob.glob(os.path.join(cg_root, "devpool-swap-*")))
    servers = device.server_pids(run_dir)
    folders = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []
    return {"swaps": swaps, "loops": sorted(set(loops)), "mounts": mounts, "cgroups": cgroups,
            "servers": servers, "folders": folders}


EMPTY = {"swaps": [], "loops": [], "mounts": [], "cgroups": [], "servers": [], "folders": []}


@pytest.fixture
def swap_env(tmp_path, monkeypatch):
    """A private run directory (and backing-file directory) for this test; afterwards
    everything is undone and the test fails if anything of it was left behind."""
    from devpool.swapdev import device, workload
    run = str(tmp_path / "run")
    monkeypatch.setenv("DEVPOOL_RUN_DIR", run)
    monkeypatch.setenv("DEVPOOL_BACKING_DIR", str(tmp_path))
    before = leftovers(run)
    assert before == EMPTY, before
    yield run
    left = leftovers(run)
    try:
        device.swapoff_all()
    finally:
        for path in glob.glob(os.path.join(workload.V1 if workload.cgroup_version() == 1 else workload.V2,
                                           "devpool-swap-*")):
            workload.remove_cgroup(path)
    assert left == EMPTY, f"left behind: {left}"
    assert not glob.glob(str(tmp_path / "devpool-*.swap")), "a backing file was left behind"
