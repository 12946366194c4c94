"""The shelf's own edges, with real sockets but no server: a transport whose socket cannot be
taken stays where it was, and closing the shelf closes what it holds."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from kalkan.edge.shelf import Shelf


class _Held:
    """A shelved connection as the shelf sees it: its descriptor, and whether it ended."""

    def __init__(self) -> None:
        self.fd = -1
        self.ended = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def gone(self) -> None:
        self.ended = True

    def data_received(self, data: bytes) -> None:
        pass  # (the test looks only at the transport)

    def eof_received(self) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _Transport:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.protocol: Any = None
        self.aborted = False

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def abort(self) -> None:
        self.aborted = True
        if self.sock is not None:
            self.sock.close()


async def test_a_socket_that_cannot_be_duplicated_stays_with_its_transport() -> None:
    shelf = Shelf(asyncio.get_running_loop())
    a, b = socket.socketpair()
    a.close()  # fileno() is -1 now: os.dup refuses it
    transport = _Transport(a)
    held = _Held()
    assert shelf.put(held, transport) == -1  # type: ignore[arg-type]
    assert not transport.aborted and len(shelf) == 0
    b.close()
    shelf.close()


async def test_closing_the_shelf_closes_its_sockets_and_ends_their_connections() -> None:
    shelf = Shelf(asyncio.get_running_loop())
    a, b = socket.socketpair()
    transport = _Transport(a)
    held = _Held()
    fd = shelf.put(held, transport)  # type: ignore[arg-type]
    assert fd >= 0 and transport.aborted and len(shelf) == 1
    held.fd = fd
    shelf.close()
    assert held.ended and len(shelf) == 0
    try:
        os.fstat(fd)
        closed = False
    except OSError:
        closed = True
    assert closed
    assert b.recv(1) == b""  # the peer sees the close
    b.close()


async def test_a_shelved_socket_that_becomes_readable_rejoins_the_loop() -> None:
    loop = asyncio.get_running_loop()
    shelf = Shelf(loop)
    a, b = socket.socketpair()
    a.setblocking(False)
    transport = _Transport(a)
    held = _Held()
    held.fd = shelf.put(held, transport)  # type: ignore[arg-type]
    b.sendall(b"GET / HTTP/1.1\r\n\r\n")
    for _ in range(100):
        await asyncio.sleep(0.01)
        if held.transport is not None:
            break
    assert held.transport is not None and held.fd == -1 and len(shelf) == 0
    held.transport.abort()
    await asyncio.sleep(0.01)
    b.close()
    shelf.close()
