"""Contents: every byte written comes back, under threads, eviction, syscalls and a full pool."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from tests.region.helpers import P, _sizes, _page, _join, _interrupted_while_the_handler_is_stopped, needs_uffd

pytestmark = needs_uffd


def test_never_written_pages_read_zero_and_take_no_pool_space(region):
    r = region(64, 8, backend="host")
    a = r.array
    assert a.sum() == 0                      # 64 faults, 56 evictions of zero pages
    assert not a.any()
    st = r.stats()
    assert st["zero_fills"] == 64
    assert st["resident_pages"] <= 8
    assert st["zswap"]["stored_compressed_bytes"] == 0     # zero pages are fill words
    assert st["zswap"]["pool_total_size"] <= 256 << 10    # at most the spare segment


def test_shadow_copy_under_threads_and_eviction(region, backend, rng):
    """Several threads read and write random bytes of their own pages while another
    thread keeps evicting; every read and, at the end, every byte matches a shadow."""
    npages, resident = _sizes(backend)
    r = region(npages, resident, backend=backend)
    a = r.array
    shadow = np.zeros(npages * P, np.uint8)
    nthreads, steps = 3, (40 if backend == "cuda" else 400)
    errors = []
    done = threading.Event()

    def worker(t):
        g = np.random.default_rng(rng.integers(1 << 30) + t)
        mine = np.arange(t, npages, nthreads)
        try:
            for _ in range(steps):
                p = int(g.choice(mine))
                lo = p * P + int(g.integers(0, P))
                hi = min(p * P + P, lo + int(g.integers(1, 2 * P)))
                if g.random() < 0.5:
                    data = g.integers(0, 4, hi - lo, dtype=np.uint8)
                    a[lo:hi] = data
                    shadow[lo:hi] = data
                elif not np.array_equal(a[lo:hi], shadow[lo:hi]):
                    errors.append(f"thread {t}: page {p} differs")
        except Exception as exc:          # noqa: BLE001 - reported below
            errors.append(repr(exc))

    def evictor():
        g = np.random.default_rng(7)
        while not done.is_set():
            r.evict(int(g.integers(1, npages)))

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    ev = threading.Thread(target=evictor)
    for t in workers + [ev]:
        t.start()
    _join(workers)
    done.set()
    _join([ev])
    assert not errors, errors[:5]
    assert np.array_equal(a, shadow)
    r.evict(npages)
    assert np.array_equal(a, shadow)
    st = r.stats()
    assert st["evicted_pages"] > 0 and st["fills_from_store"] > 0
    assert st["fill_errors"] == 0


def test_gil_holding_numpy_pass_over_an_evicted_region(region, backend, rng):
    """One numpy call (the GIL held throughout) faults on every page: it completes."""
    npages, resident = _sizes(backend)
    r = region(npages, resident, backend=backend)
    a = r.array
    want = np.stack([_page(rng) for _ in range(npages)]).reshape(-1)
    a[:] = want                              # one call writing every page
    r.evict(npages)
    st = r.stats()
    assert st["resident_pages"] == 0, str({k: v for k, v in st.items() if k != "zswap"})
    out = {}
    t = threading.Thread(target=lambda: out.update(sum=int(a.sum(dtype=np.uint64)),
                                                   copy=a.copy()))
    t.start()
    _join([t])
    assert out["sum"] == int(want.sum(dtype=np.uint64))
    assert np.array_equal(out["copy"], want)


def test_write_during_eviction_is_never_lost(region):
    """Counters incremented in a tight loop on pages that are evicted over and over:
    every increment survives (write protection closes the copy / drop window)."""
    npages = 8
    r = region(npages, npages, backend="host")
    words = r.array.view(np.int64)
    slots = [p * (P // 8) + 5 for p in range(npages)]
    n = 20000
    done = threading.Event()
    rounds = []

    def writer():
        for i in range(n):
            for s in slots:
                words[s] += 1
            if i % 50 == 0:
                time.sleep(0)                # let the evicting thread in

    def evictor():
        while not done.is_set():
            rounds.append(r.evict(npages))

    w, e = threading.Thread(target=writer), threading.Thread(target=evictor)
    e.start()
    w.start()
    _join([w])
    done.set()
    _join([e])
    assert [int(words[s]) for s in slots] == [n] * npages
    st = r.stats()
    assert sum(rounds) > 10 * npages, "eviction did not run during the writes"
    assert st["fills_from_store"] > 10 * npages


def test_syscalls_read_and_write_evicted_pages(region, rng, tmp_path):
    """Faults the kernel takes on the process's behalf are served too."""
    npages = 32
    r = region(npages, 4, backend="host")
    a = r.array
    want = np.stack([_page(rng) for _ in range(npages)]).reshape(-1)
    a[:] = want
    r.evict(npages)
    # the kernel reads the region: write() to a file, np.save
    path = tmp_path / "out.bin"
    with open(path, "wb") as f:
        assert os.write(f.fileno(), a[: 8 * P]) == 8 * P
    assert np.array_equal(np.fromfile(path, np.uint8), want[: 8 * P])
    r.evict(npages)
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(np.load(tmp_path / "a.npy"), want)
    # the kernel writes the region: readinto an evicted range
    r.evict(npages)
    src = rng.integers(0, 256, 3 * P, dtype=np.uint8)
    src.tofile(tmp_path / "in.bin")
    with open(tmp_path / "in.bin", "rb") as f:
        assert f.readinto(memoryview(a)[5 * P + 100: 8 * P + 100]) == 3 * P
    want[5 * P + 100: 8 * P + 100] = src
    assert np.array_equal(a, want)


def test_backing_file_takes_refused_pages(region, rng, tmp_path):
    """Incompressible pages beyond the pool limit, with a backing file: evicted all the
    same (written to the file), and back from it byte for byte."""
    npages = 160                             # 640 KiB of random bytes over a 256 KiB limit
    r = region(npages, 4, backend="host", backing=tmp_path / "swap", max_pool_bytes=256 << 10)
    a = r.array
    want = rng.integers(0, 256, npages * P, dtype=np.uint8)
    a[:] = want
    r.evict(npages)
    assert np.array_equal(a, want)
    st = r.stats()
    assert st["loads_from_backing"] > 0 and st["loads_from_pool"] > 0
    assert st["refused_pages"] == 0


def test_refused_pages_stay_resident_without_a_backing_file(region, rng):
    """Without a backing file zswap refuses incompressible pages: they stay (intact)."""
    r = region(16, 2, backend="host")
    a = r.array
    want = rng.integers(0, 256, 16 * P, dtype=np.uint8)
    a[:] = want
    assert r.evict(16) == 0
    st = r.stats()
    assert st["refused_pages"] >= 16 - 2 and st["resident_pages"] == 16
    assert np.array_equal(a, want)
    a[3 * P] ^= 1                            # a write makes page 3 a candidate again
    want[3 * P] ^= 1
    assert np.array_equal(a, want)


def test_fault_around_brings_neighbours(region, rng):
    r = region(64, 64, backend="host", fault_around=8)
    a = r.array
    want = np.stack([_page(rng) for _ in range(64)]).reshape(-1)
    a[:] = want
    r.evict(64)
    assert a[9 * P] == want[9 * P]
    st = r.stats()
    assert st["fault_around_pages"] == 7     # the rest of the aligned window 8..15
    assert np.array_equal(a, want)


def test_stats_names(region):
    r = region(16, 4, backend="host")
    r.array[:] = 1
    st = r.stats()
    for key in ("faults", "zero_fills", "loads_from_pool", "loads_from_backing", "evicted_pages",
                "resident_pages", "fault_p50_us", "fault_p99_us", "zswap"):
        assert key in st
    assert st["zswap"]["same_filled_pages"] == st["evicted_pages"] - st["loads_from_pool"]


def test_a_request_interrupted_by_a_signal_does_not_shift_later_replies(region):
    """An exception raised by a signal handler (KeyboardInterrupt, a timeout alarm) while
    a call waits for the handler's reply leaves that reply unread. Before: the next call
    read it as its own (stats() got evict's count, evict() a stats dict) and every
    later call was one reply behind."""
    r = region(32, 32, backend="host")
    r.array[:] = 1
    with _interrupted_while_the_handler_is_stopped(r):
        r.evict(32)
    st = r.stats()                               # the interrupted evict still ran
    assert isinstance(st, dict) and st["evicted_pages"] == 32
    assert r.evict(0) == 0
    assert isinstance(r.stats(), dict)
    assert int(r.array.sum()) == 32 * P
