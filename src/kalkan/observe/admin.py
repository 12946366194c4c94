"""The admin listener (loopback by default, never the public one): metrics, health, the
dashboard and actions.

Traffic here is a scrape every few seconds, a dashboard polling once a second and the odd operator
command, so a plain asyncio stream server with bounded reads is enough. Other parts register
routes; every route except metrics, health and the dashboard's read-only view needs the admin
token, and on a non-loopback address every route but the login page needs it. The token comes as
`Authorization: Bearer` (the CLI) or as the session cookie the login form sets (a browser); a
state-changing request carried by the cookie must also prove it comes from the dashboard's own
page (see docs/dashboard.md, "Sign-in and CSRF").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kalkan.config import is_loopback_host
from kalkan.memo import Memo
from kalkan.observe import dashboard
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

SESSION_COOKIE = "kalkan_admin"
SESSION_TTL = 12 * 3600  # seconds a dashboard sign-in lasts
# The header the dashboard's own script adds to every state-changing request: a page on another
# site cannot add it without a CORS preflight, which this listener never grants.
CSRF_HEADER = "x-kalkan-csrf"
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Read-only views that are open on loopback like /metrics (the token guards them elsewhere).
_OPEN_ON_LOOPBACK = frozenset({"/metrics", "/healthz", "/api/live"})

Extra = list[tuple[str, str]]  # extra response headers
# The dashboard loads nothing from anywhere: its script and style are inline, it talks only to
# this listener, and no other site may frame it.
_PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "img-src data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
                "frame-ancestors 'none'")


class WrongGuesses:
    """Wrong admin credentials per client address: past `limit` within `window` seconds, that
    address is refused (429) until the window ends, whatever it sends. A token of 16 or more
    random characters is not guessable anyway; this keeps a guesser from trying at all, and
    from filling the log."""

    def __init__(self, limit: int = 20, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        # address -> (count, window start)
        self._by_address: Memo[str, tuple[int, float]] = Memo(4096)

    def locked(self, address: str, now: float) -> float:
        """Seconds this address stays refused (0: not refused)."""
        count, start = self._by_address.table.get(address, (0, now))
        if now - start >= self.window:
            self._by_address.discard(address)
            return 0.0
        return start + self.window - now if count >= self.limit else 0.0

    def failed(self, address: str, now: float) -> None:
        count, start = self._by_address.table.get(address, (0, now))
        if now - start >= self.window:
            count, start = 0, now
        # bounded: past 4,096 guessing addresses the oldest start afresh
        self._by_address.put(address, (count + 1, start))


class AdminError(Exception):
    """An operator request the edge cannot carry out; answered with `status` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminServer:
    """GET /metrics and /healthz for anyone on the admin address; everything else with the token."""

    def __init__(self, metrics: Metrics, token: str | None, *, public: bool = False,
                 live: Callable[[], Any] | None = None, secure_cookie: bool = False) -> None:
        self.metrics = metrics
        # What GET /metrics answers: these metrics, or (with several workers) every worker's.
        self.render_metrics: Callable[[], str] = metrics.render
        self.token = token
        # Not on loopback: anyone who can reach the port could read metrics, so every route
        # needs the token.
        self.public = public
        self.routes: dict[tuple[str, str], Handler] = {}
        self.server: asyncio.base_events.Server | None = None
        self.live = live  # the dashboard's snapshot (GET /api/live), if there is a dashboard
        self.secure_cookie = secure_cookie  # the session cookie is marked Secure (TLS in front)
        self.guesses = WrongGuesses()

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    async def start(self, host: str, port: int,
                    sock: socket.socket | None = None) -> tuple[str, int]:
        """Serve on host:port, or on `sock` if it was bound already (a supervisor's, kept
        listening while its worker 0 is replaced)."""
        if sock is not None:
            self.server = await asyncio.start_server(self._handle, sock=sock)
        else:
            self.server = await asyncio.start_server(self._handle, host, port,
                                                     reuse_address=True)
        bound = self.server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body_read = False
        extra: Extra = []
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        presented = False  # did the request carry credentials (to count a wrong one)?
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            method, target, headers = _parse_head(head)
            presented = bool(headers.get("authorization")) or SESSION_COOKIE in headers.get(
                "cookie", "") or (method == "POST" and urlsplit(target).path == "/login")
            wait = self.guesses.locked(address, time.monotonic())
            if wait:
                extra.append(("Retry-After", str(int(wait) + 1)))
                raise AdminError(429, f"too many wrong admin credentials from {address}; "
                                      f"retry in {int(wait) + 1} s")
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
            status, ctype, payload = self._dispatch(method, target, headers, body, extra)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        except AdminError as exc:
            status, ctype, payload = exc.status, "application/json", _json({"error": str(exc)})
        except ValueError as exc:
            status, ctype, payload = 400, "application/json", _json({"error": str(exc)})
        if status == 401 and presented:
            self.guesses.failed(address, time.monotonic())
        more = "".join(f"{name}: {value}\r\n" for name, value in extra).encode("latin-1")
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                     b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                     b"X-Frame-Options: DENY\r\nReferrer-Policy: same-origin\r\n"
                     b"%sConnection: close\r\n\r\n%s"
                     % (status, _REASONS.get(status, b"OK"), ctype.encode(), len(payload),
                        more, payload))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            if not body_read:
                await _linger(reader, writer)
        writer.close()

    def _dispatch(self, method: str, target: str, headers: dict[str, str],
                  body: bytes, extra: Extra) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        path = url.path
        dashboard_on = self.live is not None
        if dashboard_on and path in ("/", "/login", "/logout", "/api/live"):
            # A page that another site's script could read by re-pointing its own name at
            # 127.0.0.1 (DNS rebinding) would carry another Host: refuse it.
            self._check_host(headers)
            if method == "GET" and path in ("/", "/login"):
                extra.append(("Content-Security-Policy", _PAGE_POLICY))
                return 200, "text/html; charset=utf-8", dashboard.page(
                    headers.get("accept-language", ""))
            if method == "POST" and path == "/login":
                return self._login(headers, body, extra)
            if method == "POST" and path == "/logout":
                self._check_origin(headers)
                extra.append(("Set-Cookie", self._cookie("", 0)))
                extra.append(("Location", "/"))
                return 303, "text/plain", b"signed out\n"
        who = self._credentials(headers)
        if self.public and who is None:
            # Before anything else, so a stranger learns not even which routes exist.
            raise AdminError(401, "admin token missing or wrong (this admin listener is not on "
                                  "loopback, so every route needs it)")
        if method == "GET" and path in _OPEN_ON_LOOPBACK:
            if path == "/healthz":
                return 200, "text/plain", b"ok\n"
            if path == "/metrics":
                return 200, "text/plain; version=0.0.4", self.render_metrics().encode()
            if self.live is not None:
                return 200, "application/json", _json(self.live())
        handler = self.routes.get((method, path))
        if handler is None:
            known = {p for _, p in self.routes}
            raise AdminError(405 if path in known else 404, f"no {method} {path} here")
        if who is None:
            raise AdminError(401, "admin token missing or wrong")
        if method in _STATE_CHANGING:
            self._check_origin(headers)
            if who == "cookie" and headers.get(CSRF_HEADER) != "1":
                raise AdminError(403, f"a change made with the dashboard's session cookie "
                                      f"needs the {CSRF_HEADER} header its page sends")
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
        # Bytes: compare_digest refuses str with non-ASCII characters (a header can carry any).
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  self.token.encode())

    def _credentials(self, headers: dict[str, str]) -> str | None:
        """"bearer" (the CLI, scripts), "cookie" (a signed-in browser) or None."""
        if self._authorized(headers.get("authorization", "")):
            return "bearer"
        cookie = _cookie_value(headers.get("cookie", ""), SESSION_COOKIE)
        if cookie and self.token is not None and session_valid(self.token, cookie, time.time()):
            return "cookie"
        return None

    def _login(self, headers: dict[str, str], body: bytes, extra: Extra) -> tuple[int, str, bytes]:
        self._check_origin(headers)
        given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0].strip()
        if self.token is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            return 401, "text/html; charset=utf-8", dashboard.login_failed(
                headers.get("accept-language", ""))
        expires = int(time.time()) + SESSION_TTL
        extra.append(("Set-Cookie", self._cookie(session_value(self.token, expires),
                                                 SESSION_TTL)))
        extra.append(("Location", "/"))
        return 303, "text/plain", b"signed in\n"

    def _cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self.secure_cookie else ""
        return (f"{SESSION_COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; "
                f"SameSite=Strict{secure}")

    def _check_host(self, headers: dict[str, str]) -> None:
        if self.public:
            return  # every route there needs the token: a rebound name gains nothing
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not is_loopback_host(name.strip("[]").rstrip(".")):
            raise AdminError(403, f"Host {host!r} is not a loopback name: open the dashboard "
                                  "at http://127.0.0.1:PORT/")

    @staticmethod
    def _check_origin(headers: dict[str, str]) -> None:
        """A browser names the page that sent a POST in Origin: it must be this listener."""
        origin = headers.get("origin")
        if origin is None:
            return  # not a browser (the CLI, curl); they hold the token themselves
        host = headers.get("host", "")
        if origin not in (f"http://{host}", f"https://{host}"):
            raise AdminError(403, f"request from another site ({origin}) refused")


def session_value(token: str, expires: int) -> str:
    """The session cookie: its expiry and an HMAC of it keyed by the admin token, so the cookie
    never carries the token and stops working when the token changes."""
    mac = hmac.new(token.encode(), f"kalkan-session:{expires}".encode(), hashlib.sha256)
    return f"{expires}.{mac.hexdigest()}"


def session_valid(token: str, value: str, now: float) -> bool:
    expires_text, _, _ = value.partition(".")
    if not expires_text.isdigit() or int(expires_text) < now:
        return False
    return hmac.compare_digest(value.encode(), session_value(token, int(expires_text)).encode())


def _cookie_value(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


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


_REASONS = {200: b"OK", 303: b"See Other", 400: b"Bad Request", 401: b"Unauthorized",
            403: b"Forbidden", 404: b"Not Found",
            405: b"Method Not Allowed", 409: b"Conflict", 413: b"Payload Too Large",
            429: b"Too Many Requests",
            431: b"Request Header Fields Too Large", 500: b"Internal Server Error"}
