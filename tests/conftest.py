"""Shared fixtures: every contract and frontend test runs once per backend.

Backends: ``host``, ``cuda``, and the hostile policy over each, ``chaos`` and
``chaos-cuda``. The cuda ones run on a real GPU with ``--gpu`` and otherwise under
numba's CUDA simulator, which CI enables by setting ``NUMBA_ENABLE_CUDASIM=1`` before
numba.cuda is imported (done here).

Capability flags, computed once, say *why* a test sizes or checks something
differently, instead of branching on a backend's name: ``simulated`` (kernels run as
Python under the simulator: keep sizes small) and ``hostile`` (the chaos policy moves
objects and cleans the arena before every call).
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
    config.addinivalue_line("markers", "device: touches a CUDA device (the cuda backend, a device codec, "
                            "nvCOMP); select the GPU's tests with -m device")


#: modules whose every test touches the device (the storage's own tests, nvCOMP's)
DEVICE_MODULES = {"tests.kernels.test_device_storage", "tests.codecs.test_nvcomp"}
#: parameter values that put a test on the device
DEVICE_PARAMS = {"cuda", "chaos-cuda", "lz4-device", "nvcomp-lz4"}


def pytest_collection_modifyitems(config, items):
    """Mark ``device`` every test that touches the device, so a GPU run selects exactly
    those (``-m device``) and no CPU-only test by an accident of its name: a backend
    or codec parameter on the device, a module of device tests, or the mark written
    on the test. The compile-only checks (check-kernels, the CuPy API table, the kernel
    cache) need no GPU and are not marked: they run on the CPU, in CI."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (item.module.__name__ in DEVICE_MODULES
                or any(isinstance(v, str) and v in DEVICE_PARAMS for v in params.values())):
            item.add_marker(pytest.mark.device)


_CUDA_USABLE: tuple[bool, str] | None = None


def cuda_usable() -> tuple[bool, str]:
    """(usable, why) for the cuda backend, probed once per session."""
    global _CUDA_USABLE
    if _CUDA_USABLE is None:
        import devpool
        _CUDA_USABLE = devpool.available_backends()["cuda"]
    return _CUDA_USABLE


def _backends(config) -> list[str]:
    names = ["host", "chaos"]
    ok, why = cuda_usable()
    if config.getoption("--gpu") and not ok:
        raise pytest.UsageError(f"--gpu given but the cuda backend is unusable: {why}")
    if ok:
        names += ["cuda", "chaos-cuda"]
    return names


#: the suites that also run on chaos over cuda (the contract, the frontend, the models):
#: the proof that nothing above storage assumes linear RAM, on device storage too. The
#: simulator runs each relocation's kernels as Python, so the rest stay at chaos over host.
CHAOS_CUDA_SUITES = {"tests.pool.test_contract", "tests.pool.test_stateful",
                     "tests.zswap.test_frontend", "tests.zswap.test_stateful"}


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        names = _backends(metafunc.config)
        if metafunc.module.__name__ not in CHAOS_CUDA_SUITES:
            names = [n for n in names if n != "chaos-cuda"]
        metafunc.parametrize("backend", names)


@pytest.fixture
def simulated(backend, request) -> bool:
    """The backend's kernels run under numba's CUDA simulator (slow: keep sizes small)."""
    return backend.endswith("cuda") and not request.config.getoption("--gpu")


@pytest.fixture
def hostile(backend) -> bool:
    """The chaos policy relocates objects and cleans the arena before every call."""
    return backend.startswith("chaos")


@pytest.fixture
def sized(simulated, hostile):
    """``sized(full, small, tiny)``: how much work a test does here: ``full`` on host and
    chaos, ``small`` under the simulator, ``tiny`` for chaos under the simulator (every
    call migrates objects with simulated kernels; ``small`` when not given)."""
    def pick(full, small, tiny=None):
        if simulated:
            return tiny if hostile and tiny is not None else small
        return full
    return pick


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


@pytest.fixture(autouse=True)
def _numba_cache_dir_left_as_found():
    """A test that leaves NUMBA_CACHE_DIR changed fails, naming itself: every later
    subprocess inherits it (a root-owned directory made a `devpool status` run as nobody
    die importing devpool, in CI only, two hundred tests later)."""
    before = os.environ.get("NUMBA_CACHE_DIR")
    yield
    after = os.environ.get("NUMBA_CACHE_DIR")
    if after != before:               # put it back first: one leak must not fail later tests too
        if before is None:
            os.environ.pop("NUMBA_CACHE_DIR", None)
        else:
            os.environ["NUMBA_CACHE_DIR"] = before
    assert after == before, f"NUMBA_CACHE_DIR left changed: {before!r} -> {after!r}"
