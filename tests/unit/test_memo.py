"""kalkan.memo: bounded memos evict their oldest entries a few at a time, never all at once."""

from __future__ import annotations

import pytest

from kalkan.memo import EVICT_SHARE, evict_oldest, remember


def test_remember_stores_and_returns_the_value() -> None:
    memo: dict[str, int] = {}
    assert remember(memo, "a", 1, 4) == 1
    assert memo == {"a": 1}


def test_a_full_memo_drops_its_oldest_eighth_for_a_new_key() -> None:
    memo: dict[int, int] = {}
    for i in range(64):
        remember(memo, i, i, 64)
    assert len(memo) == 64
    remember(memo, 64, 64, 64)
    dropped = 64 // EVICT_SHARE
    assert list(memo) == list(range(dropped, 65))  # the oldest went, the newest stays
    # Room for the next ones without evicting again until full.
    for i in range(65, 64 + dropped):
        remember(memo, i, i, 64)
    assert list(memo)[0] == dropped and len(memo) == 64


def test_a_flood_of_distinct_keys_never_grows_it_and_keeps_the_recent_ones() -> None:
    memo: dict[str, int] = {}
    for i in range(100_000):
        remember(memo, f"ua-{i}", i, 4096)
        assert len(memo) <= 4096
    assert "ua-99999" in memo and "ua-0" not in memo
    # At least seven eighths of the limit survive any insert: no cliff where every hot entry
    # is lost at once.
    assert len(memo) >= 4096 - 4096 // EVICT_SHARE


def test_replacing_a_key_in_a_full_memo_evicts_nothing() -> None:
    memo = {i: i for i in range(8)}
    remember(memo, 3, 30, 8)
    assert len(memo) == 8 and memo[3] == 30 and 0 in memo


def test_a_memo_over_its_limit_is_brought_back_under_it() -> None:
    """A limit lowered (e.g. by a reload) shrinks the memo at the next new key."""
    memo = {i: i for i in range(100)}
    remember(memo, 100, 100, 10)
    assert len(memo) <= 10 and 100 in memo


@pytest.mark.parametrize("limit", [1, 2, 7])
def test_tiny_limits_hold(limit: int) -> None:
    memo: dict[int, int] = {}
    for i in range(50):
        remember(memo, i, i, limit)
        assert len(memo) <= limit and memo[i] == i


def test_evict_oldest() -> None:
    memo = {k: k for k in "abcdef"}
    evict_oldest(memo, 2)
    assert list(memo) == list("cdef")
    evict_oldest(memo, 10)
    assert memo == {}
