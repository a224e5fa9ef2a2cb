"""Random operation sequences against a dict model, on every backend.

Hypothesis drives alloc/write/read/free/compact (and failing calls) and after each step
the pool must hold exactly what the model says: bytes, sizes and live count.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import devpool


def make_machine(backend: str):
    class PoolMachine(RuleBasedStateMachine):
        handles = Bundle("handles")

        def __init__(self):
            super().__init__()
            self.pool = devpool.open_pool(backend, 96 * 1024, segment_bytes=16384)
            self.model: dict[int, bytes] = {}
            self.dead: list[int] = []

        def teardown(self):
            self.pool.close()

        @rule(target=handles, sizes=st.lists(st.integers(1, 4096), min_size=1, max_size=6),
              seed=st.integers(0, 2**32 - 1))
        def alloc_and_write(self, sizes, seed):
            rng = np.random.default_rng(seed)
            try:
                hs = self.pool.alloc_batch(sizes)
            except devpool.PoolFullError:
                total = sum((s + 15) // 16 * 16 for s in sizes)
                used = sum((len(v) + 15) // 16 * 16 for v in self.model.values())
                assert used + total > 96 * 1024 - 6 * 4096, "refused although plenty of room"
                return _multiple()
            payload = rng.integers(0, 256, sum(sizes), dtype=np.uint8)
            self.pool.write_batch(hs, payload, sizes)
            ends = np.cumsum(sizes)
            for h, e, s in zip(hs.tolist(), ends.tolist(), sizes):
                self.model[h] = payload[e - s:e].tobytes()
            return _multiple(*hs.tolist())

        @rule(h=handles, seed=st.integers(0, 255))
        def overwrite(self, h, seed):
            if h not in self.model:
                return
            data = bytes([seed]) * len(self.model[h])
            self.pool.write(h, data)
            self.model[h] = data

        @rule(h=handles)
        def read_one(self, h):
            if h in self.model:
                assert self.pool.read(h).tobytes() == self.model[h]
            else:
                with pytest.raises(devpool.InvalidHandleError):
                    self.pool.read(h)

        @rule(h=consumes(handles))
        def free_one(self, h):
            if h in self.model:
                self.pool.free(h)
                del self.model[h]
                self.dead.append(h)
            else:
                with pytest.raises(devpool.InvalidHandleError):
                    self.pool.free(h)

        @rule(data=st.data())
        def free_some_with_a_stale_one(self, data):
            if not self.dead or not self.model:
                return
            live = data.draw(st.lists(st.sampled_from(sorted(self.model)), max_size=3, unique=True))
            stale = data.draw(st.sampled_from(self.dead))
            with pytest.raises(devpool.InvalidHandleError):
                self.pool.free_batch(live + [stale])     # refused whole: nothing freed

        @rule(util=st.sampled_from([0.3, 0.7, 1.0]))
        def compact(self, util):
            self.pool.compact(util)

        @invariant()
        def matches_model(self):
            hs = list(self.model)
            data, lengths = self.pool.read_batch(hs)
            assert data.tobytes() == b"".join(self.model.values())
            assert lengths.tolist() == [len(v) for v in self.model.values()]
            assert self.pool.stats()["obj_used"] == len(self.model)

    return PoolMachine


def _multiple(*values):
    from hypothesis.stateful import multiple
    return multiple(*values)


def test_pool_matches_dict_model(backend):
    machine = make_machine(backend)
    machine.TestCase.settings = settings(
        max_examples=25 if backend == "cuda" else 60, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    machine.TestCase().runTest()
