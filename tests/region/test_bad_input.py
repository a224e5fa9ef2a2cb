"""Bad input and missing permission: refused with a clear error, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import devpool
from tests.region.helpers import P, _gone_within, _children, needs_uffd

pytestmark = needs_uffd


@pytest.mark.parametrize("nbytes", [0, -P, P + 1, 100, 1.5 * P, True, "4096", 1 << 62, np.int64(P + 1)])
def test_bad_nbytes(nbytes):
    with pytest.raises(devpool.BadInputError):
        devpool.swap_region(nbytes, resident_bytes=P)


@pytest.mark.parametrize("resident", [0, P - 1, -1, None, 2.0 * P])
def test_budget_under_one_page(resident):
    with pytest.raises(devpool.BadInputError):
        devpool.swap_region(16 * P, resident_bytes=resident)


def test_bad_options():
    with pytest.raises(devpool.BadInputError):
        devpool.swap_region(16 * P, resident_bytes=P, policy="lru")
    with pytest.raises(devpool.BadInputError):
        devpool.swap_region(16 * P, resident_bytes=P, fault_around=3)
    with pytest.raises(devpool.BadInputError, match="pool_options"):
        devpool.swap_region(16 * P, resident_bytes=P, pool_options=[1])
    with pytest.raises(devpool.BadInputError, match="serve_delay_us"):
        devpool.swap_region(16 * P, resident_bytes=P, serve_delay_us=5)       # zswap: not a baseline
    with pytest.raises(devpool.BadInputError, match="serve_delay_us"):
        devpool.swap_region(16 * P, resident_bytes=P, serve="zero", serve_delay_us=-1)


@pytest.mark.parametrize("opts", [{1: 2}, {"capacity_bytes": 1 << 20}, {"x": lambda: 0}])
def test_bad_pool_options_are_bad_input(opts):
    """A key that is no option name, the region's own capacity, a value that cannot be
    handed to the handler process: BadInputError, and no process left (they were a
    DevpoolError from the handler, or a raw PicklingError)."""
    before = _children()
    with pytest.raises(devpool.BadInputError, match="pool_options|picklable"):
        devpool.swap_region(16 * P, resident_bytes=P, backend="host", pool_options=opts)
    assert _gone_within(*(_children() - before))


@pytest.mark.parametrize("kw", [{"backing": "/tmp/" + "x" * (2 << 20)}, {"compressor": "y" * (600 << 10)},
                                {"pool_options": {"z" * (3 << 20): 1}}])
def test_oversized_options_are_bad_input(kw):
    """Options too large for the one message that carries them to the handler: a
    BadInputError naming the size, not a bare OSError (EMSGSIZE), and no process left."""
    before = _children()
    with pytest.raises(devpool.BadInputError, match="too large"):
        devpool.swap_region(16 * P, resident_bytes=P, backend="host", **kw)
    assert _children() <= before


def test_bad_backend_raises_from_the_handler(region):
    with pytest.raises(devpool.BadInputError, match="unknown backend"):
        region(16, 4, backend="nonsense")


def test_without_permission_the_error_names_the_fix():
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        if f.read().strip() != "0":
            pytest.skip("unprivileged userfaultfd is allowed here")
    if os.getuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:                             # child: drop root, try, report, exit
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                devpool.swap_region(16 * P, resident_bytes=4 * P)
                msg = "no error"
            except devpool.BackendUnavailableError as exc:
                msg = "BackendUnavailableError: " + str(exc)
            except BaseException as exc:     # noqa: BLE001
                msg = f"{type(exc).__name__}: {exc}"
            os.write(wr, msg.encode()[:4000])
        finally:
            os._exit(0)
    os.close(wr)
    msg = b""
    while chunk := os.read(rd, 4096):
        msg += chunk
    os.close(rd)
    os.waitpid(pid, 0)
    msg = msg.decode()
    assert msg.startswith("BackendUnavailableError"), msg
    assert "unprivileged_userfaultfd" in msg and "/dev/userfaultfd" in msg


def test_pool_options_name_the_option_at_fault(region):
    """A segment too small for one page blamed capacity_bytes, which the caller never set."""
    with pytest.raises(devpool.BadInputError, match="segment_bytes") as info:
        region(16, 4, backend="host", pool_options={"segment_bytes": 3})
    assert "capacity_bytes" not in str(info.value)


_OUT_OF_FDS_SCRIPT = textwrap.dedent("""
    import os, resource
    import devpool
    from devpool.region.client import _children
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    first = len(os.listdir("/proc/self/fd"))
    seen = set()
    for extra in range(0, 12):             # each limit runs out at another step of the open
        resource.setrlimit(resource.RLIMIT_NOFILE, (first + extra, hard))
        fds, kids = sorted(os.listdir("/proc/self/fd")), set(_children(os.getpid()))
        try:
            r = devpool.swap_region(16 * 4096, resident_bytes=4 * 4096, backend="host")
        except devpool.DevpoolError as exc:
            assert isinstance(exc, OSError) or "Too many open files" in str(exc), repr(exc)
            assert "Too many open files" in str(exc) or "RLIMIT_NOFILE" in str(exc), repr(exc)
            seen.add(type(exc).__name__)
        except BaseException as exc:
            print("raw", type(exc).__name__, exc, flush=True)
            raise SystemExit(1)
        else:
            r.array[:] = 1
            r.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert sorted(os.listdir("/proc/self/fd")) == fds, "a descriptor was left behind"
        left = set(_children(os.getpid())) - kids
        for pid in left:                   # reaped by now, or the test fails
            os.waitpid(pid, 0)
        assert not left, "a process was left behind"
    print(*sorted(seen), flush=True)
""")


def test_out_of_descriptors_is_a_devpool_error_and_leaves_nothing_behind():
    """RLIMIT_NOFILE just above what the process holds: each open runs out at another
    step (the userfaultfd, the memfd, the sockets, the handler's Popen, the guard, the
    watch thread's pipe). Before: a raw OSError from subprocess.Popen (or a userfaultfd
    error saying permission was missing). Now a DevpoolError naming the descriptor limit,
    and no descriptor or process is left behind."""
    proc = subprocess.run([sys.executable, "-c", _OUT_OF_FDS_SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert "RegionError" in proc.stdout.split()
