"""TLS termination over real sockets: certificates picked by SNI, the HTTP→HTTPS redirect
listener, certificate reload (new connections get the new one, open ones keep working, a broken
file keeps the old set) and the handshake timeout."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from byte_origin import ByteOrigin, Reply
from kalkan.edge.body_files import HOT_HITS
from kalkan.edge.parked import ParkedTlsConnection
from support import Client, EdgeFactory, Origin, echo_header, fetch, port_of, read_until_close

A, B = "a.news.example", "b.news.example"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def issue(ca: trustme.CA, where: Path, name: str, *hosts: str) -> dict[str, str]:
    """Write a certificate (chain) and key for `hosts` to where/name.{crt,key}."""
    leaf = ca.issue_cert(*hosts)
    cert, key = where / f"{name}.crt", where / f"{name}.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return {"cert": str(cert), "key": str(key)}


async def tls_client(port: int, ca: trustme.CA, server_name: str | None
                     ) -> tuple[Client, dict[str, Any]]:
    """A verified TLS connection (SNI = server_name, none if None) and the peer certificate."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if server_name is None:
        ctx.check_hostname = False  # nothing to check it against; the chain is still verified
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname=server_name)
    cert = writer.get_extra_info("peercert")
    return Client(reader, writer), cert


def dns_names(cert: dict[str, Any]) -> list[str]:
    return [value for kind, value in cert["subjectAltName"] if kind == "DNS"]


@pytest.fixture
async def tls_edge(origin: Origin, make_edge: EdgeFactory, ca: trustme.CA,
                   tmp_path: Path) -> Any:
    certs = [issue(ca, tmp_path, "a", A), issue(ca, tmp_path, "b", B)]
    return await make_edge(origin.url, tls={"certificates": certs, "redirect_http": True,
                                            "http_listen": "127.0.0.1:0"},
                           limits={"header_timeout": 1.0})


@pytest.mark.parametrize("name", [A, B])
async def test_sni_picks_the_certificate(tls_edge: Any, ca: trustme.CA, name: str) -> None:
    client, cert = await tls_client(port_of(tls_edge), ca, name)
    try:
        assert dns_names(cert) == [name]
        resp = await client.request("GET", "/_demo/echo", host=name)
        assert resp.status == 200
        assert echo_header(resp, "X-Forwarded-Proto") == ["https"]
        assert (await client.request("GET", "/robots.txt", host=name)).status == 200
    finally:
        await client.close()


async def test_no_sni_gets_the_first_certificate(tls_edge: Any, ca: trustme.CA) -> None:
    client, cert = await tls_client(port_of(tls_edge), ca, None)
    try:
        assert dns_names(cert) == [A]
        assert (await client.request("GET", "/robots.txt")).status == 200
    finally:
        await client.close()


async def test_unknown_sni_gets_the_default_certificate(tls_edge: Any, ca: trustme.CA) -> None:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with pytest.raises(ssl.SSLCertVerificationError):  # the default (a.) does not match c.
        await asyncio.open_connection("127.0.0.1", port_of(tls_edge), ssl=ctx,
                                      server_hostname="c.news.example")


def redirect_port(edge: Any) -> int:
    assert edge.redirect_server is not None
    return int(edge.redirect_server.servers[0].sockets[0].getsockname()[1])


@pytest.mark.parametrize(("host", "target", "location"), [
    (A, "/news/story/?page=2", f"https://{A}:{{port}}/news/story/?page=2"),
    (f"{B}:8080", "/", f"https://{B}:{{port}}/"),
    ("[::1]:8080", "/feed/", "https://[::1]:{port}/feed/"),
])
async def test_plain_http_is_redirected(tls_edge: Any, origin: Origin, host: str, target: str,
                                        location: str) -> None:
    resp = await fetch(redirect_port(tls_edge), target, host=host)
    assert resp.status == 308
    assert resp.header("Location") == location.format(port=port_of(tls_edge))


async def test_redirect_listener_refuses_smuggling(tls_edge: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", redirect_port(tls_edge))
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        reply = await read_until_close(reader, timeout=3.0)
    finally:
        writer.close()
    assert reply.statuses == [400] and reply.closed


async def test_reload_serves_new_certificate_to_new_connections(
        tls_edge: Any, ca: trustme.CA, tmp_path: Path) -> None:
    port = port_of(tls_edge)
    old_client, old_cert = await tls_client(port, ca, A)
    try:
        assert (await old_client.request("GET", "/robots.txt", host=A)).status == 200
        issue(ca, tmp_path, "a", A)  # replaced on disk, same paths
        tls_edge.reload()
        new_client, new_cert = await tls_client(port, ca, A)
        try:
            assert new_cert["serialNumber"] != old_cert["serialNumber"]
            assert (await new_client.request("GET", "/robots.txt", host=A)).status == 200
        finally:
            await new_client.close()
        # The connection opened before the reload keeps working.
        assert (await old_client.request("GET", "/_demo/echo", host=A)).status == 200
    finally:
        await old_client.close()


async def test_reload_with_a_broken_file_keeps_the_old_certificates(
        tls_edge: Any, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = port_of(tls_edge)
    _, before = await tls_client(port, ca, B)
    (tmp_path / "b.crt").write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
    tls_edge.reload()
    assert "keeping the old certificates" in caplog.text
    for name, expected in ((B, before["serialNumber"]), (A, None)):
        client, cert = await tls_client(port, ca, name)
        try:
            assert dns_names(cert) == [name]
            if expected is not None:
                assert cert["serialNumber"] == expected
            assert (await client.request("GET", "/robots.txt", host=name)).status == 200
        finally:
            await client.close()
    # A missing key file is refused the same way.
    Path(tls_edge.config.tls.certificates[0]["key"]).unlink()
    tls_edge.reload()
    client, cert = await tls_client(port, ca, A)
    await client.close()
    assert dns_names(cert) == [A]


async def test_handshake_that_never_starts_is_cut_off(tls_edge: Any) -> None:
    """Until its handshake completes a TLS connection is not ours: header_timeout bounds it."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(tls_edge))
    started = loop.time()
    try:
        reply = await read_until_close(reader, timeout=5.0)
    finally:
        writer.close()
    assert reply.closed and loop.time() - started < 3.0


async def test_an_idle_tls_connection_is_parked_and_woken(tls_edge: Any, ca: trustme.CA) -> None:
    client, _ = await tls_client(port_of(tls_edge), ca, A)
    try:
        assert (await client.request("GET", "/robots.txt", host=A)).status == 200
        await asyncio.sleep(1.6)  # parked by the sweep after a moment of quiet
        assert any(isinstance(c, ParkedTlsConnection) for c in tls_edge.server.connections)
        resp = await client.request("GET", "/_demo/echo", host=A)
        assert resp.status == 200 and echo_header(resp, "X-Forwarded-Proto") == ["https"]
    finally:
        await client.close()


async def test_a_hot_large_page_under_tls_is_encrypted_not_sent_from_its_file(
        make_edge: EdgeFactory, ca: trustme.CA, tmp_path: Path) -> None:
    """A hot body has a file (edge/body_files.py), but sendfile would put its plain bytes on a
    TLS socket: the connection must see that and write it through the TLS transport."""
    body = bytes(i % 251 for i in range(64 * 1024))
    origin = await ByteOrigin(lambda _: Reply(200, [("Cache-Control", "public, max-age=60")],
                                              body), idle_timeout=5.0).start()
    try:
        edge = await make_edge(origin.url, tls={"certificates": [issue(ca, tmp_path, "a", A)]})
        client, _ = await tls_client(port_of(edge), ca, A)
        for _ in range(2 * HOT_HITS):
            resp = await client.request("GET", "/big", host=A)
            assert resp.status == 200 and resp.body == body
        assert edge.pipeline.body_files.bytes == len(body)  # the file exists...
        # ...and the bytes still arrived encrypted and whole (the TLS client decrypted them).
        await client.close()
    finally:
        await origin.stop()
