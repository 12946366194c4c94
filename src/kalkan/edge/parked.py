"""`ParkedConnection`: a keep-alive connection between requests, held in a few slots.

An idle `HttpConnection` carries a parser, flow control, queues and some forty slots (about
1 KB beyond what uvloop itself needs per socket), which thousands of idle browsers multiply.
Once it has been idle a while (or at once, when many connections are open) it hands its
transport to one of these, which keeps only what the next request needs (who the client is,
the keep-alive deadline) and makes a fresh `HttpConnection` when bytes arrive. After a longer
quiet a plain-HTTP one also gives its socket to the server's shelf (edge/shelf.py), which takes
it out of the event loop until the client sends again.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from kalkan.edge.shelf import SHELVE_AFTER

if TYPE_CHECKING:
    from kalkan.edge.listener import Listener

# Parked deadlines are rounded down to this many steps a second, so that connections parked
# within one step share one float object (32 bytes each otherwise); the server's sweep checks
# them only every 0.25 s anyway.
_DEADLINE_STEPS = 8
_last_deadline = [0.0]


def shared_deadline(deadline: float) -> float:
    """`deadline` rounded down to the step, as the same object as the last one when equal."""
    step = math.floor(deadline * _DEADLINE_STEPS) / _DEADLINE_STEPS
    last = _last_deadline[0]
    if step == last:
        return last
    _last_deadline[0] = step
    return step


class ParkedConnection(asyncio.Protocol):
    """The protocol of an idle keep-alive connection; see the module docstring.

    Five slots and no bound method: thousands of these are what an idle crowd costs
    (bench.connection_memory). The client address is also the peer's (the two differ only per
    request, behind a trusted proxy); `transport` is None once the connection was lost or
    woken, and while it is shelved (then `fd` is its socket on the shelf, else -1); TLS
    connections are `ParkedTlsConnection`s, so the scheme is the class's."""

    __slots__ = ("server", "transport", "client", "deadline", "fd")

    scheme = "http"
    # What the server's sweep and shutdown read of every connection they hold.
    busy = False
    write_deadline = 0.0
    # Makes the full connection again: edge/connection.py's `unpark`, set when it is imported
    # (this module cannot import it: connection.py imports this one).
    wake: ClassVar[Callable[[ParkedConnection, asyncio.Transport], Any]]

    def __init__(self, server: Listener, transport: asyncio.Transport, client: str,
                 deadline: float) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = transport
        self.client = client
        self.deadline = shared_deadline(deadline)  # the keep-alive deadline it was parked with
        self.fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Back from the shelf, on a new transport (edge/shelf.py)."""
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    @property
    def data_received(self) -> Callable[[bytes], None]:
        # uvloop keeps `protocol.data_received` while the protocol is set: a bound method would
        # be one more object (64 bytes) per parked connection; this object is the callable.
        return self

    def __call__(self, data: bytes) -> None:
        """`data_received`: the client's next request wakes the connection."""
        transport = self.transport
        if transport is None:
            return
        self.transport = None  # this object is done; the connection lives on in `conn`
        self.server.connections.discard(self)
        conn = ParkedConnection.wake(self, transport)
        transport.set_protocol(conn)
        conn.data_received(data)

    def eof_received(self) -> bool | None:
        return None  # nothing was asked: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:  # (None: woken, and the connection lives on elsewhere)
            self.transport = None
            self.gone()

    def check_timers(self, mono: float) -> None:
        if mono > self.deadline:
            self.server.metrics.timeouts["keepalive"] += 1
            self.close()
            return
        transport = self.transport
        if transport is not None and self.scheme == "http":
            server = self.server
            shelf = server.shelf
            # After SHELVE_AFTER of quiet (the deadline is the last request's time plus the
            # keep-alive timeout), or at once while many connections are open, as for parking.
            quiet_until = self.deadline - server.config.limits.keepalive_timeout + SHELVE_AFTER
            if shelf is not None and (len(server.connections) > server.park_at_once_past
                                      or mono >= quiet_until):
                fd = shelf.put(self, transport)
                if fd >= 0:
                    self.transport = None
                    self.fd = fd

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # connection_lost releases the client's slot
        elif self.fd >= 0:
            self._off_shelf()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        elif self.fd >= 0:
            self._off_shelf()

    def _off_shelf(self) -> None:
        shelf = self.server.shelf
        if shelf is not None:
            shelf.drop(self.fd)
        self.fd = -1
        self.gone()

    def gone(self) -> None:
        """The connection ended (lost, or closed while shelved or rejoining the loop): out of
        the server's set, its slot in the per-client count released, once."""
        connections = self.server.connections
        if self in connections:  # (once: its slot in the per-client count goes with it)
            connections.discard(self)
            self.server.release(self.client)


class ParkedTlsConnection(ParkedConnection):
    """A parked connection that speaks TLS (its transport is the TLS layer's)."""

    __slots__ = ()
    scheme = "https"
