"""What the defence knows about one request: who sent it (address, prefix) and what it asks for.

Built once per request by the pipeline from the parsed request, then read by every check (the
policy rules, the client table, the challenge). Route classes are decided here too.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field

# Route classes: the kinds of request the policy and the rate counters tell apart.
PAGE, ASSET, FEED, SEARCH, FORM, LOGIN, ADMIN, CHALLENGE, WELLKNOWN = (
    "page", "asset", "feed", "search", "form", "login", "admin", "challenge", "wellknown")
ROUTE_CLASSES = (PAGE, ASSET, FEED, SEARCH, FORM, LOGIN, ADMIN, CHALLENGE, WELLKNOWN)

CHALLENGE_PREFIX = "/.kalkan/"  # the edge's own endpoints (challenge pages, verification)

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
    """Maps a request to its route class with ordered globs; memoized per path (bounded)."""

    def __init__(self, routes: tuple[tuple[str, str], ...] = DEFAULT_ROUTES) -> None:
        for _, cls in routes:
            if cls not in ROUTE_CLASSES:
                raise ValueError(f"unknown route class {cls!r} (one of {', '.join(ROUTE_CLASSES)})")
        self._patterns = [(re.compile(fnmatch.translate(g)), cls) for g, cls in routes]
        self._memo: dict[str, str] = {}

    def classify(self, method: str, path: str, query: str) -> str:
        if method == "POST" and not path.startswith(CHALLENGE_PREFIX):
            cls = self._by_path(path)
            return cls if cls in (LOGIN, FORM, ADMIN, SEARCH) else FORM
        if query and ("s=" in query and _has_param(query, "s")):
            return SEARCH  # WordPress search: /?s=words
        return self._by_path(path)

    def _by_path(self, path: str) -> str:
        cls = self._memo.get(path)
        if cls is None:
            cls = PAGE
            for pattern, c in self._patterns:
                if pattern.match(path):
                    cls = c
                    break
            if len(self._memo) > 16384:
                self._memo.clear()  # random paths in a flood must not grow this
            self._memo[path] = cls
        return cls


def _has_param(query: str, name: str) -> bool:
    return any(part.split("=", 1)[0] == name for part in query.split("&"))


@dataclass(slots=True)
class RequestFacts:
    """The request as the defence sees it; `prefix` is the client's /24 (IPv4) or /64 (IPv6)."""

    method: str
    host: str
    path: str
    query: str
    route: str
    client: str
    ip: int
    version: int            # 4 or 6
    prefix: str             # e.g. "203.0.113.0/24" or "2001:db8:1:2::/64"
    user_agent: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    cookie: bytes | None = None

    def header(self, name: bytes) -> bytes | None:
        """First value of a header field; `name` lowercase."""
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def address_facts(client: str, prefix_v4: int = 24, prefix_v6: int = 64) -> tuple[int, int, str]:
    """(address as int, IP version, prefix in CIDR form) for a client address string."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return 0, 4, "invalid"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:a.b.c.d is an IPv4 reader on a dual-stack socket
    bits = prefix_v4 if ip.version == 4 else prefix_v6
    net = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
    return int(ip), ip.version, str(net)
