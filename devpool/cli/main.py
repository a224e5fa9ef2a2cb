"""The ``devpool`` command line: ``bench`` (the main job), ``capture``, ``replay``, ``info``,
and the machine's swap: ``swapon``, ``swapoff``, ``status``.

Every failure a user can cause (a bad argument, unknown backend or codec, unreadable
pid, bad input file, unwritable output) ends as one line on stderr and a non-zero exit,
no traceback: arguments are checked by the parser, paths before the run (see
``cli.io``), and what the run raises is caught in :func:`main`.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .io import (
    ProgressBar,
    check_output_path,
    check_plot_path,
    load_pages_file,
    progress,
    save_pages,
)
from .._errors import BadInputError, DevpoolError
from .replay import MAX_ACCESSES, MAX_WORKING_SET

__all__ = ["main"]


# --- helpers ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error here (exit 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_arg(lo: int, hi: int | None = None):
    """An argparse type: a decimal integer in ``lo..hi`` (``1e10`` and ``abc`` refused)."""
    bounds = f" in {lo}..{hi}" if hi is not None else f" >= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer{bounds}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected an integer{bounds}, got {value}")
        return value
    return parse


def _sweep_arg(text: str) -> list[int]:
    """``--sweep``: comma-separated batch sizes, each a positive integer."""
    parse = _int_arg(1)
    sizes = [parse(x.strip()) for x in text.split(",") if x.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected batch sizes such as 1,16,256, got {text!r}")
    return sizes


def _share_arg(text: str) -> float:
    """A share in [0, 1] (``--incompressible``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:                       # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def _pages(args) -> tuple[np.ndarray, str]:
    from .capture import capture_pid, capture_workloads
    if args.pages:
        pages, source = load_pages_file(args.pages, args.max_pages), args.pages
    elif args.pid is not None:
        with ProgressBar(f"capture pid {args.pid}", quiet=args.quiet) as bar:
            pages, source = capture_pid(args.pid, max_pages=args.max_pages, progress=bar), f"pid {args.pid}"
    else:
        if not args.quiet:
            print("capturing pages from built-in workloads (python heap, sqlite, numeric) ...", file=sys.stderr)
        pages = capture_workloads(max_pages=args.max_pages,
                                  progress=lambda pids: progress(pids, "capture", quiet=args.quiet))
        source = "built-in workloads"
    return pages, source


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
    from ..codecs import registered_codecs
    names = [cid + (" (on the device; blocks stay there over a cuda pool)" if cls.device_resident else "")
             for cid, cls in registered_codecs().items()]
    print(f"  codecs: {', '.join(names)}")
    return 0


# --- capture ------------------------------------------------------------------------------
def cmd_capture(args) -> int:
    from .capture import page_summary
    check_output_path(args.output)
    args.pages = None
    pages, source = _pages(args)
    save_pages(args.output, pages)
    s = page_summary(pages)
    print(f"{args.output}: {s['pages']} pages from {source}; zero {s['zero_pages']} "
          f"({100 * s['zero_pages'] / s['pages']:.1f} %), same-filled {s['same_filled_pages']} "
          f"({100 * s['same_filled_pages'] / s['pages']:.1f} %), incompressible {s['incompressible_pages']} "
          f"({100 * s['incompressible_pages'] / s['pages']:.1f} %), LZ4 ratio {s['lz4_ratio']:.2f}")
    return 0


# --- bench (the main job) -------------------------------------------------------------------
def cmd_bench(args) -> int:
    from .bench import run_bench
    check_output_path(args.json)
    if check_plot_path(args.plot) is None:         # no --plot, or no matplotlib: no figure
        args.plot = None
    pages, source = _pages(args)
    return run_bench(args, pages, source)


# --- replay -------------------------------------------------------------------------------
def cmd_replay(args) -> int:
    from .replay import prepare_replay, run_replay
    check_output_path(args.json)
    if check_plot_path(args.plot) is None:         # no --plot, or no matplotlib: no figure
        args.plot = None
    prepared = prepare_replay(args)          # every refusal before pages are captured
    pages, source = _pages(args)
    return run_replay(args, pages, source, prepared)


# --- check-kernels --------------------------------------------------------------------------
def cmd_check_kernels(args) -> int:
    """Compile every CUDA kernel to machine code per architecture (no GPU needed)."""
    try:
        from ..kernels._check import check_kernels, format_rows, parse_archs
        archs = parse_archs(args.arch)
    except ValueError as exc:
        raise BadInputError(str(exc)) from exc
    try:
        rows = check_kernels(archs)
    except RuntimeError as exc:
        raise DevpoolError(f"cannot compile CUDA kernels here: {exc}") from exc
    print(format_rows(rows))
    failed = [r for r in rows if r.error]
    if failed:
        built = [r for r in rows if not r.skipped]          # a module not checked is no build
        print(f"devpool check-kernels: {len(failed)} of {len(built)} kernel builds failed", file=sys.stderr)
    return 1 if failed else 0


# --- the machine's swap: swapon / swapoff / status ----------------------------------------------
def cmd_swapon(args) -> int:
    from ..swapdev import swapon
    from ..swapdev.device import human_size
    dev = swapon(args.size, backend=args.backend, compressor=args.compressor,
                 max_pool_percent=args.max_pool_percent, backing=args.backing, priority=args.priority)
    print(f"{dev.device}: devpool swap ({dev.name}), {human_size(args.size)}, backend {dev.state.get('backend_used')}, "
          f"{args.compressor}, priority {args.priority}; server pid {dev.pid}")
    for warning in dev.state.get("warnings", []):
        print(f"  note: {warning}")
    print(f"  undo: devpool swapoff {dev.device}")
    return 0


def cmd_swapoff(args) -> int:
    from ..swapdev import swapoff, swapoff_all
    if args.all == (args.device is not None):
        raise BadInputError("name one device (such as /dev/loop3) or --all")
    steps = swapoff_all() if args.all else swapoff(args.device)
    for step in steps:
        print(step)
    return 0


def cmd_status(args) -> int:
    from ..swapdev.device import format_status, status
    rows = status()
    if args.json:
        import json
        print(json.dumps(rows, indent=1))
    elif rows:
        print(format_status(rows))
    return 0


def _size_arg(text: str) -> int:
    from ..swapdev.device import parse_size
    try:
        return parse_size(text)
    except BadInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percent_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"expected a percentage in (0, 100], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="devpool", description="A compressed memory pool in GPU (or host) memory, zswap-style.")
    sub = ap.add_subparsers(dest="command", required=True)

    def page_source(p):
        g = p.add_mutually_exclusive_group()
        g.add_argument("--pages", metavar="F.npy", help="(N, 4096) uint8 pages to use")
        g.add_argument("--pid", type=_int_arg(1), help="capture the resident anonymous pages of this process")
        p.add_argument("--max-pages", type=_int_arg(1), default=None, help="use at most this many pages")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("bench", help="store real pages through Zswap, load them back, report (the main job)")
    p.add_argument("--backend", default="auto", help="auto, host, cuda or chaos (default auto)")
    p.add_argument("--compressor", default="lz4-njit", help="codec id (default lz4-njit)")
    p.add_argument("--batch", type=_int_arg(1), default=1024, help="pages per store/load batch")
    p.add_argument("--sweep", type=_sweep_arg, default="1,16,256,1024,4096", help="batch sizes for the plot")
    p.add_argument("--json", metavar="F", help="write machine-readable results")
    p.add_argument("--plot", metavar="F.png", help="plot throughput against batch size")
    page_source(p)
    p.set_defaults(func=cmd_bench, max_pages=16384)

    p = sub.add_parser("capture", help="capture real pages to an .npy file")
    p.add_argument("--pid", type=_int_arg(1), help="process to capture (default: built-in workloads)")
    p.add_argument("-o", "--output", required=True, metavar="F.npy")
    p.add_argument("--max-pages", type=_int_arg(1), default=None, help="stop after this many pages")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("replay", help="memory-pressure replay: a working set larger than RAM, evicted into Zswap")
    p.add_argument("--backend", default="auto")
    p.add_argument("--compressor", default="lz4-njit")
    p.add_argument("--pattern", default="zipf", help="seq, loop, zipf, or a .npy/.txt trace of page numbers")
    p.add_argument("--working-set", type=_int_arg(1, MAX_WORKING_SET), default=8192, help="distinct pages touched")
    p.add_argument("--ram-pages", type=_int_arg(1, MAX_WORKING_SET), default=2048, help="RAM budget in pages")
    p.add_argument("--accesses", type=_int_arg(1, MAX_ACCESSES), default=40000)
    p.add_argument("--pool-limit-pages", type=_int_arg(1, MAX_WORKING_SET), default=1024,
                   help="zswap limit, in pages of pool memory (writeback beyond it)")
    p.add_argument("--incompressible", type=_share_arg, default=None,
                   help="share of pages replaced by random (incompressible) data")
    p.add_argument("--seed", type=_int_arg(0), default=0)
    p.add_argument("--real", action="store_true",
                   help="also play the trace on real memory (swap_region: userfaultfd, faults served from zswap)")
    p.add_argument("--json", metavar="F")
    p.add_argument("--plot", metavar="F.png", help="pool size and hit rate over time")
    page_source(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("check-kernels", help="compile every CUDA kernel to machine code (no GPU needed): "
                       "registers, spills, stack, occupancy")
    p.add_argument("--arch", default="sm_80,sm_90", help="architectures, comma-separated (default sm_80,sm_90)")
    p.set_defaults(func=cmd_check_kernels)

    p = sub.add_parser("swapon", help="swap the whole machine into a pool: a FUSE file served from a "
                       "Zswap, a loop device, mkswap, swapon (root)")
    p.add_argument("--size", type=_size_arg, default="4G", help="swap device size, such as 4G (default 4G)")
    p.add_argument("--backend", choices=("auto", "host", "cuda", "chaos"), default="auto")
    p.add_argument("--compressor", default="lz4", help="codec id (default lz4)")
    p.add_argument("--max-pool-percent", type=_percent_arg, default=20,
                   help="the pool's limit, percent of RAM as zswap's (default 20); beyond it pages go to the backing file")
    p.add_argument("--backing", metavar="FILE", default=None,
                   help="swap file for pages zswap refuses (default: one under /var/tmp, removed with the device; "
                        "'none' for none)")
    p.add_argument("--priority", type=_int_arg(0, 32767), default=100, help="swap priority (default 100)")
    p.set_defaults(func=cmd_swapon)

    p = sub.add_parser("swapoff", help="undo devpool swap devices: swapoff, loop detach, unmount, server exit")
    p.add_argument("device", nargs="?", help="the loop device (or name) that `devpool status` lists")
    p.add_argument("--all", action="store_true", help="every devpool swap device, and what crashed runs left")
    p.set_defaults(func=cmd_swapoff)

    p = sub.add_parser("status", help="devpool swap devices, zramctl-style")
    p.add_argument("--json", action="store_true", help="every statistic, as JSON")
    p.set_defaults(func=cmd_status)

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
    except MemoryError as exc:
        print(f"devpool {args.command}: error: out of memory ({exc or 'allocation failed'}); "
              f"try fewer pages (--max-pages) or a smaller working set", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"devpool {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
