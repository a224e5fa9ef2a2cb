"""Which pages of a region are where, and which resident pages to evict next.

The handler's bookkeeping, apart from everything that touches memory: numpy only, no
userfaultfd, so it is tested on its own (``tests/region/test_residency.py``).

Every page of the region is in one state (one byte per page)::

    UNTOUCHED --fault--> RESIDENT --evicted--> EVICTED --fault--> RESIDENT ...
                                                  |
                                                  +--cannot be loaded--> LOST (poisoned)

Victim policy ``"lfu"``: the handler sees faults, not accesses (a resident page's loads
and stores never reach it), so it ranks resident pages by how often they have faulted
in, halving every count each 8 x budget faults so that old heat fades, and evicts the
coldest, oldest first. ``"fifo"``: the oldest first. Pages most recently faulted in are
kept (``keep_recent``): an instruction touching several pages of the region (a copy
across a page boundary) must find them all resident.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EVICTED", "LOST", "POLICIES", "RESIDENT", "UNTOUCHED", "Residency"]

UNTOUCHED = 0    # a hole never filled: a fault gets a zero page, no pool space
RESIDENT = 1     # mapped in the client
EVICTED = 2      # in the page source (Zswap: pool, fill word or backing file; a plain file)
LOST = 3         # the source failed to give it back: poisoned (an access raises SIGBUS)

POLICIES = ("lfu", "fifo")
#: hit counts are capped so that (hits << 40) | seq stays an int64 key
_HITS_CAP = (1 << 22) - 1


class Residency:
    """The state of each of ``npages`` pages, the resident count against ``budget``,
    and the victim policy's heat (``hits``) and age (``seq``) per page."""

    def __init__(self, npages: int, budget: int, policy: str = "lfu"):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.npages = int(npages)
        self.budget = max(1, int(budget))
        self.policy = policy
        n = self.npages
        self.state = np.zeros(n, np.uint8)
        self.hits = np.zeros(n, np.int64)         # fault-ins, halved as they age
        self.seq = np.zeros(n, np.int64)          # when the page last came in
        self.refused = np.zeros(n, np.bool_)      # the source refused it; retried once written
        self.next_seq = 1
        self.nres = 0                             # pages RESIDENT
        self.nstored = 0                          # pages EVICTED
        self.faults_since_aging = 0

    # --- transitions -----------------------------------------------------------------------
    def came_in(self, p: int, heat: int = 1) -> None:
        """Page ``p`` is resident now: faulted in (``heat`` 1) or brought back with a
        faulting neighbour (``heat`` 0)."""
        if self.state[p] == EVICTED:
            self.nstored -= 1
        self.state[p] = RESIDENT
        self.hits[p] += heat
        self.seq[p] = self.next_seq
        self.next_seq += 1
        self.nres += 1
        self.faults_since_aging += heat
        if self.faults_since_aging >= 8 * self.budget:
            self.hits >>= 1
            self.faults_since_aging = 0

    def went_out(self, pages: np.ndarray) -> None:
        """``pages`` (resident) were evicted into the source."""
        self.state[pages] = EVICTED
        self.nres -= int(pages.size)
        self.nstored += int(pages.size)

    def refuse(self, pages: np.ndarray) -> None:
        """The source refused ``pages``: they stay resident and are no candidates until
        written again (trying them again unchanged is wasted work)."""
        self.refused[pages] = True

    def written(self, p: int) -> None:
        """Resident page ``p`` was written: worth trying to evict again."""
        self.refused[p] = False

    def lost(self, p: int) -> None:
        """Page ``p`` could not be brought back: it is poisoned for good."""
        if self.state[p] == EVICTED:
            self.nstored -= 1
        self.state[p] = LOST

    # --- the victim policy -----------------------------------------------------------------
    def effective_hits(self, pages: np.ndarray) -> np.ndarray:
        """The heat of ``pages`` as the policy sees it now (aged)."""
        return self.hits[pages]

    def over_budget(self) -> int:
        """Resident pages beyond the budget (0 when within it)."""
        return max(0, self.nres - self.budget)

    def pick(self, n: int, keep_recent: int) -> np.ndarray:
        """Up to ``n`` victims among the resident pages not refused and not among the
        ``keep_recent`` most recently faulted in, sorted by page number."""
        cand = np.flatnonzero((self.state == RESIDENT) & ~self.refused)
        if keep_recent:
            cand = cand[self.seq[cand] < self.next_seq - keep_recent]
        if cand.size == 0:
            return cand
        if self.policy == "fifo":
            key = self.seq[cand]
        else:
            key = (np.minimum(self.hits[cand], _HITS_CAP) << 40) | self.seq[cand]
        if n < cand.size:
            cand = cand[np.argpartition(key, n - 1)[:n]]
        cand.sort()
        return cand
