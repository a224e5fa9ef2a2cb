"""The swap device against a hostile environment: a state file that names another
device's server (a recycled pid, or a forged file), a run directory another user can
write or that holds planted links, and options that would destroy a file's data. Each
test leaves nothing behind (``swap_env`` checks)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import os
import signal
import time

import pytest

from devpool import BadInputError
from devpool.swapdev import device, swapon
from tests.swapdev.conftest import can_swap

_OK, _WHY = can_swap()
needs_swap = pytest.mark.skipif(not _OK, reason=f"the swap device cannot run here: {_WHY}")


def _crash(dev) -> None:
    pid = dev.pid              # once: asked again, a server dying in between is None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while device._server_alive(pid) and time.monotonic() < deadline:
        device._reap(pid)
        time.sleep(0.02)


@needs_swap
def test_undoing_a_crashed_device_never_kills_the_server_of_another_device(swap_env):
    """swap0's server dies; its state file's pid now names swap1's server (a recycled pid,
    or a forged file): swapoff of swap0 must leave swap1's server, and its pages, alone."""
    a = swapon("1M", backend="host", activate=False)
    b = swapon("1M", backend="host", activate=False)
    other = b.pid
    _crash(a)
    a.save(pid=other)
    assert device.SwapDevice(a.folder).pid != other
    steps = device.swapoff(a.name)
    assert not any(str(other) in s for s in steps), steps
    assert device._server_alive(other, b.control)
    assert b.stats()["pid"] == other
    rows = {r["name"]: r for r in device.status()}
    assert list(rows) == [b.name] and "error" not in rows[b.name]
    b.swapoff()


@needs_swap
def test_a_planted_link_in_the_run_directory_is_no_device(swap_env, tmp_path):
    """Undoing follows what the run directory's folders say: a link planted there (to a
    folder of someone else's files) must not have them deleted or its pid stopped."""
    dev = swapon("1M", backend="host", activate=False)
    victim = tmp_path / "victim"
    (victim / "mnt").mkdir(parents=True)
    for leaf in ("state.json", "server.log", "ctl.sock"):
        (victim / leaf).write_text("{}")
    os.symlink(victim, os.path.join(swap_env, "swap7"))
    try:
        assert [d.name for d in device.devices()] == [dev.name]
        steps = device.swapoff_all()
        assert not any("swap7" in s for s in steps), steps
        assert sorted(os.listdir(victim)) == ["ctl.sock", "mnt", "server.log", "state.json"]
    finally:
        os.unlink(os.path.join(swap_env, "swap7"))
        device.swapoff_all()


@needs_swap
@pytest.mark.parametrize("mode", [0o777, 0o720])
def test_a_run_directory_others_may_write_is_refused_by_swapoff_and_status(swap_env, mode):
    """swapon refuses such a directory; swapoff and status trusted it: anyone could have
    put a folder there naming what root then stops and deletes."""
    dev = swapon("1M", backend="host", activate=False)
    os.chmod(swap_env, mode)
    try:
        for call in (device.status, device.swapoff_all, lambda: device.swapoff(dev.name)):
            with pytest.raises(device.SwapDeviceError, match="others may write it"):
                call()
        assert device._server_alive(dev.pid, dev.control)
    finally:
        os.chmod(swap_env, 0o700)
        dev.swapoff()


@needs_swap
def test_a_backing_file_that_holds_data_is_refused_and_kept(swap_env, tmp_path):
    """``--backing`` naming a file with data (a mistyped path): the device would empty it
    when it starts; it is refused before anything is set up, the data untouched."""
    precious = tmp_path / "precious.db"
    precious.write_bytes(b"x" * 10000)
    os.chmod(precious, 0o600)
    with pytest.raises(BadInputError, match="holds 10000 bytes"):
        swapon("1M", backend="host", activate=False, backing=str(precious))
    assert precious.read_bytes() == b"x" * 10000
    assert device.devices() == []
    # an empty one is taken (and left empty: it was the caller's)
    empty = tmp_path / "empty.swap"
    empty.touch(mode=0o600)
    dev = swapon("1M", backend="host", activate=False, backing=str(empty))
    dev.swapoff()
    assert empty.exists() and empty.stat().st_size == 0


@needs_swap
def test_a_loop_name_reused_by_another_device_reaches_that_device(swap_env):
    """swap0 crashed and its loop device was detached by hand; swap1 got the same
    /dev/loopN. Its state file still names that loop: `swapoff /dev/loopN` must undo
    swap1 (it undid the dead swap0 and left swap1 swapping), and status must not show
    swap0 on it."""
    a = swapon("1M", backend="host", activate=False)
    _crash(a)
    device._run(["losetup", "-d", a.device])
    deadline = time.monotonic() + 20                # a detach can be deferred a moment
    while device.loops_over(a.file) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert device.loops_over(a.file) == []
    b = swapon("1M", backend="host", activate=False)
    a.save(loop=b.device)                      # what the state says if loop reused the name
    rows = {r["name"]: r for r in device.status()}
    assert rows[b.name]["device"] == b.device and rows[a.name]["device"] is None
    device.swapoff(b.device)
    assert not device._server_alive(b.pid) and not os.path.exists(b.folder)
    assert [d.name for d in device.devices()] == [a.name]
    device.swapoff_all()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_status_and_swapoff_as_a_user_say_they_need_root(tmp_path):
    """A user's `devpool status` on root's run directory (0700, root's): it said the
    directory "belongs to uid 0 or others may write it" (root's is the one owner that is
    right); now it says the devices are root's."""
    top = tempfile.mkdtemp(prefix="devpool-attack-")
    try:
        os.chmod(top, 0o755)
        run = os.path.join(top, "run")
        os.mkdir(run, 0o700)
        env = dict(os.environ, DEVPOOL_RUN_DIR=run)
        for cmd in (["status"], ["swapoff", "--all"]):
            done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                   sys.executable, "-m", "devpool.cli.main", *cmd],
                                  capture_output=True, text=True, env=env, timeout=120, cwd=top)
            assert done.returncode != 0 and "run it with sudo" in done.stderr, (cmd, done.stderr)
            assert "belongs to uid" not in done.stderr
    finally:
        shutil.rmtree(top)


@needs_swap
def test_swapoff_racing_a_swapon_is_refused_and_the_device_comes_up_whole(swap_env, monkeypatch):
    """`swapoff --all` while a swapon is setting its device up: it removed the device's
    folder under the setup (which then failed with a raw FileNotFoundError, or left a
    server whose folder was gone); now it is refused (EBUSY) and the setup completes."""
    gate, started = threading.Event(), threading.Event()
    real = device._start_server

    def slow_start(dev, cfg, timeout):
        started.set()
        assert gate.wait(60)
        real(dev, cfg, timeout)
    monkeypatch.setattr(device, "_start_server", slow_start)
    got = {}
    thread = threading.Thread(target=lambda: got.update(dev=swapon("1M", backend="host", activate=False)))
    thread.start()
    try:
        assert started.wait(60)
        with pytest.raises(device.SwapDeviceError, match="another devpool command") as e:
            device.swapoff_all()
        assert e.value.errno == errno.EBUSY
        with pytest.raises(device.SwapDeviceError, match="another devpool command"):
            device.swapoff("swap0")
    finally:
        gate.set()
        thread.join(120)
    dev = got["dev"]
    assert dev.stats()["pid"] == dev.pid and dev.device
    assert device.swapoff_all()


def test_a_device_folder_removed_while_listed_is_no_device(tmp_path, monkeypatch):
    """`devpool status` while a swapoff removes a device's folder: the folder is listed,
    then gone before it is looked at. It is no device (as before the run directory's
    folders were checked), not a raw FileNotFoundError out of status or swapoff --all."""
    import glob as globmod

    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    for name in ("swap0", "swap1"):
        (run / name).mkdir(mode=0o700)
    monkeypatch.setenv("DEVPOOL_RUN_DIR", str(run))
    real = globmod.glob

    def listed_then_removed(pattern, *a, **kw):
        found = real(pattern, *a, **kw)
        if pattern.startswith(str(run)) and (run / "swap1").exists():
            (run / "swap1").rmdir()                 # the other command's swapoff, just now
        return found
    monkeypatch.setattr(device.glob, "glob", listed_then_removed)
    assert [d.name for d in device.devices()] == ["swap0"]
