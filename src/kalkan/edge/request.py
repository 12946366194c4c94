"""One client request as the edge sees it, and the bounded stream its body arrives through."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kalkan.defense.verdict import Verdict


class BodyStream:
    """Request-body chunks from the parser to the pipeline, with back-pressure on the socket.

    The parser pushes; when more than `high_water` bytes wait, `pause` stops reading the socket, and
    `resume` restarts it once the consumer has drained below half of that.
    """

    __slots__ = ("_chunks", "_buffered", "_done", "_waiter", "_pause", "_resume", "_paused",
                 "high_water", "received", "error")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None],
                 high_water: int = 256 * 1024) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume
        self._paused = False
        self.high_water = high_water
        self.received = 0
        self.error: Exception | None = None

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self.received += len(chunk)
        if self._buffered > self.high_water and not self._paused:
            self._paused = True
            self._pause()
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, exc: Exception) -> None:
        self.error = exc
        self._done = True
        self._wake()

    @property
    def done(self) -> bool:
        return self._done and not self._chunks

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """The next chunk, or b"" at the end of the body; raises if the client went away."""
        while not self._chunks:
            if self._done:
                if self.error is not None:
                    raise self.error
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= self.high_water // 2:
            self._paused = False
            self._resume()
        return chunk

    async def drain(self) -> None:
        """Read and drop the rest of the body (so the connection can be reused)."""
        while await self.read():
            pass


class Request:
    """A parsed request head plus where it came from; the body, if any, streams behind it."""

    __slots__ = ("method", "target", "path", "query", "headers", "host", "client", "peer",
                 "version", "keep_alive", "body", "content_length", "chunked", "started",
                 "scheme", "expect_continue", "decision", "key", "cache_target", "conditional",
                 "authorization", "cookie", "length_fields", "transfer_encoding", "host_fields",
                 "has_pass", "prefetched_body", "verdict", "connection")

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

    def clone_for(self, client: str, peer: str) -> Request:
        """The same request from another connection (the replay path): parsed fields shared."""
        other = Request()
        for name in ("method", "target", "path", "query", "headers", "host", "version",
                     "keep_alive", "scheme", "key", "cache_target", "conditional",
                     "authorization", "cookie"):
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

    def header_str(self, name: bytes) -> str | None:
        v = self.header(name)
        return None if v is None else v.decode("latin-1")

    def header_dict(self) -> dict[str, str]:
        """Lowercase names, repeated fields combined with ", " (RFC 9110 §5.3)."""
        out: dict[str, str] = {}
        for k, v in self.headers:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out
