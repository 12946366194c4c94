"""Limits and timeouts of the public listener, over real sockets: slowloris, slow bodies, idle
keep-alive, oversized heads and bodies, per-client connection caps and slow readers."""

from __future__ import annotations

import asyncio
import contextlib

from support import (
    DEMO_QUERIES,
    Client,
    EdgeFactory,
    Origin,
    connect_raw,
    exchange,
    fetch,
    origin_stats,
    port_of,
    read_until_close,
)


async def _trickle(writer: asyncio.StreamWriter, data: bytes, step: int, every: float) -> None:
    """Write `data` `step` bytes at a time, `every` seconds apart, until done or cut off."""
    with contextlib.suppress(ConnectionError, OSError):
        for i in range(0, len(data), step):
            writer.write(data[i:i + step])
            await writer.drain()
            await asyncio.sleep(every)


async def test_slowloris_is_cut_off_while_others_are_served(origin: Origin,
                                                            make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"header_timeout": 1.0})
    port = port_of(edge)
    loop = asyncio.get_running_loop()
    slow = await Client.connect(port)
    started = loop.time()
    head = b"GET / HTTP/1.1\r\nHost: news.example\r\nX-Padding: " + b"a" * 200
    trickle = asyncio.create_task(_trickle(slow.writer, head, 1, 0.2))
    try:
        for _ in range(4):  # other readers are served all the while
            assert (await fetch(port, "/robots.txt")).status == 200
            await asyncio.sleep(0.1)
        reply = await read_until_close(slow.reader, timeout=5.0)
        elapsed = loop.time() - started
    finally:
        trickle.cancel()
        await slow.close()
    assert reply.closed
    assert reply.status in (None, 408)
    assert 0.9 <= elapsed < 3.0, elapsed
    assert edge.pipeline.metrics.timeouts["headers"] == 1


async def test_slow_head_behind_a_pipelined_request_times_out(origin: Origin,
                                                             make_edge: EdgeFactory) -> None:
    """A head that starts while an earlier request is answered still has a deadline."""
    edge = await make_edge(origin.url, limits={"header_timeout": 1.0, "keepalive_timeout": 30.0})
    client = await Client.connect(port_of(edge))
    loop = asyncio.get_running_loop()
    started = loop.time()
    client.send(b"GET /robots.txt HTTP/1.1\r\nHost: news.example\r\n\r\n"
                b"GET / HTTP/1.1\r\nHost: news.example\r\n")
    trickle = asyncio.create_task(_trickle(client.writer, b"X-Slow: " + b"b" * 200, 1, 0.2))
    try:
        reply = await read_until_close(client.reader, timeout=6.0)
    finally:
        trickle.cancel()
        await client.close()
    assert reply.closed and loop.time() - started < 4.0
    assert reply.statuses[:1] == [200]
    assert reply.statuses[1:] in ([], [408])


async def test_slow_post_body_is_cut_off(origin: Origin, make_edge: EdgeFactory) -> None:
    """A body that keeps arriving, but slower than body_min_rate, is cut after the grace."""
    edge = await make_edge(origin.url, limits={"body_min_rate": 1000, "body_timeout": 10.0})
    client = await Client.connect(port_of(edge))
    loop = asyncio.get_running_loop()
    client.send(b"POST /_demo/upload HTTP/1.1\r\nHost: news.example\r\n"
                b"Content-Length: 100000\r\n\r\n")
    started = loop.time()
    trickle = asyncio.create_task(_trickle(client.writer, b"x" * 100000, 5, 0.2))  # 25 B/s
    try:
        reply = await read_until_close(client.reader, timeout=10.0)
        elapsed = loop.time() - started
    finally:
        trickle.cancel()
        await client.close()
    assert reply.closed
    assert reply.status in (None, 408)
    assert 4.5 <= elapsed < 8.0, elapsed
    assert edge.pipeline.metrics.timeouts["body_rate"] == 1


async def test_stalled_body_is_cut_off(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"body_timeout": 1.0})
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await exchange(port_of(edge), b"POST /_demo/upload HTTP/1.1\r\nHost: news.example\r\n"
                           b"Content-Length: 1000\r\n\r\n" + b"x" * 10, timeout=5.0)
    assert reply.closed and reply.status in (None, 408)
    assert 0.9 <= loop.time() - started < 3.5
    assert edge.pipeline.metrics.timeouts["body"] == 1


async def test_idle_keepalive_connection_is_closed(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"keepalive_timeout": 1.0})
    client = await Client.connect(port_of(edge))
    try:
        assert (await client.request("GET", "/robots.txt")).status == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await client.closed_by_peer(timeout=5.0)
        assert 0.9 <= loop.time() - started < 3.0
    finally:
        await client.close()
    assert edge.pipeline.metrics.timeouts["keepalive"] == 1


async def test_connection_that_sends_nothing_is_closed(origin: Origin,
                                                       make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"header_timeout": 1.0})
    reply = await exchange(port_of(edge), timeout=5.0)
    assert reply.closed and reply.data == b""


async def test_request_line_too_long_gets_414(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"max_request_line": 1024})
    target = "/_demo/echo?" + "q" * 2000
    reply = await exchange(port_of(edge), f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert reply.status == 414 and reply.closed
    assert (await origin_stats(origin))["requests"] == 0


async def test_too_many_header_fields_get_431(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"max_headers": 20})
    fields = "".join(f"X-Field-{i}: {i}\r\n" for i in range(21))
    reply = await exchange(port_of(edge),
                           f"GET /_demo/echo HTTP/1.1\r\nHost: a\r\n{fields}\r\n".encode())
    assert reply.status == 431 and reply.closed
    assert (await origin_stats(origin))["requests"] == 0


async def test_too_large_header_block_gets_431(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"max_header_bytes": 4096})
    reply = await exchange(port_of(edge), b"GET /_demo/echo HTTP/1.1\r\nHost: a\r\n"
                           b"X-Big: " + b"v" * 5000 + b"\r\n\r\n")
    assert reply.status == 431 and reply.closed
    assert (await origin_stats(origin))["requests"] == 0


async def test_endless_header_line_is_refused_before_it_ends(origin: Origin,
                                                             make_edge: EdgeFactory) -> None:
    """httptools holds a header line until it ends: the edge must not wait for the end."""
    edge = await make_edge(origin.url)
    reply = await exchange(port_of(edge), b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ",
                           *[b"v" * 65536] * 32, timeout=5.0)  # 2 MiB, never a line end
    assert reply.status == 431 and reply.closed


async def test_body_over_limit_gets_413(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"max_body_bytes": 1000})
    reply = await exchange(port_of(edge), b"POST /_demo/upload HTTP/1.1\r\nHost: a\r\n"
                           b"Content-Length: 2000\r\n\r\n" + b"x" * 2000)
    assert reply.status == 413 and reply.closed
    assert (await origin_stats(origin))["requests"] == 0


async def test_chunked_body_over_limit_is_refused(origin: Origin, make_edge: EdgeFactory) -> None:
    """The length shows only while it streams (to the origin already): 413, or a cut."""
    edge = await make_edge(origin.url, limits={"max_body_bytes": 100_000})
    chunk = b"%x\r\n%s\r\n" % (50_000, b"x" * 50_000)
    reply = await exchange(port_of(edge), b"POST /_demo/upload HTTP/1.1\r\nHost: a\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n", chunk, chunk, chunk, b"0\r\n\r\n",
                           pause=0.05)
    assert reply.closed
    assert reply.status in (None, 413)
    assert b'"bytes"' not in reply.data  # the origin's answer to a whole upload never came


async def test_per_client_connection_limit(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"max_connections_per_client": 3})
    port = port_of(edge)
    clients = [await Client.connect(port) for _ in range(3)]
    try:
        for c in clients:
            assert (await c.request("GET", "/robots.txt")).status == 200
        extra = await Client.connect(port)
        assert await extra.closed_by_peer(timeout=3.0)
        await extra.close()
        assert edge.pipeline.metrics.connections_refused == 1
        # The admitted ones keep working, and a freed slot can be taken again.
        assert (await clients[0].request("GET", "/robots.txt")).status == 200
        await clients.pop().close()
        for _ in range(50):
            if edge.server.per_client.get("127.0.0.1") == 2:
                break
            await asyncio.sleep(0.02)
        assert (await fetch(port, "/robots.txt")).status == 200
    finally:
        for c in clients:
            await c.close()


async def test_slow_reader_is_cut_off_after_send_timeout(origin: Origin,
                                                         make_edge: EdgeFactory) -> None:
    """A client that asks for a large response and never reads it does not hold the edge."""
    edge = await make_edge(origin.url, limits={"send_timeout": 1.0}, cache=DEMO_QUERIES)
    sock = await connect_raw(port_of(edge), rcvbuf=4096)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, b"GET /_demo/big?bytes=268435456 HTTP/1.1\r\n"
                                      b"Host: news.example\r\n\r\n")
        started = loop.time()
        while not edge.pipeline.metrics.timeouts["send"] and loop.time() - started < 8.0:
            await asyncio.sleep(0.05)
        elapsed = loop.time() - started
        await asyncio.sleep(0.1)
        assert not edge.server.connections
    finally:
        sock.close()
    assert edge.pipeline.metrics.timeouts["send"] == 1, "the slow reader was never cut off"
    assert 0.9 <= elapsed < 5.0, elapsed
    # The origin's stream was given up too, not read to the end into memory.
    for _ in range(50):
        if (await origin_stats(origin))["in_flight"] == 0:
            break
        await asyncio.sleep(0.1)
    assert (await origin_stats(origin))["in_flight"] == 0


async def test_slow_but_steady_reader_is_not_cut_off(origin: Origin,
                                                     make_edge: EdgeFactory) -> None:
    """send_timeout bounds a stall, not the whole download."""
    edge = await make_edge(origin.url, limits={"send_timeout": 1.0}, cache=DEMO_QUERIES)
    sock = await connect_raw(port_of(edge), rcvbuf=16384)
    loop = asyncio.get_running_loop()
    size = 4 * 2**20
    try:
        await loop.sock_sendall(sock, b"GET /_demo/big?bytes=%d HTTP/1.1\r\nHost: news.example\r\n"
                                      b"Connection: close\r\n\r\n" % size)
        got, started = 0, loop.time()
        while loop.time() - started < 15.0:
            data = await loop.sock_recv(sock, 65536)
            if not data:
                break
            got += len(data)
            if loop.time() - started < 2.5:
                await asyncio.sleep(0.05)  # ~1 MiB/s at most for longer than send_timeout
    finally:
        sock.close()
    assert got > size  # head + the whole (chunked) body, then the close
    assert edge.pipeline.metrics.timeouts["send"] == 0
