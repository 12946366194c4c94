"""`Http2Stream`: one HTTP/2 request/response exchange as the pipeline's `conn`. It reads the
HTTP/1.1 bytes the pipeline writes back into a status, HTTP/2 fields and body bytes (the head
parse memoized, chunking undone), which its `StreamOutput` frames as HEADERS and DATA.

The pipeline and the stored entries stay one format, and the head parsed here is always one the
edge serialized itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from kalkan.edge.endpoint import ConnectionGone
from kalkan.edge.flow import FlowControl
from kalkan.edge.request import Request
from kalkan.memo import Memo

__all__ = ["DRAIN_MARK", "Http2Stream", "StreamOutput"]

DRAIN_MARK = 64 * 1024      # a relayed body waits while this much is not yet framed
# Response fields HTTP/2 forbids (RFC 9113 §8.2.2), and those the edge writes for HTTP/1.1.
_NOT_IN_H2 = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection",
                        b"upgrade", b"te"})
# How the body after a head the pipeline wrote is framed.
_LENGTH, _CHUNKED, _RAW, _NONE = range(4)


class StreamOutput(Protocol):
    """Where a stream's answer goes: the connection's frames (edge/h2_streams.py)."""

    flow: FlowControl

    def send_headers(self, stream: Http2Stream, fields: list[tuple[bytes, bytes]]) -> None: ...
    def pump(self, stream: Http2Stream) -> None: ...


class Http2Stream:
    """One request/response exchange on an HTTP/2 connection, as the pipeline's `conn`: what
    the slow path writes through (`write`, `drain`, `send_now`). The replay memo, the only
    user of a connection's `client` and `standing`, is never asked about HTTP/2 streams."""

    __slots__ = ("out", "sid", "req", "_head", "_mode", "_left",
                 "_chunk_line", "pending", "pending_bytes", "finishing", "closed", "started",
                 "task", "last_data", "_waiter", "end_sent", "body_started", "body_base",
                 "blocked_since")

    def __init__(self, out: StreamOutput, sid: int, req: Request, mono: float) -> None:
        self.out = out
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
        self.last_data = self.body_started = mono
        self.body_base = 0  # body_min_rate: bytes received when measuring (re)started
        self.blocked_since = 0.0  # data waits for a window this client has not opened since
        self._waiter: asyncio.Future[None] | None = None

    # -- the pipeline's connection interface ----------------------------------------------------
    def client_gone(self) -> bool:
        """Was the stream reset, or its connection lost?"""
        return self.closed

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionGone()
        self._feed(data)
        self.out.pump(self)

    def send_now(self, buffers: tuple[bytes, ...] | list[bytes]) -> None:
        for data in buffers:
            self._feed(data)
        self.out.pump(self)

    def send_all(self, buffers: tuple[bytes, ...] | list[bytes]) -> None:
        """A whole answer at once (a hit, a refusal): END_STREAM rides on its last frame."""
        self.finishing = True
        self.send_now(buffers)

    async def drain(self) -> None:
        while not self.closed and (self.pending_bytes > DRAIN_MARK
                                   or self.out.flow.write_paused):
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
        parsed = _HEADS.table.get(head)
        if parsed is None:
            parsed = _parse_head(head)
            if len(head) <= 4096:  # bounded: at most 256 × 4 KiB
                _HEADS.put(head, parsed)
        status, fields, length, chunked = parsed
        if self.req.method == "HEAD" or status in (204, 304):
            self._mode = _NONE
        elif chunked:
            self._mode = _CHUNKED
        elif length is not None:
            self._mode, self._left = _LENGTH, length
        else:
            self._mode = _RAW
        self.out.send_headers(self, fields)

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
_HEADS: Memo[bytes, _Head] = Memo(256)


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
