"""The host arena's memory advice: huge pages by default, off on request, bad input refused;
committed segments backed at once.

The advice is read back from the kernel (``/proc/self/smaps``: a mapping advised
``MADV_HUGEPAGE`` carries ``hg`` in its VmFlags), not from the storage's own word.
"""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import devpool
from devpool import BadInputError
from host import HostStorage


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of this process's mapping that holds ``address`` (it may begin
    before it: the kernel merges neighbouring mappings of the same kind)."""
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        head = line.split(" ", 1)[0]
        if "-" in head and int(head.split("-")[0], 16) <= address < int(head.split("-")[1], 16):
            for following in lines[i + 1:]:
                if following.startswith("VmFlags:"):
                    return following.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def _thp_available() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _thp_available(), reason="this kernel has no transparent huge pages")
def test_hugepages_true_advises_huge_pages_and_says_so():
    with devpool.open_pool("host", 64 << 20, hugepages=True) as pool:
        address = pool.storage.address
        assert pool.stats()["hugepages"] is True
        assert "hg" in _vm_flags(address)
        # and it is an ordinary arena: bytes go in and come back
        data = np.arange(3000, dtype=np.uint16).view(np.uint8)[:3000].copy()
        h = pool.alloc(data.size, data=data)
        assert pool.read(h).tobytes() == data.tobytes()


def test_the_default_arena_stays_on_small_pages():
    """Huge pages cost a batch of stores into fresh memory +3 - 5 us a page here (see
    host/_arena.py): the default opts out."""
    for pool in (devpool.open_pool("host", 64 << 20), devpool.open_pool("host", 64 << 20, hugepages=False)):
        with pool:
            assert pool.stats()["hugepages"] is False
            assert "hg" not in _vm_flags(pool.storage.address)


def test_released_segments_inside_huge_pages_keep_every_live_byte():
    """Releasing a segment advises part of a huge page away (the kernel splits it): the
    objects around it must keep their bytes."""
    rng = np.random.default_rng(7)
    with devpool.open_pool("host", 8 << 20, segment_bytes=64 << 10, hugepages=True) as pool:
        blocks = [rng.integers(0, 256, int(n), dtype=np.uint8) for n in rng.integers(100, 4096, 2000)]
        handles = [pool.alloc(b.size, data=b) for b in blocks]
        # free every object of most segments so they are released, keep one in five
        keep = set(range(0, len(handles), 5))
        pool.free_batch([h for i, h in enumerate(handles) if i not in keep])
        pool.storage.trim()
        for i in sorted(keep):
            assert pool.read(handles[i]).tobytes() == blocks[i].tobytes(), i


@pytest.mark.parametrize("bad", [1, "yes", None, np.int64(1)])
def test_hugepages_must_be_a_bool(bad):
    with pytest.raises(BadInputError, match="hugepages must be a bool"):
        devpool.open_pool("host", 1 << 20, hugepages=bad)
    with pytest.raises(BadInputError, match="hugepages must be a bool"):
        HostStorage(1 << 20, hugepages=bad)


def test_chaos_over_host_takes_no_hugepage_option_it_would_not_pass_on():
    with pytest.raises(BadInputError, match="unknown option 'hugepages'"):
        devpool.open_pool("chaos", 1 << 20, hugepages=True)


@pytest.mark.parametrize("value", [True, False])
def test_auto_refuses_a_host_only_option_on_every_machine(value):
    """``open_pool("auto", hugepages=...)`` opened a host pool on a machine without a GPU
    and raised "unknown option" on one with a GPU: auto now takes only the options both
    storages take, so the call fails the same way here."""
    with pytest.raises(BadInputError, match=r"open_pool\('auto'\).*unknown option 'hugepages'.*Name the backend"):
        devpool.open_pool("auto", 1 << 20, hugepages=value)
    with devpool.open_pool("host", 1 << 20, hugepages=value) as pool:   # named, it is taken
        assert pool.stats()["hugepages"] in (value, False)


def test_auto_names_a_backend_only_for_an_option_one_of_them_takes():
    """An option no storage takes is refused without sending the caller to name one."""
    with pytest.raises(BadInputError, match=r"Name the backend to pass it \(host takes it\)"):
        devpool.open_pool("auto", 1 << 20, hugepages=True)
    with pytest.raises(BadInputError, match="unknown option 'colour'") as info:
        devpool.open_pool("auto", 1 << 20, colour="blue")
    assert "Name the backend" not in str(info.value)


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"),
                    reason="this kernel has no transparent huge pages to opt out of")
def test_hugepages_false_opts_out_where_the_kernel_gives_huge_pages_unasked():
    """Under THP ``always`` (a common distribution default) an anonymous mapping gets huge
    pages without advice: opting out must advise MADV_NOHUGEPAGE (VmFlags ``nh``), or a
    "4 KiB arena" (the default, ``bench_growth_paired``'s) is a huge-page one there."""
    with devpool.open_pool("host", 64 << 20, hugepages=False) as pool:
        flags = _vm_flags(pool.storage.address)
        assert "nh" in flags and "hg" not in flags


def test_the_report_says_no_huge_pages_where_the_kernel_never_gives_them(tmp_path, monkeypatch):
    """Under THP ``never`` madvise(MADV_HUGEPAGE) succeeds but nothing changes: the
    storage must not report huge pages it will not get."""
    from devpool.host import _arena
    never = tmp_path / "enabled"
    never.write_text("always madvise [never]\n")
    monkeypatch.setattr(_arena, "THP_ENABLED", str(never))
    with devpool.open_pool("host", 8 << 20, hugepages=True) as pool:
        assert pool.stats()["hugepages"] is False
    madvise = tmp_path / "madvise"
    madvise.write_text("always [madvise] never\n")
    monkeypatch.setattr(_arena, "THP_ENABLED", str(madvise))
    with devpool.open_pool("host", 8 << 20, hugepages=True) as pool:
        assert pool.stats()["hugepages"] is True
        assert "hg" in _vm_flags(pool.storage.address)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _faults_writing(storage: HostStorage, offset: int, nbytes: int) -> int:
    """Page faults taken by writing one byte in every page of the range."""
    view = np.frombuffer(storage._map, np.uint8, nbytes, offset)
    before = _minor_faults()
    view[::4096] = 1
    return _minor_faults() - before


_POPULATES: list[bool] = []


def _kernel_populates() -> bool:
    """Whether this kernel backs a range on request (MADV_POPULATE_WRITE, Linux 5.14;
    older ones refuse it with EINVAL, and populate leaves pages to first touch, as
    documented): asked once, of a storage of its own."""
    if not _POPULATES:
        s = HostStorage(1 << 20)
        try:
            s.commit(0, 1 << 16)
            s.populate(0, 1 << 16)
            _POPULATES.append(s._populate_advice is not None and _faults_writing(s, 0, 1 << 16) < 8)
        finally:
            s.close()
    return _POPULATES[0]


#: the tests that need a range backed at once (the others hold on any kernel)
needs_populate = pytest.mark.skipif("not _kernel_populates()",
                                    reason="this kernel does not back a range on request (MADV_POPULATE_WRITE, 5.14)")


@needs_populate
def test_a_populated_range_is_backed_at_once_not_on_each_first_touch():
    """populate backs a committed range with pages in one call (MADV_POPULATE_WRITE): the
    single stores that fill a segment afterwards take no page fault, where each of its
    4 KiB pages faulted once, in the middle of some store (measured 1 - 10 us each in
    this VM). The controls: a range committed only (batches: left to first touch), and
    one populated with the advice off, fault on every page."""
    mib = 1 << 20
    s = HostStorage(1 << 24)
    try:
        s.commit(0, mib)
        s.populate(0, mib)
        assert _faults_writing(s, 0, mib) < 16              # (a stray fault of Python's own)
        s.commit(2 * mib, mib)
        assert _faults_writing(s, 2 * mib, mib) >= 200      # 256 pages, each on first touch
        s._populate_advice = None                           # as where the kernel refused it
        s.commit(4 * mib, mib)
        s.populate(4 * mib, mib)
        assert _faults_writing(s, 4 * mib, mib) >= 200
        assert s.committed_bytes == 3 * mib
    finally:
        s.close()
    s.populate(0, mib)                                      # closed: nothing to back, no error


def test_a_kernel_that_refuses_to_back_a_range_leaves_pages_to_first_touch():
    """Older kernels (< 5.14) answer EINVAL to the advice: populate asks no more, and
    every byte works as before (backed on first touch)."""
    s = HostStorage(1 << 22)
    try:
        s._populate_advice = 0x7FFF                         # no such advice: EINVAL
        s.commit(0, 1 << 17)
        s.populate(0, 1 << 16)
        assert s._populate_advice is None and s.committed_bytes == 1 << 17
        s.populate(1 << 16, 1 << 16)                        # not asked again
        view = np.frombuffer(s._map, np.uint8, 1 << 17)
        view[:] = 7
        assert (view == 7).all()
    finally:
        s.close()


@needs_populate
@pytest.mark.parametrize("bad", [(-4096, 4096), (1 << 22, 4096), (0, -1), (1 << 62, 1 << 62)])
def test_populating_outside_the_arena_changes_nothing(bad):
    """populate is advice: a range outside the arena (or negative) raises nothing and
    leaves the advice on for the next, good range."""
    s = HostStorage(1 << 22)
    try:
        s.commit(0, 1 << 16)
        s.populate(*bad)
        s.populate(0, 1 << 16)
        assert _faults_writing(s, 0, 1 << 16) < 8 and s.committed_bytes == 1 << 16
    finally:
        s.close()


def _faults_in_compiled_stores(populate: bool) -> tuple[int, int]:
    """(page faults, calls) inside the compiled single stores (Zswap's bound
    ``one_page.store_one``, which fills the open segment; a segment is opened, and
    backed, on Python's long way), where the pool grows into fresh memory: keys
    replaced at random leave the old segments partly live."""
    pool = devpool.open_pool("host", 1 << 26, segment_bytes=1 << 18)
    try:
        if not populate:
            pool.storage._populate_advice = None             # as where the kernel refused it
        zs = devpool.Zswap(pool, "lz4", max_pool_percent=100)
        rng = np.random.default_rng(5)
        page = rng.integers(0, 4, 4096, dtype=np.uint8)      # compresses to ~2.5 KiB
        for k in range(3000):
            zs.store(k, page)
        compiled, seen = zs._store1, [0, 0]

        def counted(o, p):
            before = _minor_faults()
            answer = compiled(o, p)
            seen[0] += _minor_faults() - before
            seen[1] += 1
            return answer
        zs._store1 = counted
        for k in rng.permutation(3000)[:1000].tolist():
            assert zs.store(k, page)
        zs.close()
        return seen[0], seen[1]
    finally:
        pool.close()


@needs_populate
def test_single_stores_fill_a_backed_segment_without_faulting():
    """A segment a single allocation opens (the long way) is populated before the
    compiled single stores fill it, so those take no fault; with the advice off, they
    took the faults."""
    faults, calls = _faults_in_compiled_stores(True)
    assert calls == 1000 and faults <= 5, faults
    faults, calls = _faults_in_compiled_stores(False)
    assert faults >= 40, faults


# --- moves without a staging buffer (devpool._packed.move_in_place) ---------------------
def _staged(arena: np.ndarray, src, dst, lengths) -> np.ndarray:
    """What a move leaves: every source read first, then written (the contract)."""
    out = arena.copy()
    blocks = [arena[s:s + n].copy() for s, n in zip(src.tolist(), lengths.tolist())]
    for d, b in zip(dst.tolist(), blocks):
        out[d:d + b.size] = b
    return out


def _forward_plan(rng, size: int, n: int):
    """Sources ascending without overlap, each destination at or before its source,
    packed leftward as cleaning packs them (many overlap their own source)."""
    lengths = rng.integers(1, 3000, n)
    gaps = rng.integers(0, 500, n)
    src = np.cumsum(gaps + np.concatenate([[0], lengths[:-1]])) + 64
    dst = np.concatenate([[0], np.cumsum(lengths[:-1])]) + rng.integers(0, 64)
    dst = np.minimum(dst, src)
    assert src[-1] + lengths[-1] <= size
    return src.astype(np.int64), dst.astype(np.int64), lengths.astype(np.int64)


@pytest.mark.parametrize("seed", range(5))
def test_a_leftward_move_copies_in_place_as_a_staged_one_would(seed):
    from devpool import _packed
    rng = np.random.default_rng(seed)
    arena = rng.integers(0, 256, 1 << 21, dtype=np.uint8)
    src, dst, lengths = _forward_plan(rng, arena.size, 400)
    want = _staged(arena, src, dst, lengths)
    assert _packed.move_in_place(arena, src, dst, lengths)
    assert np.array_equal(arena, want)


@pytest.mark.parametrize("seed", range(5))
def test_objects_end_to_end_move_in_runs_as_a_staged_move_would(seed):
    """Survivors that lie end to end at both ends are copied as one run (one memmove):
    shifted left over their own bytes, the arena ends as a staged move leaves it."""
    from devpool import _packed
    rng = np.random.default_rng(seed)
    arena = rng.integers(0, 256, 1 << 21, dtype=np.uint8)
    lengths = rng.integers(1, 200, 600) * 16
    gaps = np.where(rng.random(600) < 0.1, rng.integers(1, 20, 600) * 16, 0)      # mostly end to end
    src = (np.cumsum(gaps + np.concatenate([[0], lengths[:-1]])) + 4096).astype(np.int64)
    dst = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64) + int(rng.integers(0, 64)) * 16
    dst = np.minimum(dst, src)
    lengths = lengths.astype(np.int64)
    assert ((src[1:] == src[:-1] + lengths[:-1]) & (dst[1:] == dst[:-1] + lengths[:-1])).sum() > 300, "premise"
    want = _staged(arena, src, dst, lengths)
    assert _packed.move_in_place(arena, src, dst, lengths)
    assert np.array_equal(arena, want)


@pytest.mark.parametrize("seed", range(5))
def test_a_move_into_room_no_source_occupies_is_copied_in_place(seed):
    """Destinations past their sources, but meeting no source (a cleaning step's first
    survivors, into the clean head's room, which may lie right of the victims or between
    them): the order does not matter, so they are copied in place too, as staged."""
    from devpool import _packed
    rng = np.random.default_rng(seed)
    arena = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    lengths = rng.integers(1, 100, 40).astype(np.int64) * 16
    src = (np.cumsum(lengths + 4096) - lengths).astype(np.int64)             # a 4 KiB gap after each
    dst = (src + lengths + rng.integers(0, 4096 - 1600, 40) // 16 * 16).astype(np.int64)   # in the gaps
    want = _staged(arena, src, dst, lengths)
    assert _packed.move_in_place(arena, src, dst, lengths)
    assert np.array_equal(arena, want)
    far = np.arange(40, dtype=np.int64) * 1600 + (1 << 19)                    # or all right of them
    want = _staged(arena, src, far, lengths)
    assert _packed.move_in_place(arena, src, far, lengths)
    assert np.array_equal(arena, want)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_plan_move_in_place_takes_ends_as_a_staged_move_would(data):
    """Any plan of sources ascending without overlap, destinations anywhere in the arena
    (objects end to end or not, overlapping their own source, an earlier or a later one):
    move_in_place either copies it in place to exactly what a staged move leaves, or
    declines and changes nothing. The rule it decides by is never trusted here."""
    from devpool import _packed
    size = 4096
    n = data.draw(st.integers(1, 12))
    lengths = np.array(data.draw(st.lists(st.integers(0, 6).map(lambda k: 16 * k), min_size=n, max_size=n)), np.int64)
    gaps = np.array(data.draw(st.lists(st.sampled_from([0, 0, 16, 48]), min_size=n, max_size=n)), np.int64)
    src = np.cumsum(gaps) + np.concatenate([[0], np.cumsum(lengths[:-1])]) + 16 * data.draw(st.integers(0, 64))
    if src[-1] + lengths[-1] > size:
        return
    dst = np.array([data.draw(st.integers(0, (size - k) // 16)) * 16 for k in lengths.tolist()], np.int64)
    if data.draw(st.booleans()):                            # often: packed leftward, as cleaning packs
        dst = np.minimum(np.concatenate([[0], np.cumsum(lengths[:-1])]) + dst[0] // 4 // 16 * 16, src)
    arena = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    before = arena.copy()
    if _packed.move_in_place(arena, src, dst, lengths):
        assert np.array_equal(arena, _staged(before, src, dst, lengths))
    else:
        assert np.array_equal(arena, before), "a declined move changed the arena"


@pytest.mark.parametrize("seed", range(5))
def test_a_clean_head_s_survivors_then_a_leftward_rest_move_in_place_in_one_move(seed):
    """A cleaning step's plan in one move (all or nothing): its first survivors into the
    clean head's room (right of the victims here: no source there), the rest
    packed leftward. No destination meets a later object's source, so the in-order copy
    reads every source before anything writes it: in place, as staged. So is a
    destination onto an earlier object's source, read already."""
    from devpool import _packed
    rng = np.random.default_rng(seed)
    arena = rng.integers(0, 256, 1 << 21, dtype=np.uint8)
    src, dst, lengths = _forward_plan(rng, 1 << 20, 200)
    k = int(rng.integers(1, 20))
    dst[:k] = (1 << 20) + 4096 + _packed.packed_starts(lengths[:k])       # the clean head, right of them
    dst[k:] = np.concatenate([[0], np.cumsum(lengths[k:-1])]) + int(rng.integers(0, 64))
    dst[k:] = np.minimum(dst[k:], src[k:])
    want = _staged(arena, src, dst, lengths)
    assert _packed.move_in_place(arena, src, dst, lengths)
    assert np.array_equal(arena, want)
    src = np.array([1000, 5000, 9000], np.int64)
    dst = np.array([0, 20000, 2500], np.int64)          # object 2 onto object 0's source
    lengths = np.array([2000, 2000, 2000], np.int64)
    want = _staged(arena, src, dst, lengths)
    assert _packed.move_in_place(arena, src, dst, lengths)
    assert np.array_equal(arena, want)


@pytest.mark.parametrize("case", ["a destination past its source", "sources overlap", "sources descend",
                                  "past the arena", "negative", "onto a later source"])
def test_a_move_that_could_overwrite_a_source_is_left_to_staging(case):
    """move_in_place declines (nothing copied) wherever an in-order copy could read a
    source already overwritten, or reach outside the arena; HostStorage.move then stages
    it and still moves every byte as the contract says."""
    from devpool import _packed
    rng = np.random.default_rng(9)
    size = 1 << 16
    src = np.array([1000, 5000, 9000], np.int64)
    dst = np.array([0, 3000, 7000], np.int64)
    lengths = np.array([2000, 2000, 2000], np.int64)
    if case == "a destination past its source":
        dst = np.array([0, 8000, 3000], np.int64)          # object 1 lands on object 2's source
    elif case == "sources overlap":
        src = np.array([1000, 2500, 9000], np.int64)
    elif case == "sources descend":
        src, dst = src[::-1].copy(), dst[::-1].copy()
    elif case == "past the arena":
        src = np.array([1000, 5000, size - 100], np.int64)
        dst = np.array([0, 3000, size - 200], np.int64)
    elif case == "onto a later source":
        dst = np.array([4500, 3000, 7000], np.int64)        # 4500..6500 meets object 1's source
    else:
        dst = np.array([-16, 3000, 7000], np.int64)
    arena = rng.integers(0, 256, size, dtype=np.uint8)
    before = arena.copy()
    assert not _packed.move_in_place(arena, src, dst, lengths)
    assert np.array_equal(arena, before), "a declined move changed the arena"
    if case in ("a destination past its source", "sources overlap", "sources descend", "onto a later source"):
        st = HostStorage(size)
        try:
            st.commit(0, size)
            st.scatter(before, np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([size], np.int64))
            st.move(src, dst, lengths)
            got = np.empty(size, np.uint8)
            st.gather(np.zeros(1, np.int64), np.array([size], np.int64), got, np.zeros(1, np.int64))
            assert np.array_equal(got, _staged(before, src, dst, lengths))
        finally:
            st.close()


def test_cleaning_moves_in_place_and_keeps_no_staging_buffer():
    """Every cleaning step's and compact()'s plan is leftward (next-fit in arena order from
    the lowest free or victim segment): the host arena moves it in place, so no buffer as
    large as a step's live bytes is kept beside the pool, and every object keeps its bytes."""
    from tests.pool.test_churn import churn
    rng = np.random.default_rng(1)
    pool = devpool.open_pool("host", 32 << 20, segment_bytes=64 << 10)
    try:
        handles, data, _ = churn(pool, rng, live=8000, rounds=25, batch=600, single=False)
        assert pool.alloc_.clean_steps > 5
        assert pool.compact() > 0
        assert pool.storage._move_tmp.size == 0, "a cleaning plan was staged"
        assert all(pool.read(h).tobytes() == data[i].tobytes() for i, h in enumerate(handles.tolist()))
    finally:
        pool.close()


_MOVE_PAST_INT64 = """
import numpy as np
from devpool import _packed
arena = np.zeros(1 << 16, np.uint8)
for src, dst, n in (([1 << 62], [0], [1 << 62]),                       # src + n wraps to -2**63
                    ([0, 1 << 62], [0, 100], [10, (1 << 63) - 1]),     # the last wraps
                    ([100, 200], [0, 100], [(1 << 63) - 50, 10])):     # the order test wraps
    src, dst, n = (np.array(a, np.int64) for a in (src, dst, n))
    assert not _packed.move_in_place(arena, src, dst, n), (src, n)
assert not arena.any()
print("declined")
"""


def test_a_move_whose_range_wraps_int64_is_declined_not_copied():
    """A source and a length whose sum wraps int64 (numpy sums arrays silently) passed the
    'inside the arena' test, and the compiled memmove ran ~2**62 bytes far outside the
    arena: a crash (so the check runs in a child). Now declined, nothing copied."""
    import os
    import subprocess
    import sys
    got = subprocess.run([sys.executable, "-c", _MOVE_PAST_INT64], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert got.returncode == 0 and got.stdout.strip() == "declined", (got.returncode, got.stderr[-2000:])


@pytest.mark.parametrize("case", ["strided arena", "read-only arena", "uint16 arena", "float offsets",
                                  "0-d offsets"])
def test_a_move_over_an_odd_arena_or_odd_offsets_is_declined(case):
    """move_in_place copies by raw address, so it takes only a C-contiguous, writable 1-D
    uint8 arena and 1-D integer offsets. A strided view had bytes moved by address, into
    the bytes between its elements; a read-only one was written through; a uint16 one
    moved bytes where its length and offsets count elements; float offsets were
    truncated (the staged path refuses them); 0-d ones were taken as a plan of one."""
    from devpool import _packed
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, 1 << 14, dtype=np.uint8)
    src, dst, lengths = (np.array([600, 2000], np.int64), np.array([100, 1500], np.int64),
                         np.array([300, 400], np.int64))
    arena = base[:1 << 13]
    if case == "strided arena":
        arena = base[::2]
    elif case == "read-only arena":
        arena.flags.writeable = False
    elif case == "uint16 arena":
        arena = base.view(np.uint16)
    elif case == "float offsets":
        src, dst, lengths = src + 0.5, dst + 0.5, lengths + 0.5
    else:
        src, dst, lengths = src[0], dst[0], lengths[0]
    before = base.copy()
    assert not _packed.move_in_place(arena, src, dst, lengths)
    assert np.array_equal(base, before), "a declined move changed the arena"
