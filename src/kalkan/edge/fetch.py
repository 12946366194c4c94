"""The way from the cache to the origin: one exchange behind the circuit breaker and the gate,
timed and counted (`OriginClient`), and the bookkeeping around misses (`Misses`): coalescing,
"hit-for-miss" memory and background refreshes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from kalkan.config import OriginConfig
from kalkan.edge.origin import (
    BadUpstreamRequest,
    Breaker,
    BreakerOpen,
    GateFull,
    OriginError,
    OriginGate,
    OriginPool,
    OriginTimeout,
    UpstreamResponse,
)
from kalkan.edge.request import BodyStream
from kalkan.edge.store import Entry
from kalkan.observe.metrics import Metrics

_OVERLOAD_STATUS = frozenset({502, 503, 504})
_FAILURES = ("error", "timeout", "5xx", "shed", "breaker_open", "body_error")
UNCACHEABLE_MEMORY = 30.0   # seconds a key that was not storable skips coalescing


class Maintenance(OriginError):
    """Maintenance mode: the origin is not asked (cached pages are still served)."""




class OriginClient:
    """Owns the pool, the gate and the breaker; every origin request goes through `ask`.
    `maintenance`: while true nothing reaches the origin (site.maintenance, POST
    /maintenance); readers get what is cached, else the maintenance page."""

    def __init__(self, config: OriginConfig, metrics: Metrics) -> None:
        self.maintenance = False
        self.pool = OriginPool(config)
        self.gate = OriginGate(config.max_concurrency, config.queue_size, config.queue_timeout)
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown)
        self.metrics = metrics
        m = metrics
        m.gauge("kalkan_origin_active", "Origin requests in flight.", lambda: self.gate.active)
        m.gauge("kalkan_gate_queue_depth", "Requests waiting for an origin slot.",
                lambda: self.gate.queued)
        m.gauge("kalkan_origin_breaker_open", "1 while the origin circuit breaker is open.",
                lambda: 0 if self.breaker.state == Breaker.CLOSED else 1)

    async def ask(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                  body: BodyStream | None, chunked: bool,
                  mono: float) -> tuple[UpstreamResponse, float]:
        """One exchange; returns the response (head read, body to stream) and its latency in
        ms. Raises BreakerOpen, GateFull or OriginError, all counted."""
        metrics = self.metrics
        if self.maintenance:
            metrics.origin_requests["maintenance"] += 1
            raise Maintenance("maintenance mode: the origin is not asked")
        if not self.breaker.allow(mono):
            metrics.origin_requests["breaker_open"] += 1
            raise BreakerOpen("origin circuit breaker is open")
        try:
            await self.gate.acquire()
        except GateFull:
            metrics.gate_shed += 1
            metrics.origin_requests["shed"] += 1
            raise
        t0 = time.monotonic()
        try:
            resp = await self.pool.request(method, target, headers, body, chunked=chunked)
        except BadUpstreamRequest:
            metrics.origin_requests["refused_by_edge"] += 1  # our bug, not the origin failing
            raise
        except OriginError as exc:
            self.breaker.failure(mono)
            metrics.origin_requests["timeout" if isinstance(exc, OriginTimeout) else "error"] += 1
            raise
        finally:
            self.gate.release()
        elapsed = time.monotonic() - t0
        metrics.origin_latency.observe(elapsed)
        if resp.status in _OVERLOAD_STATUS:
            # The origin (or what is in front of it) says it is down or overloaded; a 500 is an
            # answer about one page and must not cut every reader off the origin.
            self.breaker.failure(mono)
            metrics.origin_requests["5xx"] += 1
        else:
            self.breaker.success()
            metrics.origin_requests["ok"] += 1
        return resp, elapsed * 1000.0

    def body_failed(self, mono: float) -> None:
        """The origin broke off a body after its head: a failure like any other."""
        self.breaker.failure(mono)
        self.metrics.origin_requests["body_error"] += 1

    def failures(self) -> int:
        """Origin failures so far (the attack mode's error signal)."""
        return sum(self.metrics.origin_requests[k] for k in _FAILURES)

    def close(self) -> None:
        self.pool.close()


class Misses:
    """Concurrent misses for one key make one origin request (`inflight`); a key whose last
    response was not storable skips that for a while (hit-for-miss, since waiting on it would
    only serialize readers); refreshes run in the background, bounded by the gate."""

    def __init__(self) -> None:
        self.inflight: dict[str, asyncio.Future[Entry | None]] = {}
        self.uncacheable: dict[str, float] = {}
        self.background: set[asyncio.Task[None]] = set()

    def lead(self, key: str) -> asyncio.Future[Entry | None]:
        fut: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self.inflight[key] = fut
        return fut

    def done(self, key: str, fut: asyncio.Future[Entry | None], stored: Entry | None) -> None:
        self.inflight.pop(key, None)
        fut.set_result(stored)

    def not_storable(self, key: str, now: float) -> None:
        self.uncacheable[key] = now + UNCACHEABLE_MEMORY

    def storable(self, key: str) -> None:
        self.uncacheable.pop(key, None)

    def skip_coalescing(self, key: str, now: float) -> bool:
        return self.uncacheable.get(key, 0.0) > now

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def expire(self, now: float) -> None:
        if self.uncacheable:
            for key in [k for k, until in self.uncacheable.items() if until < now]:
                del self.uncacheable[key]

    def cancel(self) -> None:
        for task in list(self.background):
            task.cancel()


def failure_status(exc: Exception) -> tuple[str, list[tuple[bytes, bytes]]]:
    """The reader's page (kalkan/pages: its status comes with it) and extra header fields when
    the origin could not be asked or did not answer."""
    if isinstance(exc, Maintenance):
        return "maintenance", [(b"Retry-After", b"300")]
    if isinstance(exc, GateFull | BreakerOpen):
        return "busy", [(b"Retry-After", b"10")]
    if isinstance(exc, OriginTimeout):
        return "timeout", []
    return "bad-gateway", []
