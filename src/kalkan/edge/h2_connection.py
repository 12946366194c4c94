"""HTTP/2 over TLS: `H2Connection` runs the h2 state machine for one client socket whose TLS
handshake chose "h2" and turns each stream into a `Request` for the same pipeline HTTP/1.1
requests go through (defence, cache, origin gate, access log); `negotiating_protocol` hands a
TLS socket to it or to the HTTP/1.1 connection, as ALPN chose.

Its parts: `Http2Stream` (h2_stream.py) is a stream as the pipeline's `conn`, `H2Streams`
(h2_streams.py) the stream table and the frames out, `H2Bodies` (h2_bodies.py) request bodies
and their windows, `H2SlowPath` (h2_slow_path.py) the streams answered as tasks,
`read_request_head` (h2_request.py) a header list into a Request, `FrameGuard` (h2_frames.py)
the flood limits and `BlockEncoder` (h2_hpack.py) the HPACK of our answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection as H2State
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

from kalkan.config import LimitsConfig
from kalkan.edge.endpoint import ConnectionGone
from kalkan.edge.flow import FlowControl
from kalkan.edge.framing import BadRequest
from kalkan.edge.h2_bodies import H2Bodies
from kalkan.edge.h2_frames import FrameGuard
from kalkan.edge.h2_hpack import BlockEncoder
from kalkan.edge.h2_request import read_request_head
from kalkan.edge.h2_slow_path import H2SlowPath
from kalkan.edge.h2_streams import H2Streams
from kalkan.edge.listener import Listener
from kalkan.edge.request import Request
from kalkan.edge.responses import error_response

__all__ = ["H2Connection", "H2Counters", "negotiating_protocol"]

MAX_STREAMS = 100           # SETTINGS_MAX_CONCURRENT_STREAMS: more open at once is refused
STREAM_WINDOW = 64 * 1024   # what one stream may send us before we have read it
CONNECTION_WINDOW = 1024 * 1024  # ... and all streams of a connection together
HPACK_TABLE = 4096          # bytes of our HPACK encoder's table, whatever the client allows


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


def _server_state(limits: LimitsConfig) -> H2State:
    """The h2 state machine of one client connection, with our settings and encoder."""
    # What we send was written by the edge from fields llhttp accepted, lowercased and stripped
    # by `Http2Stream`: h2's outbound checks would only cost time on every answer.
    config = H2Configuration(client_side=False, header_encoding=None,
                             validate_inbound_headers=True, normalize_inbound_headers=True,
                             validate_outbound_headers=False, normalize_outbound_headers=False)
    h2 = H2State(config=config)
    h2.local_settings = type(h2.local_settings)(client=False, initial_values={
        SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
        SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.ENABLE_PUSH: 0,
    })
    # Decoded header lists beyond this raise in hpack before they are built.
    h2.decoder.max_header_list_size = limits.max_header_bytes
    h2.encoder = BlockEncoder()
    return h2


class H2Connection(asyncio.Protocol):
    """One client socket speaking HTTP/2: its lifecycle and admission, the frames it sends
    (counted by the `FrameGuard`, parsed by h2) dispatched to its streams, the socket's
    back-pressure and the sweep's deadlines."""

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
        self.guard = FrameGuard(2 * self.limits.max_header_bytes)
        self.h2 = _server_state(self.limits)
        self.bodies = H2Bodies(self, self.limits, self.clock, server.metrics)
        self.streams = H2Streams(self, self.flow, self.clock, self.bodies)
        self.slow_path = H2SlowPath(self, self.streams, server)
        # The sweep looks at a connection while either is set; HTTP/2 always has a deadline:
        # a connection without streams closes after keepalive_timeout, streams' bodies time out.
        self.deadline = 1.0
        self.write_deadline = 0.0
        self._write_mark = 0
        self._served = False     # a first request came: idle means keepalive_timeout now
        self._goaway = False       # no new streams: close once the last one is answered
        self._batching = False     # events being handled: one write for all their frames

    @property
    def busy(self) -> bool:
        return bool(self.streams.open)

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
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.flow.closed()
        self.server.connections.discard(self)
        if self.counted:
            self.server.release(self.client)
            self.counted = False
        self.streams.drop_all()

    def close(self) -> None:
        """Say goodbye (GOAWAY) and close once what was written is sent."""
        if self.transport is not None and not self.closed:
            with contextlib.suppress(H2Error):
                self.h2.close_connection()
            self._batching = False
            self.flush()
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

    def answered(self, req: Request) -> None:
        """The slow path has sent a whole answer (`H2SlowPath`)."""
        if not req.keep_alive and (req.body is None or req.body.done):
            # The pipeline ends the connection after this answer (the tarpit): no new streams.
            self._goaway = True
            with contextlib.suppress(H2Error):
                self.h2.close_connection()
            self.flush()
        if self._goaway and not self.streams.open:
            self.close()  # the last stream after a GOAWAY (ours or the client's) is answered

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
            self.flush()
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
        self.flush()
        if self._goaway and not self.streams.open:
            self.close()

    def _handle(self, events: list[Any]) -> None:
        streams = self.streams
        for event in events:
            if isinstance(event, RequestReceived):
                self._request(event)
            elif isinstance(event, DataReceived):
                self.bodies.received(streams.open.get(event.stream_id), event)
            elif isinstance(event, StreamEnded):
                self.bodies.ended(streams.open.get(event.stream_id))
            elif isinstance(event, WindowUpdated):
                streams.window_opened(event.stream_id)
            elif isinstance(event, StreamReset):
                stream = streams.open.get(event.stream_id)
                if stream is not None:
                    streams.drop(stream, ConnectionGone())
            elif isinstance(event, RemoteSettingsChanged):
                changed = event.changed_settings
                if SettingCodes.HEADER_TABLE_SIZE in changed and \
                        self.h2.encoder.header_table_size > HPACK_TABLE:
                    # The client's HEADER_TABLE_SIZE is what it allows, not what we must keep
                    # (RFC 7541 §4.2); BlockEncoder keeps nothing there anyway, this is the
                    # bound should another encoder be used.
                    self.h2.encoder.header_table_size = HPACK_TABLE
                if SettingCodes.INITIAL_WINDOW_SIZE in changed:
                    streams.window_opened(0)
            elif isinstance(event, ConnectionTerminated):
                self._goaway = True
            if self.closed:
                return

    def _request(self, event: RequestReceived) -> None:
        """A new stream: a hit or a refusal is answered now, the rest by the slow path."""
        sid = event.stream_id
        self.counters.streams += 1
        self._served = True
        req = Request()
        req.peer, req.client, req.scheme = self.peer, self.client, "https"
        req.started = time.monotonic()
        ended = event.stream_ended is not None
        stream = self.streams.add(sid, req)
        if self._goaway:
            self.streams.reset(stream, ErrorCodes.REFUSED_STREAM)
            return
        try:
            read_request_head(req, event.headers, ended, self.limits)
        except BadRequest as exc:
            self.server.metrics.bad_requests += 1
            self.server.log_refusal(self.client, exc.status, exc.detail)
            stream.send_all((error_response(exc.status, exc.detail, self.clock.now,
                                            keep_alive=True, extra=exc.headers),))
            return
        if self.trusts_peer and req.xff is not None:
            req.client, req.client_ip = self.server.trusted.client_and_ip(
                self.client, req.xff.decode("latin-1"), None)
        if not ended:
            req.body = self.bodies.open(sid)
        else:
            data = self.pipeline.respond_now(req)
            if data is not None:
                stream.send_all(data)
                return
        self.slow_path.answer(stream)

    # -- bytes out ------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the frames h2 has ready (once per batch of events while they are handled)."""
        if self._batching:
            return
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        self.write_deadline = self.clock.mono + self.limits.send_timeout
        self._write_mark = self._unsent()
        self.flow.pause_reading("write")  # a client that does not read gets no more answers

    def resume_writing(self) -> None:
        self.write_deadline = 0.0
        self.flow.resume_writing()
        self.flow.resume_reading("write")
        self.streams.window_opened(0)
        for stream in list(self.streams.open.values()):
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
        streams = self.streams
        if not streams.open:
            idle = limits.keepalive_timeout if self._served else limits.header_timeout
            if mono - streams.idle_since > idle:
                metrics.timeouts["keepalive" if self._served else "headers"] += 1
                self.close()
            return
        for stream in list(streams.open.values()):
            if stream.blocked_since and mono - stream.blocked_since > limits.send_timeout:
                # Its answer waits for a window the client does not open (a slow reader by
                # other means; other streams' progress does not excuse this one).
                metrics.timeouts["send"] += 1
                streams.reset(stream, ErrorCodes.CANCEL)
            elif self.bodies.late(stream, mono) and stream.task is None:
                streams.reset(stream, ErrorCodes.CANCEL)  # no task to send the 408


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
