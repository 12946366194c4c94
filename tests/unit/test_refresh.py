"""The deferred refreshes' table (edge/refresh.py): hottest first, bounded in count and in time."""

from __future__ import annotations

import pytest

from kalkan.edge.refresh import HotRefreshes


def test_the_hottest_page_is_refreshed_first() -> None:
    table: HotRefreshes[str] = HotRefreshes(window=5.0)
    assert table.want("/cold", "c1", 0.0)
    for i in range(5):
        table.want("/hot", f"h{i}", 0.1 * i)
    table.want("/warm", "w", 0.2)
    table.want("/warm", "w2", 0.3)
    order = []
    while (wanted := table.pop_hottest(1.0)) is not None:
        order.append((wanted.key, wanted.hits, wanted.payload))
    assert order == [("/hot", 5, "h4"), ("/warm", 2, "w2"), ("/cold", 1, "c1")]
    assert len(table) == 0 and table.dropped == 0


def test_a_refresh_nobody_asked_for_lately_is_dropped_not_kept() -> None:
    table: HotRefreshes[int] = HotRefreshes(window=5.0)
    for _ in range(10):
        table.want("/was-hot", 1, 0.0)
    table.want("/now", 2, 9.0)
    wanted = table.pop_hottest(10.0)   # /was-hot has more hits but its readers are gone
    assert wanted is not None and wanted.key == "/now"
    assert table.dropped == 1 and len(table) == 0
    table.want("/a", 1, 0.0)
    table.want("/b", 1, 8.0)
    assert table.expire(10.0) == 1 and "/b" in table and "/a" not in table


def test_a_full_table_gives_the_coldest_place_to_a_newcomer_with_its_count() -> None:
    table: HotRefreshes[None] = HotRefreshes(window=60.0, size=3)
    for key, hits in (("/a", 4), ("/b", 1), ("/c", 2)):
        for _ in range(hits):
            table.want(key, None, 0.0)
    assert table.want("/d", None, 1.0)
    assert len(table) == 3 and "/b" not in table and table.hits("/d") == 2
    assert table.dropped == 1
    # A page read steadily gets in however many cold ones passed through.
    for i in range(20):
        table.want(f"/cold{i}", None, 2.0)
        table.want("/steady", None, 2.0)
    assert "/steady" in table and table.hits("/steady") >= 20


def test_clear_forgets_everything_and_counts_it() -> None:
    table: HotRefreshes[None] = HotRefreshes(window=1.0)
    table.want("/x", None, 0.0)
    table.want("/y", None, 0.0)
    assert table.clear() == 2 and len(table) == 0 and table.dropped == 2
    assert table.pop_hottest(0.0) is None


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        HotRefreshes(window=1.0, size=0)
    with pytest.raises(ValueError, match="window"):
        HotRefreshes(window=0.0)
