"""HTTP/2 over TLS: `H2Connection` runs the h2 state machine for one client socket whose TLS
handshake chose "h2", and turns each stream into a `Request` for the same pipeline HTTP/1.1
requests go through (defence, cache, origin gate, access log). `Http2Stream` is the stream's
side of the pipeline's connection interface (`write`, `drain`, `send_now`).

The pipeline writes HTTP/1.1 bytes (a head it serialized, then the body, chunked when the origin
gave no length). The stream reads that head back into (status, fields), drops the hop-by-hop
fields, undoes the chunking and sends HEADERS and DATA frames: the pipeline and the stored
entries stay one format, and the head it parses is always one the edge wrote itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection as _H2State
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from kalkan.edge.endpoint import ConnectionGone
from kalkan.edge.flow import FlowControl
from kalkan.edge.framing import (
    BadRequest,
    canonical_host,
    check_framing,
    check_method,
    note_field,
    parse_target,
)
from kalkan.edge.h2_frames import FrameGuard
from kalkan.edge.h2_hpack import BlockEncoder
from kalkan.edge.listener import Listener
from kalkan.edge.request import BodyStream, Request
from kalkan.edge.responses import error_response

__all__ = ["H2Connection", "Http2Stream", "negotiating_protocol"]

MAX_STREAMS = 100           # SETTINGS_MAX_CONCURRENT_STREAMS: more open at once is refused
STREAM_WINDOW = 64 * 1024   # what one stream may send us before we have read it
CONNECTION_WINDOW = 1024 * 1024  # ... and all streams of a connection together
HPACK_TABLE = 4096          # bytes of our HPACK encoder's table, whatever the client allows
_DRAIN_MARK = 64 * 1024     # a relayed body waits while this much is not yet framed
# Streams of one connection on the slow path (misses, bodies, the tarpit) at once; the rest
# wait their turn. Over HTTP/1.1 a connection has one request in progress: this keeps one
# HTTP/2 connection from taking 100 places in the origin gate's queue. Hits never wait.
SLOW_STREAMS = 8
_BODY_RATE_GRACE = 5.0      # seconds of a body before its rate is judged (as over HTTP/1.1)
# Response fields HTTP/2 forbids (RFC 9113 §8.2.2), and those the edge writes for HTTP/1.1.
_NOT_IN_H2 = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection",
                        b"upgrade", b"te"})
# The request fields `framing.note_field` notes (HTTP/2 forbids Connection and Transfer-Encoding:
# h2 refuses them before they get here).
_NOTED = frozenset({b"content-length", b"host", b"expect", b"authorization", b"user-agent",
                    b"x-forwarded-for", b"if-none-match", b"if-modified-since"})
# How the body after a head the pipeline wrote is framed.
_LENGTH, _CHUNKED, _RAW, _NONE = range(4)


class H2Counters:
    """HTTP/2 connections, streams and flood refusals, for /metrics."""

    def __init__(self, register: Callable[[str, str, Callable[[], float]], None]) -> None:
        self.connections = 0
        self.streams = 0
        self.refused = 0
        register("kalkan_http2_connections_total", "Client connections that chose HTTP/2.",
                 lambda: self.connections)
        register("kalkan_http2_streams_total", "HTTP/2 requests (streams) received.",
                 lambda: self.streams)
        register("kalkan_http2_refused_total",
                 "HTTP/2 connections ended for a protocol error or a frame flood.",
                 lambda: self.refused)


def _nothing() -> None:
    pass


class Http2Stream:
    """One request/response exchange on an HTTP/2 connection, as the pipeline's `conn`: what
    the slow path writes through (`write`, `drain`, `send_now`). The replay memo, the only
    user of a connection's `client` and `standing`, is never asked about HTTP/2 streams."""

    __slots__ = ("h2c", "sid", "req", "_head", "_mode", "_left",
                 "_chunk_line", "pending", "pending_bytes", "finishing", "closed", "started",
                 "task", "last_data", "_waiter", "end_sent", "body_started", "body_base",
                 "blocked_since")

    def __init__(self, h2c: H2Connection, sid: int, req: Request) -> None:
        self.h2c = h2c
        self.sid = sid
        self.req = req
        self._head: bytes | None = b""  # the head being read back; None once sent
        self._mode = _NONE
        self._left = 0            # body bytes (or bytes of the current chunk) still to come
        self._chunk_line = b""    # a chunk-size line split across writes
        self.pending: deque[memoryview] = deque()  # body bytes not yet framed (flow control)
        self.pending_bytes = 0
        self.finishing = False    # the answer is complete: END_STREAM after `pending`
        self.closed = False       # reset, answered, or the connection is gone
        self.started = False      # HEADERS sent
        self.end_sent = False     # END_STREAM sent
        self.task: asyncio.Task[None] | None = None
        self.last_data = self.body_started = h2c.clock.mono
        self.body_base = 0  # body_min_rate: bytes received when measuring (re)started
        self.blocked_since = 0.0  # data waits for a window this client has not opened since
        self._waiter: asyncio.Future[None] | None = None

    # -- the pipeline's connection interface ----------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionGone()
        self._feed(data)
        self.h2c.pump(self)

    def send_now(self, buffers: tuple[bytes, ...] | list[bytes]) -> None:
        for data in buffers:
            self._feed(data)
        self.h2c.pump(self)

    def send_all(self, buffers: tuple[bytes, ...] | list[bytes]) -> None:
        """A whole answer at once (a hit, a refusal): END_STREAM rides on its last frame."""
        self.finishing = True
        self.send_now(buffers)

    async def drain(self) -> None:
        while not self.closed and (self.pending_bytes > _DRAIN_MARK
                                   or self.h2c.flow.write_paused):
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self.closed:
            raise ConnectionGone()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- HTTP/1.1 bytes back into a response ----------------------------------------------------
    def _feed(self, data: bytes) -> None:
        if self._head is not None:
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self._head = head
                return
            self._head = None
            self._start(head[:end])
            data = head[end + 4:]
            if not data:
                return
        mode = self._mode
        if mode == _RAW:
            self._queue(memoryview(data))
        elif mode == _LENGTH:
            if self._left > 0:
                view = memoryview(data)[:self._left]
                self._left -= len(view)
                self._queue(view)
        elif mode == _CHUNKED:
            self._dechunk(memoryview(data))

    def _start(self, head: bytes) -> None:
        parsed = _HEADS.get(head)
        if parsed is None:
            parsed = _parse_head(head)
            if len(head) <= 4096:  # bounded: at most 256 × 4 KiB
                if len(_HEADS) >= 256:
                    _HEADS.clear()
                _HEADS[head] = parsed
        status, fields, length, chunked = parsed
        if self.req.method == "HEAD" or status in (204, 304):
            self._mode = _NONE
        elif chunked:
            self._mode = _CHUNKED
        elif length is not None:
            self._mode, self._left = _LENGTH, length
        else:
            self._mode = _RAW
        self.h2c.send_headers(self, fields)

    def mode_none(self) -> bool:
        """No body follows the head (HEAD, 204, 304)."""
        return self._mode == _NONE

    def _dechunk(self, data: memoryview) -> None:
        """Undo the chunked framing the relay wrote (`size CRLF data CRLF`, `0 CRLF CRLF`)."""
        pos, end = 0, len(data)
        while pos < end:
            if self._left > 0:
                take = min(self._left, end - pos)
                self._queue(data[pos:pos + take])
                self._left -= take
                pos += take
                if self._left == 0:
                    self._left = -2  # the CRLF after the chunk's data
                continue
            if self._left < 0:
                take = min(-self._left, end - pos)
                self._left += take
                pos += take
                continue
            line = self._chunk_line + bytes(data[pos:pos + 20])
            stop = line.find(b"\r\n")
            if stop < 0:
                self._chunk_line = line
                pos = end
                continue
            pos += stop + 2 - len(self._chunk_line)
            self._chunk_line = b""
            size = int(line[:stop], 16)
            if size == 0:
                self._mode = _NONE  # the last chunk: what follows is its empty trailer
                return
            self._left = size

    def _queue(self, view: memoryview) -> None:
        if len(view):
            self.pending.append(view)
            self.pending_bytes += len(view)


_Head = tuple[int, list[tuple[bytes, bytes]], int | None, bool]
# Heads the pipeline wrote → (status, HTTP/2 fields, Content-Length, chunked). A hit's head is
# the same bytes object all second long, so a flood of one page parses it once a second.
_HEADS: dict[bytes, _Head] = {}


def _parse_head(head: bytes) -> _Head:
    """An HTTP/1.1 response head the edge serialized → what HTTP/2 sends of it."""
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    fields: list[tuple[bytes, bytes]] = [(b":status", lines[0][9:12])]
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        value = value.strip()
        if name in _NOT_IN_H2:
            chunked = chunked or (name == b"transfer-encoding" and value == b"chunked")
            continue
        if name == b"content-length":
            length = int(value)
        fields.append((name, value))
    return status, fields, length, chunked


class H2Connection(asyncio.Protocol):
    """One client socket speaking HTTP/2: streams, flow control, limits and deadlines."""

    def __init__(self, server: Listener, counters: H2Counters) -> None:
        self.server = server
        self.pipeline = server.pipeline
        self.limits = server.config.limits
        self.clock = server.clock
        self.counters = counters
        self.transport: asyncio.Transport | None = None
        self.flow = FlowControl()
        self.peer = self.client = ""
        self.trusts_peer = False
        self.counted = False
        self.closed = False
        self.streams: dict[int, Http2Stream] = {}
        # Per stream with a body: bytes pushed to it that the pipeline has not read yet. What it
        # reads is handed back to the client as window (`_taken`), so a client can never have
        # more unread body here than its windows. (A dict, not a BodyStream subclass: BodyStream
        # is compiled by mypyc, which interpreted classes cannot derive from.)
        self.unacked: dict[int, int] = {}
        self.guard = FrameGuard(2 * self.limits.max_header_bytes)
        # What we send was written by the edge from fields llhttp accepted, lowercased and
        # stripped in `_parse_head`: h2's outbound checks would only cost time on every answer.
        config = H2Configuration(client_side=False, header_encoding=None,
                                 validate_inbound_headers=True, normalize_inbound_headers=True,
                                 validate_outbound_headers=False,
                                 normalize_outbound_headers=False)
        self.h2 = _H2State(config=config)
        self.h2.local_settings = type(self.h2.local_settings)(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_header_bytes,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.ENABLE_PUSH: 0,
        })
        # Decoded header lists beyond this raise in hpack before they are built.
        self.h2.decoder.max_header_list_size = self.limits.max_header_bytes
        self.h2.encoder = BlockEncoder()
        # The sweep looks at a connection while either is set; HTTP/2 always has a deadline:
        # a connection without streams closes after keepalive_timeout, streams' bodies time out.
        self.deadline = 1.0
        self.write_deadline = 0.0
        self._write_mark = 0
        self._idle_since = self.clock.mono
        self._served = False     # a first request came: idle means keepalive_timeout now
        self._goaway = False       # no new streams: close once the last one is answered
        self._batching = False     # events being handled: one write for all their frames
        self._running = 0          # streams answered by a task (the pipeline's slow path)
        self._waiting: deque[Http2Stream] = deque()  # ... and those waiting for their turn

    @property
    def busy(self) -> bool:
        return bool(self.streams)

    # -- lifecycle ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.flow.transport = self.transport
        peer = transport.get_extra_info("peername")
        addr = peer[0] if peer else "unknown"
        self.peer = self.client = addr[7:] if addr.startswith("::ffff:") and "." in addr else addr
        self.server.connections.add(self)
        trusted = self.server.trusted
        self.trusts_peer = bool(trusted) and trusted.trusts(self.peer)
        if not self.server.admit(self.client):
            self.server.metrics.connections_refused += 1
            self.abort()
            return
        self.counted = True
        self.counters.connections += 1
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.flow.closed()
        self.server.connections.discard(self)
        if self.counted:
            self.server.release(self.client)
            self.counted = False
        for stream in list(self.streams.values()):
            self._drop(stream, ConnectionGone())
        self.streams.clear()

    def close(self) -> None:
        """Say goodbye (GOAWAY) and close once what was written is sent."""
        if self.transport is not None and not self.closed:
            with contextlib.suppress(H2Error):
                self.h2.close_connection()
            self._batching = False
            self._flush()
            self.closed = True
            self.flow.closed()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.flow.closed()
            self.transport.abort()

    def _refuse(self, reason: str) -> None:
        """A flood or a protocol error: GOAWAY and close the connection."""
        self.counters.refused += 1
        self.server.metrics.bad_requests += 1
        self.server.log_refusal(self.client, 400, reason)
        if not self.closed:
            with contextlib.suppress(H2Error):
                self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        self.close()

    # -- bytes in -------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        reason = self.guard.scan(data, self.clock.mono)
        if reason is not None:
            self._refuse(reason)
            return
        try:
            events = self.h2.receive_data(data)
        except H2Error as exc:
            # A ProtocolError (all h2 raises for what a client sends): GOAWAY already written.
            self.counters.refused += 1
            self.server.metrics.bad_requests += 1
            self.server.log_refusal(self.client, 400, f"HTTP/2 protocol error: {exc}"[:200])
            self._flush()
            self.closed = True
            self.flow.closed()
            assert self.transport is not None
            self.transport.close()
            return
        self._batching = True
        try:
            self._handle(events)
        finally:
            self._batching = False
        if self.closed:
            return
        self._flush()
        if self._goaway and not self.streams:
            self.close()

    def _handle(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, RequestReceived):
                self._request(event)
            elif isinstance(event, DataReceived):
                self._data(event)
            elif isinstance(event, StreamEnded):
                self._body_end(event.stream_id)
            elif isinstance(event, WindowUpdated):
                self._window_opened(event.stream_id)
            elif isinstance(event, StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self._drop(stream, ConnectionGone())
            elif isinstance(event, RemoteSettingsChanged):
                changed = event.changed_settings
                if SettingCodes.HEADER_TABLE_SIZE in changed and \
                        self.h2.encoder.header_table_size > HPACK_TABLE:
                    # The client's HEADER_TABLE_SIZE is what it allows, not what we must keep
                    # (RFC 7541 §4.2); BlockEncoder keeps nothing there anyway, this is the
                    # bound should another encoder be used.
                    self.h2.encoder.header_table_size = HPACK_TABLE
                if SettingCodes.INITIAL_WINDOW_SIZE in changed:
                    self._window_opened(0)
            elif isinstance(event, ConnectionTerminated):
                self._goaway = True
            if self.closed:
                return

    def _request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        self.counters.streams += 1
        self._served = True
        req = Request()
        req.peer, req.client, req.scheme = self.peer, self.client, "https"
        req.started = time.monotonic()
        ended = event.stream_ended is not None
        stream = Http2Stream(self, sid, req)
        self.streams[sid] = stream
        if self._goaway:
            self._reset(stream, ErrorCodes.REFUSED_STREAM)
            return
        try:
            self._read_head(sid, req, event.headers, ended)
        except BadRequest as exc:
            self.server.metrics.bad_requests += 1
            self.server.log_refusal(self.client, exc.status, exc.detail)
            stream.send_all((error_response(exc.status, exc.detail, self.clock.now,
                                            keep_alive=True, extra=exc.headers),))
            return
        if req.body is None:
            data = self.pipeline.respond_now(req)
            if data is not None:
                stream.send_all(data)
                return
        if self._running < SLOW_STREAMS:
            self._start_task(stream)
        else:
            self._waiting.append(stream)  # behind this connection's other misses

    def _start_task(self, stream: Http2Stream) -> None:
        self._running += 1
        stream.task = asyncio.get_running_loop().create_task(self._run(stream))

    def _next_task(self) -> None:
        """A slow-path stream finished: start the next one waiting, if any."""
        self._running -= 1
        waiting = self._waiting
        while waiting and not self.closed:
            stream = waiting.popleft()
            if not stream.closed:
                self._start_task(stream)
                return

    def _read_head(self, sid: int, req: Request, headers: list[tuple[bytes, bytes]],
                   ended: bool) -> None:
        """The request's fields as the HTTP/1.1 reader would have noted them."""
        if len(headers) > self.limits.max_headers:
            raise BadRequest(431, "The request has too many header fields.")
        authority: bytes | None = None
        target = b""
        cookies: list[bytes] = []
        fields = req.headers
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    req.method = value.decode("ascii", "replace")
                elif name == b":path":
                    target = value
                elif name == b":authority":
                    authority = value
                continue  # :scheme is https on this listener whatever it says
            if name == b"cookie":
                cookies.append(value)  # HTTP/2 may split one Cookie into several fields
                continue
            fields.append((name, value))
            if name in _NOTED:  # (h2 has refused names that are not lowercase)
                note_field(req, name, value)
        if cookies:
            req.cookie = b"; ".join(cookies)
            fields.append((b"cookie", req.cookie))
        if authority is not None:
            host, port = canonical_host(authority)
            site = host if port is None or port == 443 else f"{host}:{port}"
            if req.host_fields and req.host != site:  # (h2 already refuses any raw mismatch)
                raise BadRequest(400, "Host and :authority name different sites.")
            req.host, req.host_fields = site, 1
        if not req.host_fields:
            raise BadRequest(400, "An HTTP/2 request needs :authority or Host.")
        req.target = target
        check_method(req)
        if ended:
            req.content_length = None
        elif req.content_length is None:
            req.chunked = True  # the body's length is known only at its end
        check_framing(req, self.limits.max_body_bytes)
        parse_target(req, target)
        if self.trusts_peer and req.xff is not None:
            req.client = self.server.trusted.client_from_xff(self.client,
                                                             req.xff.decode("latin-1"))
        if not ended:
            # The socket is never paused for one stream's body: flow control holds it back.
            self.unacked[sid] = 0
            req.body = BodyStream(_nothing, _nothing, 1 << 62, lambda n: self._taken(sid, n))

    def _data(self, event: DataReceived) -> None:
        sid = event.stream_id
        size = event.flow_controlled_length
        stream = self.streams.get(sid)
        body = stream.req.body if stream is not None else None
        if stream is None or body is None or body.ended or sid not in self.unacked:
            self._ack(sid, size)  # a body nobody reads any more: give the window back
            return
        data = event.data
        if size > len(data):
            self._ack(sid, size - len(data))  # padding
        if not data:
            return
        if body.received + len(data) > self.limits.max_body_bytes:
            body.fail(BadRequest(413, "The request body is larger than this site accepts."))
            self._ack(sid, len(data))
            return
        stream.last_data = self.clock.mono
        self.unacked[sid] += len(data)
        body.push(data)

    def _body_end(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None and stream.req.body is not None and not stream.req.body.ended:
            stream.req.body.finish()

    def _taken(self, sid: int, size: int) -> None:
        """The pipeline read `size` bytes of a stream's body: window back to the client."""
        if sid in self.unacked:
            self.unacked[sid] -= size
        self._ack(sid, size)

    def _ack(self, sid: int, size: int) -> None:
        if size and not self.closed:
            try:
                self.h2.acknowledge_received_data(size, sid)
            except H2Error:
                return
            self._flush()

    # -- answering ------------------------------------------------------------------------------
    async def _run(self, stream: Http2Stream) -> None:
        req = stream.req
        try:
            if req.expect_continue:
                self.h2.send_headers(stream.sid, [(b":status", b"100")])
                self._flush()
            await self.pipeline.respond(req, stream)
        except ConnectionGone:
            self._reset(stream, ErrorCodes.CANCEL)
            return
        except BadRequest as exc:
            # The body broke a limit while the pipeline read it.
            self.server.log_refusal(self.client, exc.status, exc.detail)
            if not stream.started and not stream.closed:
                stream.send_all((error_response(exc.status, exc.detail, self.clock.now,
                                                keep_alive=True),))
            else:
                self._reset(stream, ErrorCodes.CANCEL)
            return
        except asyncio.CancelledError:
            self._reset(stream, ErrorCodes.CANCEL)
            raise
        except Exception as exc:  # a bug must cost one stream, never the edge
            self.server.log_error(req, exc)
            self._reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        finally:
            stream.task = None
            self._next_task()
        if stream.closed:
            return
        self.finish(stream)
        if not req.keep_alive and (req.body is None or req.body.done):
            # The pipeline ends the connection after this answer (the tarpit): no new streams.
            self._goaway = True
            with contextlib.suppress(H2Error):
                self.h2.close_connection()
            self._flush()
        if self._goaway and not self.streams:
            self.close()  # the last stream after a GOAWAY (ours or the client's) is answered

    def send_headers(self, stream: Http2Stream, fields: list[tuple[bytes, bytes]]) -> None:
        if stream.closed or self.closed:
            return
        stream.started = True
        end = stream.finishing and stream.mode_none()
        try:
            self.h2.send_headers(stream.sid, fields, end_stream=end)
            stream.end_sent = end
        except H2Error:
            self._drop(stream, ConnectionGone())

    def finish(self, stream: Http2Stream) -> None:
        """The pipeline has written the whole answer: END_STREAM once its body is framed."""
        if stream.closed:
            return
        if not stream.started:  # nothing complete was written: a bug upstream, not the client
            self._reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        stream.finishing = True
        self.pump(stream)

    def pump(self, stream: Http2Stream) -> None:
        """Frame what the stream's flow-control window (and the socket) allow; flush."""
        if stream.closed or self.closed or not stream.started:
            return
        h2 = self.h2
        pending = stream.pending
        try:
            while pending and not self.flow.write_paused:
                window = h2.local_flow_control_window(stream.sid)
                if window <= 0:
                    if not stream.blocked_since:
                        stream.blocked_since = self.clock.mono
                    break
                stream.blocked_since = 0.0
                view = pending[0]
                n = min(window, h2.max_outbound_frame_size, len(view))
                last = n == len(view)
                if last:
                    pending.popleft()
                else:
                    pending[0] = view[n:]
                stream.pending_bytes -= n
                end = stream.finishing and last and not pending
                h2.send_data(stream.sid, view[:n], end_stream=end)
                stream.end_sent = end
            if stream.finishing and not pending:
                if not stream.end_sent:
                    h2.end_stream(stream.sid)
                    stream.end_sent = True
                self._done(stream)
        except H2Error:
            self._drop(stream, ConnectionGone())
        self._flush()
        if stream.pending_bytes <= _DRAIN_MARK:
            stream.wake()

    def _done(self, stream: Http2Stream) -> None:
        """The answer is sent: forget the stream; a body still arriving is refused."""
        stream.closed = True
        self.streams.pop(stream.sid, None)
        body = stream.req.body
        if body is not None and not body.ended:
            body.fail(ConnectionGone())
        state = self.h2.streams.get(stream.sid)
        if state is not None and not state.closed:
            # The client is still sending (a body we did not read): tell it to stop.
            with contextlib.suppress(H2Error):
                self.h2.reset_stream(stream.sid, ErrorCodes.NO_ERROR)
        self._release(stream)

    def _reset(self, stream: Http2Stream, code: ErrorCodes) -> None:
        if not stream.closed and not self.closed:
            with contextlib.suppress(H2Error):
                self.h2.reset_stream(stream.sid, code)
            self._flush()
        self._drop(stream, ConnectionGone())

    def _drop(self, stream: Http2Stream, exc: Exception) -> None:
        """The stream ends without (the rest of) an answer: reset by the client, or gone."""
        stream.closed = True
        self.streams.pop(stream.sid, None)
        stream.pending.clear()
        stream.pending_bytes = 0
        stream.wake()
        body = stream.req.body
        if body is not None and not body.ended:
            body.fail(exc)
        task = stream.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self._release(stream)

    def _release(self, stream: Http2Stream) -> None:
        unread = self.unacked.pop(stream.sid, 0)
        if unread > 0:
            self._ack(stream.sid, unread)  # the connection's window, for the other streams
        if not self.streams:
            self._idle_since = self.clock.mono

    def _window_opened(self, sid: int) -> None:
        if sid:
            stream = self.streams.get(sid)
            if stream is not None and stream.pending:
                self.pump(stream)
            return
        for stream in list(self.streams.values()):
            if stream.pending:
                self.pump(stream)

    def _flush(self) -> None:
        if self._batching:
            return
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    # -- bytes out: the socket's back-pressure --------------------------------------------------
    def pause_writing(self) -> None:
        self.flow.pause_writing()
        self.write_deadline = self.clock.mono + self.limits.send_timeout
        self._write_mark = self._unsent()
        self.flow.pause_reading("write")  # a client that does not read gets no more answers

    def resume_writing(self) -> None:
        self.write_deadline = 0.0
        self.flow.resume_writing()
        self.flow.resume_reading("write")
        self._window_opened(0)
        for stream in list(self.streams.values()):
            stream.wake()

    def _unsent(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    # -- deadlines (checked by the server's sweep) ----------------------------------------------
    def check_timers(self, mono: float) -> None:
        limits = self.limits
        metrics = self.server.metrics
        if self.write_deadline and mono > self.write_deadline:
            left = self._unsent()
            if left >= self._write_mark:
                metrics.timeouts["send"] += 1
                self.abort()
                return
            self._write_mark = left
            self.write_deadline = mono + limits.send_timeout
        if not self.streams:
            idle = limits.keepalive_timeout if self._served else limits.header_timeout
            if mono - self._idle_since > idle:
                metrics.timeouts["keepalive" if self._served else "headers"] += 1
                self.close()
            return
        for stream in list(self.streams.values()):
            if stream.blocked_since and mono - stream.blocked_since > limits.send_timeout:
                # Its answer waits for a window the client does not open (a slow reader by
                # other means; other streams' progress does not excuse this one).
                metrics.timeouts["send"] += 1
                self._reset(stream, ErrorCodes.CANCEL)
                continue
            body = stream.req.body
            if body is None or body.ended or stream.sid not in self.unacked:
                continue
            if self.unacked[stream.sid]:
                # Body bytes wait for the pipeline (the origin reads slowly), so the client may
                # be out of window: it cannot be late. Its clocks start again.
                stream.last_data = stream.body_started = mono
                stream.body_base = body.received
                continue
            if mono - stream.last_data > limits.body_timeout:
                metrics.timeouts["body"] += 1
                self._body_timeout(stream, body, "The request body stopped arriving.")
            elif mono - stream.body_started > _BODY_RATE_GRACE and limits.body_min_rate and \
                    (body.received - stream.body_base) / (mono - stream.body_started) < \
                    limits.body_min_rate:
                metrics.timeouts["body_rate"] += 1
                self._body_timeout(stream, body, "The request body arrived too slowly.")

    def _body_timeout(self, stream: Http2Stream, body: BodyStream, detail: str) -> None:
        """The pipeline reading the body gets the 408 (sent if nothing was yet)."""
        body.fail(BadRequest(408, detail))
        if stream.task is None:
            self._reset(stream, ErrorCodes.CANCEL)


class _Negotiating(asyncio.Protocol):
    """Stands in until the TLS handshake is done, then hands the transport to the protocol ALPN
    chose: `H2Connection` for "h2", the HTTP/1.1 connection otherwise."""

    __slots__ = ("make_h1", "make_h2")

    def __init__(self, make_h1: Callable[[], asyncio.Protocol],
                 make_h2: Callable[[], asyncio.Protocol]) -> None:
        self.make_h1 = make_h1
        self.make_h2 = make_h2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sslobj = transport.get_extra_info("ssl_object")
        chosen = sslobj.selected_alpn_protocol() if sslobj is not None else None
        protocol = self.make_h2() if chosen == "h2" else self.make_h1()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def negotiating_protocol(make_h1: Callable[[], asyncio.Protocol],
                         make_h2: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for a TLS listener that offers both h2 and http/1.1."""
    return lambda: _Negotiating(make_h1, make_h2)
