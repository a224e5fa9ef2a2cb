"""Real memory pages: read the resident anonymous pages of a live process.

``capture_pid(pid)`` walks ``/proc/PID/maps`` for private anonymous mappings (heap,
stack, anonymous mmaps), asks ``/proc/PID/pagemap`` which pages are resident (bit 63),
and reads those through ``/proc/PID/mem``. The kernel applies ptrace access rules to
``mem``: reading another user's process (or any process under a strict
``ptrace_scope``) is refused, and that refusal becomes a :class:`CaptureError` naming
the pid, never a partial result.

``capture_workloads()`` spawns a few realistic programs of its own — a Python heap of
dicts, strings and lists, an in-memory SQLite database, numeric arrays — waits until
each has built its data, captures them and stops them. These are the "real pages" the
benchmarks run on (no input files needed).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import numpy as np

from .._checks import check_int
from .._errors import CaptureError
from .._checks import PAGE_SIZE

__all__ = ["CaptureError", "capture_pid", "capture_workloads", "page_summary", "WORKLOADS"]

PAGE = PAGE_SIZE          # the one page size (devpool._checks)
_PRESENT = 1 << 63
#: pagemap entries read at once (8 bytes each: 512 KiB), whatever the region's size
_CHUNK_PAGES = 1 << 16


def _anonymous_regions(pid: int) -> list[tuple[int, int]]:
    regions = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            addr, perms = parts[0], parts[1]
            path = parts[5] if len(parts) > 5 else ""
            if "r" not in perms[0] or perms[3] != "p":
                continue
            if path and path not in ("[heap]", "[stack]"):
                continue          # file-backed, or vdso/vvar/vsyscall
            start, end = (int(x, 16) for x in addr.split("-"))
            regions.append((start, end))
    return regions


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


def capture_pid(pid: int, max_pages: int | None = None) -> np.ndarray:
    """Resident anonymous pages of process ``pid`` as an (N, 4096) uint8 array.

    Streams: the pagemap is read ``_CHUNK_PAGES`` entries at a time (a 16 TiB mapping
    costs no more memory than a small one), and the capture stops at ``max_pages``
    (the first pages found, in address order).
    """
    pid = check_int(pid, "pid", lo=1, error=CaptureError)
    limit = sys.maxsize if max_pages is None else check_int(max_pages, "max_pages", lo=1)
    parts: list[np.ndarray] = []
    count = 0
    try:
        regions = _anonymous_regions(pid)
        if not regions:                  # a kernel thread, or a process with no private memory
            raise CaptureError(f"process {pid} has no anonymous memory to capture")
        with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm, \
                open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for start, end in regions:
                first, last = start // PAGE, end // PAGE
                for lo in range(first, last, _CHUNK_PAGES):
                    if count >= limit:
                        break
                    n = min(_CHUNK_PAGES, last - lo)
                    pm.seek(lo * 8)
                    raw = pm.read(n * 8) or b""
                    entries = np.frombuffer(raw[: len(raw) // 8 * 8], dtype=np.uint64)
                    present = np.flatnonzero(entries & np.uint64(_PRESENT))[: limit - count]
                    if present.size:
                        got = _read_present(mem, lo * PAGE, present)
                        parts.append(got)
                        count += got.shape[0]
    except FileNotFoundError as exc:
        raise CaptureError(f"process {pid} does not exist (or exited during capture)") from exc
    except PermissionError as exc:
        raise CaptureError(
            f"not permitted to read the memory of process {pid} (ptrace access rules; "
            f"run as its owner or root, or check /proc/sys/kernel/yama/ptrace_scope)") from exc
    except ProcessLookupError as exc:
        raise CaptureError(f"process {pid} exited during capture") from exc
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
