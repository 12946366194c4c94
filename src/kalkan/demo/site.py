"""The demo newsroom origin: a tiny asyncio HTTP/1.1 server (httptools) that serves the Chyrak
site and behaves like WordPress on a small VPS, with a known capacity, for the demo, the tests and
the traffic lab.

Capacity model: dynamic pages hold one of `workers` slots for their cost (`page_cost`, or
`search_cost` for search); requests waiting for a slot form a FIFO queue of at most `queue_limit`
(one more gets 503 at once) and wait at most `queue_timeout` (then 504). Static files and the
instruments below cost nothing and take no slot, like a web server serving files in front of PHP.

Site routes (GET and HEAD unless noted; "page" marks a request that takes a worker):
  /  /ru/                home pages, English and Russian (page); public, max-age=30
  /news/<slug>/          articles (page); public, max-age=300; /news/<slug> answers 301 to it
  /search?q=  /?s=       search (search_cost); private, no-store; &lang=ru for Russian
  POST /comments         comment form (page): article, author, comment; no-store
  /feed/ (or /feed)      RSS 2.0 (page); public, max-age=300
  /sitemap.xml           (page); public, max-age=3600
  /robots.txt            free; public, max-age=86400
  /favicon.ico  /assets/<file>   free; public, max-age=86400
  /wp-login.php          GET form, POST "incorrect password" (page); no-store, sets a test cookie
  /xmlrpc.php            POST: XML-RPC fault (page); GET: 405 (page)
  anything else          404 page (page); public, max-age=60
Pages and assets carry ETag and Last-Modified and answer conditional GETs with 304. With
`cache_headers=False` the site sends no Cache-Control and no Expires at all (validators stay).
Feed, sitemap and robots.txt build their absolute links from the request's Host header.

Instruments for tests and benchmarks (free; their headers ignore `cache_headers`):
  /bench/20k  /bench/20k/<anything>   the same 20,480-byte HTML page; public, max-age=3600, ETag
  /bench/2k, /bench/200k (and /<anything> below them)   the same at 2,048 and 204,800 bytes
  GET /_demo/stats          JSON counters (see DemoStats); POST /_demo/stats/reset zeroes them.
                            Requests to /_demo/stats* are not counted themselves.
  /_demo/echo (any method)  JSON: method, target, http_version, peer, headers as [name, value]
                            in arrival order, body_length, body_sha256
  /_demo/respond?...        (any method) a programmable response: status, cc (Cache-Control),
                            expires, etag (quoted if bare), last_modified, vary, set_cookie
                            (repeatable), body (default "demo response #<n> for <target>"),
                            delay_ms, date_offset (seconds added to Date), h_<name>=<value> (any
                            header but Content-Length and Transfer-Encoding). Integer expires
                            and last_modified are Unix times. GET/HEAD honor If-None-Match and
                            If-Modified-Since (304). Counts per full target in stats and reports
                            that count in X-Demo-Count.
  GET /_demo/big?bytes=N    N bytes (byte i is i % 256), chunked, streamed under flow control
  POST /_demo/upload        streams the body (Content-Length or chunked): {"bytes", "sha256"}
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, formatdate, parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httptools

from kalkan.demo import content

log = logging.getLogger("kalkan.demo")


@dataclass(frozen=True)
class DemoSiteConfig:
    workers: int = 4
    page_cost: float = 0.040  # seconds a dynamic page holds a worker
    search_cost: float = 0.200
    cache_headers: bool = True
    queue_limit: int = 64  # requests that may wait for a worker; one more gets 503
    queue_timeout: float = 10.0  # seconds a request may wait for a worker; then 504


DEFAULT_CONFIG = DemoSiteConfig()

_SERVER = "kalkan-demo-origin"
_MAX_HEAD = 64 * 1024  # request line + headers, bytes
_MAX_HEADERS = 100
_MAX_PIPELINE = 16  # parsed requests waiting for their turn before we stop reading
_BODY_HIGH_WATER = 256 * 1024  # buffered request body bytes before we stop reading
_IDLE_TIMEOUT = 75.0
_FORM_LIMIT = 64 * 1024
_ASSETS_DIR = Path(__file__).parent / "assets"
_CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/vnd.microsoft.icon",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
_HTML = "text/html; charset=utf-8"
_JSON = "application/json"


# --- counters and the capacity model ----------------------------------------------------------


class DemoStats:
    """What reached the origin: tests read these to count origin requests and overload."""

    MAX_PATHS = 1000  # distinct by_path keys; later ones are counted under "(other)"

    def __init__(self) -> None:
        self.in_flight = 0  # requests being answered now (waiting for a worker included)
        self.queued = 0  # requests waiting for a worker now
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.max_in_flight = self.in_flight
        self.rejected_503 = 0
        self.timed_out_504 = 0
        self.started = time.time()

    def enter(self, key: str) -> int:
        """Count a request under `key`; returns how many requests that key has seen."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if key not in self.by_path and len(self.by_path) >= self.MAX_PATHS:
            key = "(other)"
        n = self.by_path[key] = self.by_path.get(key, 0) + 1
        return n

    def leave(self) -> None:
        self.in_flight -= 1

    def snapshot(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "queued": self.queued,
            "rejected_503": self.rejected_503,
            "timed_out_504": self.timed_out_504,
            "started": self.started,
        }


class _WorkerPool:
    """The PHP-FPM stand-in: `workers` slots and a bounded FIFO queue in front of them."""

    def __init__(self, config: DemoSiteConfig, stats: DemoStats) -> None:
        self._free = config.workers
        self._limit = config.queue_limit
        self._timeout = config.queue_timeout
        self._stats = stats
        self._waiters: deque[asyncio.Future[bool]] = deque()

    async def work(self, cost: float) -> int:
        """Hold a worker for `cost` seconds: 200 when done, 503 if the queue is full, 504 if the
        wait for a worker ran out."""
        if self._free > 0:
            self._free -= 1
        elif self._stats.queued >= self._limit:
            self._stats.rejected_503 += 1
            return 503
        elif not await self._wait_turn():
            self._stats.timed_out_504 += 1
            return 504
        try:
            if cost > 0:
                await asyncio.sleep(cost)
        finally:
            self._release()
        return 200

    async def _wait_turn(self) -> bool:
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(turn)
        self._stats.queued += 1
        timer = loop.call_later(self._timeout, _settle, turn, False)
        try:
            return await turn
        except asyncio.CancelledError:
            if _granted(turn):
                self._release()  # the worker was handed to us just as we were cancelled
            raise
        finally:
            timer.cancel()
            self._stats.queued -= 1
            if not _granted(turn):
                self._remove(turn)

    def _remove(self, turn: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(turn)

    def _release(self) -> None:
        # Hand the worker straight to the oldest waiter, so newcomers cannot jump the queue.
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(True)
                return
        self._free += 1


def _settle(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _granted(turn: asyncio.Future[bool]) -> bool:
    return turn.done() and not turn.cancelled() and turn.result()


# --- HTTP plumbing: per-request state ---------------------------------------------------------


class BodyError(Exception):
    """The request body ended badly: bad framing, or the client went away."""


class BodyTooLarge(Exception):
    pass


class Body:
    """A request body on its way from the parser to a handler. The connection stops reading while
    too much of it is buffered, so a large upload never sits whole in memory."""

    def __init__(self, conn: _Connection, expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self.done = False
        self.failed = False
        self._changed = asyncio.Event()
        # "Expect: 100-continue": the client waits for our go-ahead before sending the body.
        self.awaiting_continue = expect_continue

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self._changed.set()

    def finish(self) -> None:
        self.done = True
        self.awaiting_continue = False
        self._changed.set()

    def fail(self) -> None:
        if not self.done:
            self.failed = True
            self._changed.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self.buffered -= len(chunk)
                self._conn.update_reading()
                yield chunk
            elif self.failed:
                raise BodyError
            elif self.done:
                return
            else:
                if self.awaiting_continue:
                    self.awaiting_continue = False
                    self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._changed.clear()
                await self._changed.wait()

    async def read(self, limit: int) -> bytes:
        parts, size = [], 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            parts.append(chunk)
        return b"".join(parts)

    async def discard(self) -> bool:
        """Read and drop what the handler left, so the next request can be parsed."""
        if self.awaiting_continue and not self.done:
            return False  # the client may never send it: close instead of waiting
        try:
            async for _ in self.chunks():
                pass
        except BodyError:
            return False
        return True


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "peer", "query", "target",
                 "version")  # fmt: skip

    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        headers: list[tuple[str, str]],
        keep_alive: bool,
        body: Body,
        peer: str,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # as received: original case and order
        self.keep_alive = keep_alive
        self.body = body
        self.peer = peer
        if target.startswith(("http://", "https://")):  # absolute-form, as sent to proxies
            parts = urlsplit(target)
            self.path, self.query = parts.path or "/", parts.query
        else:
            self.path, _, self.query = target.partition("?")

    def header(self, name: str) -> str | None:
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def param(self, name: str, default: str = "") -> str:
        values = parse_qs(self.query, keep_blank_values=True).get(name)
        return values[0] if values else default


@dataclass(slots=True)
class Response:
    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None  # sent chunked instead of `body`
    close: bool = False  # close the connection after this response


Handler = Callable[[Request], Awaitable[Response]]


# --- HTTP plumbing: per-connection state ------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One client connection. The parser fills requests as bytes arrive; one task answers them
    one at a time, so pipelined requests get their responses in order."""

    def __init__(self, site: DemoSite) -> None:
        self._site = site
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._task: asyncio.Task[None] | None = None
        # Parser side: the request being parsed and those waiting for their turn. An int in
        # the queue is a request we could not parse, to be refused with that status.
        self._pending: deque[Request | int] = deque()
        self._current: Request | None = None
        self._url: list[bytes] = []
        self._head: list[tuple[str, str]] = []
        self._head_size = 0
        self._refusal = 400
        self._stopped = False  # no more requests will be parsed (error, upgrade or EOF)
        self._ready = asyncio.Event()
        # Transport side.
        self._lost = False
        self._reading_paused = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self._site._connections.add(self)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_parsing(None)  # we speak no other protocol: answer, then close
        except httptools.HttpParserError:
            self._stop_parsing(self._refusal)

    def eof_received(self) -> bool:
        # Half-close: answer what was already sent, then close.
        self._stop_parsing(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stop_parsing(None)
        self._site._connections.discard(self)
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("client went away"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url, self._head, self._head_size = [], [], 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._count_head(len(url), 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head.append((name.decode("latin-1"), value.decode("latin-1")))
        self._count_head(len(name) + len(value), 431)
        if len(self._head) > _MAX_HEADERS:
            self._refusal = 431
            raise ValueError("too many header fields")

    def on_headers_complete(self) -> None:
        p = self._parser
        version = p.get_http_version()
        hosts = sum(1 for n, _ in self._head if n.lower() == "host")
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise ValueError("an HTTP/1.1 request needs exactly one Host")  # RFC 9112, 3.2
        expect = any(n.lower() == "expect" and v.lower() == "100-continue" for n, v in self._head)
        req = Request(
            method=p.get_method().decode("latin-1"),
            target=b"".join(self._url).decode("latin-1"),
            version=version,
            headers=self._head,
            keep_alive=p.should_keep_alive(),
            body=Body(self, expect),
            peer=self._peer,
        )
        self._current = req
        self._pending.append(req)
        self._ready.set()
        self.update_reading()

    def on_body(self, data: bytes) -> None:
        if self._current is not None:
            self._current.body.feed(data)
            self.update_reading()

    def on_message_complete(self) -> None:
        if self._current is not None:
            self._current.body.finish()
            self._current = None

    def _count_head(self, n: int, status: int) -> None:
        self._head_size += n
        if self._head_size > _MAX_HEAD:
            self._refusal = status
            raise ValueError("request head too large")

    # flow control and writing

    def update_reading(self) -> None:
        """Stop reading while requests or body bytes pile up faster than we answer them."""
        if self._transport is None or self._lost:
            return
        body = self._current.body.buffered if self._current is not None else 0
        pause = self._stopped or len(self._pending) >= _MAX_PIPELINE or body >= _BODY_HIGH_WATER
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._lost:
            self._transport.write(data)

    async def drain(self) -> None:
        if self._lost:
            raise ConnectionResetError("client went away")
        if self._writing_paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.close()

    def _stop_parsing(self, refusal: int | None) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._current is not None:
            self._current.body.fail()  # its framing can no longer be trusted
        if refusal is not None:
            self._pending.append(refusal)  # answered after the requests before it
        self._ready.set()
        self.update_reading()

    # answering

    async def _serve(self) -> None:
        try:
            while await self._next():
                item = self._pending.popleft()
                self.update_reading()
                if isinstance(item, int) or item.body.failed:
                    self._refuse(item if isinstance(item, int) else 400)
                    return
                if not await self._respond(item):
                    return
        except ConnectionError:
            pass
        except Exception:
            log.exception("demo site connection from %s failed", self._peer)
        finally:
            if self._transport is not None:
                self._transport.close()

    async def _next(self) -> bool:
        while not self._pending:
            if self._stopped or self._lost:
                return False
            self._ready.clear()
            try:
                async with asyncio.timeout(_IDLE_TIMEOUT):
                    await self._ready.wait()
            except TimeoutError:
                return False
        return not self._lost

    def _refuse(self, status: int) -> None:
        reason = _reason(status)
        body = f"{status} {reason}\n".encode()
        self.write(
            f"HTTP/1.1 {status} {reason}\r\nDate: {_http_date()}\r\nServer: {_SERVER}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )

    async def _respond(self, req: Request) -> bool:
        """Answer one request; returns whether the connection stays open."""
        key = self._site.stats_key(req)
        if key is not None:
            self._site.stats.enter(key)
        try:
            try:
                resp = await self._site.handle(req)
            except BodyError:
                resp = _text(400, "Bad Request\n", close=True)
            except BodyTooLarge:
                resp = _text(413, "Payload Too Large\n", close=True)
            except Exception:
                log.exception("demo site failed on %s %s", req.method, req.target)
                resp = _text(500, "Internal Server Error\n", close=True)
            resp = _not_modified(req, resp)
            keep = req.keep_alive and not resp.close and not self._lost
            if req.body.awaiting_continue and not req.body.done:
                keep = False  # we answered without reading the body the client holds back
            if self._stopped and not self._pending:
                keep = False  # the last request this connection will answer
            keep = await self._send(req, resp, keep)
            return keep and await req.body.discard()
        finally:
            if key is not None:
                self._site.stats.leave()

    async def _send(self, req: Request, resp: Response, keep: bool) -> bool:
        status = resp.status
        bodyless = status in (204, 304) or status < 200 or req.method == "HEAD"
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        lines += [f"{n}: {v}" for n, v in resp.headers]
        if not any(n.lower() == "date" for n, _ in resp.headers):
            lines.append(f"Date: {_http_date()}")
        lines.append(f"Server: {_SERVER}")
        chunked = resp.stream is not None and req.version != "1.0"
        if resp.stream is not None and not chunked:
            keep = False  # an HTTP/1.0 client cannot read chunks: the body ends at close
        if status in (204, 304) or status < 200:
            pass
        elif chunked:
            lines.append("Transfer-Encoding: chunked")
        elif resp.stream is None:
            lines.append(f"Content-Length: {len(resp.body)}")
        if not keep:
            lines.append("Connection: close")
        elif req.version == "1.0":
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if bodyless or resp.stream is None:
            self.write(head if bodyless else head + resp.body)
            return keep
        self.write(head)
        async for chunk in resp.stream:
            if chunk:
                self.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await self.drain()
        if chunked:
            self.write(b"0\r\n\r\n")
        return keep


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


_ETAG_RE = re.compile(r'(?:W/)?"[^"]*"|\*')


def _not_modified(req: Request, resp: Response) -> Response:
    """Turn a 200 into a 304 when the request's validators match (RFC 9110 section 13)."""
    if req.method not in ("GET", "HEAD") or resp.status != 200 or resp.stream is not None:
        return resp
    etag = modified = None
    for n, v in resp.headers:
        if n.lower() == "etag":
            etag = v
        elif n.lower() == "last-modified":
            modified = v
    if_none_match = req.header("if-none-match")
    if if_none_match is not None:
        if etag is None:
            return resp
        mine = etag.removeprefix("W/")
        tags = _ETAG_RE.findall(if_none_match)
        if not any(t == "*" or t.removeprefix("W/") == mine for t in tags):
            return resp
    else:
        since = req.header("if-modified-since")
        if since is None or modified is None or not _not_newer(modified, since):
            return resp
    # A 304 carries the validators and cache headers, not the body's metadata.
    drop = ("content-type", "content-length")
    headers = [(n, v) for n, v in resp.headers if n.lower() not in drop]
    return Response(304, headers, close=resp.close)


def _not_newer(modified: str, since: str) -> bool:
    try:
        return parsedate_to_datetime(modified) <= parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False


def _text(
    status: int, text: str, *, close: bool = False, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    headers = [("Content-Type", "text/plain; charset=utf-8"), *headers]
    return Response(status, headers, text.encode(), close=close)


def _json(obj: object, status: int = 200) -> Response:
    body = json.dumps(obj, ensure_ascii=False).encode()
    return Response(status, [("Content-Type", _JSON), ("Cache-Control", "no-store")], body)


# --- the site ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entity:
    """A ready-made representation: body plus Content-Type, validators and cache headers."""

    body: bytes
    headers: tuple[tuple[str, str], ...]

    def response(self, status: int = 200) -> Response:
        return Response(status, self.headers, self.body)


def _entity(
    body: bytes, content_type: str, modified: datetime, cache_control: str | None
) -> _Entity:
    headers = [
        ("Content-Type", content_type),
        ("ETag", f'"{hashlib.sha256(body).hexdigest()[:20]}"'),
        ("Last-Modified", format_datetime(modified, usegmt=True)),
    ]
    if cache_control is not None:
        headers.append(("Cache-Control", cache_control))
    return _Entity(body, tuple(headers))


@dataclass(frozen=True, slots=True)
class _Route:
    methods: frozenset[str] | None  # None: any method
    handler: Handler


def _route(handler: Handler, *methods: str) -> _Route:
    return _Route(frozenset(methods or ("GET", "HEAD")), handler)


_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BIG_BLOCK = bytes(range(256)) * 256  # 64 KiB; a multiple of the pattern's 256-byte period
_BIG_MAX = 64 * 1024**3


class DemoSite:
    """The demo newsroom origin. `start()` listens; `stats` counts what reached it."""

    def __init__(self, config: DemoSiteConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self.stats = DemoStats()
        self._pool = _WorkerPool(config, self.stats)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._per_host: dict[tuple[str, str], _Entity] = {}  # feed/sitemap/robots by Host

        cc = self._cache_control
        self._pages: dict[str, _Entity] = {
            "/": _entity(content.render_home("en").encode(), _HTML, content.LAST_UPDATED,
                         cc("public, max-age=30")),
            "/ru/": _entity(content.render_home("ru").encode(), _HTML, content.LAST_UPDATED,
                            cc("public, max-age=30")),
        }  # fmt: skip
        for a in content.ARTICLES:
            self._pages[a.path] = _entity(
                content.render_article(a).encode(), _HTML, a.updated, cc("public, max-age=300")
            )
        self._not_found_page = _entity(
            content.render_not_found().encode(), _HTML, content.LAST_UPDATED,
            cc("public, max-age=60"),
        )  # fmt: skip
        self._assets: dict[str, _Entity] = {}
        for path in sorted(_ASSETS_DIR.iterdir()):
            if path.is_file() and path.suffix in _CONTENT_TYPES:
                self._assets[path.name] = _entity(
                    path.read_bytes(), _CONTENT_TYPES[path.suffix],
                    content.LAST_UPDATED, cc("public, max-age=86400"),
                )  # fmt: skip
        self._bench_sizes = {
            name: _entity(content.bench_page(size), _HTML, content.LAST_UPDATED,
                          "public, max-age=3600")
            for name, size in (("2k", 2048), ("20k", 20480), ("200k", 204800))
        }
        self._routes: dict[str, _Route] = {
            "/": _route(self._home),
            "/ru/": _route(self._home),
            "/search": _route(self._search),
            "/comments": _route(self._comment, "POST"),
            "/feed/": _route(self._feed),
            "/feed": _route(self._feed),
            "/sitemap.xml": _route(self._sitemap),
            "/robots.txt": _route(self._robots),
            "/favicon.ico": _route(self._favicon),
            "/wp-login.php": _route(self._login, "GET", "HEAD", "POST"),
            "/xmlrpc.php": _route(self._xmlrpc, "GET", "HEAD", "POST"),
            **{f"/bench/{name}": _route(self._bench_page) for name in self._bench_sizes},
            "/_demo/stats": _route(self._stats),
            "/_demo/stats/reset": _route(self._stats_reset, "POST"),
            "/_demo/echo": _Route(None, self._echo),
            "/_demo/respond": _Route(None, self._respond),
            "/_demo/big": _route(self._big),
            "/_demo/upload": _route(self._upload, "POST"),
        }
        self._prefixes: tuple[tuple[str, _Route], ...] = (
            ("/news/", _route(self._article)),
            ("/assets/", _route(self._asset)),
            *((f"/bench/{name}/", _route(self._bench_page)) for name in self._bench_sizes),
        )

    def _cache_control(self, value: str) -> str | None:
        return value if self.config.cache_headers else None

    def _cache_headers(self, value: str) -> list[tuple[str, str]]:
        return [("Cache-Control", value)] if self.config.cache_headers else []

    # lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
        )
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        conns = list(self._connections)
        tasks = [c._task for c in conns if c._task is not None]
        for conn in conns:
            conn.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    # dispatch

    def stats_key(self, req: Request) -> str | None:
        if req.path.startswith("/_demo/stats"):
            return None  # reading the counters must not change them
        return req.target if req.path == "/_demo/respond" else req.path

    async def handle(self, req: Request) -> Response:
        route = self._routes.get(req.path)
        if route is None:
            route = next((r for p, r in self._prefixes if req.path.startswith(p)), None)
        if route is None:
            return await self._not_found(req)
        if route.methods is not None and req.method not in route.methods:
            allow = ", ".join(sorted(route.methods))
            return _text(405, "Method Not Allowed\n", headers=[("Allow", allow)])
        return await route.handler(req)

    async def _work(self, cost: float) -> Response | None:
        """Spend a worker on a dynamic page; returns the overload response if there is none."""
        status = await self._pool.work(cost)
        if status == 200:
            return None
        if status == 503:
            return _text(503, "Service Unavailable: the server is overloaded.\n",
                         headers=[("Retry-After", "10")])  # fmt: skip
        return _text(504, "Gateway Timeout: no worker was free in time.\n")

    async def _page(self, entity: _Entity, status: int = 200) -> Response:
        return await self._work(self.config.page_cost) or entity.response(status)

    async def _not_found(self, req: Request) -> Response:
        return await self._page(self._not_found_page, 404)

    # site pages

    async def _home(self, req: Request) -> Response:
        if "s" in parse_qs(req.query, keep_blank_values=True):  # WordPress-style /?s=term
            return await self._search(req, req.param("s"), "ru" if req.path == "/ru/" else "en")
        return await self._page(self._pages[req.path])

    async def _article(self, req: Request) -> Response:
        page = self._pages.get(req.path)
        if page is not None:
            return await self._page(page)
        if req.path + "/" in self._pages:
            return await self._work(self.config.page_cost) or Response(
                301, [("Location", req.path + "/"), *self._cache_headers("public, max-age=300")]
            )
        return await self._not_found(req)

    async def _search(
        self, req: Request, query: str | None = None, lang: str | None = None
    ) -> Response:
        if query is None:
            query = req.param("q")
        if lang is None:
            lang = "ru" if req.param("lang") == "ru" else "en"
        refused = await self._work(self.config.search_cost)
        if refused:
            return refused
        page = content.render_search(query, content.search(query), lang)
        headers = [("Content-Type", _HTML), *self._cache_headers("private, no-store")]
        return Response(200, headers, page.encode())

    async def _comment(self, req: Request) -> Response:
        form = parse_qs((await req.body.read(_FORM_LIMIT)).decode("utf-8", "replace"))
        refused = await self._work(self.config.page_cost)
        if refused:
            return refused
        article = content.ARTICLES_BY_SLUG.get(form.get("article", [""])[0])
        author = form.get("author", [""])[0].strip()[:60]
        text = form.get("comment", [""])[0].strip()
        headers = [("Content-Type", _HTML), *self._cache_headers("no-store")]
        if article is None or not author or not text:
            reason = "Please choose an article and fill in your name and your comment."
            return Response(422, headers, content.render_comment_rejected(reason).encode())
        if len(text) > 2000:
            reason = "Comments can be at most 2,000 characters long."
            return Response(422, headers, content.render_comment_rejected(reason).encode())
        return Response(200, headers, content.render_comment_received(article, author).encode())

    def _for_host(self, req: Request, kind: str, cache_control: str) -> _Entity:
        # Feeds and sitemaps need absolute links, so they are built for the Host asked for.
        host = req.header("host") or ""
        if not _HOST_RE.match(host):
            host = "localhost"
        entity = self._per_host.get((kind, host))
        if entity is None:
            base = f"http://{host}"
            if kind == "feed":
                text, ctype = content.render_feed(base), "application/rss+xml; charset=utf-8"
            elif kind == "sitemap":
                text, ctype = content.render_sitemap(base), "application/xml; charset=utf-8"
            else:
                text, ctype = content.render_robots(base), "text/plain; charset=utf-8"
            if len(self._per_host) >= 64:
                self._per_host.clear()  # bounded: hosts come from the request
            entity = _entity(
                text.encode(), ctype, content.LAST_UPDATED, self._cache_control(cache_control)
            )
            self._per_host[(kind, host)] = entity
        return entity

    async def _feed(self, req: Request) -> Response:
        return await self._page(self._for_host(req, "feed", "public, max-age=300"))

    async def _sitemap(self, req: Request) -> Response:
        return await self._page(self._for_host(req, "sitemap", "public, max-age=3600"))

    async def _robots(self, req: Request) -> Response:
        return self._for_host(req, "robots", "public, max-age=86400").response()

    async def _favicon(self, req: Request) -> Response:
        return self._assets["favicon.ico"].response()

    async def _asset(self, req: Request) -> Response:
        asset = self._assets.get(req.path.removeprefix("/assets/"))
        if asset is None:
            return _text(404, "Not Found\n")  # the file server answers, PHP is never asked
        return asset.response()

    async def _login(self, req: Request) -> Response:
        if req.method == "POST":
            await req.body.read(_FORM_LIMIT)
        refused = await self._work(self.config.page_cost)
        if refused:
            return refused
        headers = [
            ("Content-Type", _HTML),
            ("Set-Cookie", "wordpress_test_cookie=WP%20Cookie%20check; path=/; HttpOnly"),
            ("X-Frame-Options", "SAMEORIGIN"),
            *self._cache_headers("no-store"),
        ]
        return Response(200, headers, content.render_login(req.method == "POST").encode())

    async def _xmlrpc(self, req: Request) -> Response:
        if req.method == "POST":
            await req.body.read(1024 * 1024)
        refused = await self._work(self.config.page_cost)
        if refused:
            return refused
        if req.method != "POST":
            return _text(405, "XML-RPC server accepts POST requests only.\n",
                         headers=[("Allow", "POST")])  # fmt: skip
        headers = [("Content-Type", "text/xml; charset=UTF-8"), *self._cache_headers("no-store")]
        return Response(200, headers, content.XMLRPC_FAULT.encode())

    # instruments

    async def _bench_page(self, req: Request) -> Response:
        return self._bench_sizes[req.path.split("/")[2]].response()

    async def _stats(self, req: Request) -> Response:
        return _json(self.stats.snapshot())

    async def _stats_reset(self, req: Request) -> Response:
        self.stats.reset()
        return _json(self.stats.snapshot())

    async def _echo(self, req: Request) -> Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in req.body.chunks():
            digest.update(chunk)
            size += len(chunk)
        return _json({
            "method": req.method,
            "target": req.target,
            "http_version": req.version,
            "peer": req.peer,
            "headers": [[n, v] for n, v in req.headers],
            "body_length": size,
            "body_sha256": digest.hexdigest(),
        })  # fmt: skip

    async def _upload(self, req: Request) -> Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in req.body.chunks():
            digest.update(chunk)
            size += len(chunk)
        return _json({"bytes": size, "sha256": digest.hexdigest()})

    async def _big(self, req: Request) -> Response:
        try:
            size = int(req.param("bytes", "1048576"))
        except ValueError:
            size = -1
        if not 0 <= size <= _BIG_MAX:
            return _json({"error": f"bytes must be an integer from 0 to {_BIG_MAX}"}, 400)
        headers = [("Content-Type", "application/octet-stream"), ("Cache-Control", "no-store")]
        return Response(200, headers, stream=_pattern(size))

    async def _respond(self, req: Request) -> Response:
        try:
            resp = _programmed(req, self.stats.by_path.get(req.target, 0))
            delay = float(req.param("delay_ms", "0") or 0) / 1000
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        if delay > 0:
            await asyncio.sleep(min(delay, 600.0))
        return resp


async def _pattern(size: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        n = min(len(_BIG_BLOCK), size - sent)
        yield _BIG_BLOCK if n == len(_BIG_BLOCK) else _BIG_BLOCK[:n]
        sent += n
        await asyncio.sleep(0)  # let other connections in even when the socket never fills


def _http_time(value: str) -> str:
    """An integer is a Unix time to format; anything else is sent as given."""
    try:
        return formatdate(int(value), usegmt=True)
    except ValueError:
        return value


def _header_value(name: str, value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"{name}: line breaks are not allowed in header values")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{name}: header values must be Latin-1") from None
    return value


def _programmed(req: Request, count: int) -> Response:
    """Build the response that /_demo/respond's query parameters describe."""
    status, body = 200, None
    headers: list[tuple[str, str]] = []
    add = headers.append
    for key, value in parse_qsl(req.query, keep_blank_values=True):
        if key == "status":
            status = int(value)
            if not 200 <= status <= 599:
                raise ValueError("status must be from 200 to 599")
        elif key == "cc":
            add(("Cache-Control", _header_value(key, value)))
        elif key == "expires":
            add(("Expires", _header_value(key, _http_time(value))))
        elif key == "last_modified":
            add(("Last-Modified", _header_value(key, _http_time(value))))
        elif key == "etag":
            tag = value if value.startswith(('"', 'W/"')) else f'"{value}"'
            add(("ETag", _header_value(key, tag)))
        elif key == "vary":
            add(("Vary", _header_value(key, value)))
        elif key == "set_cookie":
            add(("Set-Cookie", _header_value(key, value)))
        elif key == "body":
            body = value
        elif key == "date_offset":
            add(("Date", formatdate(time.time() + float(value), usegmt=True)))
        elif key.startswith("h_"):
            name = key[2:]
            if not _TOKEN_RE.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in ("content-length", "transfer-encoding"):
                raise ValueError(f"{name} is set by the server")
            add((name, _header_value(name, value)))
        elif key != "delay_ms":
            raise ValueError(f"unknown parameter {key!r}")
    if body is None:
        body = f"demo response #{count} for {req.target}\n"
    if not any(n.lower() == "content-type" for n, _ in headers):
        add(("Content-Type", "text/plain; charset=utf-8"))
    add(("X-Demo-Count", str(count)))
    return Response(status, headers, body.encode())


# --- running it on its own --------------------------------------------------------------------


def run(host: str, port: int, config: DemoSiteConfig) -> None:
    """Serve the demo site until SIGINT or SIGTERM (blocking, on uvloop)."""
    import uvloop

    async def serve() -> None:
        site = DemoSite(config)
        bound_host, bound_port = await site.start(host, port)
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(
            f"kalkan demo site listening on http://{shown}:{bound_port}/ "
            f"({config.workers} workers, {config.page_cost * 1000:g} ms per page, "
            f"{config.search_cost * 1000:g} ms per search)",
            file=sys.stderr,
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await site.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())
