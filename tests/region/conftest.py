"""The ``region`` fixture: a factory of swap regions, each closed and its processes checked
gone after the test.

Nothing here imports devpool at module level: pytest loads this file before the root
conftest's ``pytest_configure`` sets ``NUMBA_ENABLE_CUDASIM`` when ``tests/region`` is
named on the command line, and numba read its configuration at that first import (the
"auto" backend then took the CUDA driver for present)."""

from __future__ import annotations

import pytest


@pytest.fixture
def region():
    """Factory; every region is closed and its processes are checked gone afterwards."""
    import devpool
    from tests.region.helpers import P, _gone_within
    made = []

    def factory(npages, resident, **kw):
        r = devpool.swap_region(npages * P, resident_bytes=resident * P, **kw)
        made.append((r, r.handler_pid, r._res.guard.pid))
        return r

    yield factory
    for r, hpid, gpid in made:
        r.close()
        assert _gone_within(hpid, gpid), "a region process outlived close()"
