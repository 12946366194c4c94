"""The public listeners: accepting client sockets, the sweep that checks every connection's
deadlines, and admission (the total and per-client connection counts). What happens on one
connection is `HttpConnection`'s (edge/connection.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import cast

from kalkan.config import Config
from kalkan.edge.client_address import TrustedProxies
from kalkan.edge.clock import CLOCK_STEP, Clock
from kalkan.edge.connection import PARK_AT_ONCE_PAST, HttpConnection
from kalkan.edge.h2_connection import H2Connection, H2Counters, negotiating_protocol
from kalkan.edge.listener import Handler
from kalkan.edge.parked import ParkedConnection
from kalkan.edge.reader import HEAD, IDLE, timeouts
from kalkan.edge.request import Request
from kalkan.edge.shelf import Shelf

__all__ = ["EdgeServer"]

# While draining, an idle keep-alive connection is closed after this long without a request: a
# client in the middle of a run of requests sends its next one well within it (and is answered
# with `Connection: close`).
DRAIN_QUIET = 1.0


def _between_requests(conn: object) -> bool:
    """Idle: nothing of a request read and nothing being answered (parked, or HTTP/1.1 with no
    request begun, before its first one or between two)."""
    if isinstance(conn, HttpConnection):
        return (not conn.busy and conn._req is None and not conn._queue
                and conn.state in (HEAD, IDLE) and conn.transport is not None)
    return isinstance(conn, ParkedConnection)


def http1(server: EdgeServer, scheme: str) -> asyncio.Protocol:
    """An HTTP/1.1 connection as the event loop sees it: an asyncio protocol. (HttpConnection
    is compiled by mypyc, which cannot derive from the interpreted asyncio.Protocol; the loop
    only calls its methods.)"""
    return cast(asyncio.Protocol, HttpConnection(server, scheme))


class EdgeServer:
    """Owns the listeners, the set of open connections and the per-client connection counts."""

    def __init__(self, config: Config, pipeline: Handler) -> None:
        self.config = config
        self.pipeline = pipeline
        self.metrics = pipeline.metrics
        self.clock: Clock = pipeline.clock
        self.connections: set[HttpConnection | H2Connection] = set()
        self.per_client: dict[str, int] = {}
        self.open = 0
        self.trusted = TrustedProxies(config.client_address.trusted_proxies)
        self.servers: list[asyncio.base_events.Server] = []
        self.h2_counters: H2Counters | None = None  # made with the first HTTP/2 listener
        self._sweeper: asyncio.TimerHandle | None = None
        self.log_refusal: Callable[[str, int, str], None] = pipeline.log_refusal
        self.log_error: Callable[[Request, BaseException], None] = pipeline.log_error
        limits = config.limits
        self.timeouts = timeouts(limits)  # seconds per connection State
        # Bytes a request head may take before httptools must have handed it over complete.
        self.head_limit = limits.max_request_line + limits.max_header_bytes + 4096
        self.park_at_once_past = PARK_AT_ONCE_PAST  # see connection.py
        self.shelf: Shelf | None = None  # made with the first listener (needs the loop)
        # Every listener of this pipeline (the HTTPS one and the redirect one) adds its own.
        counted = self.metrics.open_connections
        self.metrics.open_connections = lambda: counted() + self.open

    def admit(self, client: str) -> bool:
        limits = self.config.limits
        if self.open >= limits.max_connections:
            return False
        n = self.per_client.get(client, 0)
        if n >= limits.max_connections_per_client:
            return False
        self.per_client[client] = n + 1
        self.open += 1
        return True

    def release(self, client: str) -> None:
        self.open -= 1
        n = self.per_client.get(client, 1) - 1
        if n <= 0:
            self.per_client.pop(client, None)
        else:
            self.per_client[client] = n

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                     protocol: Callable[[], asyncio.Protocol] | None = None,
                     sock: socket.socket | None = None, *,
                     start_serving: bool = True) -> tuple[str, int]:
        """Serve on host:port, or on `sock` when it was bound already (before dropping root);
        with start_serving=False the socket is only bound (a TLS listener waiting for its first
        certificate) until `start_serving`."""
        loop = asyncio.get_running_loop()
        if self.shelf is None:
            self.shelf = Shelf.make(loop)
        scheme = "https" if ssl_context is not None else "http"
        factory = protocol or (lambda: http1(self, scheme))
        tls = self.config.tls
        if protocol is None and ssl_context is not None and (tls is None or tls.http2):
            # ALPN decides after the handshake: h2, or HTTP/1.1 as before.
            counters = self.h2_counters = self.h2_counters or H2Counters(self.metrics.counter)
            factory = negotiating_protocol(lambda: http1(self, scheme),
                                           lambda: H2Connection(self, counters))
        # A TLS connection reaches our protocol only once its handshake is done, so the header
        # timeout must bound the handshake itself (asyncio's default allows 60 s).
        tls_timeout = self.config.limits.header_timeout if ssl_context is not None else None
        if sock is not None:
            server = await loop.create_server(factory, sock=sock, ssl=ssl_context, backlog=4096,
                                              ssl_handshake_timeout=tls_timeout,
                                              start_serving=start_serving)
        elif host == "::":
            # `[::]` means every address, IPv4 too; asyncio would make it IPv6-only, so the
            # socket is made here with IPV6_V6ONLY off (IPv4 peers arrive as ::ffff:a.b.c.d).
            dual = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                dual.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                dual.bind(("::", port))
                dual.setblocking(False)
            except OSError:
                dual.close()
                raise
            server = await loop.create_server(factory, sock=dual, ssl=ssl_context, backlog=4096,
                                              ssl_handshake_timeout=tls_timeout,
                                              start_serving=start_serving)
        else:
            server = await loop.create_server(factory, host, port, ssl=ssl_context, backlog=4096,
                                              reuse_address=True,
                                              ssl_handshake_timeout=tls_timeout,
                                              start_serving=start_serving)
        self.servers.append(server)
        if self._sweeper is None:
            self._sweep()
        bound = server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def start_serving(self) -> None:
        for server in self.servers:
            await server.start_serving()

    def _sweep(self) -> None:
        self.clock.tick()
        mono = self.clock.mono
        for conn in list(self.connections):
            if conn.deadline or conn.write_deadline:
                conn.check_timers(mono)
        self.pipeline.tick()
        self._sweeper = asyncio.get_running_loop().call_later(CLOCK_STEP, self._sweep)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting and drain for up to `grace` seconds, then close what is left.

        Draining: requests in progress finish; every answer from now on says
        `Connection: close` (the client's next request opens a new connection, which another
        worker, or the one replacing this, accepts); an idle keep-alive connection is closed
        once it has stayed idle for DRAIN_QUIET seconds. Closing it at once would race with a
        request its client is sending at that moment, which would then find the connection
        closed under it (clients may retry that, but many count it as an error)."""
        for server in self.servers:
            server.close()
        forget = getattr(self.pipeline, "forget_replays", None)
        if forget is not None:
            forget()  # the replay memo holds keep-alive answers
        deadline = time.monotonic() + grace
        idle_since: dict[object, float] = {}
        while self.connections:
            now = time.monotonic()
            if now >= deadline:
                break
            for conn in list(self.connections):
                if isinstance(conn, HttpConnection):
                    conn.draining = True  # (again: one woken from parking is a new object)
                if conn.busy:
                    idle_since.pop(conn, None)
                elif not _between_requests(conn):
                    if isinstance(conn, H2Connection):
                        conn.close()  # (as before: HTTP/2 ends its streams itself)
                    idle_since.pop(conn, None)
                elif now - idle_since.setdefault(conn, now) >= DRAIN_QUIET:
                    conn.close()
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        if self.shelf is not None:
            self.shelf.close()
            self.shelf = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
