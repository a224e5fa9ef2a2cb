"""lz4-device's host side (issue 28): per batch one copy in from a pinned staging area
allocated once, one kernel, one copy out into it, one synchronisation, on the codec's
own stream; counted here by wrapping the device arrays' copies and the stream's sync
(the simulator's arrays here, numba's device arrays under --gpu)."""

from __future__ import annotations

import numpy as np
import pytest

import devpool
from tests.conftest import cuda_usable
from tests.pages import make_pages

pytestmark = [pytest.mark.device,
              pytest.mark.skipif(not cuda_usable()[0], reason="no CUDA device and no simulator")]


@pytest.fixture
def counted(monkeypatch):
    from devpool.kernels._cuda import simulated
    if simulated():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as Array
    else:
        from numba.cuda.cudadrv.devicearray import DeviceNDArray as Array
    calls = []
    for verb in ("copy_to_device", "copy_to_host"):
        real = getattr(Array, verb)

        def wrapper(self, *args, _verb=verb, _real=real, **kwargs):
            calls.append((_verb, kwargs.get("stream")))
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(Array, verb, wrapper)
    return calls


def test_one_copy_each_way_and_one_sync_per_batch(counted, rng, monkeypatch):
    import numba.cuda
    codec = devpool.get_codec("lz4-device")
    pages = make_pages(6, rng, ("text", "struct", "random", "zero"))
    codec.compress_batch(pages[:2])                      # staging made and grown once
    st = codec._state()
    syncs, pinned = [], []
    real_sync = st.stream.synchronize
    monkeypatch.setattr(st.stream, "synchronize", lambda: (syncs.append(1), real_sync())[1])
    real_pinned = numba.cuda.pinned_array
    monkeypatch.setattr(numba.cuda, "pinned_array", lambda *a, **k: (pinned.append(a), real_pinned(*a, **k))[1])
    counted.clear()

    data, lengths = codec.compress_batch(pages)          # compress, then pack on the device
    assert [v for v, _ in counted] == ["copy_to_device", "copy_to_host", "copy_to_device", "copy_to_host"]
    assert all(s is st.stream for _, s in counted) and len(syncs) == 2
    counted.clear(), syncs.clear()

    dev, starts, lens = codec.compress_to_device(pages)  # blocks stay: pages in, lengths out
    assert [v for v, _ in counted] == ["copy_to_device", "copy_to_host"] and len(syncs) == 1
    counted.clear(), syncs.clear()

    out = np.zeros_like(pages)
    assert codec.decompress_into(data, lengths, out).all()          # blocks from the host
    np.testing.assert_array_equal(out, pages)
    assert [v for v, _ in counted] == ["copy_to_device", "copy_to_host"] and len(syncs) == 1
    counted.clear(), syncs.clear()

    out[:] = 0
    assert codec.decompress_into(dev, lens, out, starts=starts).all()   # blocks already on the device
    np.testing.assert_array_equal(out, pages)
    assert [v for v, _ in counted] == ["copy_to_device", "copy_to_host"] and len(syncs) == 1
    assert pinned == [] and codec._state() is st                      # the pinned area was reused


def test_each_thread_has_its_own_staging_and_stream(rng):
    import threading
    codec = devpool.get_codec("lz4-device")
    pages = make_pages(3, rng, ("text", "struct"))
    seen, errors = [], []

    def work():
        try:
            data, lengths = codec.compress_batch(pages)
            seen.append(codec._state())
            np.testing.assert_array_equal(codec.decompress_batch(data, lengths), pages)
        except Exception as exc:                      # noqa: BLE001 - reported below
            errors.append(exc)
    for _ in range(2):                 # one after the other: the simulator cannot run two kernels at once
        t = threading.Thread(target=work)
        t.start()
        t.join(120)
    assert not errors and len(seen) == 2 and seen[0] is not seen[1] and seen[0].stream is not seen[1].stream
