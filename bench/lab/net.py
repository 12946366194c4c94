"""Loopback-only networking for the lab: source address plans and a small keep-alive HTTP/1.1
client (httptools) whose sockets are bound to a chosen 127.x.y.z, so the edge sees many clients.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass, field

import httptools

from bench.common import BenchError, require_loopback, require_loopback_ip

# Address plan (all inside 127.0.0.0/8, which Linux routes to lo as a whole). Readers, feed
# readers, the crawler and bots never share a /24, so per-prefix rules see them apart.
READERS_BASE = 10      # readers: 127.10.0.0 - 127.29.255.255
FEEDS_BASE = 50        # feed readers: 127.50.x.y
APPS_BASE = 51         # feed apps (conditional polling): 127.51.x.y
PREVIEWS_BASE = 60     # link-preview bots: 127.60.P.x, one /24 per platform
CRAWLER_NET = "127.66.249.0/24"
"""Stands in for Googlebot's published 66.249.64.0/19 (a lab crawlers.yaml lists it)."""
BOTS_BASE = 100        # bots: 127.100.0.0 and up


def require_loopback_source(address: str) -> str:
    """Return *address* if it is a loopback IP literal (a source we may bind), else raise."""
    require_loopback_ip(address, f"source address {address!r}")
    return address


def spread_address(base: int, index: int, per_prefix: int, offset: int = 0) -> str:
    """The *index*-th address of a plan starting at 127.BASE.0.0 with *per_prefix* hosts per /24
    (hosts .1 up, or .OFFSET+1 up), so a pool of N clients covers N / per_prefix distinct /24
    networks. An offset puts a second plan beside the first in the same /24s (CGNAT: bots next
    to readers)."""
    if not 1 <= per_prefix <= 254 or not 0 <= offset <= 254 - per_prefix:
        raise BenchError(f"per_prefix {per_prefix} with host offset {offset} does not fit a /24")
    prefix, host = divmod(index, per_prefix)
    second, third = divmod(prefix, 256)
    if base + second > 255:
        raise BenchError(f"address plan 127.{base}.x.y overflows 127/8 at client {index}")
    return f"127.{base + second}.{third}.{host + 1 + offset}"


def crawler_address(index: int) -> str:
    """An address inside the lab's stand-in crawler range."""
    net = ipaddress.ip_network(CRAWLER_NET)
    return str(net[1 + index % (net.num_addresses - 2)])


@dataclass(slots=True)
class Response:
    """One HTTP response: status, X-* headers and validators (lower-cased names), Set-Cookie
    values and the body (if kept)."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes
    set_cookies: list[bytes] = field(default_factory=list)

    def header(self, name: bytes) -> str:
        return self.headers.get(name, b"").decode("latin-1")


_VALIDATORS = frozenset({b"etag", b"last-modified"})
_VALIDATOR_INITIALS = frozenset({0x65, 0x6C})   # e, l


class Connection(asyncio.Protocol):
    """One client connection; `request` sends raw bytes and waits for one complete response."""

    def __init__(self, keep_body: bool) -> None:
        self.keep_body = keep_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: dict[bytes, bytes] = {}
        self._cookies: list[bytes] = []
        self._body: list[bytes] = []
        self._name = b""

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("connection closed by the server"))

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._headers, self._cookies, self._body = {}, [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        # The lab reads only X-* headers (X-Cache, X-Kalkan-Challenge), Set-Cookie and the
        # validators feed apps send back (ETag, Last-Modified); skipping the rest keeps the
        # attackers' per-response cost down.
        first = name[0] | 0x20
        if first == 0x78:      # x
            self._headers[name.lower()] = value
        elif first == 0x73:    # s
            if name.lower() == b"set-cookie":
                self._cookies.append(value)
        elif first in _VALIDATOR_INITIALS and name.lower() in _VALIDATORS:
            self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        if self.keep_body:
            self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if not self._parser.should_keep_alive():
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(status, self._headers, b"".join(self._body),
                                       self._cookies))

    # -- use
    async def request(self, raw: bytes, timeout: float) -> Response:
        """Send one request and wait at most *timeout* seconds for its response."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection is closed")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # One timer per request, cheaper than asyncio.wait_for at thousands of requests a second.
        timer = loop.call_later(timeout, self._expire, waiter)
        self.transport.write(raw)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future[Response]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())
            self.close()  # a late response must not be read as the next request's

    def send(self, data: bytes) -> None:
        """Write bytes without waiting for a response (slow clients)."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


async def connect(host: str, port: int, source: str, keep_body: bool = True,
                  timeout: float = 5.0) -> Connection:
    """Open a connection to loopback ``host:port`` from loopback address *source*."""
    require_loopback(host)
    require_loopback_source(source)
    loop = asyncio.get_running_loop()
    # A socket bound and connected by hand: create_connection(host, local_addr=...) would run
    # getaddrinfo for both addresses on every connect, which bots making a connection per
    # request cannot afford.
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            _, proto = await loop.create_connection(lambda: Connection(keep_body), sock=sock)
    except BaseException:
        sock.close()
        raise
    return proto


def build_request(method: str, target: str, host: str, headers: list[tuple[str, str]],
                  body: bytes = b"") -> bytes:
    """The bytes of one HTTP/1.1 request (keep-alive; Content-Length when there is a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def now() -> float:
    """The lab's clock: CLOCK_MONOTONIC, shared by every process on the machine."""
    return time.monotonic()
