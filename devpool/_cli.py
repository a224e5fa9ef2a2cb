"""The ``devpool`` command line: ``bench`` (the main job), ``capture``, ``replay``, ``info``.

Every failure a user can cause (unknown backend or codec, unreadable pid, bad input
file, unwritable output) ends as one line on stderr and a non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ._errors import BadInputError, DevpoolError

__all__ = ["main"]


# --- helpers ------------------------------------------------------------------------------
def _progress(iterable, desc: str, total: int | None = None, quiet: bool = False):
    """tqdm when installed and wanted, else the plain iterable."""
    if quiet:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)


def _check_writable(path: str | None) -> None:
    """Fail before the work, not after it, when an output path cannot be written.

    Leaves nothing behind: a file created only to test the path is removed again.
    """
    if path:
        existed = os.path.exists(path)
        with open(path, "ab"):
            pass
        if not existed:
            os.unlink(path)


def _save_atomically(path: str, pages: np.ndarray) -> None:
    """Write the .npy beside its final name and rename it into place: a failure or a
    crash never leaves a partial file that looks complete."""
    tmp = f"{path}.partial-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.save(f, pages)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_pages_file(path: str) -> np.ndarray:
    try:
        pages = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise BadInputError(f"{path}: not a readable .npy file ({exc})") from exc
    if pages.dtype != np.uint8 or pages.ndim != 2 or pages.shape[1] != 4096 or pages.shape[0] == 0:
        raise BadInputError(f"{path}: expected an (N, 4096) uint8 array of pages, got {pages.dtype} {pages.shape}")
    return np.ascontiguousarray(pages)


def _pages(args) -> tuple[np.ndarray, str]:
    from ._capture import capture_pid, capture_workloads
    if args.pages:
        pages, source = _load_pages_file(args.pages), args.pages
    elif args.pid:
        pages, source = capture_pid(args.pid), f"pid {args.pid}"
    else:
        if not args.quiet:
            print("capturing pages from built-in workloads (python heap, sqlite, numeric) ...", file=sys.stderr)
        pages = capture_workloads(progress=lambda pids: _progress(pids, "capture", quiet=args.quiet))
        source = "built-in workloads"
    if args.max_pages and pages.shape[0] > args.max_pages:
        pages = pages[np.linspace(0, pages.shape[0] - 1, args.max_pages).astype(np.int64)]
    return pages, source


def write_outputs(result: dict, args, plot) -> None:
    """``--json`` and ``--plot`` for bench and replay (paths were checked up front)."""
    if getattr(args, "json", None):
        import json
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if getattr(args, "plot", None):
        plot(result, args.plot)


# --- info ---------------------------------------------------------------------------------
def cmd_info(args) -> int:
    import platform

    import devpool
    print(f"devpool {devpool.__version__}  (python {platform.python_version()}, {platform.machine()})")
    for name, (ok, why) in devpool.available_backends().items():
        print(f"  backend {name:<6} {'available' if ok else 'unavailable'}: {why}")
    with devpool.open_pool("auto", 1 << 20) as pool:
        st = pool.stats()
        print(f"  auto -> {st['backend']} ({st.get('device', '')})")
    from ._codecs import registered_codecs
    names = [cid + (" (on the device; blocks stay there over a cuda pool)" if cls.device_resident else "")
             for cid, cls in registered_codecs().items()]
    print(f"  codecs: {', '.join(names)}")
    return 0


# --- capture ------------------------------------------------------------------------------
def cmd_capture(args) -> int:
    from ._capture import page_summary
    _check_writable(args.output)
    args.pages = None
    pages, source = _pages(args)
    _save_atomically(args.output, pages)
    s = page_summary(pages)
    print(f"{args.output}: {s['pages']} pages from {source}; zero {s['zero_pages']} "
          f"({100 * s['zero_pages'] / s['pages']:.1f} %), same-filled {s['same_filled_pages']} "
          f"({100 * s['same_filled_pages'] / s['pages']:.1f} %), incompressible {s['incompressible_pages']} "
          f"({100 * s['incompressible_pages'] / s['pages']:.1f} %), LZ4 ratio {s['lz4_ratio']:.2f}")
    return 0


# --- bench (the main job) -------------------------------------------------------------------
def cmd_bench(args) -> int:
    from ._bench import run_bench
    _check_writable(args.json)
    _check_writable(args.plot)
    pages, source = _pages(args)
    return run_bench(args, pages, source)


# --- replay -------------------------------------------------------------------------------
def cmd_replay(args) -> int:
    from ._replay import run_replay
    _check_writable(args.json)
    _check_writable(args.plot)
    pages, source = _pages(args)
    return run_replay(args, pages, source)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="devpool", description="A compressed memory pool in GPU (or host) memory, zswap-style.")
    sub = ap.add_subparsers(dest="command", required=True)

    def page_source(p):
        g = p.add_mutually_exclusive_group()
        g.add_argument("--pages", metavar="F.npy", help="(N, 4096) uint8 pages to use")
        g.add_argument("--pid", type=int, help="capture the resident anonymous pages of this process")
        p.add_argument("--max-pages", type=int, default=None, help="use at most this many pages")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("bench", help="store real pages through Zswap, load them back, report (the main job)")
    p.add_argument("--backend", default="auto", help="auto, host, cuda or chaos (default auto)")
    p.add_argument("--compressor", default="lz4-njit", help="codec id (default lz4-njit)")
    p.add_argument("--batch", type=int, default=1024, help="pages per store/load batch")
    p.add_argument("--sweep", default="1,16,256,1024,4096", help="batch sizes for the plot")
    p.add_argument("--json", metavar="F", help="write machine-readable results")
    p.add_argument("--plot", metavar="F.png", help="plot throughput against batch size")
    page_source(p)
    p.set_defaults(func=cmd_bench, max_pages=16384)

    p = sub.add_parser("capture", help="capture real pages to an .npy file")
    p.add_argument("--pid", type=int, help="process to capture (default: built-in workloads)")
    p.add_argument("-o", "--output", required=True, metavar="F.npy")
    p.add_argument("--max-pages", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("replay", help="memory-pressure replay: a working set larger than RAM, evicted into Zswap")
    p.add_argument("--backend", default="auto")
    p.add_argument("--compressor", default="lz4-njit")
    p.add_argument("--pattern", default="zipf", help="seq, loop, zipf, or a .npy/.txt trace of page numbers")
    p.add_argument("--working-set", type=int, default=8192, help="distinct pages touched")
    p.add_argument("--ram-pages", type=int, default=2048, help="RAM budget in pages")
    p.add_argument("--accesses", type=int, default=40000)
    p.add_argument("--pool-limit-pages", type=int, default=1024,
                   help="zswap limit, in pages of pool memory (writeback beyond it)")
    p.add_argument("--incompressible", type=float, default=None,
                   help="share of pages replaced by random (incompressible) data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", action="store_true",
                   help="also play the trace on real memory (swap_region: userfaultfd, faults served from zswap)")
    p.add_argument("--json", metavar="F")
    p.add_argument("--plot", metavar="F.png", help="pool size and hit rate over time")
    page_source(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("info", help="version, backends available and why not, device name")
    p.set_defaults(func=cmd_info)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DevpoolError as exc:
        print(f"devpool {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"devpool {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"devpool {args.command}: error: {exc} (pip install 'devpool[bench]')", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"devpool {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
