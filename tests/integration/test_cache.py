"""The cache over real sockets, with the demo site as the origin: hit, miss, stale, coalescing,
revalidation, Vary, microcaching, cache-busting queries, invalidation and persistence."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

from kalkan.edge.cache_key import QueryPolicy, normalize_target
from support import Client, EdgeFactory, Origin, fetch, port_of, start_origin

RESPOND_ALL = {"query": {"paths": {"/_demo/*": ["*"]}}}
RESPOND_POLICY = QueryPolicy.from_mapping(RESPOND_ALL["query"])


def respond(tag: str, **params: object) -> str:
    """A /_demo/respond URL; `tag` keeps each test's URLs apart."""
    return "/_demo/respond?" + urlencode({"h_x-test": tag, **params})


async def origin_count(origin: Origin, target: str) -> int:
    """How many requests for `target` reached the origin (which sees the normalized target)."""
    stats = json.loads((await fetch(origin.port, "/_demo/stats")).body)
    path, _, query = target.partition("?")
    return int(stats["by_path"].get(normalize_target(path, query, RESPOND_POLICY), 0))


async def test_miss_then_hit_with_age_head_and_304(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL)
    port = port_of(edge)
    url = respond("basic", cc="public, max-age=60", etag='"v1"', body="hello reader")
    first = await fetch(port, url)
    assert first.status == 200 and first.header("X-Cache") == "MISS"
    assert first.body == b"hello reader"
    second = await fetch(port, url)
    assert second.header("X-Cache") == "HIT"
    assert second.body == b"hello reader"
    assert second.header("Age") is not None and int(second.header("Age") or -1) >= 0
    head = await fetch(port, url, method="HEAD")
    assert head.status == 200 and head.body == b"" and head.header("X-Cache") == "HIT"
    assert head.header("Content-Length") == str(len(b"hello reader"))
    cond = await fetch(port, url, headers={"If-None-Match": '"v1"'})
    assert cond.status == 304 and cond.body == b""
    assert cond.header("ETag") == '"v1"'
    assert await origin_count(origin, url) == 1


async def test_concurrent_misses_make_one_origin_request(origin: Origin,
                                                         make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL)
    url = respond("coalesce", cc="public, max-age=60", delay_ms=300, body="slow page")
    results = await asyncio.gather(*(fetch(port_of(edge), url) for _ in range(30)))
    assert all(r.status == 200 and r.body == b"slow page" for r in results)
    assert await origin_count(origin, url) == 1
    assert edge.pipeline.metrics.coalesced >= 25


async def test_origin_down_serves_stale(make_edge: EdgeFactory) -> None:
    site = await start_origin()
    edge = await make_edge(site.url, cache=RESPOND_ALL, origin={"breaker_failures": 100})
    url = respond("stale", cc="public, max-age=1", body="yesterday's news")
    assert (await fetch(port_of(edge), url)).header("X-Cache") == "MISS"
    await site.site.stop()
    await asyncio.sleep(1.3)
    resp = await fetch(port_of(edge), url)
    assert resp.status == 200 and resp.body == b"yesterday's news"
    assert resp.header("X-Cache") == "STALE"
    # Nothing stored for this one: the reader gets a clear error, not a hang.
    missing = await fetch(port_of(edge), respond("never-stored"))
    assert missing.status == 502 and missing.header("X-Cache") == "ERROR"


async def test_must_revalidate_is_not_served_stale(make_edge: EdgeFactory) -> None:
    site = await start_origin()
    edge = await make_edge(site.url, cache=RESPOND_ALL)
    url = respond("mr", cc="public, max-age=1, must-revalidate", body="strict")
    await fetch(port_of(edge), url)
    await site.site.stop()
    await asyncio.sleep(1.3)
    resp = await fetch(port_of(edge), url)
    assert resp.status in (502, 504)


async def test_stale_while_revalidate_serves_then_refreshes(origin: Origin,
                                                            make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL)
    url = respond("swr", cc="public, max-age=1, stale-while-revalidate=30", body="b")
    await fetch(port_of(edge), url)
    await asyncio.sleep(1.3)
    resp = await fetch(port_of(edge), url)
    assert resp.header("X-Cache") == "STALE"
    for _ in range(50):
        if await origin_count(origin, url) == 2:
            break
        await asyncio.sleep(0.05)
    assert await origin_count(origin, url) == 2
    assert (await fetch(port_of(edge), url)).header("X-Cache") == "HIT"


async def test_revalidation_with_304_updates_the_entry(origin: Origin,
                                                       make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL)
    url = respond("reval", cc="public, max-age=1", etag='"abc"', body="same")
    await fetch(port_of(edge), url)
    await asyncio.sleep(1.3)
    resp = await fetch(port_of(edge), url)
    assert resp.status == 200 and resp.body == b"same"
    assert resp.header("X-Cache") == "REVALIDATED"
    assert (await fetch(port_of(edge), url)).header("X-Cache") == "HIT"


async def test_cache_busting_queries_share_one_entry(origin: Origin,
                                                     make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    port = port_of(edge)
    assert (await fetch(port, "/")).header("X-Cache") == "MISS"
    for junk in ("?x=1", "?utm_source=spam&x=2", "?_=1234567&fbclid=abc"):
        resp = await fetch(port, "/" + junk)
        assert resp.header("X-Cache") == "HIT", junk
    # Parameters that select content stay in the key.
    assert (await fetch(port, "/?p=2")).header("X-Cache") == "MISS"


async def test_private_no_store_and_set_cookie_are_not_shared(origin: Origin,
                                                              make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL)
    port = port_of(edge)
    for params in ({"cc": "private, max-age=60"}, {"cc": "no-store"},
                   {"cc": "max-age=60", "set_cookie": "session=secret"}):
        url = respond("private", **params)
        await fetch(port, url)
        again = await fetch(port, url)
        assert again.header("X-Cache") != "HIT", params
        assert await origin_count(origin, url) == 2, params


async def test_authorization_requests_are_not_shared(origin: Origin,
                                                     make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL)
    url = respond("auth", cc="max-age=60")
    await fetch(port_of(edge), url, headers={"Authorization": "Bearer x"})
    assert (await fetch(port_of(edge), url)).header("X-Cache") == "MISS"


async def test_vary_keeps_variants_apart(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL)
    port = port_of(edge)
    url = respond("vary", cc="max-age=60", vary="Accept-Language", body="x")
    ru = await fetch(port, url, headers={"Accept-Language": "ru"})
    en = await fetch(port, url, headers={"Accept-Language": "en"})
    assert ru.header("X-Cache") == "MISS" and en.header("X-Cache") == "MISS"
    assert (await fetch(port, url, headers={"Accept-Language": "ru"})).header("X-Cache") == "HIT"
    assert (await fetch(port, url, headers={"Accept-Language": "en"})).header("X-Cache") == "HIT"


async def test_microcache_caches_pages_without_freshness(make_edge: EdgeFactory) -> None:
    site = await start_origin(cache_headers=False)
    try:
        edge = await make_edge(site.url, cache={"microcache_ttl": 1.0})
        port = port_of(edge)
        assert (await fetch(port, "/")).header("X-Cache") == "MISS"
        assert (await fetch(port, "/")).header("X-Cache") == "HIT"
        # A logged-in reader is never served the anonymous copy.
        logged_in = await fetch(port, "/", headers={"Cookie": "wordpress_logged_in_abc=1"})
        assert logged_in.header("X-Cache") != "HIT"
        await asyncio.sleep(1.2)
        assert (await fetch(port, "/")).header("X-Cache") in ("MISS", "REVALIDATED")
    finally:
        await site.site.stop()


async def test_unsafe_method_invalidates(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL)
    port = port_of(edge)
    url = respond("unsafe", cc="max-age=60")
    await fetch(port, url)
    assert (await fetch(port, url)).header("X-Cache") == "HIT"
    post = await fetch(port, url, method="POST", body=b"x=1")
    assert post.header("X-Cache") == "BYPASS"
    assert (await fetch(port, url)).header("X-Cache") == "MISS"


async def test_restart_keeps_the_cache(make_edge: EdgeFactory, tmp_path: object) -> None:
    site = await start_origin()
    edge = await make_edge(site.url, cache=RESPOND_ALL)
    url = respond("persist", cc="public, max-age=600", body="kept across restarts")
    assert (await fetch(port_of(edge), url)).header("X-Cache") == "MISS"
    await edge.stop()
    await site.site.stop()  # the origin is gone too: only the disk copy can answer
    edge2 = await make_edge(site.url, cache=RESPOND_ALL)
    resp = await fetch(port_of(edge2), url)
    assert resp.status == 200 and resp.body == b"kept across restarts"
    assert resp.header("X-Cache") == "HIT"


async def test_purge_over_admin(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL)
    port = port_of(edge)
    await fetch(port, "/")
    assert (await fetch(port, "/")).header("X-Cache") == "HIT"
    admin_port = edge.admin_address[1]  # type: ignore[index]
    client = await Client.connect(admin_port)
    resp = await client.request("POST", "/purge?url=" + "http%3A%2F%2Fnews.example%2F",
                                headers={"Authorization": f"Bearer {edge.admin_token}"})
    await client.close()
    assert resp.status == 200 and json.loads(resp.body)["purged"] == 1
    assert (await fetch(port, "/")).header("X-Cache") == "MISS"
    unauthorized = await fetch(admin_port, "/purge?all=1", method="POST")
    assert unauthorized.status == 401


async def test_gate_never_exceeds_origin_concurrency(origin: Origin,
                                                     make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL,
                           origin={"max_concurrency": 3, "queue_size": 100})
    urls = [respond(f"gate{i}", cc="no-store", delay_ms=100) for i in range(24)]
    results = await asyncio.gather(*(fetch(port_of(edge), u) for u in urls))
    assert all(r.status == 200 for r in results)
    assert edge.pipeline.upstream.gate.max_active <= 3
    stats = json.loads((await fetch(origin.port, "/_demo/stats")).body)
    assert stats["max_in_flight"] <= 3 + 1  # +1: the stats request itself


async def test_full_gate_queue_sheds_with_503(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=RESPOND_ALL,
                           origin={"max_concurrency": 1, "queue_size": 2})
    urls = [respond(f"shed{i}", cc="no-store", delay_ms=300) for i in range(8)]
    results = await asyncio.gather(*(fetch(port_of(edge), u) for u in urls))
    statuses = sorted(r.status for r in results)
    assert statuses.count(200) == 3
    shed = [r for r in results if r.status == 503]
    assert len(shed) == 5 and all(r.header("Retry-After") for r in shed)


async def test_metrics_endpoint(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    await fetch(port_of(edge), "/")
    await fetch(port_of(edge), "/")
    resp = await fetch(edge.admin_address[1], "/metrics")  # type: ignore[index]
    text = resp.body.decode()
    assert 'kalkan_requests_total{status="200",cache="HIT"} 1' in text
    assert "kalkan_origin_latency_seconds_bucket" in text
    assert "kalkan_cache_objects 1" in text
    assert "kalkan_gate_queue_depth 0" in text


async def test_access_log_line(origin: Origin, make_edge: EdgeFactory, tmp_path: object) -> None:
    edge = await make_edge(origin.url)
    await fetch(port_of(edge), "/")
    edge.pipeline.access_log.flush()
    with open(edge.config.access_log.path or "") as f:
        line = json.loads(f.read().splitlines()[-1])
    assert line["path"] == "/" and line["status"] == 200 and line["cache"] == "MISS"
    assert line["client"] == "127.0.0.1" and line["host"] == "news.example"
    assert line["origin_ms"] is not None and "decision" in line
