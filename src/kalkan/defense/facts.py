"""What the defence knows about one request: who sent it (address, prefix) and what it asks for.

Built once per request by the pipeline from the parsed request, then read by every check (the
policy rules, the client table, the challenge). Route classes are decided here too, on the path
as the origin will route it (`normalize_path`), not on the bytes a client chose to send.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Final
from urllib.parse import unquote, unquote_plus

from kalkan.addresses import parse_ip, prefix_text
from kalkan.memo import Memo

# Route classes: the kinds of request the policy and the rate counters tell apart. (Final, as
# the names below: compiled code, here and where they are imported, uses the constants instead
# of looking a module name up per request.)
PAGE: Final = "page"
ASSET: Final = "asset"
FEED: Final = "feed"
SEARCH: Final = "search"
FORM: Final = "form"
LOGIN: Final = "login"
ADMIN: Final = "admin"
CHALLENGE: Final = "challenge"
WELLKNOWN: Final = "wellknown"
ROUTE_CLASSES = (PAGE, ASSET, FEED, SEARCH, FORM, LOGIN, ADMIN, CHALLENGE, WELLKNOWN)

CHALLENGE_PREFIX: Final = "/.kalkan/"  # the edge's own endpoints (challenge pages, verification)

# Methods that change nothing at the origin (RFC 9110 §9.2.1). Every other method may, and a
# 2xx/3xx answer to it evicts the URL from the cache (RFC 9111 §4.4), so it is a form.
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Classes an unsafe request keeps when its path says so; any other path makes it a form.
_UNSAFE_KEEPS: Final = frozenset({"login", "form", "admin", "search"})

# Default classification for a news site (WordPress-shaped); first match wins. Configurable.
DEFAULT_ROUTES: tuple[tuple[str, str], ...] = (
    (CHALLENGE_PREFIX + "*", CHALLENGE),
    ("/robots.txt", WELLKNOWN), ("/sitemap*.xml", WELLKNOWN), ("/.well-known/*", WELLKNOWN),
    ("/favicon.ico", WELLKNOWN), ("/favicon.*", WELLKNOWN), ("/apple-touch-icon*", WELLKNOWN),
    ("/feed", FEED), ("/feed/*", FEED), ("*/feed/", FEED), ("*.rss", FEED), ("*.atom", FEED),
    ("/rss*", FEED), ("/atom*", FEED),
    ("/wp-login.php*", LOGIN), ("/login*", LOGIN), ("/user/login*", LOGIN),
    ("/xmlrpc.php*", FORM), ("/wp-comments-post.php*", FORM), ("/comments*", FORM),
    ("/wp-admin/*", ADMIN), ("/admin/*", ADMIN),
    ("/search*", SEARCH),
    ("/assets/*", ASSET), ("/static/*", ASSET), ("/wp-content/*", ASSET),
    ("/wp-includes/*", ASSET),
    ("*.css", ASSET), ("*.js", ASSET), ("*.png", ASSET), ("*.jpg", ASSET), ("*.jpeg", ASSET),
    ("*.gif", ASSET), ("*.svg", ASSET), ("*.webp", ASSET), ("*.ico", ASSET), ("*.woff2", ASSET),
    ("*.woff", ASSET), ("*.mp4", ASSET), ("*.pdf", ASSET),
)


class RouteClassifier:
    """Maps a request to its route class with ordered globs; memoized per raw path (bounded)."""

    def __init__(self, routes: tuple[tuple[str, str], ...] = DEFAULT_ROUTES) -> None:
        for _, cls in routes:
            if cls not in ROUTE_CLASSES:
                raise ValueError(f"unknown route class {cls!r} (one of {', '.join(ROUTE_CLASSES)})")
        self._patterns = [(re.compile(fnmatch.translate(g)), cls) for g, cls in routes]
        # raw path -> (normalized path, class by path); plain paths map to themselves.
        self._memo: Memo[str, tuple[str, str]] = Memo(16384)

    def classify(self, method: str, path: str, query: str) -> str:
        return self.classify_target(method, path, query)[0]

    def classify_target(self, method: str, path: str, query: str) -> tuple[str, str]:
        """(route class, normalized path) for a request; the policy's `path` conditions match
        the normalized path too, so `//.env` meets the same rule as `/.env`."""
        known = self._memo.table.get(path)
        if known is None:
            known = self._by_path(path)
        npath, cls = known
        if method != "GET" and method not in _SAFE_METHODS \
                and not npath.startswith(CHALLENGE_PREFIX):
            return (cls if cls in _UNSAFE_KEEPS else FORM), npath
        if query and (("s=" in query and _has_param(query, "s")) or (
                ("%" in query or "+" in query or "[" in query) and _spelled_search(query))):
            return SEARCH, npath  # WordPress search: /?s=words
        return cls, npath

    def _by_path(self, path: str) -> tuple[str, str]:
        npath = normalize_path(path) if _needs_normalizing(path) else path
        cls = PAGE
        for pattern, c in self._patterns:
            if pattern.match(npath):
                cls = c
                break
        return self._memo.put(path, (npath, cls))  # bounded: random paths


def _needs_normalizing(path: str) -> bool:
    """Could the origin route this path as another one? Plain paths (nearly all) cannot."""
    return "%" in path or "//" in path or ("/." in path and (
        "/./" in path or "/../" in path or path.endswith(("/.", "/.."))))


def normalize_path(path: str) -> str:
    """The path the origin routes: escapes decoded once, repeated slashes merged, dot segments
    removed (RFC 3986 §5.2.4), in that order, which is what nginx does with a URI.

    Every escape is decoded, `%2F` included. Apache by default (AllowEncodedSlashes Off) refuses
    a path holding `%2F` with a 404 before any script runs, and with NoDecode passes it on
    undecoded; nginx decodes it and merges the slashes. Classifying by the decoded form can
    only put such a request in a stricter class than its Apache reading (a cheap 404 or an
    unusual page URL), never in a laxer one, so `/x/..%2Fsearch` is the search it is on nginx.
    One decoding only, as at the origin: `%2573` is the text `%73`, not an `s`.
    Case is kept: the origin's files and WordPress's rewrite rules are case-sensitive, so
    `/WP-LOGIN.PHP` is a different (missing) page, not the login; folding case would send
    readers' mixed-case article URLs into the wrong class instead.
    """
    if not path.startswith("/"):
        return path  # "*" (OPTIONS) or anything else that is not origin-form
    if "%" in path:
        path = unquote(path, encoding="latin-1")  # bytes as they are: globs are ASCII
    while "//" in path:
        path = path.replace("//", "/")
    if "/." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    result = "/" + "/".join(out)
    if segments[-1] in (".", "..") and not result.endswith("/"):
        result += "/"  # "/a/b/.." is the directory "/a/"
    return result


def _spelled_search(query: str) -> bool:
    """Does the query hold WordPress's `s` parameter spelled otherwise, as PHP reads names?

    PHP decodes names (`%73` and `+` too), drops their leading spaces and reads `s[]` or
    `s[x]` as `s`: each of those reaches WordPress as a search.
    """
    for part in query.split("&"):
        name = unquote_plus(part.split("=", 1)[0], encoding="latin-1").lstrip(" ")
        bracket = name.find("[")
        if bracket > 0 and "]" in name[bracket:]:
            name = name[:bracket]
        if name == "s" and "=" in part:
            return True
    return False


def _has_param(query: str, name: str) -> bool:
    return any(part.split("=", 1)[0] == name for part in query.split("&"))


# What the link-preview fetchers of messengers and social networks put in their User-Agent: a
# person shared a link, and the platform reads that one page (no JavaScript, no cookies), so it
# can never pass a challenge. Claiming one is easy: it earns only a plain page on a miss.
_PREVIEW_MARKS = ("TelegramBot", "facebookexternalhit", "Facebot", "Twitterbot", "WhatsApp/",
                  "Slackbot-LinkExpanding", "Discordbot", "vkShare", "LinkedInBot",
                  "Pinterestbot", "redditbot", "Mastodon/", "SkypeUriPreview", "Viber",
                  "Iframely", "Embedly", "Applebot-Extended", "Google-PageRenderer")


def link_preview(user_agent: str) -> bool:
    """Does this User-Agent say it is a messenger's or social network's link preview?"""
    return any(mark in user_agent for mark in _PREVIEW_MARKS)


class RequestFacts:
    """The request as the defence sees it; `prefix` is the client's /24 (IPv4) or /64 (IPv6).

    A plain class, not a dataclass: made once per request, and mypyc compiles this __init__
    but not the one a dataclass generates (4,500 instructions, most of a request's facts)."""

    __slots__ = ("method", "host", "path", "query", "route", "client", "ip", "version", "prefix",
                 "user_agent", "headers", "cookie", "referer")

    def __init__(self, method: str, host: str, path: str, query: str, route: str, client: str,
                 ip: int, version: int, prefix: str, user_agent: str,
                 headers: list[tuple[bytes, bytes]] | None = None,
                 cookie: bytes | None = None, referer: bytes | None = None) -> None:
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.route = route
        self.client = client
        self.ip = ip
        self.version = version      # 4 or 6
        self.prefix = prefix        # e.g. "203.0.113.0/24" or "2001:db8:1:2::/64"
        self.user_agent = user_agent
        self.headers: list[tuple[bytes, bytes]] = [] if headers is None else headers
        self.cookie = cookie
        self.referer = referer

    def __repr__(self) -> str:
        return (f"RequestFacts({self.method} {self.host}{self.path} query={self.query!r} "
                f"route={self.route} client={self.client} prefix={self.prefix} "
                f"ua={self.user_agent!r})")

    def header(self, name: bytes) -> bytes | None:
        """First value of a header field; `name` lowercase."""
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


_PREFIX_MEMO: Final = 65536  # network prefixes whose text is remembered
_V6_KEY: Final = 1 << 129    # keeps IPv6 prefix numbers apart from IPv4 ones


class AddressFacts:
    """(address as int, IP version, prefix in CIDR form) for client address strings;
    ::ffff:a.b.c.d is an IPv4 reader on a dual-stack socket.

    No memo by address text: at 100,000 clients any bounded one misses nearly always and costs
    more than parsing (inet_pton); only the prefix texts are remembered, by number (bounded).
    """

    __slots__ = ("prefix_v4", "prefix_v6", "_v4_shift", "_v6_shift", "_prefixes")

    def __init__(self, prefix_v4: int = 24, prefix_v6: int = 64) -> None:
        self.prefix_v4, self.prefix_v6 = prefix_v4, prefix_v6
        self._v4_shift, self._v6_shift = 32 - prefix_v4, 128 - prefix_v6
        self._prefixes: Memo[int, str] = Memo(_PREFIX_MEMO)

    def __call__(self, client: str) -> tuple[int, int, str]:
        parsed = parse_ip(client)
        if parsed is None:
            return 0, 4, "invalid"
        return self.of_parsed(parsed[0], parsed[1])

    def of_parsed(self, version: int, ip: int) -> tuple[int, int, str]:
        """The same for an address already parsed (the edge hands it over when it has it)."""
        key = ip >> self._v4_shift if version == 4 else (ip >> self._v6_shift) | _V6_KEY
        prefix = self._prefixes.table.get(key, "")
        if not prefix:
            prefix = self._prefixes.put(key, prefix_text(  # bounded: botnets' networks
                version, ip, self.prefix_v4 if version == 4 else self.prefix_v6))
        return ip, version, prefix


def address_facts(client: str, prefix_v4: int = 24, prefix_v6: int = 64) -> tuple[int, int, str]:
    """`AddressFacts` for one address, without keeping its memo (tests, one-off reads)."""
    return AddressFacts(prefix_v4, prefix_v6)(client)
