"""The fault handler: the process that serves a swap region's page faults and evicts.

What runs where, and what crosses between them::

    client process (yours)            handler process (this file)      guard process (guard.py)
    ----------------------            ---------------------------      ------------------------
    region memory: a MAP_SHARED       a page source (sources.py: a     holds a pidfd of the
      memfd mapping, .array           Zswap and its pool, host RAM or  handler and a copy of
    creates the userfaultfd and       the GPU)                         the userfaultfd; sleeps
      registers the range (MISSING    reads fault messages, fills      until the handler dies,
      + WP): only the creating        pages (UFFDIO_COPY/ZEROPAGE),    then makes every fault
      process can register its        evicts (write-protect, pread     fail loudly (SIGBUS /
      own ranges                      the memfd, store, punch a hole)  EFAULT), never zeros
    spawns both, passing the          runs the victim policy           stdlib only
      descriptors (uffd, memfd,         (residency.py); never touches
      one socket each)                  the client's Python objects

Crossing the boundary: the userfaultfd (to both), the memfd (to the handler, which reads
victims with ``pread`` and drops them with ``fallocate(PUNCH_HOLE)``; it never maps the
file, because touching a hole through a mapping would put a zero page there), and one
SOCK_SEQPACKET socket each; the handler's carries the requests of ``protocol.py``
(evict, stats, close, ...). Page bytes never cross a socket.

Why another process: a thread that faults while holding the GIL (a numpy pass over the
region) could never be served by a Python thread of its own process. The handler holds
no lock the client can hold, so no fault can wait on the client.

Eviction never loses a write: victims are write-protected first (``UFFDIO_WRITEPROTECT``,
which flushes the TLBs before it returns), then read, stored and punched out. A thread
writing a victim meanwhile blocks in a write-protect fault; the handler answers it after
the batch, by waking it (the page is gone, so it retries, faults MISSING and gets its
page back from the source with every earlier write) or by lifting the protection (the
page stayed).

The handler watches the guard in office and replaces one that dies (``GuardKeeper``);
its own death is the guard's to make loud.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import time

import numpy as np

from . import protocol, uffd
from .guard import GuardKeeper, client_gone, say
from .residency import EVICTED, LOST, RESIDENT, UNTOUCHED, Residency
from .sources import SHIFT, open_source, runs

PAGE = uffd.PAGE_SIZE

#: most fault messages read at once
MAX_MSGS = 256
#: largest batch of pages one fill or one eviction round moves
MAX_BATCH = 1024
#: the most recently faulted pages are never victims: an instruction touching several
#: pages of the region (a copy across a page boundary) must find them all resident
KEEP_RECENT = 4
#: fault service latencies kept for the p50/p99
LAT_RING = 1 << 16


class LatencyRing:
    """The last ``size`` latencies (ns; ``size`` a power of two) and their percentiles (us)."""

    def __init__(self, size: int):
        self.values = np.zeros(size, np.float64)
        self.mask = size - 1
        self.n = 0

    def add(self, ns: float) -> None:
        self.values[self.n & self.mask] = ns
        self.n += 1

    def percentile_us(self, q: float) -> float:
        kept = self.values[:min(self.n, self.values.size)]
        return float(np.percentile(kept, q) / 1e3) if kept.size else 0.0


class Handler:
    """Serves the faults of one region from a page source and evicts pages beyond the
    resident budget (``cfg``: the client's configuration, see ``client.py``)."""

    def __init__(self, uffd_fd: int, memfd: int, ctl: socket.socket, cfg: dict):
        self.uffd = uffd_fd
        self.memfd = memfd
        self.ctl = ctl
        self.base = int(cfg["base"])
        self.npages = int(cfg["npages"])
        self.pages = Residency(self.npages, int(cfg["resident_pages"]), cfg.get("policy", "lfu"))
        budget = self.pages.budget
        self.fault_around = int(cfg.get("fault_around", 0))
        self.spin_ns = int(cfg.get("spin_us", 100) * 1000)
        self.slack = max(1, min(budget // 16, 256))
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
        self.fault_lat = LatencyRing(LAT_RING)      # fault service, per faulting page
        self.evict_lat = LatencyRing(4096)          # eviction round, per page
        self.load_lat = LatencyRing(8192)           # the source's load, per page
        self.c = dict.fromkeys((
            "faults",               # missing faults served (a page counted once per fill)
            "zero_fills",           # pages never written, answered with a zero page
            "fills_from_store",     # pages brought back from the source
            "fault_around_pages",   # evicted neighbours brought back with a faulting page
            "wp_faults",            # writes that met a page under (or refused) eviction
            "duplicate_faults",     # a second thread faulting on a page already filled
            "evicted_pages",        # pages pushed out to the source
            "eviction_rounds",      # batches of victims
            "refused_pages",        # victims the source refused: they stay resident
            "store_errors",         # eviction rounds whose store raised: victims stay resident
            "fill_errors",          # pages that could not be brought back (poisoned)
            "copy_eexist",          # a fill found a page already there (woken)
        ), 0)
        # the client process, watched directly: the control socket's EOF alone does not
        # prove it gone (its descriptor may have been closed by a stray close)
        self.client_pid = int(cfg.get("client_pid") or 0)
        self.client_pidfd = os.pidfd_open(self.client_pid) if self.client_pid else None
        self.ctl_lost = False
        self.guards = GuardKeeper(uffd_fd, self.base, self.npages * PAGE, self.client_pid)
        self.source = open_source(cfg)

    def close(self) -> None:
        """Dismiss a guard this handler started and close the source. Idempotent."""
        self.guards.drop()              # one we started is ours to dismiss: the client knows only its own
        if self.source is not None:
            self.source.close()
            self.source = None

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        """Serve until the client says close or goes away.

        Adaptive spinning: after a fault the handler keeps reading the (non-blocking)
        descriptor for ``spin_us``, since waking a sleeping process costs far more than
        the fault itself here; then it sleeps in ``poll``.
        """
        self.guards.poller = poller = select.poll()
        poller.register(self.uffd, select.POLLIN)
        poller.register(self.ctl.fileno(), select.POLLIN)
        ctl_fd = self.ctl.fileno()
        if self.client_pidfd is not None:
            poller.register(self.client_pidfd, select.POLLIN)
        pages, budget, slack = self.pages, self.pages.budget, self.slack
        last_fault = 0
        next_ctl = 0
        clock = time.monotonic_ns
        while True:
            faults = uffd.read_faults(self.uffd, MAX_MSGS)
            if faults:
                self.serve(faults)
                if pages.nres >= budget + slack and not self.evict_blocked:
                    # a steady stream of faults leaves no idle moment: evict between them
                    self.evict(pages.nres - budget + slack - 1)
                last_fault = clock()
                if last_fault < next_ctl:
                    continue
            elif pages.nres > budget and not self.evict_blocked:
                self.evict(pages.nres - budget + slack - 1)
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
                if fd == self.guards.pidfd:
                    self.guards.replace()
                    continue
                if fd == ctl_fd:
                    if not self.control():
                        return
                    if self.ctl_lost:
                        poller.unregister(ctl_fd)
            if self.guards.retry_due():
                self.guards.replace()               # the last try failed: again

    def control(self) -> bool:
        """Answer one request (``protocol.py``); False when the handler should stop."""
        try:
            req = protocol.recv(self.ctl)
        except (EOFError, ConnectionError):
            if self.client_pidfd is None or client_gone(self.client_pidfd, self.client_pid, self.base):
                return False                           # the client went away
            # The client lives, but its end of the socket is closed (a stray close of the
            # descriptor number). Its evicted pages live only here: serve its faults until
            # it dies (the client pidfd), rather than exit and lose them all.
            say("devpool region handler: the region's control socket was closed under it; "
                "still serving its pages until the process exits\n")
            self.ctl_lost = True
            return True
        op, tag = req[0], req[-1]
        if self.guards.error is not None and op not in (protocol.CLOSE, protocol.UNGUARD):
            protocol.send(self.ctl, protocol.error("DevpoolError", self.guards.error, tag))
            return True
        try:
            if op == protocol.CLOSE:
                self.close()
                protocol.send(self.ctl, protocol.ok(None, tag))
                return False
            if op == protocol.EVICT:
                protocol.send(self.ctl, protocol.ok(self._evict_request(req[1]), tag))
            elif op == protocol.STATS:
                protocol.send(self.ctl, protocol.ok(self.stats(), tag))
            elif op == protocol.PING:
                protocol.send(self.ctl, protocol.ok(os.getpid(), tag))
            elif op == protocol.GUARD:          # the client's guard is up: watch it
                self.guards.watch(int(req[1]))
                protocol.send(self.ctl, protocol.ok(self.guards.pid, tag))
            elif op == protocol.UNGUARD:        # the client is closing: its guard's exit is no death
                self.guards.stand_down()
                protocol.send(self.ctl, protocol.ok(None, tag))
            else:
                protocol.send(self.ctl, protocol.error("BadInputError", f"unknown request {op!r}", tag))
        except Exception as exc:                       # reported, the handler goes on
            protocol.send(self.ctl, protocol.error(exc, tag=tag))
        return True

    def _evict_request(self, n) -> int:
        """The client's ``evict(n)``: ``n`` pages (None: down to the budget, as the loop
        would, sparing the most recent faults)."""
        keep = 0
        if n is None:
            n, keep = self.pages.over_budget(), KEEP_RECENT
        out = 0
        while out < n:
            got = self.evict(min(n - out, MAX_BATCH), keep_recent=keep)
            if got == 0:
                break
            out += got
        return out

    # --- fault service -----------------------------------------------------------------
    def serve(self, faults: list) -> None:
        """Answer every message read at once: duplicates dropped, missing pages of the
        source loaded (a few one by one, more with one batch call), the others
        zero-filled or woken."""
        t0 = time.monotonic_ns()
        base, npages, state = self.base, self.npages, self.pages.state
        if len(faults) == 1 and self.source.single_page:        # the common case, kept short
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
                self.c["copy_eexist"] += uffd.place(self.uffd, base + (p << SHIFT), PAGE)
                self.pages.came_in(p, 1)
                self.c["zero_fills"] += 1
                self.c["faults"] += 1
                self.fault_lat.add(time.monotonic_ns() - t0)
            elif st == LOST:                    # poisoned before; if that failed, try again
                self._poison(p)
            elif uffd.place(self.uffd, base + (p << SHIFT), PAGE):
                # Counted resident: normally another thread's fault on a page filled
                # since (EEXIST: woken). But the caller may have freed the page behind our
                # back (madvise MADV_REMOVE): a wake alone would make it fault again
                # forever. Zero-filling is what MADV_REMOVE promises.
                self.c["duplicate_faults"] += 1
            else:
                self.c["zero_fills"] += 1
        if stored:
            self.fill(stored, t0)
        for p in wp:
            self.c["wp_faults"] += 1
            addr = base + (p << SHIFT)
            if state[p] == RESIDENT:
                self.pages.written(p)           # written: worth trying to evict again
                uffd.writeprotect(self.uffd, addr, PAGE, False)     # lifts and wakes
            else:
                uffd.wake(self.uffd, addr, PAGE)    # evicted meanwhile: retry, fault MISSING
        self.evict_blocked = False

    def fill(self, faulted: list, t0: int) -> None:
        """Bring back evicted pages (and, with fault-around, their evicted neighbours)
        with one load from the source, then one fill per run of adjacent pages."""
        pages = faulted
        if self.fault_around > 1:
            k = self.fault_around
            state = self.pages.state
            extra = set()
            for p in faulted:
                lo = p & ~(k - 1)
                win = np.arange(lo, min(lo + k, self.npages))
                extra.update(win[state[win] == EVICTED].tolist())
            pages = sorted(extra)
        elif len(pages) > 1:
            pages = sorted(pages)
        if len(pages) == 1 and self.source.single_page and self._fill_one(pages[0], t0):
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
                    self.pages.came_in(p, 1)
                    self.c["faults"] += 1
                    self.fault_lat.add(time.monotonic_ns() - t0)
                else:
                    self.pages.came_in(p, 0)
                    self.c["fault_around_pages"] += 1
            self.c["fills_from_store"] += int(sum(ok))

    def _fill_one(self, p: int, t0: int) -> bool:
        """One page, the common case: the source's single-page load (a tenth of a batch
        of one) into the handler's page buffer, then UFFDIO_COPY from its address. The
        load keeps the page in the source until after the copy, once the faulting thread
        runs again (about 1 us less for it to wait). False: the load failed, let the
        batch path sort it out (it poisons what cannot be loaded)."""
        try:
            t = time.monotonic_ns()
            self.source.load_one(p, self.page, keep=True)
            t_load = time.monotonic_ns() - t
        except Exception:
            return False
        self.c["copy_eexist"] += uffd.place(self.uffd, self.base + (p << SHIFT), PAGE, self.page_addr)
        # the faulting thread runs again from here: bookkeeping only after the copy
        self.source.forget(p)
        self.load_lat.add(t_load)
        self.pages.came_in(p, 1)
        self.c["faults"] += 1
        self.c["fills_from_store"] += 1
        self.fault_lat.add(time.monotonic_ns() - t0)
        return True

    def _load(self, chunk: list) -> list:
        """Load ``chunk`` into ``buf`` rows; per page True, or False where the source
        failed (those pages are poisoned: the access raises SIGBUS, never reads zeros)."""
        n = len(chunk)
        out = self.buf[:n]
        if not self.source.needs_bytes:
            return [True] * n                   # a source that keeps no bytes has none to load
        if n <= self.source.one_by_one:
            return self._load_each(chunk, out)
        try:
            t = time.monotonic_ns()
            self.source.load_batch(chunk, out)
            self.load_lat.add((time.monotonic_ns() - t) / n)
            return [True] * n
        except Exception:
            pass
        return self._load_each(chunk, out)      # a batch failed: one at a time, to find the bad ones

    def _load_each(self, chunk: list, out: np.ndarray) -> list:
        """:meth:`_load`, one page at a time."""
        ok = []
        for i, p in enumerate(chunk):
            try:
                t = time.monotonic_ns()
                self.source.load_one(p, out[i])
                self.load_lat.add(time.monotonic_ns() - t)
                ok.append(True)
            except Exception as exc:
                say(f"devpool region handler: page {p} could not be loaded ({exc}); poisoning it\n")
                self.c["fill_errors"] += 1
                self._poison(p)
                ok.append(False)
        return ok

    def _poison(self, p: int) -> None:
        """Make page ``p`` raise SIGBUS on access from now on (and wake its waiters).
        An evicted page keeps the write-protect marker it was evicted under, and
        UFFDIO_POISON refuses to overwrite any PTE marker (EEXIST: the faulting thread
        would wait forever), so the marker is resolved first, without waking. Poisoned
        already (EEXIST): a thread that read the page table before the first poison went
        in but queued after its wake is still waiting; ``place`` wakes it."""
        addr = self.base + (p << SHIFT)
        try:
            uffd.writeprotect(self.uffd, addr, PAGE, False, wake_=False)
            uffd.place(self.uffd, addr, PAGE, poison_=True)
        except OSError as exc:
            say(f"devpool region handler: poisoning page {p} failed: {exc}\n")
        self.pages.lost(p)

    def _copy_runs(self, chunk: list, ok: list) -> None:
        """One fill per run of adjacent loaded pages of ``chunk`` (rows of ``buf``)."""
        base, fd, source = self.base, self.uffd, self.source
        i, n = 0, len(chunk)
        while i < n:
            if not ok[i]:
                i += 1
                continue
            j = i + 1
            while j < n and ok[j] and chunk[j] == chunk[j - 1] + 1:
                j += 1
            if source.delay_ns:
                until = time.monotonic_ns() + source.delay_ns
                while time.monotonic_ns() < until:
                    pass
            # a page already there cannot happen while this handler alone fills the
            # region; if it did, it is newer than ours and is left alone (and woken)
            src = None if source.zero_fill else self.buf_addr + i * PAGE
            self.c["copy_eexist"] += uffd.place(fd, base + (chunk[i] << SHIFT), (j - i) * PAGE, src)
            i = j

    # --- eviction ----------------------------------------------------------------------
    def evict(self, n: int, keep_recent: int = KEEP_RECENT) -> int:
        """Push up to ``n`` resident pages out; returns how many left.

        1. write-protect the victims (a writer now blocks in a WP fault),
        2. read their bytes from the memfd, 3. store them (one batch),
        4. punch the stored ones out of the memfd, lift protection from refused ones.
        Messages that arrive meanwhile are answered after the batch (see ``serve``).
        """
        t0 = time.monotonic_ns()                    # the round's cost includes choosing its victims
        victims = self.pages.pick(min(n, MAX_BATCH), keep_recent)
        if victims.size == 0:
            self.evict_blocked = True
            return 0
        base, fd = self.base, self.uffd
        victim_runs = runs(victims)
        for lo, hi in victim_runs:
            uffd.writeprotect(fd, base + (int(victims[lo]) << SHIFT), (hi - lo) * PAGE, True)
        k = victims.size
        rows = self.buf[:k]
        try:
            if self.source.needs_bytes:
                for lo, hi in victim_runs:
                    want = (hi - lo) * PAGE
                    got = os.preadv(self.memfd, [rows[lo:hi]], int(victims[lo]) << SHIFT)
                    if got != want:
                        raise OSError(errno.EIO, f"short read of the region ({got} of {want} bytes)")
            kept = self.source.store(victims, rows)
        except Exception as exc:
            # A store that fails (a full or broken swap file, a device error) keeps none of
            # the victims: they stay resident, as refused ones do. Raised out of the loop's
            # automatic eviction it would kill the handler and lose every evicted page.
            say(f"devpool region handler: evicting {k} page(s) failed, they stay "
                f"resident: {type(exc).__name__}: {exc}\n")
            self.c["store_errors"] += 1
            kept = np.zeros(k, np.bool_)
        gone = victims[kept]
        for lo, hi in runs(gone):
            uffd.punch_hole(self.memfd, int(gone[lo]) << SHIFT, (hi - lo) * PAGE)
        stay = victims[~kept]
        if stay.size:
            # refused pages stay resident *and* write-protected: the first write lifts it
            # and makes them candidates again
            self.pages.refuse(stay)
            self.c["refused_pages"] += int(stay.size)
        self.pages.went_out(gone)
        self.c["evicted_pages"] += int(gone.size)
        self.c["eviction_rounds"] += 1
        self.evict_lat.add((time.monotonic_ns() - t0) / k)
        if gone.size == 0:
            self.evict_blocked = True
        return int(gone.size)

    # --- statistics --------------------------------------------------------------------
    def stats(self) -> dict:
        st = dict(self.c)
        st.update({
            "guards_replaced": self.guards.replaced,    # guards started after the one in office died
            "resident_pages": int(self.pages.nres),
            "resident_budget_pages": self.pages.budget,
            "stored_region_pages": int(self.pages.nstored),
            "fault_p50_us": self.fault_lat.percentile_us(50),
            "fault_p99_us": self.fault_lat.percentile_us(99),
            "evict_per_page_p50_us": self.evict_lat.percentile_us(50),
            "store_load_per_page_p50_us": self.load_lat.percentile_us(50),
            "serve": self.source.name,
            "policy": self.pages.policy,
            "fault_around": self.fault_around,
            "handler_pid": os.getpid(),
            "guard_pid": self.guards.pid,
        })
        self.source.stats(st)
        return st


def handler_main(argv: list) -> int:
    """The handler process: ``argv`` is the userfaultfd, the memfd and the control
    socket's descriptor; the configuration comes first on the socket."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # a terminal's Ctrl-C is the client's
    uffd_fd, memfd, ctl_fd = (int(x) for x in argv[:3])
    ctl = socket.socket(fileno=ctl_fd)
    try:
        cfg = protocol.recv(ctl)
        handler = Handler(uffd_fd, memfd, ctl, cfg)
    except BaseException as exc:
        try:
            protocol.send(ctl, protocol.error(exc))
        except OSError:
            pass
        return 1
    protocol.send(ctl, ("ready", {"pid": os.getpid(), "backend": handler.source.backend()}))
    try:
        handler.run()
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.ENOENT, errno.EFAULT, errno.EBADF):
            return 0                        # the client's memory is gone: nothing left to serve
        raise
    finally:
        handler.close()
    return 0
