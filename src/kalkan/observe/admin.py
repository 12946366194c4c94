"""The admin listener (loopback by default, never the public one): metrics, health and purge.

Traffic here is a scrape every few seconds and the odd purge, so a plain asyncio stream server with
a bounded head read is enough; admin actions need the configured bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from kalkan.observe.metrics import Metrics

_MAX_HEAD = 16 * 1024


class AdminServer:
    """GET /metrics, GET /healthz, POST /purge?url=URL | /purge?all=1 (token)."""

    def __init__(self, metrics: Metrics, purge: Callable[[str | None], int],
                 token: str | None) -> None:
        self.metrics = metrics
        self.purge = purge
        self.token = token
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        sock = self.server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            status, ctype, body = self._route(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        except ValueError as exc:
            status, ctype, body = 400, "text/plain", f"{exc}\n".encode()
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                     b"Cache-Control: no-store\r\nConnection: close\r\n\r\n%s"
                     % (status, _REASONS.get(status, b"OK"), ctype.encode(), len(body), body))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _route(self, head: bytes) -> tuple[int, str, bytes]:
        if len(head) > _MAX_HEAD:
            raise ValueError("request head too large")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            raise ValueError("malformed request line") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        if method == "GET" and url.path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics.render().encode()
        if method == "GET" and url.path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if url.path == "/purge":
            if method != "POST":
                return 405, "text/plain", b"use POST\n"
            if not self._authorized(headers.get("authorization", "")):
                return 401, "text/plain", b"admin token missing or wrong\n"
            query = parse_qs(url.query)
            if query.get("all") == ["1"]:
                removed = self.purge(None)
            elif "url" in query:
                removed = self.purge(query["url"][0])
            else:
                raise ValueError("purge needs ?url=URL or ?all=1")
            return 200, "application/json", json.dumps({"purged": removed}).encode() + b"\n"
        return 404, "text/plain", b"not found\n"

    def _authorized(self, header: str) -> bool:
        if self.token is None:
            return True  # no token configured: the listener's loopback address is the boundary
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), self.token)


_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
            405: b"Method Not Allowed"}
