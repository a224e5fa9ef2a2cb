"""The processes behind a swap region: the fault handler and its guard.

What runs where, and what crosses between them::

    client process (yours)            handler process                  guard process
    ----------------------            ---------------                  -------------
    region memory: a MAP_SHARED       Zswap + its pool (host RAM, or   holds a pidfd of the
      memfd mapping, .array           the GPU and its CUDA context)    handler and a copy of
    creates the userfaultfd and       reads fault messages, fills      the userfaultfd; sleeps
      registers the range (MISSING    pages (UFFDIO_COPY/ZEROPAGE),    until the handler dies,
      + WP): only the creating        evicts (write-protect, pread     then makes every fault
      process can register its        the memfd, store, punch a hole)  fail loudly (SIGBUS /
      own ranges                      runs the victim policy           EFAULT), never zeros
    spawns both, passing the          owns every decision about        stdlib only: it runs
      descriptors (uffd, memfd,       pages; never touches the         this file as a script
      one socket each)                client's Python objects          (`python -I -S`)

Crossing the boundary: the userfaultfd (to both), the memfd (to the handler, which reads
victims with ``pread`` and drops them with ``fallocate(PUNCH_HOLE)``; it never maps the
file, because touching a hole through a mapping would put a zero page there), and one
SOCK_SEQPACKET socket each carrying pickled requests and replies (evict, stats, close).
Page bytes never cross a socket: they go client memory -> memfd -> handler by ``pread``
and handler -> client memory by ``UFFDIO_COPY``.

Why another process: a thread that faults while holding the GIL (a numpy pass over the
region) could never be served by a Python thread of its own process. The handler holds
no lock the client can hold, so no fault can wait on the client.

Eviction never loses a write: victims are write-protected first (``UFFDIO_WRITEPROTECT``,
which flushes the TLBs before it returns), then read, stored and punched out. A thread
writing a victim meanwhile blocks in a write-protect fault; the handler answers it after
the batch, by waking it (the page is gone, so it retries, faults MISSING and gets its
page back from the pool with every earlier write) or by lifting the protection (the page
stayed).

Handler death: its pool is gone with it, so evicted pages are lost. The guard lifts all
write protection, wakes every waiting thread (also those whose messages the dead handler
had read) and from then on answers each fault with ``UFFDIO_POISON``: the access raises
SIGBUS, as the kernel does for a swap-in that fails, and a syscall gets EFAULT. No thread
waits forever and no page reads as zeros; the client's own calls raise DevpoolError.

Guard death: the handler watches the guard in office (a pidfd) and starts another at
once (``start_guard``, the same code the client used for the first); that one is the
handler's child, dismissed by the handler when it closes. If none can be started, every
request is answered with the reason.
"""

from __future__ import annotations

import errno
import mmap
import os
import pickle
import select
import socket
import sys
import time

if __package__:                      # the handler: python -m devpool.region.handler
    import numpy as np

    from . import uffd
else:                                # the guard: python -I -S .../region/handler.py guard ...
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import uffd                      # noqa: E402  (stdlib only; no numpy, no devpool)

PAGE = uffd.PAGE_SIZE
SHIFT = PAGE.bit_length() - 1

# --- page states (one byte per page of the region) ---------------------------------------
UNTOUCHED = 0    # a hole never filled: a fault gets a zero page, no pool space
RESIDENT = 1     # mapped in the client
EVICTED = 2      # in Zswap (pool, fill word or backing file), or in the plain file
LOST = 3         # the store failed to give it back: poisoned (an access raises SIGBUS)

#: most fault messages read at once
MAX_MSGS = 256
#: largest batch of pages one fill or one eviction round moves
MAX_BATCH = 1024
#: the most recently faulted pages are never victims: an instruction touching several
#: pages of the region (a copy across a page boundary) must find them all resident
KEEP_RECENT = 4
#: up to this many pages load one by one: Zswap's single-page load costs about a tenth of
#: a batch of one (whose fixed cost is numpy bookkeeping), so a fault-around window of 8
#: costs ~8 single loads instead of one batch at ~20 single loads' price
ONE_BY_ONE = 16
#: how long a replacement guard may take to say it is ready (faults wait meanwhile), and
#: how soon a failed replacement is tried again
GUARD_START_S = 5.0
GUARD_RETRY_S = 1.0
#: the region memory's memfd name (in /proc/PID/maps: "/memfd:devpool-region (deleted)")
MEMFD_NAME = "devpool-region"
#: fault service latencies kept for the p50/p99 (a ring)
LAT_RING = 1 << 16


def _say(message: str) -> None:
    """Write to stderr only if it takes the line now: a full pipe (a parent that reads
    its child's stderr at the end) must not stop a handler or guard serving faults."""
    out = select.poll()
    out.register(2, select.POLLOUT)
    try:
        if any(ev & select.POLLOUT for _, ev in out.poll(0)):
            os.write(2, message.encode())
    except OSError:
        pass


def send(sock: socket.socket, obj) -> None:
    sock.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def recv(sock: socket.socket, bufsize: int = 1 << 20):
    data = sock.recv(bufsize)
    if not data:
        raise EOFError("peer closed")
    return pickle.loads(data)


# =========================================================================================
# the handler
# =========================================================================================
class Handler:
    """Serves the faults of one region from a Zswap (or, for baselines, from zero pages
    or a plain file) and evicts pages beyond the resident budget.

    ``serve`` modes: ``"zswap"`` (the region), ``"zero"`` (every fault gets a zero page,
    evicted bytes are dropped: the floor of a userfaultfd round trip, benchmarks only),
    ``"file"`` (evicted pages go to a plain swap file, no compression).

    Victim policy ``"lfu"``: the handler sees faults, not accesses (a resident page's
    loads and stores never reach it), so it ranks resident pages by how often they have
    faulted in, halving every count each 8 x budget faults so that old heat fades, and
    evicts the coldest, oldest first. On a zipfian trace this faults 16 % less than
    ``"fifo"`` (benchmarks/bench_region.py measures both).
    """

    def __init__(self, uffd_fd: int, memfd: int, ctl: socket.socket, cfg: dict):
        self.uffd = uffd_fd
        self.memfd = memfd
        self.ctl = ctl
        self.base = int(cfg["base"])
        self.npages = int(cfg["npages"])
        self.budget = max(1, int(cfg["resident_pages"]))
        self.mode = cfg.get("serve", "zswap")
        self.policy = cfg.get("policy", "lfu")
        self.fault_around = int(cfg.get("fault_around", 0))
        self.spin_ns = int(cfg.get("spin_us", 100) * 1000)
        self.delay_ns = int(cfg.get("serve_delay_us", 0) * 1000)     # zero mode: a handler that takes this long
        self.slack = max(1, min(self.budget // 16, 256))
        n = self.npages
        self.state = np.zeros(n, np.uint8)
        self.hits = np.zeros(n, np.int64)         # fault-ins, halved as they age
        self.seq = np.zeros(n, np.int64)          # when the page last came in
        self.refused = np.zeros(n, np.bool_)      # zswap refused it; retried once written
        self.next_seq = 1
        self.nres = 0
        self.faults_since_aging = 0
        self.evict_blocked = False
        # page-aligned (an anonymous mapping), as O_DIRECT reads and writes need
        self._buf_map = mmap.mmap(-1, MAX_BATCH * PAGE)
        self.buf = np.frombuffer(self._buf_map, np.uint8).reshape(MAX_BATCH, PAGE)
        self.buf_addr = self.buf.ctypes.data
        # the single-page path loads into this page and copies from its address, known
        # once: asking a fresh array for its address (``.ctypes.data``) costs ~0.8 us,
        # a sixth of the load itself
        self.page = np.empty(PAGE, np.uint8)
        self.page_addr = self.page.ctypes.data
        self.lat = np.zeros(LAT_RING, np.int64)
        self.nlat = 0
        self.evict_lat = []
        self.load_lat = []          # Zswap load time per page (single or batch), for the breakdown
        self.c = dict.fromkeys((
            "faults",               # missing faults served (a page counted once per fill)
            "zero_fills",           # pages never written, answered with a zero page
            "fills_from_store",     # pages brought back from zswap (or the plain file)
            "fault_around_pages",   # evicted neighbours brought back with a faulting page
            "wp_faults",            # writes that met a page under (or refused) eviction
            "duplicate_faults",     # a second thread faulting on a page already filled
            "evicted_pages",        # pages pushed out to zswap (or the file)
            "eviction_rounds",      # batches of victims
            "refused_pages",        # victims zswap refused: they stay resident
            "store_errors",         # eviction rounds whose store raised: victims stay resident
            "fill_errors",          # pages that could not be brought back (poisoned)
            "copy_eexist",          # UFFDIO_COPY found a page already there (woken)
            "guards_replaced",      # guards this handler started after the one in office died
        ), 0)
        # the client process, watched directly: the control socket's EOF alone does not
        # prove it gone (its descriptor may have been closed by a stray close)
        self.client_pid = int(cfg.get("client_pid") or 0)
        self.client_pidfd = os.pidfd_open(self.client_pid) if self.client_pid else None
        self.ctl_lost = False
        # the guard in office: the client's (its pid comes in a "guard" request) or, after
        # that one died, one this handler started (``own_guard``: process and socket)
        self.guard_pid = 0
        self.guard_pidfd = None
        self.own_guard = None
        self.guard_error = None     # set while a dead guard could not be replaced
        self.guard_retry_at = 0.0
        self.guarding = True        # False once the client said it is closing ("unguard")
        self.poller = None
        self.zs = self.pool = self.file = None
        if self.mode == "zswap":
            self._open_zswap(cfg)
        elif self.mode == "file":
            self.file = _PageFile(cfg["file"], bool(cfg.get("file_direct")))
        elif self.mode != "zero":
            raise ValueError(f"unknown serve mode {self.mode!r}")

    def _open_zswap(self, cfg: dict) -> None:
        from ..pool.backends import open_pool
        from ..zswap.frontend import Zswap
        self.pool = open_pool(cfg["backend"], capacity_bytes=int(cfg["capacity_bytes"]),
                              **cfg.get("pool_options", {}))
        try:
            self.zs = Zswap(self.pool, compressor=cfg["compressor"], backing=cfg.get("backing"),
                            **cfg.get("zswap_options", {}))
            # compile / warm the codec now, on an offset the region cannot use
            scratch = np.zeros((1, PAGE), np.uint8)
            scratch[0, ::7] = 1
            self.zs.store_batch([self.npages], scratch)
            self.zs.load_batch([self.npages], out=scratch)
        except BaseException:
            self.pool.close()
            raise

    def close(self) -> None:
        self._drop_guard()                  # one we started is ours to dismiss: the client knows only its own
        if self.zs is not None:
            self.zs.close()
            self.pool.close()
            self.zs = None
        if self.file is not None:
            self.file.close()
            self.file = None

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        """Serve until the client says close or goes away.

        Adaptive spinning: after a fault the handler keeps reading the (non-blocking)
        descriptor for ``spin_us``, since waking a sleeping process costs far more than
        the fault itself here; then it sleeps in ``poll``.
        """
        self.poller = poller = select.poll()
        poller.register(self.uffd, select.POLLIN)
        poller.register(self.ctl.fileno(), select.POLLIN)
        ctl_fd = self.ctl.fileno()
        if self.client_pidfd is not None:
            poller.register(self.client_pidfd, select.POLLIN)
        last_fault = 0
        next_ctl = 0
        clock = time.monotonic_ns
        while True:
            faults = uffd.read_faults(self.uffd, MAX_MSGS)
            if faults:
                self.serve(faults)
                if self.nres >= self.budget + self.slack and not self.evict_blocked:
                    # a steady stream of faults leaves no idle moment: evict between them
                    self.evict(self.nres - self.budget + self.slack - 1)
                last_fault = clock()
                if last_fault < next_ctl:
                    continue
            elif self.nres > self.budget and not self.evict_blocked:
                self.evict(self.nres - self.budget + self.slack - 1)
                continue
            now = clock()
            spinning = now - last_fault < self.spin_ns
            if spinning and now < next_ctl:
                continue
            events = poller.poll(0 if spinning else 1000)
            next_ctl = clock() + 1_000_000
            for fd, ev in events:
                if fd == self.client_pidfd:
                    return                              # the client died
                if fd == self.guard_pidfd:
                    self._replace_guard()
                    continue
                if fd == ctl_fd:
                    if not self.control():
                        return
                    if self.ctl_lost:
                        poller.unregister(ctl_fd)
            if self.guard_error is not None and time.monotonic() >= self.guard_retry_at:
                self._replace_guard()               # the last try failed: again

    def control(self) -> bool:
        """Answer one request; False when the handler should stop. Every reply ends with
        the request's last element (the client's serial number for it), so a client
        whose wait for a reply was interrupted can tell that reply from the next one's."""
        try:
            req = recv(self.ctl)
        except (EOFError, ConnectionError):
            if self.client_pidfd is None or _client_gone(self.client_pidfd, self.client_pid, self.base):
                return False                           # the client went away
            # The client lives, but its end of the socket is closed (a stray close of the
            # descriptor number). Its evicted pages live only here: serve its faults until
            # it dies (the client pidfd), rather than exit and lose them all.
            _say("devpool region handler: the region's control socket was closed under it; "
                 "still serving its pages until the process exits\n")
            self.ctl_lost = True
            return True
        op, tag = req[0], req[-1]
        if self.guard_error is not None and op not in ("close", "unguard"):
            send(self.ctl, ("err", "DevpoolError", self.guard_error, tag))
            return True
        try:
            if op == "close":
                self.close()
                send(self.ctl, ("ok", None, tag))
                return False
            if op == "evict":
                n, keep = req[1], 0
                if n is None:                   # down to the budget, as the loop would
                    n, keep = max(0, self.nres - self.budget), KEEP_RECENT
                out = 0
                while out < n:
                    got = self.evict(min(n - out, MAX_BATCH), keep_recent=keep)
                    if got == 0:
                        break
                    out += got
                send(self.ctl, ("ok", out, tag))
            elif op == "stats":
                send(self.ctl, ("ok", self.stats(), tag))
            elif op == "ping":
                send(self.ctl, ("ok", os.getpid(), tag))
            elif op == "guard":                 # the client's guard is up: watch it
                self._watch_guard(int(req[1]))
                send(self.ctl, ("ok", self.guard_pid, tag))
            elif op == "unguard":               # the client is closing: its guard's exit is no death
                self._unguard()
                send(self.ctl, ("ok", None, tag))
            else:
                send(self.ctl, ("err", "BadInputError", f"unknown request {op!r}", tag))
        except Exception as exc:                       # reported, the handler goes on
            send(self.ctl, ("err", type(exc).__name__, str(exc), tag))
        return True

    # --- the guard ---------------------------------------------------------------------
    def _watch_guard(self, pid: int) -> None:
        """Watch the guard in office (pid ``pid``); one already gone is replaced now."""
        self.guard_pid = pid
        try:
            self.guard_pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._replace_guard()
            return
        self.poller.register(self.guard_pidfd, select.POLLIN)

    def _drop_guard(self) -> None:
        """Stop watching the guard in office; dismiss it if this handler started it."""
        if self.guard_pidfd is not None:
            self.poller.unregister(self.guard_pidfd)
            os.close(self.guard_pidfd)
            self.guard_pidfd = None
        if self.own_guard is not None:
            proc, sock = self.own_guard
            self.own_guard = None
            stop_guard(proc, sock)

    def _unguard(self) -> None:
        """The client is closing the region (it dismisses its own guard next, then asks
        us to close): its guard's exit is no death to answer."""
        self.guarding = False
        self.guard_error = None
        self._drop_guard()

    def _replace_guard(self) -> None:
        """The guard died (killed, OOM): without one, a later death of this handler would
        leave every fault on an evicted page waiting forever. Start another, watching
        this process like the first. If that fails, every request is answered with the
        reason until one is up (tried again every GUARD_RETRY_S)."""
        if not self.guarding:
            return
        self._drop_guard()
        dead = self.guard_pid
        me = None
        try:
            me = os.pidfd_open(os.getpid())
            # a short wait for its greeting: faults wait meanwhile
            proc, sock = start_guard(self.uffd, me, self.base, self.npages * PAGE, self.client_pid,
                                     timeout=GUARD_START_S)
            try:
                self.guard_pidfd = os.pidfd_open(proc.pid)
            except BaseException:
                stop_guard(proc, sock)
                raise
        except Exception as exc:
            # tried again every GUARD_RETRY_S (the loop), until one is up; meanwhile
            # every request is answered with this
            self.guard_error = (f"the region's guard process {dead} died and another could not be started "
                                f"({type(exc).__name__}: {exc}): a handler death could no longer be made loud")
            self.guard_retry_at = time.monotonic() + GUARD_RETRY_S
            _say(f"devpool region handler: {self.guard_error}; trying again\n")
            return
        finally:
            if me is not None:
                os.close(me)
        self.guard_error = None
        self.own_guard = (proc, sock)
        self.guard_pid = proc.pid
        self.poller.register(self.guard_pidfd, select.POLLIN)
        self.c["guards_replaced"] += 1
        _say(f"devpool region handler: the region's guard process {dead} died; "
             f"guard {proc.pid} took its place\n")

    # --- fault service -----------------------------------------------------------------
    def serve(self, faults: list) -> None:
        """Answer every message read at once: duplicates dropped, missing pages of the
        store loaded (up to ONE_BY_ONE one by one, more with one batch call), the
        others zero-filled or woken."""
        t0 = time.monotonic_ns()
        base, npages, state = self.base, self.npages, self.state
        if len(faults) == 1 and self.mode == "zswap":       # the common case, kept short
            addr, flags = faults[0]
            p = (addr - base) >> SHIFT
            if (not flags & uffd.UFFD_PAGEFAULT_FLAG_WP and 0 <= p < npages and state[p] == EVICTED
                    and self.fault_around <= 1 and self._fill_one(p, t0)):
                self.evict_blocked = False
                return
        missing = {}
        wp = []
        for addr, flags in faults:
            p = (addr - base) >> SHIFT
            if not 0 <= p < npages:
                continue
            if flags & uffd.UFFD_PAGEFAULT_FLAG_WP:
                wp.append(p)
            else:
                missing[p] = None
        stored = []
        for p in missing:
            st = state[p]
            if st == EVICTED:
                stored.append(p)
            elif st == UNTOUCHED:
                try:
                    uffd.zeropage(self.uffd, base + (p << SHIFT), PAGE)
                except OSError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
                    self.c["copy_eexist"] += 1
                    uffd.wake(self.uffd, base + (p << SHIFT), PAGE)
                self._came_in(p, 1)
                self.c["zero_fills"] += 1
                self.c["faults"] += 1
                self._lat(t0)
            elif st == LOST:                    # poisoned before; if that failed, try again
                self._poison(p)
            else:
                # Counted resident: normally another thread's fault on a page filled since
                # (EEXIST: wake it). But the caller may have freed the page behind our back
                # (madvise MADV_REMOVE): a wake alone would make it fault again forever.
                # Zero-filling is what MADV_REMOVE promises, and EEXIST where it is there.
                try:
                    uffd.zeropage(self.uffd, base + (p << SHIFT), PAGE)
                    self.c["zero_fills"] += 1
                except OSError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
                    self.c["duplicate_faults"] += 1
                    uffd.wake(self.uffd, base + (p << SHIFT), PAGE)
        if stored:
            self.fill(stored, t0)
        for p in wp:
            self.c["wp_faults"] += 1
            addr = base + (p << SHIFT)
            if state[p] == RESIDENT:
                self.refused[p] = False         # written: worth trying to evict again
                uffd.writeprotect(self.uffd, addr, PAGE, False)     # lifts and wakes
            else:
                uffd.wake(self.uffd, addr, PAGE)    # evicted meanwhile: retry, fault MISSING
        self.evict_blocked = False

    def _came_in(self, p: int, heat: int) -> None:
        self.state[p] = RESIDENT
        self.hits[p] += heat
        self.seq[p] = self.next_seq
        self.next_seq += 1
        self.nres += 1
        self.faults_since_aging += heat
        if self.faults_since_aging >= 8 * self.budget:
            self.hits >>= 1
            self.faults_since_aging = 0

    def _lat(self, t0: int, n: int = 1) -> None:
        dt = time.monotonic_ns() - t0
        for _ in range(n):
            self.lat[self.nlat % LAT_RING] = dt
            self.nlat += 1

    def fill(self, faulted: list, t0: int) -> None:
        """Bring back evicted pages (and, with fault-around, their evicted neighbours)
        with one load from the store, then one UFFDIO_COPY per run of adjacent pages."""
        pages = faulted
        if self.fault_around > 1:
            k = self.fault_around
            extra = set()
            for p in faulted:
                lo = p & ~(k - 1)
                win = np.arange(lo, min(lo + k, self.npages))
                extra.update(win[self.state[win] == EVICTED].tolist())
            pages = sorted(extra)
        elif len(pages) > 1:
            pages = sorted(pages)
        if len(pages) == 1 and self.mode == "zswap" and self._fill_one(pages[0], t0):
            return
        for lo in range(0, len(pages), MAX_BATCH):
            chunk = pages[lo:lo + MAX_BATCH]
            ok = self._load(chunk)
            self._copy_runs(chunk, ok)
            want = set(faulted)
            for p, good in zip(chunk, ok):
                if not good:
                    continue
                if p in want:
                    self._came_in(p, 1)
                    self.c["faults"] += 1
                    self._lat(t0)
                else:
                    self._came_in(p, 0)
                    self.c["fault_around_pages"] += 1
            self.c["fills_from_store"] += int(sum(ok))

    def _fill_one(self, p: int, t0: int) -> bool:
        """One page, the common case: Zswap's single-page load (a tenth of a batch of
        one) into the handler's page buffer, then UFFDIO_COPY from its address. The
        load is non-exclusive: the page is freed from the store only after the copy,
        once the faulting thread runs again (about 1 us less for it to wait). False:
        the load failed, let the batch path sort it out (it poisons what cannot be
        loaded)."""
        try:
            t = time.monotonic_ns()
            self.zs.load(p, out=self.page, keep=True)
            t_load = time.monotonic_ns() - t
        except Exception:
            return False
        dst = self.base + (p << SHIFT)
        try:
            uffd.copy(self.uffd, dst, self.page_addr, PAGE)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            self.c["copy_eexist"] += 1
            uffd.wake(self.uffd, dst, PAGE)
        # the faulting thread runs again from here: bookkeeping only after the copy
        self.zs.invalidate(p)
        self._note_load(t_load)
        self._came_in(p, 1)
        self.c["faults"] += 1
        self.c["fills_from_store"] += 1
        self._lat(t0)
        return True

    def _note_load(self, ns: float) -> None:
        self.load_lat.append(ns)
        if len(self.load_lat) > 8192:
            del self.load_lat[:4096]

    def _load(self, chunk: list) -> list:
        """Load ``chunk`` into ``buf`` rows; per page True, or False where the store
        failed (those pages are poisoned: the access raises SIGBUS, never reads zeros)."""
        n = len(chunk)
        out = self.buf[:n]
        if self.mode == "zero":
            return [True] * n
        if self.mode == "zswap" and n <= ONE_BY_ONE:
            return self._load_each(chunk, out)
        try:
            if self.mode == "file":
                self.file.read_into(chunk, out)
            else:
                t = time.monotonic_ns()
                self.zs.load_batch(chunk, out=out)
                self._note_load((time.monotonic_ns() - t) / n)
            return [True] * n
        except Exception:
            pass
        return self._load_each(chunk, out)      # a batch failed: one at a time, to find the bad ones

    def _load_each(self, chunk: list, out: np.ndarray) -> list:
        """:meth:`_load`, one page at a time."""
        ok = []
        for i, p in enumerate(chunk):
            try:
                if self.mode == "file":
                    self.file.read_into([p], out[i:i + 1])
                else:
                    t = time.monotonic_ns()
                    self.zs.load(p, out=out[i])
                    self._note_load(time.monotonic_ns() - t)
                ok.append(True)
            except Exception as exc:
                _say(f"devpool region handler: page {p} could not be loaded ({exc}); "
                     f"poisoning it\n")
                self.c["fill_errors"] += 1
                self._poison(p)
                ok.append(False)
        return ok

    def _poison(self, p: int) -> None:
        """Make page ``p`` raise SIGBUS on access from now on (and wake its waiters).
        An evicted page keeps the write-protect marker it was evicted under, and
        UFFDIO_POISON refuses to overwrite any PTE marker (EEXIST: the faulting thread
        would wait forever), so the marker is resolved first, without waking."""
        addr = self.base + (p << SHIFT)
        try:
            uffd.writeprotect(self.uffd, addr, PAGE, False, wake_=False)
            uffd.poison(self.uffd, addr, PAGE)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                # already poisoned: a thread that read the page table before the first
                # poison went in but queued after its wake is still waiting (its message
                # came now); the poison has no wake when it fails, so wake it here
                uffd.wake(self.uffd, addr, PAGE)
            else:
                _say(f"devpool region handler: poisoning page {p} failed: {exc}\n")
        self.state[p] = LOST

    def _copy_runs(self, chunk: list, ok: list) -> None:
        base, fd = self.base, self.uffd
        i, n = 0, len(chunk)
        while i < n:
            if not ok[i]:
                i += 1
                continue
            j = i + 1
            while j < n and ok[j] and chunk[j] == chunk[j - 1] + 1:
                j += 1
            dst = base + (chunk[i] << SHIFT)
            if self.delay_ns:
                until = time.monotonic_ns() + self.delay_ns
                while time.monotonic_ns() < until:
                    pass
            try:
                if self.mode == "zero":
                    uffd.zeropage(fd, dst, (j - i) * PAGE)
                else:
                    uffd.copy(fd, dst, self.buf_addr + i * PAGE, (j - i) * PAGE)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                # cannot happen while this handler alone fills the region; if it did, the
                # pages already there are newer than ours. The copy stopped at the first of
                # them: the rest of the run goes a page at a time (a wake for those there)
                self.c["copy_eexist"] += 1
                for k in range(i, j):
                    dst = base + (chunk[k] << SHIFT)
                    try:
                        if self.mode == "zero":
                            uffd.zeropage(fd, dst, PAGE)
                        else:
                            uffd.copy(fd, dst, self.buf_addr + k * PAGE, PAGE)
                    except OSError as exc1:
                        if exc1.errno != errno.EEXIST:
                            raise
                        uffd.wake(fd, dst, PAGE)
            i = j

    # --- eviction ----------------------------------------------------------------------
    def pick(self, n: int, keep_recent: int) -> np.ndarray:
        """Up to ``n`` victims, sorted by page number."""
        cand = np.flatnonzero((self.state == RESIDENT) & ~self.refused)
        if keep_recent:
            cand = cand[self.seq[cand] < self.next_seq - keep_recent]
        if cand.size == 0:
            return cand
        if self.policy == "fifo":
            key = self.seq[cand]
        else:
            key = (np.minimum(self.hits[cand], (1 << 22) - 1) << 40) | self.seq[cand]
        if n < cand.size:
            cand = cand[np.argpartition(key, n - 1)[:n]]
        cand.sort()
        return cand

    def evict(self, n: int, keep_recent: int = KEEP_RECENT) -> int:
        """Push up to ``n`` resident pages out; returns how many left.

        1. write-protect the victims (a writer now blocks in a WP fault),
        2. read their bytes from the memfd, 3. store them (one batch),
        4. punch the stored ones out of the memfd, lift protection from refused ones.
        Messages that arrive meanwhile are answered after the batch (see ``serve``).
        """
        victims = self.pick(min(n, MAX_BATCH), keep_recent)
        if victims.size == 0:
            self.evict_blocked = True
            return 0
        t0 = time.monotonic_ns()
        base, fd = self.base, self.uffd
        runs = _runs(victims)
        for lo, hi in runs:
            uffd.writeprotect(fd, base + (int(victims[lo]) << SHIFT), (hi - lo) * PAGE, True)
        k = victims.size
        pages = self.buf[:k]
        try:
            if self.mode != "zero":
                for lo, hi in runs:
                    want = (hi - lo) * PAGE
                    got = os.preadv(self.memfd, [pages[lo:hi]], int(victims[lo]) << SHIFT)
                    if got != want:
                        raise OSError(errno.EIO, f"short read of the region ({got} of {want} bytes)")
            kept = self._store(victims, pages)
        except Exception as exc:
            # A store that fails (a full or broken swap file, a device error) keeps none of
            # the victims: they stay resident, as refused ones do. Raised out of the loop's
            # automatic eviction it would kill the handler and lose every evicted page.
            _say(f"devpool region handler: evicting {k} page(s) failed, they stay "
                 f"resident: {type(exc).__name__}: {exc}\n")
            self.c["store_errors"] += 1
            kept = np.zeros(k, np.bool_)
        gone = victims[kept]
        for lo, hi in _runs(gone):
            uffd.punch_hole(self.memfd, int(gone[lo]) << SHIFT, (hi - lo) * PAGE)
        stay = victims[~kept]
        if stay.size:
            # refused pages stay resident *and* write-protected: the first write lifts it
            # and makes them candidates again (until then, trying them again is wasted)
            self.refused[stay] = True
            self.c["refused_pages"] += int(stay.size)
        self.state[gone] = EVICTED
        self.nres -= int(gone.size)
        self.c["evicted_pages"] += int(gone.size)
        self.c["eviction_rounds"] += 1
        self.evict_lat.append((time.monotonic_ns() - t0) / k)
        if len(self.evict_lat) > 4096:
            del self.evict_lat[:2048]
        if gone.size == 0:
            self.evict_blocked = True
        return int(gone.size)

    def _store(self, victims: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """Hand the victims to the store; per page True where it is kept there."""
        if self.mode == "zero":
            return np.ones(victims.size, np.bool_)
        if self.mode == "file":
            self.file.write_from(victims, pages)
            return np.ones(victims.size, np.bool_)
        from .._errors import WritebackError
        try:
            cached = self.zs.store_batch(victims, pages)
        except WritebackError as exc:      # refused pages whose file write failed: not kept
            _say(f"devpool region handler: {exc}\n")
            return np.array([self.zs.contains(int(v)) for v in victims], np.bool_)
        if self.zs.backing is not None:
            return np.ones(victims.size, np.bool_)  # refused ones went to the file
        return cached

    # --- statistics --------------------------------------------------------------------
    def stats(self) -> dict:
        st = dict(self.c)
        lat = self.lat[:min(self.nlat, LAT_RING)]
        st.update({
            "resident_pages": int(self.nres),
            "resident_budget_pages": self.budget,
            "stored_region_pages": int((self.state == EVICTED).sum()),
            "fault_p50_us": float(np.percentile(lat, 50) / 1e3) if lat.size else 0.0,
            "fault_p99_us": float(np.percentile(lat, 99) / 1e3) if lat.size else 0.0,
            "evict_per_page_p50_us": float(np.percentile(self.evict_lat, 50) / 1e3) if self.evict_lat else 0.0,
            "store_load_per_page_p50_us": float(np.percentile(self.load_lat, 50) / 1e3) if self.load_lat else 0.0,
            "serve": self.mode,
            "policy": self.policy,
            "fault_around": self.fault_around,
            "handler_pid": os.getpid(),
            "guard_pid": self.guard_pid,
        })
        if self.zs is not None:
            zst = self.zs.stats()
            st["loads_from_pool"] = zst["loads_from_pool"] - 1          # less the warm-up
            st["loads_from_backing"] = zst["loads_from_backing"]
            st["zswap"] = zst
        else:
            st["loads_from_pool"] = 0
            st["loads_from_backing"] = st["fills_from_store"] if self.mode == "file" else 0
        return st


class _PageFile:
    """The plain swap file of the baselines: page ``p`` at ``p * PAGE``, no compression;
    ``direct`` opens it O_DIRECT (no page cache, as a swap device is read; also how the
    kernel's zram block device is driven). Runs of adjacent pages move in one call."""

    def __init__(self, path: str, direct: bool):
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
        if not path.startswith("/dev/"):
            flags |= os.O_CREAT
        self.fd = os.open(path, flags, 0o600)

    def write_from(self, pages_sorted: np.ndarray, rows: np.ndarray) -> None:
        for lo, hi in _runs(pages_sorted):
            want = (hi - lo) * PAGE
            if os.pwritev(self.fd, [rows[lo:hi]], int(pages_sorted[lo]) << SHIFT) != want:
                raise OSError(errno.EIO, "short write to the swap file")

    def read_into(self, pages_sorted: list, out: np.ndarray) -> None:
        arr = np.asarray(pages_sorted, np.int64)
        for lo, hi in _runs(arr):
            want = (hi - lo) * PAGE
            if os.preadv(self.fd, [out[lo:hi]], int(arr[lo]) << SHIFT) != want:
                raise OSError(errno.EIO, "short read from the swap file")

    def close(self) -> None:
        os.close(self.fd)


def _client_gone(pidfd: int, pid: int, base: int) -> bool:
    """Asked on a control socket's EOF: whether the client is gone, or only its socket.
    Gone: its pidfd is readable, or the region is no longer mapped in it (an exiting
    process drops its memory before it closes its descriptors, and exec() replaces the
    memory while the pid lives on). Mapped in a live process: a stray close."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    if p.poll(0):
        return True
    return not region_mapped(pid, base)


def region_mapped(pid: int, base: int) -> bool:
    """Whether process ``pid`` still maps the region's memory at ``base``: the memfd
    itself, not whatever took the address afterwards (close() may leave the range
    reserved without access, so that a stale array faults)."""
    prefix = f"{base:x}-"
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(line.startswith(prefix) and MEMFD_NAME in line for line in f)
    except OSError:
        return False


def _runs(sorted_pages) -> list:
    """(lo, hi) index ranges of runs of consecutive page numbers."""
    if len(sorted_pages) == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_pages) != 1) + 1
    bounds = [0, *breaks.tolist(), len(sorted_pages)]
    return list(zip(bounds[:-1], bounds[1:]))


def handler_main(argv: list) -> int:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # a terminal's Ctrl-C is the client's
    uffd_fd, memfd, ctl_fd = (int(x) for x in argv[:3])
    ctl = socket.socket(fileno=ctl_fd)
    try:
        cfg = recv(ctl)
        handler = Handler(uffd_fd, memfd, ctl, cfg)
    except BaseException as exc:
        try:
            send(ctl, ("err", type(exc).__name__, str(exc)))
        except OSError:
            pass
        return 1
    send(ctl, ("ready", {"pid": os.getpid(), "backend": handler.pool.stats()["backend"] if handler.pool else None}))
    try:
        handler.run()
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.ENOENT, errno.EFAULT, errno.EBADF):
            return 0                        # the client's memory is gone: nothing left to serve
        raise
    finally:
        handler.close()
    return 0


# =========================================================================================
# the guard
# =========================================================================================
def start_guard(uffd_fd: int, handler_pidfd: int, base: int, length: int, client_pid: int,
                timeout: float = 30.0):
    """Start a guard over the region (this file run with ``python -I -S``: stdlib only)
    watching the handler through ``handler_pidfd``; returns ``(process, socket)`` once
    it said it is ready. Used by the client for the first guard and by the handler for
    a replacement."""
    import subprocess
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), "guard", str(uffd_fd), str(handler_pidfd),
             str(theirs.fileno()), str(base), str(length), str(client_pid)],
            pass_fds=(uffd_fd, handler_pidfd, theirs.fileno()), stdin=subprocess.DEVNULL, close_fds=True,
            process_group=0)            # out of the terminal's foreground group: Ctrl-C is not ours
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    mine.settimeout(timeout)
    try:
        if mine.recv(16) != b"ready":
            raise OSError("the guard sent no greeting")
    except BaseException:
        proc.kill()
        proc.wait()
        mine.close()
        raise
    return proc, mine


def stop_guard(proc, sock: socket.socket, timeout: float = 5.0) -> None:
    """Dismiss a guard ('close'; killed if the socket is gone or it does not leave)."""
    try:
        sock.send(b"close")
    except OSError:         # the socket is gone: the guard would stay until the client exits
        proc.kill()
    wait_or_kill(proc, timeout)
    try:
        sock.close()
    except OSError:         # its descriptor was closed under it (EBADF)
        pass


def wait_or_kill(proc, timeout: float) -> None:
    """Wait (bounded) for a child process (``subprocess.Popen``) to exit; kill it past that."""
    import subprocess
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def guard_main(argv: list) -> int:
    """Wait for the handler to die (pidfd readable) or the client to go ('close', or
    its pidfd readable); after a death, fail every fault of the region loudly until told
    to go.
    """
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # a terminal's Ctrl-C is the client's
    uffd_fd, pidfd, ctl_fd, base, length, client = (int(x) for x in argv[:6])
    ctl = socket.socket(fileno=ctl_fd)
    try:
        client_fd = os.pidfd_open(client)
    except ProcessLookupError:
        return 0                             # the client is gone already
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(ctl_fd, select.POLLIN)
    poller.register(client_fd, select.POLLIN)
    try:
        ctl.send(b"ready")
    except OSError:
        # whoever started us is gone already (a handler killed while it replaced a
        # guard): not a dismissal; the handler's pidfd tells whether to take over
        pass

    def stand_down() -> bool:
        """A control event: True when told 'close' or the client is gone. An EOF while
        the client lives is a stray close of its descriptor, not a dismissal: the guard
        stays (watching the client's pidfd from now on)."""
        try:
            msg = ctl.recv(16)
        except OSError:
            msg = b""
        if msg or _client_gone(client_fd, client, base):
            return True
        _say("devpool guard: the region's guard socket was closed under it; "
             "guarding until the process exits\n")
        poller.unregister(ctl_fd)
        return False

    dead = False
    while not dead:
        for fd, _ in poller.poll():
            if fd == client_fd or (fd == ctl_fd and stand_down()):
                return 0                     # told to stand down, or the client is gone
            if fd == pidfd:
                dead = True
    try:
        uffd.writeprotect(uffd_fd, base, length, False)     # let writers of resident pages go
    except OSError:
        pass
    try:
        uffd.wake(uffd_fd, base, length)   # waiters whose messages the dead handler had read
    except OSError:
        pass
    _say("devpool: the swap region's handler process died; its pool (the evicted "
         "pages) is lost: accesses to pages not resident now raise SIGBUS "
         "(syscalls EFAULT) and the region's calls raise DevpoolError\n")
    poller.unregister(pidfd)
    poller.register(uffd_fd, select.POLLIN)
    while True:
        events = poller.poll(1000)
        if not events and not region_mapped(client, base):
            return 0                         # the client closed the region: nothing to guard
        for fd, _ in events:
            if fd == client_fd or (fd == ctl_fd and stand_down()):
                return 0
        for addr, flags in uffd.read_faults(uffd_fd, MAX_MSGS):
            page = addr & ~(PAGE - 1)
            try:
                if flags & uffd.UFFD_PAGEFAULT_FLAG_WP:
                    uffd.writeprotect(uffd_fd, page, PAGE, False)
                else:
                    uffd.poison(uffd_fd, page, PAGE)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    uffd.wake(uffd_fd, page, PAGE)
                elif exc.errno in (errno.ESRCH, errno.ENOENT):
                    return 0
                else:
                    raise


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    sys.exit(handler_main(rest) if role == "handler" else guard_main(rest))
