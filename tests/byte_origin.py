"""A byte-logging test origin: every raw byte it receives, per connection, and what it parsed.

`ByteOrigin` is an asyncio server on 127.0.0.1 that keeps the exact bytes of each connection,
parses requests with httptools, and answers each with a small response chosen by a responder
(default: one that names the request's target and a unique serial). It closes connections that
stay idle for `idle_timeout` seconds, as Apache's KeepAliveTimeout does, so a request left
waiting for body bytes is visible: it is still open (or was ended by the idle timer) with a
message begun and never completed.

`answer_early` answers as soon as a request's head has arrived, before its body, as Apache does
for static files and redirects; the body is then read and dropped by its own framing. That is
the origin that makes a proxy's framing mistakes hurt: a body the proxy announced but did not
send is taken from the next request on the connection.

Used by the framing fuzzer and the cache-poisoning matrix (tests/integration), and reusable by
any test that needs to know exactly what reached the origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

ORIGIN_TARGET = "X-Origin-Target"  # the response field naming the request it answers
ORIGIN_SERIAL = "X-Origin-Serial"  # unique over the origin's life, so copies can be traced


@dataclass
class OriginRequest:
    """One request as the origin parsed it (body only so far, when answered early)."""

    conn_id: int
    serial: int
    method: str = ""
    target: str = ""
    version: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False
    answered: bool = False

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Reply:
    """What the responder wants sent for one request."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    close: bool = False


Responder = Callable[[OriginRequest], Reply]


@dataclass
class OriginConnection:
    """The raw bytes one connection brought and what the origin made of them."""

    id: int
    raw: bytearray = field(default_factory=bytearray)
    requests: list[OriginRequest] = field(default_factory=list)
    closed_by: str | None = None  # "peer", "idle", "error", "reply" or "stop"; None while open
    parse_error: str | None = None
    upgrade: bool = False  # a request asked to switch protocols (a proxy should never pass it)

    @property
    def partial(self) -> OriginRequest | None:
        """The request begun and never completed (the origin waits for its head or body)."""
        if self.requests and not self.requests[-1].complete:
            return self.requests[-1]
        return None

    @property
    def left_waiting(self) -> bool:
        """A request is unfinished and nobody but the origin's own idle timer ended it."""
        return self.partial is not None and self.closed_by in (None, "idle")


class _Protocol(asyncio.Protocol):
    def __init__(self, origin: ByteOrigin, record: OriginConnection) -> None:
        self.origin = origin
        self.record = record
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.current: OriginRequest | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False

    # -- connection -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.origin.protocols.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.record.closed_by is None:
            self.record.closed_by = "peer"
        if self.timer is not None:
            self.timer.cancel()
        self.origin.protocols.discard(self)

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.origin.idle_timeout, self._idle)

    def _idle(self) -> None:
        self.close("idle")

    def close(self, why: str) -> None:
        if self.record.closed_by is None:
            self.record.closed_by = why
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- bytes in ---------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.record.raw += data
        self._arm()  # like KeepAliveTimeout / Timeout: idle means no bytes for a while
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # httptools skips the body of a request that asks to upgrade; an origin that does
            # not upgrade would read it. Either way a proxy must never pass Upgrade on.
            self.record.upgrade = True
            self._fail("upgrade request")
        except httptools.HttpParserError as exc:
            self._fail(str(exc) or type(exc).__name__)

    def _fail(self, why: str) -> None:
        self.record.parse_error = why
        self._send(Reply(400, [(ORIGIN_TARGET, "!parse-error")], b"bad request\n", close=True),
                   None)
        self.close("error")

    # -- parser callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        req = OriginRequest(self.record.id, next(self.origin.serials))
        self.current = req
        self.record.requests.append(req)

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        req.method = self.parser.get_method().decode("latin-1")
        req.version = self.parser.get_http_version()
        self.origin.requests.append(req)
        if self.origin.answer_early:
            self._answer(req)

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        req = self.current
        assert req is not None
        req.complete = True
        self.current = None
        if not req.answered:
            self._answer(req)

    # -- bytes out ------------------------------------------------------------------------------
    def _answer(self, req: OriginRequest) -> None:
        req.answered = True
        reply = self.origin.responder(req)
        keep = self.parser.should_keep_alive() and not reply.close
        self._send(reply, req)
        if not keep:
            self.close("reply")

    def _send(self, reply: Reply, req: OriginRequest | None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in reply.headers]
        lines.append(f"Content-Length: {len(reply.body)}")
        if reply.close or (req is not None and not self.parser.should_keep_alive()):
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        head_only = (req is not None and req.method == "HEAD") or reply.status in (204, 304)
        self.transport.write(head if head_only else head + reply.body)


_REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found",
            304: "Not Modified", 400: "Bad Request", 404: "Not Found", 500: "Internal Error"}


class ByteOrigin:
    """The server: `start()`, then read `connections` / `requests`; `stop()` takes it down."""

    def __init__(self, responder: Responder | None = None, *, idle_timeout: float = 1.0,
                 answer_early: bool = False, cache_control: str | None = "no-store") -> None:
        self.responder: Responder = responder or self.naming_reply
        self.idle_timeout = idle_timeout
        self.answer_early = answer_early
        self.cache_control = cache_control  # for the default responder; None: no field at all
        self.connections: list[OriginConnection] = []
        self.requests: list[OriginRequest] = []  # every request whose head arrived, in order
        self.protocols: set[_Protocol] = set()
        self.serials = itertools.count(1)
        self._conn_ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> ByteOrigin:
        """Listen on 127.0.0.1:`port` (0: any; pass the old port to come back after `stop`)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _protocol(self) -> _Protocol:
        record = OriginConnection(next(self._conn_ids))
        self.connections.append(record)
        return _Protocol(self, record)

    async def stop(self) -> None:
        """Go down: close the listener and every open connection (new connects are refused)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for proto in list(self.protocols):
            proto.close("stop")
        await asyncio.sleep(0)

    def naming_reply(self, req: OriginRequest) -> Reply:
        """A small text answer that names the request's method, target and serial."""
        headers = [("Content-Type", "text/plain"), (ORIGIN_TARGET, req.target),
                   (ORIGIN_SERIAL, str(req.serial))]
        if self.cache_control is not None:
            headers.append(("Cache-Control", self.cache_control))
        return Reply(200, headers, f"{req.serial} {req.method} {req.target}\n".encode("latin-1"))

    # -- what the tests look at -----------------------------------------------------------------
    def left_waiting(self) -> list[OriginConnection]:
        return [c for c in self.connections if c.left_waiting]

    def open_connections(self) -> list[OriginConnection]:
        return [c for c in self.connections if c.closed_by is None]

    def describe(self, conn: OriginConnection) -> str:
        """One connection's bytes and parse, for a failure message."""
        reqs = ", ".join(f"#{r.serial} {r.method} {r.target}{'' if r.complete else ' (partial)'}"
                         for r in conn.requests)
        return (f"origin connection {conn.id} (closed by {conn.closed_by}, error "
                f"{conn.parse_error}): requests [{reqs}]; raw bytes {bytes(conn.raw)!r}")
