"""The way to the origin: a keep-alive connection pool, the concurrency gate, the circuit breaker.

`OriginGate` guarantees the origin never sees more than N requests at once (a bounded FIFO queue
with a timeout behind it; under attack the cache's own misses and refreshes get only a share of
the N, `origin.headroom`); `Breaker` fails fast after consecutive failures and lets one probe
through after a cool-down; `OriginPool` speaks HTTP/1.1 to the origin and streams bodies both ways
with back-pressure.

Everything the origin can do wrong ends as an `OriginError` (or `OriginTimeout`): a connection it
closed while idle leaves the pool at once, a response head larger than `MAX_HEAD_BYTES` or with
more than `MAX_HEAD_FIELDS` fields is refused before it is buffered, and a broken body (bad
chunk, short, stalled) surfaces from `UpstreamResponse.read()`. Nothing with CR, LF or NUL in it is
ever written upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable

import httptools

from kalkan.config import OriginConfig, parse_origin_url
from kalkan.defense.verdict import KNOWN, SUSPECT, UNKNOWN
from kalkan.edge.chunks import ChunkQueue
from kalkan.edge.flow import FlowControl
from kalkan.edge.request import BodyStream


class OriginError(Exception):
    """The origin could not be reached or broke off its response."""


class OriginTimeout(OriginError):
    """The origin did not answer in time."""


class BadUpstreamRequest(OriginError):
    """The request we were about to send upstream is malformed (CR, LF or NUL in a field, a bad
    method or target): a bug upstream of this module, refused here so it can never smuggle."""


class GateFull(Exception):
    """The origin gate's queue was full or the wait for a slot timed out: the request is shed."""


class BreakerOpen(OriginError):
    """The circuit breaker is open: the origin is failing, so we do not ask it."""


# What an origin slot is used for. Misses and refreshes are the cache's own work, which the
# headroom budget bounds under attack; passes (logged-in readers, forms, admin) are what only
# the origin can answer, and may use the rest of the slots.
MISS, REFRESH, PASS = "miss", "refresh", "pass"
KINDS = (MISS, REFRESH, PASS)

# Under attack the cache flow serves stale copies rather than fetching once the cache's load
# (misses and refreshes in flight or queued) reaches this share of the budget: the origin is
# then about to be saturated by the cache alone.
STRETCH_AT = 0.8


# Under attack a reader's miss comes before a refresh (the reader waits; the page has a stale
# copy), except that refreshes may always hold this share of the budget (at least one slot):
# otherwise a steady stream of misses would leave the hottest pages stale for the whole attack.
REFRESH_FLOOR = 0.25


def refresh_floor(budget: int) -> int:
    """Budget slots a refresh may take even while misses wait: a quarter, at least one."""
    return max(1, math.floor(budget * REFRESH_FLOOR + 1e-9))


def budget_slots(limit: int, share: float) -> int:
    """Slots misses and refreshes may hold together under attack: `share` of `limit`, rounded
    down (10 at 0.7 is 7), never fewer than one (nothing could be fetched at all)."""
    return max(1, min(limit, math.floor(limit * share + 1e-9)))


def near_budget(load: int, budget: int) -> bool:
    """Is the cache's origin load (in flight + queued) close enough to its budget that stale
    copies should stand in for fetches? From STRETCH_AT of the budget, rounded up (6 of 7)."""
    return load >= math.ceil(budget * STRETCH_AT - 1e-9)


class ClientLeft(Exception):
    """The client of a request waiting for an origin slot is gone: dropped from the queue before
    it cost the origin anything."""


# Who is asking, as the defence's `origin_standing` tells the gate (KNOWN, UNKNOWN, SUSPECT).
# Clients the edge does not know to be good (new ones, and those whose behaviour scores bad)
# share `origin.headroom` of the slots at all times, so a flood never holds the whole origin,
# not even in the seconds before it is recognised; the rest is kept for known readers. When the
# queue is full, a better-standing arrival takes the place of the newest worst-standing waiter.
STANDINGS = (KNOWN, UNKNOWN, SUSPECT)


class _Waiter:
    """One request in the gate's queue: its kind, who asks, its place (FIFO within a
    standing) and how to tell its client left."""

    __slots__ = ("fut", "kind", "standing", "seq", "gone")

    def __init__(self, fut: asyncio.Future[None], kind: str, standing: int, seq: int,
                 gone: Callable[[], bool] | None) -> None:
        self.fut = fut
        self.kind = kind
        self.standing = standing
        self.seq = seq
        self.gone = gone


class OriginGate:
    """At most `limit` requests in flight; a bounded queue of waiters, each with a timeout.

    Two shares of the slots, both `budget` of them (`origin.headroom` of `limit`):
    - at all times, requests from clients not known to be good (`UNKNOWN`, `SUSPECT`) hold at
      most `budget` slots together; known readers may use them all. Waiters are granted by
      standing first, then in arrival order; a full queue sheds its newest worst-standing waiter
      for a better-standing arrival. Standing is asked (a callable: it costs a behaviour score)
      only when a request cannot simply take a slot.
    - while `capped` (the edge is under attack), misses and refreshes together hold at most
      `budget` slots; passes may use the others.
    A waiter whose client left (its `gone` says so) is dropped when its turn comes or at the
    next `purge`, never sent. Refreshes never wait here while capped: `on_free`, if set, is
    called when slots free up, and the deferred refreshes take those `try_take` gives them
    (budget slots nobody waits for, and up to `refresh_floor` even while misses wait).
    """

    def __init__(self, limit: int, queue_size: int, queue_timeout: float,
                 budget: int | None = None) -> None:
        self.limit = limit
        self.budget = limit if budget is None else budget
        self.refresh_floor = refresh_floor(self.budget)
        self.capped = False
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.active = 0
        self.max_active = 0
        self.shed = 0
        self.displaced = 0  # waiters shed for a better-standing arrival
        self.left = 0  # waiters dropped because their client left
        self.in_use = dict.fromkeys(KINDS, 0)
        self.open_in_use = 0  # slots held by clients not known to be good
        self.max_open = 0
        self.max_cache = 0  # most misses + refreshes in flight at once (while capped)
        self.on_free: Callable[[], None] | None = None
        self._seq = 0
        # Per standing: misses (and refreshes at peace), then passes.
        self._waiters: tuple[tuple[deque[_Waiter], deque[_Waiter]], ...] = tuple(
            (deque(), deque()) for _ in STANDINGS)

    @property
    def queued(self) -> int:
        return sum(len(cache) + len(passes) for cache, passes in self._waiters)

    def _cache_waiting(self) -> int:
        return sum(len(cache) for cache, _ in self._waiters)

    @property
    def cache_load(self) -> int:
        """Misses and refreshes in flight or waiting."""
        return self.in_use[MISS] + self.in_use[REFRESH] + self._cache_waiting()

    @property
    def strained(self) -> bool:
        """Capped, and the cache's load is near its budget (see `near_budget`)."""
        return self.capped and near_budget(self.cache_load, self.budget)

    def pressure(self) -> tuple[int, int, int]:
        """In flight, waiting, and the limit that applies to them now, for the attack mode.
        Under attack that is the cache's share and its budget: a cache held at its budget with
        readers queued is still a saturated origin gate (read against the whole limit it
        would look calm, the threat level would fall and the cap would lift itself)."""
        if self.capped:
            return (self.in_use[MISS] + self.in_use[REFRESH], self._cache_waiting(),
                    self.budget)
        return self.active, self.queued, self.limit

    def admits(self, kind: str, standing: int = KNOWN) -> bool:
        """Would a slot of this kind be given now to this standing (nobody of its class and
        of the same or a better standing waiting first)?"""
        if self.active >= self.limit:
            return False
        if standing != KNOWN and self.open_in_use >= self.budget:
            return False
        waiting = 1 if kind == PASS else 0
        if kind != PASS:
            if not self._cache_room():
                return False
            if kind == REFRESH and self.capped and self.in_use[REFRESH] < self.refresh_floor:
                return True  # the refreshes' floor: before queued misses
        return not any(self._waiters[s][waiting] for s in range(standing + 1))

    def _cache_room(self) -> bool:
        return not self.capped or self.in_use[MISS] + self.in_use[REFRESH] < self.budget

    def set_capped(self, capped: bool) -> None:
        if capped != self.capped:
            self.capped = capped
            self._grant()

    async def acquire(self, kind: str = MISS, gone: Callable[[], bool] | None = None,
                      standing: Callable[[], int] | None = None) -> bool:
        """Wait for a slot; True when it counts among the not-known-good clients' (pass that to
        `release`). `standing` None: a request of the edge's own (a refresh) or of a client
        the gate need not judge; it is treated as known."""
        who = KNOWN
        if standing is not None:
            who = UNKNOWN
            if not self.admits(kind, UNKNOWN):
                who = standing()  # contention: now it matters who asks
        if self.admits(kind, who):
            self._take(kind, who != KNOWN)
            return who != KNOWN
        if self.queued >= self.queue_size and not self._displace(who):
            self.shed += 1
            raise GateFull("origin queue full")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        waiter = _Waiter(fut, kind, who, self._seq, gone)
        self._queue_of(waiter).append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.queue_timeout)
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return who != KNOWN  # the slot arrived just as we gave up: keep it
            self._discard(waiter)
            if fut.done() and not fut.cancelled():
                exc = fut.exception()
                if isinstance(exc, GateFull):
                    raise exc from None
                raise ClientLeft("the client left while waiting for the origin") from None
            fut.cancel()
            self.shed += 1
            raise GateFull("waited too long for the origin") from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(kind, who != KNOWN)
            else:
                if not fut.done():
                    fut.cancel()
                    if gone is not None:  # a client's request: its connection went away
                        self.left += 1
                self._discard(waiter)
            raise
        return who != KNOWN

    def _queue_of(self, waiter: _Waiter) -> deque[_Waiter]:
        return self._waiters[waiter.standing][1 if waiter.kind == PASS else 0]

    def _displace(self, who: int) -> bool:
        """Queue full: shed the newest waiter of the worst standing below `who`'s, if any, to
        make room for it."""
        for worse in range(SUSPECT, who, -1):
            cache, passes = self._waiters[worse]
            if not cache and not passes:
                continue
            if not passes or (cache and cache[-1].seq > passes[-1].seq):
                victim = cache.pop()
            else:
                victim = passes.pop()
            if not victim.fut.done():
                victim.fut.set_exception(GateFull("shed for a better-standing client"))
            self.shed += 1
            self.displaced += 1
            return True
        return False

    def try_take(self, kind: str) -> bool:
        """A slot now or not at all (a deferred refresh never queues)."""
        if self.admits(kind):
            self._take(kind, False)
            return True
        return False

    def purge(self) -> int:
        """Drop the waiters whose client left; how many were dropped."""
        dropped = 0
        for queues in self._waiters:
            for queue in queues:
                for waiter in [w for w in queue if w.gone is not None and w.gone()]:
                    queue.remove(waiter)
                    self._drop(waiter)
                    dropped += 1
        return dropped

    def _drop(self, waiter: _Waiter) -> None:
        if not waiter.fut.done():
            waiter.fut.set_exception(ClientLeft("the client left while waiting for the origin"))
        self.left += 1

    def _discard(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._queue_of(waiter).remove(waiter)

    def _take(self, kind: str, open_slot: bool) -> None:
        self.active += 1
        self.in_use[kind] += 1
        if open_slot:
            self.open_in_use += 1
            if self.open_in_use > self.max_open:
                self.max_open = self.open_in_use
        if self.active > self.max_active:
            self.max_active = self.active
        if kind != PASS and self.capped:
            cache = self.in_use[MISS] + self.in_use[REFRESH]
            if cache > self.max_cache:
                self.max_cache = cache

    def release(self, kind: str = MISS, open_slot: bool = False) -> None:
        self.active -= 1
        self.in_use[kind] -= 1
        if open_slot:
            self.open_in_use -= 1
        self._grant()

    def _grant(self) -> None:
        """Give free slots to the deferred refreshes below their floor, then to the admissible
        waiters (best standing first, oldest first within it), then to the deferred refreshes
        again."""
        offer = self.on_free if self.capped else None
        if offer is not None and self._cache_waiting():
            offer()
        while self.active < self.limit:
            head: _Waiter | None = None
            for who, (cache, passes) in enumerate(self._waiters):
                if who != KNOWN and self.open_in_use >= self.budget:
                    break
                while cache and (cache[0].fut.done() or _left(cache[0])):
                    self._skip(cache.popleft())
                while passes and (passes[0].fut.done() or _left(passes[0])):
                    self._skip(passes.popleft())
                if cache and self._cache_room():
                    head = cache[0]
                if passes and (head is None or passes[0].seq < head.seq):
                    head = passes[0]
                if head is not None:
                    break
            if head is None:
                break
            self._queue_of(head).popleft()
            self._take(head.kind, head.standing != KNOWN)
            head.fut.set_result(None)
        if (offer is not None and not self._cache_waiting() and self.active < self.limit
                and self._cache_room()):
            offer()

    def _skip(self, waiter: _Waiter) -> None:
        """A waiter at the head that cannot take a slot: it gave up, or its client left."""
        if not waiter.fut.done():
            self._drop(waiter)


def _left(waiter: _Waiter) -> bool:
    return waiter.gone is not None and waiter.gone()


class Breaker:
    """Closed → (N consecutive failures) → open for `cooldown` → half-open: one probe decides."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, failures: int, cooldown: float) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.failures = 0
        self.state = self.CLOSED
        self.opened_at = 0.0
        self.opens = 0
        self._probe_out = False

    def allow(self, now: float) -> bool:
        if self.state == self.CLOSED:
            return True
        if self.state == self.OPEN and now - self.opened_at >= self.cooldown:
            self.state = self.HALF_OPEN
            self._probe_out = False
        if self.state == self.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.state = self.CLOSED
        self._probe_out = False

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == self.HALF_OPEN or self.failures >= self.threshold:
            if self.state != self.OPEN:
                self.opens += 1
            self.state = self.OPEN
            self.opened_at = now
            self._probe_out = False


class UpstreamResponse:
    """Status and headers of an origin response; the body is read chunk by chunk with `read()`."""

    __slots__ = ("status", "headers", "_conn", "body", "keep_alive", "_released", "chunked",
                 "content_length")

    def __init__(self, conn: UpstreamConnection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        flow = conn.flow
        self.body = ChunkQueue(lambda: flow.pause_reading("body"),
                               lambda: flow.resume_reading("body"),
                               _UPSTREAM_HIGH_WATER, _UPSTREAM_LOW_WATER)
        self.keep_alive = True
        self._released = False
        self.chunked = False
        self.content_length: int | None = None

    async def read(self) -> bytes:
        """Next body chunk; b"" at the end. Raises OriginError if the origin broke off."""
        body = self.body
        while True:
            chunk = body.take()
            if chunk is not None:
                return chunk
            try:
                await asyncio.wait_for(body.waiter(), self._conn.pool.config.timeout)
            except TimeoutError:
                raise OriginTimeout("origin stalled while sending the body") from None

    def unread(self, chunks: list[bytes]) -> None:
        """Put already-read chunks back in front, for a caller that changed its mind."""
        self.body.unread(chunks)

    def _finish(self, error: Exception | None = None) -> None:
        """The body ended (with `error` if it broke off); the first end is the one that counts."""
        if not self.body.ended:
            if error is None:
                self.body.finish()
            else:
                self.body.fail(error)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def release(self) -> None:
        """Give the connection back to the pool if the body was read to the end, else close it."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if self.body.done and self.body.error is None and self.keep_alive:
            conn.pool._give_back(conn)
        else:
            conn.close()


_UPSTREAM_HIGH_WATER = 512 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_UPSTREAM_LOW_WATER = 128 * 1024

# Idle keep-alive connections older than this are closed instead of reused. Origins close theirs
# after a few seconds (Apache: 5 s, nginx: 75 s, many hosted PHP stacks: 5-15 s); reusing one the
# origin is closing at that very moment loses the request, so we give up first. The default of
# `origin.idle_timeout`.
IDLE_TIMEOUT = 4.0

# Limits on an origin response head (all interim 1xx heads before it included). nginx refuses
# heads larger than proxy_buffer_size (4-8 KiB) with 502; Varnish allows 32 KiB and 64 fields. A
# WordPress page with a long Content-Security-Policy, Link preloads and a dozen Set-Cookie fields
# stays well under 64 KiB and 100 fields; a head beyond that is broken or hostile, and buffering it
# whole would let one origin response take hundreds of MB.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEAD_FIELDS = 100

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")  # no space, no control byte
_BAD_VALUE = re.compile(rb"[\r\n\x00]")


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the origin; parses one response at a time."""

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.head_ready: asyncio.Future[None] | None = None
        self.closed = False
        self.head_only = False
        self.flow = FlowControl()
        self.used = 0
        self.idle = False  # in the pool, waiting for a request
        self.idle_since = 0.0
        self.desynced = False  # the origin sent more than one response: never reuse
        self.answered = False  # a byte of the response to the current request has arrived
        self._in_head = False  # the final response head is not complete yet
        self._head_fed = 0  # bytes fed to the parser since the request, while in the head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.flow.transport = self.transport

    def eof_received(self) -> bool | None:
        # The origin closed its side; an idle connection must not be handed out meanwhile.
        self.pool._evict(self)
        return None  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._evict(self)
        err = OriginError("origin closed the connection")
        if self.head_ready is not None and not self.head_ready.done():
            self.head_ready.set_exception(err)
        resp = self.response
        if resp is not None and not resp.body.ended:
            head_done = self.head_ready is not None and self.head_ready.done()
            if head_done and not resp.chunked and resp.content_length is None:
                resp._finish()  # a close-delimited body ends with the connection
            else:
                resp._finish(err)
        self.flow.closed()

    def data_received(self, data: bytes) -> None:
        if self.idle or self.head_ready is None:
            # Bytes nobody asked for: the origin framed its last response wrongly (or speaks
            # first). This connection can no longer line responses up with requests.
            self.close()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised (our head limits) in HttpParserCallbackError.
            cause = exc.__context__
            self._fail(cause if isinstance(cause, OriginError)
                       else OriginError(f"bad response from origin: {exc}"))
            return
        except httptools.HttpParserUpgrade:
            # 101 or an upgrade we never asked for (Upgrade is not forwarded): not HTTP any more.
            self._fail(OriginError("origin switched protocols"))
            return
        if self._in_head:
            # Every byte fed since the request belongs to a head while the final head is not
            # complete (a response begins right after the request; bytes before it desync), so
            # counting whole reads is exact and httptools never holds more than one read beyond.
            self._head_fed += len(data)
            if self._head_fed > MAX_HEAD_BYTES:
                self._fail(OriginError("origin response head too large"))
                return
        if self.desynced:
            self.close()

    def _fail(self, err: Exception) -> None:
        self._in_head = False
        if self.head_ready is not None and not self.head_ready.done():
            self.head_ready.set_exception(err)
        if self.response is not None:
            self.response._finish(err)
        self.close()

    # parser callbacks
    def on_message_begin(self) -> None:
        if self.response is not None and self.response.body.ended:
            # A second response to one request: the origin's framing is off; drop the rest.
            self.desynced = True
            return
        if self.response is None:
            self.response = UpstreamResponse(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.response
        if self.desynced or resp is None:
            return
        if len(resp.headers) >= MAX_HEAD_FIELDS:
            raise OriginError("origin response head has too many fields")
        resp.headers.append((name, value))

    def on_headers_complete(self) -> None:
        resp = self.response
        if self.desynced or resp is None:
            return
        resp.status = self.parser.get_status_code()
        if 100 <= resp.status < 200:
            resp.headers.clear()  # an interim response: its fields are not the final ones
            return  # keep waiting for the final one
        self._in_head = False
        resp.keep_alive = self.parser.should_keep_alive()
        for k, v in resp.headers:
            lk = k.lower()
            if lk == b"transfer-encoding":
                resp.chunked = True
            elif lk == b"content-length" and v.isdigit():
                resp.content_length = int(v)
        if self.head_ready is not None and not self.head_ready.done():
            self.head_ready.set_result(None)
        if self.head_only:
            # llhttp cannot be told the request was HEAD; the body it would expect never comes.
            resp.keep_alive = False
            resp._finish()
            self.close()

    def on_body(self, body: bytes) -> None:
        if self.response is not None and not self.head_only and not self.desynced:
            self.response.body.push(body)

    def on_message_complete(self) -> None:
        resp = self.response
        if resp is None or self.desynced or 100 <= resp.status < 200:
            return
        resp._finish()

    # flow control
    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    async def drain(self) -> None:
        await self.flow.drain()
        if self.closed:
            raise OriginError("origin closed the connection while we sent the body")

    @property
    def usable(self) -> bool:
        """Open, in step with the origin, and not closing."""
        return not self.closed and not self.desynced and self.transport is not None and \
            not self.transport.is_closing()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.flow.closed()
            self.transport.close()


class OriginPool:
    """HTTP/1.1 to one origin over reused keep-alive connections."""

    def __init__(self, config: OriginConfig, idle_timeout: float | None = None) -> None:
        self.config = config
        scheme, self.host, self.port = parse_origin_url(config.url)
        self.ssl = ssl.create_default_context() if scheme == "https" else None
        self.host_header = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
        self.idle_timeout = config.idle_timeout if idle_timeout is None else idle_timeout
        self._idle: deque[UpstreamConnection] = deque()  # oldest left, most recently used right
        self.connects = 0
        self.retries = 0  # requests sent again on a new connection after a reused one died
        self.evicted = 0  # idle connections dropped because the origin closed them

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port,
                                       ssl=self.ssl),
                self.config.connect_timeout)
        except TimeoutError:
            raise OriginTimeout("timed out connecting to the origin") from None
        except OSError as exc:
            raise OriginError(f"cannot connect to the origin: {exc.strerror or exc}") from None
        self.connects += 1
        return conn

    def _give_back(self, conn: UpstreamConnection) -> None:
        if not conn.usable or len(self._idle) >= self.config.idle_connections:
            conn.close()
            return
        conn.response = None
        conn.head_ready = None
        conn.idle = True
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self._expire(conn.idle_since)

    def _evict(self, conn: UpstreamConnection) -> None:
        """The origin closed (or is closing) an idle connection: out of the pool at once."""
        if conn.idle:
            conn.idle = False
            self.evicted += 1
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)

    def _expire(self, now: float) -> None:
        """Close idle connections the origin may be about to close (the oldest are leftmost)."""
        while self._idle and now - self._idle[0].idle_since > self.idle_timeout:
            conn = self._idle.popleft()
            conn.idle = False
            conn.close()

    def _take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection that is still worth trying, if any."""
        self._expire(time.monotonic())
        while self._idle:
            conn = self._idle.pop()
            conn.idle = False
            if conn.usable:
                return conn
            conn.close()
        return None

    async def request(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: BodyStream | None = None, *, chunked: bool = False) -> UpstreamResponse:
        """Send a request and wait for the response head; the body then streams via `read()`.

        A reused idle connection may have been closed by the origin while we wrote to it. When
        that happens before any response byte, for an idempotent request without a body, the
        request is sent once more on a newly connected connection (never on another idle one,
        which may be just as dead). A timeout is not retried: the origin may be working on it.
        """
        head = _serialize_head(method, target, headers)
        conn = self._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        try:
            return await self._exchange(conn, method, head, body, chunked)
        except OriginError as exc:
            conn.close()
            if not (reused and not conn.answered and body is None and method in _IDEMPOTENT
                    and not isinstance(exc, OriginTimeout)):
                raise
        except BaseException:
            conn.close()  # e.g. the client's body broke off: this half-sent request is dead
            raise
        self.retries += 1
        conn = await self._connect()
        try:
            return await self._exchange(conn, method, head, None, chunked)
        except BaseException:
            conn.close()
            raise

    async def _exchange(self, conn: UpstreamConnection, method: str, head: bytes,
                        body: BodyStream | None, chunked: bool) -> UpstreamResponse:
        if not conn.usable or conn.transport is None:
            raise OriginError("idle origin connection was closed")
        conn.used += 1
        conn.idle = False
        conn.answered = False
        conn._in_head = True
        conn._head_fed = 0
        conn.head_only = method == "HEAD"
        conn.head_ready = ready = asyncio.get_running_loop().create_future()
        conn.transport.write(head)
        try:
            if body is not None:
                await _send_body(conn, body, chunked)
            await self._await_head(conn, ready)
        finally:
            if not ready.done():
                # Given up before the head came (the client's body broke off, cancelled): an
                # error the closing connection sets later would never be read by anyone.
                ready.cancel()
        if conn.response is None:  # cannot happen: the head resolved only with a response
            raise OriginError("origin response lost")
        return conn.response

    async def _await_head(self, conn: UpstreamConnection, fut: Awaitable[None]) -> None:
        try:
            await asyncio.wait_for(fut, self.config.timeout)
        except TimeoutError:
            conn.close()
            raise OriginTimeout("the origin did not answer in time") from None

    def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            conn.idle = False
            conn.close()


def _serialize_head(method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request head as sent upstream; refuses anything that could end a line early.

    The parser in front already refuses such requests; this is the last gate before the origin's
    socket, so that no bug in between can split one request into two.
    """
    if not _METHOD.fullmatch(method):
        raise BadUpstreamRequest("refusing to send a malformed method upstream")
    if not _TARGET.fullmatch(target):
        raise BadUpstreamRequest("refusing to send a malformed request target upstream")
    parts = [b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), target)]
    for k, v in headers:
        if not _TOKEN.fullmatch(k) or _BAD_VALUE.search(v):
            raise BadUpstreamRequest("refusing to send a header field with CR, LF or NUL upstream"
                                     " (or a malformed field name)")
        parts.append(b"%s: %s\r\n" % (k, v))
    parts.append(b"\r\n")
    return b"".join(parts)


async def _send_body(conn: UpstreamConnection, body: BodyStream, chunked: bool) -> None:
    while True:
        chunk = await body.read()
        if not chunk:
            break
        if conn.transport is None or conn.closed:
            raise OriginError("origin closed the connection while we sent the body")
        conn.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        await conn.drain()
    if chunked and conn.transport is not None and not conn.closed:
        conn.transport.write(b"0\r\n\r\n")
