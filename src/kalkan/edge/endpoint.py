"""The socket side of a client connection: lifecycle, admission, writes, flow control and the
lingering close; `HttpConnection` (edge/connection.py) builds on it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING

from kalkan.edge.body_files import BodyFile, send_head_and_file
from kalkan.edge.reader import DONE, LINGERING, RequestReader

if TYPE_CHECKING:
    from kalkan.edge.listener import Listener

try:  # Linux: bytes in a socket's send queue not yet acknowledged (SIOCOUTQ)
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - other systems: our buffer only
    _OUTQ = None


class ConnectionGone(Exception):
    """The client closed its connection while we were still working for it."""


class Endpoint(RequestReader):
    """The transport of one client and what is known of it; `busy` says an answer is in
    progress as a task, independently of `state` (a pipelined head may arrive meanwhile)."""

    __slots__ = ("transport", "counted", "closed", "busy", "_task", "bytes_out", "_eof",
                 "write_deadline", "_write_mark", "_fd")

    def __init__(self, server: Listener, scheme: str) -> None:
        super().__init__(server, scheme)
        self.transport: asyncio.Transport | None = None
        self.counted = False
        self.closed = False
        self.busy = False  # `_task` is answering the first queued request
        self._task: asyncio.Task[None] | None = None
        self.bytes_out = 0  # through `write`, i.e. by the slow path
        self._eof = False
        self.write_deadline = 0.0  # send timeout: when to check the client took something
        self._write_mark = 0
        # The socket's descriptor for sendfile: -2 until first needed, -1 where there is none
        # to write to directly (TLS, or a transport without a socket).
        self._fd = -2

    # -- connection lifecycle -------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.flow.closed()
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

    def eof_received(self) -> bool | None:
        """The client half-closed: answer what it already asked for, then close."""
        req = self._req
        if req is not None and req.body is not None and not req.body.done:
            # A body cut off by the client's FIN can never be completed: end the request now,
            # so its origin connection and slot are freed at once, not after body_timeout.
            req.body.fail(ConnectionGone())
            return None
        if (self.busy or self._queue or self._stash) and self.state != LINGERING:
            self._eof = True
            return True  # keep the transport open for the answers (ignored under TLS)
        return None

    def client_gone(self) -> bool:
        """Has the client closed its connection (or half-closed it: like nginx, a request still
        waiting for the origin is then taken as abandoned)?"""
        return self.closed or self._eof

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
        self.state, self.deadline = DONE, 0.0  # input is dropped unparsed from now on
        if not transport.can_write_eof():
            self.close()
            return
        transport.write_eof()
        self._enter(LINGERING)
        self.flow.read_again()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.flow.closed()
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.flow.closed()
            self.transport.close()

    # -- bytes out ------------------------------------------------------------------------------
    def pause_writing(self) -> None:
        self.flow.pause_writing()
        self.write_deadline = self.clock.mono + self.limits.send_timeout
        self._write_mark = self._unsent()
        self.flow.pause_reading("write")

    def resume_writing(self) -> None:
        self.write_deadline = 0.0
        self.flow.resume_writing()
        self.flow.resume_reading("write")

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

    def write(self, data: bytes) -> None:
        """Part of an answer from the slow path (counted in `bytes_out`)."""
        if self.closed or self.state == LINGERING:
            raise ConnectionGone()
        assert self.transport is not None
        self.bytes_out += len(data)
        self.transport.write(data)

    def send_now(self, buffers: tuple[bytes, ...] | list[bytes]) -> None:
        """A whole answer at once, as one vectored write (a hit, a replay, a standing refusal).

        Only called while the connection reads, so never after it is closed or lingering."""
        self.transport.writelines(buffers)  # type: ignore[union-attr]

    def send_hit(self, data: tuple[bytes, ...], file: BodyFile | None) -> None:
        """A whole answer at once (a hit, a replay, a refusal): from its body file when it has
        one (edge/body_files.py), else as one vectored write."""
        if file is None or not self._send_file(data, file):
            self.transport.writelines(data)  # type: ignore[union-attr]

    def _send_file(self, data: tuple[bytes, ...], file: BodyFile) -> bool:
        """Send a hit's head, then its body from `file` by sendfile (edge/body_files.py); what
        the socket does not take at once is queued on the transport. False: not sent at all
        (no socket to write to directly, or bytes already queued that must go first)."""
        transport = self.transport
        assert transport is not None
        fd = self._fd
        if fd == -2:
            sock = transport.get_extra_info("socket")
            fd = self._fd = sock.fileno() if sock is not None and \
                transport.get_extra_info("sslcontext") is None else -1
        if fd < 0 or transport.get_write_buffer_size():
            return False
        head, body = data[0], data[1]
        sent = send_head_and_file(fd, head, file.fd, file.size)
        if sent == 0:
            return False  # the transport's own write meets (and reports) whatever the socket has
        n = len(head)
        if sent < n:
            transport.writelines((head[sent:], body))
        elif sent < n + len(body):
            transport.write(memoryview(body)[sent - n:])
        return True

    async def drain(self) -> None:
        """Wait until the client has taken what we sent (bounded by send_timeout via the sweep)."""
        if self.closed:
            raise ConnectionGone()
        if not self.flow.write_paused:
            return
        await self.flow.drain()
        if self.closed:
            raise ConnectionGone()
