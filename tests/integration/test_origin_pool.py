"""The origin keep-alive pool against origins that close connections: closed idle connections
leave the pool, idempotent requests lost on a reused connection are sent again on a new one, and
old idle connections are not reused (issue 7: dead origin connections gave readers 502)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from support import EdgeFactory, LoopbackServer, fetch, port_of


@dataclass
class KeepAliveOrigin(LoopbackServer):
    """A raw HTTP/1.1 origin on loopback that closes idle keep-alive connections.

    `idle_close`: seconds a connection may wait for its next request before the origin closes it
    (Apache's KeepAliveTimeout, shortened). `drop_reused`: the origin closes a connection without
    an answer when a second request arrives on it, as when its keep-alive timer fires just as
    the edge reuses the connection.
    """

    idle_close: float | None = 1.0
    drop_reused: bool = False
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    dropped: int = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_close)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return  # idle too long (or the edge went away): close, as Apache does
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                if served and self.drop_reused:
                    self.dropped += 1
                    return
                self.requests.append(line)
                served += 1
                body = f"answer {len(self.requests)}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                             b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


@pytest.fixture
async def keepalive_origin() -> AsyncIterator[KeepAliveOrigin]:
    origin = KeepAliveOrigin()
    await origin.start()
    yield origin
    await origin.stop()


async def _burst(port: int, n: int, tag: str) -> list[int]:
    responses = await asyncio.gather(*(fetch(port, f"/{tag}/{i}") for i in range(n)))
    return [r.status for r in responses]


async def test_requests_spaced_past_the_origin_idle_close_all_answered(
        keepalive_origin: KeepAliveOrigin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(keepalive_origin.url)
    port = port_of(edge)
    statuses = []
    for i in range(4):
        if i:
            await asyncio.sleep(1.2)  # the origin has closed the idle connection by now
        resp = await fetch(port, f"/spaced/{i}")
        statuses.append(resp.status)
        assert resp.header("X-Cache") != "ERROR"
    assert statuses == [200] * 4
    assert len(keepalive_origin.requests) == 4
    # Each close reached the pool while the connection was idle and took it out at once.
    assert edge.pipeline.upstream.pool.evicted == 3


async def test_a_burst_after_idle_is_answered_although_every_pooled_connection_died(
        keepalive_origin: KeepAliveOrigin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(keepalive_origin.url)
    port = port_of(edge)
    assert await _burst(port, 6, "warm") == [200] * 6
    pool = edge.pipeline.upstream.pool
    opened = pool.connects
    assert opened >= 2  # several idle connections in the pool, all about to die
    await asyncio.sleep(1.5)
    assert await _burst(port, 6, "after") == [200] * 6
    assert await _burst(port, 6, "again") == [200] * 6  # the new connections are reused fine
    assert pool.evicted == opened  # each died in the pool and left it then, not when taken


async def test_lost_idempotent_requests_are_sent_again_on_a_new_connection(
        make_edge: EdgeFactory) -> None:
    """Every reused connection dies under the request: the retry must never take another idle
    one (the old pool did, and answered 502 when two dead ones were pooled)."""
    origin = KeepAliveOrigin(idle_close=None, drop_reused=True)
    await origin.start()
    try:
        edge = await make_edge(origin.url)
        port = port_of(edge)
        assert await _burst(port, 4, "warm") == [200] * 4
        pool = edge.pipeline.upstream.pool
        assert pool.connects >= 2
        for i in range(4):
            resp = await fetch(port, f"/next/{i}")
            assert resp.status == 200, resp.body
        assert origin.dropped == pool.retries == 4
        head = await fetch(port, "/head", method="HEAD")
        assert head.status == 200 and pool.retries == 5
    finally:
        await origin.stop()


async def test_a_lost_post_is_not_sent_twice(make_edge: EdgeFactory) -> None:
    origin = KeepAliveOrigin(idle_close=None, drop_reused=True)
    await origin.start()
    try:
        edge = await make_edge(origin.url)
        port = port_of(edge)
        assert (await fetch(port, "/warm")).status == 200
        resp = await fetch(port, "/comment", method="POST", body=b"text=hello")
        assert resp.status == 502
        assert origin.dropped == 1 and edge.pipeline.upstream.pool.retries == 0
        assert not any(line.startswith("POST") for line in origin.requests)
    finally:
        await origin.stop()


async def test_idle_connections_past_the_idle_timeout_are_not_reused(
        make_edge: EdgeFactory) -> None:
    """An origin that keeps connections open longer than the pool's idle timeout: the pool
    closes its old connection itself rather than race the origin's own timer."""
    origin = KeepAliveOrigin(idle_close=None)
    await origin.start()
    try:
        edge = await make_edge(origin.url)
        pool = edge.pipeline.upstream.pool
        assert pool.idle_timeout == 4.0  # the default, below Apache's 5 s
        pool.idle_timeout = 0.3
        port = port_of(edge)
        assert (await fetch(port, "/a")).status == 200
        assert (await fetch(port, "/b")).status == 200  # within the idle timeout: reused
        assert origin.connections == 1
        await asyncio.sleep(0.5)
        assert (await fetch(port, "/c")).status == 200
        assert origin.connections == 2 and pool.retries == 0
    finally:
        await origin.stop()
