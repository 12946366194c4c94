"""Delivery of alerts: one background task per channel drains that channel's Outbox, at most one
message per interval, each attempt in a thread with a timeout, retried with backoff; a failure is
logged and counted, never raised, and its events ride in the next message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from kalkan.alerts.channels import Channel, SendError
from kalkan.alerts.events import Event
from kalkan.alerts.messages import render
from kalkan.alerts.outbox import Batch, Outbox
from kalkan.config import AlertsConfig
from kalkan.observe.metrics import Metrics

log = logging.getLogger("kalkan.alerts")

_MAX_BACKOFF = 30.0


class Dispatcher:
    """Events in (`notify`, never blocks), messages out on every channel."""

    def __init__(self, config: AlertsConfig, site: str, channels: list[Channel],
                 metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.site = site
        self.channels = channels
        self.clock = clock
        self.outboxes = {ch.name: Outbox(config.interval, config.queue_size) for ch in channels}
        self._wake = {ch.name: asyncio.Event() for ch in channels}
        self._tasks: list[asyncio.Task[None]] = []
        self.events = 0
        self.sent = 0
        self.failed = 0          # messages given up after every retry (their events wait)
        self.attempts_failed = 0
        if metrics is not None:
            metrics.counter("kalkan_alert_events_total", "Alert events noticed.",
                            lambda: self.events)
            metrics.counter("kalkan_alerts_sent_total", "Alert messages delivered (all "
                            "channels).", lambda: self.sent)
            metrics.counter("kalkan_alerts_failed_total", "Alert messages not delivered after "
                            "every retry (their events go in the next message).",
                            lambda: self.failed)
            metrics.counter("kalkan_alert_attempts_failed_total", "Alert delivery attempts "
                            "that failed (retried).", lambda: self.attempts_failed)
            metrics.counter("kalkan_alert_events_unlisted_total", "Alert events beyond "
                            "alerts.queue_size: counted in the next message, not listed.",
                            lambda: sum(o.overflowed for o in self.outboxes.values()))

    def start(self) -> None:
        for ch in self.channels:
            self._tasks.append(asyncio.create_task(self._run(ch), name=f"alerts-{ch.name}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def notify(self, event: Event) -> None:
        """Queue an event for every channel; returns at once."""
        self.events += 1
        log.info("alert: %s %s", event.kind, event.facts.get("reason", ""))
        for ch in self.channels:
            self.outboxes[ch.name].add(event)
            self._wake[ch.name].set()

    async def _run(self, ch: Channel) -> None:
        outbox, wake = self.outboxes[ch.name], self._wake[ch.name]
        while True:
            wait = outbox.due(self.clock())
            if wait is None:
                await wake.wait()
                wake.clear()
                continue
            if wait > 0:
                # New events only join the pending ones: nothing to do before the interval ends.
                await asyncio.sleep(wait)
                continue
            batch = outbox.take(self.clock())
            if not await self.deliver(ch, batch):
                outbox.give_back(batch)

    async def deliver(self, ch: Channel, batch: Batch) -> bool:
        """Send one batch on one channel with retries; True when delivered."""
        message = render(batch, self.site, self.config.language)
        delay = 1.0
        for attempt in range(self.config.retries + 1):
            try:
                await asyncio.to_thread(ch.send, message, batch, self.site)
            except SendError as exc:
                problem = str(exc)
            except Exception as exc:  # a bug or an odd library error must not end the task
                problem = f"{type(exc).__name__}: {exc}"
            else:
                self.sent += 1
                log.info("alert sent by %s: %s", ch.name, message.subject)
                return True
            self.attempts_failed += 1
            if attempt < self.config.retries:
                log.warning("alert by %s failed (attempt %d, retrying in %.0f s): %s", ch.name,
                            attempt + 1, delay, problem)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
            else:
                log.error("alert by %s not delivered after %d attempts: %s; its %d events go "
                          "in the next message", ch.name, attempt + 1, problem,
                          len(batch.events) + batch.unlisted)
        self.failed += 1
        return False

    async def test(self) -> list[tuple[str, str | None]]:
        """A test message on every channel at once, no retries: (channel, None or problem)."""
        batch = Batch((Event("test", {"site": self.site}),))
        message = render(batch, self.site, self.config.language)

        async def one(ch: Channel) -> str | None:
            try:
                await asyncio.to_thread(ch.send, message, batch, self.site)
            except SendError as exc:
                return str(exc)
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            return None

        results = await asyncio.gather(*(one(ch) for ch in self.channels))
        return [(ch.name, problem) for ch, problem in zip(self.channels, results, strict=True)]
