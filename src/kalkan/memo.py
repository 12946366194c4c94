"""Bounded memos: plain dicts kept under a fixed size by evicting their oldest entries a few at
a time. One helper for every memo whose keys a client or an origin chooses (Host values, paths,
User-Agents, addresses, response heads), so none can grow without bound or stall the loop."""

from __future__ import annotations

from itertools import islice
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

EVICT_SHARE = 8
"""A full memo drops its oldest 1/EVICT_SHARE entries to make room."""


def remember(memo: dict[K, V], key: K, value: V, limit: int) -> V:
    """``memo[key] = value`` and return *value*, first making room if *memo* already holds
    *limit* entries and *key* is new: its oldest entries go (dicts keep insertion order).

    Why not ``clear()`` when full, as these memos used to: a flood of distinct keys then drops
    every hot entry at once, so every reader's next request pays the slow path together (a
    burst, e.g. the crawler regex for each User-Agent), and freeing thousands of entries in one
    go is a stall of its own. Evicting an eighth keeps the most recent seven eighths and costs
    a constant amount per insert. The memo stays a plain dict, so lookups (``memo.get``) keep
    the fast path, in compiled code too.
    """
    if len(memo) >= limit and key not in memo:
        evict_oldest(memo, max(1, limit // EVICT_SHARE, len(memo) - limit + 1))
    memo[key] = value
    return value


def evict_oldest(memo: dict[K, V], count: int) -> None:
    """Drop the *count* entries *memo* has held longest."""
    for key in list(islice(memo, count)):
        del memo[key]
