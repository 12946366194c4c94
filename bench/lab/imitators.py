"""Bots that imitate readers: each arrives like a browser (home page, then the assets it
references, cookies kept, the proof-of-work solved when challenged, a reader's user agent and
header order, random pauses), then spends its visit on what costs the origin: searches and
cache-busting page variants, with an ordinary article now and then for cover.

They are the `imitate` tactic of bench/lab/attacks.py and count into its per-second bins; the
browser they drive is the readers' own `Client`, so nothing on the wire tells them from a reader
but what they ask for and how often.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from bench.lab.net import Response, now
from bench.lab.readers import LANGUAGES, SEARCH_WORDS, Client, ReaderPlan
from kalkan.demo import content

if TYPE_CHECKING:
    from bench.lab.attacks import Attacker

_ASSET = re.compile(rb'(?:src|href)="(/assets/[^"]+)"')
SEARCH_SHARE, BUST_SHARE = 0.5, 0.3
"""Of an imitator's requests after its arrival: searches, cache-busting variants; the rest are
plain articles."""


class Imitator:
    """One reader-imitating bot of a wave: one address, one browser, one cookie jar."""

    def __init__(self, attacker: Attacker, bot: int) -> None:
        self.attacker, self.bot = attacker, bot
        wave = attacker.wave
        rng = attacker.rng
        self.pause_s = wave.bots / max(wave.rate, 1e-9)   # mean seconds between its requests
        self.address = attacker.address(bot)
        attacker.used[wave.label].add(self.address)
        _, accept = rng.choice(LANGUAGES)
        plan = ReaderPlan(timeout_s=wave.timeout_s, fetch_budget_s=wave.timeout_s * 3)
        self.client = Client(attacker.host, attacker.port, self.address,
                             attacker.requests.user_agent(bot), accept, True, plan,
                             attacker.pow_pool if wave.solve_pow else None)
        self._pages = ["/", "/ru/", *(a.path for a in content.ARTICLES)]

    async def run(self) -> None:
        a, rng = self.attacker, self.attacker.rng
        # Arrivals spread over the first pause: the page load (home page and its assets) comes
        # on top of the wave's offered rate, which is what the visit costs afterwards.
        await asyncio.sleep(rng.uniform(0.0, self.pause_s))
        try:
            home = await self.get("/")
            if home is not None and home.status == 200:
                for match in _ASSET.finditer(home.body):
                    await self.get(match.group(1).decode("ascii"))
            while now() < a.end and a.sent < a.max_requests:
                await asyncio.sleep(rng.expovariate(1.0 / self.pause_s))
                await self.get(self.target())
        finally:
            self.client.close()

    def target(self) -> str:
        """What the next request asks for: mostly what costs the origin."""
        rng = self.attacker.rng
        roll = rng.random()
        if roll < SEARCH_SHARE:
            words = " ".join(rng.choices(SEARCH_WORDS, k=2))
            return f"/search?{urlencode({'q': words})}"
        n = rng.randrange(1, 1_000_000)
        if roll < SEARCH_SHARE + BUST_SHARE:
            # Parameters a WordPress cache key keeps (pagination, post id): each one a miss.
            return (f"{rng.choice(self._pages)}?paged={n}" if n & 1 else f"/?p={n}")
        return rng.choice(self._pages)

    async def get(self, target: str) -> Response | None:
        """One request, counted in the wave's bins; a challenge is solved like a browser."""
        a = self.attacker
        if now() >= a.end:
            return None
        a.sent += 1
        a.count("sent")
        try:
            resp = await self.client.send("GET", target)
        except TimeoutError:
            a.count("timeout")
            return None
        except OSError:
            a.count("failed")
            return None
        if a.tally(resp) and self.client.pow_pool is not None:
            try:
                if await self.client._solve_pow(resp):
                    a.count("pow_solved")
            except (OSError, TimeoutError):
                pass
        return resp
