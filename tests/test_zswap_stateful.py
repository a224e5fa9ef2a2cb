"""Zswap against a dict model: every load returns exactly what was stored.

Hypothesis drives store / load / invalidate / writeback / compaction / limit changes on
every backend; the model tracks which offsets hold which page.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import devpool
from tests.pages import KINDS

OFFSETS = st.integers(0, 40)
KIND = st.sampled_from(sorted(KINDS))


def make_machine(backend: str, tmpdir, with_backing: bool):
    class ZswapMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.pool = devpool.open_pool(backend, 512 * 1024, segment_bytes=16384)
            backing = tmpdir / f"swap-{id(self)}" if with_backing else None
            self.zs = devpool.Zswap(self.pool, max_pool_bytes=96 * 1024,
                                    accept_threshold_percent=70, backing=backing)
            self.model: dict[int, bytes] = {}

        def teardown(self):
            self.zs.close()
            self.pool.close()

        @rule(offs=st.lists(OFFSETS, min_size=1, max_size=5, unique=True), kind=KIND,
              seed=st.integers(0, 2**32 - 1))
        def store(self, offs, kind, seed):
            rng = np.random.default_rng(seed)
            pages = np.stack([KINDS[kind](rng) for _ in offs])
            cached = self.zs.store_batch(offs, pages)
            for o, p, c in zip(offs, pages, cached):
                if c or with_backing:          # cached, or refused into the swap file
                    self.model[o] = p.tobytes()
                else:                          # refused and not kept: the caller has it
                    self.model.pop(o, None)

        @rule(offs=st.lists(OFFSETS, min_size=1, max_size=4, unique=True))
        def load(self, offs):
            if all(o in self.model for o in offs):
                got = self.zs.load_batch(offs)
                for o, p in zip(offs, got):
                    assert p.tobytes() == self.model.pop(o)
            else:
                with pytest.raises(devpool.EntryNotFoundError):
                    self.zs.load_batch(offs)

        @rule(offs=st.lists(OFFSETS, max_size=4, unique=True))
        def invalidate(self, offs):
            self.zs.invalidate_batch(offs)
            for o in offs:
                self.model.pop(o, None)

        @rule(n=st.integers(0, 6))
        def writeback(self, n):
            written = self.zs.writeback(n)
            assert written <= n and (with_backing or written == 0)

        @rule()
        def compact(self):
            self.pool.compact()

        @rule(limit=st.sampled_from([32 * 1024, 96 * 1024, 400 * 1024]))
        def change_limit(self, limit):
            self.zs.max_pool_bytes = limit

        @invariant()
        def everything_is_where_the_model_says(self):
            for o in range(41):
                assert self.zs.contains(o) == (o in self.model)
            st_ = self.zs.stats()
            assert st_["stored_pages"] + st_["backing_pages"] == len(self.model)

    return ZswapMachine


@pytest.mark.parametrize("with_backing", [True, False], ids=["backing", "no-backing"])
def test_zswap_matches_dict_model(backend, tmp_path, with_backing):
    machine = make_machine(backend, tmp_path, with_backing)
    machine.TestCase.settings = settings(
        max_examples=20 if backend == "cuda" else 40, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    machine.TestCase().runTest()
