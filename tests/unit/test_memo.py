"""kalkan.memo.Memo: a bounded memo lets its oldest entry go as each new one arrives, never all
at once, and finds that oldest entry without walking the dict."""

from __future__ import annotations

import pytest

from kalkan.memo import Memo


def test_put_stores_and_returns_the_value() -> None:
    memo: Memo[str, int] = Memo(4)
    assert memo.put("a", 1) == 1
    assert memo.table == {"a": 1} and memo.table.get("b") is None
    assert len(memo) == 1


def test_a_full_memo_lets_its_oldest_entry_go_for_each_new_key() -> None:
    memo: Memo[int, int] = Memo(64)
    for i in range(64):
        memo.put(i, i)
    memo.put(64, 64)
    assert list(memo.table) == list(range(1, 65))
    memo.put(65, 65)
    assert list(memo.table) == list(range(2, 66))


def test_a_flood_of_distinct_keys_never_grows_it_and_keeps_the_recent_ones() -> None:
    memo: Memo[str, int] = Memo(4096)
    for i in range(100_000):
        memo.put(f"ua-{i}", i)
        assert len(memo) <= 4096
    # No cliff: once full it stays full, holding exactly the latest 4,096.
    assert set(memo.table) == {f"ua-{i}" for i in range(100_000 - 4096, 100_000)}
    assert len(memo.order) == 4096


def test_replacing_a_key_in_a_full_memo_evicts_nothing() -> None:
    memo: Memo[int, int] = Memo(8)
    for i in range(8):
        memo.put(i, i)
    memo.put(3, 30)
    assert len(memo) == 8 and memo.table[3] == 30 and 0 in memo.table


def test_discarded_keys_are_skipped_and_do_not_pile_up() -> None:
    memo: Memo[int, int] = Memo(4)
    for i in range(4):
        memo.put(i, i)
    memo.discard(0)
    memo.discard(99)  # not there: nothing happens
    memo.put(4, 4)
    assert sorted(memo.table) == [1, 2, 3, 4]  # room was there: nothing evicted
    memo.put(5, 5)
    assert sorted(memo.table) == [2, 3, 4, 5]  # the stale 0 skipped, 1 (the oldest) went
    for _ in range(100):  # put, discard, put again: the queue is rebuilt, never unbounded
        memo.discard(5)
        memo.put(5, 5)
        assert len(memo.order) <= 2 * memo.limit + 1
    assert sorted(memo.table) == [2, 3, 4, 5]


def test_clear() -> None:
    memo: Memo[int, int] = Memo(4)
    memo.put(1, 1)
    memo.clear()
    assert not memo.table and not memo.order


@pytest.mark.parametrize("limit", [1, 2, 7])
def test_tiny_limits_hold(limit: int) -> None:
    memo: Memo[int, int] = Memo(limit)
    for i in range(50):
        memo.put(i, i)
        assert len(memo) <= limit and memo.table[i] == i


def test_a_memo_needs_room_for_one() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Memo(0)
