"""Three newsrooms' edges on loopback, allied: a botnet blocked at A is refused at B (trust
block) before any of its requests reaches B's origin, C (trust observe) only counts it; a
forged feed is refused and logged; an ally's entry for C's allowlisted address is ignored."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from kalkan.alliance.feed import Entry
from kalkan.alliance.identity import Identity, Publisher
from kalkan.alliance.poller import AllyConfig, save_allies
from kalkan.alliance.service import FEED_PATH
from kalkan.edge.app import Edge
from support import Client, EdgeFactory, Origin, Response, origin_stats, port_of

UA = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) reader"}


async def get(port: int, target: str, source: str) -> Response:
    client = await Client.connect(port, local_addr=(source, 0))
    try:
        return await client.request("GET", target, UA)
    finally:
        await client.close()


async def until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout, "condition not met in time"
        await asyncio.sleep(0.02)


def newsroom(tmp_path: Path, name: str) -> tuple[Path, Identity]:
    state = tmp_path / name
    return state, Identity.create(state / "alliance" / "identity.json", name)


async def test_a_botnet_blocked_at_one_newsroom_is_refused_by_its_allies(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    state_a, id_a = newsroom(tmp_path, "newsroom-a")
    state_b, _ = newsroom(tmp_path, "newsroom-b")
    state_c, _ = newsroom(tmp_path, "newsroom-c")
    fast = {"poll_interval": 1.0}
    a = await make_edge(origin.url, defense={"enabled": True}, alliance=fast,
                        state_dir=str(state_a), cache_dir=None)
    feed = f"http://127.0.0.1:{port_of(a)}{FEED_PATH}"
    save_allies(state_b / "alliance" / "allies.json",
                [AllyConfig("newsroom-a", feed, id_a.public_text, "block")])
    save_allies(state_c / "alliance" / "allies.json",
                [AllyConfig("newsroom-a", feed, id_a.public_text, "observe")])
    b = await make_edge(origin.url, defense={"enabled": True, "allow": ["127.0.62.9"]},
                        alliance=fast, state_dir=str(state_b), cache_dir=None)
    c = await make_edge(origin.url, defense={"enabled": True},
                        alliance=fast, state_dir=str(state_c), cache_dir=None)
    # The botnet floods A's search (and so does B's own newsroom office, allowlisted at B):
    # A's rules refuse each address.
    bots = [f"127.0.60.{i}" for i in range(1, 5)]
    for bot in [*bots, "127.0.62.9"]:
        for i in range(70):
            await get(port_of(a), f"/search?q={bot}-{i}", bot)
    assert all(a.pipeline.defense.decisions.lookup(bot, "127.0.60.0/24", time.time())
               for bot in bots)  # type: ignore[union-attr]
    # The feed is judged as any request: a blocked client does not get it.
    a.pipeline.defense.decisions.add(  # type: ignore[union-attr]
        "127.0.63.1", "block", 600, "hammered the feed", "manual", time.time())
    assert (await get(port_of(a), FEED_PATH, "127.0.63.1")).status == 403
    assert (await get(port_of(a), FEED_PATH, "127.0.63.2")).status == 200
    # Within a poll interval (1 s here, 10 s by default) B holds them (the four addresses of
    # one /24 shared as the /24): the botnet, moving on to B, never reaches B's origin.
    await until(lambda: all(b.pipeline.defense.decisions.lookup(  # type: ignore[union-attr]
        bot, "127.0.60.0/24", time.time()) is not None for bot in bots))
    before = (await origin_stats(origin))["requests"]
    for bot in bots:
        assert (await get(port_of(b), f"/search?q=b-{bot}", bot)).status == 403
    assert (await origin_stats(origin))["requests"] == before
    decision = b.pipeline.defense.decisions.lookup(bots[0], "127.0.60.0/24", time.time())
    assert decision.origin == "ally" and decision.reason.startswith("ally newsroom-a:")
    # C only observes: the botnet's first request there is served.
    await asyncio.sleep(2.5)
    assert (await get(port_of(c), "/search?q=c", bots[1])).status == 200
    assert c.together.alliance.poller.allies[0].accepted >= 1  # type: ignore[union-attr]
    assert 'kalkan_alliance_agreement{ally="newsroom-a"} 0' in c.pipeline.metrics.render()
    # A refuses 127.0.62.9 too, but B has it on its allowlist: never refused at B.
    assert b.pipeline.defense.decisions.lookup(  # type: ignore[union-attr]
        "127.0.62.9", "127.0.62.0/24", time.time()) is None
    assert (await get(port_of(b), "/search?q=office", "127.0.62.9")).status == 200


async def test_a_forged_feed_changes_nothing_and_is_logged(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    state_a, id_a = newsroom(tmp_path, "newsroom-a")
    state_b, _ = newsroom(tmp_path, "newsroom-b")
    mallory_state, mallory = newsroom(tmp_path, "mallory")
    # Mallory serves a feed "from newsroom-a" signed with her own key.
    forged = Publisher(mallory).current(
        [Entry("127.0.61.0/24", "block", "readers", time.time(), 1, time.time() + 600)])[0]
    feed_file = tmp_path / "forged.json"
    feed_file.write_bytes(forged)
    from kalkan.mirror.serve import serve_in_thread

    server, thread = serve_in_thread(tmp_path)
    try:
        save_allies(state_b / "alliance" / "allies.json", [AllyConfig(
            "newsroom-a", f"http://127.0.0.1:{server.server_address[1]}/forged.json",
            id_a.public_text, "block")])
        with caplog.at_level(logging.ERROR, "kalkan.alliance"):
            b = await make_edge(origin.url, defense={"enabled": True},
                                alliance={"poll_interval": 1.0}, state_dir=str(state_b),
                                cache_dir=None)
            await until(lambda: b.together.alliance.poller.allies[0].refused > 0)  # type: ignore[union-attr]
        assert "unknown key" in caplog.text
        assert 'kalkan_alliance_feeds_total{outcome="refused"}' in b.pipeline.metrics.render()
        assert (await get(port_of(b), "/", "127.0.61.5")).status == 200
        assert json.loads(forged)["format"] == "kalkan-feed/1"
    finally:
        server.shutdown()
        thread.join(5)
    assert isinstance(b, Edge) and mallory_state.exists() and state_a.exists()
