"""HTTP/2 over TLS against a real Kalkan and the demo origin, driven by Debian's curl, nghttp and
h2load and by the h2 library: ALPN, the cache (a HIT over h2), the defence's verdicts, request
bodies forwarded to the origin over HTTP/1.1, fields as the HTTP/1.1 reader notes them (Host,
split cookies), responses relayed without HTTP/1.1 framing, and `tls.http2: false`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import trustme

from h2_client import NAME, H2Client, open_tls
from support import EdgeFactory, Origin, access_log, fetch, origin_stats, port_of


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def site_pem(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for news.test (with its key) and the CA that signed it."""
    pem, ca_pem = tmp_path / "site.pem", tmp_path / "ca.pem"
    ca.issue_cert(NAME).private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    return pem, ca_pem


def tls_section(pem: Path, **more: Any) -> dict[str, Any]:
    return {"certificates": [{"cert": str(pem), "key": str(pem)}], **more}


@pytest.fixture
async def h2_edge(origin: Origin, make_edge: EdgeFactory, site_pem: tuple[Path, Path]) -> Any:
    return await make_edge(origin.url, tls=tls_section(site_pem[0]))


async def run(*argv: str, timeout: float = 60.0) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}: {out.decode()[-2000:]}"
    return out.decode("utf-8", "replace")


def curl(port: int, ca_pem: Path, path: str, *args: str) -> list[str]:
    return ["curl", "-sS", "--cacert", str(ca_pem), "--resolve", f"{NAME}:{port}:127.0.0.1",
            *args, f"https://{NAME}:{port}{path}"]


def heads(output: str) -> list[dict[str, str]]:
    """Response heads from `curl -D -` output: {":status-line": ..., lowercase name: value}."""
    out: list[dict[str, str]] = []
    for block in re.split(r"\r\n\r\n", output):
        lines = block.strip().split("\r\n")
        if not lines or not lines[0].startswith("HTTP/"):
            continue
        head = {":status-line": lines[0].strip()}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            head[name.strip().lower()] = value.strip()
        out.append(head)
    return out


async def test_curl_over_h2_gets_a_cached_page_as_a_hit(h2_edge: Any, origin: Origin,
                                                        site_pem: tuple[Path, Path]) -> None:
    port, ca_pem = port_of(h2_edge), site_pem[1]
    before = (await origin_stats(origin))["by_path"].get("/", 0)
    first = heads(await run(*curl(port, ca_pem, "/", "--http2", "-D", "-", "-o", "/dev/null")))
    second = heads(await run(*curl(port, ca_pem, "/", "--http2", "-D", "-", "-o", "/dev/null")))
    assert first[0][":status-line"] == "HTTP/2 200"
    assert first[0]["x-cache"] == "MISS" and second[0]["x-cache"] == "HIT"
    for head in (first[0], second[0]):  # HTTP/1.1's framing and hop-by-hop fields never go out
        assert "connection" not in head and "transfer-encoding" not in head
        assert "keep-alive" not in head
    assert (await origin_stats(origin))["by_path"].get("/", 0) - before == 1
    # HEAD from the cached GET: the length, no body.
    head = await run(*curl(port, ca_pem, "/", "--http2", "-I"))
    assert heads(head)[0]["x-cache"] == "HIT" and int(heads(head)[0]["content-length"]) > 0
    log = [line for line in access_log(h2_edge) if line["path"] == "/"]
    assert [line["cache"] for line in log] == ["MISS", "HIT", "HIT"]
    metrics = (await fetch(h2_edge.admin_address[1], "/metrics")).body.decode()
    counts = dict(line.split() for line in metrics.splitlines()
                  if line.startswith("kalkan_http2_"))
    assert counts == {"kalkan_http2_connections_total": "3", "kalkan_http2_streams_total": "3",
                      "kalkan_http2_refused_total": "0"}


async def test_h2load_many_streams_are_answered_from_the_cache(h2_edge: Any,
                                                               origin: Origin) -> None:
    port = port_of(h2_edge)
    out = await run("h2load", "-n", "2000", "-c", "4", "-m", "20",
                    f"https://127.0.0.1:{port}/robots.txt")
    assert "Application protocol: h2" in out
    assert re.search(r"2000 succeeded, 0 failed, 0 errored", out), out
    assert "2000 2xx" in out
    assert (await origin_stats(origin))["by_path"].get("/robots.txt", 0) == 1


async def test_nghttp_posts_a_body_the_origin_receives_over_http1(
        h2_edge: Any, tmp_path: Path) -> None:
    body = bytes(range(256)) * 12289  # about 3 MiB: many windows' worth, in flow control
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    out = await run("nghttp", "-d", str(upload), f"https://127.0.0.1:{port_of(h2_edge)}"
                    "/_demo/upload")
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_fields_reach_the_origin_as_http1_would_send_them(h2_edge: Any,
                                                                ca: trustme.CA) -> None:
    client = await H2Client.connect(port_of(h2_edge), ca)
    try:
        # HTTP/2 may split Cookie into several fields; the origin gets one, joined with "; ".
        reply = await client.request("POST", "/_demo/echo", [
            ("cookie", "a=1"), ("user-agent", "h2-test"), ("cookie", "b=2"),
            ("x-real-ip", "6.6.6.6")], body=b"hello")
        assert reply.status == 200
        seen = json.loads(reply.body)
        assert seen["method"] == "POST" and seen["http_version"] == "1.1"
        fields = [(k.lower(), v) for k, v in seen["headers"]]
        assert [v for k, v in fields if k == "cookie"] == ["a=1; b=2"]
        assert ("host", NAME) in fields and ("x-forwarded-proto", "https") in fields
        assert ("transfer-encoding", "chunked") in fields  # no length given: chunked upstream
        assert ("x-real-ip", "127.0.0.1") in fields      # the client's own is dropped
        # With a length, the length goes up.
        reply = await client.request("PUT", "/_demo/echo", [("content-length", "5")], b"hello")
        fields = [(k.lower(), v) for k, v in json.loads(reply.body)["headers"]]
        assert ("content-length", "5") in fields
        # :authority is canonicalized like Host: one cache key for the site.
        assert (await client.request("GET", "/robots.txt")).header("x-cache") == "MISS"
        again = await client.request("GET", "/robots.txt", authority="NEWS.TEST.:443")
        assert again.status == 200 and again.header("x-cache") == "HIT"
        # A conditional GET answered from the cache: 304, no body.
        page = await client.request("GET", "/")
        etag = page.header("etag")
        assert etag is not None
        cached = await client.request("GET", "/", [("if-none-match", etag)])
        assert cached.status == 304 and cached.body == b"" and cached.header("x-cache") == "HIT"
        # Expect: 100-continue is answered with a 100 before the body is read.
        upload = await client.request("POST", "/_demo/upload", [("expect", "100-continue")],
                                      b"z" * 1000)
        assert json.loads(upload.body)["bytes"] == 1000
        # Not origin-form, and TRACE: refused as over HTTP/1.1.
        assert (await client.request("GET", "*")).status == 400
        assert (await client.request("TRACE", "/")).status == 405
    finally:
        await client.close()


async def test_host_and_authority_must_name_one_site(h2_edge: Any, ca: trustme.CA) -> None:
    client = await H2Client.connect(port_of(h2_edge), ca, validate=False)
    try:
        # Another site: a malformed request (RFC 9113 §8.3.1), the connection ends (h2 compares
        # the two as sent, so even another spelling of the same site is refused).
        with pytest.raises(ConnectionError):
            await client.request("GET", "/", [("host", "other.test")])
        assert client.terminated is not None and client.terminated.error_code != 0
    finally:
        await client.close()


async def test_a_large_relayed_response_is_dechunked(h2_edge: Any, ca: trustme.CA) -> None:
    """/_demo/big streams without a length: relayed to HTTP/1.1 readers chunked, to HTTP/2
    readers as DATA frames (the chunk framing undone), under the client's flow control."""
    client = await H2Client.connect(port_of(h2_edge), ca)
    try:
        size = 1048576  # the origin's default (the cache key drops the unlisted ?bytes=)
        reply = await client.request("GET", "/_demo/big", timeout=30.0)
        assert reply.status == 200
        assert reply.header("transfer-encoding") is None
        assert len(reply.body) == size
        assert reply.body == bytes(i % 256 for i in range(size))
    finally:
        await client.close()


async def test_defence_verdicts_over_h2(origin: Origin, make_edge: EdgeFactory,
                                        ca: trustme.CA, site_pem: tuple[Path, Path],
                                        tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n"
                      "  - name: closed\n    match: {path: /blocked}\n    action: block\n"
                      "  - name: prove\n    match: {path: /ru/}\n    action: challenge\n")
    edge = await make_edge(origin.url, tls=tls_section(site_pem[0]),
                           defense={"enabled": True, "policy": str(policy)})
    client = await H2Client.connect(port_of(edge), ca, source="127.0.9.1")
    try:
        assert (await client.request("GET", "/blocked")).status == 403
        challenge = await client.request("GET", "/ru/")
        assert challenge.status == 403 and b"<form" in challenge.body
        assert (await client.request("GET", "/robots.txt")).status == 200
        # A refused request with a body: answered, and the stream's body is not read.
        posted = await client.request("POST", "/blocked", body=b"x" * 200_000)
        assert posted.status == 403
        assert (await client.request("GET", "/robots.txt")).status == 200
    finally:
        await client.close()
    decisions = {(line["path"], line["status"]): line["decision"] for line in access_log(edge)}
    assert "closed" in decisions[("/blocked", 403)]
    assert "prove" in decisions[("/ru/", 403)]


async def test_http1_over_tls_still_works_beside_h2(h2_edge: Any,
                                                    site_pem: tuple[Path, Path]) -> None:
    out = await run(*curl(port_of(h2_edge), site_pem[1], "/robots.txt", "--http1.1", "-D", "-",
                          "-o", "/dev/null"))
    assert heads(out)[0][":status-line"].startswith("HTTP/1.1 200")


async def test_http2_off_offers_http1_only(origin: Origin, make_edge: EdgeFactory,
                                           ca: trustme.CA, site_pem: tuple[Path, Path]) -> None:
    edge = await make_edge(origin.url, tls=tls_section(site_pem[0], http2=False))
    out = await run(*curl(port_of(edge), site_pem[1], "/robots.txt", "--http2", "-D", "-",
                          "-o", "/dev/null"))
    assert heads(out)[0][":status-line"].startswith("HTTP/1.1 200")
    _, writer = await open_tls(port_of(edge), ca, ["h2", "http/1.1"])
    try:
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    finally:
        writer.close()
