"""Request smuggling and malformed requests: every ambiguous or broken request is refused with
one answer and the connection closed, and nothing of it (nor what hides behind it) reaches the
origin.

Most vectors are caught by llhttp itself; the ones it accepts (two Host fields, no Host, a bad
Host, Transfer-Encoding not exactly `chunked`, chunked in HTTP/1.0, absolute-form and `*` targets,
fragments, HTTP versions other than 1.0/1.1) are refused by the connection's own checks.
"""

from __future__ import annotations

import asyncio

import pytest

from support import (
    DEMO_QUERIES,
    EdgeFactory,
    Origin,
    RawReply,
    access_log,
    exchange,
    origin_stats,
    port_of,
)

# What hides behind a vector: if any parser read the framing differently, this would be a
# second request and reach the origin.
SMUGGLED = b"GET /_demo/echo?smuggled HTTP/1.1\r\nHost: news.example\r\n\r\n"


def post(*fields: str, body: bytes = b"", version: str = "1.1") -> bytes:
    head = "".join(f"{f}\r\n" for f in fields)
    return f"POST /_demo/echo HTTP/{version}\r\nHost: news.example\r\n{head}\r\n".encode() + body


def get(*fields: str, target: str = "/_demo/echo", host: str | None = "news.example",
        version: str = "1.1") -> bytes:
    lines = [f"GET {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines.extend(fields)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(size_line: bytes) -> bytes:
    return post("Transfer-Encoding: chunked", body=size_line + b"\r\nabc\r\n0\r\n\r\n" + SMUGGLED)


VECTORS: dict[str, bytes] = {
    # Content-Length and Transfer-Encoding together, either order (CL.TE / TE.CL).
    "cl-then-te": post("Content-Length: 6", "Transfer-Encoding: chunked",
                       body=b"0\r\n\r\n" + SMUGGLED),
    "te-then-cl": post("Transfer-Encoding: chunked", "Content-Length: 6",
                       body=b"0\r\n\r\n" + SMUGGLED),
    # Two Content-Length fields, equal or not, or one with a list.
    "two-cl-same": post("Content-Length: 3", "Content-Length: 3", body=b"abc" + SMUGGLED),
    "two-cl-different": post("Content-Length: 3", "Content-Length: 60", body=b"abc" + SMUGGLED),
    "cl-list": post("Content-Length: 3, 3", body=b"abc" + SMUGGLED),
    # Content-Length that is not plain digits.
    "cl-plus": post("Content-Length: +3", body=b"abc" + SMUGGLED),
    "cl-minus": post("Content-Length: -3", body=b"abc" + SMUGGLED),
    "cl-inner-space": post("Content-Length: 1 3", body=b"abc" + SMUGGLED),
    "cl-hex": post("Content-Length: 0x3", body=b"abc" + SMUGGLED),
    "cl-letters": post("Content-Length: 3a", body=b"abc" + SMUGGLED),
    "cl-overflow": post("Content-Length: 99999999999999999999999", body=b"abc" + SMUGGLED),
    "cl-vertical-tab": post("Content-Length:\x0b3", body=b"abc" + SMUGGLED),
    # Transfer-Encoding other than exactly "chunked".
    "te-chunked-identity": post("Transfer-Encoding: chunked, identity",
                                body=b"0\r\n\r\n" + SMUGGLED),
    "te-identity-chunked": post("Transfer-Encoding: identity, chunked",
                                body=b"0\r\n\r\n" + SMUGGLED),
    "te-gzip-chunked": post("Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te-xchunked": post("Transfer-Encoding: xchunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te-chunked-suffix": post("Transfer-Encoding: chunkedx", body=b"0\r\n\r\n" + SMUGGLED),
    "te-quoted": post('Transfer-Encoding: "chunked"', body=b"0\r\n\r\n" + SMUGGLED),
    "te-vertical-tab": post("Transfer-Encoding:\x0bchunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te-form-feed": post("Transfer-Encoding: \x0cchunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te-nbsp": post("Transfer-Encoding: \xa0chunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te-space-before-colon": post("Transfer-Encoding : chunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te-folded": post("Transfer-Encoding:", " chunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te-duplicated": post("Transfer-Encoding: chunked", "Transfer-Encoding: chunked",
                          body=b"0\r\n\r\n" + SMUGGLED),
    "te-duplicated-identity": post("Transfer-Encoding: chunked", "Transfer-Encoding: identity",
                                   body=b"0\r\n\r\n" + SMUGGLED),
    "te-in-http-1.0": post("Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED,
                           version="1.0"),
    # Bad chunk sizes.
    "chunk-size-zz": chunked(b"zz"),
    "chunk-size-negative": chunked(b"-3"),
    "chunk-size-overflow": chunked(b"1" + b"0" * 16 + b"3"),
    "chunk-size-0x": chunked(b"0x3"),
    "chunk-size-space": chunked(b"3 "),
    "chunk-size-bare-lf": post("Transfer-Encoding: chunked",
                               body=b"3\nabc\n0\n\n" + SMUGGLED),
    "chunk-data-overrun": post("Transfer-Encoding: chunked",
                               body=b"3\r\nabcdef\r\n0\r\n\r\n" + SMUGGLED),
    # Header-line syntax.
    "obs-fold-space": get("X-A: b", " c"),
    "obs-fold-tab": get("X-A: b", "\tc"),
    "first-field-folded": b"GET /_demo/echo HTTP/1.1\r\n Host: news.example\r\n\r\n",
    "nul-in-value": get("X-A: b\x00c"),
    "bare-cr-in-value": get("X-A: b\rc"),
    "bare-cr-line-end": b"GET /_demo/echo HTTP/1.1\r\nHost: news.example\r\nX-A: b\r\r\n\r\n",
    "bare-lf-line-ends": b"GET /_demo/echo HTTP/1.1\nHost: news.example\nX-A: b\n\n",
    "space-before-colon": get("X-A : b"),
    "tab-before-colon": get("X-A\t: b"),
    "host-space-before-colon": get("Host : evil.example", host=None),
    "empty-field-name": get(": b"),
    "bad-char-in-name": get("X(A): b"),
    "del-in-value": get("X-A: b\x7fc"),
    # Host.
    "missing-host": get(host=None),
    "two-hosts": get("Host: evil.example"),
    "host-with-slash": get(host="news.example/evil"),
    "host-with-at": get(host="evil.example@news.example"),
    "host-with-space": get(host="news.example evil"),
    # Request targets.
    "absolute-form": get(target="http://evil.example/_demo/echo"),
    "asterisk-with-get": get(target="*"),
    "no-leading-slash": get(target="_demo/echo"),
    "fragment": get(target="/_demo/echo#x"),
    "control-char-in-target": get(target="/_demo/echo\x01"),
    "space-in-target": get(target="/_demo/echo /x"),
    # Request line.
    "lowercase-method": b"get /_demo/echo HTTP/1.1\r\nHost: news.example\r\n\r\n",
    "garbage-method": b"G(T /_demo/echo HTTP/1.1\r\nHost: news.example\r\n\r\n",
    "http-1.2": get(version="1.2"),
    "not-http": b"GET /_demo/echo FTP/1.1\r\nHost: news.example\r\n\r\n",
    "binary-garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
}

# Refused as well, with a more precise status than 400.
OTHER_STATUS: dict[str, tuple[bytes, int]] = {
    "http-2.0-line": (get(version="2.0"), 505),
    "http-0.9": (b"GET /_demo/echo\r\n\r\n", 505),
    "connect": (b"CONNECT news.example:443 HTTP/1.1\r\nHost: news.example:443\r\n\r\n", 501),
    "connect-after-data": (b"CONNECT news.example:443 HTTP/1.1\r\nHost: news.example:443\r\n\r\n"
                           + b"\x16\x03\x01" + SMUGGLED, 501),
    "expect-other": (post("Expect: 200-ok", "Content-Length: 3", body=b"abc"), 417),
}


async def _assert_refused(origin: Origin, make_edge: EdgeFactory, raw: bytes,
                          status: int) -> None:
    edge = await make_edge(origin.url)
    reply = await exchange(port_of(edge), raw, timeout=5.0)
    assert reply.status == status, reply.data[:200]
    assert reply.statuses == [status], "exactly one answer"
    assert reply.closed, "the connection must be closed after a refusal"
    assert (await origin_stats(origin))["requests"] == 0, "something reached the origin"
    assert edge.pipeline.metrics.bad_requests == 1


@pytest.mark.parametrize("raw", VECTORS.values(), ids=VECTORS.keys())
async def test_vector_is_refused_with_400(origin: Origin, make_edge: EdgeFactory,
                                          raw: bytes) -> None:
    await _assert_refused(origin, make_edge, raw, 400)


@pytest.mark.parametrize(("raw", "status"), OTHER_STATUS.values(), ids=OTHER_STATUS.keys())
async def test_unsupported_request_is_refused(origin: Origin, make_edge: EdgeFactory,
                                              raw: bytes, status: int) -> None:
    await _assert_refused(origin, make_edge, raw, status)


async def test_vector_after_a_good_request_on_the_same_connection(
        origin: Origin, make_edge: EdgeFactory) -> None:
    """The good request is answered; the bad one behind it is refused and goes nowhere."""
    edge = await make_edge(origin.url)
    raw = get(target="/robots.txt") + VECTORS["cl-then-te"]
    reply = await exchange(port_of(edge), raw, timeout=5.0)
    assert reply.statuses == [200, 400]
    assert reply.closed
    assert (await origin_stats(origin))["by_path"].get("/_demo/echo", 0) == 0


ACCEPTED: dict[str, bytes] = {
    # Legitimate variations that must keep working (so the checks above are not too broad).
    "optional-whitespace": post("Content-Length:   3  ", body=b"abc"),
    "te-uppercase": post("Transfer-Encoding: CHUNKED", body=b"3\r\nabc\r\n0\r\n\r\n"),
    "te-padded": post("Transfer-Encoding:   chunked ", body=b"3\r\nabc\r\n0\r\n\r\n"),
    "chunk-extension-and-trailer": post(
        "Transfer-Encoding: chunked", body=b"3;name=value\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"),
    "host-with-port": get(host="news.example:8080"),
    "host-ipv6": get(host="[::1]:8080"),
    "http-1.0-without-host": get(host=None, version="1.0"),
    "leading-empty-line": b"\r\n" + get(),
    "options-asterisk": b"OPTIONS * HTTP/1.1\r\nHost: news.example\r\n\r\n",
    # Upgrade is ignored (RFC 9110 §7.8): answered as plain HTTP, then the connection closes.
    "websocket-upgrade": get("Connection: Upgrade", "Upgrade: websocket",
                             "Sec-WebSocket-Version: 13"),
    "h2c-upgrade": get("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                       "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
}


@pytest.mark.parametrize("raw", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_legitimate_variation_is_accepted(origin: Origin, make_edge: EdgeFactory,
                                                raw: bytes) -> None:
    edge = await make_edge(origin.url)
    reply = await exchange(port_of(edge), raw, timeout=1.0)
    assert edge.pipeline.metrics.bad_requests == 0
    assert reply.statuses == [200 if b"OPTIONS" not in raw else 404], reply.data[:300]
    assert b"kalkan-demo-origin" in reply.data  # answered by the origin, not refused


async def test_trailer_fields_are_not_believed(origin: Origin, make_edge: EdgeFactory) -> None:
    """Trailer fields arrive after the request went upstream: they must change nothing."""
    edge = await make_edge(origin.url)
    raw = post("Transfer-Encoding: chunked",
               body=b"3\r\nabc\r\n0\r\nHost: evil.example\r\nX-Late: 1\r\n\r\n")
    reply = await exchange(port_of(edge), raw, timeout=1.0)
    assert reply.status == 200
    assert [line["host"] for line in access_log(edge)] == ["news.example"]


async def _broken_upload(port: int) -> RawReply:
    """An upload whose second read has a bad chunk size, with a request hidden behind it."""
    head = post("Transfer-Encoding: chunked").replace(b"/_demo/echo", b"/_demo/upload")
    return await exchange(port, head + b"3\r\nabc\r\n",
                          b"zz\r\nabc\r\n0\r\n\r\n" + get(target="/_demo/respond?smuggled=1"),
                          pause=0.3, timeout=5.0)


async def test_bad_chunk_in_a_later_read_cuts_the_upload(origin: Origin,
                                                         make_edge: EdgeFactory) -> None:
    """The origin has the head by then; it never gets a complete body nor the hidden request."""
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    reply = await _broken_upload(port_of(edge))
    assert reply.closed
    assert reply.statuses in ([], [400])
    assert b'"bytes"' not in reply.data
    assert "/_demo/respond?smuggled=1" not in (await origin_stats(origin))["by_path"]


async def test_upstream_is_released_when_the_client_body_breaks(origin: Origin,
                                                                make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    await _broken_upload(port_of(edge))
    for _ in range(40):
        if (await origin_stats(origin))["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await origin_stats(origin))["in_flight"] == 0
