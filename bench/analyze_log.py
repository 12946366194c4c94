"""A realistic Kalkan access log, generated: readers browsing (pages, assets, feeds, a comment
now and then) through a whole period, and an attack in the middle of it by botnets of loopback
addresses (a search flood, cache-busting, a login flood) that the edge first lets through and
then, after a mitigation delay, challenges or blocks. Used by bench/analyze_speed.py, by the
tests of `kalkan analyze` and for the report's screenshot in docs/.

Lines are written as the edge writes them (observe/access_log.py), with millisecond times and
the `query`, `ua` and `referer` fields, or in the older form (`legacy`: seconds only, no such
fields).
"""

from __future__ import annotations

import gzip
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

START = 1796446276.0  # 2026-12-05T04:51:16Z

_BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 YaBrowser/24.12.0.0 Safari/537.36",
)
_FEED_UA = "Miniflux/2.2.3 (+https://miniflux.app)"
_ARTICLES = tuple(f"/news/2026/12/{slug}/" for slug in (
    "media-community-statement-ddos", "exchange-rates", "parliament-session", "bishkek-air",
    "election-commission", "court-hearing", "investigation-part-2", "snowfall", "budget-2027",
    "interview-ombudsman", "football-cup", "osh-market"))
_ASSETS = ("/static/site.css", "/static/site.js", "/static/logo.svg", "/static/fonts/pt.woff2",
           "/wp-content/uploads/2026/12/photo.jpg")
_WORDS = ("kloop", "akyikat", "ddos", "bishkek", "factcheck", "president", "court", "osh",
          "election", "dollar", "som", "news", "статья")


@dataclass
class BotGroup:
    """One botnet: its addresses are `count` hosts spread over `prefixes` (/24s, "127.66.1")."""

    name: str
    count: int
    prefixes: tuple[str, ...]
    kind: str                  # search | cachebust | login
    share: float               # of the attack's lines
    ua: str | None
    after: str                 # what the edge does once mitigating: challenge | block | hit

    def addresses(self) -> list[str]:
        out = []
        for i in range(self.count):
            prefix = self.prefixes[i % len(self.prefixes)]
            out.append(f"{prefix}.{i // len(self.prefixes) % 254 + 1}")
        return out


def default_bots() -> list[BotGroup]:
    return [
        BotGroup("search flood", 2000, tuple(f"127.66.{i}" for i in range(16)), "search", 0.55,
                 _BROWSERS[0], "challenge"),
        BotGroup("cache-busters", 400, tuple(f"127.77.{i}" for i in range(4)), "cachebust", 0.35,
                 "python-requests/2.32.3", "hit"),
        BotGroup("login flood", 120, ("127.88.0",), "login", 0.10, None, "block"),
    ]


@dataclass
class Scenario:
    lines: int = 100_000
    seconds: float = 300.0
    start: float = START
    readers: int = 150
    reader_prefixes: tuple[str, ...] = ("127.10.0", "127.10.1", "127.10.2")
    bots: list[BotGroup] = field(default_factory=default_bots)
    attack_from: float = 0.3        # fraction of the period
    attack_until: float = 0.9
    attack_share: float = 0.8       # of all lines
    mitigation_delay: float = 4.0   # seconds from the attack's first request
    legacy: bool = False            # seconds-only times, no query/ua/referer fields
    seed: int = 1

    @property
    def attack_start(self) -> float:
        return self.start + self.seconds * self.attack_from

    @property
    def attack_end(self) -> float:
        return self.start + self.seconds * self.attack_until

    @property
    def mitigation_start(self) -> float:
        return self.attack_start + self.mitigation_delay


class _Writer:
    def __init__(self, out: TextIO, legacy: bool) -> None:
        self.out = out
        self.legacy = legacy
        self.buf: list[str] = []
        self._sec = -1
        self._stamp = ""

    def line(self, when: float, client: str, method: str, path: str, query: str | None,
             status: int, size: int, cache: str, origin_ms: float | None, decision: str,
             ua: str | None, referer: str | None = None, reason: str = "") -> None:
        sec = int(when)
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        if self.legacy:
            stamp = self._stamp + "Z"
        else:
            stamp = f"{self._stamp}.{int((when - sec) * 1000):03d}Z"
        origin = "null" if origin_ms is None else f"{origin_ms:.1f}"
        extra = ""
        if not self.legacy:
            if query:
                extra += f',"query":"{query}"'
            if ua:
                extra += f',"ua":"{ua}"'
            if referer:
                extra += f',"referer":"{referer}"'
        if reason:
            extra += f',"reason":"{reason}"'
        self.buf.append(
            f'{{"time":"{stamp}","client":"{client}","method":"{method}",'
            f'"host":"news.example","path":"{path}","status":{status},"bytes":{size},'
            f'"cache":"{cache}","origin_ms":{origin},"total_ms":0.21,"decision":"{decision}"'
            f'{extra}}}\n')
        if len(self.buf) >= 4096:
            self.flush()

    def flush(self) -> None:
        self.out.write("".join(self.buf))
        self.buf.clear()


def write(path: str | Path, sc: Scenario) -> dict[str, object]:
    """Writes the log (gzip when the name ends in .gz); what it holds, for checks."""
    rnd = random.Random(sc.seed)
    readers = [f"{sc.reader_prefixes[i % len(sc.reader_prefixes)]}.{i // 3 % 250 + 1}"
               for i in range(sc.readers)]
    reader_ua = [_BROWSERS[i % len(_BROWSERS)] if i % 10 else _FEED_UA
                 for i in range(sc.readers)]
    groups = [(g, g.addresses()) for g in sc.bots]
    attack_secs = max(1e-9, sc.seconds * (sc.attack_until - sc.attack_from))
    bots_per_s = sc.attack_share * sc.lines / attack_secs
    readers_per_s = (1 - sc.attack_share) * sc.lines / sc.seconds
    shares = [g.share for g, _ in groups]
    opener = gzip.open if str(path).endswith(".gz") else open
    written = 0
    with opener(path, "wt", encoding="utf-8") as f:  # type: ignore[operator]
        w = _Writer(f, sc.legacy)
        second = 0
        carry_r = carry_b = 0.0
        while written < sc.lines:
            t0 = sc.start + second
            in_attack = sc.attack_start <= t0 < sc.attack_end
            carry_r += readers_per_s
            n_r = int(carry_r)
            carry_r -= n_r
            n_b = 0
            if in_attack:
                carry_b += bots_per_s
                n_b = int(carry_b)
                carry_b -= n_b
            n = min(n_r + n_b, sc.lines - written)
            if n <= 0:
                second += 1
                if second > sc.seconds * 4 + 10:
                    break
                continue
            offsets = sorted(rnd.random() for _ in range(n))
            kinds = [True] * min(n_b, n) + [False] * max(0, n - n_b)
            rnd.shuffle(kinds)
            for off, is_bot in zip(offsets, kinds, strict=True):
                when = t0 + off
                if is_bot:
                    g, addrs = rnd.choices(groups, weights=shares)[0] if len(groups) > 1 \
                        else groups[0]
                    _bot(w, rnd, when, g, rnd.choice(addrs), when >= sc.mitigation_start)
                else:
                    i = rnd.randrange(sc.readers)
                    _reader(w, rnd, when, readers[i], reader_ua[i], in_attack)
            written += n
            second += 1
        w.flush()
    return {"lines": written, "attack_start": sc.attack_start,
            "mitigation_start": sc.mitigation_start,
            "bots": {g.name: addrs for g, addrs in groups}, "readers": readers}


def _reader(w: _Writer, rnd: random.Random, when: float, client: str, ua: str,
            in_attack: bool) -> None:
    r = rnd.random()
    if ua is _FEED_UA:
        w.line(when, client, "GET", "/feed/", None, 200, 18_211, "HIT", None, "", ua)
        return
    if r < 0.55:
        path = rnd.choice(_ARTICLES) if rnd.random() < 0.8 else "/"
        if rnd.random() < 0.9:
            w.line(when, client, "GET", path, None, 200, 48_020, "HIT", None, "", ua,
                   "https://news.example/")
        elif in_attack:
            w.line(when, client, "GET", path, None, 200, 48_020, "STALE", None, "", ua,
                   "https://news.example/", "attack_mode")
        else:
            w.line(when, client, "GET", path, None, 200, 48_020, "MISS",
                   38.0 + rnd.random() * 20, "", ua, "https://news.example/", "expired")
    elif r < 0.93:
        w.line(when, client, "GET", rnd.choice(_ASSETS), None, 200, 12_400, "HIT", None, "",
               ua, "https://news.example/news/")
    elif r < 0.97:
        q = f"s={rnd.choice(_WORDS)}" if not in_attack else None
        if q:
            w.line(when, client, "GET", "/", q, 200, 30_100, "MISS", 180.0, "pass", ua,
                   "https://news.example/")
        else:
            w.line(when, client, "GET", "/page/2/", None, 200, 40_100, "HIT", None, "", ua)
    elif r < 0.99:
        w.line(when, client, "GET", "/wp-json/wp/v2/posts", "per_page=10", 200, 9_000, "BYPASS",
               41.0, "", ua, None, "not_cacheable")
    else:
        w.line(when, client, "POST", "/wp-comments-post.php", None, 302, 0, "BYPASS", 95.0,
               "pass", ua, "https://news.example/news/")


def _bot(w: _Writer, rnd: random.Random, when: float, g: BotGroup, client: str,
         mitigating: bool) -> None:
    if g.kind == "search":
        query = f"s={''.join(rnd.choices('abcdefghijklmnopqrstuvwxyz', k=rnd.randint(4, 9)))}"
        if mitigating and g.after == "challenge":
            w.line(when, client, "GET", "/", query, 403, 4_100, "BYPASS", None,
                   "challenge:attack_mode", g.ua)
        elif mitigating and g.after == "block":
            w.line(when, client, "GET", "/", query, 403, 2_300, "BYPASS", None,
                   "block:rule:search-flood", g.ua)
        else:
            w.line(when, client, "GET", "/", query, 200, 30_100, "MISS",
                   200.0 + rnd.random() * 900, "", g.ua, None, "not_stored")
    elif g.kind == "cachebust":
        query = f"{rnd.getrandbits(32):08x}"
        w.line(when, client, "GET", rnd.choice(("/", _ARTICLES[0])), query, 200, 48_020, "HIT",
               None, "", g.ua)
    else:
        if mitigating and g.after in ("block", "challenge"):
            w.line(when, client, "POST", "/wp-login.php", None, 403, 2_300, "BYPASS", None,
                   "block:rule:login-flood" if g.after == "block" else
                   "challenge:rule:login-flood", g.ua)
        else:
            w.line(when, client, "POST", "/wp-login.php", None, 200, 5_200, "BYPASS",
                   300.0 + rnd.random() * 400, "", g.ua, None, "not_cacheable")
