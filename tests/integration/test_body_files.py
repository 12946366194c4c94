"""Hot large bodies sent from memory-backed files (edge/body_files.py) over real sockets: the
bytes a reader gets are the stored bytes, whole and in order, whether the socket takes them at
once or a slow reader makes the rest wait in the transport, pipelined or not, under TLS too."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from byte_origin import ByteOrigin, OriginRequest, Reply
from kalkan.edge.body_files import HOT_HITS
from support import Client, EdgeFactory, connect_raw, port_of

SIZES = {"/big": 200 * 1024, "/page": 20 * 1024, "/small": 2 * 1024}


def body_for(path: str) -> bytes:
    size = SIZES[path]
    seed = len(path)
    return bytes((i * 31 + seed) % 253 for i in range(size))


def reply(req: OriginRequest) -> Reply:
    return Reply(200, [("Cache-Control", "public, max-age=60"), ("Content-Type", "text/html")],
                 body_for(req.target))


@pytest.fixture
async def origin() -> AsyncIterator[ByteOrigin]:
    """An origin whose pages are cacheable and 2, 20 and 200 KB large (overrides conftest's)."""
    server = await ByteOrigin(reply, idle_timeout=5.0).start()
    yield server
    await server.stop()


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: news.example\r\n\r\n".encode()


async def warm(client: Client, path: str, times: int = HOT_HITS + 2) -> None:
    for _ in range(times):
        client.send(get(path))
        resp = await client.read_response()
        assert resp.status == 200 and resp.body == body_for(path)


async def test_hot_bodies_are_sent_from_files_and_arrive_whole(origin: ByteOrigin,
                                                               make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    shelf = edge.pipeline.body_files
    client = await Client.connect(port_of(edge))
    for path in SIZES:
        await warm(client, path)
    # The two large bodies have files; the 2 KB one is copied as before.
    assert shelf.bytes == SIZES["/big"] + SIZES["/page"] and len(shelf.files) == 2
    for _ in range(5):
        for path in SIZES:
            client.send(get(path))
            resp = await client.read_response()
            assert resp.header("X-Cache") == "HIT" and resp.body == body_for(path)
    client.send(get("/big", "HEAD"))
    head = await client.read_response(head_only=True)
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(SIZES["/big"])
    client.send(get("/page"))  # the connection still frames answers right after a HEAD
    assert (await client.read_response()).body == body_for("/page")
    assert f"kalkan_sendfile_bytes {shelf.bytes}" in edge.pipeline.metrics.render()
    assert len(origin.requests) == 3
    await client.close()


async def test_pipelined_hits_keep_their_order(origin: ByteOrigin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    client = await Client.connect(port_of(edge))
    await warm(client, "/big")
    await warm(client, "/page")
    order = ["/big", "/page", "/small", "/big", "/big", "/page"] * 4
    client.send(b"".join(get(p) for p in order))
    for path in order:
        resp = await client.read_response()
        assert resp.status == 200 and resp.body == body_for(path), path
    await client.close()


async def test_a_slow_reader_gets_every_byte(origin: ByteOrigin, make_edge: EdgeFactory) -> None:
    """A reader with a 4 KB window that reads only later: each sendfile is cut short, the rest
    waits in the transport, and the next hits go behind it by copy."""
    edge = await make_edge(origin.url)
    client = await Client.connect(port_of(edge))
    await warm(client, "/big")
    await client.close()
    sock = await connect_raw(port_of(edge), rcvbuf=4096)
    loop = asyncio.get_running_loop()
    order = ["/big", "/page", "/big"]
    await loop.sock_sendall(sock, b"".join(get(p) for p in order))
    await asyncio.sleep(0.3)  # nothing read: the edge's sends stop short
    got = bytearray()
    expected = sum(len(body_for(p)) for p in order)
    while len(got) < expected + 3 * 60:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
        if not chunk:
            break
        got += chunk
        if got.count(b"HTTP/1.1 200") == 3 and got.endswith(body_for(order[-1])):
            break
    sock.close()
    rest = bytes(got)
    for path in order:  # each answer: its head, then exactly its body
        head_end = rest.index(b"\r\n\r\n") + 4
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
        size = SIZES[path]
        assert b"Content-Length: %d\r\n" % size in rest[:head_end]
        assert rest[head_end:head_end + size] == body_for(path), path
        rest = rest[head_end + size:]
    assert rest == b""


async def test_off_sends_every_hit_by_copy(origin: ByteOrigin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache={"sendfile_bytes": 0})
    client = await Client.connect(port_of(edge))
    await warm(client, "/big", 3 * HOT_HITS)
    assert edge.pipeline.body_files.bytes == 0 and not edge.pipeline.body_files.files
    await client.close()


async def test_a_reset_during_a_hot_hit_leaves_the_edge_serving(origin: ByteOrigin,
                                                                make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    client = await Client.connect(port_of(edge))
    await warm(client, "/big")
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", port_of(edge)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(get("/big") * 3)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        sock.close()  # a reset while the edge is sending
    await asyncio.sleep(0.2)
    client.send(get("/big"))
    assert (await client.read_response()).body == body_for("/big")
    await client.close()
