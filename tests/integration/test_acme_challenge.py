"""The HTTP-01 responder on the plain-HTTP listener, over real sockets and without a CA: the
challenge path is answered by the edge before the redirect, the defence (under attack too) and
the cache; unknown tokens are a 404 that never reaches the origin; every other path is served
by the pipeline until HTTPS runs."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from kalkan.config import AcmeConfig
from kalkan.edge.app import Edge
from support import Client, EdgeFactory, Origin, Response, access_log, origin_stats, port_of

UA = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0", "Accept": "text/html"}
PREFIX = "/.well-known/acme-challenge/"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def acme_edge(origin: Origin, make_edge: EdgeFactory) -> Edge:
    """An edge with tls.acme whose CA never answers (a closed port): no certificate, HTTPS
    off, the plain-HTTP listener up; the defence on and pinned under attack, challenging every
    client without a pass."""
    acme = AcmeConfig(directory=f"https://127.0.0.1:{closed_port()}/dir",
                      domains=["news.example"], retry_interval=3600.0)
    return await make_edge(
        origin.url, defense={"enabled": True, "attack_mode": "on", "tarpit_delay": 0.01,
                             "behaviour": False},  # every unknown client is challenged
        tls={"certificates": [], "redirect_http": True, "http_listen": "127.0.0.1:0",
             "acme": acme})


def plain_port(edge: Edge) -> int:
    assert edge.redirect_server is not None
    return int(edge.redirect_server.servers[0].sockets[0].getsockname()[1])


async def request(edge: Edge, target: str, source: str = "127.0.7.1", method: str = "GET",
                  **kw: Any) -> Response:
    client = await Client.connect(plain_port(edge), local_addr=(source, 0))
    try:
        return await client.request(method, target, UA, host="news.example", **kw)
    finally:
        await client.close()


async def test_known_token_is_answered_whatever_the_defence_says(acme_edge: Edge,
                                                                 origin: Origin) -> None:
    assert acme_edge.acme is not None
    acme_edge.acme.tokens["tok-1"] = "tok-1.thumbprint"
    before = (await origin_stats(origin))["requests"]
    # Under attack an unknown client's uncached page is challenged on this listener...
    page = await request(acme_edge, "/news/zimnyaya-yarmarka-bishkek/")
    assert page.status == 403 and page.header("X-Kalkan-Challenge") == "pow"
    # ...and a flood of made-up tokens from one address is answered 404 by the edge, never
    # rate-limited, never forwarded.
    for i in range(300):
        resp = await request(acme_edge, f"{PREFIX}made-up-{i}")
        assert resp.status == 404, (i, resp.status)
    assert (await origin_stats(origin))["requests"] == before
    # The CA's validator, from that same address, still gets the key authorization.
    resp = await request(acme_edge, f"{PREFIX}tok-1")
    assert (resp.status, resp.body) == (200, b"tok-1.thumbprint")
    assert resp.header("Content-Type") == "text/plain"
    assert resp.header("Cache-Control") == "no-store"
    head = await request(acme_edge, f"{PREFIX}tok-1", method="HEAD")
    assert head.status == 200 and head.header("Content-Length") == "16"
    post = await request(acme_edge, f"{PREFIX}tok-1", method="POST", body=b"x")
    assert post.status == 405 and post.header("Allow") == "GET, HEAD"


async def test_answers_are_never_cached(acme_edge: Edge) -> None:
    """A new order reuses no answer: the token's current value is served each time, and a
    token removed after its order is a 404 at once."""
    assert acme_edge.acme is not None
    tokens = acme_edge.acme.tokens
    tokens["tok-2"] = "first"
    assert (await request(acme_edge, f"{PREFIX}tok-2")).body == b"first"
    tokens["tok-2"] = "second"
    assert (await request(acme_edge, f"{PREFIX}tok-2")).body == b"second"
    del tokens["tok-2"]
    assert (await request(acme_edge, f"{PREFIX}tok-2")).status == 404


async def test_plain_http_serves_the_site_until_https_runs(origin: Origin,
                                                           make_edge: EdgeFactory) -> None:
    """No certificate yet: plain HTTP serves (and caches) the site instead of redirecting to a
    listener that is not accepting; the access log shows the challenge answers."""
    acme = AcmeConfig(directory=f"https://127.0.0.1:{closed_port()}/dir",
                      domains=["news.example"], retry_interval=3600.0)
    edge = await make_edge(origin.url, tls={"certificates": [], "redirect_http": True,
                                            "http_listen": "127.0.0.1:0", "acme": acme})
    first = await request(edge, "/robots.txt")
    second = await request(edge, "/robots.txt")
    assert (first.status, second.status) == (200, 200)
    assert second.header("X-Cache") == "HIT"
    with pytest.raises(ConnectionRefusedError):
        await Client.connect(port_of(edge))
    await request(edge, f"{PREFIX}nope")
    answered = [line for line in access_log(edge) if line.get("path") == f"{PREFIX}nope"]
    assert len(answered) == 1 and answered[0]["status"] == 404
    assert answered[0]["decision"] == "acme"
