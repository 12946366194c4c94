"""The coarse clock every connection reads: wall and monotonic time, refreshed by the sweep."""

from __future__ import annotations

import time


class Clock:
    """A coarse wall clock refreshed by the sweep, so the hot path never calls time().
    (Compiled: a connection reads it a few times per request, a native attribute each.)"""

    __slots__ = ("now", "mono")

    def __init__(self) -> None:
        self.now = time.time()
        self.mono = time.monotonic()

    def tick(self) -> None:
        self.now = time.time()
        self.mono = time.monotonic()
