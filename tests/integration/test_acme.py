"""Certificates by ACME against Debian's pebble test CA on loopback: an edge that starts with no
certificate serves plain HTTP (and says why HTTPS is off), gets a certificate over HTTP-01 once
the CA is reachable, serves HTTPS with it (chain verified against pebble's root), renews it in
the background without dropping open connections, keeps it through a restart and a failed
renewal; a failed validation names the domain and the reason."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from kalkan.config import AcmeConfig
from kalkan.edge.app import Edge
from support import Client, EdgeFactory, Origin, fetch, free_port, origin_stats, port_of

pytestmark = pytest.mark.slow
DOMAIN = "localhost"  # pebble resolves it through /etc/hosts: no DNS needed offline

if shutil.which("pebble") is None:
    pytest.skip("pebble is not installed (scripts/install-debian-deps.sh)",
                allow_module_level=True)




class Pebble:
    """Debian's pebble on loopback, validating HTTP-01 on `http_port`; its own HTTPS certificate
    comes from a trustme CA (the package ships no test certificate)."""

    def __init__(self, work: Path, http_port: int) -> None:
        self.work = work
        self.http_port = http_port
        self.port, self.management = free_port(), free_port()
        self.listener_ca = trustme.CA()
        self.ca_bundle = work / "pebble-listener-ca.pem"
        self.listener_ca.cert_pem.write_to_path(str(self.ca_bundle))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> None:
        leaf = self.listener_ca.issue_cert("127.0.0.1", "localhost")
        cert, key = self.work / "pebble-cert.pem", self.work / "pebble-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        config = self.work / "pebble.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(cert), "privateKey": str(key),
            "httpPort": self.http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                   PEBBLE_AUTHZREUSE="0")  # every order proves every name again
        self.proc = subprocess.Popen(["pebble", "-config", str(config)], env=env,
                                     stdout=open(self.work / "pebble.log", "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)

    async def wait_ready(self) -> None:
        for _ in range(100):
            try:
                await asyncio.to_thread(self.get, f"https://127.0.0.1:{self.port}/dir")
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise AssertionError(f"pebble did not start: {self.log()}")

    def get(self, url: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            return bytes(resp.read())

    async def root(self) -> str:
        """The root that issued the edge's certificates (new at every pebble start)."""
        url = f"https://127.0.0.1:{self.management}/roots/0"
        return (await asyncio.to_thread(self.get, url)).decode("ascii")

    def log(self) -> str:
        return (self.work / "pebble.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
async def pebble(tmp_path: Path) -> AsyncIterator[Pebble]:
    """A pebble (not started yet) whose HTTP-01 validations go to a free loopback port."""
    handle = Pebble(tmp_path, free_port())
    yield handle
    handle.stop()


def acme_tls(pebble: Pebble, http_port: int | None = None, **acme: Any) -> dict[str, Any]:
    settings = {"directory": pebble.directory, "email": "tech@news.example",
                "domains": [DOMAIN], "ca_bundle": str(pebble.ca_bundle),
                "retry_interval": 1.0} | acme
    return {"certificates": [], "redirect_http": True,
            "http_listen": f"127.0.0.1:{http_port or pebble.http_port}",
            "acme": AcmeConfig(**settings)}


async def https_client(port: int, root_pem: str) -> tuple[Client, dict[str, Any]]:
    """A TLS connection verified against pebble's root for DOMAIN; and the peer certificate."""
    ctx = ssl.create_default_context(cadata=root_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname=DOMAIN)
    return Client(reader, writer), writer.get_extra_info("peercert")


async def eventually(probe: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            result = await probe()
            if result:
                return result
        except (OSError, ssl.SSLError):
            pass
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def plain_port(edge: Edge) -> int:
    assert edge.redirect_server is not None
    return int(edge.redirect_server.servers[0].sockets[0].getsockname()[1])


def cert_status(edge: Edge, pebble: Pebble, work: Path) -> tuple[int, str]:
    """`kalkan cert status` on a config file for this edge: exit code and what it printed."""
    path = work / "kalkan.yaml"
    path.write_text(f"""\
state_dir: {edge.config.state_dir}
tls:
  http_listen: 127.0.0.1:{pebble.http_port}
  acme:
    directory: {pebble.directory}
    domains: [{DOMAIN}]
    renew_before_days: 36500
""")
    out = subprocess.run([str(Path(sys.executable).parent / "kalkan"), "cert", "status",
                          "--config", str(path)], capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout


async def test_issue_serve_renew_restart(origin: Origin, make_edge: EdgeFactory,
                                         pebble: Pebble, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kalkan")
    # The CA is down at first: plain HTTP serves the site, HTTPS is bound but refuses, and the
    # log says why.
    edge = await make_edge(origin.url, tls=acme_tls(pebble, renew_before_days=36500.0))
    port, http = port_of(edge), plain_port(edge)
    assert "no certificate yet for localhost" in caplog.text
    await eventually(lambda: asyncio.sleep(0, "cannot reach the CA" in caplog.text),
                     "the CA-unreachable error")
    assert "HTTPS stays off" in caplog.text
    assert await refused(port)
    resp = await fetch(http, "/robots.txt", host=DOMAIN)
    assert resp.status == 200 and resp.header("X-Cache") is not None

    # The CA comes up: the next try gets a certificate and HTTPS serves it; the chain verifies
    # against pebble's root.
    pebble.start()
    await pebble.wait_ready()
    root = await pebble.root()
    client, cert = await eventually(lambda: https_client(port, root), "HTTPS to serve")
    assert [v for k, v in cert["subjectAltName"] if k == "DNS"] == [DOMAIN]
    # The listener bound before any certificate existed negotiates like any other.
    assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    assert (await client.request("GET", "/robots.txt", host=DOMAIN)).status == 200
    first_serial = cert["serialNumber"]
    # Now plain HTTP redirects, except the challenge path, which the edge answers itself.
    assert (await fetch(http, "/news/", host=DOMAIN)).status == 308
    before = (await origin_stats(origin))["requests"]
    unknown = await fetch(http, "/.well-known/acme-challenge/not-a-token", host=DOMAIN)
    assert unknown.status == 404 and unknown.header("Cache-Control") == "no-store"
    assert (await origin_stats(origin))["requests"] == before  # never reached the origin
    stored = Path(edge.config.state_dir) / "acme"
    for name in ("certificate.pem", "account.key"):
        assert (stored / name).stat().st_mode & 0o777 == 0o600
    assert "answering the HTTP-01 challenge for localhost" in caplog.text
    code, text = cert_status(edge, pebble, tmp_path)  # renewals may have begun: any serial
    assert code == 0 and f"names:       {DOMAIN}\n" in text and "renewal:     due now" in text

    # Renewal is always due (renew_before_days > the lifetime), limited by retry_interval:
    # a new certificate reaches new connections; the open one keeps working.
    async def renewed() -> dict[str, Any] | None:
        fresh, cert = await https_client(port, root)
        await fresh.close()
        return cert if cert["serialNumber"] != first_serial else None

    await eventually(renewed, "a renewed certificate")
    assert (await client.request("GET", "/_demo/echo", host=DOMAIN)).status == 200
    await client.close()
    await edge.stop()

    # A restart with a certificate in place serves HTTPS at once; with the CA down, a due
    # renewal fails and the certificate stays, file and all.
    pebble.stop()
    kept = (stored / "certificate.pem").read_bytes()
    caplog.clear()
    edge = await make_edge(origin.url, tls=acme_tls(pebble, http_port=free_port(),
                                                    renew_before_days=36500.0))
    client, cert = await https_client(port_of(edge), root)
    await client.close()
    await eventually(lambda: asyncio.sleep(0, "cannot reach the CA" in caplog.text),
                     "the failed renewal")
    assert "keeping the current certificate" in caplog.text
    assert (stored / "certificate.pem").read_bytes() == kept
    client, again = await https_client(port_of(edge), root)
    await client.close()
    assert again["serialNumber"] == cert["serialNumber"]


async def test_failed_validation_names_the_domain(origin: Origin, make_edge: EdgeFactory,
                                                  pebble: Pebble, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """pebble validates on a port nothing listens on: the order fails, saying for which name
    and why, and HTTPS stays off."""
    pebble.start()
    await pebble.wait_ready()
    edge = await make_edge(origin.url, tls=acme_tls(pebble, http_port=free_port()))
    await eventually(lambda: asyncio.sleep(0, "HTTP-01 validation failed" in caplog.text),
                     "the validation error")
    line = next(r.getMessage() for r in caplog.records if "validation failed" in r.getMessage())
    assert "localhost: HTTP-01 validation failed: " in line
    assert "connection refused" in line.lower() and "HTTPS stays off" in line
    assert await refused(port_of(edge))
    assert not (Path(edge.config.state_dir) / "acme" / "certificate.pem").exists()
    code, text = cert_status(edge, pebble, tmp_path)
    assert code == 1 and "no certificate yet" in text


async def test_acme_next_to_own_certificates(origin: Origin, make_edge: EdgeFactory,
                                             pebble: Pebble, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """An own certificate serves HTTPS from the start; the ACME one joins it when issued and
    becomes the default, the own one still picked by its name."""
    own_ca = trustme.CA()
    leaf = own_ca.issue_cert("other.example")
    cert, key = tmp_path / "own.crt", tmp_path / "own.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    tls = acme_tls(pebble) | {"certificates": [{"cert": str(cert), "key": str(key)}]}
    edge = await make_edge(origin.url, tls=tls)
    port = port_of(edge)

    async def own() -> str:
        ctx = ssl.create_default_context()
        own_ca.configure_trust(ctx)
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                  server_hostname="other.example")
        writer.close()
        return "ok"

    assert await own() == "ok"  # before any ACME certificate
    await eventually(lambda: asyncio.sleep(0, "cannot reach the CA" in caplog.text),
                     "the CA-unreachable error")
    assert "serving the other certificates" in caplog.text
    pebble.start()
    await pebble.wait_ready()
    root = await pebble.root()
    client, _ = await eventually(lambda: https_client(port, root), "the ACME certificate")
    await client.close()
    assert await own() == "ok"
