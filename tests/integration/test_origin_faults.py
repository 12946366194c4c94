"""A real edge against origins that misbehave after the request: oversized or endless response
heads, protocol switches, broken bodies (a bad chunk size, a short body, a stalled body).

What a reader must see (issue 7): while no byte of the response has gone to the client, a 502
(504 for a stall) or the stale copy when one is stored; once the head has gone out, the
connection closes without a clean end of message, so the reader's client knows the body is
incomplete. Never a reset with no answer, never a traceback in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from kalkan.edge.app import Edge
from kalkan.edge.origin import OriginError, OriginTimeout
from support import EdgeFactory, LoopbackServer, RawReply, exchange, fetch, port_of, rss_bytes

# (request number on this origin, 0-based; its reader and writer) -> writes one response, maybe a
# broken one
Script = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class ScriptedOrigin(LoopbackServer):
    """A raw origin on loopback: one request per connection, answered by `script`, then closed."""

    script: Script
    requests: list[bytes] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            n = len(self.requests)
            self.requests.append(head)
            await self.script(n, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the edge gave up on us: what these tests want
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[ScriptedOrigin]]]:
    origins: list[ScriptedOrigin] = []

    async def start(script: Script) -> ScriptedOrigin:
        origin = ScriptedOrigin(script)
        await origin.start()
        origins.append(origin)
        return origin

    yield start
    for origin in origins:
        await origin.stop()


async def _until_closed(reader: asyncio.StreamReader, limit: float = 10.0) -> None:
    """Hold the connection open (a stalled origin) until the edge closes it."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        while await asyncio.wait_for(reader.read(65536), limit):
            pass


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info is not None and r.levelno >= logging.ERROR]


def _split(reply: RawReply) -> tuple[bytes, bytes]:
    head, sep, body = reply.data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {reply.data[:200]!r}"
    return head, body


# -- response heads -------------------------------------------------------------------------------

async def test_endless_origin_head_is_refused_with_502_and_bounded_memory(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]],
        make_edge: EdgeFactory) -> None:
    sent = 0
    filler = b"a" * 65536
    cap = 128 * 2**20

    async def endless(n: int, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Endless: ")
        while sent < cap:
            writer.write(filler)
            sent += len(filler)
            await writer.drain()

    origin = await scripted(endless)
    edge = await make_edge(origin.url)
    before = rss_bytes()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await fetch(port_of(edge), "/huge-head")
    elapsed = loop.time() - t0
    grown = rss_bytes() - before
    assert resp.status == 502
    assert resp.header("X-Cache") == "ERROR"
    assert elapsed < 3.0
    assert sent < 16 * 2**20  # the edge stopped reading long before the origin was done
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"


async def test_origin_head_with_too_many_fields_is_refused(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]],
        make_edge: EdgeFactory) -> None:
    async def many(n: int, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(150))  # ~1.5 KiB: fields, not bytes
        writer.write(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    origin = await scripted(many)
    edge = await make_edge(origin.url)
    assert (await fetch(port_of(edge), "/many-fields")).status == 502
    assert (await fetch(port_of(edge), "/many-fields", method="POST", body=b"x")).status == 502


async def test_a_head_of_100_fields_and_60_kib_is_still_served(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]],
        make_edge: EdgeFactory) -> None:
    """The limits leave room for real sites' long heads (CSP, Link preloads, cookies)."""
    async def big_but_fine(n: int, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        fields = b"".join(b"X-F%02d: %s\r\n" % (i, b"v" * 620) for i in range(98))
        writer.write(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    origin = await scripted(big_but_fine)
    edge = await make_edge(origin.url)
    resp = await fetch(port_of(edge), "/big-head")
    assert resp.status == 200 and resp.body == b"ok"
    assert resp.header("X-F97") == "v" * 620


async def test_an_endless_run_of_interim_responses_is_refused(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]],
        make_edge: EdgeFactory) -> None:
    """1xx heads count toward the head limit: 100 Continue forever must not hold the request."""
    async def interim(n: int, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + 10.0  # endless as far as the edge can tell
        while loop.time() < until:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 64)
            await writer.drain()

    origin = await scripted(interim)
    edge = await make_edge(origin.url)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await fetch(port_of(edge), "/interim")).status == 502
    assert loop.time() - t0 < 3.0


async def test_interim_fields_are_not_mixed_into_the_final_head(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]],
        make_edge: EdgeFactory) -> None:
    async def early_hints(n: int, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    origin = await scripted(early_hints)
    edge = await make_edge(origin.url)
    resp = await fetch(port_of(edge), "/hints")
    assert resp.status == 200 and resp.body == b"ok"
    assert resp.header("Link") is None


async def test_an_origin_switching_protocols_gets_502_without_a_traceback(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]],
        make_edge: EdgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    async def switch(n: int, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\n\x81\x02hi")
        await writer.drain()
        await _until_closed(reader, 5.0)

    origin = await scripted(switch)
    edge = await make_edge(origin.url)
    assert (await fetch(port_of(edge), "/ws")).status == 502
    assert not _tracebacks(caplog)


# -- broken bodies ---------------------------------------------------------------------------------

# Writes one (broken) response on the origin's side of a connection.
Fault = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

STORABLE = b"public, max-age=0"  # stored, stale at once: every request goes to the origin
NOT_STORABLE = b"no-store"


def _bad_chunk(cc: bytes) -> Fault:
    async def write(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: %s\r\nContent-Type: text/html\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n" % cc)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"zz-not-hex\r\nbroken\r\n")
        await writer.drain()
        await _until_closed(reader, 5.0)
    return write


def _short_body(cc: bytes) -> Fault:
    async def write(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: %s\r\nContent-Type: text/html\r\n"
                     b"Content-Length: 1000\r\n\r\n0123456789" % cc)
        await writer.drain()
    return write


def _stalled_body(cc: bytes) -> Fault:
    async def write(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: %s\r\nContent-Type: text/html\r\n"
                     b"Content-Length: 1000\r\n\r\n0123456789" % cc)
        await writer.drain()
        await _until_closed(reader, 5.0)
    return write


FAULTS = {"bad_chunk": _bad_chunk, "short_body": _short_body, "stalled_body": _stalled_body}
GOOD_BODY = b"<p>the stored copy</p>"


async def _faulty_edge(scripted: Callable[[Script], Awaitable[ScriptedOrigin]],
                       make_edge: EdgeFactory, fault: str, cc: bytes,
                       good_first: bool = False) -> tuple[Edge, ScriptedOrigin]:
    """An edge (origin.timeout 0.5 s) whose origin breaks every body (after one good one)."""
    broken = FAULTS[fault](cc)

    async def script(n: int, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        if good_first and n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: %s\r\nContent-Type: text/html\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (cc, len(GOOD_BODY), GOOD_BODY))
            await writer.drain()
            return
        await broken(reader, writer)

    origin = await scripted(script)
    edge = await make_edge(origin.url, origin={"timeout": 0.5})
    return edge, origin


_GET = b"GET /article HTTP/1.1\r\nHost: news.example\r\n\r\n"


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_broken_storable_body_gets_a_gateway_error(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]], make_edge: EdgeFactory,
        fault: str) -> None:
    """A cache fetch reads the body whole before answering: nothing has gone to the reader."""
    edge, _ = await _faulty_edge(scripted, make_edge, fault, STORABLE)
    port = port_of(edge)
    reply = await exchange(port, _GET, timeout=5.0)
    assert reply.status in ((502, 504) if fault == "stalled_body" else (502,)), reply.data[:200]
    assert b"X-Cache: ERROR" in _split(reply)[0]


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_broken_storable_body_serves_the_stale_copy(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]], make_edge: EdgeFactory,
        fault: str) -> None:
    edge, origin = await _faulty_edge(scripted, make_edge, fault, STORABLE, good_first=True)
    port = port_of(edge)
    first = await fetch(port, "/article")
    assert first.status == 200 and first.body == GOOD_BODY
    reply = await exchange(port, _GET, timeout=5.0)
    assert len(origin.requests) == 2  # the stored copy was stale: the edge asked again
    head, body = _split(reply)
    assert reply.status == 200 and body == GOOD_BODY
    assert b"X-Cache: STALE" in head


async def test_origin_closing_before_the_head_serves_the_stale_copy(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]], make_edge: EdgeFactory) -> None:
    """The stale path the broken-body tests above expect, reached by an error before the head."""
    async def script(n: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        if n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: %s\r\nContent-Type: text/html\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (STORABLE, len(GOOD_BODY), GOOD_BODY))
            await writer.drain()

    origin = await scripted(script)
    edge = await make_edge(origin.url)
    assert (await fetch(port_of(edge), "/article")).body == GOOD_BODY
    resp = await fetch(port_of(edge), "/article")
    assert len(origin.requests) == 2
    assert resp.status == 200 and resp.body == GOOD_BODY
    assert resp.header("X-Cache") == "STALE"


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_broken_streamed_body_ends_the_reader_connection_unfinished(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]], make_edge: EdgeFactory,
        fault: str) -> None:
    """A response that is not stored is streamed: its head is out before the body breaks, so the
    only honest signal left is to close the connection before the message is complete."""
    edge, _ = await _faulty_edge(scripted, make_edge, fault, NOT_STORABLE)
    reply = await exchange(port_of(edge), _GET, timeout=5.0)
    assert reply.closed, "the edge must close the reader's connection"
    head, body = _split(reply)
    assert reply.status == 200
    if fault == "bad_chunk":
        assert b"transfer-encoding: chunked" in head.lower()
        assert body.startswith(b"5\r\nhello\r\n")
        assert not body.endswith(b"0\r\n\r\n"), "the chunked body must not be terminated"
    else:
        assert b"content-length: 1000" in head.lower()
        assert body == b"0123456789"  # short of its Content-Length


@pytest.mark.parametrize("cc", [STORABLE, NOT_STORABLE], ids=["storable", "streamed"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_broken_origin_body_logs_no_traceback(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]], make_edge: EdgeFactory,
        caplog: pytest.LogCaptureFixture, fault: str, cc: bytes) -> None:
    """A broken origin is the origin's fault, not a bug of the edge: no traceback, no ERROR."""
    edge, _ = await _faulty_edge(scripted, make_edge, fault, cc)
    port = port_of(edge)
    with caplog.at_level(logging.INFO):
        reply = await exchange(port, _GET, timeout=5.0)
        await asyncio.sleep(0.1)  # let the edge finish its side of the exchange
    assert reply.status is not None
    assert not _tracebacks(caplog), [r.getMessage() for r in _tracebacks(caplog)]


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_upstream_response_read_raises_only_origin_errors(
        scripted: Callable[[Script], Awaitable[ScriptedOrigin]], make_edge: EdgeFactory,
        fault: str) -> None:
    """origin.py's side of the contract, on the edge's own pool: a broken body ends in an
    OriginError (OriginTimeout for a stall) from read(), never an httptools error or assert,
    and the broken connection is not pooled again."""
    edge, _ = await _faulty_edge(scripted, make_edge, fault, NOT_STORABLE)
    pool = edge.pipeline.upstream.pool
    resp = await pool.request("GET", b"/article", [(b"Host", b"news.example")])
    assert resp.status == 200
    received = b""
    with pytest.raises(OriginError) as caught:
        while chunk := await resp.read():
            received += chunk
    resp.release()
    assert isinstance(caught.value, OriginTimeout) == (fault == "stalled_body")
    assert received == (b"hello" if fault == "bad_chunk" else b"0123456789")
    assert not pool._idle
