"""The rate limiter and summariser of one channel (sans-IO): at most one message per interval;
events that arrive inside it wait and go together in the next message, none dropped unsaid."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from kalkan.alerts.events import Event


@dataclass(frozen=True, slots=True)
class Batch:
    """What one message carries: the events in order, and how many older ones did not fit
    (they are counted in the message, not listed)."""

    events: tuple[Event, ...]
    unlisted: int = 0


class Outbox:
    """Pending events of one channel and when it last sent. Times are monotonic seconds."""

    def __init__(self, interval: float, capacity: int) -> None:
        self.interval = interval
        self.capacity = capacity
        self._pending: deque[Event] = deque()
        self._unlisted = 0          # events pushed out of a full queue since the last message
        self.last_sent: float | None = None
        self.overflowed = 0         # all-time count of events pushed out (a metric)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, event: Event) -> None:
        """Queue an event; a full queue forgets its oldest, which the next message counts."""
        self._pending.append(event)
        while len(self._pending) > self.capacity:
            self._pending.popleft()
            self._unlisted += 1
            self.overflowed += 1

    def due(self, now: float) -> float | None:
        """Seconds until a message may go (0: now), or None when nothing is pending."""
        if not self._pending and not self._unlisted:
            return None
        if self.last_sent is None:
            return 0.0
        return max(0.0, self.last_sent + self.interval - now)

    def take(self, now: float) -> Batch:
        """Everything pending, as one message sent `now`: the interval starts again."""
        batch = Batch(tuple(self._pending), self._unlisted)
        self._pending.clear()
        self._unlisted = 0
        self.last_sent = now
        return batch

    def give_back(self, batch: Batch) -> None:
        """A message that could not be delivered: its events go before the newer ones, so the
        next message carries them (still bounded by the capacity)."""
        newer = list(self._pending)
        self._pending.clear()
        self._unlisted += batch.unlisted
        for event in (*batch.events, *newer):
            self.add(event)
