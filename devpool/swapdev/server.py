"""The swap device's server process: one file served over FUSE from a ``Zswap``.

Linux's swap core writes pages to the loop device over this file, and reads them back;
each request becomes a zswap verb, with the rules of Linux swap with zswap in front:

- a WRITE of n pages is one ``store_batch`` (a few: ``store`` page by page; whole-page
  WRITEs waiting together, gathered by the FUSE loop: one call for all). A page zswap refuses
  (limit, poor compression) goes to the backing file, as the swap core does after a
  failed ``zswap_store`` (``Zswap(backing=...)`` does that). Without a backing file a
  refused page is not kept, and the write fails (EIO): the kernel keeps the page in RAM
  and tries again later, as with a full zram.
- a READ is ``load(..., keep=True)`` for one page, ``load_batch(..., keep=True)`` for
  more: the kernel may read a slot more than once (swap cache, readahead, swapoff), so a
  read never drops a page. Pages leave the pool when their slot is discarded (FALLOCATE
  punch-hole, from ``swapon --discard=pages``: each whole page is invalidated, partial
  ones are zeroed) or overwritten.
- a slot never written reads as zeros (what a fresh device holds); a slot written whose
  page cannot be produced (a corrupt block, a failed file read, a failed write) is EIO,
  never zeros.

Deadlock safety: the process locks its memory (``mlockall``: its pool, buffers and code
can never be swapped out to itself), opens its pool after that so the pool's memory is
reserved and resident from the start, preallocates its request buffers, asks for
``PR_SET_IO_FLUSHER`` (the kernel then never recurses into I/O to reclaim memory for it;
a refusal is reported), and moves itself into the root memory cgroup, out of any
pressured workload's cgroup.

Started by :mod:`devpool.swapdev.device` as ``python -m devpool.swapdev.server CONFIG``;
it prints one JSON line on stdout once the mount answers (``ready``) or why it could not,
then answers ``stats`` on its control socket until the filesystem is unmounted.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import socket
import sys
import threading
import time

import numpy as np

from . import fuse

PAGE = 4096
#: requests of up to this many pages are served page by page (``store`` / ``load``), longer
#: ones by one ``store_batch`` / ``load_batch``: a batch call has a fixed cost about ten
#: single calls' (measured here: 9-page writes 70 us/page batched, 42 page by page; even
#: at 16 pages, 47 against 42; 64 pages 27 against 45), and the kernel's swap writes
#: arrive 9 pages a request on average under a small cgroup's reclaim, its reads 1-8
SERIAL_MAX = 16
#: fault-service times kept for the percentiles (a ring, preallocated)
LATENCY_RING = 8192
PR_SET_IO_FLUSHER = 57
MCL_CURRENT, MCL_FUTURE = 1, 2


class ZswapFile(fuse.FileOps):
    """The served file: byte ``o`` of the device is byte ``o % 4096`` of the page at swap
    offset ``o // 4096`` in ``zs``. ``written`` marks slots holding a page (so a slot never
    written, or discarded, reads as zeros, and one written reads from zswap or fails).

    Thread-safe for ``readers`` threads: each operation runs whole under one lock (a
    store and its ``written`` mark, a punch, the counters, stay together), and each
    reader thread gets reply pages of its own (preallocated here: a read hands its pages
    to the reply after the lock is released)."""

    def __init__(self, zs, size: int, readers: int = 1):
        self.zs = zs
        self.size = size
        self.nr_pages = size // PAGE
        self.written = np.zeros(self.nr_pages, np.bool_)
        self.lock = threading.Lock()
        self._replies = [np.zeros((fuse.MAX_PAGES + 2, PAGE), np.uint8) for _ in range(readers)]
        self._mine = threading.local()                                 # this thread's reply pages
        self.scratch = np.zeros((fuse.MAX_PAGES + 2, PAGE), np.uint8)   # used under the lock only
        self.lat = np.zeros(LATENCY_RING, np.int64)
        self.c = dict.fromkeys((
            "reads", "writes", "read_pages", "written_pages", "discards", "discarded_pages",
            "read_errors", "write_errors", "zero_reads", "faults_timed", "read_ns", "write_ns",
            "stores"), 0)                        # stores: zswap calls (a batch, or a page by page run)

    # --- reads ----------------------------------------------------------------------------
    def _load(self, first: int, n: int, out: np.ndarray) -> None:
        """Pages ``first .. first+n-1`` into ``out[:n]``; OSError(EIO) if one is lost."""
        w = self.written[first:first + n]
        try:
            if n <= SERIAL_MAX:
                for i in range(n):
                    if w[i]:
                        self.zs.load(first + i, out=out[i], keep=True)
                    else:
                        out[i] = 0
                        self.c["zero_reads"] += 1
            elif w.all():
                self.zs.load_batch(np.arange(first, first + n), out=out[:n], keep=True)
            else:
                idx = np.flatnonzero(w)
                out[:n] = 0
                if idx.size:
                    out[idx] = self.zs.load_batch(first + idx, keep=True)
                self.c["zero_reads"] += n - idx.size
        except Exception as exc:           # EntryNotFound, CorruptData, Writeback, Closed, a device error
            self.c["read_errors"] += 1
            raise OSError(errno.EIO, f"swap slots {first}..{first + n - 1}: {exc}") from exc

    def _reply_pages(self) -> np.ndarray:
        """This thread's reply pages (under the lock: the first call takes a free set)."""
        pages = getattr(self._mine, "pages", None)
        if pages is None:
            if not self._replies:
                raise OSError(errno.EBUSY, "more reader threads than this file was made for")
            pages = self._mine.pages = self._replies.pop()
        return pages

    def read(self, offset: int, size: int):
        first = offset // PAGE
        n = (offset + size + PAGE - 1) // PAGE - first
        with self.lock:
            batch = self._reply_pages()
            self.c["reads"] += 1
            self.c["read_pages"] += n
            self._load(first, n, batch)
        start = offset - first * PAGE
        return batch.reshape(-1)[start:start + size]

    # --- writes ---------------------------------------------------------------------------
    def write(self, offset: int, data) -> None:
        with self.lock:
            self._write(offset, data)

    def _write(self, offset: int, data) -> None:
        size = len(data)
        first = offset // PAGE
        n = (offset + size + PAGE - 1) // PAGE - first
        self.c["writes"] += 1
        self.c["written_pages"] += n
        if offset % PAGE or size % PAGE:         # not whole pages: read, patch, store
            pages = self.scratch[:n]
            self._load(first, n, pages)
            start = offset - first * PAGE
            pages.reshape(-1)[start:start + size] = np.frombuffer(data, np.uint8)
        else:
            pages = np.frombuffer(data, np.uint8).reshape(n, PAGE)
        self._store(first, pages)

    def _store(self, first: int, pages: np.ndarray) -> None:
        """Pages at slots ``first ..``; OSError(EIO) if a page was not kept."""
        n = pages.shape[0]
        ok = self._store_at(np.arange(first, first + n), pages)
        if not ok.all():                         # no backing file: a refused page is not kept
            self.c["write_errors"] += 1
            raise OSError(errno.EIO, f"zswap refused {int((~ok).sum())} page(s) and there is no backing file")

    def _store_at(self, offs: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """Pages at slots ``offs`` (distinct), page by page or as one batch; the mask of
        those kept. A failed backing-file write is OSError(EIO)."""
        n = offs.size
        self.c["stores"] += 1
        try:
            if n <= SERIAL_MAX:
                store = self.zs.store
                ok = np.array([store(o, pages[i]) for i, o in enumerate(offs.tolist())])
            else:
                ok = self.zs.store_batch(offs, pages)
            if self.zs.backing is not None:
                ok[:] = True                     # refused pages are in the backing file
        except Exception as exc:                 # a backing write failed: those slots hold nothing
            self.written[offs] = True            # ... and read as EIO, never zeros
            self.c["write_errors"] += 1
            raise OSError(errno.EIO, f"swap slots {offs[0]}..{offs[-1]}: {exc}") from exc
        self.written[offs] = True
        return ok

    def write_gathered(self, offsets: list, sizes: list, data) -> list:
        """Whole-page writes gathered by the FUSE loop: one ``store_batch`` for all (or
        page by page, when they are few pages together); a write fails (EIO) where one
        of its pages was not kept."""
        firsts = np.array(offsets, np.int64) // PAGE
        counts = np.array(sizes, np.int64) // PAGE
        ends = np.cumsum(counts)
        total = int(ends[-1])
        offs = np.arange(total) + np.repeat(firsts - (ends - counts), counts)
        pages = np.frombuffer(data, np.uint8).reshape(total, PAGE)
        with self.lock:
            self.c["writes"] += len(offsets)
            self.c["written_pages"] += total
            try:
                ok = self._store_at(offs, pages)
            except OSError:
                return [errno.EIO] * len(offsets)
            if ok.all():
                return [0] * len(offsets)
            refused = np.add.reduceat(~ok, ends - counts)         # per write
            self.c["write_errors"] += int(np.count_nonzero(refused))
            return [errno.EIO if r else 0 for r in refused.tolist()]

    # --- discards -------------------------------------------------------------------------
    def punch(self, offset: int, length: int) -> None:
        with self.lock:
            self._punch(offset, length)

    def _punch(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        self.c["discards"] += 1
        end = offset + length
        lo, hi = -(-offset // PAGE), end // PAGE          # whole pages inside
        if lo < hi:
            offs = lo + np.flatnonzero(self.written[lo:hi])
            if offs.size:
                self.zs.invalidate_batch(offs)
                self.written[offs] = False
                self.c["discarded_pages"] += offs.size
        # a partial page at either end is zeroed in place (read, patch, store)
        partial = []
        if offset % PAGE:
            partial.append((offset, min(end, (offset // PAGE + 1) * PAGE)))
        if end % PAGE and (end // PAGE != offset // PAGE or not offset % PAGE):
            partial.append((max(offset, end // PAGE * PAGE), end))
        for a, b in partial:
            if self.written[a // PAGE]:
                page = self.scratch[:1]
                self._load(a // PAGE, 1, page)
                page.reshape(-1)[a % PAGE:a % PAGE + (b - a)] = 0
                self._store(a // PAGE, page)

    def warm_up(self) -> None:
        """Run every path once (batched and page by page: write, read, punch) on the last
        slots, then forget them: numba loads its compiled code at a first call, which
        takes a second and allocates memory, and that must not happen while the kernel
        waits on a swap-in under memory pressure."""
        n = min(SERIAL_MAX + 2, self.nr_pages)
        first = self.nr_pages - n
        pages = self.scratch[:n]
        pages[:] = np.arange(PAGE, dtype=np.uint8) // 7                     # compressible
        pages[::3] = np.random.default_rng(0).integers(0, 256, (len(pages[::3]), PAGE), np.uint8)
        for k in (n, 1):
            self.write(first * PAGE, memoryview(pages[:k].reshape(-1)))
            self.read(first * PAGE, k * PAGE)
        self.punch(first * PAGE, n * PAGE)
        self.c = dict.fromkeys(self.c, 0)
        with self.lock:                          # the reply pages go back for the reader threads
            self._replies.append(self._mine.__dict__.pop("pages"))

    # --- statistics -----------------------------------------------------------------------
    def served(self, opcode: int, nanoseconds: int) -> None:
        with self.lock:
            self._served(opcode, nanoseconds)

    def _served(self, opcode: int, nanoseconds: int) -> None:
        if opcode == fuse.READ:
            self.lat[self.c["faults_timed"] % LATENCY_RING] = nanoseconds
            self.c["faults_timed"] += 1
            self.c["read_ns"] += nanoseconds
        elif opcode == fuse.WRITE:
            self.c["write_ns"] += nanoseconds

    def stats(self) -> dict:
        with self.lock:
            return self._stats()

    def _stats(self) -> dict:
        st = dict(self.c)
        k = min(self.c["faults_timed"], LATENCY_RING)
        lat = np.sort(self.lat[:k]) / 1000 if k else None
        st["read_service_p50_us"] = float(lat[k // 2]) if k else None
        st["read_service_p90_us"] = float(lat[int(k * 0.9)]) if k else None
        st["zswap"] = {key: (v.item() if hasattr(v, "item") else v) for key, v in self.zs.stats().items()}
        st["slots_written"] = int(self.written.sum())
        return st


# --- deadlock safety -----------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def lock_memory() -> str | None:
    """mlockall(current and future); None, or why it failed."""
    if _libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        return f"mlockall refused: {os.strerror(ctypes.get_errno())}"
    return None


def ask_io_flusher() -> str | None:
    """PR_SET_IO_FLUSHER; None, or why it was refused (it needs CAP_SYS_RESOURCE)."""
    if _libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        return f"PR_SET_IO_FLUSHER refused ({errno.errorcode.get(err, err)}: it needs CAP_SYS_RESOURCE)"
    return None


def leave_workload_cgroup() -> str | None:
    """Move this process into the root memory cgroup (v1 or v2); None, or why not."""
    for procs in ("/sys/fs/cgroup/memory/cgroup.procs", "/sys/fs/cgroup/cgroup.procs"):
        if os.path.exists(procs):
            try:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))
                return None
            except OSError as exc:
                return f"cannot move into the root memory cgroup ({procs}): {exc.strerror}"
    return "no memory cgroup hierarchy found; the server stays where it was started"


# --- the process ---------------------------------------------------------------------------------
class Server:
    """Open everything (in the order that keeps it deadlock-safe), then serve."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        lock = lock_memory() if cfg.get("lock", True) else "mlockall not asked (lock off: measurement only)"
        self.warnings = [w for w in (leave_workload_cgroup(), lock, ask_io_flusher()) if w]
        self.locked = not any(w.startswith("mlockall") for w in self.warnings)
        self.io_flusher = not any("IO_FLUSHER" in w for w in self.warnings)
        import devpool
        size = cfg["size"]
        limit = cfg["pool_limit"]
        # the pool: its limit plus room for the spare segments it keeps; opened after
        # mlockall, so a host arena is resident (and locked) from here on
        self.pool = devpool.open_pool(cfg["backend"], capacity_bytes=limit + limit // 16 + (1 << 20),
                                      segment_bytes=min(256 << 10, max(PAGE, limit // 16 // PAGE * PAGE)))
        try:
            self.zs = devpool.Zswap(self.pool, cfg["compressor"], max_pool_bytes=limit,
                                    backing=cfg.get("backing"), nr_pages=size // PAGE)
        except BaseException:
            self.pool.close()
            raise
        self.threads = cfg.get("threads", 1)
        self.file = ZswapFile(self.zs, size, readers=self.threads)
        self.file.warm_up()
        self.stopping = False
        self.ctl = None
        self.fd = -1
        self.readers: list = []                 # with threads > 1: (OneFileFS, Thread) each
        self.failure: BaseException | None = None

    def start(self) -> None:
        """Listen for control, mount, answer INIT (so the file is usable on return)."""
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        ctl.bind(self.cfg["control"])
        os.chmod(self.cfg["control"], 0o600)
        ctl.listen(8)
        ctl.setblocking(False)
        self.ctl = ctl
        self.fd = fuse.open_fuse()
        fuse.mount(self.fd, self.cfg["mountpoint"], name="devpool")
        # reader threads (blocking reads) hold nothing back: gathering is the one loop's
        self.fs = fuse.OneFileFS(self.fd, self.file, name="swap",
                                 gather=self.cfg.get("gather", True) and self.threads == 1)
        deadline = time.monotonic() + 10
        while not self.fs.initialised:
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, "the kernel sent no FUSE INIT within 10 s")
            n = self.fs.read_request()
            if n:
                self.fs.handle(n)
            else:
                time.sleep(0.001)

    def control(self) -> None:
        """Answer one control connection: a line ``stats`` gets one JSON line back."""
        try:
            conn, _ = self.ctl.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(2)
            try:
                line = conn.recv(64).strip()
                if line == b"stats":
                    reply = self.stats()
                elif line == b"ping":
                    reply = {"pid": os.getpid()}
                else:
                    reply = {"error": f"unknown request {line[:32]!r}"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass                                # the asker went away; serve on

    def stats(self) -> dict:
        st = self.file.stats()
        st.update(name=self.cfg["name"], pid=os.getpid(), size=self.file.size,
                  backend=st["zswap"]["backend"], compressor=st["zswap"]["compressor"],
                  requests=self.fs.requests + sum(fs.requests for fs, _ in self.readers),
                  threads=self.threads, gather=self.fs.gather, fuse_flags=self.fs.flags, kernel_minor=self.fs.kernel_minor,
                  locked=self.locked, io_flusher=self.io_flusher, warnings=self.warnings,
                  backing=self.cfg.get("backing"), spin_us=self.cfg.get("spin_us", 0),
                  cpu_s=time.process_time())      # the server's own CPU (all its threads)
        return st

    def serve(self) -> None:
        """Answer requests until the filesystem is unmounted. One thread (the default):
        this loop reads ``/dev/fuse`` and the control socket. ``threads`` N > 1: N reader
        threads, each on a cloned descriptor, serve the file, and this one answers the
        control socket until they have all ended (or one failed: then that is raised)."""
        if self.threads == 1:
            self.fs.serve(spin_us=self.cfg.get("spin_us", 0), other=self.ctl.fileno(), on_other=self.control,
                          stop=lambda: self.stopping)
            return
        for k in range(self.threads):
            fs = self.fs.clone()
            thread = threading.Thread(target=self._reader, args=(fs,), name=f"fuse-reader-{k}", daemon=True)
            self.readers.append((fs, thread))
            thread.start()
        poller = select.poll()
        poller.register(self.ctl.fileno(), select.POLLIN)
        while not self.stopping and self.failure is None and any(t.is_alive() for _, t in self.readers):
            if poller.poll(200):
                self.control()
        if self.failure is not None:
            raise self.failure

    def _reader(self, fs) -> None:
        try:
            fs.serve_blocking()
        except BaseException as exc:           # a bug: the process ends, as one thread's would
            self.failure = exc

    def close(self) -> None:
        for fs, thread in self.readers:
            if not thread.is_alive():           # a live one (after a failure) keeps its descriptor
                os.close(fs.fd)
        self.readers = [r for r in self.readers if r[1].is_alive()]
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.ctl is not None:
            self.ctl.close()
            try:
                os.unlink(self.cfg["control"])
            except OSError:
                pass
        self.zs.close()
        self.pool.close()
        if self.cfg.get("remove_backing") and self.cfg.get("backing"):
            try:
                os.unlink(self.cfg["backing"])
            except OSError:
                pass


def _say(msg: dict) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = json.loads(argv[0])
    server = None
    try:
        server = Server(cfg)
        server.start()
    except BaseException as exc:       # any failure before ready: one line, then the parent undoes
        _say({"error": f"{type(exc).__name__}: {exc}"})
        if server is not None:
            server.close()
        return 1

    def refuse(signum, frame):
        # swapped-out pages of other processes live only here: a stray `kill` would turn
        # every one of them into a SIGBUS. The server leaves when its filesystem is
        # unmounted (`devpool swapoff` does that after swapoff), or by SIGKILL.
        sys.stderr.write(f"devpool swap server: signal {signum} ignored: this device may hold swapped "
                         f"pages; `devpool swapoff` undoes it\n")
    signal.signal(signal.SIGTERM, refuse)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # a Ctrl-C at the caller's terminal is not ours
    _say({"ready": True, "pid": os.getpid(), "warnings": server.warnings,
          "backend": server.pool.stats()["backend"]})
    # stdout is the parent's pipe, read once: from here on nothing more goes there
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        server.serve()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
