"""A small real-socket HTTP/1.1 client for the tests (raw bytes in, parsed responses out)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from kalkan.demo.site import DemoSite, DemoSiteConfig
from kalkan.edge.app import Edge
from kalkan.edge.client_address import PROXY_V2_SIGNATURE

# make_edge(origin_url, **config sections) -> a started in-process Edge (tests/integration).
EdgeFactory = Callable[..., Awaitable[Edge]]


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _Parser:
    def __init__(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self.current: Response | None = None
        self.head_only = head_only

    def on_message_begin(self) -> None:
        self.current = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.status = self.parser.get_status_code()
        self.current.keep_alive = self.parser.should_keep_alive()
        if self.head_only:
            self.done.append(self.current)
            self.current = None

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.done.append(self.current)
            self.current = None


class Client:
    """One client connection; `send` raw bytes, `read_response` the next response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._pending: list[Response] = []
        self._parser: _Parser | None = None

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", **kw: object) -> Client:
        reader, writer = await asyncio.open_connection(host, port, **kw)  # type: ignore[arg-type]
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_response(self, head_only: bool = False, timeout: float = 10.0) -> Response:
        if self._parser is None or self._parser.head_only != head_only:
            self._parser = _Parser(head_only)
        parser = self._parser
        while not parser.done:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                # httptools has no feed_eof: a body delimited by the close ends here.
                if parser.current is not None and parser.current.status:
                    parser.done.append(parser.current)
                    parser.current = None
                if not parser.done:
                    raise ConnectionResetError("server closed the connection")
                break
            parser.parser.feed_data(data)
        resp = parser.done.pop(0)
        if head_only:
            self._parser = None
        return resp

    async def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                      body: bytes = b"", host: str = "news.example") -> Response:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return await self.read_response(head_only=method == "HEAD")

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within `timeout`."""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def fetch(port: int, target: str, method: str = "GET",
                headers: dict[str, str] | None = None, body: bytes = b"",
                host: str = "news.example") -> Response:
    """One request on a fresh connection."""
    client = await Client.connect(port)
    try:
        return await client.request(method, target, headers, body, host)
    finally:
        await client.close()


@dataclass
class Origin:
    site: DemoSite
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_origin(port: int = 0, **config: Any) -> Origin:
    settings = {"workers": 8, "page_cost": 0.005, "search_cost": 0.02} | config
    site = DemoSite(DemoSiteConfig(**settings))
    _, bound = await site.start("127.0.0.1", port)
    return Origin(site, bound)


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_low_ports(n: int = 1) -> list[int]:
    """`n` free loopback ports below 1024 (as 80 and 443 are), highest first."""
    found: list[int] = []
    for port in range(1023, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise AssertionError(f"fewer than {n} free ports below 1024")


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Until something listens on loopback `port`; a process `proc` that exits first fails with
    what it printed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            said = out.decode(errors="replace") if isinstance(out, bytes) else out
            raise AssertionError(f"exited early ({proc.returncode}): {said}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def port_of(edge: Edge) -> int:
    """The first public port an in-process edge listens on."""
    return edge.addresses[0][1]


# -- raw exchanges, counters and probes for the connection-layer tests ---------------------------

_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ", re.MULTILINE)


@dataclass
class RawReply:
    """What a server sent back on one connection, and whether it closed the connection."""

    data: bytes
    closed: bool

    @property
    def status(self) -> int | None:
        """The first response's status code; None when nothing (or no response) came back."""
        m = _STATUS_LINE.match(self.data)
        return int(m.group(1)) if m else None

    @property
    def statuses(self) -> list[int]:
        """Status codes of every response head found (bodies must not contain status lines)."""
        return [int(code) for code in _STATUS_LINE.findall(self.data)]


async def read_until_close(reader: asyncio.StreamReader, timeout: float = 5.0) -> RawReply:
    """Read until the peer closes (FIN or RST) or `timeout` seconds pass in all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    data = bytearray()
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), max(deadline - loop.time(), 0))
            if not chunk:
                return RawReply(bytes(data), True)
            data += chunk
    except TimeoutError:
        return RawReply(bytes(data), False)
    except (ConnectionError, OSError):
        return RawReply(bytes(data), True)


async def exchange(port: int, *pieces: bytes, timeout: float = 5.0, pause: float = 0.0,
                   host: str = "127.0.0.1") -> RawReply:
    """Send raw bytes on a fresh connection (`pieces` apart by `pause` s); read until closed."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i, piece in enumerate(pieces):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(piece)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        return await read_until_close(reader, timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def origin_stats(origin: Origin) -> dict[str, Any]:
    """The origin's own counters (/_demo/stats, itself uncounted): what reached it."""
    stats: dict[str, Any] = json.loads((await fetch(origin.port, "/_demo/stats")).body)
    return stats


def echo_headers(resp: Response) -> list[tuple[str, str]]:
    """The request header fields the origin's /_demo/echo saw, in arrival order."""
    return [(name, value) for name, value in json.loads(resp.body)["headers"]]


def echo_header(resp: Response, name: str) -> list[str]:
    """Every value of one field (any case) as /_demo/echo saw it."""
    return [v for k, v in echo_headers(resp) if k.lower() == name.lower()]


def access_log(edge: Edge) -> list[dict[str, Any]]:
    """The edge's access log so far, one dict per line (flushed first)."""
    edge.pipeline.access_log.flush()
    path = edge.config.access_log.path
    assert path and path != "-", "the edge logs to no file"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def connect_raw(port: int, *, rcvbuf: int | None = None,
                      host: str = "127.0.0.1") -> socket.socket:
    """A connected non-blocking socket that reads only when told (slow-reader tests)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return sock


def proxy_v2(source: str | None, dest: str | None = None, *, local: bool = False,
             source_port: int = 51000, dest_port: int = 443, tlvs: bytes = b"") -> bytes:
    """A PROXY protocol v2 header: PROXY from `source` (IPv4 or IPv6), or LOCAL / UNSPEC."""
    command = 0x20 if local else 0x21
    if source is None:
        block, family = b"", 0x00
    elif ":" in source:
        block = socket.inet_pton(socket.AF_INET6, source) + \
            socket.inet_pton(socket.AF_INET6, dest or "::1")
        family = 0x21
    else:
        block = socket.inet_pton(socket.AF_INET, source) + \
            socket.inet_pton(socket.AF_INET, dest or "127.0.0.1")
        family = 0x11
    if block:
        block += struct.pack("!HH", source_port, dest_port)
    body = block + tlvs
    return PROXY_V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


# Cache-key query policy that keeps every parameter of the demo's instruments (/_demo/big?bytes=N
# etc.); the default policy drops unknown parameters before the fetch.
DEMO_QUERIES: dict[str, Any] = {"query": {"paths": {"/_demo/*": ["*"]}}}


class LoopbackServer:
    """A raw TCP server on 127.0.0.1 for tests' hand-made origins: subclasses define `_serve`."""

    port: int = 0
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
