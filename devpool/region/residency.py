"""Which pages of a region are where, and which resident pages to evict next.

The handler's bookkeeping, apart from everything that touches memory: numpy only, no
userfaultfd, so it is tested on its own (``tests/region/test_residency.py``).

Every page of the region is in one state (one byte per page)::

    UNTOUCHED --fault--> RESIDENT --evicted--> EVICTED --fault--> RESIDENT ...
                                                  |
                                                  +--cannot be loaded--> LOST (poisoned)

Victim policy ``"lfu"``: the handler sees faults, not accesses (a resident page's loads
and stores never reach it), so it ranks pages by how often they have faulted in,
halving every count each 8 x budget faults so that old heat fades. Resident pages wait
in a queue in the order they came in; a round of ``n`` victims looks at the ``4n``
oldest (a window), evicts the ``n`` coldest of them (the earliest queued among equals)
and puts the others back at the tail. ``"fifo"``: the ``n`` oldest. Pages most recently faulted
in are kept (``keep_recent``): an instruction touching several pages of the region (a
copy across a page boundary) must find them all resident.

Cost, bounded by the work, never by the region: a fault sets the page's state and
notes the page (its count, seq and queue entry are settled for many pages at once, in
numpy, before the policy next looks; no count is halved until then, each by the eras
it missed); a round of ``n`` victims looks at ``4n`` pages plus queue entries gone
stale. Where the window holds every resident page (``nres <= 4n``) the choice is exact
LFU; beyond, the coldest of each window, a sampled LFU (``bench_region.py`` measures
its faults against FIFO; ``benchmarks/bench_region_growth.py`` its cost at 1 GiB).
"""

from __future__ import annotations

import numpy as np

__all__ = ["EVICTED", "LOST", "POLICIES", "RESIDENT", "UNTOUCHED", "Residency"]

UNTOUCHED = 0    # a hole never filled: a fault gets a zero page, no pool space
RESIDENT = 1     # mapped in the client
EVICTED = 2      # in the page source (Zswap: pool, fill word or backing file; a plain file)
LOST = 3         # the source failed to give it back: poisoned (an access raises SIGBUS)

POLICIES = ("lfu", "fifo")
#: hit counts are capped, well inside the 32 bits their word gives them
_HITS_CAP = (1 << 22) - 1
_LOW32 = (1 << 32) - 1
#: the victim queue's first size (it doubles as needed)
_RING0 = 1024


class Residency:
    """The state of each of ``npages`` pages, the resident count against ``budget``,
    and the victim policy's heat (``heat``: fault-ins, aged by era) and age (``seq``)
    per page."""

    #: a round of n victims looks at this many times n of the oldest resident pages
    WINDOW = 4

    def __init__(self, npages: int, budget: int, policy: str = "lfu"):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.npages = int(npages)
        self.budget = max(1, int(budget))
        self.policy = policy
        n = self.npages
        self.state = np.zeros(n, np.uint8)
        # per page, (era << 32) | hits: its fault-ins, as of the aging era it was last
        # brought to (one word, so that a fault reads and writes one array element;
        # int64, since numpy converts a Python int into uint64 at twice the cost)
        self.heat = np.zeros(n, np.int64)
        self.seq = np.zeros(n, np.int64)          # when the page last came in (or was written)
        self.refused = np.zeros(n, np.bool_)      # the source refused it; retried once written
        # resident pages in the order they came in, with the seq each came in with: a
        # ring of two arrays, entries head..tail-1; an entry whose page left (or came in
        # again, or was refused) since is stale: dropped when met
        self.ring_page = np.zeros(_RING0, np.int64)
        self.ring_seq = np.zeros(_RING0, np.int64)
        self.ring_mask = _RING0 - 1
        self.head = self.tail = 0
        # came_in's pages whose bookkeeping waits for _settle (page, heat, era each)
        self._pend_page: list[int] = []
        self._pend_heat: list[int] = []
        self._pend_era: list[int] = []
        self.next_seq = 1
        self.nres = 0                             # pages RESIDENT
        self.nstored = 0                          # pages EVICTED
        self.era = 0                              # every count halves once per era
        self.faults_since_aging = 0

    # --- transitions -----------------------------------------------------------------------
    def came_in(self, p: int, heat: int = 1) -> None:
        """Page ``p`` is resident now: faulted in (``heat`` 1) or brought back with a
        faulting neighbour (``heat`` 0)."""
        # the fault's hot path: the state and the counts now (the handler reads them on
        # the next fault), the policy's bookkeeping (heat, seq, queue) noted in three
        # lists and done for many pages at once, vectorised, before it is next read
        state = self.state
        if state.item(p) == EVICTED:
            self.nstored -= 1
        state[p] = RESIDENT
        self.nres += 1
        self._pend_page.append(p)
        self._pend_heat.append(heat)
        self._pend_era.append(self.era)
        self.faults_since_aging += heat
        if self.faults_since_aging >= 8 * self.budget:
            self.era += 1                         # every count halves, lazily
            self.faults_since_aging = 0

    def _settle(self) -> None:
        """The pages noted by ``came_in`` since last time: their counts, brought to the
        era each came in at and raised by its heat, their seq numbers (in the order they
        came in) and their queue entries."""
        if not self._pend_page:
            return
        pages = np.array(self._pend_page, np.int64)
        heats = np.array(self._pend_heat, np.int64)
        eras = np.array(self._pend_era, np.int64)
        self._pend_page, self._pend_heat, self._pend_era = [], [], []
        if np.unique(pages).size < pages.size:    # one page twice (it went out between): in order
            for p, h, e in zip(pages.tolist(), heats.tolist(), eras.tolist()):
                self._settle_some(np.array([p]), np.array([h]), np.array([e]))
        else:
            self._settle_some(pages, heats, eras)

    def _settle_some(self, pages: np.ndarray, heats: np.ndarray, eras: np.ndarray) -> None:
        old = self.heat[pages]
        missed = np.minimum(eras - (old >> 32), 32)
        hits = np.minimum(((old & _LOW32) >> missed) + heats, _HITS_CAP)
        self.heat[pages] = (eras << 32) | hits
        seqs = self.next_seq + np.arange(pages.size)
        self.next_seq += pages.size
        self.seq[pages] = seqs
        self._push(pages, seqs)

    def _enqueue(self, p: int) -> None:
        self._settle()
        seq = self.next_seq
        self.seq[p] = seq
        self.next_seq = seq + 1
        self._push(np.array([p], np.int64), np.array([seq], np.int64))

    def _push(self, pages: np.ndarray, seqs: np.ndarray) -> None:
        """Append entries at the ring's tail."""
        k = pages.size
        while self.tail - self.head + k > self.ring_mask + 1:
            self._grow()
        idx = (self.tail + np.arange(k)) & self.ring_mask
        self.ring_page[idx] = pages
        self.ring_seq[idx] = seqs
        self.tail += k

    def _grow(self) -> None:
        """Twice the ring, its entries in order from index 0."""
        n = self.tail - self.head
        idx = (self.head + np.arange(n)) & self.ring_mask
        size = 2 * self.ring_page.size
        page, seq = np.zeros(size, np.int64), np.zeros(size, np.int64)
        page[:n], seq[:n] = self.ring_page[idx], self.ring_seq[idx]
        self.ring_page, self.ring_seq, self.ring_mask = page, seq, size - 1
        self.head, self.tail = 0, n

    def went_out(self, pages: np.ndarray) -> None:
        """``pages`` (resident) were evicted into the source."""
        self._settle()
        self.state[pages] = EVICTED
        self.nres -= int(pages.size)
        self.nstored += int(pages.size)

    def refuse(self, pages: np.ndarray) -> None:
        """The source refused ``pages``: they stay resident and are no candidates until
        written again (trying them again unchanged is wasted work)."""
        self.refused[pages] = True

    def written(self, p: int) -> None:
        """Resident page ``p`` was written: worth trying to evict again (as a page that
        was just used: it joins the queue's tail)."""
        if self.refused[p] and self.state[p] == RESIDENT:
            self.refused[p] = False
            self._enqueue(p)

    def lost(self, p: int) -> None:
        """Page ``p`` could not be brought back: it is poisoned for good."""
        if self.state[p] == EVICTED:
            self.nstored -= 1
        self.state[p] = LOST

    # --- the victim policy -----------------------------------------------------------------
    def over_budget(self) -> int:
        """Resident pages beyond the budget (0 when within it)."""
        return max(0, self.nres - self.budget)

    def effective_hits(self, pages: np.ndarray) -> np.ndarray:
        """The heat of ``pages`` as the policy sees it now (aged by the eras they missed)."""
        self._settle()
        h = self.heat[pages]
        missed = np.minimum(self.era - (h >> 32), 32)
        return (h & _LOW32) >> missed

    def _window(self, want: int, recent: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Up to ``want`` valid entries taken from the ring's head (stale ones dropped),
        as (pages, seqs), and those at or after seq ``recent`` (kept back: the caller
        queues them again), also as (pages, seqs)."""
        pages, seqs, back_p, back_s = [], [], [], []
        nfound = 0
        while self.tail > self.head and nfound < want:
            k = min(self.tail - self.head, want - nfound)
            idx = (self.head + np.arange(k)) & self.ring_mask
            self.head += k
            p, s = self.ring_page[idx], self.ring_seq[idx]
            valid = (self.state[p] == RESIDENT) & (self.seq[p] == s) & ~self.refused[p]
            p, s = p[valid], s[valid]
            if recent is not None:
                late = s >= recent
                back_p.append(p[late])
                back_s.append(s[late])
                p, s = p[~late], s[~late]
            pages.append(p)
            seqs.append(s)
            nfound += p.size
        empty = np.zeros(0, np.int64)
        cat = lambda parts: np.concatenate(parts) if parts else empty  # noqa: E731
        return cat(pages), cat(seqs), cat(back_p), cat(back_s)

    def pick(self, n: int, keep_recent: int) -> np.ndarray:
        """Up to ``n`` victims among the resident pages not refused and not among the
        ``keep_recent`` most recently faulted in, sorted by page number. They are handed
        over: each must then go out (:meth:`went_out`) or be refused (:meth:`refuse`)."""
        if n <= 0:
            return np.zeros(0, np.int64)
        self._settle()
        want = n if self.policy == "fifo" else self.WINDOW * n
        cand, seqs, back_p, back_s = self._window(want, self.next_seq - keep_recent if keep_recent else None)
        if n < cand.size:                         # lfu only: the coldest, the earliest queued among equals
            key = (np.minimum(self.effective_hits(cand), _HITS_CAP) << 32) | np.arange(cand.size)
            order = np.argpartition(key, n - 1)
            back = np.sort(order[n:])             # the survivors wait at the tail, in their order
            self._push(cand[back], seqs[back])
            cand = cand[order[:n]]
        self._push(back_p, back_s)
        cand.sort()
        return cand
