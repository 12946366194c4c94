"""Issue 7's request-path findings, each held by a test over real sockets with the demo origin:
Upgrade smuggling, credentialed pages leaking, Host variants, Connection-listed Vary fields,
override headers, TRACE, deep pipelining, eviction by unsafe methods and the fetching reader's
cookie."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import pytest

from support import (
    DEMO_QUERIES,
    Client,
    EdgeFactory,
    Origin,
    echo_header,
    exchange,
    fetch,
    origin_stats,
    port_of,
    start_origin,
)

if TYPE_CHECKING:
    from kalkan.edge.replay import ReplayMemo

SMUGGLED = b"GET /smuggled-page HTTP/1.1\r\nHost: news.example\r\n\r\n"


def respond(tag: str, **params: object) -> str:
    return "/_demo/respond?" + urlencode({"h_x-test": tag, **params})


def smuggled_reached(stats: dict[str, object]) -> bool:
    return any("smuggled" in path for path in stats["by_path"])  # type: ignore[union-attr]


# -- Upgrade: the body of a request that asks for one is forwarded whole ------------------------

# (chunked HTTP/1.0 is refused before the Upgrade matters)
@pytest.mark.parametrize(("version", "framing"), [("1.1", "length"), ("1.0", "length"),
                                                  ("1.1", "chunked")])
@pytest.mark.parametrize("split", [False, True])
async def test_upgrade_request_body_is_forwarded_not_smuggled(
        origin: Origin, make_edge: EdgeFactory, version: str, framing: str, split: bool) -> None:
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    port = port_of(edge)
    if framing == "length":
        body, field = SMUGGLED, f"Content-Length: {len(SMUGGLED)}"
    else:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
        field = "Transfer-Encoding: chunked"
    head = (f"POST /_demo/echo HTTP/{version}\r\nHost: news.example\r\n{field}\r\n"
            "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n").encode()
    follower = b"GET /follower-page HTTP/1.1\r\nHost: news.example\r\n\r\n"
    pieces = (head, body + follower) if split else (head + body + follower,)
    reply = await exchange(port, *pieces, pause=0.2)
    assert reply.statuses == [200], reply.data[:300]
    assert reply.closed  # Upgrade ignored: one answer, then the connection closes
    echoed = json.loads(reply.data.split(b"\r\n\r\n", 1)[1])
    assert echoed["body_length"] == len(SMUGGLED)
    # The origin connection is still in step: the next request gets its own answer.
    after = await fetch(port, "/_demo/echo?after")
    assert json.loads(after.body)["target"] == "/_demo/echo?after"
    stats = await origin_stats(origin)
    assert not smuggled_reached(stats)
    assert not any("follower" in p for p in stats["by_path"])


async def test_upgrade_flood_does_not_hold_origin_slots(origin: Origin,
                                                        make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, origin={"max_concurrency": 4, "timeout": 3.0})
    port = port_of(edge)
    req = (b"POST /_demo/echo HTTP/1.1\r\nHost: news.example\r\nContent-Length: %d\r\n"
           b"Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED))
    replies = await asyncio.gather(*(exchange(port, req) for _ in range(16)))
    assert all(r.statuses == [200] for r in replies)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await fetch(port, "/_demo/echo?next")
    assert resp.status == 200 and loop.time() - t0 < 2.0
    assert edge.pipeline.upstream.gate.active == 0


# -- credentials: anything fetched for a session reaches nobody else ------------------------------

@pytest.mark.parametrize("credential", [{"Cookie": "wordpress_logged_in_abc=editor"},
                                        {"Authorization": "Basic ZWQ6aXRvcg=="}])
async def test_credentialed_page_is_never_served_to_others(
        make_edge: EdgeFactory, credential: dict[str, str]) -> None:
    site = await start_origin()
    edge = await make_edge(site.url, cache=DEMO_QUERIES, origin={"breaker_failures": 100})
    port = port_of(edge)
    url = respond("session", body="the editor's own page")  # no Cache-Control, like WordPress
    mine = await fetch(port, url, headers=credential)
    # (A session cookie passes; Authorization alone is fetched on its own: MISS, not stored.)
    assert mine.body == b"the editor's own page" and mine.header("X-Cache") in ("BYPASS", "MISS")
    assert edge.pipeline.store.objects == 0
    await site.site.stop()
    other = await fetch(port, url)
    assert other.status == 502 and b"editor" not in other.body


async def test_logged_in_reader_does_not_get_the_stale_anonymous_copy(
        make_edge: EdgeFactory) -> None:
    site = await start_origin()
    edge = await make_edge(site.url, cache=DEMO_QUERIES, origin={"breaker_failures": 100})
    port = port_of(edge)
    url = respond("anon", cc="max-age=1", body="anonymous view")
    assert (await fetch(port, url)).header("X-Cache") == "MISS"
    await asyncio.sleep(1.2)
    session = {"Cookie": "wordpress_logged_in_x=1"}
    fresh = await fetch(port, url, headers=session)
    assert fresh.header("X-Cache") == "BYPASS"  # asked the origin itself
    await site.site.stop()
    down = await fetch(port, url, headers=session)
    assert down.status == 502
    anonymous = await fetch(port, url)
    assert anonymous.header("X-Cache") == "STALE" and anonymous.body == b"anonymous view"


async def test_fresh_shared_asset_is_served_to_logged_in_reader(origin: Origin,
                                                                make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    port = port_of(edge)
    url = respond("asset", cc="public, max-age=60", body="body{}")
    await fetch(port, url)
    hit = await fetch(port, url, headers={"Cookie": "wordpress_logged_in_x=1"})
    assert hit.header("X-Cache") == "HIT" and hit.body == b"body{}"


# -- Host: the key and the Host sent upstream are the same canonical name -------------------------

@pytest.mark.parametrize("host", ["NEWS.EXAMPLE", "news.example.", "news.example:80",
                                  "News.Example.:80", "news.example:"])
async def test_host_variants_are_forwarded_canonical(origin: Origin, make_edge: EdgeFactory,
                                                     host: str) -> None:
    edge = await make_edge(origin.url)
    resp = await fetch(port_of(edge), "/_demo/echo", host=host)
    assert echo_header(resp, "Host") == ["news.example"]


async def test_host_variants_share_one_entry(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    url = respond("hosts", cc="public, max-age=60")
    first = await fetch(port_of(edge), url, host="NEWS.example.")
    second = await fetch(port_of(edge), url, host="news.example:80")
    assert first.header("X-Cache") == "MISS" and second.header("X-Cache") == "HIT"
    assert second.body == first.body


@pytest.mark.parametrize("host", ["", "news.example:abc", "news.example:99999", "a:1:2", ".",
                                  "news..example"])
async def test_bad_host_is_refused(origin: Origin, make_edge: EdgeFactory, host: str) -> None:
    edge = await make_edge(origin.url)
    reply = await exchange(port_of(edge), f"GET /_demo/echo HTTP/1.1\r\nHost: {host}\r\n\r\n"
                           .encode())
    assert reply.status == 400 and reply.closed
    assert (await origin_stats(origin))["by_path"].get("/_demo/echo", 0) == 0


async def test_connection_close_host_still_sends_host(origin: Origin,
                                                      make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    resp = await fetch(port_of(edge), "/_demo/echo", headers={"Connection": "close, Host"})
    assert echo_header(resp, "Host") == ["news.example"]


# -- Connection-listed fields: gone before the key, Vary and the session check --------------------

async def test_connection_listed_vary_field_does_not_poison_a_variant(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    port = port_of(edge)
    url = respond("vary", cc="public, max-age=60", vary="Accept-Language")
    attacker = await fetch(port, url, headers={"Accept-Language": "ru",
                                               "Connection": "keep-alive, Accept-Language"})
    assert attacker.header("X-Cache") == "MISS"
    russian = await fetch(port, url, headers={"Accept-Language": "ru"})
    assert russian.header("X-Cache") == "MISS"  # the attacker's copy was the no-language one
    plain = await fetch(port, url)
    assert plain.header("X-Cache") == "HIT" and plain.body == attacker.body
    echo = await fetch(port, "/_demo/echo", headers={"X-Secret": "1", "Connection": "x-secret"})
    assert echo_header(echo, "X-Secret") == []


async def test_too_many_variants_are_capped(origin: Origin, make_edge: EdgeFactory) -> None:
    from kalkan.edge.store import MAX_VARIANTS

    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    port = port_of(edge)
    url = respond("variants", cc="public, max-age=60", vary="X-Variant")
    client = await Client.connect(port)
    try:
        for i in range(MAX_VARIANTS + 20):
            resp = await client.request("GET", url, {"X-Variant": str(i)})
            assert resp.status == 200
    finally:
        await client.close()
    key = edge.pipeline.store.entries
    assert max(len(v) for v in key.values()) == MAX_VARIANTS


# -- fields a client may not set for the origin -------------------------------------------------

async def test_override_and_address_fields_are_not_forwarded(origin: Origin,
                                                             make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    spoofed = {name: "evil" for name in (
        "X-Real-IP", "True-Client-IP", "X-Client-IP", "CF-Connecting-IP", "X-Original-URL",
        "X-Rewrite-URL", "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override",
        "X-Forwarded-Host", "X-Forwarded-Port", "X-Original-Host", "X-Host")}
    resp = await fetch(port_of(edge), "/_demo/echo", headers=spoofed)
    names = {n.lower() for n, _ in json.loads(resp.body)["headers"]}
    for name in spoofed:
        if name != "X-Real-IP":
            assert name.lower() not in names, name
    assert echo_header(resp, "X-Real-IP") == ["127.0.0.1"]


@pytest.mark.parametrize(("method", "status"), [("TRACE", 405), ("TRACK", 400)])
async def test_trace_is_refused(origin: Origin, make_edge: EdgeFactory, method: str,
                                status: int) -> None:
    edge = await make_edge(origin.url)
    reply = await exchange(port_of(edge),
                           f"{method} /_demo/echo HTTP/1.1\r\nHost: news.example\r\n\r\n".encode())
    assert reply.status == status and reply.closed  # TRACK: llhttp knows no such method
    if status == 405:
        assert b"\r\nAllow: " in reply.data
    assert (await origin_stats(origin))["by_path"].get("/_demo/echo", 0) == 0


# -- pipelining: every request in one read is answered, in order ----------------------------------

async def test_a_hundred_pipelined_requests_in_one_write_are_all_answered(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    port = port_of(edge)
    # A miss first, so the rest queue behind it.
    batch = b"".join(b"GET /_demo/echo?n=%d HTTP/1.1\r\nHost: news.example\r\n\r\n" % i
                     for i in range(100))
    client = await Client.connect(port)
    try:
        client.send(batch)
        for i in range(100):
            resp = await client.read_response(timeout=10)
            assert resp.status == 200
            assert json.loads(resp.body)["target"] == f"/_demo/echo?n={i}"
    finally:
        await client.close()


# -- unsafe methods evict only on the origin's 2xx ------------------------------------------------

@pytest.mark.parametrize(("status", "evicted"), [(200, True), (204, True), (303, False),
                                                 (403, False)])
async def test_unsafe_method_evicts_only_on_2xx(origin: Origin, make_edge: EdgeFactory,
                                                status: int, evicted: bool) -> None:
    # `status` is not part of the key: the POST names the cached URL, and the origin (which gets
    # the POST's own target) answers it with `status`.
    keyed = {"query": {"paths": {"/_demo/respond": ["h_x-test", "cc"]}}}
    edge = await make_edge(origin.url, cache=keyed)
    port = port_of(edge)
    url = respond(f"evict{status}", cc="public, max-age=60")
    await fetch(port, url)
    assert (await fetch(port, url)).header("X-Cache") == "HIT"
    posted = await fetch(port, f"{url}&status={status}", method="POST", body=b"x=1")
    assert posted.status == status
    again = await fetch(port, url)
    assert again.header("X-Cache") == ("MISS" if evicted else "HIT")


# -- the reader a public response with Set-Cookie was fetched for keeps its cookie --------------

async def test_first_reader_keeps_its_cookie_from_a_public_response(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    port = port_of(edge)
    url = respond("cookie", cc="public, max-age=60", set_cookie="visitor=abc; Path=/")
    first = await fetch(port, url)
    assert first.header("X-Cache") == "MISS" and first.header("Set-Cookie") == "visitor=abc; Path=/"
    second = await fetch(port, url)
    assert second.header("X-Cache") == "HIT" and second.header("Set-Cookie") is None


# -- memory: a hit holds its page once; the replay memo is bounded ---------------------------------

async def test_a_hit_writes_the_stored_body_itself_not_a_copy(origin: Origin,
                                                             make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url)
    port = port_of(edge)
    await fetch(port, "/bench/20k")
    assert (await fetch(port, "/bench/20k")).header("X-Cache") == "HIT"
    (entry,) = edge.pipeline.store.get(next(iter(edge.pipeline.store.entries))) or []
    head, body = entry.wire(edge.pipeline.clock.now)
    assert body is entry.body and len(head) < 1024


@contextlib.asynccontextmanager
async def page_cached(origin: Origin, make_edge: EdgeFactory
                      ) -> AsyncIterator[tuple[ReplayMemo, Client]]:
    """An edge with /bench/20k cached, its replay memo, and a client connected to it."""
    edge = await make_edge(origin.url)
    port = port_of(edge)
    await fetch(port, "/bench/20k")
    client = await Client.connect(port)
    try:
        yield edge.pipeline.replays, client
    finally:
        await client.close()


async def test_replay_memo_stays_bounded_under_unique_requests(origin: Origin,
                                                               make_edge: EdgeFactory) -> None:
    from kalkan.edge.replay import REPLAY_BYTES, REPLAY_MEMO

    async with page_cached(origin, make_edge) as (memo, client):
        pad = "x" * 3000  # big requests: the byte bound, not the count, must hold
        for i in range(3000):
            resp = await client.request("GET", "/bench/20k", {"User-Agent": f"r{i} {pad}"})
            assert resp.status == 200
            assert len(memo.memo) <= REPLAY_MEMO
            assert memo.bytes <= REPLAY_BYTES + 2 * 4096 + 512


async def test_replay_memo_samples_while_replays_are_rare_and_recovers_for_a_flood(
        origin: Origin, make_edge: EdgeFactory) -> None:
    from kalkan.edge.replay import SAMPLE

    async with page_cached(origin, make_edge) as (memo, client):
        for i in range(400):  # readers: every request different, none ever repeated
            assert (await client.request("GET", "/bench/20k", {"X-R": str(i)})).status == 200
        memo.tick()
        assert memo.sample == SAMPLE
        memo.forget()
        flood = b"GET /bench/20k HTTP/1.1\r\nHost: news.example\r\nUser-Agent: flood\r\n\r\n"
        for _ in range(4 * SAMPLE):  # one URL, identical bytes: caught by its second glimpse
            client.send(flood)
            assert (await client.read_response()).status == 200
        assert memo.sample == 1 and flood in memo.memo  # remembering is back on
        assert memo._replayed > 0  # (> SAMPLE, unless the server's own tick just reset it)
        memo.tick()
        assert memo.sample == 1
