"""`ParkedConnection`: a keep-alive connection between requests, held in a few slots.

An idle `HttpConnection` carries a parser, flow control, queues and some forty slots (about
1 KB beyond what uvloop itself needs per socket), which thousands of idle browsers multiply.
Once it has been idle a while (or at once, when many connections are open) it hands its
transport to one of these, which keeps only what the next request needs (who the client is,
the keep-alive deadline) and makes a fresh `HttpConnection` when bytes arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from kalkan.edge.listener import Listener


class ParkedConnection(asyncio.Protocol):
    """The protocol of an idle keep-alive connection; see the module docstring."""

    # Seven slots: thousands of these are what an idle crowd costs (bench.connection_memory).
    __slots__ = ("server", "transport", "scheme", "peer", "client", "deadline", "closed")

    # What the server's sweep and shutdown read of every connection they hold.
    busy = False
    write_deadline = 0.0
    # Makes the full connection again: edge/connection.py's `unpark`, set when it is imported
    # (this module cannot import it: connection.py imports this one).
    wake: ClassVar[Callable[[ParkedConnection], Any]]

    def __init__(self, server: Listener, transport: asyncio.Transport, scheme: str, peer: str,
                 client: str, deadline: float) -> None:
        self.server = server
        self.transport = transport
        self.scheme = scheme
        self.peer = peer
        self.client = client
        self.deadline = deadline  # the keep-alive deadline it was parked with
        self.closed = False

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.closed = True  # this object is done; the connection lives on in `conn`
        self.server.connections.discard(self)
        conn = ParkedConnection.wake(self)
        self.transport.set_protocol(conn)
        conn.data_received(data)

    def eof_received(self) -> bool | None:
        return None  # nothing was asked: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.server.connections.discard(self)
            self.server.release(self.client)

    def check_timers(self, mono: float) -> None:
        if mono > self.deadline:
            self.server.metrics.timeouts["keepalive"] += 1
            self.close()

    def close(self) -> None:
        self.transport.close()  # connection_lost releases the client's slot

    def abort(self) -> None:
        self.transport.abort()
