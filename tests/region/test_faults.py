"""Fault service edges: pages the store cannot give back, failing stores, removed pages, races."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.region.helpers import P, _pwrite_in_thread, _handler_here, needs_uffd

pytestmark = needs_uffd


_LOST_PAGE_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import devpool
    path, around = sys.argv[1], int(sys.argv[2])
    n = 96
    rng = np.random.default_rng(5)
    with devpool.swap_region(n * 4096, resident_bytes=8 * 4096, backend="host", backing=path,
                             max_pool_bytes=256 * 1024, fault_around=around) as r:
        a = r.array
        a[:] = rng.integers(0, 256, a.size, dtype=np.uint8)   # incompressible: most go to the file
        r.evict()
        st = r.stats()
        print(st["evicted_pages"], st["zswap"]["backing_pages"], flush=True)
        os.truncate(path, 0)                                  # the swap device loses every page
        total = 0
        for p in range(n):
            total += int(a[p * 4096])                         # a page from the file: SIGBUS
        print("returned", total, flush=True)
""")


@pytest.mark.parametrize("around", [0, 8])
def test_a_page_the_store_cannot_give_back_is_poisoned_not_zeroed(tmp_path, around):
    """A page lost by the swap device (here: the backing file truncated under it) is
    never mapped as zeros: the handler poisons it and the access raises SIGBUS, whether
    the fault loads one page or a fault-around window one by one."""
    proc = subprocess.run([sys.executable, "-c", _LOST_PAGE_SCRIPT, str(tmp_path / "swap"), str(around)],
                          capture_output=True, text=True, timeout=60)   # before the fix: hung here
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stdout, proc.stderr)
    assert "returned" not in proc.stdout
    evicted, in_file = (int(x) for x in proc.stdout.split()[:2])
    assert evicted >= 80 and in_file > 0
    assert "could not be loaded" in proc.stderr and "poisoning it" in proc.stderr


_FAILING_STORE_SCRIPT = textwrap.dedent("""
    import numpy as np
    import devpool
    n = 32
    with devpool.swap_region(n * 4096, resident_bytes=4 * 4096, serve="file", file="/dev/full") as r:
        a = r.array
        want = np.arange(a.size, dtype=np.uint64).astype(np.uint8)
        a[:] = want                     # evictions run in the handler's loop: every write fails
        assert r.evict(n) == 0          # and when asked
        assert np.array_equal(a, want)
        a[5 * 4096] += 1                # a refused page is written: tried again, fails again
        want[5 * 4096] += 1
        assert np.array_equal(a, want)
        st = r.stats()
        print(st["store_errors"], st["evicted_pages"], st["resident_pages"], flush=True)
""")


def test_a_failing_store_keeps_the_pages_resident_and_the_handler_alive():
    """A store that raises (here: the swap file is /dev/full, every write ENOSPC) must
    leave its victims resident and intact. Before: the exception left the handler's
    loop, the handler died, and every page it had evicted was lost (SIGBUS)."""
    proc = subprocess.run([sys.executable, "-c", _FAILING_STORE_SCRIPT], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    errors, evicted, resident = (int(x) for x in proc.stdout.split())
    assert errors > 0 and evicted == 0 and resident == 32
    assert "No space left on device" in proc.stderr


_REMOVED_PAGE_SCRIPT = textwrap.dedent("""
    import ctypes
    import devpool
    libc = ctypes.CDLL(None, use_errno=True)
    with devpool.swap_region(16 * 4096, resident_bytes=16 * 4096, backend="host") as r:
        a = r.array
        a[:] = 3
        # MADV_REMOVE (9): the caller drops page 2's contents; reads must now see zeros
        assert libc.madvise(ctypes.c_void_p(a.ctypes.data + 2 * 4096), ctypes.c_size_t(4096), 9) == 0
        print(int(a[2 * 4096]), int(a[3 * 4096]), int(a[2 * 4096: 3 * 4096].sum()), flush=True)
        a[2 * 4096] = 5
        print(int(a[2 * 4096]), flush=True)
""")


def test_a_page_removed_by_the_caller_reads_zero_instead_of_faulting_forever():
    """madvise(MADV_REMOVE) on the region frees a resident page behind the handler's
    back. Before: its next access faulted MISSING on a page the handler counted as
    resident, which it answered by waking the thread, which faulted again, forever (the
    GIL held). Now such a fault is zero-filled, as MADV_REMOVE promises."""
    proc = subprocess.run([sys.executable, "-c", _REMOVED_PAGE_SCRIPT], capture_output=True,
                          text=True, timeout=60)   # before the fix: hung here
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert proc.stdout.split() == ["0", "3", "0", "5"]


def test_a_second_fault_on_a_poisoned_page_is_woken(tmp_path):
    """Two threads fault on a page that cannot be loaded: the first fault's poison wakes
    the waiters queued by then, but a thread that read the page table before the poison
    went in and queued after its wake still waits, and its message reaches the handler
    with the page LOST. Poisoning again fails with EEXIST (the page is poisoned); before,
    that was only logged and the thread waited forever. Driven here on a Handler in this
    process, with that state made deterministically: the poison is installed without a
    wake while the thread's fault is pending."""
    import fcntl
    import select
    import struct

    from devpool.region import uffd as _uffd
    sink = os.open(tmp_path / "sink", os.O_WRONLY | os.O_CREAT, 0o600)
    got = {}
    t = None
    try:
        with _handler_here(4) as (h, fd, mm, addr):
            # a syscall reading page 1: EFAULT once poisoned
            t = _pwrite_in_thread(sink, memoryview(mm)[P:P + 64], got)
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            assert poller.poll(10_000), "the reader's fault never arrived"
            # the first fault's poison, as if its wake had come before this thread queued
            fcntl.ioctl(fd, _uffd.UFFDIO_POISON, struct.pack("QQQq", addr + P, P, 1, 0))  # DONTWAKE
            h.pages.lost(1)
            h.serve(_uffd.read_faults(fd))
            t.join(10)
            assert not t.is_alive(), "the second thread still waits on the poisoned page"
            assert got == {"errno": errno.EFAULT}
    finally:
        if t is not None:
            t.join(10)
        os.close(sink)


def test_a_run_copied_over_a_page_already_there_fills_every_other_page():
    """UFFDIO_COPY of a run stops at the first page already there and reports the
    pages before it (EAGAIN with a partial count). Before: the copy restarted from the
    run's start, met EEXIST at once, and the handler took the whole run as filled: the
    pages after the one already there were never copied (their next fault, with the
    page counted resident, would loop or read zeros)."""
    import ctypes

    with _handler_here(4) as (h, fd, mm, addr):
        from devpool.region import uffd as _uffd
        _uffd.zeropage(fd, addr + 2 * P, P)         # page 2 is there already
        for k in range(4):
            h.buf[k] = k + 1
        h.source.zero_fill = False                    # copy from buf, as a store's fill does
        h._copy_runs([0, 1, 2, 3], [True] * 4)
        libc = ctypes.CDLL(None, use_errno=True)
        vec = (ctypes.c_ubyte * 4)()
        assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(4 * P), vec) == 0
        assert [v & 1 for v in vec] == [1, 1, 1, 1], "a page of the run was never filled"
        a = np.frombuffer(mm, np.uint8).reshape(4, P)
        assert [int(a[k, 0]) for k in range(4)] == [1, 2, 0, 4]
        del a
