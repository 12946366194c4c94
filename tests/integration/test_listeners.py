"""Public listeners: `[::]:PORT` is dual-stack, and an IPv4 reader on it is seen as a.b.c.d."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kalkan.config import Config
from kalkan.edge.app import Edge
from support import Client, Origin, access_log, echo_header


@pytest.fixture
async def dual_stack_edge(origin: Origin, tmp_path: Path) -> AsyncIterator[Edge]:
    config = Config()
    config.listen = ["[::]:0"]
    config.admin.listen = None
    config.access_log.path = str(tmp_path / "access.log")
    config.origin.url = origin.url
    config.state_dir = str(tmp_path / "state")
    config.cache.dir = None
    config.defense.enabled = False
    edge = Edge(config)
    await edge.start()
    yield edge
    await edge.stop()


async def test_ipv4_reader_reaches_a_dual_stack_listener(dual_stack_edge: Edge) -> None:
    host, port = dual_stack_edge.addresses[0]
    assert host == "::"
    client = await Client.connect(port, "127.0.0.1")  # IPv4, to an IPv6 wildcard socket
    try:
        resp = await client.request("GET", "/_demo/echo")
    finally:
        await client.close()
    assert resp.status == 200
    # The origin is told the plain IPv4 address, and the access log records it.
    assert echo_header(resp, "X-Forwarded-For") == ["127.0.0.1"]
    assert [e["client"] for e in access_log(dual_stack_edge)] == ["127.0.0.1"]


async def test_ipv6_reader_still_reaches_it(dual_stack_edge: Edge) -> None:
    port = dual_stack_edge.addresses[0][1]
    client = await Client.connect(port, "::1")
    try:
        resp = await client.request("GET", "/_demo/echo")
    finally:
        await client.close()
    assert resp.status == 200
    assert echo_header(resp, "X-Forwarded-For") == ["::1"]
    assert [e["client"] for e in access_log(dual_stack_edge)] == ["::1"]
