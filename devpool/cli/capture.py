"""Real memory pages: read the resident anonymous pages of a live process.

``capture_pid(pid)`` takes the private anonymous mappings (heap, stack, anonymous
mmaps) with resident pages from ``/proc/PID/smaps`` (its ``Rss`` per mapping: one that
holds none is skipped whole), finds the present pages in each and reads them through
``/proc/PID/mem``. Its time follows the pages, not the size of the mappings: the
present pages are found with the ``PAGEMAP_SCAN`` ioctl (Linux 6.7+), which walks the
page tables and skips what was never populated (a 64 TiB ``MAP_NORESERVE`` mapping with
three touched pages: milliseconds, where reading its pagemap took 81 s); on an older
kernel, ``/proc/PID/pagemap`` is read (bit 63: present), streamed a chunk at a time.

The kernel applies ptrace access rules to ``mem``: reading another user's process (or
any process under a strict ``ptrace_scope``) is refused, and that refusal becomes a
:class:`CaptureError` naming the pid, never a partial result; so does a process that
exits during the capture (watched through a pidfd).

``capture_workloads()`` spawns a few realistic programs of its own — a Python heap of
dicts, strings and lists, an in-memory SQLite database, numeric arrays — waits until
each has built its data, captures them and stops them. These are the "real pages" the
benchmarks run on (no input files needed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import subprocess
import sys

import numpy as np

from .._checks import check_int
from .._errors import CaptureError
from .._checks import PAGE_SIZE

__all__ = ["CaptureError", "capture_pid", "capture_workloads", "page_summary", "WORKLOADS"]

PAGE = PAGE_SIZE          # the one page size (devpool._checks)
_PRESENT = 1 << 63
#: pages found and read at once (a pagemap chunk is 8 bytes a page: 512 KiB; the pages
#: read, 256 MiB), whatever the mapping's size
_CHUNK_PAGES = 1 << 16

# PAGEMAP_SCAN (include/uapi/linux/fs.h): _IOWR('f', 16, struct pm_scan_arg), the
# struct being twelve u64 (size, flags, start, end, walk_end, vec, vec_len, max_pages,
# category_inverted, category_mask, category_anyof_mask, return_mask); it fills ``vec``
# with struct page_region {u64 start, end, categories} of the pages that match.
_SCAN_ARG = struct.Struct("12Q")
_PAGEMAP_SCAN = (3 << 30) | (_SCAN_ARG.size << 16) | (ord("f") << 8) | 16
_PAGE_IS_PRESENT = 1 << 3
#: page_regions one PAGEMAP_SCAN call may fill
_SCAN_REGIONS = 1024
#: does PAGEMAP_SCAN work here? None until tried (a kernel before 6.7 says ENOTTY)
_use_scan: bool | None = None


class _NoScan(Exception):
    """This kernel has no PAGEMAP_SCAN: read the pagemap instead."""


def _anonymous_regions(pid: int) -> list[tuple[int, int, int]]:
    """(start, end, resident pages) of ``pid``'s readable private anonymous mappings
    that hold resident pages (``Rss`` in ``/proc/PID/smaps``)."""
    regions: list[list[int]] = []
    current = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if head.endswith(":"):                    # a field of the mapping above
                if head == "Rss:" and current is not None:
                    current[2] = int(rest.split()[0]) * 1024 // PAGE
                continue
            parts = line.split(maxsplit=5)            # a mapping: range perms offset dev inode [path]
            perms, path = parts[1], parts[5].strip() if len(parts) > 5 else ""
            current = None
            if perms[0] != "r" or perms[3] != "p":
                continue
            if path and path not in ("[heap]", "[stack]") and not path.startswith("[anon:"):
                continue          # file-backed, or vdso/vvar/vsyscall
            start, end = (int(x, 16) for x in parts[0].split("-"))
            current = [start, end, 0]
            regions.append(current)
    return [(a, b, n) for a, b, n in regions if n]


def _scan_runs(pm_fd: int, start: int, end: int):
    """``(first, end)`` addresses of runs of present pages in ``[start, end)``, by
    PAGEMAP_SCAN; _NoScan (before yielding anything) if this kernel lacks it."""
    vec = np.zeros((_SCAN_REGIONS, 3), np.uint64)
    first_call = True
    while start < end:
        arg = bytearray(_SCAN_ARG.pack(_SCAN_ARG.size, 0, start, end, 0, vec.ctypes.data, _SCAN_REGIONS,
                                       0, 0, _PAGE_IS_PRESENT, 0, _PAGE_IS_PRESENT))
        try:
            n = fcntl.ioctl(pm_fd, _PAGEMAP_SCAN, arg, True)
        except OSError as exc:
            if first_call and exc.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                raise _NoScan() from exc
            raise
        first_call = False
        for lo, hi, _ in vec[:n].tolist():
            yield lo, hi
        walk_end = _SCAN_ARG.unpack(arg)[4]
        if walk_end <= start:                  # no progress: never loop forever
            break
        start = walk_end


def _linear_runs(pm, start: int, end: int):
    """:func:`_scan_runs` from the pagemap itself, ``_CHUNK_PAGES`` entries at a time."""
    first, last = start // PAGE, end // PAGE
    for lo in range(first, last, _CHUNK_PAGES):
        n = min(_CHUNK_PAGES, last - lo)
        pm.seek(lo * 8)
        raw = pm.read(n * 8) or b""
        entries = np.frombuffer(raw[: len(raw) // 8 * 8], dtype=np.uint64)
        present = np.flatnonzero(entries & np.uint64(_PRESENT))
        if present.size:
            breaks = np.flatnonzero(np.diff(present) != 1) + 1
            for run in np.split(present, breaks):
                yield (lo + int(run[0])) * PAGE, (lo + int(run[-1]) + 1) * PAGE


def _present_runs(pm, start: int, end: int):
    """Runs of present pages in ``[start, end)``: PAGEMAP_SCAN where the kernel has it."""
    global _use_scan
    if _use_scan is not False:
        runs = _scan_runs(pm.fileno(), start, end)
        try:
            first = next(runs, None)
        except _NoScan:
            _use_scan = False
        else:
            _use_scan = True
            if first is not None:
                yield first
                yield from runs
            return
    yield from _linear_runs(pm, start, end)


def _read_present(mem, base: int, idx: np.ndarray) -> np.ndarray:
    """The pages at ``base + idx * PAGE`` (``idx`` sorted), read one run of consecutive
    pages at a time; a page unmapped since the pagemap said it was there is skipped."""
    out = np.empty((idx.size, PAGE), np.uint8)
    kept = 0
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    for run in np.split(idx, breaks):
        k = run.size
        dst = out[kept:kept + k]
        mem.seek(base + int(run[0]) * PAGE)
        try:
            got = mem.readinto(memoryview(dst).cast("B"))
        except OSError:
            got = 0
        if got == k * PAGE:
            kept += k
            continue
        for j in run.tolist():                   # part of the run went away: page by page
            mem.seek(base + j * PAGE)
            try:
                got = mem.readinto(memoryview(out[kept]).cast("B"))
            except OSError:
                continue
            if got == PAGE:
                kept += 1
    return out[:kept]


def _pidfd(pid: int) -> int:
    """A pidfd of ``pid`` (readable once it exits), or -1 where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _exited(pidfd: int) -> bool:
    return pidfd >= 0 and bool(select.select([pidfd], [], [], 0)[0])


def capture_pid(pid: int, max_pages: int | None = None, progress=None) -> np.ndarray:
    """Resident anonymous pages of process ``pid`` as an (N, 4096) uint8 array.

    Time and memory follow the resident pages, not the mappings' size: mappings with
    no resident page are skipped, the present pages are found by PAGEMAP_SCAN (or the
    pagemap, streamed), and read ``_CHUNK_PAGES`` at a time. The capture stops at
    ``max_pages`` (the first pages found, in address order). ``progress(done, total)``,
    if given, is called as pages are read (``total``: the resident pages ``smaps``
    counted, the most there can be). CaptureError if the process cannot be read, has
    nothing to capture, or exits before the capture ends.
    """
    pid = check_int(pid, "pid", lo=1, error=CaptureError)
    limit = sys.maxsize if max_pages is None else check_int(max_pages, "max_pages", lo=1)
    parts: list[np.ndarray] = []
    count = 0
    pidfd = _pidfd(pid)
    try:
        regions = _anonymous_regions(pid)
        if not regions:                  # a kernel thread, or a process with no private memory
            raise CaptureError(f"process {pid} has no resident anonymous pages to capture")
        total = min(limit, sum(n for _, _, n in regions))
        with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm, \
                open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for start, end, _ in regions:
                for lo, hi in _present_runs(pm, start, end):
                    for base in range(lo, hi, _CHUNK_PAGES * PAGE):
                        if count >= limit:
                            break
                        n = min(_CHUNK_PAGES, (hi - base) // PAGE, limit - count)
                        got = _read_present(mem, base, np.arange(n))
                        if got.shape[0]:
                            parts.append(got)
                            count += got.shape[0]
                            if progress is not None:
                                progress(count, max(total, count))
                    if count >= limit:
                        break
                if count >= limit:
                    break
        if _exited(pidfd):
            raise ProcessLookupError(errno.ESRCH, "exited")
    except CaptureError:
        raise
    except FileNotFoundError as exc:
        raise CaptureError(f"process {pid} does not exist (or exited during capture)") from exc
    except PermissionError as exc:
        raise CaptureError(
            f"not permitted to read the memory of process {pid} (ptrace access rules; "
            f"run as its owner or root, or check /proc/sys/kernel/yama/ptrace_scope)") from exc
    except ProcessLookupError as exc:
        raise CaptureError(f"process {pid} exited during capture") from exc
    except OSError as exc:
        raise CaptureError(f"reading the memory of process {pid} failed: {exc.strerror or exc}") from exc
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    if not count:
        raise CaptureError(f"process {pid} has no resident anonymous pages to capture")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


# Each workload builds realistic data, prints "ready", then waits on stdin.
WORKLOADS = {
    "python-heap": r"""
import random, string, sys, json
random.seed(1)
words = [''.join(random.choices(string.ascii_lowercase, k=random.randint(3, 10))) for _ in range(5000)]
records = [{'id': i, 'name': random.choice(words) + ' ' + random.choice(words),
            'email': random.choice(words) + '@example.org', 'score': random.random() * 100,
            'tags': random.sample(words, 3), 'active': i % 3 == 0} for i in range(60000)]
index = {r['name']: r for r in records}
text = json.dumps(records[:5000])
sys.stdout.write('ready\n'); sys.stdout.flush(); sys.stdin.read()
""",
    "sqlite": r"""
import random, sqlite3, sys
random.seed(2)
db = sqlite3.connect(':memory:')
db.execute('create table orders(id integer primary key, customer text, item text, qty int, price real, note text)')
items = ['widget', 'gadget', 'sprocket', 'flange', 'gizmo', 'doohickey']
db.executemany('insert into orders values (?,?,?,?,?,?)',
               [(i, 'customer%05d' % random.randint(0, 9999), random.choice(items), random.randint(1, 50),
                 round(random.uniform(1, 500), 2), 'deliver before noon' if i % 7 == 0 else '')
                for i in range(150000)])
db.execute('create index by_customer on orders(customer)')
db.commit()
sys.stdout.write('ready\n'); sys.stdout.flush(); sys.stdin.read()
""",
    "numeric": r"""
import sys, numpy as np
rng = np.random.default_rng(3)
grid = np.cumsum(rng.normal(size=(600, 600)), axis=1)           # smooth float field
counts = rng.poisson(3, size=2_000_000).astype(np.int32)        # small integers
mask = (rng.random(3_000_000) < 0.05).astype(np.uint8)          # sparse bytes
ids = np.arange(1_000_000, dtype=np.int64) * 8 + 0x7f0000000000  # pointer-like
noise = rng.integers(0, 256, 1_500_000, dtype=np.uint8)         # incompressible
sys.stdout.write('ready\n'); sys.stdout.flush(); sys.stdin.read()
""",
}


@contextlib.contextmanager
def spawned_workloads(names=None):
    """Start the built-in workloads; yields their pids once each has built its data."""
    procs = []
    try:
        for name in names or WORKLOADS:
            p = subprocess.Popen([sys.executable, "-c", WORKLOADS[name]], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise CaptureError(f"workload process {p.pid} failed to start")
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stdin.close()
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
            if p.poll() is None:
                p.kill()


def capture_workloads(max_pages: int | None = None, names=None, progress=None) -> np.ndarray:
    """Pages from freshly spawned built-in workloads (no input files needed).

    ``progress`` optionally wraps the iteration over the workloads (a tqdm, say).
    """
    with spawned_workloads(names) as pids:
        parts = [capture_pid(pid) for pid in (progress(pids) if progress else pids)]
    pages = np.concatenate(parts)
    if max_pages is not None and pages.shape[0] > max_pages:
        # keep a spread over every workload rather than the first one only
        pick = np.linspace(0, pages.shape[0] - 1, max_pages).astype(np.int64)
        pages = pages[pick]
    return pages


def page_summary(pages: np.ndarray) -> dict:
    """Counts a capture is judged by: zero / same-filled share and the LZ4 ratio."""
    import lz4.block
    first = pages[:, :1]
    same = (pages == first).all(axis=1)
    zero = same & (first[:, 0] == 0)
    sizes = np.array([len(lz4.block.compress(p.tobytes(), store_size=False)) for p in pages])
    return {
        "pages": int(pages.shape[0]),
        "zero_pages": int(zero.sum()),
        "same_filled_pages": int(same.sum()),
        "incompressible_pages": int((sizes >= PAGE).sum()),
        "lz4_ratio": float(pages.size / np.minimum(sizes, PAGE).sum()),
    }
