"""``ChaosStorage``: a hostile policy over *any* storage, that breaks code relying on luck.

An adaptor, as RMM's ``<Policy>ResourceAdaptor`` wraps an upstream resource: every verb
goes to the upstream storage (host RAM, or device memory), and on top of it, on *every*
public pool call, before the call runs:

- migrates a random share of live objects to fresh arena space through the allocator's
  relocation verbs (planned, copied by the upstream's own ``move``, old space freed),
  then cleans the arena (more moves), so an address remembered across two calls is
  wrong;
- poisons every byte it frees or moves away from with ``POISON``, written through the
  upstream's ``scatter``, so a stale read shows garbage instead of yesterday's data, in
  RAM or on a device alike;
- scrambles handles: the pool XORs a per-pool random key into every handle it hands
  out, so arithmetic on handles or reuse of another pool's handles fails loudly.

``open_pool("chaos")`` wraps host storage, ``open_pool("chaos-cuda")`` device storage;
every contract, frontend and model suite runs on both, so the claim that nothing above
storage assumes linear RAM is tested on the device storage too.

Counters (read by the tests that prove the storage hostile, and shown by ``stats()``):
``calls`` (hooks run), ``relocated`` (objects migrated), ``poisoned_bytes`` (every byte
overwritten with ``POISON``), of which ``freed_poisoned_bytes`` were freed by the
allocator and ``moved_from_poisoned_bytes`` were left behind by a move.

Cost: a copy of a share of the pool per call: a test double, not a backend to run.
"""

from __future__ import annotations

import secrets

import numpy as np

from .._checks import check_int, check_real
from .storage import Storage

__all__ = ["ChaosStorage", "POISON", "uncovered"]

POISON = 0xA5


def uncovered(offsets: np.ndarray, lengths: np.ndarray, dst: np.ndarray, dst_lengths: np.ndarray):
    """The parts of ranges ``[offsets, +lengths)`` that no range ``[dst, +dst_lengths)``
    covers, as ``(offsets, lengths)``: the bytes a move left behind. The destination
    ranges of one move never overlap each other."""
    order = np.argsort(dst, kind="stable")
    d0 = dst[order]
    d1 = d0 + dst_lengths[order]
    out_o, out_n = [], []
    for start, n in zip(offsets.tolist(), lengths.tolist()):
        pos, end = start, start + n
        k = max(0, int(np.searchsorted(d1, pos, side="right")))      # first dst ending after pos
        while pos < end and k < d0.size and d0[k] < end:
            if d0[k] > pos:
                out_o.append(pos)
                out_n.append(int(d0[k]) - pos)
            pos = max(pos, int(d1[k]))
            k += 1
        if pos < end:
            out_o.append(pos)
            out_n.append(end - pos)
    return np.array(out_o, np.int64), np.array(out_n, np.int64)


class ChaosStorage(Storage):
    """Any storage, relocating objects, poisoning freed bytes and scrambling handles."""

    kind = "chaos"

    def __init__(self, upstream: Storage, seed: int | None = None, move_fraction: float = 0.25):
        super().__init__(upstream.capacity_bytes)
        self.upstream = upstream
        self.kind = "chaos" if upstream.kind == "host" else f"chaos-{upstream.kind}"
        self.device_resident = upstream.device_resident
        self.seed = secrets.randbits(32) if seed is None else check_int(seed, "chaos seed", lo=0, hi=2**63 - 1)
        self.move_fraction = check_real(move_fraction, "chaos move_fraction", lo=0, hi=1)
        self.rng = np.random.default_rng(self.seed)
        self.handle_key = int(self.rng.integers(1, 1 << 62))
        self.calls = 0
        self.relocated = 0
        self.freed_poisoned_bytes = 0
        self.moved_from_poisoned_bytes = 0
        self._poison_src = np.full(0, POISON, np.uint8)

    # --- the hostility ---------------------------------------------------------------------
    def before_call(self, pool) -> None:
        self.calls += 1
        self.relocated += pool._relocate_random(self.rng, self.move_fraction)
        # clean up after ourselves (another move), so the dead copies left behind do not
        # count against a caller's limits
        pool._clean(1.0)

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
                "chaos_seed": self.seed, "chaos_calls": self.calls, "chaos_relocated": self.relocated,
                "chaos_poisoned_bytes": self.poisoned_bytes}

    def close(self) -> None:
        self.upstream.close()
