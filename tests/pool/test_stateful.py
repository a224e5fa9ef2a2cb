"""The pool against a dict model, on every backend, single and batch verbs mixed.

Hypothesis drives alloc / write / read / free in both forms, compaction, stale and
foreign handles, a full pool and bad input. The model decides on its own when an
allocation must succeed (the live payload, packed, fits the capacity) and when it must
fail (it cannot fit at all); after each step the pool holds exactly what the model says.
Stale handles stay in play after their free, so the stale-handle branches run (see the
``stale:`` and ``alloc:`` events with ``--hypothesis-show-statistics``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import devpool
from tests.replay import replay_steps

CAPACITY = 96 * 1024
SEG = 16384
MAX_OBJ = 4096
SIZES = st.integers(1, MAX_OBJ) | st.integers(3000, MAX_OBJ)      # big ones fill the pool


def aligned(n: int) -> int:
    return -(-n // 16) * 16


def segments_to_hold(nbytes: int) -> int:
    """Most segments a clean pool needs for ``nbytes`` of aligned objects (next-fit
    closes a segment only when the next object, at most MAX_OBJ, does not fit)."""
    return 0 if nbytes == 0 else nbytes // (SEG - MAX_OBJ) + 1


def make_machine(backend: str):
    class PoolMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.model: dict[int, bytes] = {}           # insertion order: draws replay
            self.dead: list[int] = []
            self.pool = self.other = None

        @initialize(seed=st.integers(0, 2**32 - 1))
        def open_pools(self, seed):
            """Chaos is seeded from the example, so a failing run replays exactly."""
            kw = {"seed": seed} if backend.startswith("chaos") else {}
            self.pool = devpool.open_pool(backend, CAPACITY, segment_bytes=SEG, **kw)
            self.other = devpool.open_pool(backend, CAPACITY, segment_bytes=SEG)
            self.foreign = self.other.alloc(8)          # a live handle of another pool

        def teardown(self):
            for pool in (self.pool, self.other):
                if pool is not None:
                    pool.close()

        # --- the model's verdict on allocation --------------------------------------
        def live(self) -> int:
            return sum(aligned(len(v)) for v in self.model.values())

        def expect_alloc(self, sizes) -> str:
            need = self.live() + sum(aligned(s) for s in sizes)
            if segments_to_hold(need) * SEG <= CAPACITY:
                return "fits"
            if need > CAPACITY:
                return "full"
            return "either"

        def check_alloc(self, sizes, alloc):
            want = self.expect_alloc(sizes)
            before = self.pool.stats()
            try:
                result = alloc()
            except devpool.PoolFullError:
                assert want != "fits", f"refused {sizes} with {self.live()} bytes live"
                assert self.pool.stats()["obj_used"] == before["obj_used"]
                event("alloc: pool full")
                return None
            assert want != "full", f"allocated {sizes} beyond the capacity"
            event("alloc: ok")
            return result

        def data_for(self, seed: int, n: int) -> np.ndarray:
            return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)

        # --- allocation and copy-in -----------------------------------------------------
        @rule(sizes=st.lists(SIZES, min_size=1, max_size=8), seed=st.integers(0, 2**32 - 1))
        def alloc_batch_and_write_batch(self, sizes, seed):
            hs = self.check_alloc(sizes, lambda: self.pool.alloc_batch(sizes))
            if hs is None:
                return
            payload = self.data_for(seed, sum(sizes))
            self.pool.write_batch(hs, payload, sizes)
            ends = np.cumsum(sizes)
            for h, e, s in zip(hs.tolist(), ends.tolist(), sizes):
                self.model[h] = payload[e - s:e].tobytes()

        @rule(size=SIZES, seed=st.integers(0, 2**32 - 1))
        def alloc_one_and_write_one(self, size, seed):
            h = self.check_alloc([size], lambda: self.pool.alloc(size))
            if h is None:
                return
            assert isinstance(h, int)
            data = self.data_for(seed, size)
            self.pool.write(h, data)
            self.model[h] = data.tobytes()

        @precondition(lambda self: self.model)
        @rule(data=st.data(), seed=st.integers(0, 255))
        def overwrite(self, data, seed):
            hs = data.draw(st.lists(st.sampled_from(list(self.model)), min_size=1, max_size=4, unique=True))
            if len(hs) == 1:
                new = bytes([seed]) * len(self.model[hs[0]])
                self.pool.write(hs[0], new)
                self.model[hs[0]] = new
                return
            sizes = [len(self.model[h]) for h in hs]
            payload = self.data_for(seed, sum(sizes))
            self.pool.write_batch(hs, payload, sizes)
            for h, e, s in zip(hs, np.cumsum(sizes).tolist(), sizes):
                self.model[h] = payload[e - s:e].tobytes()

        # --- copy-out ------------------------------------------------------------------
        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def read_one(self, data):
            h = data.draw(st.sampled_from(list(self.model)))
            assert self.pool.read(h).tobytes() == self.model[h]
            assert self.pool.size_of(h) == len(self.model[h])

        @precondition(lambda self: self.model)
        @rule(data=st.data(), into_out=st.booleans())
        def read_batch(self, data, into_out):
            hs = data.draw(st.lists(st.sampled_from(list(self.model)), min_size=1, max_size=6, unique=True))
            want = b"".join(self.model[h] for h in hs)
            out = np.empty(len(want), np.uint8) if into_out else None
            got, lengths = self.pool.read_batch(hs, out=out)
            assert got.tobytes() == want and lengths.tolist() == [len(self.model[h]) for h in hs]
            assert out is None or got is out

        @precondition(lambda self: self.model)
        @rule(data=st.data(), free=st.booleans(), verdict=st.sampled_from(["bytes", "none", "raise"]))
        def read_with(self, data, free, verdict):
            """A consumer sees the object's bytes read-only; the object is freed only when
            asked and the consumer returned something (None or an exception: kept)."""
            h = data.draw(st.sampled_from(list(self.model)))
            seen = []

            def consume(block, tag):
                assert tag == "t" and not block.flags.writeable and block.dtype == np.uint8
                seen.append(block.tobytes())
                if verdict == "raise":
                    raise KeyError("refused")
                return None if verdict == "none" else len(seen)

            if verdict == "raise":
                with pytest.raises(KeyError):
                    self.pool.read_with(h, consume, "t", free=free)
            else:
                assert self.pool.read_with(h, consume, "t", free=free) == (None if verdict == "none" else 1)
            assert seen == [self.model[h]]
            if free and verdict == "bytes":
                del self.model[h]
                self.dead.append(h)
            event(f"read_with: free={free} {verdict}")

        # --- free ----------------------------------------------------------------------
        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def free_one(self, data):
            h = data.draw(st.sampled_from(list(self.model)))
            self.pool.free(h)
            del self.model[h]
            self.dead.append(h)

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def free_batch(self, data):
            hs = data.draw(st.lists(st.sampled_from(list(self.model)), min_size=1, max_size=6, unique=True))
            self.pool.free_batch(hs)
            for h in hs:
                del self.model[h]
            self.dead.extend(hs)

        # --- stale, foreign and repeated handles change nothing ------------------------
        @precondition(lambda self: self.dead)
        @rule(data=st.data(), verb=st.sampled_from(["read", "write", "free", "size_of", "read_batch",
                                                    "free_batch", "write_batch", "read_with"]))
        def stale_handle(self, data, verb):
            stale = data.draw(st.sampled_from(self.dead))
            live = data.draw(st.lists(st.sampled_from(list(self.model)), max_size=3, unique=True)) \
                if self.model else []
            batch = live + [stale]
            calls = {
                "read": lambda: self.pool.read(stale),
                "write": lambda: self.pool.write(stale, b"x"),
                "free": lambda: self.pool.free(stale),
                "size_of": lambda: self.pool.size_of(stale),
                "read_with": lambda: self.pool.read_with(stale, bytes, free=True),
                "read_batch": lambda: self.pool.read_batch(batch),
                "free_batch": lambda: self.pool.free_batch(batch),      # refused whole
                "write_batch": lambda: self.pool.write_batch(
                    batch, np.zeros(sum(len(self.model[h]) for h in live) + 1, np.uint8)),
            }
            with pytest.raises(devpool.InvalidHandleError):
                calls[verb]()
            event(f"stale: {verb}")

        @rule(verb=st.sampled_from(["read", "free", "write"]))
        def foreign_handle(self, verb):
            with pytest.raises(devpool.InvalidHandleError):
                {"read": lambda: self.pool.read(self.foreign), "free": lambda: self.pool.free(self.foreign),
                 "write": lambda: self.pool.write(self.foreign, b"12345678")}[verb]()
            assert self.other.read(self.foreign).size == 8          # still live over there

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def repeated_handle_in_a_batch(self, data):
            h = data.draw(st.sampled_from(list(self.model)))
            with pytest.raises(devpool.InvalidHandleError, match="twice"):
                self.pool.free_batch([h, h])

        # --- bad input changes nothing --------------------------------------------------
        @rule(case=st.sampled_from(["zero", "negative", "too-big", "float", "bool", "batch-with-bad",
                                    "long-write", "short-write", "dtype"]))
        def bad_input(self, case):
            h = next(iter(self.model), None)
            n = len(self.model[h]) if h is not None else 0
            cases = {
                "zero": (devpool.InvalidSizeError, lambda: self.pool.alloc(0)),
                "negative": (devpool.InvalidSizeError, lambda: self.pool.alloc(-5)),
                "too-big": (devpool.InvalidSizeError, lambda: self.pool.alloc(MAX_OBJ + 1)),
                "float": (devpool.InvalidSizeError, lambda: self.pool.alloc(3.0)),
                "bool": (devpool.InvalidSizeError, lambda: self.pool.alloc(True)),
                "batch-with-bad": (devpool.InvalidSizeError, lambda: self.pool.alloc_batch([10, 0, 10])),
                "long-write": (devpool.BadInputError, lambda: self.pool.write(h, b"y" * (n + 1))),
                "short-write": (devpool.BadInputError, lambda: self.pool.write(h, b"y" * (n - 1))),
                "dtype": (devpool.BadInputError, lambda: self.pool.write(h, np.zeros(n, np.uint16))),
            }
            error, call = cases[case]
            if h is None and error is devpool.BadInputError:
                return
            before = self.pool.stats()["obj_used"]
            with pytest.raises(error):
                call()
            assert self.pool.stats()["obj_used"] == before

        @rule(util=st.sampled_from([0.3, 0.7, 1.0]))
        def compact(self, util):
            self.pool.compact(util)

        # --- what must hold after every step ----------------------------------------------
        @invariant()
        def matches_model(self):
            hs = list(self.model)
            data, lengths = self.pool.read_batch(hs)
            assert data.tobytes() == b"".join(self.model.values())
            assert lengths.tolist() == [len(v) for v in self.model.values()]
            st_ = self.pool.stats()
            assert st_["obj_used"] == len(self.model)
            assert st_["payload_bytes"] == sum(len(v) for v in self.model.values())
            assert st_["arena_used_bytes"] == self.live()
            assert st_["pool_total_size"] <= CAPACITY

    return PoolMachine


def test_pool_matches_dict_model(backend, sized):
    machine = make_machine(backend)
    machine.TestCase.settings = settings(
        max_examples=sized(150, 8, 20), stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    machine.TestCase().runTest()


#: a sequence hypothesis found (CI, 2026-12-07): under chaos's migrations the six
#: segments of a full pool held 69 104 live bytes with their free space in holes; packing
#: the segments below full freed none, so the pool refused 3 000 bytes that next-fit
#: packs into the same six segments. The pressure paths now repack when that happens
#: (Moving._under_pressure). Replayed on every run.
_HOLES_AT_CAPACITY = [("open_pools", dict(seed=130))] + [
    ("alloc_one_and_write_one", dict(seed=0, size=size)) for size in (
        3025, 3041, 3761, 2993, 3233, 257, 3697, 4081, 1137, 3409, 2993, 3649, 1009, 3105, 3217,
        3236, 3018, 3880, 129, 401, 465, 3617, 2993, 1, 1, 2385, 2481, 3473, 1, 3000)]


def test_a_full_pool_with_its_room_in_holes_repacks_rather_than_refuse(backend):
    replay_steps(lambda: make_machine(backend)(), _HOLES_AT_CAPACITY, ["matches_model"])
