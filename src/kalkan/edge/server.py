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
    from kalkan.edge.pipeline import Pipeline, _Standing

_SWEEP_INTERVAL = 0.25
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

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


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
                 "_chunk", "standing")

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
        self.standing: _Standing | None = None  # the defence's recent verdict on replayed bytes

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
        if (self._busy or self._queue) and self.deadline_kind != _LINGERING:
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
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # After a request whose Upgrade we ignore (see on_headers_complete) llhttp parses
            # no more: that request is answered, then the connection closes.
            self._refused = True
            self.pause_reading("upgrade")
            return
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised in HttpParserCallbackError.
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                self._refuse(cause.status, cause.detail)
            else:
                self._refuse(400, f"Malformed request: {_parser_reason(exc)}.")
            return
        except BadRequest as exc:
            self._refuse(exc.status, exc.detail)
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

    def _refuse(self, status: int, detail: str) -> None:
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
            self._queue.append(_Refusal(status, detail))  # type: ignore[arg-type]
            return
        self._answer_and_close(error_response(status, detail, self.clock.now))

    # -- parser callbacks (per-request state) ---------------------------------------------------
    def on_message_begin(self) -> None:
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
        self._url += url
        if len(self._url) > self.limits.max_request_line:
            raise BadRequest(414, "The request target is too long.")

    def on_header(self, name: bytes, value: bytes) -> None:
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
        if parser.should_upgrade():
            # No WebSocket or h2c here. A server may ignore Upgrade (RFC 9110 §7.8): answer as
            # plain HTTP (the pipeline drops the hop-by-hop fields), then close.
            req.keep_alive = False
        _check_framing(req, self.limits.max_body_bytes)
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
                # Pausing stops the next read, not the rest of this one (up to 256 KiB).
                if len(queue) > 4 * self.limits.max_pipelined:
                    raise BadRequest(400, "Too many pipelined requests.")
            return
        self._dispatch(req)

    def _dispatch(self, req: Request) -> None:
        # While the client is not taking what we send, even hits wait their turn in `_run`:
        # answering pipelined hits at once would pile them all up in our send buffer.
        data = self.pipeline.respond_now(req) if req.body is None and not self._write_paused \
            else None
        if data is not None:
            self.transport.write(data)  # type: ignore[union-attr]
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
        while self._queue and not self._busy and not self.closed:
            nxt = self._queue.popleft()
            if isinstance(nxt, _Refusal):
                self._answer_and_close(error_response(nxt.status, nxt.detail, self.clock.now))
                return
            if len(self._queue) <= self.limits.max_pipelined // 2:
                self.resume_reading("pipeline")
            self._dispatch(nxt)

    def _finished(self, req: Request) -> None:
        if not req.keep_alive or (self._eof and not self._queue):
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

    __slots__ = ("status", "detail")
    body = None  # looked at like a queued Request's when the connection is lost

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail


_NOTED_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"host", b"expect",
                           b"if-none-match", b"if-modified-since", b"authorization", b"cookie"})
# unreserved / sub-delims / pct-encoded of a reg-name, plus ":" and "[]" for ports and IPv6.
_HOST_CHARS = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               b"-._~!$&'()*+,;=%:[]")
_GOOD_HOSTS: set[bytes] = set()  # Host values that passed the check (the hot path's few sites)


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
        # RFC 3986 host [":" port]: a Host with "/", "@", spaces... would make the cache key,
        # redirects and the origin's virtual host disagree about which site this is.
        if value not in _GOOD_HOSTS:
            if value.translate(None, _HOST_CHARS):
                raise BadRequest(400, "Invalid Host header.")
            if len(_GOOD_HOSTS) >= 1024:
                _GOOD_HOSTS.clear()  # any client can send any Host: keep the memo bounded
            _GOOD_HOSTS.add(value)
        req.host = value.decode("latin-1")
    elif name == b"expect":
        if value.lower() != b"100-continue":
            raise BadRequest(417, "Only 'Expect: 100-continue' is understood.")
        req.expect_continue = True
    elif name == b"authorization":
        req.authorization = True
    elif name == b"cookie":
        req.cookie = value if req.cookie is None else req.cookie + b"; " + value
    else:
        req.conditional = True


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
