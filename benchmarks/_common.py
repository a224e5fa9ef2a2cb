"""What every benchmark shares: the machine's name, the pages, the header.

These machines are shared and noisy, so every benchmark times its baseline in the same
process, interleaved with the subject, pass by pass, and reports the median of the
per-pass ratios (``devpool.cli.measure.Passes`` says why the median, not best-of-N).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_pages(path: str | None, max_pages: int | None = None) -> tuple[np.ndarray, str]:
    """Pages from an .npy file, or captured from freshly spawned built-in workloads."""
    from devpool import capture_workloads
    if path:                                   # "" (unset) means capture
        pages = np.load(path)
        source = path
    else:
        pages = capture_workloads()
        source = "devpool.capture_workloads() (python heap, sqlite, numeric workloads)"
    if max_pages and pages.shape[0] > max_pages:
        pages = pages[np.linspace(0, pages.shape[0] - 1, max_pages).astype(np.int64)]
    return np.ascontiguousarray(pages), source


def mixed(pages: np.ndarray, seed: int = 0) -> np.ndarray:
    """The pages in a fixed random order, for a benchmark that compares stores of
    different sizes. Captured pages come grouped by workload (the python heap's first,
    whose lz4 blocks average ~1.35 KB, then ~1.6 - 2 KB ones), so a store of 10^4 pages
    that took the first 10^4 held another mix than one of 10^6 that cycled through
    them all: its blocks were ~20 % smaller, its compression ~0.4 us faster, and every
    growth ratio counted the content's difference as the size's. Shuffled once, the first
    N pages (or page ``j % len`` at the j-th offset) are a sample of one mix at any N."""
    return np.ascontiguousarray(pages[np.random.default_rng(seed).permutation(pages.shape[0])])


def pack(blocks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocks back to back: ``(data, lengths, bounds)``, block ``i`` at
    ``data[bounds[i]:bounds[i + 1]]`` (``bounds[:-1]`` are the starts)."""
    blocks = list(blocks)
    lengths = np.array([len(b) for b in blocks], np.int64)
    return np.frombuffer(b"".join(blocks), np.uint8), lengths, np.concatenate([[0], np.cumsum(lengths)])


def load_module(path: str, name: str):
    """A module from a source file outside this tree (an earlier version of one of ours,
    measured beside the current one in the same process). ``name`` places it: a dotted
    name inside a devpool package lets its relative imports resolve there."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_afresh() -> None:
    """Numba's cache off for this process (nothing loaded from it, nothing saved): call it
    before anything compiles, wherever two trees' devpool run in one process. A compiled
    function's symbol is its module, name, argument types and a number counted up in the
    process that compiled it; two trees' functions loaded from caches written by
    different processes can so share a symbol, and one tree's calls then run the other's
    code (seen here: a segfault, and numba failing to import a module named
    "<dynamic>"). Compiled in one process, every number is new."""
    from numba.core import caching
    caching.Cache.load_overload = lambda self, sig, target_context: None
    caching.Cache.save_overload = lambda self, sig, data: None


class _TopFolders:
    """A finder of another tree's ``devpool.host`` and ``devpool.kernels``: top-level
    folders that install inside the package (pyproject's package-dir), which an import
    from the tree's root would otherwise take from this tree's editable install."""

    def __init__(self, root: str):
        self.folders = {f"devpool.{name}": Path(root, name) for name in ("host", "kernels")}

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery
        import importlib.util
        for package, folder in self.folders.items():
            if name == package:
                return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                              submodule_search_locations=[str(folder)])
            if name.startswith(package + "."):
                return importlib.machinery.PathFinder.find_spec(name, path)
        return None


@contextlib.contextmanager
def other_tree(root):
    """Another checkout's ``devpool`` (``root``: its top folder; its ``host`` and ``kernels``
    too) in this process, beside this one's, so that both are timed op for op in the
    same phase of the machine (:func:`compile_afresh` first). Inside the block
    ``sys.modules`` holds that tree's modules (yielded: its ``devpool``), and ours again
    after it: build its objects (pools, zswaps) and call each verb once inside, since a
    verb may import a module of its package the first time it runs (a backend, a codec)."""
    root = str(Path(root).resolve())
    mine = lambda: [m for m in sys.modules if m == "devpool" or m.startswith("devpool.")]    # noqa: E731
    ours = {m: sys.modules.pop(m) for m in mine()}
    sys.path.insert(0, root)
    finder = _TopFolders(root)
    sys.meta_path.insert(0, finder)
    try:
        import devpool as theirs
        if not theirs.__file__.startswith(root):
            raise RuntimeError(f"the devpool meant for {root} imported {theirs.__file__}")
        yield theirs
    finally:
        sys.meta_path.remove(finder)
        sys.path.remove(root)
        for m in mine():
            del sys.modules[m]
        sys.modules.update(ours)


def ratio_spread(mine, base) -> dict:
    """The median of paired ratios ``mine[i] / base[i]`` with their range: how every
    benchmark here reports one tree or setting against its baseline."""
    r = np.asarray(mine, dtype=float) / np.asarray(base, dtype=float)
    return {"median": float(np.median(r)), "low": float(r.min()), "high": float(r.max())}


def header(name: str, **extra) -> dict:
    import numba
    return {"benchmark": name, "date": datetime.date.today().isoformat(), "machine": cpu_name(),
            "cores": numba.config.NUMBA_NUM_THREADS, "python": sys.version.split()[0],
            "command": "python benchmarks/" + Path(sys.argv[0]).name + " " + " ".join(sys.argv[1:]),
            **extra}


def save(result: dict, path: str | None, complete: bool = True) -> None:
    """``result`` as JSON at ``path``, atomically (a reader never sees half a file).
    Benchmarks save as they measure, ``complete=False`` until the last figure, so a run
    stopped at its limit (a GPU session's step gets SIGINT) leaves every figure it took,
    marked ``"complete": false``."""
    if path:
        text = json.dumps(dict(result, complete=complete), indent=2, default=float)
        tmp = Path(f"{path}.partial")
        tmp.write_text(text)
        os.replace(tmp, path)


@contextlib.contextmanager
def machine_lock(path: str):
    """Hold the advisory lock file ``path`` (benchmarks that change machine state take
    one each, so two runs never change it at once). Yields the open descriptor, or a
    string saying why the lock is not held (another run holds it; the path is a link
    or belongs to someone else). Opened without following a link and without
    truncating: run as root in a shared /tmp, a planted symlink must not make us
    write through it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        yield f"lock file {path} cannot be opened safely ({exc.strerror}): a link or another user's file?"
        return
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            yield f"lock file {path} belongs to another user"
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield f"another benchmark holds {path}"
            return
        yield fd
    finally:
        os.close(fd)
