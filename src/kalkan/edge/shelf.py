"""`Shelf`: the sockets of long-idle plain-HTTP keep-alive connections, taken out of the event
loop and watched by one epoll of their own until their client sends again.

A parked connection (edge/parked.py) still has its uvloop transport and libuv handle: about
1.2 KB a socket (a bare uvloop server that answers one request and holds its connections idle
costs as much). After `SHELVE_AFTER` seconds of quiet a parked plain-HTTP connection hands its
socket here: the shelf keeps a duplicate of the descriptor in its epoll and the transport is
closed (closing one of two descriptors of a socket neither shuts it down nor tells the client).
What is left per connection is the `ParkedConnection` (a few slots) and one entry in this
shelf's table. When the socket becomes readable (a request, or the client closing), the
connection rejoins the event loop as a new transport (`loop.connect_accepted_socket`) with the
same `ParkedConnection` as its protocol, which reads the bytes waiting in the kernel as any
parked connection does. TLS connections are never shelved: their state lives in the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
from typing import Protocol, cast

SHELVE_AFTER = 1.0
"""Seconds of quiet after which a parked plain-HTTP connection is shelved. A reader's page and
its assets come within a fraction of a second; the next page comes after seconds of reading.
Waking from the shelf costs a new transport (tens of microseconds), so a connection that is
about to be used again is left parked. While more than PARK_AT_ONCE_PAST connections are open
(edge/connection.py) a parked connection is shelved at the next sweep instead: memory first."""

_EVENTS = select.EPOLLIN | select.EPOLLRDHUP if hasattr(select, "epoll") else 0
_BATCH = 256  # sockets handed back per wake-up of the loop (the rest: at the next one)


class Shelved(Protocol):
    """What the shelf needs of a connection it holds (edge/parked.py's `ParkedConnection`; a
    protocol here, so that this module imports nothing of the connection's)."""

    fd: int

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def gone(self) -> None: ...


class _LetGo(asyncio.Protocol):
    """The protocol of a transport whose socket went to the shelf: its closing is no event."""

    def connection_lost(self, exc: Exception | None) -> None:
        return None


_LET_GO = _LetGo()


class Shelf:
    """One epoll holding shelved sockets; see the module docstring. `make` returns None where
    the platform has no epoll (then connections stay parked)."""

    __slots__ = ("_loop", "_epoll", "_held", "_joining")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._held: dict[int, Shelved] = {}
        self._joining: set[asyncio.Task[None]] = set()
        loop.add_reader(self._epoll.fileno(), self._ready)

    @classmethod
    def make(cls, loop: asyncio.AbstractEventLoop) -> Shelf | None:
        return cls(loop) if hasattr(select, "epoll") else None

    def __len__(self) -> int:
        return len(self._held)

    def put(self, parked: Shelved, transport: asyncio.Transport) -> int:
        """Take the socket of `transport` (whose protocol is `parked`) and close the transport;
        returns the shelved descriptor, or -1 when the transport has no socket to give (it then
        stays as it was)."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return -1
        try:
            fd = os.dup(sock.fileno())
        except OSError:
            return -1  # (out of descriptors: the connection stays parked)
        try:
            self._epoll.register(fd, _EVENTS)
        except OSError:
            os.close(fd)
            return -1
        self._held[fd] = parked
        transport.set_protocol(_LET_GO)
        transport.abort()  # closes the loop's descriptor; the socket lives on in `fd`
        return fd

    def drop(self, fd: int) -> None:
        """Close a shelved socket (its keep-alive time is up, or the server closes)."""
        if self._held.pop(fd, None) is not None:
            self._unregister(fd)
            os.close(fd)

    def _unregister(self, fd: int) -> None:
        with contextlib.suppress(OSError):  # (already gone: nothing to undo)
            self._epoll.unregister(fd)

    def _ready(self) -> None:
        """Readable shelved sockets go back to the event loop (a request or a close waits)."""
        for fd, _ in self._epoll.poll(0, _BATCH):
            parked = self._held.pop(fd, None)
            self._unregister(fd)
            if parked is None:
                os.close(fd)
                continue
            parked.fd = -1
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                parked.gone()
                continue
            task = self._loop.create_task(self._rejoin(parked, sock))
            self._joining.add(task)
            task.add_done_callback(self._joining.discard)

    async def _rejoin(self, parked: Shelved, sock: socket.socket) -> None:
        try:
            # Calls parked.connection_made with the new transport, then starts reading.
            await self._loop.connect_accepted_socket(lambda: cast(asyncio.Protocol, parked), sock)
        except (OSError, ValueError, RuntimeError):
            sock.close()
            parked.gone()

    def close(self) -> None:
        """Close every socket still shelved and the epoll (the server is closing)."""
        for task in list(self._joining):
            task.cancel()
        for fd, parked in list(self._held.items()):
            self.drop(fd)
            parked.gone()
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
