"""How a miss becomes a stored entry: lead the one origin fetch for a key (others wait on it),
refresh stale entries in the background (under attack only within the headroom budget, hottest
pages first, `refresh.HotRefreshes`), ask the origin with the stale entry's validators, let
`cache_flow.on_response` decide what the answer becomes, store it, deliver it, and fall back to
a stale copy or an error when the origin fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from kalkan.config import CacheConfig
from kalkan.edge import cache_flow as flow
from kalkan.edge import cache_policy as policy
from kalkan.edge.cache_flow import RequestView, Step
from kalkan.edge.clock import Clock
from kalkan.edge.deliver import Outcome, Responder, discard, set_cookie_fields
from kalkan.edge.fetch import Misses, OriginClient, Rejudged, failure_status
from kalkan.edge.forward import upstream_headers
from kalkan.edge.origin import MISS, REFRESH, GateFull, OriginError, UpstreamResponse
from kalkan.edge.refresh import HotRefreshes
from kalkan.edge.request import Request
from kalkan.edge.store import Entry, Store
from kalkan.observe.metrics import Metrics

if TYPE_CHECKING:
    from kalkan.edge.connection import HttpConnection


def judged_again(threat: Callable[[], int],
                 rejudge: Callable[[Request, HttpConnection, Outcome], bool],
                 req: Request, conn: HttpConnection, out: Outcome) -> Callable[[], bool]:
    """For OriginClient.ask's `admit`: once a slot is granted, is the request still let
    through? The defence is asked again only if the threat level rose since now (a flood's
    first requests queue before the level rises; their turn comes when it has)."""
    level = threat()

    def admit() -> bool:
        return threat() <= level or not rejudge(req, conn, out)
    return admit


class Filler:
    """Fills the cache from the origin for the pipeline's GET/HEAD misses."""

    def __init__(self, cache: CacheConfig, store: Store, upstream: OriginClient, misses: Misses,
                 responder: Responder, metrics: Metrics, clock: Clock,
                 threat: Callable[[], int], standing: Callable[[Request], int],
                 rejudge: Callable[[Request, HttpConnection, Outcome], bool]) -> None:
        self.cache = cache
        self.store = store
        self.upstream = upstream
        self.misses = misses
        self.responder = responder
        self.metrics = metrics
        self.clock = clock
        self.threat = threat  # the defence's threat level now (grace grows with it)
        self.standing = standing  # who asks, for the origin gate (defence.origin_standing)
        # Ask the defence again (True: it answered, a challenge): for a reader whose request
        # waited for an origin slot while the threat level rose.
        self.rejudge = rejudge
        # Refreshes waiting for an origin slot under attack; the gate offers them its free slots.
        self.deferred: HotRefreshes[tuple[Request, RequestView]] = \
            HotRefreshes(upstream.gate.queue_timeout)
        upstream.gate.on_free = self.start_deferred

    async def lead(self, req: Request, view: RequestView, conn: HttpConnection | None, key: str,
                    stale: Entry | None, out: Outcome) -> None:
        """Lead the one origin fetch for this key; others wait on it."""
        if key in self.misses.inflight:
            await self.fetch(req, view, conn, key, stale, out)
            return
        fut = self.misses.lead(key)
        stored: Entry | None = None
        try:
            stored = await self.fetch(req, view, conn, key, stale, out)
        finally:
            self.misses.done(key, fut, stored)

    def refresh_in_background(self, req: Request, view: RequestView, key: str,
                               entry: Entry) -> None:
        """A reader was served this stale entry: refresh it. In peace at once (through the
        gate's queue like any fetch); under attack only in a free slot within the headroom
        budget, hottest pages first, else deferred while the stale copy keeps being served."""
        if key in self.misses.inflight:
            return
        if not self.upstream.follow_threat():
            self.misses.spawn(self.lead(req, view, None, key, entry, Outcome()))
            return
        new = self.deferred.want(key, (req, view), self.clock.now)
        self.start_deferred()
        if new and key in self.deferred:
            self.upstream.refreshes["deferred"] += 1

    def start_deferred(self) -> None:
        """Start the hottest deferred refreshes while the gate has slots for them."""
        gate, deferred, now = self.upstream.gate, self.deferred, self.clock.now
        while deferred and gate.admits(REFRESH):
            wanted = deferred.pop_hottest(now)
            if wanted is None:
                break
            req, view = wanted.payload
            key = wanted.key
            if key in self.misses.inflight:
                continue  # a reader's miss is fetching it already
            variants = self.store.get(key)
            current = flow.pick_variant(variants, view.headers) if variants else None
            if current is None or current.fresh_until > now:
                continue  # purged or evicted meanwhile, or already fresh again
            gate.try_take(REFRESH)
            self.upstream.refreshes["started"] += 1
            fut = self.misses.lead(key)
            self.misses.spawn(self._refresh_in_slot(req, view, key, current, fut))
        self.upstream.refreshes["dropped"] = deferred.dropped

    async def _refresh_in_slot(self, req: Request, view: RequestView, key: str, stale: Entry,
                               fut: asyncio.Future[Entry | None]) -> None:
        stored: Entry | None = None
        try:
            stored = await self.fetch(req, view, None, key, stale, Outcome(), slot_held=True)
        finally:
            self.misses.done(key, fut, stored)

    def tick(self) -> None:
        """Once a second: in peace forget deferred refreshes (they run as they come again);
        under attack drop the ones nobody asked for lately and start what fits."""
        if not self.upstream.follow_threat():
            if self.deferred:
                self.deferred.clear()
                self.upstream.refreshes["dropped"] = self.deferred.dropped
            return
        self.deferred.expire(self.clock.now)
        self.start_deferred()

    def close(self) -> None:
        """Start no more deferred refreshes (the edge is stopping)."""
        self.upstream.gate.on_free = None
        self.deferred.clear()

    async def fetch(self, req: Request, view: RequestView, conn: HttpConnection | None,
                     key: str, stale: Entry | None, out: Outcome,
                     slot_held: bool = False) -> Entry | None:
        """Ask the origin (through breaker and gate); cache_flow.on_response decides what its
        answer becomes; deliver it (conn None: a background refresh; `slot_held`: the gate
        already gave it a refresh slot). A reader who leaves while the request waits for a
        slot is dropped from the queue (unless others wait on the same fetch)."""
        headers = upstream_headers(req, True, self.upstream.pool.host_header)
        if stale is not None:
            etag, last_modified = stale.validators()
            if etag is not None:
                headers.append((b"If-None-Match", etag))
            if last_modified is not None:
                headers.append((b"If-Modified-Since", last_modified))
        gone = self._gone(conn, key) if conn is not None else None
        judge = self.standing
        standing = admit = None   # (a refresh: not judged)
        if conn is not None:
            standing = lambda: judge(req)  # noqa: E731
            admit = judged_again(self.threat, self.rejudge, req, conn, out)
        try:
            resp, out.origin_ms = await self.upstream.ask(
                "GET", req.cache_target.encode("latin-1"), headers, None, False, self.clock.mono,
                MISS if conn is not None else REFRESH, gone, out, slot_held, standing, admit)
        except (GateFull, OriginError) as exc:
            await self._origin_failed(req, view, conn, stale, exc, out)
            return None
        except Rejudged:
            return None   # the defence answered it (those waiting on it fetch for themselves)
        try:
            resp_dict = policy.combine_headers(resp.headers)
            now = self.clock.now
            d = flow.on_response(resp.status, resp_dict, stale, view, now, self.cache,
                                 self.threat(), self.upstream.strained())
            if d.step is not Step.STORE:
                out.reason = d.reason  # (a stored miss keeps the lookup's reason: why a miss)
            if d.step is Step.SERVE_STALE and stale is not None:
                await discard(resp)
                self.metrics.stale_served[d.reason] += 1
                if conn is not None:
                    await self.responder.entry(req, conn, stale, "STALE", out)
                return None
            if d.step is Step.REFETCH:
                await discard(resp)
                self.store.remove(key)  # the 304 names another representation than ours
                return await self.fetch(req, view, conn, key, None, out)
            if d.step is Step.REFRESH and stale is not None:
                await discard(resp)
                fresh = flow.revalidated(stale, resp.headers, now, self.cache)
                self.store.put(fresh)
                if conn is not None:
                    await self.responder.entry(req, conn, fresh, "REVALIDATED", out)
                return fresh
            entry = None
            if d.step is Step.STORE:
                try:
                    entry = await self._store(req, view, key, resp, resp_dict, out)
                except OriginError as exc:
                    # The body broke off before anything reached the reader: 502 or stale.
                    self.upstream.body_failed(self.clock.mono)
                    await self._origin_failed(req, view, conn, stale, exc, out)
                    return None
            if entry is not None:
                self.misses.storable(key)
                if conn is not None:
                    # The stored copy has no Set-Cookie; the reader it was fetched for gets its own.
                    await self.responder.entry(req, conn, entry, "MISS", out,
                                               extra=set_cookie_fields(resp.headers))
                return entry
            if d.step is Step.RELAY:
                self.metrics.not_stored[d.reason] += 1
            if not view.credentialed:
                # Only a verdict about the response itself may change how others are served.
                self.misses.not_storable(key, now)
            if conn is not None:
                await self.responder.relay(req, conn, resp, out, "MISS")
            else:
                await discard(resp)
            return None
        finally:
            resp.release()

    def _gone(self, conn: HttpConnection, key: str) -> Callable[[], bool]:
        """Has this reader left, with nobody else waiting on its fetch (a fetch others wait on
        keeps its place in the queue: it is theirs too)?"""
        misses = self.misses

        def gone() -> bool:
            return conn.client_gone() and not misses.followed(key)
        return gone

    async def _store(self, req: Request, view: RequestView, key: str, resp: UpstreamResponse,
                     resp_dict: dict[str, str], out: Outcome) -> Entry | None:
        """Read a storable response whole (up to the object limit) and put it in the store."""
        now = self.clock.now
        plan = flow.plan_store(resp.status, resp_dict, view, now, self.cache, resp.content_length)
        if not plan.ok:
            out.reason = plan.reason
            self.metrics.not_stored[plan.reason] += 1
            return None
        limit = self.cache.max_object_bytes
        chunks: list[bytes] = []
        size = 0
        while chunk := await resp.read():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                resp.unread(chunks)  # too big after all: the streaming path takes it
                out.reason = "too_large"
                self.metrics.not_stored["too_large"] += 1
                return None
        entry = flow.build_entry(key, resp.status, resp.headers, resp_dict, b"".join(chunks),
                                 view, plan, now)
        self.store.put(entry)
        return entry

    async def _origin_failed(self, req: Request, view: RequestView, conn: HttpConnection | None,
                             stale: Entry | None, exc: Exception, out: Outcome) -> None:
        if conn is None:
            return
        if flow.stale_usable(stale, view, self.clock.now, self.cache, self.threat(),
                             self.upstream.strained()) and stale is not None:
            self.metrics.stale_served["shed" if isinstance(exc, GateFull) else "origin_error"] += 1
            return await self.responder.entry(req, conn, stale, "STALE", out)
        kind, extra = failure_status(exc)
        self.responder.error(req, conn, out, kind, extra)
