"""`HttpConnection`: one client socket as a state machine, from its first byte to its close.

It reads requests (`RequestReader`, edge/reader.py), answers them in order through the pipeline
(synchronously when it can answer at once, a cache hit; as a task otherwise), and enforces the
per-connection limits: admission, read deadlines by `State`, body rate, send timeout, pipelining
depth, flow control. Deadlines are checked by the server's sweep (`check_timers`), never by a
timer per request.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Final

from kalkan.addresses import parse_ip
from kalkan.edge.client_address import PROXY_HEADER_MAX, ProxyHeaderError, parse_proxy_header
from kalkan.edge.clock import CLOCK_STEP, Clock
from kalkan.edge.endpoint import ConnectionGone, Endpoint
from kalkan.edge.framing import BadRequest
from kalkan.edge.listener import Handler, Listener
from kalkan.edge.parked import ParkedConnection, ParkedTlsConnection
from kalkan.edge.reader import (
    ANSWERING,
    BODY,
    DONE,
    HEAD,
    IDLE,
    LINGERING,
    SLICE,
    State,
    _Refusal,
)
from kalkan.edge.request import Request
from kalkan.edge.responses import error_response

_BODY_RATE_GRACE = 5.0  # seconds of a body before its rate is judged
# An idle keep-alive connection is parked (edge/parked.py) after PARK_AFTER seconds of quiet, or
# as soon as it is idle while more than PARK_AT_ONCE_PAST connections are open: memory then
# matters more than the couple of microseconds it takes to make the connection again.
PARK_AFTER = 0.25
PARK_AT_ONCE_PAST = 1024
# The clock moves only at the sweep, so when a connection was last used is known to within one
# step (CLOCK_STEP): it has been quiet for PARK_AFTER once the clock has moved on by more than
# PARK_AFTER and half a step since. A connection used during the last step is never parked
# (with PARK_AFTER alone, a sweep a hair late parked about half of the connections in steady use,
# four times a second, each made again by its next request).
_PARK_QUIET: Final = PARK_AFTER + CLOCK_STEP / 2

__all__ = ["BadRequest", "Clock", "ConnectionGone", "Handler", "HttpConnection", "State"]


class HttpConnection(Endpoint):
    """Per-connection state (this object) apart from per-request state (`Request`).

    The event loop's protocol for the connection (it calls `connection_made`, `data_received`
    and the rest by name). Not derived from asyncio.Protocol: mypyc compiles this class, and a
    compiled class cannot derive from an interpreted one (see `server.http1`)."""

    __slots__ = ("pipeline", "_proxy_buf", "_chunk", "standing")

    def __init__(self, server: Listener, scheme: str = "http") -> None:
        super().__init__(server, scheme)
        self.pipeline = server.pipeline
        self._proxy_buf: bytes | None = b"" if server.config.client_address.proxy_protocol else None
        # The bytes of the last read, while they may still be exactly one request (see replay).
        self._chunk: bytes | None = None
        # The replay memo's per-connection state (edge/replay.py `Standing`): opaque here.
        self.standing: Any = None

    # -- connection lifecycle -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.flow.transport = self.transport
        peer = transport.get_extra_info("peername")
        addr = peer[0] if peer else "unknown"  # an IPv4 reader on a dual-stack [::] listener
        # Interned: a crowd behind one NAT (or a browser's six connections) shares one string,
        # and it goes when its last connection does.
        self.peer = self.client = sys.intern(
            addr[7:] if addr.startswith("::ffff:") and "." in addr else addr)
        self.client_ip = parse_ip(self.client)
        self._enter(HEAD)
        self.server.connections.add(self)
        if self._proxy_buf is None:
            self._admit()

    def _admit(self) -> None:
        """Apply the total and per-client connection limits once the client address is known."""
        trusted = self.server.trusted
        self.trusts_peer = bool(trusted) and trusted.trusts(self.peer)  # once per connection
        if not self.server.admit(self.client):
            self.server.metrics.connections_refused += 1
            self.abort()
            return
        self.counted = True

    # -- bytes in -------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.state >= DONE:
            return  # refused, upgraded or lingering: the parser is done with this connection
        if self._proxy_buf is not None:
            data = self._read_proxy_header(data)
            if not data:
                return
        elif not self.busy and self._req is None and self.pipeline.replay(data, self):
            # The same bytes as an earlier request answered from cache: answered again, unparsed.
            self._enter(IDLE)
            return
        self._chunk = data
        self._read(data)

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
            self.client_ip = parse_ip(self.client)
        self._admit()
        return b"" if self.closed else buf[header.consumed:]

    def _refuse(self, status: int, detail: str,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer a request we will not interpret, and close: nothing ambiguous goes upstream."""
        self.state, self.deadline = DONE, 0.0
        self._in_head = False
        self.server.metrics.bad_requests += 1
        self.server.log_refusal(self.client, status, detail)
        req = self._req
        if req is not None and req.body is not None:
            req.body.fail(BadRequest(status, detail))
        self.flow.pause_reading("refused")
        if self.busy:
            # Let the response in progress finish; then close instead of answering more.
            self._queue.clear()
            self._queue.append(_Refusal(status, detail, extra))
            return
        self._answer_and_close(error_response(status, detail, self.clock.now, extra=extra))

    # -- answering, in order --------------------------------------------------------------------
    def _enqueue(self, req: Request) -> None:
        # Behind earlier requests still queued too: while `_run` drains the queue it parses the
        # input held back, and what that yields must not overtake them.
        if self.busy or self._queue:
            queue = self._queue
            queue.append(req)
            if len(queue) > self.limits.max_pipelined:
                self.flow.pause_reading("pipeline")
                # Input is parsed a slice at a time (`_parse`), so the queue can only pass the
                # limit by what one slice holds; this is the backstop.
                if len(queue) > self.limits.max_pipelined + SLICE // 8:
                    raise BadRequest(400, "Too many pipelined requests.")
            return
        self._dispatch(req)

    def _dispatch(self, req: Request) -> None:
        # While the client is not taking what we send, even hits wait their turn in `_run`:
        # answering pipelined hits at once would pile them all up in our send buffer.
        read, self._chunk = self._chunk, None  # offered to the replay memo once, with the first
        data = self.pipeline.respond_now(req, read) if req.body is None \
            and not self.flow.write_paused else None
        if data is not None:
            file = req.body_file
            if file is None or not self._send_file(data, file):
                self.transport.writelines(data)  # type: ignore[union-attr]  # send_hit, inlined
            self._finished(req)
            return
        self.busy = True
        if self.state == IDLE:
            self.state, self.deadline = ANSWERING, 0.0
        self._task = asyncio.get_running_loop().create_task(self._run(req))

    async def _run(self, req: Request) -> None:
        sent = self.bytes_out
        try:
            if req.body is not None and req.body.error is not None:
                raise req.body.error  # broken in the read that queued it: the origin never knew
            if self.flow.write_paused:
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
            self.busy = False
            self._task = None
        self._finished(req)
        # Once the connection is closing (lingering after a last answer), nothing queued behind
        # is dispatched: it would reach the origin with nobody to answer.
        while self._queue and not self.busy and not self.closed and self.state != LINGERING:
            nxt = self._queue.pop(0)
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
            # (`_parse` may hold input back again: asked through a method, because a checker
            # that narrowed `self._stash` to None above would not see it change, nor would the
            # code mypyc compiles from that.)
            if not self._parse(stash) or self._holding_back():
                return  # refused, or the queue filled again
        self.flow.resume_reading("pipeline")

    def _holding_back(self) -> bool:
        return self._stash is not None

    def _finished(self, req: Request) -> None:
        if not req.keep_alive or (self._eof and not self._queue and self._stash is None):
            if req.body is not None and not req.body.done:
                self._answer_and_close(b"")  # unread body: a plain close could RST the answer
            else:
                self.close()
        elif not self.busy and self._req is None and not self._queue and self.state == ANSWERING:
            self.state = IDLE  # `_enter(IDLE)`, inlined: once per request
            self.deadline = self.clock.mono + self._timeouts[IDLE]
            if len(self.server.connections) > self.server.park_at_once_past and not park(self):
                # Not parkable yet (most often: the answer's tail is still in the transport's
                # buffer): let go of the parser now, and the sweep parks it within 0.25 s.
                self.parser = None
                self._url = b""

    # -- deadlines (checked by the sweep) -------------------------------------------------------
    def idle_memory(self, mono: float) -> bool:
        """Between requests, after PARK_AFTER seconds of quiet: park (True), or at least let go
        of the parser (about 1 KB); the next read makes them again."""
        if (self.deadline - mono >= self.limits.keepalive_timeout - _PARK_QUIET
                and len(self.server.connections) <= self.server.park_at_once_past):
            return False  # (past the threshold, at the first sweep: bursts of new connections
                          # would otherwise hold a second's worth of parsers and buffers)
        if park(self):
            return True
        self.parser = None
        self._url = b""
        return False

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
        state = self.state
        if state in (HEAD, BODY):
            if self.flow.reasons:
                # We stopped reading (back-pressure, a full pipeline): the client cannot be late.
                self.deadline = mono + self._timeouts[state]
                req = self._req
                if req is not None and req.body is not None:
                    self.body_started, self.body_base = mono, req.body.received
                return
            if state == BODY and mono - self.body_started > _BODY_RATE_GRACE:
                req = self._req
                if req is not None and req.body is not None:
                    rate = (req.body.received - self.body_base) / (mono - self.body_started)
                    if rate < self.limits.body_min_rate:
                        self.server.metrics.timeouts["body_rate"] += 1
                        self._timeout(408, "The request body arrived too slowly.")
                        return
        if state == IDLE and self.idle_memory(mono):
            return  # parked: this object is done
        if self.deadline and mono > self.deadline:
            if state == IDLE:
                self.server.metrics.timeouts["keepalive"] += 1
                self.close()
            elif state == HEAD:
                self.server.metrics.timeouts["headers"] += 1
                self._timeout(408, "The request headers did not arrive in time.")
            elif state == BODY:
                self.server.metrics.timeouts["body"] += 1
                self._timeout(408, "The request body stopped arriving.")
            elif state == LINGERING:
                self.abort()

    def _timeout(self, status: int, detail: str) -> None:
        self.state, self.deadline = DONE, 0.0
        if self._req is not None and self._req.body is not None:
            self._req.body.fail(BadRequest(status, detail))
        if self.busy or self.closed or self.transport is None:
            self.abort()
            return
        if self._req is not None or self._url:
            self.server.log_refusal(self.client, status, detail)
            self._answer_and_close(error_response(status, detail, self.clock.now))
        else:
            self.abort()


# -- parking an idle connection (edge/parked.py) -------------------------------------------------
def park(conn: HttpConnection) -> bool:
    """Hand the transport to a `ParkedConnection` if nothing at all is in progress: no
    answer, no input held back, no paused reading or writing, nothing left to send."""
    transport = conn.transport
    if (transport is None or conn.closed or conn.busy or conn._queue or conn._stash
            or conn._req is not None or conn.state != IDLE or conn._eof or conn._closing
            or conn.flow.reasons or conn.flow.write_paused or conn.write_deadline
            or conn._proxy_buf is not None or not conn.counted
            or (conn.standing is not None and conn.standing.pending)
            or transport.get_write_buffer_size()):
        return False
    kind = ParkedTlsConnection if conn.scheme == "https" else ParkedConnection
    parked = kind(conn.server, transport, conn.client, conn.deadline)
    transport.set_protocol(parked)
    server = conn.server
    server.connections.discard(conn)
    server.connections.add(parked)
    # This object is finished: its slot in the per-client count goes with the transport.
    # (The parser's callbacks refer back to it: dropping the parser frees it at once,
    # without waiting for the cycle collector.)
    conn.counted = False
    conn.closed = True
    conn.transport = None
    conn.flow.transport = None
    conn.parser = None
    return True


def unpark(parked: ParkedConnection, transport: asyncio.Transport) -> HttpConnection:
    """The connection made again for a parked one whose client sent bytes."""
    conn = HttpConnection(parked.server, parked.scheme)
    conn.transport = transport
    conn.flow.transport = transport
    conn.peer = conn.client = parked.client  # (one address per HTTP/1.1 connection)
    conn.client_ip = parse_ip(parked.client)  # not kept parked: 8 bytes per idle connection
    trusted = conn.server.trusted
    conn.trusts_peer = bool(trusted) and trusted.trusts(parked.client)  # a memo: not kept parked
    conn._proxy_buf = None  # read before it was parked
    conn.counted = True
    conn.state, conn.deadline = IDLE, parked.deadline
    conn.server.connections.add(conn)
    return conn


ParkedConnection.wake = unpark  # (parked.py cannot import this module)
