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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kalkan.edge.listener import Listener


class ParkedConnection(asyncio.Protocol):
    """The protocol of an idle keep-alive connection; see the module docstring."""

    __slots__ = ("server", "transport", "scheme", "peer", "client", "trusts_peer", "deadline",
                 "closed", "wake")

    # What the server's sweep and shutdown read of every connection they hold.
    busy = False
    write_deadline = 0.0

    def __init__(self, server: Listener, transport: asyncio.Transport, scheme: str, peer: str,
                 client: str, trusts_peer: bool, deadline: float,
                 wake: Callable[[ParkedConnection], asyncio.Protocol]) -> None:
        self.server = server
        self.transport = transport
        self.scheme = scheme
        self.peer = peer
        self.client = client
        self.trusts_peer = trusts_peer
        self.deadline = deadline  # the keep-alive deadline it was parked with
        self.closed = False
        self.wake = wake  # makes the full connection again (connection.unpark)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.closed = True  # this object is done; the connection lives on in `conn`
        self.server.connections.discard(self)
        conn = self.wake(self)
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
