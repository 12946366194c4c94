"""The way from the cache to the origin: one exchange behind the circuit breaker and the gate,
timed and counted (`OriginClient`), and the bookkeeping around misses (`Misses`): coalescing,
"hit-for-miss" memory and background refreshes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from kalkan.config import OriginConfig
from kalkan.edge.endpoint import ConnectionGone
from kalkan.edge.origin import (
    MISS,
    BadUpstreamRequest,
    Breaker,
    BreakerOpen,
    ClientLeft,
    GateFull,
    OriginError,
    OriginGate,
    OriginPool,
    OriginTimeout,
    UpstreamResponse,
    budget_slots,
)
from kalkan.edge.request import BodyStream
from kalkan.edge.store import Entry
from kalkan.observe.metrics import Metrics

_OVERLOAD_STATUS = frozenset({502, 503, 504})
_FAILURES = ("error", "timeout", "5xx", "shed", "breaker_open", "body_error")
UNCACHEABLE_MEMORY = 30.0   # seconds a key that was not storable skips coalescing
# The threat level from which the gate holds misses and refreshes to `origin.headroom` (1:
# elevated; the defence's levels are 0 peace, 1 elevated, 2 attack, 3 severe).
CAP_FROM_LEVEL = 1


class Rejudged(Exception):
    """A request that waited for an origin slot was answered otherwise once it got one (the
    threat level rose while it waited, and the defence challenged it): nothing to fetch."""


class Maintenance(OriginError):
    """Maintenance mode: the origin is not asked (cached pages are still served)."""


class Noted(Protocol):
    """Where a request's outcome is noted for the access log (deliver.Outcome)."""

    status: int
    reason: str


def client_left(out: Noted) -> None:
    """The access log's word for a request dropped from the gate's queue: 499, as nginx logs
    a client that closed its connection before the answer."""
    out.status = 499
    out.reason = "client_left"


class OriginClient:
    """Owns the pool, the gate and the breaker; every origin request goes through `ask`.
    `maintenance`: while true nothing reaches the origin (site.maintenance, POST
    /maintenance); readers get what is cached, else the maintenance page. `threat` is the
    defence's threat level now: from 1 on, the gate caps misses and refreshes together at
    `origin.headroom` of its slots."""

    def __init__(self, config: OriginConfig, metrics: Metrics,
                 threat: Callable[[], int] = lambda: 0) -> None:
        self.maintenance = False
        self.threat = threat
        self.pool = OriginPool(config)
        self.gate = OriginGate(config.max_concurrency, config.queue_size, config.queue_timeout,
                               budget_slots(config.max_concurrency, config.headroom))
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown)
        self.metrics = metrics
        self.refreshes: dict[str, int] = dict.fromkeys(("started", "deferred", "dropped"), 0)
        m = metrics
        gate = self.gate
        m.gauge("kalkan_origin_active", "Origin requests in flight.", lambda: gate.active)
        m.labeled_gauge("kalkan_origin_slots_in_use", "Origin slots in use, by what for: miss,"
                        " refresh (background) or pass (not cacheable).", "kind",
                        lambda: dict(gate.in_use))
        m.gauge("kalkan_origin_cache_budget", "Origin slots misses and refreshes may hold "
                "together now (origin.headroom of them under attack, all of them in peace).",
                lambda: gate.budget if gate.capped else gate.limit)
        m.gauge("kalkan_origin_open_slots_in_use", "Origin slots held by clients not known to "
                "be good (new, or behaving badly): at most origin.headroom of them, at all "
                "times; the rest is kept for known readers.", lambda: gate.open_in_use)
        m.counter("kalkan_gate_displaced_total", "Queued origin requests of clients not known "
                  "to be good shed (503) to make room for a better-standing client's.",
                  lambda: gate.displaced)
        m.gauge("kalkan_gate_queue_depth", "Requests waiting for an origin slot.",
                lambda: gate.queued)
        m.counter("kalkan_gate_client_left_total", "Requests dropped from the origin gate's "
                  "queue because their client left (they never reached the origin).",
                  lambda: gate.left)
        m.labeled_counter("kalkan_origin_refreshes_total", "Background refreshes under the "
                          "headroom budget: started, deferred (no slot: the stale copy is "
                          "served meanwhile), dropped (never got a slot).", "outcome",
                          lambda: dict(self.refreshes))
        m.gauge("kalkan_origin_breaker_open", "1 while the origin circuit breaker is open.",
                lambda: 0 if self.breaker.state == Breaker.CLOSED else 1)

    def follow_threat(self) -> bool:
        """Cap the gate while under attack; whether it is capped now."""
        capped = self.threat() >= CAP_FROM_LEVEL
        self.gate.set_capped(capped)
        return capped

    def tick(self) -> tuple[int, int, int]:
        """Once a second: follow the threat level, drop queued requests whose client left (at
        once, not when their turn comes); the gate's pressure for the attack mode."""
        self.follow_threat()
        self.gate.purge()
        return self.gate.pressure()

    def strained(self) -> bool:
        """Under attack and the cache's origin load near its budget: serve stale, not fetch."""
        return self.follow_threat() and self.gate.strained

    async def ask(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                  body: BodyStream | None, chunked: bool, mono: float, kind: str = MISS,
                  gone: Callable[[], bool] | None = None, out: Noted | None = None,
                  slot_held: bool = False, standing: Callable[[], int] | None = None,
                  admit: Callable[[], bool] | None = None,
                  ) -> tuple[UpstreamResponse, float]:
        """One exchange; returns the response (head read, body to stream) and its latency in
        ms. Raises BreakerOpen, GateFull or OriginError, all counted; ConnectionGone when
        `gone` said the client left while the request waited for a slot (`out` then notes it,
        as it does when the waiting request is cancelled). `slot_held`: the caller already holds a
        slot of this kind (a deferred refresh given one by the gate). `standing`: who asks, on
        the gate's scale (origin.KNOWN ...), asked only when the gate is contended. `admit`:
        asked once the slot is granted (the wait may have been long, and the threat level may
        have risen meanwhile); False when the request was answered otherwise (a challenge):
        Rejudged is raised and the slot goes to the next waiter."""
        metrics = self.metrics
        gate = self.gate
        if self.maintenance or not self.breaker.allow(mono):
            if slot_held:
                gate.release(kind)
            if self.maintenance:
                metrics.origin_requests["maintenance"] += 1
                raise Maintenance("maintenance mode: the origin is not asked")
            metrics.origin_requests["breaker_open"] += 1
            raise BreakerOpen("origin circuit breaker is open")
        open_slot = False
        if not slot_held:
            self.follow_threat()
            try:
                open_slot = await gate.acquire(kind, gone, standing)
            except GateFull:
                metrics.gate_shed += 1
                metrics.origin_requests["shed"] += 1
                raise
            except ClientLeft:
                metrics.origin_requests["client_left"] += 1
                if out is not None:
                    client_left(out)
                raise ConnectionGone() from None  # nobody to answer: the connection ends
            except asyncio.CancelledError:
                if out is not None:  # a client's request: its connection or stream went away
                    metrics.origin_requests["client_left"] += 1
                    client_left(out)
                raise
        if admit is not None and not admit():
            gate.release(kind, open_slot)
            metrics.origin_requests["rejudged"] += 1
            raise Rejudged()
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
            gate.release(kind, open_slot)
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
        self.followers: dict[str, int] = {}  # readers waiting on another's fetch, per key
        self.uncacheable: dict[str, float] = {}
        self.background: set[asyncio.Task[None]] = set()

    def lead(self, key: str) -> asyncio.Future[Entry | None]:
        fut: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self.inflight[key] = fut
        return fut

    def done(self, key: str, fut: asyncio.Future[Entry | None], stored: Entry | None) -> None:
        self.inflight.pop(key, None)
        fut.set_result(stored)

    async def follow(self, key: str, fut: asyncio.Future[Entry | None]) -> Entry | None:
        """Wait on another reader's fetch of `key` (its leader keeps its place in the gate's
        queue for us even if its own reader leaves)."""
        followers = self.followers
        followers[key] = followers.get(key, 0) + 1
        try:
            return await asyncio.shield(fut)
        finally:
            n = followers.get(key, 0) - 1
            if n > 0:
                followers[key] = n
            else:
                followers.pop(key, None)

    def followed(self, key: str) -> bool:
        return key in self.followers

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
