"""`H2SlowPath`: the streams of one HTTP/2 connection that the pipeline answers as tasks (misses,
bodies, the tarpit), a few at a time, and how a task's failure ends its stream and only it."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from h2.connection import H2Connection as H2State
from h2.errors import ErrorCodes

from kalkan.edge.endpoint import ConnectionGone
from kalkan.edge.framing import BadRequest
from kalkan.edge.h2_stream import Http2Stream
from kalkan.edge.h2_streams import H2Streams
from kalkan.edge.listener import Listener
from kalkan.edge.request import Request
from kalkan.edge.responses import error_response

__all__ = ["SLOW_STREAMS", "H2SlowPath"]

# Streams of one connection on the slow path at once; the rest wait their turn. Over HTTP/1.1 a
# connection has one request in progress: this keeps one HTTP/2 connection from taking 100
# places in the origin gate's queue. Hits never wait.
SLOW_STREAMS = 8


class _Connection(Protocol):
    """What the slow path needs of its connection."""

    h2: H2State
    closed: bool
    client: str

    def flush(self) -> None: ...
    def answered(self, req: Request) -> None: ...


class H2SlowPath:
    """At most SLOW_STREAMS tasks of one connection run `pipeline.respond`; the rest wait in
    order. A task ends its stream: finished, a 4xx for a body that broke a limit, or reset."""

    __slots__ = ("conn", "streams", "server", "_running", "_waiting")

    def __init__(self, conn: _Connection, streams: H2Streams, server: Listener) -> None:
        self.conn = conn
        self.streams = streams
        self.server = server
        self._running = 0  # streams answered by a task now
        self._waiting: deque[Http2Stream] = deque()  # ... and those waiting for their turn

    def answer(self, stream: Http2Stream) -> None:
        if self._running < SLOW_STREAMS:
            self._start(stream)
        else:
            self._waiting.append(stream)  # behind this connection's other misses

    def _start(self, stream: Http2Stream) -> None:
        self._running += 1
        stream.task = asyncio.get_running_loop().create_task(self._run(stream))

    def _next(self) -> None:
        """A slow-path stream finished: start the next one waiting, if any."""
        self._running -= 1
        waiting = self._waiting
        while waiting and not self.conn.closed:
            stream = waiting.popleft()
            if not stream.closed:
                self._start(stream)
                return

    async def _run(self, stream: Http2Stream) -> None:
        conn = self.conn
        server = self.server
        req = stream.req
        try:
            if req.expect_continue:
                conn.h2.send_headers(stream.sid, [(b":status", b"100")])
                conn.flush()
            await server.pipeline.respond(req, stream)
        except ConnectionGone:
            self.streams.reset(stream, ErrorCodes.CANCEL)
            return
        except BadRequest as exc:
            # The body broke a limit while the pipeline read it.
            server.log_refusal(conn.client, exc.status, exc.detail)
            if not stream.started and not stream.closed:
                stream.send_all((error_response(exc.status, exc.detail, server.clock.now,
                                                keep_alive=True),))
            else:
                self.streams.reset(stream, ErrorCodes.CANCEL)
            return
        except asyncio.CancelledError:
            self.streams.reset(stream, ErrorCodes.CANCEL)
            raise
        except Exception as exc:  # a bug must cost one stream, never the edge
            server.log_error(req, exc)
            self.streams.reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        finally:
            stream.task = None
            self._next()
        if stream.closed:
            return
        self.streams.finish(stream)
        conn.answered(req)
