"""Serializing response heads, and the edge's own small responses (errors, redirects)."""

from __future__ import annotations

from email.utils import formatdate
from http import HTTPStatus

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
    return formatdate(ts, usegmt=True).encode("ascii")


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


def error_response(status: int, detail: str, now: float, *, keep_alive: bool = False,
                   extra: list[tuple[bytes, bytes]] | None = None, head_only: bool = False,
                   cache_status: bytes = b"BYPASS") -> bytes:
    """A complete small HTML response produced by the edge itself."""
    text = reason(status).decode()
    body = _ERROR_PAGE.format(status=status, reason=text, detail=detail).encode("utf-8")
    headers = [
        (b"Date", http_date(now)),
        (b"Server", SERVER_NAME),
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        (b"Cache-Control", b"no-store"),
        (b"X-Cache", cache_status),
    ]
    if extra:
        headers.extend(extra)
    headers.append((b"Connection", b"keep-alive" if keep_alive else b"close"))
    head = serialize_head(status, headers)
    return head if head_only else head + body
