"""A token bucket: a budget of events refilled at a steady rate, shared by whoever draws on it
(link previews' misses, a pass's misses, newcomers' misses)."""

from __future__ import annotations


class Bucket:
    """A token bucket: `rate` a second, holding at most `burst`."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, 0.0

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True
