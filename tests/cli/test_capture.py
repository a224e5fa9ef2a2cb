"""``capture_pid``: the pagemap is streamed, and a capture stops at ``max_pages``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from devpool import CaptureError, capture_pid
from devpool.cli import capture as _capture

# A child with a 1 TiB MAP_NORESERVE mapping (2 GiB of pagemap, a page touched every
# 64 GiB) and, with RESIDENT_MB > 0, that many MiB of resident pages besides.
BIG_CHILD = r"""
import mmap, sys
resident_mb = int(sys.argv[1])
try:
    big = mmap.mmap(-1, 1 << 40, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000))
except (OSError, OverflowError):
    sys.stdout.write("no-mapping\n"); sys.stdout.flush(); sys.exit(0)
for i in range(0, 1 << 40, 1 << 36):
    big[i:i + 8] = b"devpool!"
ballast = bytearray(b"resident" * (resident_mb << 17))
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.read()
"""

# Runs a capture in a fresh process (the library call, or the command line's
# `devpool capture --pid` when an output path is given) and reports its peak memory.
MEASURE = r"""
import json, resource, sys
import numpy as np
from devpool import capture_pid
from devpool.cli import main
pid, max_pages, out = int(sys.argv[1]), (int(sys.argv[2]) or None), sys.argv[3]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if out:
    assert main(["capture", "--pid", str(pid), "--max-pages", str(max_pages), "-o", out, "--quiet"]) == 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pages = np.load(out)
else:
    pages = capture_pid(pid, max_pages=max_pages)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"pages": pages.shape[0], "marks": sum(b"devpool!" in bytes(p) for p in pages),
                  "grew_mb": (peak - before) / 1024}))
"""


@pytest.fixture
def big_child(request):
    resident_mb = getattr(request, "param", 0)
    child = subprocess.Popen([sys.executable, "-c", BIG_CHILD, str(resident_mb)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().strip()
        if line == "no-mapping":
            pytest.skip("this machine refuses a 1 TiB MAP_NORESERVE mapping")
        assert line == "ready"
        yield child.pid
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def measure(pid: int, max_pages: int | None, out: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(pid), str(max_pages or 0), out],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_huge_sparse_mapping_is_streamed_not_read_at_once(big_child):
    """Reading its 2 GiB of pagemap at once grew the capture by over 2 GiB."""
    r = measure(big_child, None)
    assert r["marks"] >= 16          # every touched page of the mapping (and the source text)
    assert r["grew_mb"] < 256, r


@pytest.mark.parametrize("big_child", [512], indirect=True)
def test_max_pages_stops_the_capture(big_child, tmp_path):
    """With 512 MiB resident, `devpool capture --max-pages 10` reads 10 pages, not all
    of them (it captured everything, then picked 10)."""
    r = measure(big_child, 10, str(tmp_path / "ten.npy"))
    assert r["pages"] == 10
    assert r["grew_mb"] < 64, r


PATTERN_CHILD = r"""
import mmap, sys
n = int(sys.argv[1])
m = mmap.mmap(-1, n * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(n):
    if i % 3 != 1:                      # holes: runs of two resident pages
        m[i * 4096:(i + 1) * 4096] = (b"m%07d" % i) * 512
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.read()
"""


@pytest.fixture
def pattern_child():
    child = subprocess.Popen([sys.executable, "-c", PATTERN_CHILD, "100"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        yield child.pid
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def marks(pages: np.ndarray) -> list[int]:
    found = []
    for p in pages:
        b = bytes(p)
        if b[:1] == b"m" and b[1:8].isdigit() and b == b[:8] * 512:
            found.append(int(b[1:8]))
    return found


@pytest.mark.parametrize("chunk", [1, 2, 7, 1 << 16])
def test_every_resident_page_comes_back_whole_whatever_the_chunk(pattern_child, monkeypatch, chunk):
    monkeypatch.setattr(_capture, "_CHUNK_PAGES", chunk)
    got = marks(capture_pid(pattern_child))
    assert got == [i for i in range(100) if i % 3 != 1]


def test_max_pages_is_exact(pattern_child):
    for k in (1, 2, 5, 64):
        assert capture_pid(pattern_child, max_pages=k).shape == (k, 4096)
    everything = capture_pid(pattern_child, max_pages=10**12)
    assert marks(everything) == [i for i in range(100) if i % 3 != 1]


def test_a_run_that_vanishes_midway_is_read_page_by_page(pattern_child, monkeypatch):
    """A run whose one read fails (part of it unmapped meanwhile) falls back to pages."""
    import builtins

    class FlakyMem:
        def __init__(self, f):
            self.f, self.pos = f, 0

        def seek(self, pos):
            self.pos = pos
            return self.f.seek(pos)

        def readinto(self, buf):
            if len(buf) > 4096:
                raise OSError(5, "Input/output error")
            return self.f.readinto(buf)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def flaky_open(path, *a, **k):
        f = builtins.open(path, *a, **k)
        return FlakyMem(f) if str(path).endswith("/mem") else f

    monkeypatch.setattr(_capture, "open", flaky_open, raising=False)
    assert marks(capture_pid(pattern_child)) == [i for i in range(100) if i % 3 != 1]


@pytest.mark.parametrize("pid", [0, -1, True, 1.5, "1", None])
def test_bad_pids_are_refused(pid):
    with pytest.raises(CaptureError, match="pid"):
        capture_pid(pid)


@pytest.mark.parametrize("max_pages", [0, -1, 2.5, "10"])
def test_bad_max_pages_are_refused(max_pages):
    import devpool
    with pytest.raises(devpool.BadInputError, match="max_pages"):
        capture_pid(1, max_pages=max_pages)
