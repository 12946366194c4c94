"""The edge's response writer: every answer the edge makes itself (error pages, the defence's
verdicts) is rendered by `write_response`, which adds Date, Server, framing, X-Cache and
Connection; plus serializing response heads for stored and relayed responses."""

from __future__ import annotations

from http import HTTPStatus

from kalkan.defense.verdict import REFUSALS, Verdict
from kalkan.edge.httpdate import format_http_date
from kalkan.memo import Memo

Header = tuple[bytes, bytes]

SERVER_NAME = b"kalkan"


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d %s\r\n" % (status, reason(status))


def http_date(ts: float) -> bytes:
    return format_http_date(ts).encode("ascii")


def serialize_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    parts = [status_line(status)]
    parts.extend(b"%s: %s\r\n" % (k, v) for k, v in headers)
    parts.append(b"\r\n")
    return b"".join(parts)


_ERROR_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8>"
    "<meta name=viewport content='width=device-width'><title>{status} {reason}</title>"
    "<body style='font-family:sans-serif;max-width:40em;margin:2em auto;padding:0 1em'>"
    "<h1>{status} {reason}</h1><p>{detail}</p></body></html>\n"
)


def write_response(status: int, headers: tuple[Header, ...] | list[Header], body: bytes,
                   now: float, *, keep_alive: bool, head_only: bool = False,
                   cache_status: bytes = b"BYPASS") -> bytes:
    """A complete response: status line, Date and Server, `headers`, Content-Length, X-Cache,
    Connection, then the body unless the request was HEAD (which still gets the length)."""
    head = serialize_head(status, [
        (b"Date", http_date(now)), (b"Server", SERVER_NAME), *headers,
        (b"Content-Length", str(len(body)).encode()), (b"X-Cache", cache_status),
        (b"Connection", b"keep-alive" if keep_alive else b"close")])
    return head if head_only else head + body


_ERROR_HEADERS = ((b"Content-Type", b"text/html; charset=utf-8"), (b"Cache-Control", b"no-store"))


def error_response(status: int, detail: str, now: float, *, keep_alive: bool = False,
                   extra: list[Header] | None = None, head_only: bool = False,
                   cache_status: bytes = b"BYPASS") -> bytes:
    """A complete small HTML response produced by the edge itself."""
    text = reason(status).decode()
    body = _ERROR_PAGE.format(status=status, reason=text, detail=detail).encode("utf-8")
    headers = [*_ERROR_HEADERS, *extra] if extra else _ERROR_HEADERS
    return write_response(status, headers, body, now, keep_alive=keep_alive,
                          head_only=head_only, cache_status=cache_status)


class VerdictWriter:
    """Renders the defence's verdicts. Refusals are shared verdict objects, the same all second
    long, so their bytes are memoized per (verdict, keep-alive, HEAD) for the current second:
    during a flood a refusal costs a dict lookup, like a cache hit."""

    __slots__ = ("_memo",)

    _LIMIT = 1024   # distinct refusals (rules × keep-alive × HEAD) kept for the second

    def __init__(self) -> None:
        self._memo: Memo[tuple[Verdict, bool, bool], tuple[int, bytes]] = Memo(self._LIMIT)

    def render(self, verdict: Verdict, now: float, keep_alive: bool, head_only: bool) -> bytes:
        if verdict.action not in REFUSALS:  # a challenge page or an endpoint answer: unique
            return write_response(verdict.status, verdict.headers, verdict.body, now,
                                  keep_alive=keep_alive, head_only=head_only)
        second = int(now)
        key = (verdict, keep_alive, head_only)
        memo = self._memo.table.get(key)
        if memo is not None and memo[0] == second:
            return memo[1]
        data = write_response(verdict.status, verdict.headers, verdict.body, now,
                              keep_alive=keep_alive, head_only=head_only)
        self._memo.put(key, (second, data))
        return data
