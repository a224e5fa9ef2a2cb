"""The guest's idle polling, set for one measurement and left as found.

On a virtual machine whose idle vCPU halts at once (the ``haltpoll`` cpuidle driver
with ``guest_halt_poll_ns`` 0, as on this project's dev machine), a thread that sleeps
in a page fault gives up its vCPU to the hypervisor, and waking it costs several
microseconds more than waking a vCPU that is still running. A userfaultfd handler that
answers within ~2 us of the fault (the zero-page baseline) beats the halt; one that does
real work (a load) does not. ``bench_region.py --halt-poll-us`` measures both ways.

    with guest_halt_poll(200_000) as hp:    # hp.why: None, or why it was not set
        ...                                 # restored afterwards, also on error

Only as root, only where the parameter exists; a lock keeps two benchmarks of this
project from changing it at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

PARAM = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"
LOCK = "/tmp/devpool-haltpoll.lock"


class Setting:
    """What the context manager did: ``ns`` the value in force, ``why`` None when it is
    the one asked for, else the reason it is not."""

    def __init__(self, ns: int | None, why: str | None):
        self.ns, self.why = ns, why


def read() -> int | None:
    """The current guest_halt_poll_ns, or None where the parameter does not exist."""
    try:
        with open(PARAM) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _write(ns: int) -> None:
    with open(PARAM, "w") as f:
        f.write(str(int(ns)))


@contextlib.contextmanager
def guest_halt_poll(ns: int | None):
    """Run the block with guest_halt_poll_ns = ``ns`` (None: the machine as found)."""
    found = read()
    if ns is None or found == ns:
        yield Setting(found, None if found is not None or ns is None else f"{PARAM} does not exist")
        return
    if found is None:
        yield Setting(None, f"{PARAM} does not exist (not a haltpoll guest)")
        return
    if os.geteuid() != 0:
        yield Setting(found, "not root")
        return
    with open(LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield Setting(found, "another benchmark holds the halt-poll lock")
            return
        try:
            _write(ns)
            yield Setting(ns, None)
        finally:
            _write(found)
