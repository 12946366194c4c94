"""The coarse clock every connection reads: wall and monotonic time, refreshed by the sweep."""

from __future__ import annotations

import time

CLOCK_STEP = 0.25
"""Seconds between the sweeps that refresh the clock (edge/server.py): what the clock says may
be this much behind."""


class Clock:
    """A coarse wall clock refreshed by the sweep, so the hot path never calls time().
    (Compiled: a connection reads it a few times per request, a native attribute each.)

    A `manual` clock ignores the sweep and moves only by `advance`: socket-free tests of the
    connection's deadlines run in simulated time."""

    __slots__ = ("now", "mono", "manual")

    def __init__(self, manual: bool = False) -> None:
        self.now = time.time()
        self.mono = time.monotonic()
        self.manual = manual

    def tick(self) -> None:
        if not self.manual:
            self.now = time.time()
            self.mono = time.monotonic()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds
