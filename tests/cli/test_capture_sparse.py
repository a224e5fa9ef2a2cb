"""``capture_pid`` costs what the resident pages cost, not what the mappings span, shows
its progress, and never passes off a process that died midway as a capture (issue 27
item 8)."""

from __future__ import annotations

import builtins
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from devpool import CaptureError, capture_pid
from devpool.cli import capture as _capture
from devpool.cli import io as _io
from tests.cli.test_commands import cli

# A 64 TiB MAP_NORESERVE mapping (128 GiB of pagemap) with TOUCHED pages written, spread
# over it, and 40 pages of a small mapping besides.
SPARSE_CHILD = r"""
import mmap, sys
touched = int(sys.argv[1])
size = 64 << 40
try:
    big = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000))
except (OSError, OverflowError):
    sys.stdout.write("no-mapping\n"); sys.stdout.flush(); sys.exit(0)
for i in range(touched):
    at = (size - 4096) // 4096 * i // max(1, touched - 1) * 4096
    big[at:at + 4096] = b"sparse%02d" % i * 512
small = mmap.mmap(-1, 40 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(40):
    small[i * 4096:(i + 1) * 4096] = b"small%03d" % i * 512
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.read()
"""

# 300 pages, two of every five never touched: runs of three with holes between.
PATTERN_CHILD = r"""
import mmap, sys
m = mmap.mmap(-1, 300 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(300):
    if i % 5 not in (1, 2):
        m[i * 4096:(i + 1) * 4096] = b"patt%04d" % i * 512
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.read()
"""
PATTERN = [i for i in range(300) if i % 5 not in (1, 2)]

#: pagemap bytes a capture may read: the small mappings' entries, never 128 GiB
PAGEMAP_BUDGET = 16 << 20


def spawn(code: str, *args):
    child = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    line = child.stdout.readline().strip()
    if line == "no-mapping":
        child.wait(timeout=30)
        pytest.skip("this machine refuses a 64 TiB MAP_NORESERVE mapping")
    assert line == "ready"
    return child


def stop(child) -> None:
    if child.poll() is None:
        child.stdin.close()
    child.wait(timeout=30)


@pytest.fixture
def sparse_child(request):
    child = spawn(SPARSE_CHILD, getattr(request, "param", 3))
    yield child
    stop(child)


@pytest.fixture
def pattern_child():
    child = spawn(PATTERN_CHILD)
    yield child
    stop(child)


class CountingPagemap:
    """``/proc/PID/pagemap`` that counts what is read from it and fails the test once
    that passes PAGEMAP_BUDGET (reading 128 GiB of it took minutes)."""

    read_bytes = 0

    def __init__(self, f):
        self.f = f

    def read(self, n):
        CountingPagemap.read_bytes += n
        assert CountingPagemap.read_bytes <= PAGEMAP_BUDGET, "the capture reads the pagemap of unpopulated space"
        return self.f.read(n)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def scan_works() -> bool:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        list(_capture._scan_runs(fd, 0, 4096))
        return True
    except _capture._NoScan:
        return False
    finally:
        os.close(fd)


@pytest.fixture(params=["scan", "pagemap"])
def way(request, monkeypatch):
    """Both ways of finding present pages: PAGEMAP_SCAN, and the pagemap read of a
    kernel without it (an ioctl number the kernel does not know answers ENOTTY). The
    pagemap's reads are counted."""
    monkeypatch.setattr(_capture, "_use_scan", None)
    if request.param == "scan" and not scan_works():
        pytest.skip("this kernel has no PAGEMAP_SCAN (Linux 6.7+): the pagemap way is tested")
    if request.param == "pagemap":
        monkeypatch.setattr(_capture, "_PAGEMAP_SCAN", _capture._PAGEMAP_SCAN ^ (0x7F << 8))
    CountingPagemap.read_bytes = 0

    def counting_open(p, *a, **k):
        f = builtins.open(p, *a, **k)
        return CountingPagemap(f) if str(p).endswith("/pagemap") else f

    monkeypatch.setattr(_capture, "open", counting_open, raising=False)
    yield request.param
    assert _capture._use_scan is (request.param == "scan")     # the way asked for was taken


def marks(pages: np.ndarray, prefix: bytes, digits: int) -> list[int]:
    """The numbers of the pages that are ``prefix + digits`` repeated."""
    n = len(prefix) + digits
    return sorted(int(bytes(p[len(prefix):n])) for p in pages
                  if bytes(p[:len(prefix)]) == prefix and bytes(p) == bytes(p[:n]) * (4096 // n))


@pytest.mark.parametrize("way", ["scan"], indirect=True)
def test_three_pages_in_64_tib_cost_what_three_pages_cost(sparse_child, way):
    """81.5 s before, every pagemap entry of the mapping read; the page-table walk of
    PAGEMAP_SCAN skips what was never populated and reads no pagemap at all."""
    pages = capture_pid(sparse_child.pid)
    assert marks(pages, b"sparse", 2) == [0, 1, 2]
    assert marks(pages, b"small", 3) == list(range(40))
    assert CountingPagemap.read_bytes == 0


@pytest.mark.parametrize("sparse_child", [0], indirect=True)
def test_a_mapping_with_nothing_resident_is_skipped_whole(sparse_child, way):
    """The 64 TiB mapping untouched: smaps says Rss 0, so neither way walks it."""
    pages = capture_pid(sparse_child.pid)
    assert marks(pages, b"small", 3) == list(range(40)) and marks(pages, b"sparse", 2) == []


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16])
def test_both_ways_find_every_page_and_stop_at_max_pages(pattern_child, way, monkeypatch, chunk):
    monkeypatch.setattr(_capture, "_CHUNK_PAGES", chunk)
    assert marks(capture_pid(pattern_child.pid), b"patt", 4) == PATTERN
    for k in (1, 3, 50):
        assert capture_pid(pattern_child.pid, max_pages=k).shape == (k, 4096)


def test_progress_follows_the_pages_read(pattern_child, monkeypatch):
    monkeypatch.setattr(_capture, "_CHUNK_PAGES", 16)
    seen = []
    pages = capture_pid(pattern_child.pid, progress=lambda done, total: seen.append((done, total)))
    done = [d for d, _ in seen]
    assert len(seen) > 1 and done == sorted(set(done)) and done[-1] == pages.shape[0]
    assert all(total >= d for d, total in seen)
    seen.clear()
    capture_pid(pattern_child.pid, max_pages=20, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (20, 20)


def test_the_command_shows_progress_with_tqdm_and_without(pattern_child, capsys, tmp_path, monkeypatch):
    out = tmp_path / "c.npy"
    rc, _, err = cli(capsys, "capture", "--pid", str(pattern_child.pid), "-o", str(out))
    assert rc == 0 and f"capture pid {pattern_child.pid}" in err and "page" in err     # a tqdm bar
    monkeypatch.setitem(sys.modules, "tqdm", None)                # tqdm not installed
    monkeypatch.setattr(_io.ProgressBar, "PLAIN_EVERY", 0.0)
    rc, _, err = cli(capsys, "capture", "--pid", str(pattern_child.pid), "-o", str(out))
    assert rc == 0 and f"capture pid {pattern_child.pid}: " in err and " pages" in err
    rc, _, err = cli(capsys, "capture", "--pid", str(pattern_child.pid), "-o", str(out), "--quiet")
    assert rc == 0 and err == ""


def test_a_process_that_dies_midway_is_an_error_not_a_capture(pattern_child, way, monkeypatch, tmp_path):
    """Killed after the first pages were read: what was read is not passed off as its
    capture (the rest of its pages silently missing)."""
    monkeypatch.setattr(_capture, "_CHUNK_PAGES", 8)

    def kill_it(done, total):
        if pattern_child.poll() is None:
            os.kill(pattern_child.pid, signal.SIGKILL)
            pattern_child.wait(timeout=30)

    with pytest.raises(CaptureError, match="exited during capture"):
        capture_pid(pattern_child.pid, progress=kill_it)


@pytest.mark.parametrize("way", ["scan"], indirect=True)
@pytest.mark.parametrize("regions", [1, 2, 59])
def test_a_scan_whose_buffer_fills_goes_on_where_it_stopped(pattern_child, way, monkeypatch, regions):
    """60 runs of present pages, fewer page_regions per ioctl: the walk resumes at
    walk_end, nothing skipped, nothing twice."""
    monkeypatch.setattr(_capture, "_SCAN_REGIONS", regions)
    assert marks(capture_pid(pattern_child.pid), b"patt", 4) == PATTERN


@pytest.mark.parametrize("pid", [2])
def test_a_kernel_thread_has_nothing_to_capture(pid):
    with pytest.raises(CaptureError, match="no resident anonymous pages"):
        capture_pid(pid)
