"""The admin listener off loopback (token on every route, a warning at start) and its answer to
an oversized body (413 read by the client, not a reset)."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging

import pytest

from support import EdgeFactory, Origin, read_until_close


def _get(port: int, path: str, token: str | None = None, method: str = "GET",
         body: bytes | None = None) -> tuple[int, bytes]:
    """One admin request with the standard library's client, as an operator's tool makes it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def test_public_admin_listener_needs_the_token_for_metrics(
        origin: Origin, make_edge: EdgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kalkan"):
        edge = await make_edge(origin.url, admin={"listen": "0.0.0.0:0"})
    warnings = [r.getMessage() for r in caplog.records if "not on loopback" in r.getMessage()]
    assert len(warnings) == 1 and "0.0.0.0:0" in warnings[0]
    assert edge.admin_address is not None
    port = edge.admin_address[1]
    for path in ("/metrics", "/healthz", "/purge", "/no-such-route"):
        status, body = await asyncio.to_thread(_get, port, path)
        assert status == 401, path
        assert "token" in json.loads(body)["error"]
        status, _ = await asyncio.to_thread(_get, port, path, "wrong-token")
        assert status == 401, path
    status, body = await asyncio.to_thread(_get, port, "/metrics", edge.admin_token)
    assert status == 200 and b"kalkan_" in body
    status, body = await asyncio.to_thread(_get, port, "/healthz", edge.admin_token)
    assert status == 200 and body == b"ok\n"


async def test_an_address_guessing_the_admin_token_is_refused_for_a_while(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, admin={"listen": "0.0.0.0:0"})
    assert edge.admin_address is not None
    port = edge.admin_address[1]
    for _ in range(25):  # no credentials at all: not a guess, never locked out
        assert (await asyncio.to_thread(_get, port, "/metrics"))[0] == 401
    assert (await asyncio.to_thread(_get, port, "/metrics", edge.admin_token))[0] == 200
    for i in range(20):
        assert (await asyncio.to_thread(_get, port, "/metrics", f"guess-{i:016d}"))[0] == 401
    # The twenty-first try is refused before the token is even looked at, the right one too.
    status, body = await asyncio.to_thread(_get, port, "/metrics", edge.admin_token)
    assert status == 429 and "too many wrong admin credentials" in json.loads(body)["error"]


async def test_loopback_admin_listener_keeps_metrics_open(
        origin: Origin, make_edge: EdgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kalkan"):
        edge = await make_edge(origin.url)  # admin on 127.0.0.1:0
    assert not [r for r in caplog.records if "not on loopback" in r.getMessage()]
    assert edge.admin_address is not None
    port = edge.admin_address[1]
    status, body = await asyncio.to_thread(_get, port, "/metrics")
    assert status == 200 and b"kalkan_" in body
    status, _ = await asyncio.to_thread(_get, port, "/purge?all=1", None, "POST")
    assert status == 401  # actions still need the token


async def test_oversized_admin_body_gets_413_not_a_reset(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    assert edge.admin_address is not None
    port = edge.admin_address[1]
    # 4 MiB: far more than the socket buffers hold, so the client is still sending when the
    # edge answers; a close without lingering would reset the connection under it.
    body = json.dumps({"target": "192.0.2.1", "reason": "x" * (4 * 2**20)}).encode()
    status, reply = await asyncio.to_thread(_get, port, "/decisions", edge.admin_token, "POST",
                                            body)
    assert status == 413
    assert "too large" in json.loads(reply)["error"]
    # A client that announces a big body and sends none gets the answer and a clean close.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /decisions HTTP/1.1\r\nHost: admin\r\nContent-Length: 99999999\r\n\r\n")
    reply_raw = await read_until_close(reader, timeout=5.0)
    writer.close()
    assert reply_raw.status == 413 and reply_raw.closed
    assert b'"error"' in reply_raw.data
    # The listener still works afterwards.
    status, _ = await asyncio.to_thread(_get, port, "/metrics")
    assert status == 200
