"""The request path, one straight line like Varnish's: decide → hash → lookup → serve | fetch →
store → deliver. This module is the driver: the cache's decisions are pure functions in
`cache_flow`, the origin exchange is `fetch`, writing answers is `deliver`, identical-bytes
floods are `replay`, and every outcome is recorded by `observe.record`.

`respond_now` is the hot path: a refusal or a fresh hit answered synchronously from precomputed
bytes, no await. Everything else goes through `respond`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from kalkan.config import Config
from kalkan.defense.facts import CHALLENGE_PREFIX
from kalkan.defense.null import NullDefense
from kalkan.defense.verdict import ALLOWED, Action, Verdict
from kalkan.edge import cache_flow as flow
from kalkan.edge import cache_policy as policy
from kalkan.edge.body_files import BodyFiles
from kalkan.edge.cache_flow import RequestView, Step
from kalkan.edge.cache_key import QueryPolicy, cache_key, normalize_target
from kalkan.edge.clock import Clock
from kalkan.edge.deliver import Outcome, Responder
from kalkan.edge.fetch import Misses, OriginClient, Rejudged, failure_status
from kalkan.edge.fill import Filler, judged_again
from kalkan.edge.forward import forwarded_as_framed, upstream_headers, vary_view
from kalkan.edge.origin import PASS, GateFull, OriginError, UpstreamResponse
from kalkan.edge.replay import ReplayMemo, wire_len
from kalkan.edge.request import Request
from kalkan.edge.shared_dir import SharedDirectory
from kalkan.edge.store import Store
from kalkan.memo import Memo
from kalkan.observe.access_log import AccessLog
from kalkan.observe.metrics import Metrics
from kalkan.observe.pseudonym import log_key
from kalkan.observe.record import Recorder
from kalkan.pages import Pages

if TYPE_CHECKING:
    from kalkan.defense.engine import Defense

log = logging.getLogger("kalkan.pipeline")

# The connection an answer goes to: an HttpConnection, or an HTTP/2 stream that offers the same
# writing methods (edge/h2_stream.py). Any, not a class: this module is compiled (mypyc),
# and compiled code checks a parameter's declared class at run time.
Conn = Any

_CACHEABLE_METHODS: Final = frozenset({"GET", "HEAD"})


class Pipeline:
    """The request path and the parts it walks through (store, origin, defence, recorder)."""

    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.metrics = Metrics()
        logged = config.access_log
        self.access_log = AccessLog(logged.path, log_key(logged.pseudonym_key_file,
                                                         config.state_dir)
                                    if logged.pseudonymize and logged.path else None)
        self.recorder = Recorder(self.metrics, self.access_log)
        cc = config.cache
        self.cache = cc
        self.cache_enabled = cc.enabled
        self.store = Store(cc.memory_bytes, cc.dir if cc.enabled else None)
        self.body_files = BodyFiles(cc.sendfile_bytes)  # hot bodies' files (edge/body_files.py)
        self.shared: SharedDirectory | None = None  # sibling workers' files (shared_dir.share)
        self.query_policy = QueryPolicy.from_mapping(cc.query, always=cc.never_cache_params)
        self.never_cache = flow.NeverCache(cc)
        self.upstream = OriginClient(config.origin, self.metrics,
                                     lambda: self.defense.threat_level)  # (made below)
        self.misses = Misses()
        self.pages = Pages.from_config(config.site)   # reader-facing pages, rendered once
        self.responder = Responder(self.clock, self.metrics, self.pages)
        self._keys: Memo[tuple[str, str, str, str], tuple[str, str]] = Memo(4096)  # see `_key`
        self._last_flush = 0.0
        self.defense: Defense | NullDefense = NullDefense(self.pages)
        self._engine: Defense | None = None  # the same, typed as itself: a native call
        if config.defense.enabled:
            from kalkan.defense.engine import Defense  # late: the edge runs without it too

            self.defense = self._engine = Defense(config.defense, config.state_dir,
                                                  self.metrics, self.pages)
        self.fill = Filler(cc, self.store, self.upstream, self.misses, self.responder,
                           self.metrics, self.clock, lambda: self.defense.threat_level,
                           lambda r: standing(self.defense, r), self._challenged)
        self.replays = ReplayMemo(self.store, self.recorder, self.clock, self.defense,
                                  self.respond_now, self._credentialed,
                                  self._engine is not None, self.body_files)
        self._tarpitted = 0
        self._session_cookies = policy.session_cookie_pattern(cc.session_cookies)
        _cache_gauges(self.metrics, self.store, self.body_files)

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self) -> int:
        return self.store.load() if self.cache_enabled else 0

    def tick(self) -> None:
        """About once a second: flush the log, bound the memos, tell the defence the news."""
        now = self.clock.now
        if now - self._last_flush < 1.0:
            return
        self._last_flush = now
        self.access_log.flush()
        self.replays.tick()
        self.misses.expire(now)
        self.fill.tick()
        active, queued, limit = self.upstream.tick()
        latency = self.metrics.origin_latency
        self.defense.tick(now, active, queued, limit, latency.count, latency.total,
                          self.upstream.failures())

    async def close(self) -> None:
        self.misses.cancel()
        self.defense.close()
        self.upstream.close()
        self.store.flush()
        self.store.close()
        self.body_files.close()
        self.access_log.close()

    # -- the connection's interface -------------------------------------------------------------
    def replay(self, data: bytes, conn: Conn) -> bool:
        return self.replays.replay(data, conn)

    def forget_replays(self) -> None:
        self.replays.forget()

    def log_refusal(self, client: str, status: int, detail: str) -> None:
        self.recorder.refused(self.clock.now, client, status, detail)

    def log_error(self, req: Request, exc: BaseException) -> None:
        log.error("internal error on %s %s: %r", req.method, req.path, exc, exc_info=exc)

    # -- recv + hash ----------------------------------------------------------------------------
    def _key(self, req: Request) -> str:
        # Readers ask for the same pages: each (site, target)'s key is made once and kept (a
        # Memo: attackers send any Host and URL), its hash with it.
        asked = (req.host, req.scheme, req.path, req.query)
        known = self._keys.table.get(asked)
        if known is None:
            prefix = cache_key("GET", req.host, "/", scheme=req.scheme)[:-1]
            if not req.query and "%" not in req.path:
                target = req.path
            else:
                target = normalize_target(req.path, req.query, self.query_policy)
            known = self._keys.put(asked, (prefix + target, target))
        req.key, req.cache_target = known
        return known[0]

    def _credentialed(self, req: Request) -> bool:
        """Was the request sent with credentials (Authorization or a session cookie)?"""
        return req.authorization or self._session(req)

    def _session(self, req: Request) -> bool:
        cookie = req.cookie
        return cookie is not None and self._session_cookies.search(cookie) is not None

    def _view(self, req: Request) -> RequestView:
        rules = policy.request_rules(req.header_dict()) \
            if self.cache.honor_request_cache_control else policy.NO_PREFERENCES
        session = self._session(req)
        headers = vary_view(req)
        return RequestView(credentialed=session or req.authorization, session=session,
                           headers=headers, rules=rules, has_pass=req.has_pass,
                           never_cache=self.never_cache.reason(req.path, req.query, headers))

    # -- the hot path ---------------------------------------------------------------------------
    def respond_now(self, req: Request, read: bytes | None = None) -> tuple[bytes, ...] | None:
        """A refusal or a fresh hit, answered without awaiting, as buffers for one vectored
        write; None: the slow path. (A fresh hit is cache_flow's SERVE step, inlined.) `read`:
        the connection's read this request came in, offered to the replay memo when answered
        here (one call from the connection instead of two)."""
        engine = self._engine
        if engine is not None:
            verdict = req.verdict = engine.check_request(
                req, req.method, req.host, req.path, req.query, req.client, req.client_ip,
                req.user_agent, req.headers, req.cookie, req.referer)
            req.decision = verdict.decision
            req.has_pass = verdict.has_pass
            if verdict.action is Action.TARPIT:
                return None
            if verdict.action is not Action.ALLOW:
                refusal = self.responder.verdicts.render(verdict, self.clock.now,
                                                         req.keep_alive, req.method == "HEAD")
                self.recorder.answer(self.clock.now, req, verdict.status, len(refusal),
                                     "BYPASS", None, req.decision)
                if read is not None:
                    self.replays.remember(read, req)
                return (refusal,)
        if req.method not in _CACHEABLE_METHODS or not self.cache_enabled or req.conditional:
            return None
        variants = self.store.get(req.key or self._key(req))
        if variants is None:
            return None
        entry = variants[0] if len(variants) == 1 and not variants[0].vary else \
            flow.pick_variant(variants, vary_view(req))
        now = self.clock.now
        if entry is None or now >= entry.fresh_until or (entry.micro and self._credentialed(req)):
            return None
        if req.version == "1.1" and req.keep_alive:
            data = entry.wire(now, req.method == "HEAD")
            if len(data) == 2:  # not a HEAD: a body to send
                req.body_file = entry.hot_file(self.body_files)
        else:
            data = (entry.render(now, b"HIT", head_only=req.method == "HEAD",
                                 connection=b"keep-alive" if req.keep_alive else b"close"),)
        self.recorder.answer(now, req, entry.status, wire_len(data), "HIT", None, req.decision)
        if entry.status >= 400:
            self.defense.answered(req, entry.status, False)  # a cached 404 to a guessed URL
        if read is not None:
            self.replays.remember(read, req)
        return data

    # -- the slow path --------------------------------------------------------------------------
    async def respond(self, req: Request, conn: Conn) -> None:
        out = Outcome()
        try:
            if await self._defend(req, conn, out):
                return
            if req.method in _CACHEABLE_METHODS and self.cache_enabled and req.path != "*":
                await self._cached(req, conn, out)
            else:
                await self._pass(req, conn, out)
        finally:
            self.recorder.answer(self.clock.now, req, out.status, out.size, out.cache,
                                 out.origin_ms, req.decision, out.reason)
            if out.cache != "BYPASS":  # the defence's own answers tell it nothing new
                self.defense.answered(req, out.status, out.origin_ms is not None)

    async def _defend(self, req: Request, conn: Conn, out: Outcome) -> bool:
        """The decide step for requests that did not come through respond_now (bodies, the
        tarpit); True when the request was answered here."""
        verdict = req.verdict
        if verdict is None:  # not decided on the hot path (a body, or not asked there)
            if req.body is not None and req.path.startswith(CHALLENGE_PREFIX):
                req.prefetched_body = await _read_small(req, 8192)
            verdict = req.verdict = self.defense.check(req)
            req.decision = verdict.decision
            req.has_pass = verdict.has_pass
        if verdict.action is Action.ALLOW:
            return False
        if verdict.action is Action.TARPIT:
            await self._tarpit(req, conn, verdict, out)
        else:
            self.responder.verdict(req, conn, verdict, out)
        return True

    async def _tarpit(self, req: Request, conn: Conn, verdict: Verdict,
                      out: Outcome) -> None:
        """Hold the request a while, then a 429 and close: slow for the bot, cheap for us."""
        req.keep_alive = False
        if self._tarpitted < self.config.defense.max_tarpitted:
            self._tarpitted += 1
            try:
                await asyncio.sleep(self.config.defense.tarpit_delay)
            finally:
                self._tarpitted -= 1
        self.responder.verdict(req, conn, verdict, out)

    def _challenged(self, req: Request, conn: Conn, out: Outcome) -> bool:
        """Under attack, a client without a pass proves itself before it costs the origin."""
        verdict = self.defense.before_origin(req, req.verdict or ALLOWED)
        if verdict.action is Action.ALLOW:
            return False
        req.decision = verdict.decision
        self.responder.verdict(req, conn, verdict, out)
        return True

    async def _cached(self, req: Request, conn: Conn, out: Outcome) -> None:
        """GET/HEAD through the cache: cache_flow.lookup decides, this acts."""
        key = req.key or self._key(req)
        view = self._view(req)
        variants = self.store.get(key)
        entry = flow.pick_variant(variants, view.headers) if variants else None
        entry = entry if self.shared is None else self.shared.find(key, view.headers, entry)
        threat = self.defense.threat_level
        strained = threat > 0 and entry is not None and self.upstream.strained()
        d = flow.lookup(entry, view, self.clock.now, self.cache, threat, strained)
        out.reason = d.reason
        step = d.step
        if step is Step.SERVE and d.entry is not None:
            return await self.responder.entry(req, conn, d.entry, "HIT", out)
        if step is Step.SERVE_STALE and d.entry is not None:
            self.fill.refresh_in_background(req, view, key, d.entry)
            self.metrics.stale_served[d.reason] += 1
            return await self.responder.entry(req, conn, d.entry, "STALE", out)
        if step is Step.UNSERVABLE:
            return self.responder.error(req, conn, out, "timeout", [])  # only-if-cached
        if step is Step.PASS:
            return await self._pass(req, conn, out)
        if step is Step.CHALLENGE_FIRST and self._challenged(req, conn, out):
            return
        if view.credentialed:
            # Its own fetch: nobody waits on a request made with someone's credentials.
            await self.fill.fetch(req, view, conn, key, None, out)
            return
        if self.misses.skip_coalescing(key, self.clock.now):
            # Recently not storable: fetch without making others wait on us ("hit-for-miss").
            await self.fill.fetch(req, view, conn, key, d.entry, out)
            return
        waiting = self.misses.inflight.get(key)
        if waiting is not None:
            self.metrics.coalesced += 1
            shared = await self.misses.follow(key, waiting)
            if shared is not None and flow.pick_variant([shared], view.headers) is shared:
                out.reason = "coalesced"
                return await self.responder.entry(req, conn, shared, "HIT", out)
        await self.fill.lead(req, view, conn, key, d.entry, out)

    # -- pass (no cache) ------------------------------------------------------------------------
    async def _pass(self, req: Request, conn: Conn, out: Outcome) -> None:
        """Forward a request the cache does not handle; unsafe methods invalidate on success."""
        out.cache = "BYPASS"
        if self._challenged(req, conn, out):
            return
        headers = upstream_headers(req, False, self.upstream.pool.host_header)
        try:
            resp, out.origin_ms = await self.upstream.ask(
                req.method, req.target, headers, req.body, req.chunked, self.clock.mono, PASS,
                conn.client_gone, out, standing=lambda: standing(self.defense, req),
                admit=judged_again(self.fill.threat, self._challenged, req, conn, out))
        except (GateFull, OriginError) as exc:
            kind, extra = failure_status(exc)
            return self.responder.error(req, conn, out, kind, extra)
        except Rejudged:  # challenged when its turn came: the threat level rose meanwhile
            return None
        if not forwarded_as_framed(req):
            resp.keep_alive = False  # the origin may still wait for body bytes: never reuse
        try:
            if req.method not in _CACHEABLE_METHODS and 200 <= resp.status < 300:
                # Only a change the origin confirmed evicts: anyone can send a POST.
                _invalidate(self.store, self.query_policy, req, resp)
            await self.responder.relay(req, conn, resp, out, "BYPASS")
        finally:
            resp.release()

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


def _cache_gauges(m: Metrics, store: Store, files: BodyFiles) -> None:
    m.gauge("kalkan_cache_bytes", "Bytes held by the cache store.", lambda: store.bytes)
    m.gauge("kalkan_cache_objects", "Responses in the cache store.", lambda: store.objects)
    m.gauge("kalkan_sendfile_bytes", "Bytes of hot bodies also held in memory-backed files for "
            "sendfile (cache.sendfile_bytes).", lambda: files.bytes)


def _invalidate(store: Store, query_policy: QueryPolicy, req: Request,
                resp: UpstreamResponse) -> None:
    """Evict what a successful unsafe request changed (RFC 9111 §4.4)."""
    targets = policy.invalidated_targets(req.method, resp.status, req.target.decode("latin-1"),
                                         policy.combine_headers(resp.headers), req.host)
    for t in targets:
        path, _, query = t.partition("?")
        store.remove(cache_key("GET", req.host, normalize_target(path, query, query_policy),
                               scheme=req.scheme))


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


def standing(defense: Defense | NullDefense, req: Request) -> int:
    """Who asks the origin, for its gate: known to be good, unknown, or suspect."""
    return defense.origin_standing(req, req.verdict or ALLOWED)


__all__ = ["Pipeline"]
