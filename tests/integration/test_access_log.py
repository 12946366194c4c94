"""What the access log records of real requests over a socket: query, User-Agent and Referer,
on the slow path, on a hit and on a replayed hit (identical bytes answered from the memo)."""

from __future__ import annotations

from kalkan.edge.app import Edge
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
