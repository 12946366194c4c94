"""The normalized cache key: one key per page, however a flood decorates the URL.

This module owns request-target normalization (percent-escapes, query-parameter allow-lists per
path) and the key format. The edge forwards the NORMALIZED target to the origin for cacheable
requests, so a stored response always answers exactly the target its key names.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kalkan.query_config import parse_query_config

__all__ = [
    "DEFAULT_ALLOW",
    "DEFAULT_PATHS",
    "DEFAULT_POLICY",
    "QueryPolicy",
    "cache_key",
    "has_dot_segments",
    "normalize_escapes",
    "normalize_target",
]

# Query parameters that select content on a WordPress-style news site; everything else (utm_*,
# fbclid, random cache-busters) is dropped from the key AND from the request sent to the origin.
# The lead's list (post/page ids, pagination, category/tag, search, language, author and date
# archives, slug, feeds) plus the core WordPress public query vars that plain permalinks use for
# month archives (m), comment pages (cpage), page/category slugs, attachments and post types.
DEFAULT_ALLOW = frozenset(
    {
        "p",
        "page_id",
        "paged",
        "page",
        "cat",
        "tag",
        "s",
        "q",
        "lang",
        "author",
        "year",
        "monthnum",
        "day",
        "name",
        "feed",
        "m",
        "cpage",
        "pagename",
        "category_name",
        "attachment_id",
        "post_type",
        # Plain-permalink forms of the REST API, core sitemaps, custom taxonomies, post formats
        # and embeds, and the AMP plugin's `?amp` view.
        "rest_route",
        "sitemap",
        "sitemap-subtype",
        "sitemap-stylesheet",
        "taxonomy",
        "term",
        "post_format",
        "embed",
        "amp",
    }
)

# Built-in per-path rules, tried after the configured ones. Every kept parameter lets a flood
# make distinct misses by varying its value; these are kept only where the content depends on
# them, and cost no more than a flood of random paths already can:
# - WordPress appends `?ver=` to the stylesheets and scripts it enqueues; a theme or plugin update
#   changes it, so it must name a new copy (dropped, the old file was served for up to a day).
#   On these paths nothing else is kept: a static file ignores `?s=` or `?p=`.
# - The REST API's parameters (search, per_page, _fields, plugins' own...) all select content:
#   under /wp-json/ every parameter is kept.
DEFAULT_PATHS: tuple[tuple[str, frozenset[str]], ...] = (
    ("/wp-json/*", frozenset({"*"})),
    ("*.css", frozenset({"ver"})),
    ("*.js", frozenset({"ver"})),
    ("*.mjs", frozenset({"ver"})),
)

_KEEP_ALL_MARK = "*"

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# A percent-escape, or a lone "%" that does not start one.
_PCT = re.compile(r"%([0-9A-Fa-f]{2})?")


def _fix_escape(m: re.Match[str]) -> str:
    hex_digits = m.group(1)
    if hex_digits is None:
        # A lone "%" is invalid in a URI; writing it as %25 is the only reading that keeps the
        # result a valid URI and stops a later decode from forming a new escape with what follows.
        return "%25"
    char = chr(int(hex_digits, 16))
    # RFC 3986 §6.2.2.2: escaped unreserved characters equal the characters themselves;
    # §6.2.2.1: hex digits in the remaining escapes are uppercased.
    return char if char in _UNRESERVED else "%" + hex_digits.upper()


def _normalize_pct(text: str) -> str:
    return _PCT.sub(_fix_escape, text) if "%" in text else text


def normalize_escapes(text: str) -> str:
    """Percent-escapes as the key writes them: unreserved characters decoded, the rest
    uppercased (RFC 3986 §6.2.2.1-2)."""
    return _normalize_pct(text)


@dataclass(frozen=True)
class QueryPolicy:
    """Which query parameters take part in the cache key (and reach the origin).

    ``default_allow``: parameters kept on any path. ``per_path``: (glob, parameters) pairs tried
    in order against the normalized path; the first match REPLACES ``default_allow`` for that
    path (a list holding ``"*"`` keeps every parameter there). Globs are fnmatch-style, case-
    sensitive, and ``*`` also matches ``/``. ``keep_all``: no query normalization at all.
    """

    default_allow: frozenset[str] = DEFAULT_ALLOW
    per_path: tuple[tuple[str, frozenset[str]], ...] = DEFAULT_PATHS
    keep_all: bool = False
    _matcher: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _lists: dict[str, frozenset[str] | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every glob in one regex (one match per request with a query string, not one per glob):
        # alternatives are tried in order, so the first glob that matches names the group.
        # fnmatch's patterns hold no capturing groups of their own (Python 3.11+).
        alternatives = [f"(?P<g{i}>{fnmatch.translate(pattern)})"
                        for i, (pattern, _) in enumerate(self.per_path)]
        object.__setattr__(self, "_matcher", re.compile("|".join(alternatives) or "(?!)"))
        object.__setattr__(self, "_lists", {
            f"g{i}": None if _KEEP_ALL_MARK in names else names
            for i, (_, names) in enumerate(self.per_path)})

    def allowed_for(self, path: str) -> frozenset[str] | None:
        """Parameters kept on ``path`` (already normalized); None means keep every parameter."""
        if self.keep_all:
            return None
        m = self._matcher.match(path)
        if m is None:
            return self.default_allow
        return self._lists[m.lastgroup or ""]

    @classmethod
    def from_mapping(cls, config: Mapping[str, object] | None,
                     always: Iterable[str] = ()) -> QueryPolicy:
        """Build from ``{"default": [...], "paths": {glob: [...]}, "keep_all": bool}``.

        Missing keys take the defaults; ``None`` gives the default policy. The configured
        ``paths`` are tried before the built-in DEFAULT_PATHS (so ``"*.css": []`` overrides
        one). ``always``: parameters kept on every path (``cache.never_cache_params``, so a
        preview or a cart action never matches the stored page). Raises ValueError naming the
        bad key.
        """
        shape = parse_query_config(config)
        keep = _normalized(frozenset(always))
        default = DEFAULT_ALLOW if shape.default is None else _normalized(shape.default)
        per_path = tuple((glob, _normalized(names) | keep)
                         for glob, names in (*shape.paths, *DEFAULT_PATHS))
        return cls(default_allow=default | keep, per_path=per_path, keep_all=shape.keep_all)


def _normalized(names: frozenset[str]) -> frozenset[str]:
    # Compared with request names after the same step.
    return frozenset(_normalize_pct(name) for name in names)


DEFAULT_POLICY = QueryPolicy()


def normalize_target(path: str, query: str, policy: QueryPolicy = DEFAULT_POLICY) -> str:
    """The normalized request target (origin-form ``path[?query]``) used for key and fetch.

    Path: percent-escapes of unreserved characters are decoded and the rest uppercased (RFC 3986
    §6.2.2.1-2); nothing else. Dot-segments, repeated slashes, ``;`` parameters and case are left
    alone, because the origin applies its own rules to them and we forward this exact target, so
    any guess of ours could only make the key disagree with what the origin serves.
    Query: split on ``&``; empty members dropped; names and values get the same escape
    normalization (``+`` untouched); parameters the policy does not allow for this path are
    dropped; the rest (repeats included) sorted by name then value; ``flag`` stays distinct from
    ``flag=``. No parameters left → no ``?``. With ``keep_all`` the query is kept verbatim.
    Idempotent, and never raises. A path without ``%`` and an empty query come back unchanged.
    """
    npath = _normalize_pct(path)
    if not query:
        return npath
    if policy.keep_all:
        return f"{npath}?{query}"
    allow = policy.allowed_for(npath)
    params: list[tuple[str, str, str]] = []
    for member in query.split("&"):
        if not member:
            continue
        name, eq, value = member.partition("=")
        name = _normalize_pct(name)
        if allow is not None and name not in allow:
            continue
        params.append((name, eq, _normalize_pct(value)))
    if not params:
        return npath
    params.sort()
    return npath + "?" + "&".join([name + eq + value for name, eq, value in params])


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_HOST_SAFE = re.compile(r"[a-z0-9.\-_~!$&'()*+,;=:\[\]]*")


def _escape_host(host: str) -> str:
    if _HOST_SAFE.fullmatch(host):
        return host
    # Anything else (space, "/", "%", "@", control or non-ASCII characters) is escaped, so a
    # junk Host can never make one key look like another host's.
    return "".join(
        c if _HOST_SAFE.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode("utf-8"))
        for c in host
    )


def cache_key(
    method_class: str, host: str, normalized_target: str, *, scheme: str = "http"
) -> str:
    """The cache key ``"<method_class> <scheme>://<host><target>"``.

    ``method_class`` groups methods that share stored responses ("GET" for GET and HEAD) and
    must not contain spaces. ``host`` is lowercased, a trailing dot and the scheme's default
    port are removed, and unsafe characters escaped. Pass the request's real ``scheme``:
    otherwise http and https share entries (an http→https redirect would be served on https).
    ``normalized_target`` must come from normalize_target, and the edge must forward that same
    normalized target to the origin for cacheable requests, so what is stored matches its key.
    """
    scheme = scheme.lower()
    name = host.strip().lower()
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is not None and name.endswith(default_port):
        name = name[: -len(default_port)]
    elif name.endswith(":"):  # an empty port means the default one (RFC 3986 §6.2.3)
        name = name[:-1]
    name = _escape_host(name.rstrip("."))
    # The escaped host holds neither "/" nor " ", so the host/target boundary is unambiguous
    # even for a junk target that does not start with "/".
    separator = "" if normalized_target.startswith("/") else " "
    return f"{method_class} {scheme}://{name}{separator}{normalized_target}"


def has_dot_segments(path: str) -> bool:
    """True when the path has "." or ".." segments, escaped or not (RFC 3986 §5.2.4).

    normalize_target leaves them for the origin to resolve; a route classifier that matches path
    prefixes (e.g. /wp-login.php) should refuse or redirect such paths, or it can be bypassed
    with /x/../wp-login.php.
    """
    decoded = _normalize_pct(path)
    return any(segment in (".", "..") for segment in decoded.split("/"))
