"""Behaviour scoring over real sockets: a flash crowd of readers on a cold cache with a struggling
origin raises no challenge, and under attack a reader-imitating bot is challenged on its searches
while a reader beside it reads on."""

from __future__ import annotations

import asyncio
import random
import re

from kalkan.demo import content
from support import Client, EdgeFactory, access_log, port_of, start_origin

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0"
_ASSET = re.compile(rb'(?:src|href)="(/assets/[^"]+)"')


class Browser:
    """One reader's browser on one keep-alive connection: pages, their assets, a Referer."""

    def __init__(self, client: Client, port: int) -> None:
        self.client, self.port = client, port
        self.referer = ""
        self.statuses: list[int] = []
        self.challenged = 0

    @classmethod
    async def open(cls, port: int, source: str) -> Browser:
        return cls(await Client.connect(port, local_addr=(source, 0)), port)

    async def get(self, target: str) -> bytes:
        headers = {"User-Agent": BROWSER, "Accept": "text/html,*/*;q=0.8",
                   "Accept-Language": "ru-RU,ru;q=0.9"}
        if self.referer:
            headers["Referer"] = self.referer
        resp = await self.client.request("GET", target, headers)
        self.statuses.append(resp.status)
        self.challenged += resp.header("X-Kalkan-Challenge") is not None
        return resp.body

    async def read(self, path: str) -> None:
        body = await self.get(path)
        self.referer = f"http://news.example{path}"   # (the Host it sends)
        for asset in dict.fromkeys(_ASSET.findall(body)):
            await self.get(asset.decode())

    async def close(self) -> None:
        await self.client.close()


async def test_a_flash_crowd_on_a_cold_cache_raises_no_challenge(
        make_edge: EdgeFactory) -> None:
    # An origin that can render two pages at a time, 150 ms each: the crowd saturates it.
    origin = await start_origin(workers=2, page_cost=0.15, cache_headers=False)
    try:
        edge = await make_edge(origin.url, defense={"enabled": True},
                               origin={"max_concurrency": 2})
        port = port_of(edge)
        defense = edge.pipeline.defense
        rng = random.Random(9)

        async def reader(i: int) -> Browser:
            await asyncio.sleep(rng.uniform(0, 2.0))
            browser = await Browser.open(port, f"127.0.50.{i + 1}")
            try:
                await browser.read("/" if i % 2 else "/ru/")
                for _ in range(3):
                    await asyncio.sleep(rng.uniform(0.2, 1.0))
                    await browser.read(rng.choice(content.ARTICLES).path)
            finally:
                await browser.close()
            return browser

        crowd = await asyncio.gather(*(reader(i) for i in range(80)))
        for _ in range(3):  # the signals of the crowd's last seconds
            await asyncio.sleep(1.0)
        signals = defense.attack.signals  # type: ignore[union-attr]
        assert signals is not None and signals.behaviour
        challenged = [d for d in access_log(edge) if d["decision"].startswith("challenge")]
        assert not challenged, challenged[:5]
        assert sum(b.challenged for b in crowd) == 0
        assert all(s == 200 for b in crowd for s in b.statuses)
        assert defense.challenges.issued == 0  # type: ignore[union-attr]
        assert defense.threat_level <= 1, defense.attack.reason  # type: ignore[union-attr]
    finally:
        await origin.site.stop()


async def test_under_attack_an_imitator_is_challenged_on_search_and_a_reader_reads_on(
        make_edge: EdgeFactory) -> None:
    origin = await start_origin(cache_headers=False)
    try:
        edge = await make_edge(origin.url, defense={"enabled": True, "attack_mode": "on"})
        port = port_of(edge)
        reader = await Browser.open(port, "127.0.51.1")
        imitator = await Browser.open(port, "127.0.51.2")
        try:
            rng = random.Random(3)
            await imitator.read("/")          # it arrives like a browser: the page, its assets
            await reader.read("/")
            for i in range(12):
                await imitator.get(f"/search?s={rng.random():.8f}")   # then it digs
                await reader.read(content.ARTICLES[i % len(content.ARTICLES)].path)
            assert imitator.challenged > 0
            assert reader.challenged == 0 and all(s == 200 for s in reader.statuses)
        finally:
            await reader.close()
            await imitator.close()
        lines = [d for d in access_log(edge) if d.get("client") == "127.0.51.2"]
        challenges = [d["decision"] for d in lines if d["decision"].startswith("challenge:")]
        # The score caught it first (the search-rate rule may add its own decision later).
        assert challenges and challenges[0].startswith("challenge:behaviour:")
        assert "=" in challenges[0]   # names the features that weighed, with their values
    finally:
        await origin.site.stop()


async def test_a_flood_of_new_clients_never_holds_the_origin_a_known_reader_needs(
        make_edge: EdgeFactory) -> None:
    # In peace, before anything is recognised as an attack: 12 new addresses each POST a slow
    # form. Clients the edge does not know share origin.headroom of its 4 slots (2); a reader
    # who has been reading (a page, its assets) takes one of the others at once.
    from test_headroom import SlowOrigin

    origin = SlowOrigin()
    await origin.start()
    try:
        edge = await make_edge(origin.url, defense={"enabled": True},
                               origin={"max_concurrency": 4, "headroom": 0.7, "queue_size": 8})
        port = port_of(edge)
        reader = await Browser.open(port, "127.0.60.1")
        for path in ("/d10/", "/assets/site.css", "/assets/site.js", "/assets/logo.png"):
            await reader.get(path)
        flood = [Client.connect(port, local_addr=(f"127.0.61.{i + 1}", 0)) for i in range(12)]
        bots = await asyncio.gather(*flood)
        looks = {"User-Agent": BROWSER, "Accept": "text/html,*/*;q=0.8",
                 "Accept-Language": "ru-RU,ru;q=0.9",
                 "Content-Type": "application/x-www-form-urlencoded"}
        posts = [asyncio.ensure_future(bot.request("POST", "/d1500/comments", looks, b"x=1"))
                 for bot in bots]
        gate = edge.pipeline.upstream.gate
        deadline = asyncio.get_running_loop().time() + 5.0
        while gate.open_in_use < 2 or gate.queued < 8:
            assert asyncio.get_running_loop().time() < deadline, "the flood never queued"
            await asyncio.sleep(0.02)
        t0 = asyncio.get_running_loop().time()
        await reader.get("/d10/news/today")           # a miss, while the flood waits
        waited = asyncio.get_running_loop().time() - t0
        answers = await asyncio.gather(*posts)
        await asyncio.gather(reader.close(), *(bot.close() for bot in bots))
    finally:
        await origin.stop()
    assert reader.statuses == [200] * 5 and waited < 1.0
    assert gate.max_open == 2 and origin.max_in_flight <= 3
    # Two found the queue full; the rest were answered two at a time, as long as the queue's
    # timeout let them wait (503 after it).
    statuses = [a.status for a in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 6 and gate.shed >= 2
