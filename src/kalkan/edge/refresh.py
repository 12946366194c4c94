"""Which stale pages are refreshed first when origin slots are scarce (under attack): a bounded
table of the refreshes waiting for a slot, each counted by the readers served its stale copy
meanwhile; the hottest goes first. Pure bookkeeping: `fill.Filler` asks the gate for the slots.

Bounded like Space-Saving (observe/talkers.py): a full table gives its coldest entry's place to a
newcomer, which inherits that count plus one, so a page read often enough always gets in. An
entry no reader asked for within `window` seconds is dropped, not kept waiting forever: the next
reader of that stale page wants it again.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Generic, TypeVar

T = TypeVar("T")

# Pages waiting for a refresh at once. A small newsroom's hot set is a few hundred pages; the
# hottest is found by a scan (in C, about 10 µs here), once per origin slot given.
SIZE = 256

_HITS = attrgetter("hits")


class Wanted(Generic[T]):
    """One page waiting for a refresh: how many readers got its stale copy, when the last one
    did, and what the refresh needs (the latest such reader's request)."""

    __slots__ = ("key", "hits", "last", "payload")

    def __init__(self, key: str, hits: int, last: float, payload: T) -> None:
        self.key = key
        self.hits = hits
        self.last = last
        self.payload = payload


class HotRefreshes(Generic[T]):
    """Refreshes that did not get an origin slot, hottest first, bounded in count and time."""

    def __init__(self, window: float, size: int = SIZE) -> None:
        if size < 1 or window <= 0:
            raise ValueError("HotRefreshes needs a size of at least 1 and a positive window")
        self.window = window
        self.size = size
        self.dropped = 0  # waited longer than the window, or lost their place to hotter pages
        self._table: dict[str, Wanted[T]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: str) -> bool:
        return key in self._table

    def hits(self, key: str) -> int:
        wanted = self._table.get(key)
        return 0 if wanted is None else wanted.hits

    def want(self, key: str, payload: T, now: float) -> bool:
        """A reader was served this key's stale copy: count it. True if the key is new here."""
        table = self._table
        wanted = table.get(key)
        if wanted is not None:
            wanted.hits += 1
            wanted.last = now
            wanted.payload = payload
            return False
        hits = 1
        if len(table) >= self.size:
            coldest = min(table.values(), key=_HITS)
            del table[coldest.key]
            self.dropped += 1
            hits = coldest.hits + 1
        table[key] = Wanted(key, hits, now, payload)
        return True

    def pop_hottest(self, now: float) -> Wanted[T] | None:
        """The most wanted refresh still asked for within the window (None: nothing waits)."""
        table = self._table
        while table:
            best = max(table.values(), key=_HITS)
            del table[best.key]
            if now - best.last <= self.window:
                return best
            self.dropped += 1
        return None

    def expire(self, now: float) -> int:
        """Drop what nobody asked for within the window; how many were dropped."""
        old = [k for k, w in self._table.items() if now - w.last > self.window]
        for key in old:
            del self._table[key]
        self.dropped += len(old)
        return len(old)

    def clear(self) -> int:
        """Forget every waiting refresh (the attack is over: refreshes take slots as they come
        again); how many were waiting."""
        n = len(self._table)
        self._table.clear()
        self.dropped += n
        return n
