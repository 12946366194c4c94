"""The dashboard on the admin listener over real HTTP: the page, the live snapshot moving with
traffic, sign-in with the token (a session cookie, never the token), CSRF refusals, the Host check
against DNS rebinding, the metrics that name things, and `kalkan top --once` against a real edge."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

from kalkan.edge.app import Edge
from support import EdgeFactory, Origin, fetch, port_of

KALKAN = str(Path(sys.executable).with_name("kalkan"))


def _call(port: int, method: str, path: str, headers: dict[str, str] | None = None,
          body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


async def call(port: int, method: str, path: str, headers: dict[str, str] | None = None,
               body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_call, port, method, path, headers, body)


def admin_port(edge: Edge) -> int:
    assert edge.admin_address is not None
    return edge.admin_address[1]


async def sign_in(port: int, token: str) -> str:
    status, headers, _ = await call(port, "POST", "/login",
                                    {"Content-Type": "application/x-www-form-urlencoded"},
                                    f"token={token}".encode())
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=" in cookie
    assert token not in cookie  # an HMAC of the token, never the token itself
    return cookie.split(";", 1)[0]


async def test_page_is_self_contained_and_in_the_readers_language(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    port = admin_port(edge)
    for header, lang in (("ru-RU,ru;q=0.9,en;q=0.5", "ru"), ("ky,ru;q=0.5", "ky"),
                         ("de-DE,en;q=0.3", "en"), ("", "en")):
        status, headers, body = await call(port, "GET", "/", {"Accept-Language": header})
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert f'<html lang="{lang}">' in body.decode()
        # Nothing loaded from elsewhere: no remote URL in the page, and the policy forbids it.
        assert b"src=\"http" not in body and b"href=\"http" not in body
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"


async def test_live_snapshot_moves_with_traffic(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    port, admin = port_of(edge), admin_port(edge)
    assert edge.live is not None
    edge.live.sample()
    for _ in range(40):
        assert (await fetch(port, "/")).status == 200
    await fetch(port, "/feed/")
    edge.live.sample()
    status, _, body = await call(admin, "GET", "/api/live")  # open on loopback, like /metrics
    assert status == 200
    snap = json.loads(body)
    assert snap["totals"]["hit"] >= 38 and snap["totals"]["miss"] >= 1
    assert snap["rates"]["hit"] > 0 and snap["cache_hit_ratio"] > 0.5
    assert snap["threat"]["name"] == "peace" and snap["threat"]["mode"] == "auto"
    assert snap["origin"]["limit"] == edge.config.origin.max_concurrency
    assert snap["top"]["paths"][0]["key"] == "/"      # every request came from one address
    assert snap["top"]["prefixes"][0]["key"] == "127.0.0.0/24"
    assert snap["top"]["agents"], "the defence samples user agents"
    assert len(snap["history"]["hit"]) == 1


async def test_sign_in_sets_a_session_that_allows_changes_with_the_csrf_header(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    port = admin_port(edge)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, headers, body = await call(port, "POST", "/login", form, b"token=wrong")
    assert status == 401 and "set-cookie" not in headers and b"Wrong token" in body
    cookie = await sign_in(port, edge.admin_token)
    add = json.dumps({"target": "192.0.2.7", "action": "block", "ttl": 60}).encode()
    jsonh = {"Content-Type": "application/json", "Cookie": cookie}

    # Reading with the cookie works; so does a change that carries the dashboard's header.
    assert (await call(port, "GET", "/decisions", {"Cookie": cookie}))[0] == 200
    assert (await call(port, "POST", "/decisions", {**jsonh, "X-Kalkan-CSRF": "1",
                                                    "Origin": f"http://127.0.0.1:{port}"},
                       add))[0] == 200
    # A form another site makes the browser post: the cookie rides along, the header cannot.
    status, _, body = await call(port, "POST", "/decisions", jsonh, add)
    assert status == 403 and b"x-kalkan-csrf" in body
    # A script on another site that adds the header still names its own Origin.
    status, _, body = await call(port, "POST", "/attack-mode?mode=off",
                                 {"Cookie": cookie, "X-Kalkan-CSRF": "1",
                                  "Origin": "https://evil.example"})
    assert status == 403 and b"another site" in body
    assert edge.pipeline.defense.attack.mode == "auto"
    # Bytes outside ASCII in the credentials are a wrong credential, not a crash.
    for odd in ({"Cookie": "kalkan_admin=9999999999.\xe9"}, {"Authorization": "Bearer \xe9t\xe9"}):
        assert (await call(port, "GET", "/decisions", odd))[0] == 401
    # A forged or expired cookie is nothing.
    forged = "kalkan_admin=9999999999.00ff"
    assert (await call(port, "GET", "/decisions", {"Cookie": forged}))[0] == 401
    stamp, mac = cookie.split("=", 1)[1].split(".")
    assert stamp.isdigit()
    assert (await call(port, "GET", "/decisions",  # its MAC, with another (past) expiry
                       {"Cookie": f"kalkan_admin=1.{mac}"}))[0] == 401
    # The bearer token (the CLI) needs no CSRF header: it is not sent by a browser on its own.
    status, _, _ = await call(port, "POST", "/attack-mode?mode=on",
                              {"Authorization": f"Bearer {edge.admin_token}"})
    assert status == 200 and edge.pipeline.defense.attack.mode == "on"
    # Signing out clears the cookie.
    status, headers, _ = await call(port, "POST", "/logout", {"Cookie": cookie})
    assert status == 303 and "Max-Age=0" in headers["set-cookie"]


async def test_rebound_host_names_are_refused(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    port = admin_port(edge)
    # A page on attacker.example whose name now resolves to 127.0.0.1 would send its own Host.
    status, _, body = await call(port, "GET", "/api/live", {"Host": f"attacker.example:{port}"})
    assert status == 403 and b"loopback" in body
    for host in (f"localhost:{port}", f"127.0.0.2:{port}", f"[::1]:{port}", "127.0.0.1"):
        assert (await call(port, "GET", "/api/live", {"Host": host}))[0] == 200, host
    for host in ("", "localhost.attacker.example", f"[::1].evil:{port}"):
        assert (await call(port, "GET", "/", {"Host": host}))[0] == 403, host


async def test_public_listener_reads_need_a_sign_in(origin: Origin, make_edge: EdgeFactory,
                                                    ) -> None:
    edge = await make_edge(origin.url, admin={"listen": "0.0.0.0:0"})
    port = admin_port(edge)
    assert (await call(port, "GET", "/"))[0] == 200  # the sign-in form itself
    assert (await call(port, "GET", "/api/live"))[0] == 401
    cookie = await sign_in(port, edge.admin_token)
    status, _, body = await call(port, "GET", "/api/live", {"Cookie": cookie})
    assert status == 200 and "rates" in json.loads(body)
    assert (await call(port, "GET", "/metrics", {"Cookie": cookie}))[0] == 200


async def test_metrics_name_rules_routes_challenges_and_origin_busy_share(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: no-search-here\n    match: {route: search}\n"
                      "    action: block\n    reason: test\n")
    edge = await make_edge(origin.url, defense={"enabled": True, "policy": str(policy)})
    port = port_of(edge)
    assert (await fetch(port, "/?s=anything")).status == 403
    assert (await fetch(port, "/")).status == 200
    status, _, body = await call(admin_port(edge), "GET", "/metrics")
    assert status == 200
    text = body.decode()
    assert 'kalkan_rule_decisions_total{action="block",rule="no-search-here"} 1' in text
    assert 'kalkan_decisions_total{action="block",reason="rule"} 1' in text  # kept as it was
    assert 'kalkan_route_requests_total{route="search"} 1' in text
    assert 'kalkan_route_requests_total{route="page"} 1' in text
    for outcome in ("issued", "passed", "failed", "expired"):
        assert f'kalkan_challenges_total{{outcome="{outcome}"}} 0' in text
    assert "kalkan_origin_busy_share 0.0" in text
    assert f"kalkan_origin_gate_limit {edge.config.origin.max_concurrency}" in text


async def test_kalkan_top_once_prints_one_frame(origin: Origin, make_edge: EdgeFactory,
                                                tmp_path: Path) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    port = port_of(edge)
    assert edge.live is not None
    edge.live.sample()
    for _ in range(20):
        await fetch(port, "/", headers={"User-Agent": "TopTestBot/1.0"})
    edge.live.sample()
    config = tmp_path / "kalkan.yaml"
    config.write_text(f"admin:\n  listen: 127.0.0.1:{admin_port(edge)}\n"
                      f"state_dir: {edge.config.state_dir}\n")
    env = {**os.environ, "KALKAN_CONFIG": str(config), "COLUMNS": "100"}
    out = await asyncio.to_thread(subprocess.run, [KALKAN, "top", "--once"], capture_output=True,
                                  text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert "\x1b[" not in out.stdout  # not a terminal: no colours
    lines = out.stdout.splitlines()
    assert lines[0].startswith("kalkan top") and "PEACE" in lines[0]
    hit = next(line for line in lines if line.strip().startswith("hit"))
    assert float(hit.split()[1].replace(",", "")) > 0
    assert "127.0.0.0/24" in out.stdout and "TopTestBot/1.0" in out.stdout
    assert "standing decisions (0)" in out.stdout
    # A bad option is named.
    out = await asyncio.to_thread(subprocess.run, [KALKAN, "top", "--once", "--interval", "0"],
                                  capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode != 0 and "interval" in out.stderr
