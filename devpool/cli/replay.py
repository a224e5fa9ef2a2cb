"""``devpool replay``: memory pressure played on real pages.

A working set larger than a RAM budget is touched in some pattern; resident pages form
an LRU list, and when RAM is over budget the coldest are evicted (in batches, as
kswapd does) into :class:`Zswap`, which has a pool limit and a backing swap file, so
writeback happens too. A touch of a non-resident page is a fault: it is served from
zswap (a hit), from the backing file, or is a first touch. Every page that comes back
is checked byte for byte. These are the kernel zswap selftests' scenarios — usage
grows under a small memory limit, pages come back from zswap, writeback happens at the
limit, incompressible data is handled — on real data.
"""

from __future__ import annotations

import collections
import io
import os
import tempfile
import time
import warnings

import numpy as np

from ..pool.backends import open_pool
from ..pool.pool import DEFAULT_SEGMENT_BYTES
from .._checks import check_int, check_real
from .io import open_npy, open_regular_file, progress, write_outputs
from .._errors import BadInputError, DevpoolError
from ..zswap.frontend import Zswap

__all__ = ["MAX_ACCESSES", "MAX_WORKING_SET", "load_trace", "make_trace", "prepare_replay", "run_replay"]

#: pages evicted together once RAM is over budget: a store_batch per fault would model
#: no batching at all, a large one evicts pages that are about to be touched again
EVICT_BATCH = 32
#: points of the pool-size / hit-rate timeline (the plot), whatever the trace's length
SAMPLES = 200
#: the largest working set, in pages: its contents are held in memory (4 GiB at this size)
MAX_WORKING_SET = 1 << 20
#: the longest trace (an int64 each: 800 MB, and hours of replay in Python)
MAX_ACCESSES = 100_000_000


def make_trace(pattern: str, working_set: int, ram_pages: int, accesses: int,
               rng: np.random.Generator) -> np.ndarray:
    """Page numbers to touch: seq (repeated scans), loop (a cycle just over RAM),
    zipf (a hot set), or a file of page numbers (.npy or whitespace-separated text)."""
    if pattern == "seq":
        return np.arange(accesses) % working_set
    if pattern == "loop":
        span = min(working_set, max(2, int(ram_pages * 1.25)))
        return np.arange(accesses) % span
    if pattern == "zipf":
        # bounded Zipf over the working set, exponent 0.9: a hot set plus a long tail
        weights = 1.0 / np.arange(1, working_set + 1) ** 0.9
        ranks = rng.choice(working_set, size=accesses, p=weights / weights.sum())
        return rng.permutation(working_set)[ranks]
    if os.path.exists(pattern):
        return load_trace(pattern)
    raise BadInputError(f"unknown pattern {pattern!r}: use seq, loop, zipf or a trace file")


def load_trace(path: str) -> np.ndarray:
    """The page numbers of a trace file (``.npy`` of integers, or whitespace-separated
    text), checked: at least one, at most MAX_ACCESSES, each in 0..MAX_WORKING_SET-1."""
    if path.endswith(".npy"):
        f, shape, _, dtype = open_npy(path, "a .npy trace of page numbers")
        with f:
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if dtype.kind not in "iu":
                raise BadInputError(f"{path}: a trace holds integer page numbers, got {dtype}")
            if len(shape) != 1:
                raise BadInputError(f"{path}: a trace is a 1-D array of page numbers, got shape {shape}")
            if count > MAX_ACCESSES:
                raise BadInputError(f"{path}: {count} accesses; a trace holds at most {MAX_ACCESSES}")
            f.seek(0)
            trace = np.load(f, allow_pickle=False)
        if trace.ndim != 1:                   # the file changed since its header was read
            raise BadInputError(f"{path}: a trace is a 1-D array of page numbers, got shape {trace.shape}")
    else:
        with open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > 24 * MAX_ACCESSES:
                raise BadInputError(f"{path}: {size} bytes is more than a trace of {MAX_ACCESSES} accesses")
            try:
                with warnings.catch_warnings():          # "input contained no data": refused below
                    warnings.simplefilter("ignore", UserWarning)
                    trace = np.loadtxt(io.TextIOWrapper(f, encoding="ascii", errors="replace"),
                                       dtype=np.int64, ndmin=1)
            except (ValueError, OverflowError) as exc:
                raise BadInputError(f"{path}: not a trace of page numbers ({exc})") from exc
    trace = np.asarray(trace).reshape(-1)
    if trace.size == 0:
        raise BadInputError(f"{path}: the trace is empty")
    if trace.size > MAX_ACCESSES:
        raise BadInputError(f"{path}: {trace.size} accesses; a trace holds at most {MAX_ACCESSES}")
    if trace.dtype.kind not in "iu" or (trace < 0).any():
        raise BadInputError(f"{path}: a trace holds non-negative integer page numbers")
    top = int(trace.max())
    if top >= MAX_WORKING_SET:
        raise BadInputError(f"{path}: page number {top} is beyond the largest working set "
                            f"({MAX_WORKING_SET} pages, numbered from 0)")
    return trace.astype(np.int64)


def prepare_replay(args) -> tuple[np.ndarray, np.random.Generator]:
    """Everything ``devpool replay`` can refuse, checked before any work (pages are
    captured, the simulation runs): the arguments, the pattern (a trace file is read
    and checked here) and, with ``--real``, the real region's pool and limit. Returns
    the trace and the random generator that made it (the replay draws on it after)."""
    for name in ("working_set", "ram_pages", "pool_limit_pages"):
        check_int(getattr(args, name), "--" + name.replace("_", "-"), lo=1, hi=MAX_WORKING_SET)
    check_int(args.accesses, "--accesses", lo=1, hi=MAX_ACCESSES)
    rng = np.random.default_rng(check_int(args.seed, "--seed", lo=0))
    if args.incompressible is not None:
        check_real(args.incompressible, "--incompressible", lo=0, hi=1)
    trace = make_trace(args.pattern, args.working_set, args.ram_pages, args.accesses, rng)
    _dry_open(args, _segment_bytes(args))              # backend, codec, limit: as simulated
    if getattr(args, "real", False):
        try:
            _dry_open(args, None)                      # as the real region opens them
        except BadInputError as exc:
            least = DEFAULT_SEGMENT_BYTES // 4096
            hint = (f"; its pool has {least}-page segments: use --pool-limit-pages {least} or more"
                    if args.pool_limit_pages < least else "")
            raise BadInputError(f"--real: the real region would refuse this run: {exc}{hint}") from exc
    return trace, rng


def _segment_bytes(args) -> int:
    """The simulation's pool segments: at most an eighth of the limit (16..256 KiB), so
    the limit is felt in fine steps rather than whole 256 KiB segments."""
    limit = args.pool_limit_pages * 4096
    return min(256 << 10, max(16 << 10, 1 << max(12, (limit // 8).bit_length() - 1)))


def _open_zswap(args, segment_bytes: int | None, backing=None) -> tuple:
    """``(pool, zswap)`` of a replay: the limit, backend and codec of ``args``; a pool of
    ``segment_bytes`` segments (None: the pool's default, as ``replay_real``'s region
    opens it, with the same capacity)."""
    limit = args.pool_limit_pages * 4096
    options = {} if segment_bytes is None else {"segment_bytes": segment_bytes}
    pool = open_pool(args.backend, capacity_bytes=max(16 << 20, 4 * limit), **options)
    try:
        return pool, Zswap(pool, compressor=args.compressor, max_pool_bytes=limit, backing=backing)
    except BaseException:
        pool.close()
        raise


def _dry_open(args, segment_bytes: int | None) -> None:
    """Open and close what a run will open, so that what it would refuse is refused now."""
    pool, zs = _open_zswap(args, segment_bytes)
    zs.close()
    pool.close()


def run_replay(args, pages: np.ndarray, source: str, prepared=None) -> int:
    """Replay ``prepared`` (what :func:`prepare_replay` returned; made here if None)."""
    trace, rng = prepared if prepared is not None else prepare_replay(args)
    if pages.shape[0] == 0:
        raise BadInputError("no pages to replay")
    ws = int(trace.max()) + 1
    content = pages[np.arange(ws) % pages.shape[0]]
    if args.incompressible:
        noisy = rng.random(ws) < args.incompressible
        content[noisy] = rng.integers(0, 256, (int(noisy.sum()), 4096), dtype=np.uint8)

    tmp = tempfile.TemporaryDirectory(prefix="devpool-replay-")
    pool, zs = _open_zswap(args, _segment_bytes(args), backing=os.path.join(tmp.name, "swap"))
    # warm-up (compiles the codec) on an offset the trace cannot reach
    spare = ws + 1
    zs.store_batch([spare], content[:1])
    zs.load(spare)
    resident: collections.OrderedDict[int, None] = collections.OrderedDict()
    counts = collections.Counter()
    lat = {"zswap": [], "backing": []}
    timeline = []
    every = max(1, trace.size // SAMPLES)
    try:
        for i, p in enumerate(progress(trace.tolist(), "replay", total=trace.size, quiet=args.quiet)):
            if p in resident:
                resident.move_to_end(p)
                counts["ram_hits"] += 1
            else:
                kind = zs.entry_kind(p)
                if kind is None:
                    counts["first_touch"] += 1
                else:
                    t = time.perf_counter()
                    page = zs.load(p)
                    dt = time.perf_counter() - t
                    src = "backing" if kind == "backing" else "zswap"
                    counts[f"{src}_hits"] += 1
                    lat[src].append(dt)
                    if not np.array_equal(page, content[p]):
                        raise DevpoolError(f"page {p} came back different from what was evicted")
                resident[p] = None
                if len(resident) > args.ram_pages:
                    victims = [resident.popitem(last=False)[0]
                               for _ in range(min(len(resident), len(resident) - args.ram_pages + EVICT_BATCH - 1))]
                    v = np.array(victims, np.int64)
                    zs.store_batch(v, content[v])
                    counts["evicted"] += v.size
            if i % every == 0:
                st = zs.stats()
                faults = counts["zswap_hits"] + counts["backing_hits"]
                timeline.append((i, st["pool_total_size"], counts["zswap_hits"] / faults if faults else 0.0,
                                 st["written_back_pages"]))
        st = zs.stats()
    finally:
        zs.close()
        pool.close()
        tmp.cleanup()

    def pct(xs, q):
        return float(np.percentile(xs, q) * 1e6) if xs else 0.0

    swap_faults = counts["zswap_hits"] + counts["backing_hits"]
    res = {
        "pattern": args.pattern, "working_set": ws, "ram_pages": args.ram_pages, "accesses": int(trace.size),
        "pool_limit_pages": args.pool_limit_pages, "backend": st["backend"], "compressor": st["compressor"],
        "source": source, "faults": swap_faults + counts["first_touch"], "first_touch": counts["first_touch"],
        "zswap_hits": counts["zswap_hits"], "backing_reads": counts["backing_hits"], "ram_hits": counts["ram_hits"],
        "evicted": counts["evicted"], "zswap_hit_rate": counts["zswap_hits"] / swap_faults if swap_faults else 0.0,
        "written_back_pages": st["written_back_pages"], "pool_limit_hit": st["pool_limit_hit"],
        "backing_direct_writes": st["backing_direct_writes"], "reject_compress_poor": st["reject_compress_poor"],
        "stored_incompressible_pages": st["stored_incompressible_pages"],
        "zswap_fault_p50_us": pct(lat["zswap"], 50), "zswap_fault_p99_us": pct(lat["zswap"], 99),
        "backing_fault_p50_us": pct(lat["backing"], 50), "backing_fault_p99_us": pct(lat["backing"], 99),
        "timeline": timeline,
    }
    print(f"devpool replay — {res['pattern']}: {res['accesses']} accesses over {ws} pages, RAM {args.ram_pages} pages, "
          f"zswap limit {args.pool_limit_pages} pages, backend {res['backend']}, {res['compressor']}")
    print(f"  faults {res['faults']} (first touch {res['first_touch']}, from zswap {res['zswap_hits']}, "
          f"from backing file {res['backing_reads']}); zswap hit rate {100 * res['zswap_hit_rate']:.1f} %")
    print(f"  evicted {res['evicted']}, written back {res['written_back_pages']}, pool limit hit "
          f"{res['pool_limit_hit']}x, refused straight to file {res['backing_direct_writes']}")
    print(f"  fault latency: zswap p50 {res['zswap_fault_p50_us']:.0f} us p99 {res['zswap_fault_p99_us']:.0f} us; "
          f"backing p50 {res['backing_fault_p50_us']:.0f} us p99 {res['backing_fault_p99_us']:.0f} us")
    if getattr(args, "real", False):
        from .replay_real import print_replay_real, replay_real
        res["real"] = replay_real(args, trace, content)
        print_replay_real(res["real"])
    write_outputs(res, args, _plot)
    return 0


def _plot(r: dict, f, fmt: str) -> None:
    """Pool size and hit rate over the run, written to the open file ``f`` as ``fmt``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = np.array(r["timeline"], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(t[:, 0], t[:, 1] / 2**20, label="pool_total_size (MiB)", c="tab:blue")
    ax.axhline(r["pool_limit_pages"] * 4096 / 2**20, ls="--", c="tab:blue", alpha=0.5, label="zswap limit")
    ax.set_xlabel("access")
    ax.set_ylabel("MiB")
    ax2 = ax.twinx()
    ax2.plot(t[:, 0], 100 * t[:, 2], c="tab:orange", label="zswap hit rate (%)")
    ax2.set_ylabel("zswap hits / swap faults (%)")
    ax2.set_ylim(0, 105)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="lower right")
    ax.set_title(f"devpool replay: {r['pattern']}, RAM {r['ram_pages']} pages, limit {r['pool_limit_pages']} pages")
    fig.tight_layout()
    fig.savefig(f, format=fmt, dpi=110)
    plt.close(fig)
