"""``ChaosStorage``: a hostile host storage that breaks any code relying on luck.

On *every* public pool call it, before the call runs:

- migrates a random share of live objects to fresh arena space through the allocator
  (a real relocation: planned, copied, old space freed), then cleans the arena (more
  moves), so an address remembered across two calls is wrong;
- poisons every byte it frees or moves away from with ``POISON``, so a stale read shows
  garbage instead of yesterday's data;
- scrambles handles: the pool XORs a per-pool random key into every handle it hands
  out, so arithmetic on handles or reuse of another pool's handles fails loudly.

Counters (read by the tests that prove the storage hostile, and shown by ``stats()``):
``calls`` (hooks run), ``relocated`` (objects migrated), ``poisoned_bytes`` (every byte
overwritten with ``POISON``), of which ``freed_poisoned_bytes`` were freed by the
allocator and ``moved_from_poisoned_bytes`` were left behind by a move.

Cost: a copy of a share of the pool per call — a test double, not a backend to run.
"""

from __future__ import annotations

import secrets

import numpy as np

from devpool.host import HostStorage

from ._checks import check_int, check_real

__all__ = ["ChaosStorage", "POISON"]

POISON = 0xA5


class ChaosStorage(HostStorage):
    """Host arena that relocates objects, poisons freed bytes and scrambles handles."""

    kind = "chaos"

    def __init__(self, capacity_bytes: int, seed: int | None = None,
                 move_fraction: float = 0.25):
        self.seed = secrets.randbits(32) if seed is None else check_int(seed, "seed", lo=0)
        self.move_fraction = check_real(move_fraction, "move_fraction", lo=0, hi=1)
        super().__init__(capacity_bytes)
        self.rng = np.random.default_rng(self.seed)
        self.handle_key = int(self.rng.integers(1, 1 << 62))
        self.calls = 0
        self.relocated = 0
        self.freed_poisoned_bytes = 0
        self.moved_from_poisoned_bytes = 0

    def before_call(self, pool) -> None:
        self.calls += 1
        self.relocated += pool._relocate_random(self.rng, self.move_fraction)
        # clean up after ourselves (another move), so the dead copies left behind do not
        # count against a caller's limits
        pool._clean(1.0)

    def _moved_from(self, offsets, lengths) -> None:
        # moved-from bytes are poison now
        self.moved_from_poisoned_bytes += _poison(self._arena, offsets, lengths)

    def discard(self, offsets, lengths):
        self.freed_poisoned_bytes += _poison(self._arena, offsets, lengths)

    @property
    def poisoned_bytes(self) -> int:
        """Every byte this storage overwrote with ``POISON`` so far."""
        return self.freed_poisoned_bytes + self.moved_from_poisoned_bytes

    def discard_one(self, offset, nbytes):
        self._arena[offset:offset + nbytes] = POISON
        self.freed_poisoned_bytes += nbytes

    def describe(self) -> dict:
        return {"backend": self.kind, "device": "host RAM (hostile)", "chaos_seed": self.seed,
                "chaos_calls": self.calls, "chaos_relocated": self.relocated,
                "chaos_poisoned_bytes": self.poisoned_bytes}


def _poison(arena: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> int:
    """Overwrite each range with ``POISON``; returns the bytes written."""
    done = 0
    for off, n in zip(offsets.tolist(), lengths.tolist()):
        arena[off:off + n] = POISON
        done += n
    return done
