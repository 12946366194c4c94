"""`H2Bodies`: the request bodies arriving on the streams of one HTTP/2 connection: bytes pushed
to the pipeline and not yet read, the window handed back to the client as it reads them, and
each body's deadlines (stopped arriving, too slow)."""

from __future__ import annotations

from typing import Protocol

from h2.connection import H2Connection as H2State
from h2.events import DataReceived
from h2.exceptions import H2Error

from kalkan.config import LimitsConfig
from kalkan.edge.clock import Clock
from kalkan.edge.framing import BadRequest
from kalkan.edge.h2_stream import Http2Stream
from kalkan.edge.request import BodyStream
from kalkan.observe.metrics import Metrics

__all__ = ["BODY_RATE_GRACE", "H2Bodies"]

BODY_RATE_GRACE = 5.0       # seconds of a body before its rate is judged (as over HTTP/1.1)


class _Socket(Protocol):
    """What the bodies need of their connection: its h2 state and its writes."""

    h2: H2State
    closed: bool

    def flush(self) -> None: ...


def _nothing() -> None:
    pass


class H2Bodies:
    """Per stream with a body: bytes pushed to it that the pipeline has not read yet. What it
    reads is handed back to the client as window (`_taken`), so a client can never have more
    unread body here than its windows. (A dict, not a BodyStream subclass: BodyStream is
    compiled by mypyc, which interpreted classes cannot derive from.)"""

    __slots__ = ("conn", "limits", "clock", "metrics", "unacked")

    def __init__(self, conn: _Socket, limits: LimitsConfig, clock: Clock,
                 metrics: Metrics) -> None:
        self.conn = conn
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self.unacked: dict[int, int] = {}

    def open(self, sid: int) -> BodyStream:
        """The body of stream `sid`, which has not ended with its head."""
        # The socket is never paused for one stream's body: flow control holds it back.
        self.unacked[sid] = 0
        return BodyStream(_nothing, _nothing, 1 << 62, lambda n: self._taken(sid, n))

    def received(self, stream: Http2Stream | None, event: DataReceived) -> None:
        """A DATA frame for `stream` (None: a stream no longer open)."""
        sid = event.stream_id
        size = event.flow_controlled_length
        body = stream.req.body if stream is not None else None
        if stream is None or body is None or body.ended or sid not in self.unacked:
            self.ack(sid, size)  # a body nobody reads any more: give the window back
            return
        data = event.data
        if size > len(data):
            self.ack(sid, size - len(data))  # padding
        if not data:
            return
        if body.received + len(data) > self.limits.max_body_bytes:
            body.fail(BadRequest(413, "The request body is larger than this site accepts."))
            self.ack(sid, len(data))
            return
        stream.last_data = self.clock.mono
        self.unacked[sid] += len(data)
        body.push(data)

    @staticmethod
    def ended(stream: Http2Stream | None) -> None:
        """The client ended the stream: its body is complete."""
        if stream is not None and stream.req.body is not None and not stream.req.body.ended:
            stream.req.body.finish()

    def _taken(self, sid: int, size: int) -> None:
        """The pipeline read `size` bytes of a stream's body: window back to the client."""
        if sid in self.unacked:
            self.unacked[sid] -= size
        self.ack(sid, size)

    def ack(self, sid: int, size: int) -> None:
        conn = self.conn
        if size and not conn.closed:
            try:
                conn.h2.acknowledge_received_data(size, sid)
            except H2Error:
                return
            conn.flush()

    def release(self, sid: int) -> None:
        """The stream has ended: what it did not read goes back to the connection's window,
        for the other streams."""
        unread = self.unacked.pop(sid, 0)
        if unread > 0:
            self.ack(sid, unread)

    def late(self, stream: Http2Stream, mono: float) -> bool:
        """Check the stream's body against body_timeout and body_min_rate; True when it was
        failed with a 408 (the pipeline reading it sends that, if nothing was yet)."""
        body = stream.req.body
        if body is None or body.ended or stream.sid not in self.unacked:
            return False
        limits = self.limits
        if self.unacked[stream.sid]:
            # Body bytes wait for the pipeline (the origin reads slowly), so the client may be
            # out of window: it cannot be late. Its clocks start again.
            stream.last_data = stream.body_started = mono
            stream.body_base = body.received
            return False
        if mono - stream.last_data > limits.body_timeout:
            self.metrics.timeouts["body"] += 1
            body.fail(BadRequest(408, "The request body stopped arriving."))
            return True
        if mono - stream.body_started > BODY_RATE_GRACE and limits.body_min_rate and \
                (body.received - stream.body_base) / (mono - stream.body_started) < \
                limits.body_min_rate:
            self.metrics.timeouts["body_rate"] += 1
            body.fail(BadRequest(408, "The request body arrived too slowly."))
            return True
        return False
