"""The legitimate traffic: reader sessions that browse like people (home page, Zipf-popular
articles, their assets, think time, cookies, challenges solved like a browser or via the no-JS
path), feed readers polling RSS, feed apps polling it with conditional requests, link-preview
bots of messengers and social networks, and a search-engine crawler from its (stand-in) published
range. Every client's address, user agent and kind are kept as the lab's ground truth.

Every request a reader makes is one record: when it started, how long the whole fetch took
(challenge included), its kind, final status, whether it succeeded, whether it was challenged and
what the edge's cache said. Records are what bench/lab/metrics.py turns into numbers.
"""

from __future__ import annotations

import asyncio
import html
import random
import re
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from bench.lab.net import (
    APPS_BASE,
    FEEDS_BASE,
    PREVIEWS_BASE,
    READERS_BASE,
    Connection,
    Response,
    build_request,
    connect,
    crawler_address,
    now,
    spread_address,
)
from kalkan.defense.challenge.pages import challenge_fields
from kalkan.defense.challenge.pow import solve
from kalkan.demo import content

_SEARCH_HABITS = (0.0, 0.0, 0.5, 1.0, 1.0, 3.0)
KINDS = ("page", "asset", "search", "comment", "feed", "crawler", "preview", "app")
"""Record kinds; the first four are readers' own requests (new kinds go at the end: records
store the index)."""
READER_KINDS = frozenset(KINDS[:4])
READER_LIKE_KINDS = frozenset((*KINDS[:5], "preview", "app"))
"""Everything a person reads through: their browser, feed reader, feed app or a link preview in
their messenger (the crawler is the one legitimate client that is not a reader)."""
CH_NONE, CH_POW, CH_NOJS = 0, 1, 2

BROWSERS = (
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
)
TEXT_BROWSER = "Lynx/2.9.0dev.12 libwww-FM/2.14 SSL-MM/1.4.1 GNUTLS/3.7.9"
LANGUAGES = (("en", "en-US,en;q=0.9"), ("ru", "ru-RU,ru;q=0.9,en;q=0.5"),
             ("ky", "ky-KG,ky;q=0.9,ru;q=0.8"))
FEED_AGENTS = ("Feedly/1.0 (+https://feedly.com/poller.html; 1 subscribers)",
               "Tiny Tiny RSS/23.12 (https://tt-rss.org/)", "NetNewsWire (RSS Reader)")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
PREVIEW_AGENTS = (   # link-preview fetchers, as the platforms send them (one /24 each in the lab)
    ("telegram", "TelegramBot (like TwitterBot)"),
    ("facebook", "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"),
    ("twitter", "Twitterbot/1.0"),
    ("whatsapp", "WhatsApp/2.23.20.0 A"),
    ("slack", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"),
    ("discord", "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)"),
    ("vk", "Mozilla/5.0 (compatible; vkShare; +http://vk.com/dev/Share)"),
    ("linkedin", "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient "
                 "+http://www.linkedin.com)"),
)
APP_AGENTS = (       # feed apps and services that poll with If-None-Match / If-Modified-Since
    "Mozilla/5.0 (compatible; Miniflux/2.1.0; +https://miniflux.app)",
    "NetNewsWire (RSS Reader; https://netnewswire.com/)",
    "Feedly/1.0 (+http://www.feedly.com/fetcher.html; 12 subscribers; )",
    "Mozilla/5.0 (compatible; Inoreader/1.0; https://www.inoreader.com; 4 subscribers)",
    "FreshRSS/1.23.1 (Linux; https://freshrss.org)",
    "Feedbin feed-id:1234567 - 3 subscribers",
    "NewsBlur Feed Fetcher - 2 subscribers - https://www.newsblur.com/site/7654321/chyrak",
    "Reeder/5050.3 CFNetwork/1410.0.3 Darwin/22.6.0",
)
SEARCH_WORDS = ("ddos", "som", "bishkek", "library", "internet", "newsroom", "media", "выборы",
                "ярмарка", "интернет", "Issyk-Kul", "statement")
_ASSET = re.compile(rb'(?:src|href)="(/assets/[^"]+)"')
_REFRESH = re.compile(rb'<meta http-equiv="refresh" content="(\d+);url=([^"]+)"')


@dataclass
class ReaderPlan:
    """How much legitimate traffic to make (the lab compresses human time: see think_s)."""

    sessions_per_s: float = 2.0
    pages_mean: float = 4.0          # page views per session (geometric), home page included
    think_s: float = 2.0             # mean pause between page views (exponential)
    nojs_share: float = 0.1          # readers without JavaScript take the no-JS path
    nojs_browser_share: float = 0.5  # ... of whom this share are browsers with JS switched off
    #                                  (they load assets); the others are text browsers
    search_share: float = 0.05       # page views that are a search instead
    comment_share: float = 0.02      # page views followed by a comment
    readers_per_prefix: int = 4      # distinct reader addresses per /24
    feeds: int = 6                   # feed readers
    feed_every_s: float = 5.0
    crawler_per_s: float = 2.0       # one crawler from the stand-in published range
    surge: float = 1.0               # session arrivals x this during the attack window (a
    #                                  flash crowd); 1 = no surge
    previews_per_s: float = 0.0      # link previews (one article page each, no JS, no cookies)
    apps: int = 0                    # feed apps polling /feed/ with conditional requests
    app_every_s: float = 5.0
    address_pool: int = 0            # sessions share this many addresses (CGNAT); 0 = one each
    timeout_s: float = 10.0          # a reader gives up on one request after this long
    fetch_budget_s: float = 30.0     # ... and on one fetch with its challenge after this long
    zipf_s: float = 1.1


Record = list[float]
"""[start, latency_s, kind index, status (0 = error), ok 0/1, challenge 0/1/2, cache index,
client id (a session's id >= 0; negative for the others: -1 the crawler, -100 - i feed reader i,
-200 - i feed app i, -1000 - n the n-th link preview), seconds spent opening connections]"""
Identity = tuple[str, str, str]
"""(source address, user agent, label): who a legitimate client was, for the ground truth."""
CACHE_CODES = ("", "HIT", "MISS", "STALE", "BYPASS", "EXPIRED", "UPDATING", "REVALIDATED")


class Client:
    """One browser-like client: an address, a user agent, a cookie jar and one connection."""

    def __init__(self, host: str, port: int, source: str, user_agent: str, language: str,
                 js: bool, plan: ReaderPlan, pow_pool: Executor | None) -> None:
        self.host, self.port, self.source = host, port, source
        self.user_agent, self.language, self.js = user_agent, language, js
        self.plan = plan
        self.pow_pool = pow_pool
        self.cookies: dict[str, str] = {}
        self.conn: Connection | None = None
        self.challenged = False
        self.connect_s = 0.0     # time spent in TCP connects, for the current fetch
        self.queued_s = 0.0      # time the current fetch's proof-of-work waited for the solver
        self.solves = True       # feed readers and crawlers cannot pass challenges
        self.keeps_cookies = True  # link previews and feed apps send none back
        self.extra: list[tuple[str, str]] = []   # sent with the next request only
        self.referer = ""        # the page a browser is on: sent with its assets and next link

    async def send(self, method: str, target: str, body: bytes = b"") -> Response:
        """One request on the keep-alive connection (reopened once if the server closed it)."""
        headers = [("User-Agent", self.user_agent), ("Accept", "text/html,*/*;q=0.8"),
                   ("Accept-Language", self.language)]
        if self.cookies:
            headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        if self.referer:
            headers.append(("Referer", self.referer))
        if self.extra:
            headers += self.extra
            self.extra = []
        if body:
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
        raw = build_request(method, target, self.host, headers, body)
        for attempt in (0, 1):
            fresh = self.conn is None or self.conn.closed
            if fresh:
                opened = now()
                self.conn = await connect(self.host, self.port, self.source,
                                          timeout=self.plan.timeout_s)
                self.connect_s += now() - opened
            assert self.conn is not None
            try:
                resp = await self.conn.request(raw, self.plan.timeout_s)
            except ConnectionError:
                if fresh or attempt:
                    raise
                continue  # keep-alive may end between requests: retry on a new connection
            for cookie in resp.set_cookies if self.keeps_cookies else ():
                name, _, rest = cookie.decode("latin-1").partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
            return resp
        raise ConnectionError("unreachable")

    async def fetch(self, method: str, target: str, kind: int, sid: int, out: list[Record],
                    body: bytes = b"") -> Response | None:
        """Fetch like a browser (passing a challenge when one comes) and record the outcome."""
        started = now()
        self.connect_s = self.queued_s = 0.0
        challenge = CH_NONE
        resp: Response | None = None
        try:
            async with asyncio.timeout(self.plan.fetch_budget_s) as budget:
                resp = await self.send(method, target, body)
                for _ in range(3):
                    if resp.status != 403 or b"x-kalkan-challenge" not in resp.headers:
                        break
                    challenge = CH_POW if self.js else CH_NOJS
                    self.challenged = True
                    waited = self.queued_s
                    if not self.solves or not await self._pass(resp):
                        break
                    # Waiting for the lab's shared solver is not the reader's time (see
                    # timed_solve): it neither counts against the budget nor as latency.
                    when = budget.when()
                    if when is not None:
                        budget.reschedule(when + self.queued_s - waited)
                    resp = await self.send(method, target, body)  # the browser goes back
        except (OSError, TimeoutError):
            resp = None
        status = resp.status if resp is not None else 0
        ok = 200 <= status < 400 or (kind == KINDS.index("comment") and status == 422)
        cache = resp.header(b"x-cache").upper() if resp is not None else ""
        out.append([started, now() - started - self.queued_s, kind, status, int(ok), challenge,
                    CACHE_CODES.index(cache) if cache in CACHE_CODES else 0, sid,
                    round(self.connect_s, 4)])
        return resp

    async def _pass(self, page: Response) -> bool:
        return await (self._solve_pow(page) if self.js else self._wait_nojs(page))

    async def _solve_pow(self, page: Response) -> bool:
        fields = challenge_fields(page.body)
        if fields is None or self.pow_pool is None:
            return False
        challenge, difficulty, ret = fields
        loop = asyncio.get_running_loop()
        submitted = now()
        nonce, cpu_s = await loop.run_in_executor(self.pow_pool, timed_solve, challenge,
                                                  difficulty)
        self.queued_s += max(0.0, now() - submitted - cpu_s)
        answer = await self.send(
            "GET", f"/.kalkan/pow?c={quote(challenge, safe='')}&n={nonce}&r={quote(ret, safe='')}")
        return answer.status == 303 and bool(answer.set_cookies)

    async def _wait_nojs(self, page: Response) -> bool:
        for _ in range(3):
            m = _REFRESH.search(page.body)
            if m is None:
                return False
            await asyncio.sleep(int(m.group(1)) + 0.1)
            page = await self.send("GET", html.unescape(m.group(2).decode("ascii")))
            if page.status == 303:
                return bool(page.set_cookies)
        return False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank ** s) for rank in range(1, n + 1)]


def hot_article() -> str:
    """The most popular article (rank 1 of the Zipf order): what a hot-URL flood targets."""
    return content.ARTICLES[0].path


class Traffic:
    """Runs reader sessions, feed readers and the crawler until the deadline."""

    def __init__(self, host: str, port: int, plan: ReaderPlan, t_end: float, max_requests: int,
                 pow_pool: Executor | None, seed: int = 1,
                 surge_window: tuple[float, float] | None = None) -> None:
        self.host, self.port, self.plan = host, port, plan
        self.t_end, self.max_requests = t_end, max_requests
        self.pow_pool = pow_pool
        self.rng = random.Random(seed)
        self.records: list[Record] = []
        self.sessions: list[list[float]] = []   # [sid, start, js 0/1, challenged 0/1]
        self.identities: set[Identity] = set()
        self.surge_window = surge_window          # lab-clock instants of the flash crowd
        self._weights = _zipf_weights(len(content.ARTICLES), plan.zipf_s)

    def _room(self) -> bool:
        return now() < self.t_end and len(self.records) < self.max_requests

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._arrivals())]
        tasks += [asyncio.create_task(self._feed_reader(i)) for i in range(self.plan.feeds)]
        tasks += [asyncio.create_task(self._feed_app(i)) for i in range(self.plan.apps)]
        if self.plan.previews_per_s > 0:
            tasks.append(asyncio.create_task(self._previews()))
        if self.plan.crawler_per_s > 0:
            tasks.append(asyncio.create_task(self._crawler()))
        try:
            await asyncio.sleep(max(0.0, self.t_end - now()))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _arrivals(self) -> None:
        sessions: set[asyncio.Task[None]] = set()
        sid = 0
        try:
            while self._room():
                task = asyncio.create_task(self._session(sid))
                sessions.add(task)
                task.add_done_callback(sessions.discard)
                sid += 1
                await asyncio.sleep(self.rng.expovariate(self.arrival_rate(now())))
            await asyncio.sleep(max(0.0, self.t_end - now()))
        finally:
            for task in list(sessions):
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)

    def arrival_rate(self, t: float) -> float:
        """Reader sessions per second at lab instant *t* (x surge inside the surge window)."""
        window = self.surge_window
        if window is not None and window[0] <= t < window[1]:
            return self.plan.sessions_per_s * self.plan.surge
        return self.plan.sessions_per_s

    async def _session(self, sid: int) -> None:
        rng, plan = self.rng, self.plan
        js = rng.random() >= plan.nojs_share
        lang, accept = rng.choice(LANGUAGES)
        # Without JavaScript: a browser with it switched off (it still loads stylesheets and
        # images) or a text browser (it loads nothing but the page).
        js_off_browser = not js and rng.random() < plan.nojs_browser_share
        ua = rng.choice(BROWSERS) if js or js_off_browser else TEXT_BROWSER
        loads_assets = js or js_off_browser
        slot = sid % plan.address_pool if plan.address_pool > 0 else sid
        source = spread_address(READERS_BASE, slot, plan.readers_per_prefix)
        self.identities.add((source, ua, "reader" if js else "reader-nojs"))
        client = Client(self.host, self.port, source, ua, accept, js, plan, self.pow_pool)
        entry = [float(sid), now(), float(js), 0.0]
        self.sessions.append(entry)
        seen_assets: set[str] = set()   # the browser's own cache: each asset once a session
        views = 1 + int(rng.expovariate(1.0 / max(plan.pages_mean - 1, 0.01)))
        # Readers differ: most never search, some come to dig in the archive (up to 6x the
        # plan's share); the mean stays near the plan's.
        search_share = plan.search_share * rng.choice(_SEARCH_HABITS)
        try:
            for view in range(views):
                if not self._room():
                    break
                if view and rng.random() < search_share:
                    q = urlencode({"q": rng.choice(SEARCH_WORDS)})
                    await client.fetch("GET", f"/search?{q}", 2, sid, self.records)
                else:
                    path = ("/ru/" if lang != "en" else "/") if view == 0 else \
                        rng.choices(content.ARTICLES, self._weights)[0].path
                    page = await client.fetch("GET", path, 0, sid, self.records)
                    if page is not None and page.status == 200:
                        client.referer = f"http://{self.host}:{self.port}{path}"
                        if loads_assets:
                            await self._assets(client, page.body, seen_assets, sid)
                    if view and rng.random() < plan.comment_share:
                        await self._comment(client, path, sid)
                entry[3] = float(client.challenged)
                await asyncio.sleep(rng.expovariate(1.0 / plan.think_s))
        finally:
            entry[3] = float(client.challenged)
            client.close()

    async def _assets(self, client: Client, body: bytes, seen: set[str], sid: int) -> None:
        for match in _ASSET.finditer(body):
            path = match.group(1).decode("ascii")
            if path not in seen and self._room():
                seen.add(path)
                await client.fetch("GET", path, 1, sid, self.records)

    async def _comment(self, client: Client, path: str, sid: int) -> None:
        slug = path.strip("/").split("/")[-1]
        form = urlencode({"article": slug, "author": "Reader", "comment": "Thank you."})
        await client.fetch("POST", "/comments", 3, sid, self.records, form.encode())

    async def _feed_reader(self, index: int) -> None:
        source = spread_address(FEEDS_BASE, index, 1)
        ua = FEED_AGENTS[index % len(FEED_AGENTS)]
        self.identities.add((source, ua, "feed"))
        client = Client(self.host, self.port, source, ua, "en", False, self.plan, None)
        client.solves = False
        await asyncio.sleep(self.rng.uniform(0, self.plan.feed_every_s))
        try:
            while self._room():
                await client.fetch("GET", "/feed/", 4, -100 - index, self.records)
                await asyncio.sleep(self.plan.feed_every_s)
        finally:
            client.close()

    async def _feed_app(self, index: int) -> None:
        """A feed app or service: polls /feed/ and sends back the validators it was given, so
        an unchanged feed costs a 304; it keeps no cookies and cannot pass a challenge."""
        source = spread_address(APPS_BASE, index, 1)
        ua = APP_AGENTS[index % len(APP_AGENTS)]
        self.identities.add((source, ua, "app"))
        client = Client(self.host, self.port, source, ua, "en", False, self.plan, None)
        client.solves = client.keeps_cookies = False
        etag = modified = ""
        await asyncio.sleep(self.rng.uniform(0, self.plan.app_every_s))
        try:
            while self._room():
                if etag:
                    client.extra.append(("If-None-Match", etag))
                if modified:
                    client.extra.append(("If-Modified-Since", modified))
                resp = await client.fetch("GET", "/feed/", KINDS.index("app"), -200 - index,
                                          self.records)
                if resp is not None and resp.status == 200:
                    etag, modified = resp.header(b"etag"), resp.header(b"last-modified")
                await asyncio.sleep(self.plan.app_every_s * self.rng.uniform(0.8, 1.2))
        finally:
            client.close()

    async def _previews(self) -> None:
        """Link previews: someone posts an article in a messenger or a social network and the
        platform's fetcher reads that one page once (no JS, no cookies, no assets), from one of
        a few addresses of the platform's own /24."""
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        try:
            while self._room():
                await asyncio.sleep(self.rng.expovariate(self.plan.previews_per_s))
                task = asyncio.create_task(self._preview(n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _preview(self, n: int) -> None:
        rng = self.rng
        platform = rng.randrange(len(PREVIEW_AGENTS))
        name, ua = PREVIEW_AGENTS[platform]
        source = spread_address(PREVIEWS_BASE, platform * 8 + rng.randrange(8), 8)
        self.identities.add((source, ua, "preview"))
        client = Client(self.host, self.port, source, ua, "en", False, self.plan, None)
        client.solves = client.keeps_cookies = False
        article = rng.choices(content.ARTICLES, self._weights)[0].path
        # Shared links often carry the platform's tracking parameter.
        target = article + (f"?utm_source={name}" if rng.random() < 0.3 else "")
        try:
            await client.fetch("GET", target, KINDS.index("preview"), -1000 - n, self.records)
        finally:
            client.close()

    async def _crawler(self) -> None:
        paths = ["/robots.txt", "/sitemap.xml", "/", "/ru/", "/feed/",
                 *(a.path for a in content.ARTICLES)]
        self.identities.add((crawler_address(7), GOOGLEBOT, "crawler"))
        client = Client(self.host, self.port, crawler_address(7), GOOGLEBOT, "en", False,
                        self.plan, None)
        client.solves = False
        i = 0
        try:
            while self._room():
                await client.fetch("GET", paths[i % len(paths)], 5, -1, self.records)
                i += 1
                await asyncio.sleep(1.0 / self.plan.crawler_per_s)
        finally:
            client.close()


def timed_solve(challenge: str, difficulty: int) -> tuple[str, float]:
    """Solve in the proof-of-work process; also return the CPU seconds it took.

    Every reader's browser has its own CPU, but the lab's readers share one solver process:
    when several readers are challenged at once, a solve waits for the others. The reader
    charges itself only its own solve time, as if it had solved on its own device.
    """
    started = time.process_time()
    nonce = solve(challenge, difficulty)
    return nonce, time.process_time() - started


def warm_pool(pool: Executor) -> None:
    """Start the proof-of-work worker before the clock runs (its start-up is not a reader's)."""
    pool.submit(solve, "warm-up", 4).result(timeout=60)
