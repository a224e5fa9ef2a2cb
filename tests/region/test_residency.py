"""The region's residency and victim policy on their own: numpy only, no userfaultfd."""

from __future__ import annotations

import numpy as np
import pytest

from devpool.region.residency import EVICTED, LOST, RESIDENT, UNTOUCHED, Residency


def _fill(r: Residency, pages, heat: int = 1) -> None:
    for p in pages:
        r.came_in(int(p), heat)


def test_states_and_counts_follow_the_transitions():
    r = Residency(16, 4)
    assert (r.state == UNTOUCHED).all() and r.nres == 0 and r.nstored == 0
    _fill(r, range(6))
    assert r.nres == 6 and r.over_budget() == 2
    r.went_out(np.array([1, 2]))
    assert r.state[1] == r.state[2] == EVICTED and r.nres == 4 and r.nstored == 2
    r.came_in(1)                                   # faulted back
    assert r.state[1] == RESIDENT and r.nres == 5 and r.nstored == 1
    r.lost(2)                                      # could not be loaded: poisoned
    assert r.state[2] == LOST and r.nstored == 0 and r.nres == 5


def _six_in_one_out() -> Residency:
    r = Residency(32, 4)
    _fill(r, [9, 3, 20, 7, 15, 1])
    r.went_out(np.array([20]))
    return r


def test_pick_returns_resident_candidates_sorted_and_at_most_n():
    r = _six_in_one_out()
    got = r.pick(3, keep_recent=0)
    assert got.size == 3 and list(got) == sorted(got)
    assert all(r.state[p] == RESIDENT for p in got)
    assert set(_six_in_one_out().pick(100, keep_recent=0)) == {9, 3, 7, 15, 1}


def test_victims_are_handed_over_once():
    """A victim goes out or is refused; it is not offered again meanwhile, and a refused
    one comes back once written."""
    r = _six_in_one_out()
    first = r.pick(2, keep_recent=0)
    second = r.pick(100, keep_recent=0)
    assert not set(first) & set(second) and set(first) | set(second) == {9, 3, 7, 15, 1}
    r.refuse(first)
    r.went_out(second)
    assert r.pick(100, keep_recent=0).size == 0
    r.written(int(first[0]))
    assert list(r.pick(100, keep_recent=0)) == [first[0]]


def test_the_most_recent_faults_are_never_victims():
    r = Residency(32, 4)
    order = [5, 6, 7, 8, 9, 10]
    _fill(r, order)
    got = set(r.pick(100, keep_recent=4))
    assert got == {5, 6}                           # 7..10 are the four most recent


def test_refused_pages_wait_until_written():
    r = Residency(16, 4)
    _fill(r, range(4))
    r.refuse(np.array([0, 1]))
    assert set(r.pick(4, keep_recent=0)) == {2, 3}
    r.written(0)
    assert 0 in set(r.pick(4, keep_recent=0))


def test_fifo_evicts_the_oldest_whatever_their_heat():
    r = Residency(16, 4, policy="fifo")
    _fill(r, [4, 5, 6, 7])
    for _ in range(5):                             # page 4 is hot: faults in again and again
        r.went_out(np.array([4]))
        r.came_in(4)
    assert list(r.pick(2, keep_recent=0)) == [5, 6]


def test_lfu_evicts_the_coldest_and_among_equals_the_oldest():
    r = Residency(16, 8, policy="lfu")
    _fill(r, [1, 2, 3, 4])
    for _ in range(3):                             # pages 1 and 2 fault in often
        r.went_out(np.array([1, 2]))
        _fill(r, [1, 2])
    got = r.pick(2, keep_recent=0)
    assert list(got) == [3, 4]                     # the cold ones, though 1 and 2 came in later
    r.went_out(got)
    _fill(r, [4, 3])                               # now 4 is older than 3, both colder than 1, 2
    assert list(r.pick(1, keep_recent=0)) == [4]


def test_old_heat_fades():
    """Every 8 x budget faults all counts halve: a page hot long ago loses its lead."""
    r = Residency(64, 2, policy="lfu")
    for _ in range(6):                             # page 0: 6 fault-ins
        r.came_in(0)
        r.went_out(np.array([0]))
    r.came_in(0)
    _fill(r, [1])
    r.went_out(np.array([1]))
    hot = int(r.effective_hits(np.array([0]))[0])
    assert hot == 7
    for k in range(2, 2 + 8 * 2 * 3):              # 48 faults of other pages: three halvings
        r.came_in(k % 60 + 2)
        r.went_out(np.array([k % 60 + 2]))
    assert int(r.effective_hits(np.array([0]))[0]) <= hot >> 3


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy"):
        Residency(16, 4, policy="lru")


def test_a_round_looks_at_a_window_of_the_oldest_and_requeues_the_rest():
    """Beyond 4n resident pages a round of n victims picks the coldest of the 4n oldest
    (sampled LFU: its cost follows n, not the region); the survivors wait at the tail."""
    r = Residency(64, 8, policy="lfu")
    hot = list(range(8))
    for _ in range(3):                             # pages 0..7: hot, and the oldest
        _fill(r, hot)
        r.went_out(np.array(hot))
    _fill(r, hot)
    _fill(r, range(8, 40))                         # 32 cold pages after them
    first = r.pick(2, keep_recent=0)               # the window is 0..7, all hot
    assert list(first) == [0, 1]                   # the oldest of equals
    r.went_out(first)
    assert list(r.pick(2, keep_recent=0)) == [8, 9]   # 2..7 went to the tail: the next window is cold


def test_sequence_numbers_beyond_int64_keys_still_order_and_validate():
    """Days of faults: a packed (seq, page) key would overflow int64 after 2**35 faults."""
    r = Residency(16, 4, policy="lfu")
    r.next_seq = 1 << 62
    _fill(r, [3, 1, 2])
    r.went_out(np.array([1]))
    _fill(r, [1])
    assert list(r.pick(1, keep_recent=0)) == [3]
    assert list(r.pick(5, keep_recent=1)) == [2]   # 1 is the most recent
