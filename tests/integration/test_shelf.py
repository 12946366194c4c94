"""Long-idle keep-alive connections on the shelf (edge/shelf.py), over real sockets: taken out of
the event loop, woken by their client's next request or close, timed out, closed with the
server, and never for TLS."""

from __future__ import annotations

import asyncio
import os

from kalkan.edge.connection import HttpConnection
from kalkan.edge.parked import ParkedConnection
from kalkan.edge.shelf import SHELVE_AFTER
from support import Client, EdgeFactory, Origin, port_of

# Past SHELVE_AFTER, seen by the sweep (every 0.25 s), with room for a slow machine.
_SHELVED_BY = SHELVE_AFTER + 0.8


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _shelved_connection(edge: object, client: Client) -> ParkedConnection:
    assert (await client.request("GET", "/bench/20k")).status == 200
    await asyncio.sleep(_SHELVED_BY)
    (parked,) = edge.server.connections  # type: ignore[attr-defined]
    assert isinstance(parked, ParkedConnection)
    assert parked.transport is None and parked.fd >= 0
    return parked


async def test_a_long_idle_connection_is_shelved_and_its_next_request_answered(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    client = await Client.connect(port_of(edge))
    try:
        parked = await _shelved_connection(edge, client)
        assert len(edge.server.shelf) == 1 and edge.server.open == 1
        assert edge.server.per_client == {"127.0.0.1": 1}
        again = await client.request("GET", "/bench/20k")
        assert again.status == 200 and again.header("X-Cache") == "HIT"
        assert len(again.body) == 20 * 1024
        (woken,) = edge.server.connections
        assert isinstance(woken, HttpConnection) and woken.client == parked.client
        assert len(edge.server.shelf) == 0 and edge.server.open == 1
        # And it can be shelved again, and woken again.
        await asyncio.sleep(_SHELVED_BY)
        assert len(edge.server.shelf) == 1
        assert (await client.request("GET", "/robots.txt")).status == 200
    finally:
        await client.close()
    await asyncio.sleep(0.2)
    assert edge.server.open == 0 and not edge.server.per_client
    assert not edge.server.connections


async def test_a_request_split_over_several_packets_wakes_a_shelved_connection(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    client = await Client.connect(port_of(edge))
    try:
        await _shelved_connection(edge, client)
        client.send(b"GET /bench/20k HTTP/1.1\r\nHo")
        await asyncio.sleep(0.1)
        client.send(b"st: news.example\r\n\r\n"
                    b"GET /robots.txt HTTP/1.1\r\nHost: news.example\r\n\r\n")
        first, second = await client.read_response(), await client.read_response()
        assert (first.status, second.status) == (200, 200)
        assert len(first.body) == 20 * 1024
    finally:
        await client.close()


async def test_a_client_closing_a_shelved_connection_frees_its_slot(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    client = await Client.connect(port_of(edge))
    await _shelved_connection(edge, client)
    before = _open_descriptors()
    await client.close()
    for _ in range(50):
        await asyncio.sleep(0.05)
        if not edge.server.connections:
            break
    assert not edge.server.connections and edge.server.open == 0
    assert not edge.server.per_client and len(edge.server.shelf) == 0
    assert _open_descriptors() < before  # the shelved descriptor was closed, not leaked


async def test_a_shelved_connection_still_times_out(origin: Origin,
                                                    make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"keepalive_timeout": 3.0})
    client = await Client.connect(port_of(edge))
    try:
        await _shelved_connection(edge, client)
        assert await client.closed_by_peer(timeout=5.0)
    finally:
        await client.close()
    assert edge.pipeline.metrics.timeouts["keepalive"] == 1
    assert edge.server.open == 0 and not edge.server.connections
    assert len(edge.server.shelf) == 0


async def test_closing_the_server_closes_shelved_connections(origin: Origin,
                                                             make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    client = await Client.connect(port_of(edge))
    try:
        await _shelved_connection(edge, client)
        await edge.server.close(grace=3.0)
        assert await client.closed_by_peer(timeout=5.0)
        assert edge.server.open == 0 and not edge.server.connections
        assert edge.server.shelf is None
    finally:
        await client.close()


async def test_many_shelved_connections_wake_together(origin: Origin,
                                                      make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"max_connections_per_client": 1000})
    clients = [await Client.connect(port_of(edge)) for _ in range(300)]  # past one batch (256)
    try:
        for client in clients:
            assert (await client.request("GET", "/robots.txt")).status == 200
        await asyncio.sleep(_SHELVED_BY)
        assert len(edge.server.shelf) == 300 and edge.server.open == 300
        for client in clients:
            client.send(b"GET /robots.txt HTTP/1.1\r\nHost: news.example\r\n\r\n")
        answers = await asyncio.gather(*(c.read_response() for c in clients))
        assert [a.status for a in answers] == [200] * 300
        assert len(edge.server.shelf) == 0 and edge.server.open == 300
    finally:
        for client in clients:
            await client.close()
    await asyncio.sleep(0.3)
    assert edge.server.open == 0 and not edge.server.per_client


async def test_with_many_connections_open_a_parked_one_is_shelved_at_the_next_sweep(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    edge.server.park_at_once_past = 0  # as if past PARK_AT_ONCE_PAST connections were open
    client = await Client.connect(port_of(edge))
    try:
        assert (await client.request("GET", "/robots.txt")).status == 200
        await asyncio.sleep(0.6)  # parked at once, shelved by the next sweep: well before 1 s
        (parked,) = edge.server.connections
        assert isinstance(parked, ParkedConnection) and parked.fd >= 0
        assert (await client.request("GET", "/robots.txt")).status == 200
    finally:
        await client.close()
