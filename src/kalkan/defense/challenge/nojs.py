"""The no-JavaScript fallback: wait a few seconds, then follow a meta refresh or press a button.

The ticket is the page's signed challenge; it becomes valid only at its signed not-before time,
so a bot pays in wall-clock time. Each prefix gets a small bucket of attempts, stricter than any
page limit, because the wait costs a bot far less than the proof-of-work does.
"""

from __future__ import annotations

from collections.abc import Mapping

from kalkan.defense.challenge.method import Verdict
from kalkan.defense.challenge.tokens import NOJS, Ticket

DELAY_FACTORS = (1, 1, 2, 3)   # the wait grows with the threat level: 5, 5, 10, 15 s by default


def delay_for(base: float, threat_level: int) -> float:
    return base * DELAY_FACTORS[min(max(threat_level, 0), len(DELAY_FACTORS) - 1)]


class PrefixBucket:
    """Per-prefix token buckets: `burst` attempts at once, then one per `every` seconds.

    Bounded: when `limit` prefixes are tracked, full (idle) buckets are forgotten first; if the
    table is still too big, it starts over (a flood of prefixes cannot grow it).
    """

    def __init__(self, burst: int = 6, every: float = 30.0, limit: int = 65536) -> None:
        self.burst = float(burst)
        self.every = every
        self.limit = limit
        self._buckets: dict[str, list[float]] = {}   # prefix -> [tokens, last update]
        self.refused = 0                              # attempts over the limit (for metrics)

    def take(self, prefix: str, now: float) -> bool:
        b = self._buckets.get(prefix)
        if b is None:
            if len(self._buckets) >= self.limit:
                self._prune(now)
            self._buckets[prefix] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, b[0] + (now - b[1]) / self.every)
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            self.refused += 1
            return False
        b[0] = tokens - 1.0
        return True

    def _prune(self, now: float) -> None:
        full = self.burst - 1e-9
        kept = {p: b for p, b in self._buckets.items()
                if b[0] + (now - b[1]) / self.every < full}
        self._buckets = kept if len(kept) < self.limit // 2 else {}

    def __len__(self) -> int:
        return len(self._buckets)


class NoJs:
    """Method `nojs`: GET or POST /.kalkan/nojs?t=TICKET&r=RETURN once the delay has passed."""

    name = "nojs"
    kind = NOJS

    def __init__(self, limiter: PrefixBucket | None = None) -> None:
        self.limiter = limiter or PrefixBucket()

    def admit(self, prefix: str, now: float) -> bool:
        return self.limiter.take(prefix, now)

    def verify(self, ticket: Ticket, params: Mapping[str, str], now: float) -> Verdict:
        return Verdict.PASS if now >= ticket.not_before else Verdict.WAIT
