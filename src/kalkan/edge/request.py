"""One client request as the edge sees it, and the bounded stream its body arrives through."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kalkan.edge.chunks import ChunkQueue

if TYPE_CHECKING:
    from kalkan.defense.verdict import Verdict
    from kalkan.edge.body_files import BodyFile


class BodyStream(ChunkQueue):
    """A request body from the parser to the pipeline; past `high_water` bytes waiting, the
    socket is no longer read until the consumer has drained below half of that."""

    __slots__ = ()

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None],
                 high_water: int = 256 * 1024,
                 on_take: Callable[[int], None] | None = None) -> None:
        super().__init__(pause, resume, high_water, high_water // 2, on_take)


class Request:
    """A parsed request head plus where it came from; the body, if any, streams behind it."""

    __slots__ = ("method", "target", "path", "query", "headers", "host", "client", "peer",
                 "version", "keep_alive", "body", "content_length", "chunked", "started",
                 "scheme", "expect_continue", "decision", "key", "cache_target", "conditional",
                 "authorization", "cookie", "length_fields", "transfer_encoding", "host_fields",
                 "has_pass", "prefetched_body", "verdict", "connection", "user_agent",
                 "xff", "referer", "client_ip", "body_file")

    def __init__(self) -> None:
        self.method = "GET"
        self.target = b""
        self.path = "/"
        self.query = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host = ""
        self.client = ""
        self.peer = ""
        self.version = "1.1"
        self.keep_alive = True
        self.body: BodyStream | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.started = 0.0
        self.scheme = "http"
        self.expect_continue = False
        self.decision = ""
        self.key = ""                 # cache key, once computed
        self.cache_target = ""        # normalized target fetched for the cache
        self.conditional = False      # has If-None-Match / If-Modified-Since
        self.authorization = False
        self.cookie: bytes | None = None
        self.length_fields = 0
        self.transfer_encoding: bytes | None = None
        self.host_fields = 0
        self.has_pass = False
        self.prefetched_body: bytes | None = None
        self.verdict: Verdict | None = None   # a decision taken on the hot path (the tarpit)
        self.connection: bytes | None = None  # the Connection field's tokens, comma-joined
        self.user_agent: bytes | None = None  # noted as parsed: the defence reads it every time
        self.xff: bytes | None = None         # X-Forwarded-For, noted as parsed
        self.referer: bytes | None = None     # noted for the access log
        # The client's address parsed ((version, int), addresses.parse_ip) where the edge has
        # it (per connection, or the X-Forwarded-For hop); None: the defence parses `client`.
        self.client_ip: tuple[int, int] | None = None
        # Where a hit's body may be sent from without a copy (set by the pipeline's hot path).
        self.body_file: BodyFile | None = None

    def clone_for(self, client: str, peer: str) -> Request:
        """The same request from another connection (the replay path): parsed fields shared."""
        other = Request()
        for name in ("method", "target", "path", "query", "headers", "host", "version",
                     "keep_alive", "scheme", "key", "cache_target", "conditional",
                     "authorization", "cookie", "user_agent", "xff", "referer"):
            setattr(other, name, getattr(self, name))
        other.client = client
        other.peer = peer
        return other

    def header(self, name: bytes) -> bytes | None:
        """First value of a header field; `name` must be lowercase."""
        for k, v in self.headers:
            if len(k) == len(name) and k.lower() == name:
                return v
        return None

    def header_dict(self) -> dict[str, str]:
        """Lowercase names, repeated fields combined with ", " (RFC 9110 §5.3)."""
        out: dict[str, str] = {}
        for k, v in self.headers:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out
