"""A small real-socket HTTP/1.1 client for the tests (raw bytes in, parsed responses out)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from kalkan.demo.site import DemoSite, DemoSiteConfig
from kalkan.edge.app import Edge

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
                with contextlib.suppress(httptools.HttpParserError):
                    parser.parser.feed_eof()
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


def port_of(edge: Edge) -> int:
    """The first public port an in-process edge listens on."""
    return edge.addresses[0][1]
