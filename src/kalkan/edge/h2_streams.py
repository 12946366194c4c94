"""`H2Streams`: the open streams of one HTTP/2 connection and their answers going out: HEADERS
and DATA framed as the stream's and the connection's flow-control windows and the socket allow,
and how a stream ends (answered, reset by us, dropped)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from h2.connection import H2Connection as H2State
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from kalkan.edge.clock import Clock
from kalkan.edge.endpoint import ConnectionGone
from kalkan.edge.flow import FlowControl
from kalkan.edge.h2_bodies import H2Bodies
from kalkan.edge.h2_stream import DRAIN_MARK, Http2Stream
from kalkan.edge.request import Request

__all__ = ["H2Streams"]


class _Socket(Protocol):
    """What the streams need of their connection: its h2 state and its writes."""

    h2: H2State
    closed: bool

    def flush(self) -> None: ...


class H2Streams:
    """The stream table (`open`, by stream id) and the send side of each stream: the
    `StreamOutput` its `Http2Stream` writes to. A stream leaves the table when it ends; the
    table's last one leaving starts the connection's idle time (`idle_since`)."""

    __slots__ = ("conn", "flow", "clock", "bodies", "open", "idle_since")

    def __init__(self, conn: _Socket, flow: FlowControl, clock: Clock, bodies: H2Bodies) -> None:
        self.conn = conn
        self.flow = flow
        self.clock = clock
        self.bodies = bodies
        self.open: dict[int, Http2Stream] = {}
        self.idle_since = clock.mono

    def add(self, sid: int, req: Request) -> Http2Stream:
        stream = Http2Stream(self, sid, req, self.clock.mono)
        self.open[sid] = stream
        return stream

    # -- answers out ----------------------------------------------------------------------------
    def send_headers(self, stream: Http2Stream, fields: list[tuple[bytes, bytes]]) -> None:
        if stream.closed or self.conn.closed:
            return
        stream.started = True
        end = stream.finishing and stream.mode_none()
        try:
            self.conn.h2.send_headers(stream.sid, fields, end_stream=end)
            stream.end_sent = end
        except H2Error:
            self.drop(stream, ConnectionGone())

    def finish(self, stream: Http2Stream) -> None:
        """The pipeline has written the whole answer: END_STREAM once its body is framed."""
        if stream.closed:
            return
        if not stream.started:  # nothing complete was written: a bug upstream, not the client
            self.reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        stream.finishing = True
        self.pump(stream)

    def pump(self, stream: Http2Stream) -> None:
        """Frame what the stream's flow-control window (and the socket) allow; flush."""
        conn = self.conn
        if stream.closed or conn.closed or not stream.started:
            return
        h2 = conn.h2
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
                self.done(stream)
        except H2Error:
            self.drop(stream, ConnectionGone())
        conn.flush()
        if stream.pending_bytes <= DRAIN_MARK:
            stream.wake()

    def window_opened(self, sid: int) -> None:
        """The client opened a window: a stream's (`sid`), or the connection's (0)."""
        if sid:
            stream = self.open.get(sid)
            if stream is not None and stream.pending:
                self.pump(stream)
            return
        for stream in list(self.open.values()):
            if stream.pending:
                self.pump(stream)

    # -- how a stream ends ----------------------------------------------------------------------
    def done(self, stream: Http2Stream) -> None:
        """The answer is sent: forget the stream; a body still arriving is refused."""
        stream.closed = True
        self.open.pop(stream.sid, None)
        body = stream.req.body
        if body is not None and not body.ended:
            body.fail(ConnectionGone())
        state = self.conn.h2.streams.get(stream.sid)
        if state is not None and not state.closed:
            # The client is still sending (a body we did not read): tell it to stop.
            with contextlib.suppress(H2Error):
                self.conn.h2.reset_stream(stream.sid, ErrorCodes.NO_ERROR)
        self._release(stream)

    def reset(self, stream: Http2Stream, code: ErrorCodes) -> None:
        """End the stream with RST_STREAM `code`."""
        if not stream.closed and not self.conn.closed:
            with contextlib.suppress(H2Error):
                self.conn.h2.reset_stream(stream.sid, code)
            self.conn.flush()
        self.drop(stream, ConnectionGone())

    def drop(self, stream: Http2Stream, exc: Exception) -> None:
        """The stream ends without (the rest of) an answer: reset by the client, or gone."""
        stream.closed = True
        self.open.pop(stream.sid, None)
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

    def drop_all(self) -> None:
        """The connection is gone."""
        for stream in list(self.open.values()):
            self.drop(stream, ConnectionGone())
        self.open.clear()

    def _release(self, stream: Http2Stream) -> None:
        self.bodies.release(stream.sid)
        if not self.open:
            self.idle_since = self.clock.mono
