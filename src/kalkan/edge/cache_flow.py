"""The cache's flow as pure functions (sans-IO): what to do with a request given what is stored,
and what to do with the origin's answer. The pipeline drives these steps and owns all I/O.

`lookup` decides before the origin (serve, serve stale and refresh, fetch, pass, challenge first,
unservable); `on_response` decides once the origin's head is known (store, refresh from a 304,
serve stale, fetch again, relay); `stale_on_failure` decides when the origin could not answer.
`plan_store`, `build_entry` and `revalidated` make the stored entries (immutable: a 304 builds a
new one). Every "not stored" carries its reason, for the log and the metrics.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from kalkan.config import CacheConfig
from kalkan.edge import cache_policy as policy
from kalkan.edge.cache_key import has_dot_segments, normalize_escapes
from kalkan.edge.forward import VIA
from kalkan.edge.httpdate import format_http_date
from kalkan.edge.store import Entry

# Never stored from the origin's answer: the edge's own per-answer fields and its framing (the
# hop-by-hop and Connection-listed ones are in policy.headers_to_strip_on_store).
_NOT_STORED = frozenset({b"x-cache", b"age", b"content-length"})
_STALE_ON_STATUS = frozenset({500, 502, 503, 504})


class Step(Enum):
    SERVE = "serve"                  # a fresh stored response
    SERVE_STALE = "serve_stale"      # a stale one now; refresh it in the background
    FETCH = "fetch"                  # ask the origin, with the stale entry's validators if any
    PASS = "pass"                    # the reader's own request: forward, store and share nothing
    CHALLENGE_FIRST = "challenge"    # under attack: the defence says who may cost the origin
    UNSERVABLE = "unservable"        # only-if-cached and nothing usable: 504
    STORE = "store"                  # read the body whole, store it, deliver it
    REFRESH = "refresh"              # a 304 refreshed the stale entry: deliver the new one
    REFETCH = "refetch"              # a 304 for another representation: fetch without validators
    RELAY = "relay"                  # not storable: stream it to the reader


@dataclass(frozen=True, slots=True)
class RequestView:
    """What the cache flow needs to know about a request (GET or HEAD)."""

    credentialed: bool               # Authorization or a session cookie
    session: bool                    # a session cookie (a stricter store rule than RFC 9111's)
    headers: Mapping[str, str]       # lowercase names, combined values (Vary, conditionals)
    rules: policy.RequestRules = policy.NO_PREFERENCES  # the client's Cache-Control, if honoured
    has_pass: bool = False           # a valid challenge pass
    never_cache: str = ""            # why this request is never cached (NeverCache.reason), or ""


@dataclass(frozen=True, slots=True)
class Decision:
    """One step of the flow, the entry it is about, and why (for the log and the metrics)."""

    step: Step
    entry: Entry | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StorePlan:
    """How an origin response will be stored, or why not (`ok` False, `reason` set)."""

    ok: bool
    reason: str
    micro: bool = False
    lifetime: float = 0.0


class NeverCache:
    """`cache.never_cache_*`: requests the cache never answers or stores (admin, login, cron,
    previews, nonces, cart actions), compiled once. Their reason is what the log shows."""

    def __init__(self, config: CacheConfig) -> None:
        self._paths = tuple((re.compile(fnmatch.translate(g)), f"never_cache:path={g}")
                            for g in config.never_cache_paths)
        # One match for the common answer (no glob matches); the loop only names the one that did.
        self._any_path = re.compile("|".join(fnmatch.translate(g)
                                             for g in config.never_cache_paths) or "(?!)")
        self._params = {normalize_escapes(n): f"never_cache:param={n}"
                        for n in config.never_cache_params}
        self._headers = tuple((name.lower(), f"never_cache:header={name.lower()}")
                              for name in config.never_cache_headers)

    def reason(self, path: str, query: str, headers: Mapping[str, str]) -> str:
        """Why a GET/HEAD of `path?query` with these (lowercase) headers must not be cached, or
        "". The path is matched as the origin will resolve it (escapes decoded, dot-segments
        removed), so `/x/../wp-admin/` is /wp-admin/."""
        if self._paths:
            path = normalize_escapes(path)
            if "//" in path or ("/." in path and has_dot_segments(path)):
                path = _resolved(path)
            if self._any_path.match(path):
                for pattern, why in self._paths:
                    if pattern.match(path):
                        return why
        if query and self._params:
            for member in query.split("&"):
                name = normalize_escapes(member.partition("=")[0])
                found = self._params.get(name)
                if found is not None:
                    return found
        for field_name, why in self._headers:
            if field_name in headers:
                return why
        return ""


def _resolved(path: str) -> str:
    """The path with dot-segments removed and repeated slashes merged, as Apache and nginx
    resolve it before routing."""
    resolved = posixpath.normpath("/" + path.lstrip("/"))
    if path.endswith(("/", "/.", "/..")) and resolved != "/":
        resolved += "/"
    return "/" + resolved.lstrip("/")


def grace(config: CacheConfig, threat: int, strained: bool = False) -> float:
    """The grace period, longer under attack (level n: n + 1 times), and twice that while the
    origin is near its headroom budget (`strained`): readers keep getting yesterday's copy
    while the origin is drowning. The one place grace is stretched."""
    return config.grace * (1 + threat) * (2 if strained else 1)


def reuse(entry: Entry, view: RequestView, now: float, config: CacheConfig, threat: int,
          origin_failing: bool = False, strained: bool = False) -> policy.Reuse:
    return policy.reuse_decision(entry.age(now), entry.lifetime, entry.stale, view.rules,
                                 origin_failing=origin_failing,
                                 grace=grace(config, threat, strained))


def stale_usable(entry: Entry | None, view: RequestView, now: float, config: CacheConfig,
                 threat: int, strained: bool = False) -> bool:
    """May this stored entry stand in for an origin that just failed, or that is near its
    budget under attack (RFC 5861 + grace)? Never for a credentialed reader: the stored copy
    is someone else's view of the page."""
    return entry is not None and not view.credentialed and \
        reuse(entry, view, now, config, threat, origin_failing=True,
              strained=strained).serves_stored


def lookup(entry: Entry | None, view: RequestView, now: float, config: CacheConfig,
           threat: int, strained: bool = False) -> Decision:
    """Before the origin: what a stored variant (or none) means for this request. `strained`:
    under attack, the cache's origin load is near its headroom budget (fetch.OriginClient)."""
    if view.never_cache:
        # Admin, login, cron, previews, nonces: the origin answers each one itself.
        return Decision(Step.PASS, None, view.never_cache)
    if view.credentialed:
        # A logged-in reader gets its own page from the origin: never coalesced or served
        # stale. Only fresh shared copies (assets, pages the origin marked cacheable) come from
        # the cache; microcached pages are the anonymous view, never theirs. With a session
        # cookie the request passes; with Authorization alone it is fetched on its own and
        # stored only if the origin marks the answer for shared caches (public, s-maxage).
        if entry is not None and not entry.micro and \
                reuse(entry, view, now, config, threat) is policy.Reuse.FRESH:
            return Decision(Step.SERVE, entry, "fresh")
        if view.session:
            return Decision(Step.PASS, None, "credentials")
        if threat and not view.has_pass:
            return Decision(Step.CHALLENGE_FIRST, None, "credentials")
        return Decision(Step.FETCH, None, "credentials")
    if entry is not None:
        match reuse(entry, view, now, config, threat):
            case policy.Reuse.FRESH:
                return Decision(Step.SERVE, entry, "fresh")
            case policy.Reuse.STALE_WHILE_REVALIDATE:
                return Decision(Step.SERVE_STALE, entry, "while_revalidate")
            case policy.Reuse.UNSERVABLE:
                return Decision(Step.UNSERVABLE, entry, "only_if_cached")
            case _:
                pass  # REVALIDATE: ask the origin with this entry's validators
        if threat and not view.has_pass and \
                stale_usable(entry, view, now, config, threat, strained):
            # Under attack an unproven reader gets the stale copy (within grace) rather than
            # a challenge, and the edge refreshes the page itself.
            return Decision(Step.SERVE_STALE, entry, "attack_mode")
        if threat and strained and stale_usable(entry, view, now, config, threat, strained):
            # Near the budget everyone does, proven readers too, before the origin saturates:
            # the refresh waits for a slot (hottest pages first) instead of this reader.
            return Decision(Step.SERVE_STALE, entry, "origin_busy")
    if threat:
        # The defence decides who proves itself before costing the origin (pass holders too:
        # a pass does not excuse a client that behaves like a bot).
        return Decision(Step.CHALLENGE_FIRST, entry, "attack_mode" if not view.has_pass else
                        "expired" if entry is not None else "miss")
    return Decision(Step.FETCH, entry, "expired" if entry is not None else "miss")


def on_response(status: int, resp: Mapping[str, str], stale: Entry | None, view: RequestView,
                now: float, config: CacheConfig, threat: int,
                strained: bool = False) -> Decision:
    """Once the origin's head is known: store, refresh, serve stale, fetch again or relay."""
    if status in _STALE_ON_STATUS and stale_usable(stale, view, now, config, threat, strained):
        return Decision(Step.SERVE_STALE, stale, "origin_error")
    if status == 304 and stale is not None:
        if not policy.not_modified_updates_stored(policy.combine_headers(stale.headers), resp):
            return Decision(Step.REFETCH, stale, "304_other_representation")
        return Decision(Step.REFRESH, stale, "revalidated")
    plan = plan_store(status, resp, view, now, config)
    if plan.ok:
        return Decision(Step.STORE, None, plan.reason)
    return Decision(Step.RELAY, None, plan.reason)


def plan_store(status: int, resp: Mapping[str, str], view: RequestView, now: float,
               config: CacheConfig, content_length: int | None = None) -> StorePlan:
    """May this GET response be stored, for how long, and as a microcached copy or not?"""
    micro = microcache_eligible(resp, view, config)
    ok, why = policy.storable("GET", status, view.headers, resp, microcache=micro,
                              session=view.session)
    if not ok:
        return StorePlan(False, why)
    if content_length is not None and content_length > config.max_object_bytes:
        return StorePlan(False, "too_large")
    return StorePlan(True, why, micro, lifetime(status, resp, micro, now, config))


def microcache_eligible(resp: Mapping[str, str], view: RequestView, config: CacheConfig) -> bool:
    """An anonymous GET of HTML whose response states no freshness of its own."""
    if config.microcache_ttl <= 0 or view.credentialed:
        return False
    if not resp.get("content-type", "").startswith("text/html"):
        return False
    cc = policy.parse_cache_control(resp.get("cache-control"))
    return "max-age" not in cc and "s-maxage" not in cc and "expires" not in resp


def lifetime(status: int, resp: Mapping[str, str], micro: bool, response_time: float,
             config: CacheConfig) -> float:
    """Explicit freshness first; microcaching stands in before heuristics for anonymous HTML."""
    if micro:
        return config.microcache_ttl
    return policy.freshness_lifetime(status, resp, response_time=response_time,
                                     heuristic_fraction=config.heuristic_fraction,
                                     heuristic_max=config.heuristic_max) or 0.0


def build_entry(key: str, status: int, raw: list[tuple[bytes, bytes]], resp: Mapping[str, str],
                body: bytes, view: RequestView, plan: StorePlan, now: float) -> Entry:
    """The stored form of an origin response: fields a shared cache must not keep are gone
    (hop-by-hop, Connection-listed, Set-Cookie...), framing is the edge's own."""
    strip = _NOT_STORED.union(s.encode() for s in policy.headers_to_strip_on_store(resp))
    headers = [(k, v) for k, v in raw if k.lower() not in strip]
    if resp.get("date") is None:
        headers.insert(0, (b"Date", format_http_date(now).encode()))
    headers.append((b"Content-Length", str(len(body)).encode()))
    headers.append(VIA)
    vary = policy.vary_fields(resp) or ()
    sig = policy.vary_signature(vary, view.headers) if vary else ()
    return Entry(key, status, headers, body, response_time=now,
                 initial_age=policy.initial_age(resp, now, now), lifetime=plan.lifetime,
                 stale=policy.stale_directives(resp), vary=tuple(vary), vary_sig=tuple(sig),
                 micro=plan.micro)


def revalidated(entry: Entry, not_modified: list[tuple[bytes, bytes]], now: float,
                config: CacheConfig) -> Entry:
    """A new entry from a stored one and the origin's 304 (RFC 9111 §4.3.4): the stored
    fields updated, the clock restarted. The old entry is left as it was."""
    update = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in not_modified]
    if not any(k.lower() == "date" for k, _ in update):
        update.append(("Date", format_http_date(now)))
    stored = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in entry.headers]
    merged = [(k.encode("latin-1"), v.encode("latin-1"))
              for k, v in policy.merge_304(stored, update)]
    resp = policy.combine_headers(merged)
    life = lifetime(entry.status, resp, entry.micro, now, config)
    return Entry(entry.key, entry.status, merged, entry.body, response_time=now,
                 initial_age=policy.initial_age(resp, now, now), lifetime=life,
                 stale=policy.stale_directives(resp), vary=entry.vary, vary_sig=entry.vary_sig,
                 micro=entry.micro)


def pick_variant(variants: list[Entry], headers: Mapping[str, str]) -> Entry | None:
    """The stored variant whose Vary signature matches the request (RFC 9111 §4.1). The
    variants of one URL nearly always name the same fields: the request's signature for them
    is computed once, not once per variant."""
    fields: tuple[str, ...] | None = None
    sig: tuple[str | None, ...] = ()
    for entry in variants:
        if not entry.vary:
            return entry
        if entry.vary != fields:
            fields = entry.vary
            sig = tuple(policy.vary_signature(fields, headers))
        if sig == entry.vary_sig:
            return entry
    return None
