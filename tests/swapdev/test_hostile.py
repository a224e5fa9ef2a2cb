"""The swap device against a hostile environment: a state file that names another
device's server (a recycled pid, or a forged file), a run directory another user can
write or that holds planted links, and options that would destroy a file's data. Each
test leaves nothing behind (``swap_env`` checks)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from devpool.swapdev import device, swapon
from tests.swapdev.conftest import can_swap

_OK, _WHY = can_swap()
needs_swap = pytest.mark.skipif(not _OK, reason=f"the swap device cannot run here: {_WHY}")


def _crash(dev) -> None:
    os.kill(dev.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while device._server_alive(dev.pid) and time.monotonic() < deadline:
        device._reap(dev.pid)
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
