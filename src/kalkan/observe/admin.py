"""The admin listener (loopback by default, never the public one): metrics, health and actions.

Traffic here is a scrape every few seconds and the odd operator command, so a plain asyncio stream
server with bounded reads is enough. Other parts register routes; every route except metrics and
health needs the admin bearer token, and on a non-loopback address those two need it as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kalkan.observe.metrics import Metrics

_MAX_HEAD = 16 * 1024
_MAX_BODY = 1024 * 1024
# After refusing a request whose body we did not read, keep reading (and dropping) what the client
# still sends for a while before closing: closing with unread bytes makes the kernel send a reset,
# and the client would lose our answer (nginx's lingering close).
_LINGER_TIME = 5.0
_LINGER_READ_TIMEOUT = 2.0

# A handler gets the query parameters and the parsed JSON body (or None) and returns
# (status, JSON-able result).
Handler = Callable[[dict[str, str], Any], tuple[int, Any]]


class AdminError(Exception):
    """An operator request the edge cannot carry out; answered with `status` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminServer:
    """GET /metrics and /healthz for anyone on the admin address; everything else with the token."""

    def __init__(self, metrics: Metrics, token: str | None, *, public: bool = False) -> None:
        self.metrics = metrics
        self.token = token
        # Not on loopback: anyone who can reach the port could read metrics, so every route
        # needs the token.
        self.public = public
        self.routes: dict[tuple[str, str], Handler] = {}
        self.server: asyncio.base_events.Server | None = None

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        sock = self.server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body_read = False
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            method, target, headers = _parse_head(head)
            try:
                length = int(headers.get("content-length", "0") or 0)
            except ValueError:
                raise AdminError(400, "malformed Content-Length") from None
            if length < 0:
                raise AdminError(400, "malformed Content-Length")
            if length > _MAX_BODY:
                raise AdminError(413, f"request body too large (limit {_MAX_BODY} bytes)")
            body = await asyncio.wait_for(reader.readexactly(length), 10.0) if length else b""
            body_read = True
            status, ctype, payload = self._dispatch(method, target, headers, body)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        except AdminError as exc:
            status, ctype, payload = exc.status, "application/json", _json({"error": str(exc)})
        except ValueError as exc:
            status, ctype, payload = 400, "application/json", _json({"error": str(exc)})
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                     b"Cache-Control: no-store\r\nConnection: close\r\n\r\n%s"
                     % (status, _REASONS.get(status, b"OK"), ctype.encode(), len(payload),
                        payload))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            if not body_read:
                await _linger(reader, writer)
        writer.close()

    def _dispatch(self, method: str, target: str, headers: dict[str, str],
                  body: bytes) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        if self.public and not self._authorized(headers.get("authorization", "")):
            # Before anything else, so a stranger learns not even which routes exist.
            raise AdminError(401, "admin token missing or wrong (this admin listener is not on "
                                  "loopback, so every route needs it)")
        if method == "GET" and url.path in ("/metrics", "/healthz"):
            if url.path == "/healthz":
                return 200, "text/plain", b"ok\n"
            return 200, "text/plain; version=0.0.4", self.metrics.render().encode()
        handler = self.routes.get((method, url.path))
        if handler is None:
            known = {p for _, p in self.routes}
            raise AdminError(405 if url.path in known else 404,
                             f"no {method} {url.path} here")
        if not self._authorized(headers.get("authorization", "")):
            raise AdminError(401, "admin token missing or wrong")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            data = json.loads(body) if body else None
        except ValueError:
            raise AdminError(400, "the request body is not JSON") from None
        status, result = handler(query, data)
        return status, "application/json", _json(result)

    def _authorized(self, header: str) -> bool:
        if self.token is None:
            # No token configured: on loopback the address is the boundary; elsewhere nothing is.
            return not self.public
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), self.token)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Our answer is sent; say we are done writing, then drop what the client still sends until
    it closes or the time is up, so the close is a FIN the client reads the answer before."""
    if writer.can_write_eof():
        writer.write_eof()
    deadline = asyncio.get_running_loop().time() + _LINGER_TIME
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(65536),
                                           min(left, _LINGER_READ_TIMEOUT))
        except TimeoutError:
            return
        if not chunk:
            return


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    if len(head) > _MAX_HEAD:
        raise AdminError(431, "request head too large")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _ = lines[0].split(" ", 2)
    except ValueError:
        raise AdminError(400, "malformed request line") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1).encode() + b"\n"


_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
            405: b"Method Not Allowed", 409: b"Conflict", 413: b"Payload Too Large",
            431: b"Request Header Fields Too Large", 500: b"Internal Server Error"}
