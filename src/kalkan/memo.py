"""Bounded memos: a dict kept under a fixed size by evicting its oldest entry as each new one
arrives. One type for every memo whose keys a client or an origin chooses (Host values, paths,
User-Agents, addresses, response heads), so none can grow without bound or stall the loop."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most `limit` entries; the oldest goes when a new key arrives (first in, first out).

    Lookups read `table` (a plain dict: the fast path, in compiled code too); new entries go
    through `put`. Why not clear the dict when full, as these memos used to: a flood of
    distinct keys then drops every hot entry at once, so every reader's next request pays the
    slow path together (e.g. the crawler regex for each User-Agent), and freeing thousands of
    entries in one go is a stall of its own. Why a queue of keys beside the dict rather than the
    dict's own order: finding a dict's oldest key walks over the slots of every key deleted
    before it (until the dict next resizes), which measured thousands of instructions per new
    key under a flood of distinct ones; the queue gives the oldest key at once.
    """

    __slots__ = ("table", "order", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a memo holds at least one entry")
        self.table: dict[K, V] = {}
        self.order: deque[K] = deque()  # keys as they arrived (may hold discarded ones)
        self.limit = limit

    def __len__(self) -> int:
        return len(self.table)

    def put(self, key: K, value: V) -> V:
        """Remember `value` for `key` and return it, evicting the oldest entry if full."""
        table = self.table
        if key not in table:
            order = self.order
            if len(table) >= self.limit:
                while order:
                    old = order.popleft()
                    if old in table:  # (not a key discarded since)
                        del table[old]
                        break
            order.append(key)
            if len(order) > 2 * self.limit:  # discarded keys piled up: start the queue afresh
                self.order = deque(table)
                self.order.append(key)
        table[key] = value
        return value

    def discard(self, key: K) -> None:
        """Forget one entry (its key leaves the queue when it comes up)."""
        self.table.pop(key, None)

    def clear(self) -> None:
        self.table.clear()
        self.order.clear()
