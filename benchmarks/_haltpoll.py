"""The guest's idle polling, set for one measurement and left as found.

On a virtual machine whose idle vCPU halts at once (the ``haltpoll`` cpuidle driver
with ``guest_halt_poll_ns`` 0, as on this project's dev machine), a thread that sleeps
in a page fault gives up its vCPU to the hypervisor, and waking it costs several
microseconds more than waking a vCPU that is still running. A userfaultfd handler that
answers within ~2 us of the fault (the zero-page baseline) beats the halt; one that does
real work (a load) does not. ``bench_region.py --halt-poll-us`` measures both ways.

    with guest_halt_poll(200_000) as hp:    # hp.why: None, or why it was not set
        ...                                 # restored afterwards, also on error

Only as root, only where the parameter exists, under a lock (two runs never change it at
once). The value found is written into the lock file while the block runs and cleared
after the restore: a run killed inside the block (SIGKILL, OOM) leaves it there, and the
next run puts it back before anything else.
"""

from __future__ import annotations

import contextlib
import os
import sys

from _common import machine_lock

PARAM = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"
LOCK = "/tmp/devpool-haltpoll.lock"
#: the kernel's parameter is an unsigned int
MAX_NS = (1 << 32) - 1


class Setting:
    """What the context manager did: ``ns`` the value in force, ``why`` None when it is
    the one asked for, else the reason it is not."""

    def __init__(self, ns: int | None, why: str | None):
        self.ns, self.why = ns, why


def read() -> int | None:
    """The current guest_halt_poll_ns, or None where the parameter does not exist or
    does not hold a number."""
    return _read()[0]


def _read() -> tuple[int | None, str | None]:
    try:
        with open(PARAM) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None, f"{PARAM} does not exist (not a haltpoll guest)"
    except OSError as exc:
        return None, f"{PARAM} cannot be read ({exc.strerror})"
    try:
        return int(text), None
    except ValueError:
        return None, f"{PARAM} holds {text[:40]!r}, not a number"


def _write(ns: int) -> None:
    with open(PARAM, "w") as f:
        f.write(str(int(ns)))


def _record(fd: int, value: int | None) -> None:
    """The value to put back (None: nothing to), kept in the lock file."""
    os.ftruncate(fd, 0)
    if value is not None:
        os.pwrite(fd, str(value).encode(), 0)
    os.fsync(fd)


def _recorded(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _check_ns(ns) -> int:
    if isinstance(ns, bool) or not isinstance(ns, int) or not 0 <= ns <= MAX_NS:
        raise ValueError(f"guest_halt_poll_ns must be an integer in [0, {MAX_NS}], got {ns!r}")
    return ns


@contextlib.contextmanager
def guest_halt_poll(ns: int | None):
    """Run the block with guest_halt_poll_ns = ``ns`` (None: the machine as found)."""
    if ns is None:
        yield Setting(*_read())
        return
    ns = _check_ns(ns)
    with machine_lock(LOCK) as held:
        if isinstance(held, str):
            yield Setting(read(), held)
            return
        left = _recorded(held)
        if left is not None and os.geteuid() == 0:
            # a run killed inside its block changed the machine: put it back first
            try:
                _write(left)
                _record(held, None)
                print(f"_haltpoll: restored {PARAM} to {left}, left changed by a run that died", file=sys.stderr)
            except OSError as exc:
                yield Setting(read(), f"{PARAM} was left changed by a dead run and cannot be put back to "
                                      f"{left} ({exc.strerror})")
                return
        found, why = _read()
        if found is None:
            yield Setting(None, why)
            return
        if found == ns:
            yield Setting(ns, None)
            return
        if os.geteuid() != 0:
            yield Setting(found, "not root")
            return
        _record(held, found)
        try:
            _write(ns)
        except OSError as exc:
            _record(held, None)
            yield Setting(found, f"{PARAM} cannot be set to {ns} ({exc.strerror})")
            return
        block_ok = False
        try:
            yield Setting(ns, None)
            block_ok = True
        finally:
            try:
                _write(found)
                _record(held, None)
            except OSError as exc:
                msg = (f"could not put {PARAM} back to {found} ({exc.strerror}); the next run will try, "
                       f"or by hand: echo {found} > {PARAM}")
                if block_ok:
                    raise RuntimeError(msg) from exc
                print(f"_haltpoll: {msg}", file=sys.stderr)     # the block's own error goes on
