"""Shared fixtures: every contract and frontend test runs once per backend.

Backends: ``host``, ``chaos`` (hostile storage) and ``cuda`` — the cuda backend runs on
a real GPU with ``--gpu`` and otherwise under numba's CUDA simulator, which CI enables
by setting ``NUMBA_ENABLE_CUDASIM=1`` before numba.cuda is imported (done here).
"""

from __future__ import annotations

import os

import numpy as np
import pytest


def pytest_addoption(parser):
    parser.addoption("--gpu", action="store_true",
                     help="run the cuda backend on a real GPU instead of numba's simulator")


def pytest_configure(config):
    if not config.getoption("--gpu"):
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def _backends(config) -> list[str]:
    import devpool
    names = ["host", "chaos"]
    ok, why = devpool.available_backends()["cuda"]
    if config.getoption("--gpu") and not ok:
        raise pytest.UsageError(f"--gpu given but the cuda backend is unusable: {why}")
    if ok:
        names.append("cuda")
    return names


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _backends(metafunc.config))


@pytest.fixture
def rng(request) -> np.random.Generator:
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))  # stable per test


@pytest.fixture
def make_pool(backend):
    """Factory for small pools (16 KiB segments, so a few objects span many segments)."""
    import devpool
    pools = []

    def factory(capacity_bytes=1 << 20, segment_bytes=16384, **kw):
        pool = devpool.open_pool(backend, capacity_bytes, segment_bytes=segment_bytes, **kw)
        pools.append(pool)
        return pool

    yield factory
    for p in pools:
        p.close()
