"""What the access log records of real requests over a socket: query, User-Agent and Referer,
on the slow path, on a hit and on a replayed hit (identical bytes answered from the memo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kalkan.config import ConfigError, load_config
from kalkan.edge.app import Edge
from kalkan.observe.pseudonym import pseudonymize
from support import Client, EdgeFactory, Origin, access_log, port_of

HEADERS = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
           "Referer": "https://news.example/front", "Accept": "text/html"}


async def test_query_agent_and_referer_are_logged_on_every_path(origin: Origin,
                                                                make_edge: EdgeFactory) -> None:
    edge: Edge = await make_edge(origin.url)
    client = await Client.connect(port_of(edge))
    try:
        for _ in range(6):  # a miss, then hits; identical bytes end up replayed from the memo
            resp = await client.request("GET", "/?page=2", HEADERS, host="news.example")
            assert resp.status == 200
        resp = await client.request("GET", "/feed/", {"User-Agent": "curl/8"},
                                    host="news.example")
    finally:
        await client.close()
    lines = [e for e in access_log(edge) if e["path"] in ("/", "/feed/")]
    assert len(lines) == 7
    for line in lines[:6]:
        assert line["query"] == "page=2"
        assert line["ua"] == HEADERS["User-Agent"]
        assert line["referer"] == HEADERS["Referer"]
        assert str(line["time"]).endswith("Z") and str(line["time"])[19] == "."
    assert {line["cache"] for line in lines[:6]} >= {"MISS", "HIT"}
    assert lines[6]["ua"] == "curl/8" and "referer" not in lines[6] and "query" not in lines[6]


async def test_pseudonymized_log_names_no_address(origin: Origin, make_edge: EdgeFactory,
                                                  tmp_path: Path) -> None:
    edge: Edge = await make_edge(origin.url, access_log={"pseudonymize": True})
    for source in ("127.0.21.7", "127.0.21.7", "127.0.21.8"):
        client = await Client.connect(port_of(edge), local_addr=(source, 0))
        try:
            assert (await client.request("GET", "/", HEADERS, host="news.example")).status == 200
        finally:
            await client.close()
    clients = [e["client"] for e in access_log(edge)]
    assert len(clients) == 3 and not any(c.startswith("127.0.21.7") or c == "127.0.21.8"
                                         for c in clients)
    assert clients[0] == clients[1] != clients[2]
    assert all(c.startswith("127.0.21.x-") for c in clients)
    key = Path(edge.config.state_dir) / "log-pseudonym.key"
    assert key.stat().st_mode & 0o777 == 0o600
    # The same key names the same address the same way: logs stay linkable across restarts.
    assert clients[0] == pseudonymize("127.0.21.7", key.read_text().strip().encode())


def test_a_short_key_file_is_a_config_error(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("tooshort\n")
    config = tmp_path / "k.yaml"
    config.write_text(f"access_log:\n  pseudonymize: true\n  pseudonym_key_file: {short}\n")
    with pytest.raises(ConfigError, match=r"access_log\.pseudonym_key_file: .*at least 16"):
        load_config(config)


async def test_kalkan_analyze_reads_what_the_edge_wrote(origin: Origin, make_edge: EdgeFactory,
                                                         tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """The writer and the reader agree: a real edge's log, with a blocked /24 searching and
    readers reading, is read back by `kalkan analyze` (the analyze extra, which `make test`
    installs), the blocked network on top and the mitigation found."""
    edge: Edge = await make_edge(origin.url, defense={"enabled": True})
    admin_client = await Client.connect(edge.admin_address[1])
    try:
        body = b'{"target": "127.0.31.0/24", "action": "block", "ttl": 600}'
        added = await admin_client.request("POST", "/decisions", {
            "Authorization": f"Bearer {edge.admin_token}",
            "Content-Type": "application/json"}, body)
        assert added.status == 200
    finally:
        await admin_client.close()
    for i in range(40):
        source = f"127.0.31.{1 + i % 20}"
        client = await Client.connect(port_of(edge), local_addr=(source, 0))
        try:
            resp = await client.request("GET", f"/?s=word{i}", {"User-Agent": "bot/1"},
                                        host="news.example")
            assert resp.status == 403
        finally:
            await client.close()
    for i in range(10):
        client = await Client.connect(port_of(edge), local_addr=(f"127.0.32.{1 + i}", 0))
        try:
            assert (await client.request("GET", "/", HEADERS, host="news.example")).status == 200
        finally:
            await client.close()
    edge.pipeline.access_log.flush()
    from kalkan.cli import main
    assert main(["analyze", str(edge.config.access_log.path), "--format", "json",
                 "--no-charts"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"]["lines"] >= 50
    top = report["top"]["prefixes"][0]
    assert top["prefix"] == "127.0.31.0/24" and top["clients"] == 20
    assert report["mitigation"]["first"]["mitigation"]["decision"].startswith("block:")
