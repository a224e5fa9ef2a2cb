"""The ``region`` fixture: a factory of swap regions, each closed and its processes checked
gone after the test."""

from __future__ import annotations

import pytest

import devpool
from tests.region.helpers import P, _gone_within


@pytest.fixture
def region():
    """Factory; every region is closed and its processes are checked gone afterwards."""
    made = []

    def factory(npages, resident, **kw):
        r = devpool.swap_region(npages * P, resident_bytes=resident * P, **kw)
        made.append((r, r.handler_pid, r._res.guard.pid))
        return r

    yield factory
    for r, hpid, gpid in made:
        r.close()
        assert _gone_within(hpid, gpid), "a region process outlived close()"
