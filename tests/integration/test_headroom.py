"""Origin headroom over real sockets (issue 9): under attack, misses and background refreshes
together hold at most `origin.headroom` of the origin's slots, the hottest stale page is refreshed
first, a reader who leaves while queued never reaches the origin, and in peace nothing changes.

The origin is a real slow one on loopback that counts what it is asked at once; the attack level
is the operator's override (`POST /attack-mode?mode=on`, level 2), and the test clients are on
the defence's allowlist so that they reach the origin instead of being challenged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from h2_client import NAME, H2Client, Reply
from kalkan.edge.app import Edge
from kalkan.edge.cache_key import cache_key
from support import Client, EdgeFactory, LoopbackServer, Response, access_log, fetch, port_of

ALLOW_LOOPBACK = {"enabled": True, "allow": ["127.0.0.0/8"]}


@dataclass
class SlowOrigin(LoopbackServer):
    """Answers every request after `delay` seconds (`/dMS/...` overrides it), one per
    connection; GETs are cacheable for a second. Counts requests in flight at once (all, and
    GETs: the cache's misses and refreshes) and keeps the order paths arrived in."""

    delay: float = 0.3
    seen: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    gets: int = 0
    max_gets: int = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target = head.split(b" ", 2)[:2]
            path = target.decode()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            self.seen.append(path)
            get = method == b"GET"
            self.in_flight += 1
            self.gets += get
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.max_gets = max(self.max_gets, self.gets)
            try:
                first = path.split("/")[1]
                delay = int(first[1:]) / 1000 if first[:1] == "d" and first[1:].isdigit() \
                    else self.delay
                await asyncio.sleep(delay)
            finally:
                self.in_flight -= 1
                self.gets -= get
            body = f"page {path}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Cache-Control: public, max-age=1\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


@pytest.fixture
async def slow_origin() -> AsyncIterator[SlowOrigin]:
    origin = SlowOrigin()
    await origin.start()
    yield origin
    await origin.stop()


async def admin(edge: Edge, method: str, path: str) -> Response:
    client = await Client.connect(edge.admin_address[1])  # type: ignore[index]
    try:
        return await client.request(method, path,
                                    {"Authorization": f"Bearer {edge.admin_token}"})
    finally:
        await client.close()


async def metrics(edge: Edge) -> str:
    return (await fetch(edge.admin_address[1], "/metrics")).body.decode()  # type: ignore[index]


async def attack(edge: Edge) -> None:
    resp = await admin(edge, "POST", "/attack-mode?mode=on")
    assert json.loads(resp.body)["level"] >= 1


async def stale_pages(edge: Edge, paths: list[str]) -> None:
    """Store `paths`, then let them go stale (they are fresh for a second)."""
    port = port_of(edge)
    for resp in await asyncio.gather(*(fetch(port, p) for p in paths)):
        assert resp.status == 200 and resp.header("X-Cache") == "MISS"
    await asyncio.sleep(1.2)


def key(path: str) -> str:
    return cache_key("GET", "news.example", path, scheme="http")


async def until(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_under_attack_misses_and_refreshes_hold_at_most_the_budget(
        slow_origin: SlowOrigin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(slow_origin.url, defense=ALLOW_LOOPBACK,
                           origin={"max_concurrency": 10, "headroom": 0.7, "queue_size": 200})
    port = port_of(edge)
    pages = [f"/d50/page{i}" for i in range(12)]
    await stale_pages(edge, pages)
    await attack(edge)
    slow_origin.max_in_flight = slow_origin.max_gets = 0
    misses = [fetch(port, f"/miss{i}") for i in range(25)]
    stale_reads = [fetch(port, p) for p in pages for _ in range(3)]
    posts = [fetch(port, f"/d600/comment{i}", method="POST", body=b"hi") for i in range(3)]
    results = await asyncio.gather(*misses, *stale_reads, *posts)
    assert all(r.status == 200 for r in results)
    assert all(r.header("X-Cache") == "STALE" for r in results[25:25 + len(stale_reads)])
    await until(lambda: not edge.pipeline.fill.deferred and slow_origin.in_flight == 0)
    # The origin never saw more than 7 of the cache's requests at once, though it could take
    # 10, and readers' misses queued for it; the passes (POSTs) used the other slots.
    assert slow_origin.max_gets == 7
    assert edge.pipeline.upstream.gate.max_cache == 7
    assert slow_origin.max_in_flight > 7
    assert sum(p.startswith("/miss") for p in slow_origin.seen) == 25
    refreshed = [p for p in slow_origin.seen[len(pages):] if p.startswith("/d50/")]
    assert refreshed  # the stale pages were refreshed in the slots the budget left
    text = await metrics(edge)
    assert 'kalkan_origin_slots_in_use{kind="refresh"} 0' in text
    assert "kalkan_origin_cache_budget 7" in text
    assert f'kalkan_origin_refreshes_total{{outcome="started"}} {len(refreshed)}' in text


async def test_the_hottest_stale_page_is_refreshed_before_a_cold_one(
        slow_origin: SlowOrigin, make_edge: EdgeFactory) -> None:
    # Two slots, half of them for the cache under attack: one refresh or miss at a time.
    edge = await make_edge(slow_origin.url, defense=ALLOW_LOOPBACK,
                           origin={"max_concurrency": 2, "headroom": 0.5})
    port = port_of(edge)
    await stale_pages(edge, ["/d50/cold", "/d50/hot"])
    await attack(edge)
    del slow_origin.seen[:]
    busy = asyncio.ensure_future(fetch(port, "/d800/busy"))  # holds the cache's one slot
    await until(lambda: slow_origin.seen == ["/d800/busy"])
    cold = await fetch(port, "/d50/cold")
    hot = [await fetch(port, "/d50/hot") for _ in range(5)]
    # Readers were not kept waiting: the stale copies stood in while the refreshes waited.
    assert cold.header("X-Cache") == "STALE" and all(r.header("X-Cache") == "STALE" for r in hot)
    deferred = edge.pipeline.fill.deferred
    assert deferred.hits(key("/d50/hot")) == 5 and deferred.hits(key("/d50/cold")) == 1
    assert (await busy).status == 200
    await until(lambda: len(slow_origin.seen) == 3)
    assert slow_origin.seen == ["/d800/busy", "/d50/hot", "/d50/cold"]
    await until(lambda: (edge.pipeline.upstream.gate.active == 0
                         and not edge.pipeline.misses.inflight))
    fresh = await fetch(port, "/d50/hot")
    assert fresh.header("X-Cache") == "HIT"
    text = await metrics(edge)
    assert 'kalkan_origin_refreshes_total{outcome="deferred"} 2' in text
    assert 'kalkan_origin_refreshes_total{outcome="started"} 2' in text


async def _queued_behind(edge: Edge, slow_origin: SlowOrigin, path: str) -> Client:
    """A reader whose request for `path` waits in the gate's queue (one slot, held)."""
    client = await Client.connect(port_of(edge))
    client.send(f"GET {path} HTTP/1.1\r\nHost: news.example\r\n\r\n".encode())
    await until(lambda: edge.pipeline.upstream.gate.queued >= 1)
    return client


async def test_a_reader_who_leaves_while_queued_never_reaches_the_origin(
        slow_origin: SlowOrigin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(slow_origin.url, origin={"max_concurrency": 1})
    port = port_of(edge)
    first = asyncio.ensure_future(fetch(port, "/d700/first"))
    await until(lambda: slow_origin.seen == ["/d700/first"])
    leaving = await _queued_behind(edge, slow_origin, "/left")
    await leaving.close()
    # Dropped from the queue within a second (the sweep), at the latest when its turn comes.
    await until(lambda: edge.pipeline.upstream.gate.queued == 0, timeout=3.0)
    assert (await first).status == 200
    after = await fetch(port, "/after")       # the slot went on to readers still there
    assert after.status == 200
    assert slow_origin.seen == ["/d700/first", "/after"]
    assert edge.pipeline.upstream.gate.left == 1
    line = next(e for e in access_log(edge) if e["path"] == "/left")
    assert line["status"] == 499 and line["reason"] == "client_left"
    assert "kalkan_gate_client_left_total 1" in await metrics(edge)


async def test_a_request_queued_in_peace_is_judged_when_its_turn_comes_under_attack(
        slow_origin: SlowOrigin, make_edge: EdgeFactory) -> None:
    # A flood's first requests queue for the origin before the threat level rises; when their
    # turn comes the level has risen, and the defence is asked then (here, with behaviour
    # scoring off, every client without a pass meets the challenge under attack).
    edge = await make_edge(slow_origin.url, origin={"max_concurrency": 1},
                           defense={"enabled": True, "behaviour": False})
    port = port_of(edge)
    first = asyncio.ensure_future(fetch(port, "/d700/first"))
    await until(lambda: slow_origin.seen == ["/d700/first"])
    queued = await _queued_behind(edge, slow_origin, "/queued")
    await attack(edge)
    try:
        resp = await queued.read_response()
    finally:
        await queued.close()
    assert resp.status == 403   # the challenge page
    assert (await first).status == 200
    assert slow_origin.seen == ["/d700/first"]   # the queued request never reached it
    line = next(e for e in access_log(edge) if e["path"] == "/queued")
    assert line["decision"] == "challenge:attack_mode"
    assert 'kalkan_origin_requests_total{outcome="rejudged"} 1' in await metrics(edge)


async def test_an_http2_stream_reset_while_queued_never_reaches_the_origin(
        slow_origin: SlowOrigin, make_edge: EdgeFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "site.pem"
    ca.issue_cert(NAME).private_key_and_cert_chain_pem.write_to_path(str(pem))
    edge = await make_edge(slow_origin.url, origin={"max_concurrency": 1},
                           tls={"certificates": [{"cert": str(pem), "key": str(pem)}]})
    client = await H2Client.connect(port_of(edge), ca)
    try:
        first = asyncio.ensure_future(client.request("GET", "/d700/first"))
        await until(lambda: slow_origin.seen == ["/d700/first"])
        sid = client.conn.get_next_available_stream_id()
        client.replies[sid] = Reply()
        client.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                       (":authority", NAME), (":path", "/left")],
                                 end_stream=True)
        client.flush()
        await until(lambda: edge.pipeline.upstream.gate.queued == 1)
        client.conn.reset_stream(sid)
        client.flush()
        await until(lambda: edge.pipeline.upstream.gate.queued == 0)
        assert (await first).status == 200
        assert (await client.request("GET", "/after")).status == 200
    finally:
        await client.close()
    assert slow_origin.seen == ["/d700/first", "/after"]
    assert edge.pipeline.upstream.gate.left == 1
    line = next(e for e in access_log(edge) if e["path"] == "/left")
    assert line["status"] == 499 and line["reason"] == "client_left"


async def test_a_fetch_others_wait_on_keeps_its_place_when_its_reader_leaves(
        slow_origin: SlowOrigin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(slow_origin.url, origin={"max_concurrency": 1})
    port = port_of(edge)
    first = asyncio.ensure_future(fetch(port, "/d700/first"))
    await until(lambda: slow_origin.seen == ["/d700/first"])
    leader = await _queued_behind(edge, slow_origin, "/shared")
    follower = asyncio.ensure_future(fetch(port, "/shared"))
    await until(lambda: edge.pipeline.misses.followed(key("/shared")))
    await leader.close()
    assert (await first).status == 200
    shared = await follower
    assert shared.status == 200 and shared.body == b"page /shared"
    assert slow_origin.seen == ["/d700/first", "/shared"]
    assert edge.pipeline.upstream.gate.left == 0


async def test_in_peace_the_origin_gets_all_its_slots_and_refreshes_run_at_once(
        slow_origin: SlowOrigin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(slow_origin.url, defense=ALLOW_LOOPBACK,
                           origin={"max_concurrency": 10, "headroom": 0.7, "queue_size": 200})
    port = port_of(edge)
    pages = [f"/d50/page{i}" for i in range(4)]
    await stale_pages(edge, pages)
    results = await asyncio.gather(*(fetch(port, f"/miss{i}") for i in range(25)))
    assert all(r.status == 200 for r in results)
    assert slow_origin.max_gets == 10   # no budget in peace: every slot is the cache's
    # An expired page in peace is fetched for its reader (revalidated), not served stale.
    again = await fetch(port, pages[0])
    assert again.status == 200 and again.header("X-Cache") != "STALE"
    assert edge.pipeline.upstream.gate.max_cache == 0
    text = await metrics(edge)
    assert "kalkan_origin_cache_budget 10" in text
    assert 'kalkan_origin_refreshes_total{outcome="deferred"} 0' in text


async def test_stopping_under_attack_starts_no_deferred_refresh(
        slow_origin: SlowOrigin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(slow_origin.url, defense=ALLOW_LOOPBACK,
                           origin={"max_concurrency": 2, "headroom": 0.5})
    port = port_of(edge)
    await stale_pages(edge, ["/d50/a", "/d50/b"])
    await attack(edge)
    del slow_origin.seen[:]
    busy = asyncio.ensure_future(fetch(port, "/d800/busy"))
    await until(lambda: slow_origin.seen == ["/d800/busy"])
    for path in ("/d50/a", "/d50/b"):
        assert (await fetch(port, path)).header("X-Cache") == "STALE"
    assert len(edge.pipeline.fill.deferred) == 2
    await edge.stop()        # the busy fetch finishes (a graceful stop); its slot starts nothing
    assert (await busy).status == 200
    await asyncio.sleep(0.3)
    assert slow_origin.seen == ["/d800/busy"]
    assert len(edge.pipeline.fill.deferred) == 0
    assert not edge.pipeline.misses.background
