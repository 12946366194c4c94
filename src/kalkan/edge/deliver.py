"""Writing answers on the slow path: a stored entry (with 304 for a matching conditional), an
origin response streamed with back-pressure and re-framed, the edge's own errors and the
defence's verdicts. What was sent is noted in the request's `Outcome` for the recorder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kalkan.defense.verdict import Verdict
from kalkan.edge import cache_policy as policy
from kalkan.edge.connection import ConnectionGone
from kalkan.edge.forward import HOP_BY_HOP, VIA
from kalkan.edge.origin import OriginError, UpstreamResponse
from kalkan.edge.request import Request
from kalkan.edge.responses import VerdictWriter, http_date, serialize_head, write_response
from kalkan.edge.store import Entry
from kalkan.observe.metrics import Metrics
from kalkan.pages import Pages

if TYPE_CHECKING:
    from kalkan.edge.clock import Clock
    from kalkan.edge.connection import HttpConnection

_DROP_DOWNSTREAM = HOP_BY_HOP | {b"x-cache", b"age"}


class Outcome:
    """What happened to one request, for the access log and metrics."""

    __slots__ = ("status", "size", "cache", "origin_ms", "reason")

    def __init__(self) -> None:
        self.status = 0
        self.size = 0
        self.cache = "MISS"
        self.origin_ms: float | None = None
        self.reason = ""  # why a miss or why not stored (cache_flow reasons)


class Responder:
    """The slow path's writer: every answer it sends goes through one of these methods."""

    def __init__(self, clock: Clock, metrics: Metrics, pages: Pages | None = None) -> None:
        self.clock = clock
        self.metrics = metrics
        self.verdicts = VerdictWriter()
        self.pages = pages or Pages()

    async def entry(self, req: Request, conn: HttpConnection, entry: Entry, cache: str,
                    out: Outcome, extra: bytes = b"") -> None:
        """Answer from a stored entry: 304 for a matching conditional, head only for HEAD;
        `extra` is serialized fields for this reader only (its Set-Cookie)."""
        now = self.clock.now
        status = entry.status
        if req.conditional and entry.status == 200 and policy.client_conditional_matches(
                req.header_dict(), policy.combine_headers(entry.headers)):
            status = 304
        connection = None if req.version == "1.1" and req.keep_alive else (
            b"keep-alive" if req.keep_alive else b"close")
        data = entry.render(now, cache.encode(), head_only=req.method == "HEAD",
                            connection=connection, status=status, extra=extra)
        out.status, out.size, out.cache = status, len(data), cache
        conn.write(data)
        await conn.drain()

    async def relay(self, req: Request, conn: HttpConnection, resp: UpstreamResponse,
                    out: Outcome, cache: str) -> None:
        """Stream an origin response to the client with back-pressure, re-framing as needed."""
        head_only = req.method == "HEAD" or resp.status in (204, 304) or resp.status < 200
        drop = _DROP_DOWNSTREAM | connection_tokens(resp.headers)
        headers = [(k, v) for k, v in resp.headers if k.lower() not in drop]
        chunked = False
        keep_alive = req.keep_alive
        if not head_only and resp.content_length is None:
            if req.version == "1.1":
                chunked = True
                headers.append((b"Transfer-Encoding", b"chunked"))
            else:
                keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        # (For HEAD the origin's Content-Length describes the GET body: it is kept.)
        headers.append(VIA)
        headers.append((b"X-Cache", cache.encode()))
        if not keep_alive:
            headers.append((b"Connection", b"close"))
            req.keep_alive = False
        elif req.version != "1.1":
            headers.append((b"Connection", b"keep-alive"))
        if not any(k.lower() == b"date" for k, _ in headers):
            headers.append((b"Date", http_date(self.clock.now)))
        head = serialize_head(resp.status, headers)
        conn.write(head)
        size = len(head)
        out.status, out.size, out.cache = resp.status, size, cache
        if head_only:
            await discard(resp)
            return
        while True:
            try:
                chunk = await resp.read()
            except OriginError:
                # The head is out: the only honest signal left is a connection closed before
                # the end of the message (no last chunk, a short length).
                self.metrics.origin_requests["body_error"] += 1
                out.size = size
                raise ConnectionGone() from None
            if not chunk:
                break
            conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            size += len(chunk)
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")
        out.size = size

    def error(self, req: Request, conn: HttpConnection, out: Outcome, kind: str,
              extra: list[tuple[bytes, bytes]]) -> None:
        """The origin could not answer (kalkan/pages' busy, maintenance, bad-gateway, timeout):
        the reader's page, in their language."""
        page = self.pages.page(kind, self.pages.choose(req.header(b"accept-language")))
        data = write_response(page.status, [*page.headers, *extra], page.body, self.clock.now,
                              keep_alive=req.keep_alive, head_only=req.method == "HEAD",
                              cache_status=b"ERROR")
        out.status, out.size, out.cache = page.status, len(data), "ERROR"
        conn.write(data)

    def verdict(self, req: Request, conn: HttpConnection, verdict: Verdict,
                out: Outcome) -> None:
        """A refusal or challenge answer."""
        # A body we did not read ends the connection: say so instead of promising keep-alive.
        if req.body is not None and not req.body.done:
            req.keep_alive = False
        data = self.verdicts.render(verdict, self.clock.now, req.keep_alive, req.method == "HEAD")
        out.status, out.size, out.cache = verdict.status, len(data), "BYPASS"
        conn.write(data)


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for k, v in headers:
        if k.lower() == b"connection":
            tokens.update(t.strip().lower() for t in v.split(b","))
    return frozenset(tokens)


def set_cookie_fields(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The Set-Cookie fields of an origin response, serialized (for the reader it was for)."""
    return b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers if k.lower() == b"set-cookie")


async def discard(resp: UpstreamResponse) -> None:
    """Read and drop a body we will not use; a broken one just costs its connection."""
    try:
        while await resp.read():
            pass
    except OriginError:
        resp.keep_alive = False
