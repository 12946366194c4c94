"""What an edge with tls.acme does at start with what STATE_DIR/acme/ holds, with a CA that never
answers: a stored certificate serves HTTPS at once (and stays when its renewal fails); a damaged
one is not served and says so; a write cut short is cleaned up; without redirect_http plain HTTP
keeps serving the site next to HTTPS."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from kalkan.config import AcmeConfig
from kalkan.edge.app import Edge
from support import Client, EdgeFactory, Origin, fetch, port_of

NAME = "news.example"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls_section(**overrides: Any) -> dict[str, Any]:
    acme = AcmeConfig(directory=f"https://127.0.0.1:{closed_port()}/dir", domains=[NAME],
                      retry_interval=3600.0)
    return {"certificates": [], "redirect_http": True, "http_listen": "127.0.0.1:0",
            "acme": acme} | overrides


def store(tmp_path: Path, data: bytes) -> Path:
    """Put `data` where the edge keeps its ACME certificate (make_edge's state_dir)."""
    directory = tmp_path / "state" / "acme"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "certificate.pem"
    path.write_bytes(data)
    return path


def plain_port(edge: Edge) -> int:
    assert edge.redirect_server is not None
    return int(edge.redirect_server.servers[0].sockets[0].getsockname()[1])


async def https_serial(port: int, ca: trustme.CA) -> str:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname=NAME)
    client = Client(reader, writer)
    try:
        assert (await client.request("GET", "/robots.txt", host=NAME)).status == 200
        return str(writer.get_extra_info("peercert")["serialNumber"])
    finally:
        await client.close()


async def test_a_stored_certificate_serves_at_once_and_outlives_a_failed_renewal(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    ca = trustme.CA()
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)
    leaf = ca.issue_cert(NAME, not_after=expires.replace(tzinfo=None))  # due (30 days before)
    pem = leaf.private_key_pem.bytes() + b"".join(p.bytes() for p in leaf.cert_chain_pems)
    path = store(tmp_path, pem)
    edge = await make_edge(origin.url, tls=tls_section())
    serial = await https_serial(port_of(edge), ca)
    assert "no certificate yet" not in caplog.text
    for _ in range(100):
        if "keeping the current certificate" in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert "cannot reach the CA" in caplog.text and "keeping the current certificate" in caplog.text
    assert path.read_bytes() == pem
    assert await https_serial(port_of(edge), ca) == serial
    assert (await fetch(plain_port(edge), "/", host=NAME)).status == 308


async def test_a_damaged_certificate_is_not_served_and_leftovers_go(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    path = store(tmp_path, b"-----BEGIN CERTIFICATE-----\ncut short")
    leftover = path.with_name(".certificate.pem.tmp")
    leftover.write_bytes(b"half a key")
    edge = await make_edge(origin.url, tls=tls_section())
    assert "certificate.pem is damaged" in caplog.text
    assert "no certificate yet for news.example" in caplog.text
    assert not leftover.exists()
    with pytest.raises(ConnectionRefusedError):
        await Client.connect(port_of(edge))
    assert (await fetch(plain_port(edge), "/robots.txt", host=NAME)).status == 200


async def test_without_redirect_plain_http_serves_next_to_https(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert(NAME)
    store(tmp_path, leaf.private_key_pem.bytes()
          + b"".join(p.bytes() for p in leaf.cert_chain_pems))
    edge = await make_edge(origin.url, tls=tls_section(redirect_http=False))
    assert await https_serial(port_of(edge), ca)
    plain = await fetch(plain_port(edge), "/robots.txt", host=NAME)
    assert plain.status == 200
    assert edge.acme is not None
    edge.acme.tokens["t"] = "t.key"
    answer = await fetch(plain_port(edge), "/.well-known/acme-challenge/t", host=NAME)
    assert (answer.status, answer.body) == (200, b"t.key")
