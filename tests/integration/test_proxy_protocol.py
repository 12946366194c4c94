"""PROXY protocol v1/v2 in front of the edge (behind a TCP balancer), over real sockets: the
address in the header becomes the client for the access log, the origin and the limits."""

from __future__ import annotations

import asyncio

import pytest

from support import (
    Client,
    EdgeFactory,
    Origin,
    access_log,
    echo_header,
    exchange,
    origin_stats,
    port_of,
    proxy_v2,
)
from support import Response as HttpResponse

PROXY_ON = {"proxy_protocol": True}
ECHO = b"GET /_demo/echo HTTP/1.1\r\nHost: news.example\r\n\r\n"

HEADERS = {
    "v1-tcp4": (b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n", "203.0.113.7"),
    "v1-tcp6": (b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n", "2001:db8::7"),
    "v1-unknown": (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
    "v1-unknown-with-addresses": (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n", "127.0.0.1"),
    "v2-ipv4": (proxy_v2("203.0.113.8"), "203.0.113.8"),
    "v2-ipv6": (proxy_v2("2001:db8::8"), "2001:db8::8"),
    "v2-ipv4-mapped-ipv6": (proxy_v2("::ffff:203.0.113.10"), "203.0.113.10"),
    "v2-with-tlvs": (proxy_v2("203.0.113.9", tlvs=b"\x04\x00\x03abc\x05\x00\x01z"),
                     "203.0.113.9"),
    "v2-local": (proxy_v2(None, local=True), "127.0.0.1"),
    "v2-unspec": (proxy_v2(None), "127.0.0.1"),
}


async def _echo_through(port: int, header: bytes, *, pause: float = 0.0,
                        fields: bytes = b"") -> HttpResponse:
    client = await Client.connect(port)
    try:
        if pause:  # the header split across reads
            client.send(header[:7])
            await asyncio.sleep(pause)
            client.send(header[7:])
            await asyncio.sleep(pause)
            client.send(ECHO.replace(b"\r\n\r\n", b"\r\n" + fields + b"\r\n"))
        else:
            client.send(header + ECHO.replace(b"\r\n\r\n", b"\r\n" + fields + b"\r\n"))
        return await client.read_response()
    finally:
        await client.close()


@pytest.mark.parametrize(("header", "client"), HEADERS.values(), ids=HEADERS.keys())
async def test_header_gives_the_client_address(origin: Origin, make_edge: EdgeFactory,
                                               header: bytes, client: str) -> None:
    edge = await make_edge(origin.url, client_address=PROXY_ON)
    resp = await _echo_through(port_of(edge), header)
    assert resp.status == 200
    assert echo_header(resp, "X-Forwarded-For") == [client]
    assert [e["client"] for e in access_log(edge)] == [client]


async def test_header_split_across_reads(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, client_address=PROXY_ON)
    for header, client in (HEADERS["v1-tcp4"], HEADERS["v2-ipv6"]):
        resp = await _echo_through(port_of(edge), header, pause=0.05)
        assert echo_header(resp, "X-Forwarded-For") == [client]


async def test_keepalive_requests_after_the_header(origin: Origin,
                                                   make_edge: EdgeFactory) -> None:
    """The header comes once per connection; every request on it keeps its address."""
    edge = await make_edge(origin.url, client_address=PROXY_ON)
    client = await Client.connect(port_of(edge))
    try:
        client.send(proxy_v2("198.51.100.4"))
        for _ in range(3):
            resp = await client.request("GET", "/_demo/echo")
            assert echo_header(resp, "X-Forwarded-For") == ["198.51.100.4"]
    finally:
        await client.close()


BAD = {
    "http-without-header": ECHO,
    "garbage": b"HELLO WORLD\r\n\r\n",
    "v1-lowercase": b"proxy TCP4 203.0.113.7 127.0.0.1 1 2\r\n" + ECHO,
    "v1-family-mismatch": b"PROXY TCP4 2001:db8::7 ::1 51000 443\r\n" + ECHO,
    "v1-bad-address": b"PROXY TCP4 203.0.113.300 127.0.0.1 51000 443\r\n" + ECHO,
    "v1-bad-port": b"PROXY TCP4 203.0.113.7 127.0.0.1 70000 443\r\n" + ECHO,
    "v1-missing-field": b"PROXY TCP4 203.0.113.7 127.0.0.1 51000\r\n" + ECHO,
    "v1-too-long": b"PROXY TCP4 " + b"1" * 120 + b"\r\n" + ECHO,
    "v2-bad-version": proxy_v2("203.0.113.8").replace(b"\x21\x11", b"\x31\x11", 1) + ECHO,
    "v2-bad-command": proxy_v2("203.0.113.8").replace(b"\x21\x11", b"\x2f\x11", 1) + ECHO,
    "v2-truncated-block": proxy_v2(None)[:13] + b"\x11\x00\x04" + bytes(4) + ECHO,
}


@pytest.mark.parametrize("raw", BAD.values(), ids=BAD.keys())
async def test_bad_header_closes_the_connection(origin: Origin, make_edge: EdgeFactory,
                                                raw: bytes) -> None:
    edge = await make_edge(origin.url, client_address=PROXY_ON)
    reply = await exchange(port_of(edge), raw, timeout=3.0)
    assert reply.closed and reply.data == b""
    assert (await origin_stats(origin))["requests"] == 0


async def test_header_that_never_completes_is_cut_off(origin: Origin,
                                                      make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, client_address=PROXY_ON, limits={"header_timeout": 1.0})
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await exchange(port_of(edge), b"PROXY TCP4 203.0.113.7", timeout=5.0)
    assert reply.closed and reply.data == b""
    assert loop.time() - started < 3.0


async def test_forged_x_forwarded_for_behind_a_balancer_is_replaced(
        origin: Origin, make_edge: EdgeFactory) -> None:
    """The PROXY address is the peer: an untrusted client's own X-Forwarded-For is dropped."""
    edge = await make_edge(origin.url, client_address=PROXY_ON)
    resp = await _echo_through(port_of(edge), HEADERS["v1-tcp4"][0],
                               fields=b"X-Forwarded-For: 6.6.6.6\r\n")
    assert echo_header(resp, "X-Forwarded-For") == ["203.0.113.7"]
    assert [e["client"] for e in access_log(edge)] == ["203.0.113.7"]


async def test_balancer_address_is_not_what_is_trusted(origin: Origin,
                                                       make_edge: EdgeFactory) -> None:
    """Trusting the balancer's own network (127.0.0.0/8 here) must not make every client's
    X-Forwarded-For believed: the PROXY address decides."""
    edge = await make_edge(origin.url, client_address={"proxy_protocol": True,
                                                       "trusted_proxies": ["127.0.0.0/8"]})
    await _echo_through(port_of(edge), HEADERS["v1-tcp4"][0],
                        fields=b"X-Forwarded-For: 6.6.6.6\r\n")
    assert [e["client"] for e in access_log(edge)] == ["203.0.113.7"]


async def test_trusted_proxy_behind_a_balancer(origin: Origin, make_edge: EdgeFactory) -> None:
    """A CDN (trusted) → TCP balancer (PROXY) → edge: the CDN's X-Forwarded-For is believed."""
    edge = await make_edge(origin.url, client_address={"proxy_protocol": True,
                                                       "trusted_proxies": ["203.0.113.0/24"]})
    resp = await _echo_through(port_of(edge), HEADERS["v1-tcp4"][0],
                               fields=b"X-Forwarded-For: 198.51.100.1\r\n")
    assert echo_header(resp, "X-Forwarded-For") == ["198.51.100.1, 203.0.113.7"]
    assert [e["client"] for e in access_log(edge)] == ["198.51.100.1"]


async def test_connection_limit_counts_the_proxy_address(origin: Origin,
                                                         make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, client_address=PROXY_ON,
                           limits={"max_connections_per_client": 1})
    port = port_of(edge)
    first = await Client.connect(port)
    try:
        first.send(proxy_v2("203.0.113.20"))
        assert (await first.request("GET", "/robots.txt")).status == 200
        same = await exchange(port, proxy_v2("203.0.113.20") + ECHO, timeout=3.0)
        assert same.closed and same.data == b""
        other = await _echo_through(port, proxy_v2("203.0.113.21"))
        assert echo_header(other, "X-Forwarded-For") == ["203.0.113.21"]
    finally:
        await first.close()
