"""What the command line's subcommands share: progress bars, reading pages, writing results.

``_cli.py`` (the parser and the subcommands), ``_bench.py`` and ``_replay.py`` import from
here, and this module imports none of them back.

Files are handled so that a path can neither hang a run nor redirect its bytes:

- **Inputs** (``--pages``, a trace) are opened non-blocking and must be regular files, so
  a FIFO is refused instead of waiting forever for a writer. A ``.npy`` header is read
  and checked against the file's size before anything is allocated: a header that
  claims 10⁹ pages of a 1 KiB file is refused, not believed.
- **Outputs** (``-o``, ``--json``, ``--plot``) are checked before the work: an existing
  output must be a regular file (not a link, FIFO, device or directory) and its folder
  must take a new file (a probe file, created with ``O_EXCL`` and removed again). They
  are then written to a fresh, randomly named file beside the final name (``O_EXCL``,
  never following a link), flushed to disk and renamed into place. A failure, ENOSPC
  included, removes that file and names the output: the final name holds either the
  old file or the complete new one, never an empty or partial one.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import time

import numpy as np

from .._errors import BadInputError, DevpoolError
from .._checks import PAGE_SIZE

__all__ = ["OutputError", "ProgressBar", "check_output_path", "check_plot_path", "load_pages_file", "open_npy",
           "open_regular_file", "progress", "save_pages", "write_atomically", "write_outputs"]

PAGE = PAGE_SIZE          # the one page size (devpool._checks)


class OutputError(DevpoolError, OSError):
    """An output file could not be written (the message names it); nothing is left behind."""


# --- progress -----------------------------------------------------------------------------
def progress(iterable, desc: str, total: int | None = None, quiet: bool = False):
    """tqdm when installed and wanted, else the plain iterable."""
    if quiet:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)


class ProgressBar:
    """``bar(done, total)`` follows a count (pages read, say): a tqdm bar when tqdm is
    installed (the ``bench`` extra), else a plain line on stderr at most every
    ``PLAIN_EVERY`` seconds; nothing when ``quiet``. A context manager: closed on exit."""

    #: seconds between two plain progress lines (without tqdm)
    PLAIN_EVERY = 2.0

    def __init__(self, desc: str, quiet: bool = False, unit: str = "page"):
        self.desc, self.unit, self.quiet = desc, unit, quiet
        self._bar = None
        self._tqdm = None
        self._next_line = 0.0
        if not quiet:
            try:
                from tqdm import tqdm
                self._tqdm = tqdm
            except ImportError:
                pass

    def __call__(self, done: int, total: int | None = None) -> None:
        if self.quiet:
            return
        if self._tqdm is None:
            now = time.monotonic()
            if now >= self._next_line:
                self._next_line = now + self.PLAIN_EVERY
                of = f" of {total}" if total else ""
                print(f"{self.desc}: {done}{of} {self.unit}s", file=sys.stderr, flush=True)
            return
        if self._bar is None:
            self._bar = self._tqdm(total=total, desc=self.desc, unit=self.unit, leave=False, file=sys.stderr)
        elif total is not None and total != self._bar.total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- inputs -------------------------------------------------------------------------------
def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def open_regular_file(path: str):
    """``path`` opened for binary reading, refused unless it is a regular file.

    Opened with ``O_NONBLOCK`` so that a FIFO cannot block the open (it is refused right
    after, by ``fstat``); reads of a regular file ignore that flag.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadInputError(f"{path}: is {_kind(mode)}; expected a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_npy(path: str, what: str = "a .npy file"):
    """(open file positioned at the data, shape, fortran_order, dtype) of a ``.npy`` file,
    its header checked against the file's size: no allocation trusts the header."""
    f = open_regular_file(path)
    try:
        magic = f.read(6)
        f.seek(0)
        if magic[:4] == b"PK\x03\x04":
            raise BadInputError(f"{path}: a .npz archive, not {what} (save one array with numpy.save)")
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        except (ValueError, EOFError, SyntaxError, TypeError) as exc:
            raise BadInputError(f"{path}: not {what} ({exc})") from exc
        if dtype.hasobject:
            raise BadInputError(f"{path}: holds Python objects, not {what}")
        count = 1
        for n in shape:
            count *= int(n)
        need = count * dtype.itemsize
        have = os.fstat(f.fileno()).st_size - f.tell()
        if need > have:
            raise BadInputError(f"{path}: its header claims shape {tuple(shape)} ({need} bytes) but the file "
                                f"holds {have} bytes of data (truncated or forged)")
        return f, tuple(int(n) for n in shape), fortran, dtype
    except BaseException:
        f.close()
        raise


def _read_into(f, out: np.ndarray, path: str) -> None:
    view = memoryview(out).cast("B")
    done = 0
    while done < view.nbytes:
        got = f.readinto(view[done:])
        if not got:
            raise BadInputError(f"{path}: ended early (changed while being read?)")
        done += got


def load_pages_file(path: str, max_pages: int | None = None) -> np.ndarray:
    """The (N, 4096) uint8 pages of a ``.npy`` file; with ``max_pages``, at most that many
    spread evenly over the file, and only those are read."""
    f, shape, fortran, dtype = open_npy(path, "an .npy file of pages")
    with f:
        if dtype != np.uint8 or len(shape) != 2 or shape[1] != PAGE or shape[0] == 0:
            raise BadInputError(f"{path}: expected an (N, 4096) uint8 array of pages, got {dtype} {shape}")
        n = shape[0]
        pick = None
        if max_pages is not None and n > max_pages:
            pick = np.linspace(0, n - 1, max_pages).astype(np.int64)
        if fortran:                       # column-major: rows are not contiguous, read it all
            data = np.empty(n * PAGE, np.uint8)
            _read_into(f, data, path)
            pages = data.reshape(shape, order="F")
            return np.ascontiguousarray(pages if pick is None else pages[pick])
        if pick is None:
            pages = np.empty(shape, np.uint8)
            _read_into(f, pages, path)
            return pages
        pages = np.empty((pick.size, PAGE), np.uint8)
        start = f.tell()
        for i, row in enumerate(pick.tolist()):
            if os.preadv(f.fileno(), [pages[i]], start + row * PAGE) != PAGE:
                raise BadInputError(f"{path}: ended early (changed while being read?)")
        return pages


# --- outputs ------------------------------------------------------------------------------
def check_output_path(path: str | None) -> None:
    """Fail before the work, not after it, when ``path`` cannot take an output.

    Never opens ``path`` itself (opening a FIFO blocks until a reader comes): an existing
    entry must be a regular file we may write, and the folder must take a new file (a
    probe file, created exclusively and removed again, shows that; nothing stays behind).
    None means "no such output"; an empty path is refused.
    """
    if path is None:
        return
    if not path:                          # "-o ''": refused before the work, not after it
        raise BadInputError("an output path is empty; name a file")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise BadInputError(f"{path}: is {_kind(st.st_mode)}; outputs go to a regular file or a new path")
        if not os.access(path, os.W_OK):
            raise OutputError(f"cannot write {path}: Permission denied")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, probe = tempfile.mkstemp(prefix=".devpool-check-", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    os.unlink(probe)


def check_plot_path(path: str | None) -> str | None:
    """``check_output_path`` for a figure, plus its format: the extension must be one
    matplotlib writes (checked before the run). Without matplotlib (the ``bench``
    extra) the figure is the one thing lost: a warning says so and None comes back,
    so the caller drops ``--plot`` and the run, its table and ``--json`` go on."""
    if path is None:
        return None
    if not path:                          # "--plot ''": refused, as every empty output is
        raise BadInputError("an output path is empty; name a file")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as exc:
        print(f"devpool: warning: no plot will be written to {path}: matplotlib is not installed ({exc}); "
              f"pip install 'devpool[bench]'", file=sys.stderr)
        return None
    formats = FigureCanvasAgg.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in formats:
        raise BadInputError(f"{path}: cannot plot to a {'.' + ext if ext else 'file without an extension'}; "
                            f"use one of {', '.join('.' + e for e in sorted(formats))}")
    check_output_path(path)
    return ext


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_atomically(path: str, write, *, mode: int | None = None) -> None:
    """Call ``write(f)`` on a fresh binary file beside ``path`` and rename it into place.

    The file is created exclusively under a random name (``mkstemp``: ``O_EXCL``, mode
    0600, so no planted link or file can be written through), gets ``mode`` (default:
    0666 less the umask), is flushed to disk, then replaces ``path``. On any failure it is
    removed and an OSError becomes :class:`OutputError` naming ``path``.
    """
    folder, base = os.path.split(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".partial", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, 0o666 & ~_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, DevpoolError):
            raise OutputError(f"writing {path} failed: {exc.strerror or exc}") from exc
        raise


def save_pages(path: str, pages: np.ndarray) -> None:
    """Pages to a ``.npy`` at ``path``, mode 0600 (they are a process's memory), atomically."""
    write_atomically(path, lambda f: np.save(f, pages), mode=0o600)


def write_outputs(result: dict, args, plot) -> None:
    """``--json`` and ``--plot`` for bench and replay (paths were checked up front).

    ``plot(result, f, fmt)`` draws the figure into the open binary file ``f``.
    """
    if getattr(args, "json", None):
        import json
        text = json.dumps(result, indent=2).encode()
        write_atomically(args.json, lambda f: f.write(text))
    if getattr(args, "plot", None):
        fmt = os.path.splitext(args.plot)[1].lower().lstrip(".")
        write_atomically(args.plot, lambda f: plot(result, f, fmt))


# the names these helpers had in _cli.py, where code outside may still look for them
_progress = progress
_check_writable = check_output_path
_save_atomically = save_pages
_load_pages_file = load_pages_file
