"""``ChaosStorage``: a hostile policy over *any* storage, that breaks code relying on luck.

An adaptor, as RMM's ``<Policy>ResourceAdaptor`` wraps an upstream resource: every verb
goes to the upstream storage (host RAM, or device memory). On top of it:

- it asks the pool for hostility (``hostility``, a :class:`~devpool.pool.storage.Hostility`):
  before *every* public pool call that touches objects, the pool migrates random live
  objects to fresh arena space with its own verb (:meth:`Pool.migrate
  <devpool.pool.pool.Pool.migrate>`: planned by the allocator, copied by the upstream's
  own ``move``, old space freed, cleaned as the pool cleans): a few per call and one
  per object the call names, so an address remembered across two calls is wrong; and it
  scrambles handles
  (the pool XORs a random key into every handle it hands out), so arithmetic on handles
  or reuse of another pool's handles fails loudly;
- it poisons every byte it frees or moves away from with ``POISON``, written through
  the upstream's ``scatter``, so a stale read shows garbage instead of yesterday's data,
  in RAM or on a device alike.

The storage never calls the pool: the pool reads the policy once and acts on it.

``open_pool("chaos")`` wraps host storage, ``open_pool("chaos-cuda")`` device storage;
every contract, frontend and model suite runs on both, so the claim that nothing above
storage assumes linear RAM is tested on the device storage too.

Counters (read by the tests that prove the storage hostile, and shown by ``stats()``
beside the pool's own ``hostile_calls`` and ``migrated_objects``): ``poisoned_bytes``
(every byte overwritten with ``POISON``), of which ``freed_poisoned_bytes`` were freed
by the allocator and ``moved_from_poisoned_bytes`` were left behind by a move.

Cost: per call, a few moves per object the call names and the poison they leave, found
with a few sorts: bounded by the call, not by the pool, so a hostile pool of any size
runs (a test double still: every call pays for a migration).
"""

from __future__ import annotations

import secrets

import numpy as np

from .._checks import check_int
from .storage import Hostility, Storage

__all__ = ["ChaosStorage", "POISON", "uncovered"]

POISON = 0xA5


def _covering(starts: np.ndarray, ends: np.ndarray, at: np.ndarray) -> np.ndarray:
    """How many ranges ``[starts[i], ends[i])`` contain each position of ``at``."""
    return (np.searchsorted(np.sort(starts), at, side="right")
            - np.searchsorted(np.sort(ends), at, side="right"))


def uncovered(offsets: np.ndarray, lengths: np.ndarray, dst: np.ndarray, dst_lengths: np.ndarray):
    """The parts of ranges ``[offsets, +lengths)`` that no range ``[dst, +dst_lengths)``
    covers, as ``(offsets, lengths)``: the bytes a move left behind, adjacent parts
    joined. Vectorised: the elementary intervals between all range ends, each kept when
    a source covers it and no destination does (a few sorts, no loop per range)."""
    if offsets.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ends, dst_ends = offsets + lengths, dst + dst_lengths
    cuts = np.unique(np.concatenate([offsets, ends, dst, dst_ends]))
    lo, hi = cuts[:-1], cuts[1:]
    keep = (_covering(offsets, ends, lo) > 0) & (_covering(dst, dst_ends, lo) == 0)
    lo, hi = lo[keep], hi[keep]
    if lo.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = np.ones(lo.size, np.bool_)                # a part that does not continue the last
    first[1:] = lo[1:] != hi[:-1]
    last = np.ones(lo.size, np.bool_)
    last[:-1] = first[1:]
    starts = lo[first].astype(np.int64)
    return starts, (hi[last] - starts).astype(np.int64)


class ChaosStorage(Storage):
    """Any storage, its pool migrating objects and scrambling handles, its freed bytes
    poisoned."""

    kind = "chaos"
    scrubs_freed = True                  # freed bytes are poisoned

    def __init__(self, upstream: Storage, seed: int | None = None, migrate_per_call: int = 8,
                 migrate_per_object: int = 1):
        super().__init__(upstream.capacity_bytes)
        self.upstream = upstream
        self.kind = "chaos" if upstream.kind == "host" else f"chaos-{upstream.kind}"
        self.device_resident = upstream.device_resident
        self.seed = secrets.randbits(32) if seed is None else check_int(seed, "chaos seed", lo=0, hi=2**63 - 1)
        self.hostility = Hostility(np.random.default_rng(self.seed),
                                   check_int(migrate_per_call, "chaos migrate_per_call", lo=0, hi=1 << 32),
                                   check_int(migrate_per_object, "chaos migrate_per_object", lo=0, hi=1 << 32),
                                   scramble_handles=True)
        self.freed_poisoned_bytes = 0
        self.moved_from_poisoned_bytes = 0
        self._poison_src = np.full(0, POISON, np.uint8)

    # --- the poison ------------------------------------------------------------------------
    def _poison(self, offsets: np.ndarray, lengths: np.ndarray) -> int:
        """Overwrite each range with ``POISON`` through the upstream; returns the bytes."""
        if offsets.size == 0:
            return 0
        longest = int(lengths.max())
        if self._poison_src.size < longest:
            self._poison_src = np.full(longest, POISON, np.uint8)
        self.upstream.scatter(self._poison_src, np.zeros(offsets.size, np.int64), offsets, lengths)
        return int(lengths.sum())

    @property
    def poisoned_bytes(self) -> int:
        """Every byte this storage overwrote with ``POISON`` so far."""
        return self.freed_poisoned_bytes + self.moved_from_poisoned_bytes

    def discard(self, offsets, lengths):
        self.freed_poisoned_bytes += self._poison(offsets, lengths)

    def discard_one(self, offset, nbytes):
        self.discard(np.array([offset], np.int64), np.array([nbytes], np.int64))

    def move(self, src_offsets, dst_offsets, lengths):
        self.upstream.move(src_offsets, dst_offsets, lengths)
        left, n = uncovered(src_offsets, lengths, dst_offsets, lengths)
        self.moved_from_poisoned_bytes += self._poison(left, n)   # moved-from bytes are poison now

    # --- everything else is the upstream's -------------------------------------------------
    def commit(self, offset, nbytes):
        self.upstream.commit(offset, nbytes)

    def release(self, offset, nbytes):
        self.upstream.release(offset, nbytes)

    def reserve(self, end):
        self.upstream.reserve(end)

    def populate(self, offset, nbytes):
        self.upstream.populate(offset, nbytes)

    def trim(self):
        self.upstream.trim()

    def scatter(self, payload, src_starts, dst_offsets, lengths):
        self.upstream.scatter(payload, src_starts, dst_offsets, lengths)

    def gather(self, offsets, lengths, out, out_starts):
        self.upstream.gather(offsets, lengths, out, out_starts)

    def write_one(self, offset, data):
        self.upstream.write_one(offset, data)

    def read_one(self, offset, out):
        self.upstream.read_one(offset, out)

    def copy_one(self, offset, nbytes):
        return self.upstream.copy_one(offset, nbytes)

    def lend_one(self, offset, nbytes):
        return self.upstream.lend_one(offset, nbytes)

    def is_device_buffer(self, obj) -> bool:
        return self.upstream.is_device_buffer(obj)

    def scatter_device(self, payload, src_starts, dst_offsets, lengths):
        self.upstream.scatter_device(payload, src_starts, dst_offsets, lengths)

    def gather_device(self, offsets, lengths):
        return self.upstream.gather_device(offsets, lengths)

    @property
    def committed_bytes(self) -> int:
        return self.upstream.committed_bytes

    def describe(self) -> dict:
        up = self.upstream.describe()
        return {**up, "backend": self.kind, "upstream": up["backend"], "device": f"{up.get('device', up['backend'])} (hostile)",
                "chaos_seed": self.seed, "chaos_poisoned_bytes": self.poisoned_bytes}

    def close(self) -> None:
        self.upstream.close()
