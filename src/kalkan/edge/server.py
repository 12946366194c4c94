"""The public listener: one `HttpConnection` protocol per client socket, its limits and timeouts.

The connection parses bytes with httptools (llhttp), refuses ambiguous framing, keeps per-connection
state (timers, pipelining queue, flow control) apart from per-request state (`Request`), and hands
each request to the pipeline: synchronously when it can answer at once (a cache hit), as a task
otherwise. Timeouts are checked by one sweep per server instead of a timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from kalkan.config import Config
from kalkan.edge.client_address import (
    PROXY_HEADER_MAX,
    ProxyHeaderError,
    TrustedProxies,
    parse_proxy_header,
)
from kalkan.edge.request import BodyStream, Request
from kalkan.edge.responses import error_response

if TYPE_CHECKING:
    from kalkan.edge.pipeline import Pipeline
    from kalkan.edge.replay import Standing

_SWEEP_INTERVAL = 0.25
_SLICE = 4096  # bytes of request heads parsed at a time (see HttpConnection._parse)
_ALLOW = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"
_BODY_RATE_GRACE = 5.0
_LINGER_TIME = 2.0  # seconds input is still read (and dropped) after a last error response

try:  # Linux: bytes in a socket's send queue not yet acknowledged (SIOCOUTQ)
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - other systems: our buffer only
    _OUTQ = None

# Timer reasons, kept as small ints so the sweep compares cheaply.
_NONE, _HEADERS, _IDLE, _BODY, _LINGERING = 0, 1, 2, 3, 4


class Clock:
    """A coarse wall clock refreshed by the sweep, so the hot path never calls time()."""

    __slots__ = ("now", "mono")

    def __init__(self) -> None:
        self.now = time.time()
        self.mono = time.monotonic()

    def tick(self) -> None:
        self.now = time.time()
        self.mono = time.monotonic()


class BadRequest(Exception):
    """A request the edge will not interpret: answered with `status`, then the connection closed."""

    def __init__(self, status: int, detail: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


class _StopParsing(Exception):
    """Raised by a parser callback: input after a request that ends the connection is not read."""


class ConnectionGone(Exception):
    """The client closed its connection while we were still working for it."""


class HttpConnection(asyncio.Protocol):
    """Per-connection state and the parser callbacks; per-request state lives in `Request`."""

    # Slots: the parser callbacks touch these on every request, and past ~30 attributes a plain
    # instance dict stops sharing keys and every access gets slower.
    __slots__ = ("server", "pipeline", "limits", "clock", "scheme", "transport", "parser", "peer",
                 "client", "counted", "closed", "_req", "_url", "_header_bytes", "_in_head",
                 "_head_new", "_head_fed", "_head_limit", "_in_trailers", "_body_queued",
                 "_refused", "_queue", "_busy", "_task", "_read_paused_by", "_write_paused",
                 "_drain_waiter", "bytes_out", "_eof", "deadline", "deadline_kind",
                 "write_deadline", "_write_mark", "body_started", "body_base", "_proxy_buf",
                 "_chunk", "standing", "_stash", "_upgrade_body", "_synthetic", "_closing")

    def __init__(self, server: EdgeServer, scheme: str = "http") -> None:
        self.server = server
        self.pipeline = server.pipeline
        self.limits = server.config.limits
        self.clock = server.clock
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.client = ""
        self.counted = False
        self.closed = False
        # Per-request state being parsed right now.
        self._req: Request | None = None
        self._url = bytearray()
        self._header_bytes = 0
        # httptools buffers a header line until it ends (growing it by concatenation), so the
        # bytes of a head in progress are bounded before they reach it; see `data_received`.
        self._in_head = False
        self._head_new = False
        self._head_fed = 0
        self._head_limit = server.head_limit
        self._in_trailers = False  # fields now are chunked trailers: counted, never kept
        self._body_queued = False  # the request whose body is arriving was handed on
        self._refused = False  # input is no longer parsed (refused, upgraded, lingering)
        # Requests parsed but not yet answered, in order; the first may be in progress.
        self._queue: deque[Request] = deque()
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        # Flow control.
        self._read_paused_by: set[str] = set()
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.bytes_out = 0  # through `write`, i.e. by the slow path
        self._eof = False
        # Timers checked by the sweep.
        self.deadline = 0.0
        self.deadline_kind = _NONE
        self.write_deadline = 0.0
        self._write_mark = 0
        self.body_started = 0.0
        self.body_base = 0
        self._proxy_buf: bytes | None = b"" if server.config.client_address.proxy_protocol else None
        # The bytes of the last read, while they may still be exactly one request (see replay).
        self._chunk: bytes | None = None
        self.standing: Standing | None = None  # the defence's recent verdict on replayed bytes
        # Input not yet parsed because the pipelining queue is full (fed again as it drains).
        self._stash: bytes | None = None
        # A request that asked for an Upgrade and carries a body: its body is still to come.
        self._upgrade_body: Request | None = None
        self._synthetic = False  # parser callbacks now see our own stand-in head: ignore them
        self._closing = False  # a request said the connection ends after it

    # -- connection lifecycle -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        addr = peer[0] if peer else "unknown"  # an IPv4 reader on a dual-stack [::] listener
        self.peer = self.client = addr[7:] if addr.startswith("::ffff:") and "." in addr else addr
        self.deadline = self.clock.mono + self.limits.header_timeout
        self.deadline_kind = _HEADERS
        self.server.connections.add(self)
        if self._proxy_buf is None:
            self._admit()

    def _admit(self) -> None:
        """Apply the total and per-client connection limits once the client address is known."""
        if not self.server.admit(self.client):
            self.server.metrics.connections_refused += 1
            self.abort()
            return
        self.counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.counted:
            self.server.release(self.client)
            self.counted = False
        for req in self._queue:
            if req.body is not None and not req.body.done:
                req.body.fail(ConnectionGone())
        if self._req is not None and self._req.body is not None:
            self._req.body.fail(ConnectionGone())
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._wake_drain()

    def eof_received(self) -> bool | None:
        """The client half-closed: answer what it already asked for, then close."""
        req = self._req
        if req is not None and req.body is not None and not req.body.done:
            # A body cut off by the client's FIN can never be completed: end the request now,
            # so its origin connection and slot are freed at once, not after body_timeout.
            req.body.fail(ConnectionGone())
            return None
        if (self._busy or self._queue or self._stash) and self.deadline_kind != _LINGERING:
            self._eof = True
            return True  # keep the transport open for the answers (ignored under TLS)
        return None

    def _answer_and_close(self, data: bytes) -> None:
        """Send a last response and close without losing it to a reset.

        Closing a socket with unread input makes the kernel send RST, which can destroy the
        response before the client reads it (say, a refused upload still sending its body). So
        half-close, read and drop what still arrives for a moment, then close (lingering close).
        """
        transport = self.transport
        if transport is None or self.closed:
            return
        if data:
            transport.write(data)
        self._refused = True  # input is dropped unparsed from now on
        if not transport.can_write_eof():
            self.close()
            return
        transport.write_eof()
        self.deadline, self.deadline_kind = self.clock.mono + _LINGER_TIME, _LINGERING
        self._read_paused_by.clear()
        transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # -- flow control ---------------------------------------------------------------------------
    def pause_reading(self, why: str) -> None:
        if not self._read_paused_by and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._read_paused_by.add(why)

    def resume_reading(self, why: str) -> None:
        self._read_paused_by.discard(why)
        if not self._read_paused_by and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._write_paused = True
        self.write_deadline = self.clock.mono + self.limits.send_timeout
        self._write_mark = self._unsent()
        self.pause_reading("write")

    def resume_writing(self) -> None:
        self._write_paused = False
        self.write_deadline = 0.0
        self._wake_drain()
        self.resume_reading("write")

    def _unsent(self) -> int:
        """Bytes sent but not yet taken by the client: our buffer plus the kernel's send queue.

        Our buffer alone says little: it moves only once the kernel's (megabytes on a fast
        link) has drained by a third, so a steady slow reader would look stalled.
        """
        transport = self.transport
        if transport is None:
            return 0
        left = transport.get_write_buffer_size()
        sock = transport.get_extra_info("socket")
        if sock is not None and _OUTQ is not None:
            with contextlib.suppress(OSError, ValueError):
                left += int.from_bytes(fcntl.ioctl(sock.fileno(), _OUTQ, bytes(4)), sys.byteorder)
        return left

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def write(self, data: bytes) -> None:
        if self.closed or self.deadline_kind == _LINGERING:
            raise ConnectionGone()
        assert self.transport is not None
        self.bytes_out += len(data)
        self.transport.write(data)

    def send_now(self, buffers: tuple[bytes, ...]) -> None:
        """A whole answer written at once (hot path, replay): one vectored write."""
        if self.transport is not None and not self.closed:
            self.transport.writelines(buffers)

    async def drain(self) -> None:
        """Wait until the client has taken what we sent (bounded by send_timeout via the sweep)."""
        if self.closed:
            raise ConnectionGone()
        if not self._write_paused:
            return
        self._drain_waiter = asyncio.get_running_loop().create_future()
        await self._drain_waiter
        self._drain_waiter = None
        if self.closed:
            raise ConnectionGone()

    # -- bytes in -------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # refused, upgraded or lingering: the parser is done with this connection
        if self._proxy_buf is not None:
            data = self._read_proxy_header(data)
            if not data:
                return
        elif not self._busy and self._req is None and self.pipeline.replay(data, self):
            # The same bytes as an earlier request answered from cache: answered again, unparsed.
            self.deadline = self.clock.mono + self.limits.keepalive_timeout
            self.deadline_kind = _IDLE
            return
        self._chunk = data
        if self._stash is not None:
            self._stash += data  # the queue is full: parse in order once it drains
            return
        if not self._parse(data):
            return
        if self._in_head:
            # Count whole reads after the one that began this head: at most one read (256 KiB)
            # more than the limit is ever buffered, and body bytes before the head never count.
            if self._head_new:
                self._head_new = False
                self._head_fed = 0
            else:
                self._head_fed += len(data)
                if self._head_fed > self._head_limit:
                    self._refuse(431, "The request head is too large.")

    def _parse(self, data: bytes | memoryview) -> bool:
        """Feed the parser, in slices while requests pile up; False once the input is refused.

        llhttp parses everything it is given, so one read of many small pipelined requests would
        queue them all. Fed a slice at a time, parsing stops when the queue is full; the rest
        waits in `_stash` (reading paused) until answers drain it.
        """
        view = memoryview(data) if len(data) > _SLICE else None
        start = 0
        while True:
            if view is None:
                piece: bytes | memoryview = data
            else:
                end = start + self._slice_size()
                piece = view[start:end]
            if not self._feed(piece):
                return False
            if view is None:
                return True
            start += len(piece)
            if start >= len(data):
                return True
            if len(self._queue) > self.limits.max_pipelined and not self._refused:
                self._stash = bytes(view[start:])
                self.pause_reading("pipeline")
                return True
            if self._refused:
                return False

    def _slice_size(self) -> int:
        """A whole Content-Length body in one go (uploads stay fast); heads a slice at a time."""
        req = self._req
        if req is not None and req.body is not None and not self._in_head and not req.chunked \
                and req.content_length is not None:
            return max(_SLICE, req.content_length - req.body.received)
        return _SLICE

    def _feed(self, data: bytes | memoryview) -> bool:
        """One parser call, with its refusals; False if parsing must stop."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            req = self._upgrade_body
            if req is not None:
                # llhttp ends a message that asks for an Upgrade before its body (httptools
                # skips it). We ignore Upgrade, so the body is this request's: parse it.
                return self._parse_upgrade_body(req, data[exc.args[0]:])
            # After a request whose Upgrade we ignore (see on_headers_complete) llhttp parses
            # no more: that request is answered, then the connection closes.
            self._refused = True
            self.pause_reading("upgrade")
            return False
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised in HttpParserCallbackError.
            cause = exc.__context__
            if isinstance(cause, _StopParsing):
                self._refused = True
                self.pause_reading("upgrade")
            elif isinstance(cause, BadRequest):
                self._refuse(cause.status, cause.detail, cause.headers)
            else:
                self._refuse(400, f"Malformed request: {_parser_reason(exc)}.")
            return False
        except BadRequest as exc:
            self._refuse(exc.status, exc.detail, exc.headers)
            return False
        return True

    def _parse_upgrade_body(self, req: Request, rest: bytes | memoryview) -> bool:
        """Read the body of a request whose Upgrade was ignored, with llhttp's own framing.

        A fresh parser is primed with a stand-in head carrying the same framing; its callbacks
        are ignored until the body starts. The connection closes after this request, so nothing
        after the body is parsed (see `_StopParsing`).
        """
        self._upgrade_body = None
        self.parser = httptools.HttpRequestParser(self)
        framing = b"Transfer-Encoding: chunked" if req.chunked else \
            b"Content-Length: %d" % (req.content_length or 0)
        self._synthetic = True
        try:
            self.parser.feed_data(b"PUT / HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % framing)
        finally:
            self._synthetic = False
        self._req = req
        return self._feed(rest) if len(rest) else True

    def _read_proxy_header(self, data: bytes) -> bytes:
        assert self._proxy_buf is not None
        buf = self._proxy_buf + data
        try:
            header = parse_proxy_header(buf)
        except ProxyHeaderError as exc:
            self.server.metrics.bad_requests += 1
            self.server.log_refusal(self.peer, 400, str(exc))
            self.abort()
            return b""
        if header is None:
            if len(buf) > PROXY_HEADER_MAX:  # the parser refuses longer ones; belt and braces
                self.abort()
                return b""
            self._proxy_buf = buf
            return b""
        self._proxy_buf = None
        if header.client is not None:
            # The balancer only relays bytes: the address it reports is this connection's peer,
            # both for whose X-Forwarded-For to believe and for what the origin is told.
            self.peer = self.client = header.client
        self._admit()
        return b"" if self.closed else buf[header.consumed:]

    def _refuse(self, status: int, detail: str,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer a request we will not interpret, and close: nothing ambiguous goes upstream."""
        self._refused = True
        self._in_head = False
        self.server.metrics.bad_requests += 1
        self.server.log_refusal(self.client, status, detail)
        req = self._req
        if req is not None and req.body is not None:
            req.body.fail(BadRequest(status, detail))
        self.pause_reading("refused")
        if self._busy:
            # Let the response in progress finish; then close instead of answering more.
            self._queue.clear()
            self._queue.append(_Refusal(status, detail, extra))  # type: ignore[arg-type]
            return
        self._answer_and_close(error_response(status, detail, self.clock.now, extra=extra))

    # -- parser callbacks (per-request state) ---------------------------------------------------
    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        if self._closing:
            # The last request said the connection ends after it: what follows is not a request
            # of ours to interpret (and must never reach the origin as one).
            raise _StopParsing()
        req = Request()
        req.peer = self.peer
        req.client = self.client
        req.scheme = self.scheme
        self._req = req
        self._url.clear()
        self._header_bytes = 0
        self._in_head = self._head_new = True
        self._in_trailers = False
        # Every head gets its own deadline, also one that starts while an earlier pipelined
        # request is still being answered (else a slow head behind it would never time out).
        if self.deadline_kind != _HEADERS:
            self.deadline = self.clock.mono + self.limits.header_timeout
            self.deadline_kind = _HEADERS

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        self._url += url
        if len(self._url) > self.limits.max_request_line:
            raise BadRequest(414, "The request target is too long.")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._synthetic:
            return
        req = self._req
        assert req is not None
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            raise BadRequest(431, "The request headers are too large.")
        if self._in_trailers:
            return  # chunked trailer fields: counted above, never forwarded nor believed
        if len(req.headers) >= self.limits.max_headers:
            raise BadRequest(431, "The request has too many header fields.")
        if b"\x00" in value or b"\r" in value or b"\n" in value:
            raise BadRequest(400, "A header value contains NUL, CR or LF.")
        req.headers.append((name, value))
        lname = name.lower()
        if lname in _NOTED_FIELDS:
            # llhttp strips the whitespace before a value but keeps the whitespace after it,
            # which is no part of the value either (RFC 9110 §5.5).
            _note_field(req, lname, value.rstrip(b" \t"))

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        req = self._req
        assert req is not None
        self._in_head = False
        self._in_trailers = True
        parser = self.parser
        req.method = parser.get_method().decode("ascii")
        req.version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        req.started = time.monotonic()
        target = bytes(self._url)
        req.target = target
        if req.version not in ("1.1", "1.0"):
            raise BadRequest(505, "Only HTTP/1.0 and HTTP/1.1 are spoken here.")
        if req.method == "CONNECT":
            raise BadRequest(501, "CONNECT is not supported by this edge.")
        if req.method in ("TRACE", "TRACK"):
            # Echoing requests helps cross-site tracing; no news site needs it (nginx: 405).
            raise BadRequest(405, "TRACE is not allowed here.", [(b"Allow", _ALLOW)])
        _check_framing(req, self.limits.max_body_bytes)
        if req.connection is not None:
            _drop_connection_listed(req)
        if parser.should_upgrade():
            # No WebSocket or h2c here. A server may ignore Upgrade (RFC 9110 §7.8): answer as
            # plain HTTP (the pipeline drops the hop-by-hop fields), then close. llhttp ends the
            # message here, before any body: `_feed` then reads the body itself.
            req.keep_alive = False
            if req.content_length or req.chunked:
                self._upgrade_body = req
        if target[:1] == b"/" and b"#" not in target:
            path, _, query = target.partition(b"?")
            req.path = path.decode("latin-1")
            req.query = query.decode("latin-1")
        elif target == b"*" and req.method == "OPTIONS":
            req.path = "*"
        else:
            raise BadRequest(400, "Only origin-form request targets (/path) are accepted.")
        if self.server.trusted and self.server.trusted.trusts(self.peer):
            req.client = self.server.trusted.client_from_xff(self.client,
                                                            req.header_str(b"x-forwarded-for"))
        if req.content_length or req.chunked:
            req.body = BodyStream(lambda: self.pause_reading("body"),
                                  lambda: self.resume_reading("body"))
            self.deadline = self.clock.mono + self.limits.body_timeout
            self.deadline_kind = _BODY
            self.body_started = self.clock.mono
            self.body_base = 0
            # Ask the origin only once the body has begun and its first bytes framed correctly
            # (a bad first chunk never reaches it), unless the client waits for 100 Continue.
            self._body_queued = req.expect_continue
            if req.expect_continue:
                self._enqueue(req)
        else:
            self.deadline = 0.0
            self.deadline_kind = _NONE

    def on_chunk_header(self) -> None:
        # After the last chunk come trailer fields, which httptools buffers like a head.
        self._in_head = self._head_new = True

    def on_body(self, body: bytes) -> None:
        self._in_head = False
        req = self._req
        assert req is not None and req.body is not None
        if req.body.received + len(body) > self.limits.max_body_bytes:
            raise BadRequest(413, "The request body is larger than this site accepts.")
        self.deadline = self.clock.mono + self.limits.body_timeout
        req.body.feed(body)
        if not self._body_queued:
            self._body_queued = True
            self._enqueue(req)

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        if req is self._upgrade_body:
            return  # ended early by llhttp: the body follows (see `_parse_upgrade_body`)
        if not req.keep_alive:
            self._closing = True
        self._req = None
        self._in_head = False
        if req.body is not None:
            req.body.finish()
            self.deadline = 0.0
            self.deadline_kind = _NONE
            if self._body_queued:
                return
        self._enqueue(req)

    # -- dispatch -------------------------------------------------------------------------------
    def _enqueue(self, req: Request) -> None:
        if self._busy:
            queue = self._queue
            queue.append(req)
            if len(queue) > self.limits.max_pipelined:
                self.pause_reading("pipeline")
                # Input is parsed a slice at a time (`_parse`), so the queue can only pass the
                # limit by what one slice holds; this is the backstop.
                if len(queue) > self.limits.max_pipelined + _SLICE // 8:
                    raise BadRequest(400, "Too many pipelined requests.")
            return
        self._dispatch(req)

    def _dispatch(self, req: Request) -> None:
        # While the client is not taking what we send, even hits wait their turn in `_run`:
        # answering pipelined hits at once would pile them all up in our send buffer.
        data = self.pipeline.respond_now(req) if req.body is None and not self._write_paused \
            else None
        if data is not None:
            self.transport.writelines(data)  # type: ignore[union-attr]
            if self._chunk is not None:
                self.pipeline.remember(self._chunk, req)
                self._chunk = None
            self._finished(req)
            return
        self._chunk = None
        self._busy = True
        if self.deadline_kind == _IDLE:
            self.deadline, self.deadline_kind = 0.0, _NONE
        self._task = asyncio.get_running_loop().create_task(self._run(req))

    async def _run(self, req: Request) -> None:
        sent = self.bytes_out
        try:
            if req.body is not None and req.body.error is not None:
                raise req.body.error  # broken in the read that queued it: the origin never knew
            if self._write_paused:
                await self.drain()
            if req.expect_continue:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                sent = self.bytes_out
                if self._req is req:  # the body starts only now: so do its clocks
                    self.deadline = self.clock.mono + self.limits.body_timeout
                    self.body_started, self.body_base = self.clock.mono, 0
            await self.pipeline.respond(req, self)
            if req.body is not None and not req.body.done:
                # The pipeline answered without reading the whole body (e.g. a refusal).
                req.keep_alive = False
        except ConnectionGone:
            self.abort()
            return
        except BadRequest as exc:
            # The body broke a limit while the pipeline read it (already refused and logged).
            if self.bytes_out == sent:
                self._answer_and_close(error_response(exc.status, exc.detail, self.clock.now))
            else:
                self.abort()
            return
        except asyncio.CancelledError:
            self.abort()
            raise
        except Exception as exc:  # a bug must cost one connection, never the edge
            self.server.log_error(req, exc)
            self.abort()
            return
        finally:
            self._busy = False
            self._task = None
        self._finished(req)
        # Once the connection is closing (lingering after a last answer), nothing queued behind
        # is dispatched: it would reach the origin with nobody to answer.
        while self._queue and not self._busy and not self.closed \
                and self.deadline_kind != _LINGERING:
            nxt = self._queue.popleft()
            if isinstance(nxt, _Refusal):
                self._answer_and_close(error_response(nxt.status, nxt.detail, self.clock.now,
                                                      extra=nxt.headers))
                return
            self._dispatch(nxt)
            if len(self._queue) <= self.limits.max_pipelined // 2:
                self._drain_stash()

    def _drain_stash(self) -> None:
        """The queue has room again: parse the input held back, then read more."""
        stash = self._stash
        if stash is not None:
            self._stash = None
            if not self._parse(stash) or self._stash is not None:
                return  # refused, or the queue filled again
        self.resume_reading("pipeline")

    def _finished(self, req: Request) -> None:
        if not req.keep_alive or (self._eof and not self._queue and self._stash is None):
            if req.body is not None and not req.body.done:
                self._answer_and_close(b"")  # unread body: a plain close could RST the answer
            else:
                self.close()
        elif not self._busy and self._req is None and not self._queue \
                and self.deadline_kind == _NONE:
            self.deadline = self.clock.mono + self.limits.keepalive_timeout
            self.deadline_kind = _IDLE

    # -- timeouts (called by the sweep) ---------------------------------------------------------
    def check_timers(self, mono: float) -> None:
        if self.write_deadline and mono > self.write_deadline:
            # A client that takes our bytes, however slowly, is reading: only one that took
            # nothing for a whole send_timeout is cut off.
            left = self._unsent()
            if left >= self._write_mark:
                self.server.metrics.timeouts["send"] += 1
                self.abort()
                return
            self._write_mark = left
            self.write_deadline = mono + self.limits.send_timeout
        kind = self.deadline_kind
        if self._read_paused_by and kind in (_HEADERS, _BODY):
            # We stopped reading (back-pressure, a full pipeline): the client cannot be late.
            self.deadline = mono + (self.limits.header_timeout if kind == _HEADERS
                                    else self.limits.body_timeout)
            req = self._req
            if req is not None and req.body is not None:
                self.body_started, self.body_base = mono, req.body.received
            return
        if kind == _BODY and mono - self.body_started > _BODY_RATE_GRACE:
            req = self._req
            if req is not None and req.body is not None:
                rate = (req.body.received - self.body_base) / (mono - self.body_started)
                if rate < self.limits.body_min_rate:
                    self.server.metrics.timeouts["body_rate"] += 1
                    self._timeout(408, "The request body arrived too slowly.")
                    return
        if self.deadline and mono > self.deadline:
            kind = self.deadline_kind
            if kind == _IDLE:
                self.server.metrics.timeouts["keepalive"] += 1
                self.close()
            elif kind == _HEADERS:
                self.server.metrics.timeouts["headers"] += 1
                self._timeout(408, "The request headers did not arrive in time.")
            elif kind == _BODY:
                self.server.metrics.timeouts["body"] += 1
                self._timeout(408, "The request body stopped arriving.")
            elif kind == _LINGERING:
                self.abort()

    def _timeout(self, status: int, detail: str) -> None:
        self.deadline = 0.0
        self.deadline_kind = _NONE
        if self._req is not None and self._req.body is not None:
            self._req.body.fail(BadRequest(status, detail))
        if self._busy or self.closed or self.transport is None:
            self.abort()
            return
        if self._req is not None or self._url:
            self.server.log_refusal(self.client, status, detail)
            self._answer_and_close(error_response(status, detail, self.clock.now))
        else:
            self.abort()


class _Refusal:
    """Stands in the pipelining queue for an answer owed once the one in progress is sent."""

    __slots__ = ("status", "detail", "headers")
    body = None  # looked at like a queued Request's when the connection is lost

    def __init__(self, status: int, detail: str,
                 headers: list[tuple[bytes, bytes]] | None) -> None:
        self.status = status
        self.detail = detail
        self.headers = headers


_NOTED_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"host", b"expect",
                           b"if-none-match", b"if-modified-since", b"authorization", b"cookie",
                           b"connection"})
# unreserved / sub-delims / pct-encoded of a reg-name, plus ":" and "[]" for ports and IPv6.
_HOST_CHARS = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               b"-._~!$&'()*+,;=%:[]")
# Host values seen lately → (canonical name, port or None); bounded, any client can send any Host.
_HOSTS: dict[bytes, tuple[str, int | None]] = {}
_DEFAULT_PORT = {"http": 80, "https": 443}
# Fields a Connection header may not make us drop: the edge frames and routes by them itself.
_NOT_HOP_BY_HOP = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})


def canonical_host(value: bytes) -> tuple[str, int | None]:
    """RFC 3986 host [":" port] → (lowercase name without a trailing dot, port); BadRequest if
    it is not one. The cache key and the Host sent to the origin are both built from this, so
    `NEWS.TEST`, `news.test.` and `news.test:80` are one site, fetched as one site."""
    known = _HOSTS.get(value)
    if known is not None:
        return known
    # A Host with "/", "@", spaces... would make the cache key, redirects and the origin's
    # virtual host disagree about which site this is.
    if not value or value.translate(None, _HOST_CHARS):
        raise BadRequest(400, "Invalid Host header.")
    text = value.decode("ascii").lower()
    if text.startswith("["):  # an IPv6 literal
        end = text.find("]")
        name, rest = text[:end + 1], text[end + 1:]
        if end < 2 or (rest and not rest.startswith(":")):
            raise BadRequest(400, "Invalid Host header.")
    else:
        name, sep, rest = text.partition(":")
        rest = sep + rest
        if name.endswith("."):
            name = name[:-1]  # the absolute form of a DNS name is the same site
        if not name or name.startswith(".") or ".." in name:
            raise BadRequest(400, "Invalid Host header.")
    port: int | None = None
    digits = rest[1:]
    if digits:  # "host:" (an empty port) is allowed by RFC 3986 and means the default
        if not digits.isdigit() or len(digits) > 5 or not 0 < int(digits) < 65536:
            raise BadRequest(400, "Invalid port in the Host header.")
        port = int(digits)
    if len(_HOSTS) >= 1024:
        _HOSTS.clear()
    _HOSTS[value] = result = (name, port)
    return result


def _note_field(req: Request, name: bytes, value: bytes) -> None:
    """Remember the fields that framing and the cache decide on, as the parser hands them over."""
    if name == b"content-length":
        req.length_fields += 1
        if not value.isdigit() or len(value) > 18:
            raise BadRequest(400, "Invalid Content-Length.")
        req.content_length = int(value)
    elif name == b"transfer-encoding":
        te = req.transfer_encoding
        req.transfer_encoding = value if te is None else te + b"," + value
    elif name == b"host":
        req.host_fields += 1
        host, port = canonical_host(value)
        req.host = host if port is None or port == _DEFAULT_PORT.get(req.scheme) \
            else f"{host}:{port}"
    elif name == b"expect":
        if value.lower() != b"100-continue":
            raise BadRequest(417, "Only 'Expect: 100-continue' is understood.")
        req.expect_continue = True
    elif name == b"authorization":
        req.authorization = True
    elif name == b"cookie":
        req.cookie = value if req.cookie is None else req.cookie + b"; " + value
    elif name == b"connection":
        req.connection = value if req.connection is None else req.connection + b"," + value
    else:
        req.conditional = True


def _drop_connection_listed(req: Request) -> None:
    """Remove the fields the Connection header names (RFC 9110 §7.6.1), before anything reads
    them: the origin never sees them, so the cache key, Vary and the session check must not
    either (else a variant fetched without `Accept-Language` is stored as the `ru` one)."""
    assert req.connection is not None
    names = {t.strip().lower() for t in req.connection.split(b",")} - _NOT_HOP_BY_HOP
    names.discard(b"")
    if not names:
        return
    req.headers = [(k, v) for k, v in req.headers if k.lower() not in names]
    if b"cookie" in names:
        req.cookie = None
    if b"authorization" in names:
        req.authorization = False
    if names & {b"if-none-match", b"if-modified-since"}:
        req.conditional = any(k.lower() in (b"if-none-match", b"if-modified-since")
                              for k, _ in req.headers)


def _check_framing(req: Request, max_body: int) -> None:
    """Refuse any framing two parsers could read differently (RFC 9112 §6.3, smuggling)."""
    if req.length_fields > 1:
        raise BadRequest(400, "More than one Content-Length.")
    te = req.transfer_encoding
    if te is not None:
        if req.length_fields:
            raise BadRequest(400, "Both Content-Length and Transfer-Encoding.")
        if req.version == "1.0":  # RFC 9112 §6.1: HTTP/1.0 had no chunking; treat as faulty
            raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request.")
        if te.strip().lower() != b"chunked":
            raise BadRequest(400, "Only 'Transfer-Encoding: chunked' is accepted.")
        req.chunked = True
    if req.host_fields > 1:
        raise BadRequest(400, "More than one Host header.")
    if req.host_fields == 0 and req.version == "1.1":
        raise BadRequest(400, "An HTTP/1.1 request needs a Host header.")
    if req.content_length is not None and req.content_length > max_body:
        raise BadRequest(413, "The request body is larger than this site accepts.")
    if req.content_length == 0:
        req.content_length = None
    if req.expect_continue and not (req.content_length or req.chunked):
        req.expect_continue = False


def _parser_reason(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text[:120]


class EdgeServer:
    """Owns the listeners, the set of open connections and the per-client connection counts."""

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        self.config = config
        self.pipeline = pipeline
        self.metrics = pipeline.metrics
        self.clock: Clock = pipeline.clock
        self.connections: set[HttpConnection] = set()
        self.per_client: dict[str, int] = {}
        self.open = 0
        self.trusted = TrustedProxies(config.client_address.trusted_proxies)
        self.servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.log_refusal: Callable[[str, int, str], None] = pipeline.log_refusal
        self.log_error: Callable[[Request, BaseException], None] = pipeline.log_error
        limits = config.limits
        # Bytes a request head may take before httptools must have handed it over complete.
        self.head_limit = limits.max_request_line + limits.max_header_bytes + 4096
        # Every listener of this pipeline (the HTTPS one and the redirect one) adds its own.
        counted = self.metrics.open_connections
        self.metrics.open_connections = lambda: counted() + self.open

    def admit(self, client: str) -> bool:
        limits = self.config.limits
        if self.open >= limits.max_connections:
            return False
        n = self.per_client.get(client, 0)
        if n >= limits.max_connections_per_client:
            return False
        self.per_client[client] = n + 1
        self.open += 1
        return True

    def release(self, client: str) -> None:
        self.open -= 1
        n = self.per_client.get(client, 1) - 1
        if n <= 0:
            self.per_client.pop(client, None)
        else:
            self.per_client[client] = n

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                     protocol: Callable[[], asyncio.Protocol] | None = None) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        scheme = "https" if ssl_context is not None else "http"
        factory = protocol or (lambda: HttpConnection(self, scheme))
        # A TLS connection reaches our protocol only once its handshake is done, so the header
        # timeout must bound the handshake itself (asyncio's default allows 60 s).
        tls_timeout = self.config.limits.header_timeout if ssl_context is not None else None
        if host == "::":
            import socket  # only the dual-stack branch needs it

            # `[::]` means every address, IPv4 too; asyncio would make it IPv6-only, so the
            # socket is made here with IPV6_V6ONLY off (IPv4 peers arrive as ::ffff:a.b.c.d).
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            server = await loop.create_server(factory, sock=sock, ssl=ssl_context, backlog=4096,
                                              ssl_handshake_timeout=tls_timeout)
        else:
            server = await loop.create_server(factory, host, port, ssl=ssl_context, backlog=4096,
                                              reuse_address=True,
                                              ssl_handshake_timeout=tls_timeout)
        self.servers.append(server)
        if self._sweeper is None:
            self._sweep()
        sock = server.sockets[0].getsockname()
        return sock[0], sock[1]

    def _sweep(self) -> None:
        self.clock.tick()
        mono = self.clock.mono
        for conn in list(self.connections):
            if conn.deadline or conn.write_deadline:
                conn.check_timers(mono)
        self.pipeline.tick()
        self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_INTERVAL, self._sweep)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish for up to `grace` seconds, then close."""
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            if not conn._busy:
                conn.close()
        deadline = time.monotonic() + grace
        while any(c._busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
