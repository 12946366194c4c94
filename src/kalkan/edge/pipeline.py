"""The request path, one straight line like Varnish's, each state a method:
recv → hash → lookup → hit | stale | miss → fetch → store → deliver.

`respond_now` is the hot path: a fresh hit answered synchronously from precomputed bytes, no await.
Everything else goes through `respond`, which may wait for the origin (behind coalescing, the gate
and the breaker) and falls back to stale copies when the origin cannot answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from kalkan.config import Config
from kalkan.defense.facts import CHALLENGE_PREFIX, RequestFacts
from kalkan.edge import cache_policy as policy
from kalkan.edge.cache_key import QueryPolicy, cache_key, normalize_target
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
from kalkan.edge.request import Request
from kalkan.edge.responses import SERVER_NAME, error_response, http_date, serialize_head
from kalkan.edge.server import Clock, ConnectionGone
from kalkan.edge.store import Entry, Store
from kalkan.observe.access_log import AccessLog
from kalkan.observe.metrics import Metrics

if TYPE_CHECKING:
    from kalkan.defense.engine import Defense, Verdict
    from kalkan.edge.server import HttpConnection

log = logging.getLogger("kalkan.pipeline")

_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
_STALE_ON_STATUS = frozenset({500, 502, 503, 504})
_OVERLOAD_STATUS = frozenset({502, 503, 504})
_HOP_BY_HOP = frozenset(name.encode() for name in policy.HOP_BY_HOP)
# Request fields the edge manages itself when it fetches for the cache.
_DROP_ON_CACHE_FETCH = frozenset({b"if-none-match", b"if-modified-since", b"if-match",
                                  b"if-unmodified-since", b"if-range", b"range",
                                  b"accept-encoding"})
# Never forwarded from a client: the framing the edge redoes itself, the Host it canonicalizes,
# and fields an origin or a framework may believe about the client address, the URL or the
# method (a client setting X-Original-URL or X-HTTP-Method-Override would reach routes and
# methods the edge never saw, and its answer could be cached under another URL).
_DROP_UPSTREAM = _HOP_BY_HOP | {
    b"content-length", b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-forwarded-port", b"x-forwarded-server", b"x-forwarded-prefix", b"forwarded",
    b"x-real-ip", b"true-client-ip", b"x-client-ip", b"x-cluster-client-ip", b"cf-connecting-ip",
    b"fastly-client-ip", b"x-original-url", b"x-rewrite-url", b"x-original-host", b"x-host",
    b"x-http-method-override", b"x-http-method", b"x-method-override",
}
_DROP_DOWNSTREAM = _HOP_BY_HOP | {b"x-cache", b"age"}
_UNCACHEABLE_MEMORY = 30.0   # seconds a key that was not storable skips coalescing ("hit-for-pass")
_VIA = (b"Via", b"1.1 kalkan")


# Remembered request byte strings, bounded in count and bytes; cleared every tick when over.
_REPLAY_MEMO = 2048
_REPLAY_BYTES = 4 * 1024 * 1024


class _Replay:
    """What a remembered request meant: its cache key, HEAD or not, session cookie, log part,
    and the parsed request itself (for the defence, which decides per client)."""

    __slots__ = ("key", "head", "session", "log", "request")

    def __init__(self, key: str, head: bool, session: bool, log: str, request: Request) -> None:
        self.key = key
        self.head = head
        self.session = session
        self.log = log
        self.request = request


_STANDING_WINDOW = 0.25   # seconds a per-connection verdict on identical bytes is reused


class _Standing:
    """The defence's verdict on one connection's last replayed bytes, reused for a moment."""

    __slots__ = ("data", "until", "facts", "refusal", "status", "decision", "pending")

    def __init__(self, data: bytes, until: float, facts: RequestFacts, refusal: bytes | None,
                 status: int, decision: str) -> None:
        self.data = data
        self.until = until
        self.facts = facts
        self.refusal = refusal
        self.status = status
        self.decision = decision
        self.pending = 0


class Outcome:
    """What happened to one request, for the access log and metrics."""

    __slots__ = ("status", "size", "cache", "origin_ms")

    def __init__(self) -> None:
        self.status = 0
        self.size = 0
        self.cache = "MISS"
        self.origin_ms: float | None = None


class Pipeline:
    """The request path and the shared state it walks through (store, origin, counters)."""

    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.metrics = Metrics()
        self.access_log = AccessLog(config.access_log.path)
        cc = config.cache
        self.cache_enabled = cc.enabled
        self.store = Store(cc.memory_bytes, cc.dir if cc.enabled else None)
        self.query_policy = QueryPolicy.from_mapping(cc.query)
        self.origin = OriginPool(config.origin)
        self.gate = OriginGate(config.origin.max_concurrency, config.origin.queue_size,
                               config.origin.queue_timeout)
        self.breaker = Breaker(config.origin.breaker_failures, config.origin.breaker_cooldown)
        self.inflight: dict[str, asyncio.Future[Entry | None]] = {}
        self.uncacheable: dict[str, float] = {}
        self._key_prefixes: dict[tuple[str, str], str] = {}
        self._replays: dict[bytes, _Replay] = {}
        self._replay_bytes = 0
        self._background: set[asyncio.Task[None]] = set()
        self._last_flush = 0.0
        self.defense: Defense | None = None
        if config.defense.enabled:
            from kalkan.defense.engine import Defense  # late: the edge runs without it too

            self.defense = Defense(config.defense, config.state_dir, self.metrics)
        self._tarpitted = 0
        session = tuple(c.encode() for c in cc.session_cookies)
        self._session_cookies = session
        m = self.metrics
        m.gauge("kalkan_cache_bytes", "Bytes held by the cache store.", lambda: self.store.bytes)
        m.gauge("kalkan_cache_objects", "Responses held by the cache store.",
                lambda: self.store.objects)
        m.gauge("kalkan_origin_active", "Origin requests in flight.", lambda: self.gate.active)
        m.gauge("kalkan_gate_queue_depth", "Requests waiting for an origin slot.",
                lambda: self.gate.queued)
        m.gauge("kalkan_origin_breaker_open", "1 while the origin circuit breaker is open.",
                lambda: 0 if self.breaker.state == Breaker.CLOSED else 1)

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self) -> int:
        return self.store.load() if self.cache_enabled else 0

    def tick(self) -> None:
        """Once per sweep: flush the log about once a second and forget old pass markers."""
        now = self.clock.now
        if now - self._last_flush >= 1.0:
            self._last_flush = now
            self.access_log.flush()
            if len(self._replays) >= _REPLAY_MEMO or self._replay_bytes > _REPLAY_BYTES:
                self.forget_replays()  # a flood of unique URLs must not pin memory or time
            if self.uncacheable:
                for key in [k for k, until in self.uncacheable.items() if until < now]:
                    del self.uncacheable[key]
            if self.defense is not None:
                m = self.metrics
                failed = sum(m.origin_requests[k] for k in ("error", "timeout", "5xx", "shed",
                                                            "breaker_open"))
                self.defense.tick(now, self.gate.active, self.gate.queued, self.gate.limit,
                                  m.origin_latency.count, m.origin_latency.total, failed)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self.defense is not None:
            self.defense.close()
        self.origin.close()
        self.store.flush()
        self.store.close()
        self.access_log.close()

    # -- recv + hash ----------------------------------------------------------------------------
    def _key(self, req: Request) -> str:
        prefix = self._key_prefixes.get((req.host, req.scheme))
        if prefix is None:
            prefix = cache_key("GET", req.host, "/", scheme=req.scheme)[:-1]
            if len(self._key_prefixes) > 1024:
                self._key_prefixes.clear()  # attackers can send any Host: keep this memo bounded
            self._key_prefixes[(req.host, req.scheme)] = prefix
        if not req.query and "%" not in req.path:
            target = req.path
        else:
            target = normalize_target(req.path, req.query, self.query_policy)
        req.cache_target = target
        req.key = key = prefix + target
        return key

    # -- the hot path ---------------------------------------------------------------------------
    def respond_now(self, req: Request) -> tuple[bytes, ...] | None:
        """A refusal or a fresh hit, answered without awaiting, as buffers for one vectored
        write; None: the slow path."""
        if self.defense is not None:
            verdict = self.defense.check(req, req.scheme)
            req.checked = True
            if verdict is not None and verdict.action != "allow":
                if verdict.action == "tarpit":
                    req.verdict = verdict
                    return None
                return self._refuse_now(req, verdict)
        if req.method not in _CACHEABLE_METHODS or not self.cache_enabled or req.conditional:
            return None
        variants = self.store.get(req.key or self._key(req))
        if variants is None:
            return None
        entry = variants[0] if len(variants) == 1 and not variants[0].vary else \
            self._pick_variant(variants, req)
        now = self.clock.now
        if entry is None or now >= entry.fresh_until or (entry.micro and self._credentialed(req)):
            return None
        if req.version == "1.1" and req.keep_alive:
            data = entry.wire(now, req.method == "HEAD")
        else:
            data = (entry.render(now, b"HIT", head_only=req.method == "HEAD",
                                 connection=b"keep-alive" if req.keep_alive else b"close"),)
        self.metrics.requests[(entry.status, "HIT")] += 1
        if self.access_log.enabled:
            self.access_log.write(now, req.client, req.method, req.host, req.path, entry.status,
                                  _wire_len(data), "HIT", None,
                                  (time.monotonic() - req.started) * 1000.0, req.decision)
        return data

    def _refuse_now(self, req: Request, verdict: Verdict) -> tuple[bytes, ...]:
        """The bytes of a block or challenge answer, counted and logged."""
        assert self.defense is not None
        req.verdict = verdict
        data = self.defense.render(verdict, req.keep_alive, req.method == "HEAD")
        status = verdict.response.status if verdict.response is not None else 403
        self.metrics.requests[(status, "BYPASS")] += 1
        if self.access_log.enabled:
            self.access_log.write(self.clock.now, req.client, req.method, req.host, req.path,
                                  status, len(data), "BYPASS", None,
                                  (time.monotonic() - req.started) * 1000.0, req.decision)
        return (data,)

    # -- replay: identical request bytes, answered without parsing ---------------------------
    def remember(self, data: bytes, req: Request) -> None:
        """After a hot-path hit: if `data` was exactly this one request, memoize what it meant.

        Identical bytes parse identically, so a later identical read on an idle connection can
        skip the parser (a flood of one URL is exactly that). Only plain keep-alive HTTP/1.1
        GET/HEAD without a body qualify; anything that depends on more than the bytes (a client
        address taken from X-Forwarded-For) does not.
        """
        if (len(self._replays) >= _REPLAY_MEMO or self._replay_bytes > _REPLAY_BYTES
                or req.version != "1.1" or not req.keep_alive
                or req.client != req.peer or not data.endswith(b"\r\n\r\n")
                or data.count(b"\r\n\r\n") != 1 or len(data) > 4096):
            return
        self._replays[data] = _Replay(req.key, req.method == "HEAD", self._credentialed(req),
                                      AccessLog.fragment(req.method, req.host, req.path), req)
        # The bytes, and about as much again for the parsed request kept with them.
        self._replay_bytes += 2 * len(data) + 512

    def replay(self, data: bytes, conn: HttpConnection) -> bool:
        """Answer `data` if it is a remembered request whose entry is still fresh; else False."""
        memo = self._replays.get(data)
        if memo is None:
            return False
        decision = ""
        if self.defense is not None:
            standing = conn.standing
            if standing is not None and standing.data == data and \
                    self.clock.mono < standing.until:
                # The same client sent the same bytes a moment ago: same verdict, counted later.
                standing.pending += 1
                if standing.refusal is not None:
                    conn.send_now((standing.refusal,))
                    self.metrics.requests[(standing.status, "BYPASS")] += 1
                    if self.access_log.enabled:
                        self.access_log.write_fragment(
                            self.clock.now, conn.client, memo.log, standing.status,
                            len(standing.refusal), "BYPASS", None, 0.0, standing.decision)
                    return True
                decision = standing.decision
            else:
                return self._replay_decided(data, memo, conn)
        variants = self.store.get(memo.key)
        if variants is None or len(variants) != 1:
            return False
        entry = variants[0]
        now = self.clock.now
        if entry.vary or now >= entry.fresh_until or (entry.micro and memo.session):
            return False
        started = time.monotonic()
        out = entry.wire(now, memo.head)
        conn.send_now(out)
        self.metrics.requests[(entry.status, "HIT")] += 1
        if self.access_log.enabled:
            self.access_log.write_fragment(now, conn.client, memo.log, entry.status,
                                           _wire_len(out),
                                           "HIT", None, (time.monotonic() - started) * 1000.0,
                                           decision)
        return True

    def _replay_decided(self, data: bytes, memo: _Replay, conn: HttpConnection) -> bool:
        """Remembered bytes from a client the defence has not judged for them lately: judge
        (counting what the standing verdict let through meanwhile) and remember the verdict
        for a moment, so a flood of identical requests costs one decision per window."""
        assert self.defense is not None
        standing = conn.standing
        if standing is not None and standing.pending:
            self.defense.count(standing.facts, standing.pending)
        conn.standing = None
        req = memo.request.clone_for(conn.client, conn.peer)
        req.started = time.monotonic()
        out = self.respond_now(req)
        if out is None:
            return False  # the slow path takes it from the parser (and decides again)
        conn.send_now(out)
        if req.facts is not None:
            refused = req.verdict is not None
            status = int(out[0][9:12]) if refused else 200
            conn.standing = _Standing(data, self.clock.mono + _STANDING_WINDOW, req.facts,
                                      out[0] if refused else None, status, req.decision)
        return True

    def forget_replays(self) -> None:
        self._replays.clear()
        self._replay_bytes = 0

    def _pick_variant(self, variants: list[Entry], req: Request) -> Entry | None:
        headers = None
        for entry in variants:
            if not entry.vary:
                return entry
            if headers is None:
                headers = _vary_view(req)
            if policy.vary_signature(entry.vary, headers) == entry.vary_sig:
                return entry
        return None

    # -- the slow path --------------------------------------------------------------------------
    async def respond(self, req: Request, conn: HttpConnection) -> None:
        out = Outcome()
        try:
            if self.defense is not None and await self._defend(req, conn, out):
                return
            if req.method in _CACHEABLE_METHODS and self.cache_enabled and req.path != "*":
                await self._lookup(req, conn, out)
            else:
                await self._pass(req, conn, out)
        finally:
            self._observe(req, out)

    async def _defend(self, req: Request, conn: HttpConnection, out: Outcome) -> bool:
        """The decide step for requests that did not come through respond_now (bodies, the
        tarpit); True when the request was answered here."""
        assert self.defense is not None
        verdict = req.verdict
        if not req.checked:
            if req.body is not None and req.path.startswith(CHALLENGE_PREFIX):
                req.prefetched_body = await _read_small(req, 8192)
            verdict = self.defense.check(req, req.scheme)
            req.checked = True
        if verdict is None or verdict.action == "allow":
            return False
        if verdict.action == "tarpit":
            await self._tarpit(req, conn, verdict, out)
            return True
        self._send_verdict(req, conn, verdict, out)
        return True

    def _send_verdict(self, req: Request, conn: HttpConnection, verdict: Verdict,
                      out: Outcome) -> None:
        """Write a refusal or challenge answer and note it for the log."""
        assert self.defense is not None
        # A body we did not read ends the connection: say so instead of promising keep-alive.
        if req.body is not None and not req.body.done:
            req.keep_alive = False
        data = self.defense.render(verdict, req.keep_alive, req.method == "HEAD")
        out.status = verdict.response.status if verdict.response is not None else 403
        out.size, out.cache = len(data), "BYPASS"
        conn.write(data)

    async def _tarpit(self, req: Request, conn: HttpConnection, verdict: Verdict,
                      out: Outcome) -> None:
        """Hold the request a while, then a 429 and close: slow for the bot, cheap for us."""
        assert self.defense is not None
        req.keep_alive = False
        if self._tarpitted < self.config.defense.max_tarpitted:
            self._tarpitted += 1
            try:
                await asyncio.sleep(self.config.defense.tarpit_delay)
            finally:
                self._tarpitted -= 1
        data = self.defense.render(verdict, False, req.method == "HEAD")
        out.status, out.size, out.cache = 429, len(data), "BYPASS"
        conn.write(data)

    async def _challenge_before_origin(self, req: Request, conn: HttpConnection,
                                       out: Outcome) -> bool:
        """Under attack, a client without a pass proves itself before it costs the origin."""
        if self.defense is None:
            return False
        verdict = self.defense.before_origin(req, req.scheme)
        if verdict is None or verdict.action == "allow":
            return False
        self._send_verdict(req, conn, verdict, out)
        return True

    async def _lookup(self, req: Request, conn: HttpConnection, out: Outcome) -> None:
        key = req.key or self._key(req)
        variants = self.store.get(key)
        entry = self._pick_variant(variants, req) if variants else None
        if self._credentialed(req) and (entry is None or entry.micro or
                                        self._reuse(entry, req) is not policy.Reuse.FRESH):
            # A logged-in reader (session cookie, Authorization) gets its own page from the
            # origin: never stored, never coalesced with others, never a stale anonymous copy
            # (microcached pages are the anonymous view). Only fresh shared copies (assets,
            # pages the origin marked cacheable) are served to it from the cache.
            return await self._pass(req, conn, out)
        if entry is not None:
            match self._reuse(entry, req):
                case policy.Reuse.FRESH:
                    return await self._deliver(req, conn, entry, "HIT", out)
                case policy.Reuse.STALE_WHILE_REVALIDATE:
                    self._revalidate_in_background(req, key, entry)
                    self.metrics.stale_served["while_revalidate"] += 1
                    return await self._deliver(req, conn, entry, "STALE", out)
                case policy.Reuse.UNSERVABLE:  # only-if-cached and nothing usable
                    return self._error(req, conn, out, 504, "Not in the cache.", [])
                case _:
                    pass  # REVALIDATE: fetch below, with this entry's validators
        if entry is not None and self.defense is not None and self.defense.attack.level \
                and not req.has_pass and self._stale_allowed(entry, req):
            # Under attack an unproven reader gets the stale copy (within grace) rather than a
            # challenge, and the edge refreshes the page itself.
            self._revalidate_in_background(req, key, entry)
            self.metrics.stale_served["attack_mode"] += 1
            return await self._deliver(req, conn, entry, "STALE", out)
        if await self._challenge_before_origin(req, conn, out):
            return
        if self.uncacheable.get(key, 0.0) > self.clock.now:
            # Recently not storable: fetch without making others wait on us ("hit-for-miss").
            await self._fetch(req, conn, key, entry, out)
            return
        waiting = self.inflight.get(key)
        if waiting is not None:
            self.metrics.coalesced += 1
            shared = await asyncio.shield(waiting)
            if shared is not None and self._pick_variant([shared], req) is shared:
                return await self._deliver(req, conn, shared, "HIT", out)
            await self._fetch(req, conn, key, entry, out)
            return
        await self._miss(req, conn, key, entry, out)

    def _reuse(self, entry: Entry, req: Request, origin_failing: bool = False) -> policy.Reuse:
        honor = self.config.cache.honor_request_cache_control
        rules = policy.request_rules(req.header_dict()) if honor else policy.NO_PREFERENCES
        return policy.reuse_decision(entry.age(self.clock.now), entry.lifetime, entry.stale, rules,
                                     origin_failing=origin_failing, grace=self._grace())

    def _grace(self) -> float:
        """The grace period, longer under attack (level n: n + 1 times): readers keep getting
        yesterday's copy while the origin is drowning."""
        level = self.defense.attack.level if self.defense is not None else 0
        return self.config.cache.grace * (1 + level)

    def _stale_allowed(self, entry: Entry, req: Request) -> bool:
        """May this stored entry stand in for an origin that just failed (RFC 5861 + grace)?"""
        return self._reuse(entry, req, origin_failing=True).serves_stored

    async def _miss(self, req: Request, conn: HttpConnection | None, key: str,
                    stale: Entry | None, out: Outcome) -> None:
        """Lead the one origin fetch for this key; others wait on `inflight[key]`."""
        fut: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self.inflight[key] = fut
        stored: Entry | None = None
        try:
            stored = await self._fetch(req, conn, key, stale, out)
        finally:
            self.inflight.pop(key, None)
            fut.set_result(stored)

    def _revalidate_in_background(self, req: Request, key: str, entry: Entry) -> None:
        if key in self.inflight:
            return
        task = asyncio.get_running_loop().create_task(self._miss(req, None, key, entry, Outcome()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- fetch ----------------------------------------------------------------------------------
    async def _fetch(self, req: Request, conn: HttpConnection | None, key: str,
                     stale: Entry | None, out: Outcome) -> Entry | None:
        """Ask the origin (through breaker and gate); store what may be stored; deliver."""
        headers = self._upstream_headers(req, cache_fetch=True)
        if stale is not None:
            if stale.etag is not None:
                headers.append((b"If-None-Match", stale.etag))
            if stale.last_modified is not None:
                headers.append((b"If-Modified-Since", stale.last_modified))
        target = req.cache_target.encode("latin-1")
        try:
            resp = await self._ask_origin("GET", target, headers, None, False, out)
        except (GateFull, OriginError) as exc:
            await self._origin_failed(req, conn, stale, exc, out)
            return None
        try:
            if resp.status in _STALE_ON_STATUS and stale is not None and \
                    self._stale_allowed(stale, req):
                await _discard(resp)
                self.metrics.stale_served["origin_error"] += 1
                if conn is not None:
                    await self._deliver(req, conn, stale, "STALE", out)
                return None
            if resp.status == 304 and stale is not None:
                await _discard(resp)
                if not policy.not_modified_updates_stored(
                        policy.combine_headers(stale.headers),
                        policy.combine_headers(resp.headers)):
                    # The 304 names another representation: ours cannot be refreshed by it.
                    self.store.remove(key)
                    return await self._fetch(req, conn, key, None, out)
                fresh = self._refresh(stale, resp.headers, out)
                if conn is not None:
                    await self._deliver(req, conn, fresh, "REVALIDATED", out)
                return fresh
            try:
                entry = await self._maybe_store(req, key, resp, out)
            except OriginError as exc:
                # The body broke off before anything reached the reader: a 502 or stale copy.
                self.breaker.failure(self.clock.mono)
                self.metrics.origin_requests["body_error"] += 1
                await self._origin_failed(req, conn, stale, exc, out)
                return None
            if entry is not None:
                self.uncacheable.pop(key, None)
                if conn is not None:
                    # The stored copy has no Set-Cookie; the reader it was fetched for gets its own.
                    await self._deliver(req, conn, entry, "MISS", out,
                                        extra=_set_cookie_fields(resp.headers))
                return entry
            if not self._credentialed(req):
                # Only a verdict about the response itself may change how others are served.
                self.uncacheable[key] = self.clock.now + _UNCACHEABLE_MEMORY
            if conn is not None:
                await self._relay(req, conn, resp, out, "MISS")
            else:
                await _discard(resp)
            return None
        finally:
            resp.release()

    async def _ask_origin(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                          req: Request | None, chunked: bool, out: Outcome) -> UpstreamResponse:
        """One origin exchange behind the breaker and the gate, timed and counted."""
        metrics = self.metrics
        if not self.breaker.allow(self.clock.mono):
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
            resp = await self.origin.request(method, target, headers,
                                             req.body if req is not None else None,
                                             chunked=chunked)
        except BadUpstreamRequest:
            metrics.origin_requests["refused_by_edge"] += 1  # our bug, not the origin failing
            raise
        except OriginError as exc:
            self.breaker.failure(self.clock.mono)
            metrics.origin_requests["timeout" if isinstance(exc, OriginTimeout) else "error"] += 1
            raise
        finally:
            self.gate.release()
        elapsed = time.monotonic() - t0
        out.origin_ms = elapsed * 1000.0
        metrics.origin_latency.observe(elapsed)
        if resp.status in _OVERLOAD_STATUS:
            # The origin (or what is in front of it) says it is down or overloaded; a 500 is an
            # answer about one page and must not cut every reader off the origin.
            self.breaker.failure(self.clock.mono)
            metrics.origin_requests["5xx"] += 1
        else:
            self.breaker.success()
            metrics.origin_requests["ok"] += 1
        return resp

    async def _origin_failed(self, req: Request, conn: HttpConnection | None,
                             stale: Entry | None, exc: Exception, out: Outcome) -> None:
        if conn is None:
            return
        reason = "shed" if isinstance(exc, GateFull) else "origin_error"
        if stale is not None and self._stale_allowed(stale, req):
            self.metrics.stale_served[reason] += 1
            return await self._deliver(req, conn, stale, "STALE", out)
        if isinstance(exc, GateFull | BreakerOpen):
            self._error(req, conn, out, 503,
                        "The site is very busy right now. Please try again shortly.",
                        [(b"Retry-After", b"10")])
        elif isinstance(exc, OriginTimeout):
            self._error(req, conn, out, 504, "The site did not answer in time.", [])
        else:
            self._error(req, conn, out, 502, "The site could not be reached.", [])

    def _error(self, req: Request, conn: HttpConnection, out: Outcome, status: int, detail: str,
               extra: list[tuple[bytes, bytes]]) -> None:
        data = error_response(status, detail, self.clock.now, keep_alive=req.keep_alive,
                              extra=extra, head_only=req.method == "HEAD",
                              cache_status=b"ERROR")
        out.status, out.size, out.cache = status, len(data), "ERROR"
        conn.write(data)

    def _refresh(self, entry: Entry, not_modified: list[tuple[bytes, bytes]],
                 out: Outcome) -> Entry:
        """A 304 from the origin: update stored fields and restart the entry's clock."""
        now = self.clock.now
        update = _to_str_pairs(not_modified)
        if not any(k.lower() == "date" for k, _ in update):
            update.append(("Date", http_date(now).decode()))
        merged = policy.merge_304(_to_str_pairs(entry.headers), update)
        entry.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in merged]
        resp_dict = policy.combine_headers(entry.headers)
        lifetime = self._lifetime(entry.status, resp_dict, entry.micro, now) or 0.0
        entry.stale = policy.stale_directives(resp_dict)
        entry.refresh(now, policy.initial_age(resp_dict, now, now), lifetime)
        self.store.touch(entry)
        return entry

    def _lifetime(self, status: int, resp: dict[str, str], micro: bool,
                  response_time: float) -> float | None:
        """Explicit freshness first; microcaching stands in before heuristics for anonymous HTML."""
        if micro:
            return self.config.cache.microcache_ttl
        cc = self.config.cache
        return policy.freshness_lifetime(status, resp, response_time=response_time,
                                         heuristic_fraction=cc.heuristic_fraction,
                                         heuristic_max=cc.heuristic_max)

    def _credentialed(self, req: Request) -> bool:
        """Was the request sent with credentials (Authorization or a session cookie)?"""
        return req.authorization or self._session(req)

    def _session(self, req: Request) -> bool:
        """Does the request carry a logged-in session cookie (cache.session_cookies)?"""
        cookie = req.cookie
        return cookie is not None and any(name in cookie for name in self._session_cookies)

    def _microcache_eligible(self, req: Request, resp_dict: dict[str, str]) -> bool:
        """An anonymous GET of HTML whose response states no freshness of its own."""
        if self.config.cache.microcache_ttl <= 0 or self._credentialed(req):
            return False
        if not resp_dict.get("content-type", "").startswith("text/html"):
            return False
        cc = policy.parse_cache_control(resp_dict.get("cache-control"))
        return "max-age" not in cc and "s-maxage" not in cc and "expires" not in resp_dict

    async def _maybe_store(self, req: Request, key: str, resp: UpstreamResponse,
                           out: Outcome) -> Entry | None:
        """Read a storable response whole (up to the object limit) and put it in the store."""
        resp_dict = policy.combine_headers(resp.headers)
        req_dict = req.header_dict()
        micro = self._microcache_eligible(req, resp_dict)
        ok, _why = policy.storable("GET", resp.status, req_dict, resp_dict, microcache=micro,
                                   session=self._session(req))
        limit = self.config.cache.max_object_bytes
        if not ok or (resp.content_length is not None and resp.content_length > limit):
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await resp.read()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                # Too big after all: hand what we have to the streaming path.
                resp.unread(chunks)
                return None
        now = self.clock.now
        lifetime = self._lifetime(resp.status, resp_dict, micro, now) or 0.0
        strip = {s.encode() for s in policy.headers_to_strip_on_store(resp_dict)}
        strip |= _connection_tokens(resp.headers)
        headers = [(k, v) for k, v in resp.headers
                   if (lk := k.lower()) not in _DROP_DOWNSTREAM and lk != b"content-length"
                   and lk not in strip]
        if resp_dict.get("date") is None:
            headers.insert(0, (b"Date", http_date(now)))
        headers.append((b"Content-Length", str(size).encode()))
        headers.append(_VIA)
        vary = policy.vary_fields(resp_dict) or ()
        sig = policy.vary_signature(vary, _vary_view(req)) if vary else ()
        entry = Entry(key, resp.status, headers, b"".join(chunks), response_time=now,
                      initial_age=policy.initial_age(resp_dict, now, now), lifetime=lifetime,
                      stale=policy.stale_directives(resp_dict), vary=tuple(vary),
                      vary_sig=tuple(sig), micro=micro)
        self.store.put(entry)
        return entry

    # -- pass (no cache) ------------------------------------------------------------------------
    async def _pass(self, req: Request, conn: HttpConnection, out: Outcome,
                    target: str | None = None) -> None:
        """Forward a request the cache does not handle; unsafe methods invalidate on success."""
        out.cache = "BYPASS"
        if await self._challenge_before_origin(req, conn, out):
            return
        headers = self._upstream_headers(req, cache_fetch=False)
        raw_target = target.encode("latin-1") if target is not None else req.target
        try:
            resp = await self._ask_origin(req.method, raw_target, headers, req, req.chunked, out)
        except (GateFull, OriginError) as exc:
            return await self._origin_failed(req, conn, None, exc, out)
        if not _forwarded_as_framed(req):
            resp.keep_alive = False  # the origin may still wait for body bytes: never reuse
        try:
            if req.method not in _CACHEABLE_METHODS and 200 <= resp.status < 300:
                # Only a change the origin confirmed evicts: anyone can send a POST.
                self._invalidate(req, resp)
            await self._relay(req, conn, resp, out, "BYPASS")
        finally:
            resp.release()

    def _invalidate(self, req: Request, resp: UpstreamResponse) -> None:
        targets = policy.invalidated_targets(req.method, resp.status, req.target.decode("latin-1"),
                                             policy.combine_headers(resp.headers), req.host)
        for t in targets:
            path, _, query = t.partition("?")
            self.store.remove(cache_key("GET", req.host,
                                        normalize_target(path, query, self.query_policy),
                                        scheme=req.scheme))

    # -- deliver --------------------------------------------------------------------------------
    async def _deliver(self, req: Request, conn: HttpConnection, entry: Entry, cache: str,
                       out: Outcome, extra: bytes = b"") -> None:
        """Answer from a stored entry: 304 for a matching conditional, head only for HEAD."""
        now = self.clock.now
        status = entry.status
        if req.conditional and entry.status == 200 and policy.client_conditional_matches(
                req.header_dict(), policy.combine_headers(entry.headers)):
            status = 304
        connection = None if req.version == "1.1" and req.keep_alive else (
            b"keep-alive" if req.keep_alive else b"close")
        data = entry.render(now, cache.encode(), head_only=req.method == "HEAD",
                            connection=connection, status=status, extra=extra)
        out.status, out.size, out.cache = status, len(data), cache
        conn.write(data)
        await conn.drain()

    async def _relay(self, req: Request, conn: HttpConnection, resp: UpstreamResponse,
                     out: Outcome, cache: str) -> None:
        """Stream an origin response to the client with back-pressure, re-framing as needed."""
        head_only = req.method == "HEAD" or resp.status in (204, 304) or resp.status < 200
        drop = _DROP_DOWNSTREAM | _connection_tokens(resp.headers)
        headers = [(k, v) for k, v in resp.headers if k.lower() not in drop]
        length = resp.content_length
        chunked = False
        keep_alive = req.keep_alive
        if not head_only and length is None:
            if req.version == "1.1":
                chunked = True
                headers.append((b"Transfer-Encoding", b"chunked"))
            else:
                keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        if length is not None and req.method == "HEAD" and resp.status == 200:
            pass  # the origin's Content-Length describes the GET body; keep it for HEAD
        headers.append(_VIA)
        headers.append((b"X-Cache", cache.encode()))
        if not keep_alive:
            headers.append((b"Connection", b"close"))
            req.keep_alive = False
        elif req.version != "1.1":
            headers.append((b"Connection", b"keep-alive"))
        if not any(k.lower() == b"date" for k, _ in headers):
            headers.append((b"Date", http_date(self.clock.now)))
        head = serialize_head(resp.status, headers)
        conn.write(head)
        size = len(head)
        out.status, out.size, out.cache = resp.status, size, cache
        if not head_only:
            while True:
                try:
                    chunk = await resp.read()
                except OriginError:
                    # The head is out: the only honest signal left is a connection closed
                    # before the end of the message (no last chunk, a short length).
                    self.metrics.origin_requests["body_error"] += 1
                    out.size = size
                    raise ConnectionGone() from None
                if not chunk:
                    break
                conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                size += len(chunk)
                await conn.drain()
            if chunked:
                conn.write(b"0\r\n\r\n")
        else:
            await _discard(resp)
        out.size = size

    # -- headers --------------------------------------------------------------------------------
    def _upstream_headers(self, req: Request, cache_fetch: bool) -> list[tuple[bytes, bytes]]:
        # Fields the client's Connection header named were removed when it was parsed.
        drop = _DROP_UPSTREAM | _DROP_ON_CACHE_FETCH if cache_fetch else _DROP_UPSTREAM
        headers = [(k, v) for k, v in req.headers if k.lower() not in drop]
        if cache_fetch:
            ae = req.header(b"accept-encoding")
            # One normalized Accept-Encoding, so Vary: Accept-Encoding yields two variants, not 200.
            if ae is not None and b"gzip" in ae.lower():
                headers.append((b"Accept-Encoding", b"gzip"))
        # The Host the cache key was built from, never the raw one: `NEWS.TEST.` and
        # `news.test:80` must not make the origin redirect and have that cached for everyone.
        headers.append((b"Host", req.host.encode("latin-1") if req.host_fields
                        else self.origin.host_header.encode()))  # HTTP/1.0 without Host
        prior = req.header(b"x-forwarded-for")
        trusted = prior is not None and req.client != req.peer
        xff = prior + b", " + req.peer.encode() if trusted else req.client.encode()
        headers.append((b"X-Forwarded-For", xff))
        headers.append((b"X-Real-IP", req.client.encode()))
        headers.append((b"X-Forwarded-Proto", req.scheme.encode()))
        headers.append(_VIA)
        if req.body is not None and not cache_fetch:
            # A cache fetch is a plain GET: a body a client attached to its GET is not sent.
            headers.append((b"Transfer-Encoding", b"chunked") if req.chunked
                           else (b"Content-Length", str(req.content_length).encode()))
        return headers

    # -- observe --------------------------------------------------------------------------------
    def _observe(self, req: Request, out: Outcome) -> None:
        self.metrics.requests[(out.status, out.cache)] += 1
        if self.access_log.enabled:
            self.access_log.write(self.clock.now, req.client, req.method, req.host, req.path,
                                  out.status, out.size, out.cache, out.origin_ms,
                                  (time.monotonic() - req.started) * 1000.0
                                  if req.started else 0.0, req.decision)

    def log_refusal(self, client: str, status: int, detail: str) -> None:
        self.metrics.requests[(status, "BYPASS")] += 1
        if self.access_log.enabled:
            self.access_log.write(self.clock.now, client, "-", "-", "-", status, 0, "BYPASS",
                                  None, 0.0, f"refused: {detail}")

    def log_error(self, req: Request, exc: BaseException) -> None:
        log.error("internal error on %s %s: %r", req.method, req.path, exc, exc_info=exc)

    # -- purge ----------------------------------------------------------------------------------
    def purge(self, url: str | None) -> int:
        """Remove one URL (all its variants) or, with None, everything; returns entries removed."""
        if url is None:
            return self.store.clear()
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError(f"purge needs a full URL like http://host/path, got {url!r}")
        target = normalize_target(parts.path or "/", parts.query, self.query_policy)
        return self.store.remove(cache_key("GET", parts.netloc, target, scheme=parts.scheme))


def _wire_len(buffers: tuple[bytes, ...]) -> int:
    return len(buffers[0]) if len(buffers) == 1 else sum(map(len, buffers))


def _forwarded_as_framed(req: Request) -> bool:
    """Was the request's body sent upstream whole, exactly as its framing declared?

    Only then may the origin connection carry another request: any gap (a message the parser
    ended early, a body the client broke off) would make the origin read the next request as
    the rest of this body.
    """
    body = req.body
    if body is None:
        return True
    if not body.done or body.error is not None:
        return False
    return req.chunked or body.received == req.content_length


def _set_cookie_fields(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The Set-Cookie fields of an origin response, serialized (for the reader it was for)."""
    return b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers if k.lower() == b"set-cookie")


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for k, v in headers:
        if k.lower() == b"connection":
            tokens.update(t.strip().lower() for t in v.split(b","))
    return frozenset(tokens)


def _vary_view(req: Request) -> dict[str, str]:
    """Request headers as Vary sees them, with Accept-Encoding normalized as it is upstream."""
    view = req.header_dict()
    ae = view.get("accept-encoding")
    if ae is not None:
        view["accept-encoding"] = "gzip" if "gzip" in ae.lower() else ""
    return view


def _to_str_pairs(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


async def _read_small(req: Request, limit: int) -> bytes:
    """The whole (small) body of a request to the edge's own endpoints."""
    assert req.body is not None
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await req.body.read()
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:limit]


async def _discard(resp: UpstreamResponse) -> None:
    """Read and drop a body we will not use; a broken one just costs its connection."""
    try:
        while await resp.read():
            pass
    except OriginError:
        resp.keep_alive = False


__all__ = ["SERVER_NAME", "Pipeline"]
