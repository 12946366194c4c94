"""HTTP caching rules for Kalkan's shared cache (RFC 9111, RFC 5861), as pure functions.

This module decides what may be stored, for how long, when a stored response may be reused or must
be revalidated, and how conditional requests, Vary, invalidation and hop-by-hop fields work. It does
no I/O and keeps no state; the pipeline owns clocks, sockets and the store.

Header dicts: lowercase field names mapped to the combined field value (RFC 9110 §5.3), as built by
:func:`combine_headers`. For ``set-cookie`` only the presence of the key is meaningful.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urljoin, urlsplit

from kalkan.edge.httpdate import format_http_date, parse_http_date

__all__ = [
    "DELTA_SECONDS_MAX",
    "HEURISTIC_STATUSES",
    "HOP_BY_HOP",
    "NO_PREFERENCES",
    "SAFE_METHODS",
    "STORABLE_STATUSES",
    "Headers",
    "RequestRules",
    "Reuse",
    "StaleRules",
    "client_conditional_matches",
    "combine_headers",
    "conditional_headers_for_origin",
    "current_age",
    "format_http_date",
    "freshness_lifetime",
    "headers_to_strip_on_store",
    "hop_by_hop_fields",
    "initial_age",
    "invalidated_targets",
    "merge_304",
    "not_modified_updates_stored",
    "parse_cache_control",
    "parse_delta_seconds",
    "parse_http_date",
    "request_rules",
    "reuse_decision",
    "stale_directives",
    "storable",
    "vary_fields",
    "vary_signature",
]

Headers = Mapping[str, str]

# RFC 9111 §1.2.2: delta-seconds beyond what we can represent are read as 2^31.
DELTA_SECONDS_MAX = 2**31

# RFC 9110 §15.1: statuses a cache may store with heuristic freshness.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

# Final statuses whose caching semantics we understand AND are willing to store (RFC 9111 §3).
# Left out on purpose: 206 (we store whole representations only), 304 (it updates a stored
# response, merge_304), every 5xx (for an edge that fails toward readers a 5xx is an origin failure
# that should trigger stale-if-error/grace, never replace a good copy) and 400/403/429 (typically
# about one client, e.g. a WordPress security plugin blocking an address). Storing is always
# optional for a cache, so refusing these is conforming.
STORABLE_STATUSES = frozenset(
    {200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 451}
)

# RFC 9110 §9.2.1.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# RFC 9110 §7.6.1 plus the fields RFC 2616 §13.5.1 listed that still must not cross a proxy.
# "trailer" is here because stored bodies are de-chunked, so a Trailer announcement is meaningless.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# Cookie fields are per client: never served from the cache to anybody else.
_COOKIE_FIELDS = frozenset({"set-cookie", "set-cookie2"})

# RFC 9111 §3.2: fields a 304 must not change in the stored response. content-encoding and
# content-range describe the stored bytes, so changing them would mislabel the body.
_KEPT_ON_304 = HOP_BY_HOP | _COOKIE_FIELDS | {"content-length", "content-encoding", "content-range"}
# Fields that describe one exchange: after revalidation only the 304's copies are true.
_EXCHANGE_FIELDS = frozenset({"date", "age"})


# --------------------------------------------------------------------------------------------
# Header representation


def combine_headers(raw: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    """Build the lowercase header dict, combining repeated fields with ", " (RFC 9110 §5.3)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        key = name.strip().lower()
        value = value.strip(" \t")
        old = out.get(key)
        if old is None:
            out[key] = value
        elif key in _COOKIE_FIELDS or not value:
            # Set-Cookie lines cannot be combined (RFC 9110 §5.3); only presence matters here.
            # Empty list members are ignored (RFC 9110 §5.6.1).
            continue
        else:
            out[key] = f"{old}, {value}" if old else value
    return out


def _list_members(value: str) -> list[str]:
    """Lowercased, stripped, non-empty members of a comma-separated token list."""
    return [m for m in (p.strip().lower() for p in value.split(",")) if m]


# --------------------------------------------------------------------------------------------
# Cache-Control


def parse_delta_seconds(value: str | None) -> int | None:
    """Parse delta-seconds (RFC 9111 §1.2.2): digits only, capped at 2^31; invalid → None."""
    if value is None:
        return None
    text = value.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text.lstrip("0")) > 10:  # avoid huge int() conversions; anything this long is capped
        return DELTA_SECONDS_MAX
    return min(int(text), DELTA_SECONDS_MAX)


def _add_directive(out: dict[str, str | None], name: str, arg: str | None) -> None:
    if name in ("private", "no-cache"):
        # Qualified forms list fields; when repeated, the most restrictive reading wins
        # (RFC 9111 §4.2.1): any unqualified occurrence makes the whole directive unqualified,
        # otherwise the field lists are united.
        if arg is not None and not arg.strip():
            arg = None
        if name not in out:
            out[name] = arg
        elif out[name] is None or arg is None:
            out[name] = None
        else:
            out[name] = f"{out[name]}, {arg}"
    elif name not in out:  # duplicates: the first occurrence wins (RFC 9111 §4.2.1)
        out[name] = arg


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Parse Cache-Control (RFC 9111 §5.2) to {lowercase directive: unquoted argument or None}.

    Tolerant: quoted-strings (with commas and backslash escapes inside), odd whitespace and empty
    members are fine; it never raises. The first of duplicate directives wins, except that
    repeated ``private``/``no-cache`` are merged most-restrictively. Arguments are returned as
    text; an invalid delta-seconds is judged by the consumer (see :func:`freshness_lifetime`).
    """
    out: dict[str, str | None] = {}
    if not value:
        return out
    if '"' not in value:  # fast path: no quoted-strings, so every comma separates directives
        for item in value.split(","):
            name, sep, raw = item.partition("=")
            name = name.strip().lower()
            if name:
                _add_directive(out, name, raw.strip() if sep else None)
        return out
    i, n = 0, len(value)
    while i < n:
        j = i
        while j < n and value[j] not in ",=":
            j += 1
        name = value[i:j].strip().lower()
        arg: str | None = None
        if j < n and value[j] == "=":
            j += 1
            while j < n and value[j] in " \t":
                j += 1
            if j < n and value[j] == '"':
                chars: list[str] = []
                j += 1
                while j < n and value[j] != '"':
                    if value[j] == "\\" and j + 1 < n:
                        j += 1
                    chars.append(value[j])
                    j += 1
                arg = "".join(chars)
                while j < n and value[j] != ",":  # skip the closing quote and any junk after it
                    j += 1
            else:
                k = j
                while k < n and value[k] != ",":
                    k += 1
                arg = value[j:k].strip()
                j = k
        if name:
            _add_directive(out, name, arg)
        i = j + 1
    return out


def _field_names(qualified: str) -> set[str]:
    """Field names listed by a qualified private="..." / no-cache="..." argument."""
    return set(_list_members(qualified))


# --------------------------------------------------------------------------------------------
# Storing


def storable(
    method: str, status: int, req: Headers, resp: Headers, *, microcache: bool = False,
    session: bool = False,
) -> tuple[bool, str]:
    """May a shared cache store this response (RFC 9111 §3)? Returns (ok, reason token).

    Reasons when refused: "method", "status", "request-no-store", "no-store", "private",
    "authorization", "session", "vary-star", "set-cookie", "no-freshness". When allowed: "explicit",
    "public", "heuristic" or "microcache" (which rule made it storable).

    Only GET responses are stored; HEAD responses have no body to store (the caller may answer
    HEAD from a stored GET response, RFC 9110 §9.3.2). ``microcache=True`` means the caller has
    judged the request anonymous and wants a short edge TTL: it only supplies storability when
    the response has no freshness information; it never overrides a directive.
    """
    if method != "GET":
        return False, "method"
    if status not in STORABLE_STATUSES:  # also covers must-understand: we understand these
        return False, "status"
    cc = parse_cache_control(resp.get("cache-control"))
    if "no-store" in parse_cache_control(req.get("cache-control")):  # RFC 9111 §5.2.1.5
        return False, "request-no-store"
    # RFC 9111 §5.2.2.3: must-understand overrides no-store when the status is understood.
    if "no-store" in cc and "must-understand" not in cc:
        return False, "no-store"
    if "private" in cc and cc["private"] is None:  # qualified private: store minus those fields
        return False, "private"
    shared_ok = "public" in cc or "s-maxage" in cc
    # RFC 9111 §3.5 also lets must-revalidate make it storable; not here: revalidated by an
    # anonymous reader, a 304 would hand that reader the authenticated copy.
    if "authorization" in req and not shared_ok:
        return False, "authorization"
    if session and not shared_ok:
        # Fetched for a logged-in session (the caller's session cookies): the page may be that
        # reader's own. Like Authorization, only an explicit shared-cache mark makes it storable.
        return False, "session"
    if vary_fields(resp) is None:  # Vary: * never matches a later request (RFC 9111 §4.1)
        return False, "vary-star"
    if "set-cookie" in resp and not (shared_ok or _names_set_cookie(cc)):
        # A cookie is usually per reader (a session); storing the page risks serving one reader's
        # personalised content to all (RFC 9111 §7.3, RFC 6265 §8). Only an origin that marked the
        # response for shared caches, or named Set-Cookie as a private/no-cache field, gets it
        # stored, and even then Set-Cookie itself is stripped (headers_to_strip_on_store).
        return False, "set-cookie"
    if "s-maxage" in cc or "max-age" in cc or "expires" in resp:
        return True, "explicit"
    if "public" in cc:
        return True, "public"
    if status in HEURISTIC_STATUSES:
        return True, "heuristic"
    if microcache:
        return True, "microcache"
    return False, "no-freshness"


def _names_set_cookie(cc: Mapping[str, str | None]) -> bool:
    for directive in ("private", "no-cache"):
        fields = cc.get(directive)
        if fields and "set-cookie" in _field_names(fields):
            return True
    return False


def headers_to_strip_on_store(resp: Headers) -> set[str]:
    """Lowercase fields to drop from the stored copy (RFC 9111 §3.1, §5.2.2.4, §5.2.2.7).

    Always Set-Cookie (never served to other clients), hop-by-hop fields and those named in
    Connection, and the fields named by qualified ``private="..."`` / ``no-cache="..."``
    (dropping a no-cache field instead of revalidating for it is the conservative reading).
    """
    fields = hop_by_hop_fields(resp)
    fields.update(_COOKIE_FIELDS)
    cc = parse_cache_control(resp.get("cache-control"))
    for directive in ("private", "no-cache"):
        qualified = cc.get(directive)
        if qualified:
            fields.update(_field_names(qualified))
    return fields


# --------------------------------------------------------------------------------------------
# Freshness and age


def freshness_lifetime(
    status: int,
    resp: Headers,
    *,
    response_time: float | None = None,
    heuristic_fraction: float = 0.1,
    heuristic_max: float = 86400.0,
) -> float | None:
    """Freshness lifetime in seconds for a shared cache (RFC 9111 §4.2.1, §4.2.2), or None.

    Order: s-maxage, max-age, Expires − Date, then a heuristic of ``heuristic_fraction`` ×
    (Date − Last-Modified) capped at ``heuristic_max``, only for heuristically cacheable statuses
    or ``public`` responses. ``response_time`` stands in for a missing or invalid Date (pass it:
    without it the wall clock is read). An invalid s-maxage/max-age/Expires makes the response
    stale (lifetime 0, RFC 9111 §4.2.1, §5.3) rather than falling through to a weaker rule.
    None means no freshness information at all: the caller applies its own default (e.g. the
    microcache TTL) or treats the response as stale.
    """
    cc = parse_cache_control(resp.get("cache-control"))
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            return float(parse_delta_seconds(cc[directive]) or 0)
    expires_value = resp.get("expires")
    last_modified: float | None = None
    if expires_value is None:
        if status not in HEURISTIC_STATUSES and "public" not in cc:
            return None
        last_modified = parse_http_date(resp.get("last-modified"))
        if last_modified is None:
            return None
    base = parse_http_date(resp.get("date"))
    if base is None:
        base = response_time if response_time is not None else time.time()
    if last_modified is not None:
        return min(max(0.0, base - last_modified) * heuristic_fraction, heuristic_max)
    expires = parse_http_date(expires_value)
    return 0.0 if expires is None else max(0.0, expires - base)


def initial_age(resp: Headers, request_time: float, response_time: float) -> float:
    """Corrected initial age of a response when received (RFC 9111 §4.2.3).

    ``request_time``/``response_time`` are our clock when the origin request was sent and the
    response arrived. An Age that is not a single delta-seconds (garbled, negative, fractional,
    repeated) makes the response stale: RFC 9111 §5.1 lets a cache ignore it, but an upstream
    cache that garbles Age may be hiding an old response, and revalidating is the safe side
    (this is also what the HTTP caching test suite expects).
    """
    raw_age = resp.get("age")
    age_value = parse_delta_seconds(raw_age) if raw_age is not None else 0
    if age_value is None or (raw_age is not None and not raw_age.strip().isdigit()):
        return float(DELTA_SECONDS_MAX)
    date = parse_http_date(resp.get("date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


def current_age(initial: float, response_time: float, now: float) -> float:
    """Current age = corrected initial age + time resident in the cache (RFC 9111 §4.2.3)."""
    return initial + max(0.0, now - response_time)


# --------------------------------------------------------------------------------------------
# Reuse


@dataclass(frozen=True, slots=True)
class StaleRules:
    """What a stored response permits once stale (RFC 9111 §4.2.4, §5.2.2; RFC 5861).

    The values are already reconciled by :func:`stale_directives`: an explicit must-revalidate,
    proxy-revalidate or unqualified no-cache zeroes the two windows.
    """

    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    # must-revalidate, proxy-revalidate, or s-maxage (implies proxy-revalidate for a shared cache).
    # Forbids grace and client max-stale; only the origin's own swr/sie windows remain usable.
    must_revalidate: bool = False
    # Unqualified response no-cache: every reuse needs a successful revalidation, never stale.
    no_cache: bool = False


def stale_directives(resp: Headers) -> StaleRules:
    """Extract the stale-serving permissions of a response (RFC 9111 §5.2.2, RFC 5861 §3-4).

    Conflicts resolve most-restrictively (RFC 9111 §4.2.1) with one deliberate exception: the
    proxy-revalidate that s-maxage merely implies does not cancel an explicit
    stale-while-revalidate/stale-if-error from the same origin (``s-maxage=60,
    stale-while-revalidate=30`` is a common CDN idiom, and RFC 9111 §4.2.4 lets extension
    directives permit stale responses). An explicit must-/proxy-revalidate or no-cache does.
    """
    cc = parse_cache_control(resp.get("cache-control"))
    explicit_revalidate = "must-revalidate" in cc or "proxy-revalidate" in cc
    no_cache = "no-cache" in cc and cc["no-cache"] is None
    if explicit_revalidate or no_cache:
        swr = sie = 0.0
    else:
        swr = float(parse_delta_seconds(cc.get("stale-while-revalidate")) or 0)
        sie = float(parse_delta_seconds(cc.get("stale-if-error")) or 0)
    return StaleRules(
        stale_while_revalidate=swr,
        stale_if_error=sie,
        must_revalidate=explicit_revalidate or "s-maxage" in cc,
        no_cache=no_cache,
    )


@dataclass(frozen=True, slots=True)
class RequestRules:
    """The client's caching preferences (RFC 9111 §5.2.1). Defaults mean "no preferences".

    A request's no-store is not among them: :func:`storable` reads it and refuses to store.
    """

    no_cache: bool = False
    max_age: float | None = None
    max_stale: float | None = None  # math.inf for a bare max-stale ("any staleness")
    min_fresh: float | None = None
    only_if_cached: bool = False


# Pass this instead of request_rules(req) to ignore client preferences, e.g. in attack mode: RFC
# 9111 §5.2.1 words them as preferences, and honouring no-cache lets a flood bypass the cache.
NO_PREFERENCES = RequestRules()


def session_cookie_pattern(names: Iterable[str]) -> re.Pattern[bytes]:
    """One search for any of the session cookies' names in a Cookie field (a pattern that
    never matches when there are none): a loop of `in` tests costs several times more on every
    hit."""
    return re.compile(b"|".join(re.escape(c.encode()) for c in names) or b"(?!)")


def request_rules(req: Headers) -> RequestRules:
    """Read the request's Cache-Control, or Pragma: no-cache without it (RFC 9111 §5.2.1, §5.4).

    Invalid delta-seconds in a request directive make that directive ignored (a preference we
    cannot read is no preference).
    """
    raw = req.get("cache-control")
    if raw is None:
        pragma = req.get("pragma")
        if pragma and "no-cache" in _list_members(pragma):
            return RequestRules(no_cache=True)
        return NO_PREFERENCES
    cc = parse_cache_control(raw)
    max_stale: float | None = None
    if "max-stale" in cc:
        arg = cc["max-stale"]
        max_stale = math.inf if arg is None else _maybe_float(parse_delta_seconds(arg))
    return RequestRules(
        no_cache="no-cache" in cc,
        max_age=_maybe_float(parse_delta_seconds(cc.get("max-age"))),
        max_stale=max_stale,
        min_fresh=_maybe_float(parse_delta_seconds(cc.get("min-fresh"))),
        only_if_cached="only-if-cached" in cc,
    )


def _maybe_float(value: int | None) -> float | None:
    return None if value is None else float(value)


class Reuse(Enum):
    """What to do with a stored response; one ``match`` arm per member.

    FRESH, STALE_WHILE_REVALIDATE, STALE_IF_ERROR and GRACE serve the stored response now;
    REVALIDATE asks the origin first; UNSERVABLE answers 504 (RFC 9111 §5.2.1.7, §5.2.2.2).
    """

    FRESH = "fresh"  # serve as is, no origin contact
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"  # serve now, revalidate in the background
    REVALIDATE = "revalidate"  # conditional fetch; if it fails, decide again with origin_failing
    STALE_IF_ERROR = "stale-if-error"  # origin failing; the response's stale-if-error allows it
    GRACE = "grace"  # origin failing; the edge's grace allows it
    UNSERVABLE = "unservable"  # may not serve stored and cannot (or may not) ask the origin: 504

    @property
    def serves_stored(self) -> bool:
        """True when the stored response is sent to the client now."""
        return self in _SERVES_STORED


_SERVES_STORED = frozenset(
    {Reuse.FRESH, Reuse.STALE_WHILE_REVALIDATE, Reuse.STALE_IF_ERROR, Reuse.GRACE}
)


def reuse_decision(
    age: float,
    lifetime: float,
    stale: StaleRules,
    req: RequestRules,
    *,
    origin_failing: bool = False,
    grace: float = 0.0,
) -> Reuse:
    """Decide how a stored response may satisfy a request (RFC 9111 §4.2, §4.2.4; RFC 5861).

    ``age`` is the current age, ``lifetime`` the freshness lifetime (pass the caller's default
    when freshness_lifetime returned None). ``origin_failing`` means the origin is known to be
    failing (breaker open, or the revalidation just failed). ``grace`` is the edge's own
    stale-if-error: used only when the origin is failing and the response does not forbid stale
    (no must-revalidate, proxy-revalidate, s-maxage or no-cache, RFC 9111 §4.2.4). A response that
    is still fresh is served when the origin fails even if the client asked for revalidation.
    """
    fresh = lifetime > age
    staleness = age - lifetime
    needs_validation = (
        stale.no_cache or req.no_cache or (req.max_age is not None and age > req.max_age)
    )
    if not needs_validation:
        if fresh:
            if req.min_fresh is None or lifetime - age >= req.min_fresh:
                return Reuse.FRESH
        elif req.min_fresh is None:  # a client asking for remaining freshness accepts no stale
            if stale.stale_while_revalidate > 0 and staleness <= stale.stale_while_revalidate:
                return Reuse.STALE_WHILE_REVALIDATE
            if (
                req.max_stale is not None
                and staleness <= req.max_stale
                and not stale.must_revalidate
            ):
                # The client accepts this staleness; refresh the entry for the next reader too.
                return Reuse.STALE_WHILE_REVALIDATE
    if origin_failing:
        if stale.no_cache:
            return Reuse.UNSERVABLE
        if fresh:
            return Reuse.FRESH
        if stale.stale_if_error > 0 and staleness <= stale.stale_if_error:
            return Reuse.STALE_IF_ERROR
        if grace > 0 and staleness <= grace and not stale.must_revalidate:
            return Reuse.GRACE
        return Reuse.UNSERVABLE
    if req.only_if_cached:
        return Reuse.UNSERVABLE
    return Reuse.REVALIDATE


# --------------------------------------------------------------------------------------------
# Conditional requests and revalidation


def _entity_tags(value: str) -> list[str]:
    """Opaque parts of an entity-tag list (weak prefixes dropped; commas inside quotes kept)."""
    tags: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t,":
            i += 1
            continue
        if value.startswith(("W/", "w/"), i):
            i += 2
        if i < n and value[i] == '"':
            end = value.find('"', i + 1)
            if end < 0:
                end = n
            tags.append(value[i + 1 : end])
            i = end + 1
        else:  # tolerate an unquoted tag
            end = value.find(",", i)
            if end < 0:
                end = n
            tags.append(value[i:end].strip())
            i = end
    return tags


def _opaque_tag(etag: str) -> str:
    tags = _entity_tags(etag.strip())
    return tags[0] if tags else ""


def _is_weak(etag: str) -> bool:
    return etag.lstrip().startswith(("W/", "w/"))


def client_conditional_matches(req: Headers, stored: Headers, *, method: str = "GET") -> bool:
    """True when the client's conditional GET/HEAD is satisfied by ``stored``: answer 304.

    RFC 9110 §13.2.2 order, with the cache's subset (RFC 9111 §4.3.2): If-None-Match by weak
    comparison, ``*`` matching any stored response; If-Modified-Since only without If-None-Match,
    against Last-Modified (or Date when there is none). If-Match/If-Unmodified-Since/If-Range are
    for the origin. Call only for a stored 2xx response selected for this request.
    """
    if method not in ("GET", "HEAD"):
        return False
    inm = req.get("if-none-match")
    if inm is not None:
        if inm.strip() == "*":
            return True
        etag = stored.get("etag")
        if not etag:
            return False
        mine = _opaque_tag(etag)
        return any(tag == mine for tag in _entity_tags(inm))
    since = parse_http_date(req.get("if-modified-since"))
    if since is None:
        return False
    modified = parse_http_date(stored.get("last-modified"))
    if modified is None:
        modified = parse_http_date(stored.get("date"))
    return modified is not None and modified <= since


def conditional_headers_for_origin(stored: Headers) -> dict[str, str]:
    """Validators for revalidating ``stored`` with the origin (RFC 9111 §4.3.1).

    If-None-Match from ETag and If-Modified-Since from a valid Last-Modified; both are sent when
    both exist (the origin ignores IMS when INM is present, RFC 9110 §13.2.2). Empty dict: no
    validators, so "revalidation" is a plain fetch.
    """
    out: dict[str, str] = {}
    etag = stored.get("etag")
    if etag and etag.strip():
        out["if-none-match"] = etag.strip()
    last_modified = stored.get("last-modified")
    if last_modified and parse_http_date(last_modified) is not None:
        out["if-modified-since"] = last_modified.strip()
    return out


def not_modified_updates_stored(stored: Headers, not_modified: Headers) -> bool:
    """Does this 304 identify ``stored`` for update (RFC 9111 §4.3.4)? If not, refetch in full.

    A strong ETag in the 304 must equal the stored strong ETag; a weak one must match weakly; else
    a Last-Modified must be equal. A 304 with no validator is accepted, because the edge only
    sends conditional requests built from this stored response.
    """
    new_etag = not_modified.get("etag")
    old_etag = stored.get("etag")
    if new_etag:
        if not old_etag:
            return False
        if not _is_weak(new_etag) and _is_weak(old_etag):
            return False
        return _opaque_tag(new_etag) == _opaque_tag(old_etag)
    new_lm = parse_http_date(not_modified.get("last-modified"))
    if new_lm is not None:
        return parse_http_date(stored.get("last-modified")) == new_lm
    return True


def merge_304(
    stored_headers: list[tuple[str, str]], not_modified: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Update stored header fields from a 304 (RFC 9111 §3.2, §4.3.4), keeping order.

    Each field in the 304 replaces all stored lines of that name (case-insensitively) at the
    position of the first one; new fields are appended. Not taken from the 304: Content-Length,
    Content-Encoding, Content-Range (they describe the stored bytes), hop-by-hop and Set-Cookie.
    Date and Age come only from the 304 (they belong to one exchange; recompute initial_age from
    the result). The fields headers_to_strip_on_store names for the merged result are removed.
    """
    nm = combine_headers(not_modified)
    skip = _KEPT_ON_304 | hop_by_hop_fields(nm)
    updates: dict[str, list[tuple[str, str]]] = {}
    for name, value in not_modified:
        key = name.lower()
        if key not in skip:
            updates.setdefault(key, []).append((name, value))
    merged: list[tuple[str, str]] = []
    emitted: set[str] = set()
    for name, value in stored_headers:
        key = name.lower()
        if key in updates:
            if key not in emitted:
                merged.extend(updates[key])
                emitted.add(key)
        elif key not in _EXCHANGE_FIELDS:
            merged.append((name, value))
    for key, lines in updates.items():
        if key not in emitted:
            merged.extend(lines)
    strip = headers_to_strip_on_store(combine_headers(merged))
    return [(name, value) for name, value in merged if name.lower() not in strip]


# --------------------------------------------------------------------------------------------
# Vary


def vary_fields(resp: Headers) -> tuple[str, ...] | None:
    """Request fields the response varies on: lowercase, sorted, deduped; None for ``*``.

    RFC 9111 §4.1: ``Vary: *`` never matches, so such a response is not stored. () = no Vary.
    """
    raw = resp.get("vary")
    if not raw:
        return ()
    names = _list_members(raw)
    if "*" in names:
        return None
    return tuple(sorted(set(names)))


_AROUND_SEPARATORS = re.compile(r" ?([,;=]) ?")


def _normalize_value(value: str) -> str:
    # RFC 9111 §4.1 allows removing whitespace where the syntax allows it. Inside quoted-strings
    # whitespace is data, so values with quotes are only trimmed.
    if '"' in value:
        return value.strip()
    return _AROUND_SEPARATORS.sub(r"\1", " ".join(value.split()))


def vary_signature(fields: Iterable[str], req: Headers) -> tuple[str | None, ...]:
    """The request's values for ``fields`` with whitespace normalized (RFC 9111 §4.1).

    None stands for a missing field, so it is distinct from an empty one.
    """
    return tuple(
        None if (value := req.get(field)) is None else _normalize_value(value) for field in fields
    )


# --------------------------------------------------------------------------------------------
# Invalidation


def _hostname(host: str) -> str:
    """Host (no port) of a Host header value or authority, lowercased."""
    try:
        name = urlsplit("//" + host.strip()).hostname
    except ValueError:
        name = None
    return name or host.strip().lower()


def _origin_form(target: str) -> str:
    if target.startswith(("http://", "https://")):
        try:
            parts = urlsplit(target)
        except ValueError:
            return target
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return target


def _same_host_target(reference: str, base_target: str, host: str) -> str | None:
    try:
        parts = urlsplit(reference)
        if parts.scheme or parts.netloc:
            if parts.scheme.lower() not in ("http", "https", ""):
                return None
            if (parts.hostname or "") != host:
                return None
        else:
            parts = urlsplit(urljoin("http://placeholder" + base_target, reference))
    except ValueError:
        return None
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def invalidated_targets(
    method: str, status: int, request_target: str, resp: Headers, host: str
) -> list[str]:
    """Origin-form targets to invalidate after an unsafe request (RFC 9111 §4.4).

    A non-error (2xx/3xx) response to an unsafe method invalidates the target URI, plus the
    Location and Content-Location URIs when their host equals ``host`` (a different host must not
    be invalidated, to stop one site purging another). Targets are NOT normalized: run each
    through cache_key.normalize_target and drop every variant stored under the resulting key.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    own_host = _hostname(host)
    target = _origin_form(request_target)
    out = [target]
    for field in ("location", "content-location"):
        reference = resp.get(field)
        if reference and reference.strip():
            other = _same_host_target(reference.strip(), target, own_host)
            if other is not None and other not in out:
                out.append(other)
    return out


# --------------------------------------------------------------------------------------------
# Hop-by-hop


def hop_by_hop_fields(headers: Headers) -> set[str]:
    """HOP_BY_HOP plus the fields named in Connection (RFC 9110 §7.6.1), lowercase.

    Strip these from a client request before adding the edge's own fields (X-Forwarded-For, ...),
    so a client cannot make the edge drop them by naming them in Connection.
    """
    fields = set(HOP_BY_HOP)
    connection = headers.get("connection")
    if connection:
        fields.update(_list_members(connection))
    return fields
