"""The client connection over real sockets: keep-alive, pipelining, 100-continue, half-close, and
the fields the origin sees (forwarding headers, hop-by-hop removal, the trusted client address)."""

from __future__ import annotations

import asyncio
import hashlib
import json

from kalkan.edge.connection import HttpConnection
from kalkan.edge.parked import ParkedConnection
from support import (
    DEMO_QUERIES,
    Client,
    EdgeFactory,
    Origin,
    access_log,
    connect_raw,
    echo_header,
    echo_headers,
    exchange,
    fetch,
    origin_stats,
    port_of,
    read_until_close,
)


def get(target: str, *fields: str) -> bytes:
    extra = "".join(f"{f}\r\n" for f in fields)
    return f"GET {target} HTTP/1.1\r\nHost: news.example\r\n{extra}\r\n".encode()


async def test_keepalive_connection_is_reused(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    client = await Client.connect(port_of(edge))
    try:
        for target in ("/robots.txt", "/_demo/echo", "/robots.txt", "/_demo/echo"):
            resp = await client.request("GET", target)
            assert resp.status == 200 and resp.keep_alive
        assert edge.server.open == 1  # one connection carried all four
    finally:
        await client.close()


async def test_pipelined_miss_then_hits_answered_in_order(origin: Origin,
                                                          make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    page = "/_demo/respond?cc=public,max-age=60&body=pipelined"
    client = await Client.connect(port_of(edge))
    try:
        client.send(get(page) * 3 + get("/_demo/echo?last"))
        answers = [await client.read_response() for _ in range(4)]
    finally:
        await client.close()
    assert [a.header("X-Cache") for a in answers[:3]] == ["MISS", "HIT", "HIT"]
    assert all(a.body == b"pipelined" for a in answers[:3])
    assert json.loads(answers[3].body)["target"] == "/_demo/echo?last"
    by_path = (await origin_stats(origin))["by_path"]
    assert sum(n for target, n in by_path.items() if "body=pipelined" in target) == 1


async def test_hit_behind_a_slow_miss_waits_its_turn(origin: Origin,
                                                     make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    hit = "/_demo/respond?cc=public,max-age=60&body=second"
    assert (await fetch(port_of(edge), hit)).status == 200  # now cached
    client = await Client.connect(port_of(edge))
    try:
        client.send(get("/_demo/respond?delay_ms=300&body=first") + get(hit))
        first, second = await client.read_response(), await client.read_response()
    finally:
        await client.close()
    assert (first.body, second.body) == (b"first", b"second")
    assert second.header("X-Cache") == "HIT"


async def test_many_pipelined_hits_to_a_client_not_reading_stay_bounded(
        origin: Origin, make_edge: EdgeFactory) -> None:
    """Hits are answered at once only while the client takes them; the rest wait their turn,
    so our send buffer holds about one response, not all of them."""
    edge = await make_edge(origin.url, limits={"max_pipelined": 2000, "send_timeout": 30.0})
    port = port_of(edge)
    assert (await fetch(port, "/bench/20k")).status == 200
    n = 1000  # 20 MiB of answers
    sock = await connect_raw(port, rcvbuf=65536)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, get("/bench/20k") * n)
        await asyncio.sleep(0.5)
        conn = next(iter(edge.server.connections))
        assert conn.transport is not None
        assert conn.transport.get_write_buffer_size() < 1 * 2**20
        received = bytearray()
        while received.count(b"HTTP/1.1 200 OK\r\n") < n:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2**20), 10.0)
            assert data
            received += data
    finally:
        sock.close()
    assert received.count(b"X-Cache: HIT") == n


async def test_expect_100_continue(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    body = b"the body, sent only after 100 Continue" * 100
    client = await Client.connect(port_of(edge))
    try:
        client.send(b"POST /_demo/upload HTTP/1.1\r\nHost: news.example\r\n"
                    b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5.0)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.send(body)
        resp = await client.read_response()
    finally:
        await client.close()
    assert resp.status == 200
    assert json.loads(resp.body) == {"bytes": len(body),
                                     "sha256": hashlib.sha256(body).hexdigest()}


async def test_post_with_content_length_reaches_the_origin_whole(origin: Origin,
                                                                 make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    body = bytes(range(256)) * 40
    resp = await fetch(port_of(edge), "/_demo/echo", method="POST", body=body)
    assert resp.status == 200, resp.body[:200]
    echoed = json.loads(resp.body)
    assert (echoed["body_length"], echoed["body_sha256"]) == (len(body),
                                                              hashlib.sha256(body).hexdigest())
    assert len(echo_header(resp, "Content-Length")) == 1


async def test_half_closed_client_still_gets_its_answer(origin: Origin,
                                                        make_edge: EdgeFactory) -> None:
    """A client that shuts down its sending side after the request (nc -N) is answered."""
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(edge))
    try:
        writer.write(get("/_demo/respond?delay_ms=100&body=late"))
        writer.write_eof()
        reply = await read_until_close(reader, timeout=5.0)
    finally:
        writer.close()
    assert reply.status == 200 and reply.data.endswith(b"late")
    assert reply.closed


async def test_forwarding_headers_seen_by_the_origin(origin: Origin,
                                                     make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    resp = await fetch(port_of(edge), "/_demo/echo", host="news.example:8080")
    assert resp.status == 200
    assert echo_header(resp, "Host") == ["news.example:8080"]
    assert echo_header(resp, "X-Forwarded-For") == ["127.0.0.1"]
    assert echo_header(resp, "X-Forwarded-Proto") == ["http"]
    assert echo_header(resp, "Via") == ["1.1 kalkan"]


async def test_hop_by_hop_fields_are_not_forwarded(origin: Origin,
                                                   make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    raw = get("/_demo/echo", "Connection: keep-alive, X-Private", "X-Private: secret",
              "Keep-Alive: timeout=5", "TE: trailers", "Upgrade: h2c",
              "Proxy-Connection: keep-alive", "Proxy-Authorization: Basic Zm9vOmJhcg==",
              "X-Kept: yes")
    client = await Client.connect(port_of(edge))
    try:
        client.send(raw)
        resp = await client.read_response()
    finally:
        await client.close()
    names = {name.lower() for name, _ in echo_headers(resp)}
    for hop in ("connection", "x-private", "keep-alive", "te", "upgrade", "proxy-connection",
                "proxy-authorization"):
        assert hop not in names, hop
    assert echo_header(resp, "X-Kept") == ["yes"]


async def test_client_x_forwarded_for_is_replaced_when_untrusted(origin: Origin,
                                                                 make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    resp = await fetch(port_of(edge), "/_demo/echo?untrusted",
                       headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"})
    assert echo_header(resp, "X-Forwarded-For") == ["127.0.0.1"]
    assert echo_header(resp, "X-Forwarded-Proto") == ["http"]
    assert [e["client"] for e in access_log(edge) if e["path"] == "/_demo/echo"] == ["127.0.0.1"]


async def test_x_forwarded_for_from_a_trusted_proxy_is_believed(origin: Origin,
                                                                make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, client_address={"trusted_proxies": ["127.0.0.0/8"]})
    resp = await fetch(port_of(edge), "/_demo/echo",
                       headers={"X-Forwarded-For": "203.0.113.9, 127.0.0.5"})
    assert echo_header(resp, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.5, 127.0.0.1"]
    assert [e["client"] for e in access_log(edge) if e["path"] == "/_demo/echo"] == \
        ["203.0.113.9"]


async def test_two_x_forwarded_for_fields_are_one_list(origin: Origin,
                                                      make_edge: EdgeFactory) -> None:
    """RFC 9110 §5.3: repeated fields are one list; the client is read from its right end and
    the whole chain goes upstream."""
    edge = await make_edge(origin.url, client_address={"trusted_proxies": ["127.0.0.0/8"]})
    reply = await exchange(port_of(edge), get("/_demo/echo", "X-Forwarded-For: 198.51.100.1",
                                              "X-Forwarded-For: 203.0.113.9, 127.0.0.5",
                                              "Connection: close"))
    body = json.loads(reply.data.split(b"\r\n\r\n", 1)[1])
    forwarded = [v for k, v in body["headers"] if k.lower() == "x-forwarded-for"]
    assert forwarded == ["198.51.100.1, 203.0.113.9, 127.0.0.5, 127.0.0.1"]
    assert [e["client"] for e in access_log(edge) if e["path"] == "/_demo/echo"] == \
        ["203.0.113.9"]


async def test_garbled_x_forwarded_for_from_a_trusted_proxy(origin: Origin,
                                                            make_edge: EdgeFactory) -> None:
    """Nothing left of a garbled hop is believed: the client is the last good hop."""
    edge = await make_edge(origin.url, client_address={"trusted_proxies": ["127.0.0.0/8"]})
    await fetch(port_of(edge), "/_demo/echo",
                headers={"X-Forwarded-For": "203.0.113.9, not-an-address, 198.51.100.7"})
    assert [e["client"] for e in access_log(edge) if e["path"] == "/_demo/echo"] == \
        ["198.51.100.7"]


async def test_connection_close_is_honoured(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    reply = await exchange(port_of(edge), get("/robots.txt", "Connection: close"))
    assert reply.status == 200 and reply.closed
    assert b"Connection: close" in reply.data


async def test_get_with_a_body_does_not_stall_the_origin(origin: Origin,
                                                         make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, origin={"timeout": 3.0})
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await exchange(port_of(edge), b"GET /_demo/echo HTTP/1.1\r\nHost: news.example\r\n"
                           b"Content-Length: 3\r\n\r\nabc", timeout=5.0)
    assert reply.status == 200 and loop.time() - started < 2.0
    assert edge.pipeline.upstream.breaker.failures == 0


async def test_an_idle_keep_alive_connection_is_parked_and_woken(origin: Origin,
                                                                 make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    client = await Client.connect(port_of(edge))
    try:
        assert (await client.request("GET", "/bench/20k")).status == 200
        (conn,) = edge.server.connections
        assert isinstance(conn, HttpConnection)
        await asyncio.sleep(1.6)  # well past PARK_AFTER, seen by the sweep (every 0.25 s)
        (parked,) = edge.server.connections
        assert isinstance(parked, ParkedConnection) and edge.server.open == 1
        again = await client.request("GET", "/bench/20k")  # a new connection object wakes
        assert again.status == 200 and again.header("X-Cache") == "HIT"
        (woken,) = edge.server.connections
        assert isinstance(woken, HttpConnection) and woken is not conn
        assert woken.client == conn.client and edge.server.open == 1
    finally:
        await client.close()
    await asyncio.sleep(0.1)
    assert edge.server.open == 0 and not edge.server.per_client


async def test_a_parked_connection_still_times_out(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"keepalive_timeout": 2.0})
    client = await Client.connect(port_of(edge))
    try:
        assert (await client.request("GET", "/robots.txt")).status == 200
        await asyncio.sleep(1.5)
        assert isinstance(next(iter(edge.server.connections)), ParkedConnection)
        assert await client.closed_by_peer(timeout=5.0)
    finally:
        await client.close()
    assert edge.pipeline.metrics.timeouts["keepalive"] == 1
    assert edge.server.open == 0 and not edge.server.connections


