"""The ``devpool`` command line: ``bench`` (the main job), ``capture``, ``replay``, ``info``.

Every failure a user can cause (unknown backend or codec, unreadable pid, bad input
file, unwritable output) ends as one line on stderr and a non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import sys

from ._errors import DevpoolError

__all__ = ["main"]


def cmd_info(args) -> int:
    import platform

    import devpool
    print(f"devpool {devpool.__version__}  (python {platform.python_version()}, {platform.machine()})")
    for name, (ok, why) in devpool.available_backends().items():
        print(f"  backend {name:<6} {'available' if ok else 'unavailable'}: {why}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="devpool", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
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
        print(f"devpool {args.command}: error: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"devpool {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
