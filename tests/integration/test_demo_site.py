"""The demo newsroom origin over real sockets: pages, feeds, HTTP/1.1 framing, the capacity model
and the instrument routes that other tests and the traffic lab rely on."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

import kalkan
from kalkan.demo import content
from kalkan.demo.site import DemoSite, DemoSiteConfig

Addr = tuple[str, int]
FAST = DemoSiteConfig(page_cost=0.002, search_cost=0.005)
ARTICLE_RU = "/news/zayavlenie-media-ddos-ataki/"
ARTICLE_EN = "/news/media-community-statement-ddos/"


# --- a small HTTP/1.1 client over asyncio streams ---------------------------------------------


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool = False

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> object:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> Resp:
    line = await reader.readline()
    if not line:
        raise ConnectionError("connection closed before a response")
    _, status, _ = line.decode("latin-1").split(" ", 2)
    headers = []
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name, value.strip()))
    resp = Resp(int(status), headers, b"")
    te, length = resp.header("transfer-encoding"), resp.header("content-length")
    if head or resp.status in (204, 304) or resp.status < 200:
        return resp
    if te is not None:
        assert te == "chunked"
        resp.chunked, parts = True, []
        while size := int((await reader.readline()).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            assert await reader.readexactly(2) == b"\r\n"
        while await reader.readline() not in (b"\r\n", b""):
            pass
        resp.body = b"".join(parts)
    elif length is not None:
        resp.body = await reader.readexactly(int(length))
    else:
        resp.body = await reader.read()
    return resp


def request_bytes(
    method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    headers = headers or {}
    lines = [f"{method} {target} HTTP/1.1"]
    if not any(n.lower() == "host" for n in headers):
        lines.append("Host: news.test")
    lines += [f"{n}: {v}" for n, v in headers.items()]
    if body and not any(n.lower() == "transfer-encoding" for n in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Conn:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, addr: Addr) -> Conn:
        return cls(*await asyncio.open_connection(*addr))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, *, head: bool = False) -> Resp:
        return await asyncio.wait_for(read_response(self.reader, head=head), 10)

    async def request(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Resp:
        await self.send(request_bytes(method, target, headers, body))
        return await self.read(head=method == "HEAD")

    async def at_eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 5) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def fetch(
    addr: Addr,
    target: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Resp:
    conn = await Conn.open(addr)
    try:
        return await conn.request(method, target, headers, body)
    finally:
        await conn.close()


async def stats(addr: Addr) -> dict:
    resp = await fetch(addr, "/_demo/stats")
    assert resp.header("cache-control") == "no-store"
    return resp.json()  # type: ignore[return-value]


StartSite = Callable[..., Awaitable[tuple[DemoSite, Addr]]]


@pytest.fixture
async def start_site() -> AsyncIterator[StartSite]:
    sites: list[DemoSite] = []

    async def start(config: DemoSiteConfig = FAST) -> tuple[DemoSite, Addr]:
        site = DemoSite(config)
        sites.append(site)
        return site, await site.start("127.0.0.1", 0)

    yield start
    for site in sites:
        await site.stop()


@pytest.fixture
async def addr(start_site: StartSite) -> Addr:
    return (await start_site())[1]


class _TreeChecker(HTMLParser):
    """Checks that non-void elements nest and close properly, and collects links."""

    VOID = frozenset({"meta", "link", "img", "input", "br", "hr", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action") and value is not None:
                self.links.append(value)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]} at {self.getpos()}")
            return
        self.stack.pop()


def check_html(page: str, lang: str) -> list[str]:
    assert page.startswith("<!DOCTYPE html>\n")
    assert f'<html lang="{lang}">' in page
    assert '<meta charset="utf-8">' in page
    checker = _TreeChecker()
    checker.feed(page)
    checker.close()
    assert not checker.errors, checker.errors
    assert checker.stack == [], checker.stack
    return checker.links


# --- pages ------------------------------------------------------------------------------------


async def test_home_page_shows_latest_articles_and_rates(addr: Addr) -> None:
    resp = await fetch(addr, "/")
    assert resp.status == 200
    assert resp.header("content-type") == "text/html; charset=utf-8"
    assert resp.header("cache-control") == "public, max-age=30"
    assert 10_000 <= len(resp.body) <= 40_000
    page = resp.text
    check_html(page, "en")
    rates = page[page.index('class="box rates"') :]
    for code, value in (("USD", "84.77"), ("EUR", "102.46"), ("RUB", "1.14")):
        assert f'<td data-rate="{code}">{value}</td>' in rates
    assert "KGS" in rates
    for article in content.ARTICLES:
        assert article.path in page
    assert "factcheck.kg" in page


async def test_every_page_is_well_formed_self_hosted_and_realistic_in_size(addr: Addr) -> None:
    pages = {"/": "en", "/ru/": "ru"} | {a.path: a.lang for a in content.ARTICLES}
    links: set[str] = set()
    for path, lang in pages.items():
        resp = await fetch(addr, path)
        assert resp.status == 200, path
        assert 10_000 <= len(resp.body) <= 40_000, (path, len(resp.body))
        links.update(check_html(resp.text, lang))
    for path, lang in (("/search?q=som", "en"), ("/no/such/page", "en"), ("/wp-login.php", "en")):
        links.update(check_html((await fetch(addr, path)).text, lang))
    # Readers' privacy: nothing is loaded from another host.
    assert not [link for link in links if re.match(r"^(?:[a-z]+:)?//", link)]
    # And every local file a page points at is really there.
    for link in sorted(lk for lk in links if lk.startswith(("/assets/", "/favicon"))):
        assert (await fetch(addr, link)).status == 200, link


async def test_russian_article(addr: Addr) -> None:
    resp = await fetch(addr, ARTICLE_RU)
    assert resp.status == 200
    page = resp.text
    check_html(page, "ru")
    assert "Медиасообщество" in page
    assert "Kaktus.Media" in page
    assert resp.header("cache-control") == "public, max-age=300"
    assert resp.header("etag") and resp.header("last-modified")
    assert 'action="/comments" method="post"' in page


async def test_english_article_about_the_statement(addr: Addr) -> None:
    page = (await fetch(addr, ARTICLE_EN)).text
    check_html(page, "en")
    for outlet in ("factcheck.kg", "Kloop", "Economist.kg", "Govori.tv", "Vb.kg", "Knews.kg"):
        assert outlet in page
    assert "physical security and cybersecurity" in page


async def test_article_without_trailing_slash_redirects(addr: Addr) -> None:
    resp = await fetch(addr, ARTICLE_EN.rstrip("/"))
    assert resp.status == 301
    assert resp.header("location") == ARTICLE_EN


async def test_unknown_page_is_a_404_page(addr: Addr) -> None:
    resp = await fetch(addr, "/2020/12/no-such-story/")
    assert resp.status == 404
    assert "Page not found" in resp.text
    assert resp.header("cache-control") == "public, max-age=60"


async def test_assets_are_served_with_long_cache_lifetimes(addr: Addr) -> None:
    expected = {
        "/assets/style.css": "text/css; charset=utf-8",
        "/assets/site.js": "text/javascript; charset=utf-8",
        "/assets/img-shield.svg": "image/svg+xml",
        "/assets/logo.svg": "image/svg+xml",
        "/favicon.ico": "image/vnd.microsoft.icon",
    }
    for path, ctype in expected.items():
        resp = await fetch(addr, path)
        assert resp.status == 200, path
        assert resp.header("content-type") == ctype
        assert resp.header("cache-control") == "public, max-age=86400"
        assert resp.header("etag") and resp.header("last-modified")
    ico = await fetch(addr, "/favicon.ico")
    assert ico.body[:4] == b"\x00\x00\x01\x00"
    assert (await fetch(addr, "/assets/nothing.css")).status == 404


async def test_search_is_uncacheable(addr: Addr) -> None:
    resp = await fetch(addr, "/search?q=" + quote("DDoS"))
    assert resp.status == 200
    assert resp.header("cache-control") == "private, no-store"
    assert resp.header("etag") is None
    assert "media-community-statement-ddos" in resp.text
    # WordPress-style search on the home page, in Russian, with markup in the query escaped.
    resp = await fetch(addr, "/ru/?s=" + quote("ярмарка <b>"))
    assert resp.status == 200
    assert resp.header("cache-control") == "private, no-store"
    assert '<html lang="ru">' in resp.text
    assert "<b>" not in resp.text and "&lt;b&gt;" in resp.text
    resp = await fetch(addr, "/?s=" + quote("ярмарка"))
    assert "zimnyaya-yarmarka-bishkek" in resp.text


async def test_comment_form_post(addr: Addr) -> None:
    form = {"article": "zayavlenie-media-ddos-ataki", "author": "Айжан <i>", "comment": "Спасибо!"}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await fetch(addr, "/comments", "POST", headers, urlencode(form).encode())
    assert resp.status == 200
    assert resp.header("cache-control") == "no-store"
    assert "Спасибо за комментарий" in resp.text
    assert "Айжан &lt;i&gt;" in resp.text
    bad = await fetch(addr, "/comments", "POST", headers, b"article=nope&comment=")
    assert bad.status == 422
    assert bad.header("cache-control") == "no-store"
    get = await fetch(addr, "/comments")
    assert get.status == 405
    assert get.header("allow") == "POST"


async def test_rss_feed_parses(addr: Addr) -> None:
    resp = await fetch(addr, "/feed/", headers={"Host": "chyrak.test:8080"})
    assert resp.status == 200
    assert resp.header("content-type") == "application/rss+xml; charset=utf-8"
    assert resp.header("cache-control") == "public, max-age=300"
    channel = ET.fromstring(resp.body).find("channel")
    assert channel is not None
    items = channel.findall("item")
    assert len(items) == len(content.ARTICLES)
    links = [item.findtext("link") for item in items]
    assert "http://chyrak.test:8080/news/zayavlenie-media-ddos-ataki/" in links
    for item in items:
        parsedate_to_datetime(item.findtext("pubDate") or "")


async def test_sitemap_and_robots(addr: Addr) -> None:
    resp = await fetch(addr, "/sitemap.xml")
    assert resp.status == 200
    ns = {"s": "http://www.sitemaps.org/schemas/sitemap/0.9"}
    locs = [el.text for el in ET.fromstring(resp.body).findall("s:url/s:loc", ns)]
    assert "http://news.test/" in locs
    assert "http://news.test" + ARTICLE_RU in locs
    robots = await fetch(addr, "/robots.txt")
    assert robots.header("content-type") == "text/plain; charset=utf-8"
    assert "User-agent: *" in robots.text
    assert "Sitemap: http://news.test/sitemap.xml" in robots.text
    assert "Disallow: /search" in robots.text


async def test_login_and_xmlrpc_targets(addr: Addr) -> None:
    form = await fetch(addr, "/wp-login.php")
    assert form.status == 200 and 'name="pwd"' in form.text
    assert (form.header("set-cookie") or "").startswith("wordpress_test_cookie=")
    assert form.header("cache-control") == "no-store"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    failed = await fetch(addr, "/wp-login.php", "POST", headers, b"log=admin&pwd=123456")
    assert failed.status == 200 and "incorrect" in failed.text
    assert (await fetch(addr, "/xmlrpc.php")).status == 405
    call = b"<?xml version='1.0'?><methodCall><methodName>wp.getUsersBlogs</methodName>"
    call += b"</methodCall>"
    fault = await fetch(addr, "/xmlrpc.php", "POST", {"Content-Type": "text/xml"}, call)
    assert fault.status == 200
    assert ET.fromstring(fault.body).find("fault") is not None


@pytest.mark.parametrize(("name", "size"), [("2k", 2048), ("20k", 20480), ("200k", 204800)])
async def test_bench_pages_have_exact_sizes(addr: Addr, name: str, size: int) -> None:
    first = await fetch(addr, f"/bench/{name}")
    other = await fetch(addr, f"/bench/{name}/anything?x=1")
    assert len(first.body) == size == int(first.header("content-length") or 0)
    assert first.body == other.body
    assert first.header("cache-control") == "public, max-age=3600"
    assert first.header("etag") == other.header("etag") is not None


# --- HTTP/1.1 behaviour -----------------------------------------------------------------------


async def test_conditional_get_answers_304(addr: Addr) -> None:
    for path in (ARTICLE_EN, "/assets/style.css", "/"):
        full = await fetch(addr, path)
        etag, modified = full.header("etag"), full.header("last-modified")
        assert etag and modified
        same = await fetch(addr, path, headers={"If-None-Match": etag})
        assert same.status == 304 and same.body == b""
        assert same.header("etag") == etag
        assert same.header("cache-control") == full.header("cache-control")
        assert same.header("content-length") is None
        weak_list = await fetch(addr, path, headers={"If-None-Match": f'"x", W/{etag}'})
        assert weak_list.status == 304
        assert (await fetch(addr, path, headers={"If-None-Match": '"other"'})).status == 200
        since = await fetch(addr, path, headers={"If-Modified-Since": modified})
        assert since.status == 304
        older = formatdate(parsedate_to_datetime(modified).timestamp() - 86400, usegmt=True)
        assert (await fetch(addr, path, headers={"If-Modified-Since": older})).status == 200
        # If-None-Match wins over If-Modified-Since.
        both = {"If-None-Match": '"other"', "If-Modified-Since": modified}
        assert (await fetch(addr, path, headers=both)).status == 200


async def test_head_sends_headers_only(addr: Addr) -> None:
    full = await fetch(addr, ARTICLE_RU)
    conn = await Conn.open(addr)
    # A HEAD response must carry no body: the GET after it on the same connection must parse.
    head = await conn.request("HEAD", ARTICLE_RU)
    assert head.status == 200
    assert head.header("content-length") == str(len(full.body))
    assert head.header("etag") == full.header("etag")
    again = await conn.request("GET", "/robots.txt")
    assert again.status == 200 and again.text.startswith("User-agent")
    await conn.close()


async def test_keep_alive_and_pipelined_requests_answered_in_order(addr: Addr) -> None:
    conn = await Conn.open(addr)
    targets = ["/search?q=som", "/robots.txt", "/_demo/respond?body=three", "/assets/site.js"]
    await conn.send(b"".join(request_bytes("GET", t) for t in targets))
    bodies = [(await conn.read()).body for _ in targets]
    assert b"som" in bodies[0] and bodies[0].startswith(b"<!DOCTYPE html>")
    assert bodies[1].startswith(b"User-agent")
    assert bodies[2] == b"three"
    assert bodies[3].startswith(b"// Chyrak")
    # The connection stays open for more.
    assert (await conn.request("GET", "/bench/20k")).status == 200
    last = await conn.request("GET", "/robots.txt", {"Connection": "close"})
    assert last.header("connection") == "close"
    assert await conn.at_eof()
    await conn.close()


async def test_http_1_0_closes_unless_keep_alive_asked(addr: Addr) -> None:
    conn = await Conn.open(addr)
    await conn.send(b"GET /robots.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    kept = await conn.read()
    assert kept.header("connection") == "keep-alive"
    await conn.send(b"GET /robots.txt HTTP/1.0\r\n\r\n")
    closed = await conn.read()
    assert closed.status == 200 and closed.header("connection") == "close"
    assert await conn.at_eof()
    await conn.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /_demo/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST /_demo/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ],
)
async def test_bad_requests_get_400_and_the_connection_closes(addr: Addr, raw: bytes) -> None:
    conn = await Conn.open(addr)
    await conn.send(raw)
    resp = await conn.read()
    assert resp.status == 400
    assert resp.header("connection") == "close"
    assert await conn.at_eof()
    await conn.close()


async def test_bad_request_after_good_ones_is_answered_in_turn(addr: Addr) -> None:
    conn = await Conn.open(addr)
    await conn.send(request_bytes("GET", "/robots.txt") + b"\x00garbage\r\n\r\n")
    assert (await conn.read()).status == 200
    assert (await conn.read()).status == 400
    assert await conn.at_eof()
    await conn.close()


async def test_oversized_request_head_gets_431(addr: Addr) -> None:
    conn = await Conn.open(addr)
    await conn.send(request_bytes("GET", "/", {"X-Big": "a" * 70_000}))
    assert (await conn.read()).status == 431
    await conn.close()


async def test_method_not_allowed_names_the_allowed_ones(addr: Addr) -> None:
    resp = await fetch(addr, "/", "DELETE")
    assert resp.status == 405
    assert resp.header("allow") == "GET, HEAD"


async def test_no_cache_headers_mode(start_site: StartSite) -> None:
    _, addr = await start_site(DemoSiteConfig(page_cost=0, search_cost=0, cache_headers=False))
    form = urlencode({"article": content.ARTICLES[0].slug, "author": "A", "comment": "B"})
    responses = [
        await fetch(addr, "/"),
        await fetch(addr, ARTICLE_RU),
        await fetch(addr, "/assets/style.css"),
        await fetch(addr, "/feed/"),
        await fetch(addr, "/search?q=som"),
        await fetch(addr, "/wp-login.php"),
        await fetch(addr, "/comments", "POST", {}, form.encode()),
    ]
    for resp in responses:
        assert resp.status == 200
        assert resp.header("cache-control") is None
        assert resp.header("expires") is None
    assert responses[1].header("etag") and responses[1].header("last-modified")
    # The instruments keep their own headers.
    assert (await fetch(addr, "/bench/20k")).header("cache-control") == "public, max-age=3600"


async def test_stop_closes_idle_connections(start_site: StartSite) -> None:
    site, addr = await start_site()
    conn = await Conn.open(addr)
    assert (await conn.request("GET", "/robots.txt")).status == 200
    await site.stop()
    assert await conn.at_eof()
    await conn.close()
    with pytest.raises(OSError):
        await fetch(addr, "/")


# --- the capacity model -----------------------------------------------------------------------


async def test_workers_bound_page_throughput(start_site: StartSite) -> None:
    _, addr = await start_site(DemoSiteConfig(workers=2, page_cost=0.1))
    began = time.monotonic()
    results = await asyncio.gather(*(fetch(addr, "/") for _ in range(6)))
    elapsed = time.monotonic() - began
    assert [r.status for r in results] == [200] * 6
    assert 0.25 <= elapsed < 3.0  # 6 pages / 2 workers * 0.1 s = 0.3 s
    snapshot = await stats(addr)
    assert snapshot["requests"] == 6
    assert snapshot["max_in_flight"] >= 3
    assert snapshot["in_flight"] == 0 and snapshot["queued"] == 0


async def test_static_files_do_not_wait_for_workers(start_site: StartSite) -> None:
    _, addr = await start_site(DemoSiteConfig(workers=1, page_cost=0.5))
    slow = asyncio.create_task(fetch(addr, "/"))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    for path in ("/assets/style.css", "/robots.txt", "/favicon.ico", "/bench/20k"):
        assert (await fetch(addr, path)).status == 200
    assert time.monotonic() - began < 0.4
    assert not slow.done()
    assert (await slow).status == 200


async def test_full_queue_sheds_with_503(start_site: StartSite) -> None:
    _, addr = await start_site(DemoSiteConfig(workers=1, page_cost=0.4, queue_limit=2))
    results = await asyncio.gather(*(fetch(addr, ARTICLE_EN) for _ in range(6)))
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 200, 200, 503, 503, 503]  # 1 working + 2 queued
    shed = next(r for r in results if r.status == 503)
    assert shed.header("retry-after") == "10"
    snapshot = await stats(addr)
    assert snapshot["rejected_503"] == 3
    assert snapshot["by_path"][ARTICLE_EN] == 6


async def test_long_wait_for_a_worker_gives_504(start_site: StartSite) -> None:
    _, addr = await start_site(DemoSiteConfig(workers=1, page_cost=0.5, queue_timeout=0.1))
    first = asyncio.create_task(fetch(addr, "/"))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    second = await fetch(addr, "/search?q=x")
    assert second.status == 504
    assert time.monotonic() - began < 0.4
    assert (await first).status == 200
    assert (await stats(addr))["timed_out_504"] == 1


async def test_stats_count_requests_and_reset(addr: Addr) -> None:
    await fetch(addr, "/_demo/stats/reset", "POST")
    await fetch(addr, "/")
    await fetch(addr, "/")
    await fetch(addr, "/_demo/respond?n=1")
    snapshot = await stats(addr)
    assert snapshot["requests"] == 3  # reading the stats is not counted
    assert snapshot["by_path"] == {"/": 2, "/_demo/respond?n=1": 1}
    assert snapshot["in_flight"] == 0
    assert isinstance(snapshot["started"], float)
    reset = await fetch(addr, "/_demo/stats/reset", "POST")
    assert reset.json()["requests"] == 0  # type: ignore[index]
    assert (await stats(addr))["by_path"] == {}


# --- instruments ------------------------------------------------------------------------------


async def test_echo_reports_the_request_as_received(addr: Addr) -> None:
    body = b"hello origin"
    headers = {"X-Forwarded-For": "203.0.113.7", "Via": "1.1 kalkan", "x-MiXeD": "Case"}
    resp = await fetch(addr, "/_demo/echo?a=1", "PUT", headers, body)
    assert resp.header("cache-control") == "no-store"
    echo = resp.json()
    assert isinstance(echo, dict)
    assert echo["method"] == "PUT"
    assert echo["target"] == "/_demo/echo?a=1"
    assert echo["http_version"] == "1.1"
    assert echo["headers"] == [
        ["Host", "news.test"],
        ["X-Forwarded-For", "203.0.113.7"],
        ["Via", "1.1 kalkan"],
        ["x-MiXeD", "Case"],
        ["Content-Length", "12"],
    ]
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echo["peer"].startswith("127.0.0.1:")


async def test_respond_sends_the_headers_asked_for(addr: Addr) -> None:
    modified = int(time.time()) - 3600
    query = urlencode(
        [
            ("status", "203"),
            ("cc", "public, max-age=60, stale-while-revalidate=30"),
            ("expires", str(modified + 7200)),
            ("etag", "v1"),
            ("last_modified", str(modified)),
            ("vary", "Accept-Encoding, Cookie"),
            ("set_cookie", "a=1; Path=/"),
            ("set_cookie", "b=2"),
            ("body", "hello, cache"),
            ("date_offset", "-100"),
            ("h_X-Test", "yes"),
            ("h_Content-Type", "text/html"),
        ]
    )
    target = "/_demo/respond?" + query
    resp = await fetch(addr, target)
    assert resp.status == 203
    assert resp.body == b"hello, cache"
    assert resp.header("cache-control") == "public, max-age=60, stale-while-revalidate=30"
    assert resp.header("expires") == formatdate(modified + 7200, usegmt=True)
    assert resp.header("last-modified") == formatdate(modified, usegmt=True)
    assert resp.header("etag") == '"v1"'
    assert resp.header("vary") == "Accept-Encoding, Cookie"
    assert resp.all("set-cookie") == ["a=1; Path=/", "b=2"]
    assert resp.header("x-test") == "yes"
    assert resp.all("content-type") == ["text/html"]
    assert len(resp.all("date")) == 1
    skew = time.time() - parsedate_to_datetime(resp.header("date") or "").timestamp()
    assert 90 <= skew <= 110
    assert resp.header("x-demo-count") == "1"
    assert (await fetch(addr, target)).header("x-demo-count") == "2"
    assert (await stats(addr))["by_path"][target] == 2


async def test_respond_revalidates_against_its_validators(addr: Addr) -> None:
    modified = int(time.time()) - 3600
    target = f"/_demo/respond?cc=max-age%3D0&etag=abc&last_modified={modified}"
    assert (await fetch(addr, target, headers={"If-None-Match": '"abc"'})).status == 304
    assert (await fetch(addr, target, headers={"If-None-Match": '"xyz"'})).status == 200
    since = formatdate(modified, usegmt=True)
    not_modified = await fetch(addr, target, headers={"If-Modified-Since": since})
    assert not_modified.status == 304
    assert not_modified.header("cache-control") == "max-age=0"
    assert not_modified.header("x-demo-count") == "3"
    default_body = await fetch(addr, target)
    assert default_body.text == f"demo response #4 for {target}\n"
    # Any method gets the programmed answer (so unsafe-method invalidation can be tested), but
    # only GET and HEAD are conditional.
    post = await fetch(addr, target, "POST", {"If-None-Match": '"abc"'}, b"x=1")
    assert post.status == 200 and post.header("x-demo-count") == "5"


async def test_respond_rejects_bad_parameters(addr: Addr) -> None:
    for query in ("status=99", "h_Content-Length=5", "h_bad%20name=1", "nope=1", "cc=a%0D%0Ab"):
        resp = await fetch(addr, "/_demo/respond?" + query)
        assert resp.status == 400, query
        assert "error" in resp.json()  # type: ignore[operator]


async def test_respond_delay(addr: Addr) -> None:
    began = time.monotonic()
    assert (await fetch(addr, "/_demo/respond?delay_ms=200")).status == 200
    assert 0.15 <= time.monotonic() - began < 2.0


def _pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def test_big_streams_chunked_bytes(addr: Addr) -> None:
    size = 3 * 1024 * 1024 + 17
    resp = await fetch(addr, f"/_demo/big?bytes={size}")
    assert resp.status == 200
    assert resp.chunked and resp.header("content-length") is None
    assert resp.header("cache-control") == "no-store"
    assert len(resp.body) == size
    assert hashlib.sha256(resp.body).digest() == hashlib.sha256(_pattern(size)).digest()
    empty = await fetch(addr, "/_demo/big?bytes=0")
    assert empty.status == 200 and empty.body == b""
    head = await fetch(addr, "/_demo/big?bytes=10", "HEAD")
    assert head.status == 200 and head.header("transfer-encoding") == "chunked"
    assert (await fetch(addr, "/_demo/big?bytes=-1")).status == 400


async def test_big_pauses_for_a_slow_reader(start_site: StartSite) -> None:
    site, addr = await start_site()
    size = 64 * 1024 * 1024
    conn = await Conn.open(addr)
    await conn.send(request_bytes("GET", f"/_demo/big?bytes={size}"))
    await asyncio.sleep(0.5)  # not reading: the socket buffers fill and the server must wait
    (server_side,) = site._connections
    assert server_side._writing_paused
    assert server_side._transport is not None
    assert server_side._transport.get_write_buffer_size() < 1024 * 1024
    resp = await asyncio.wait_for(read_response(conn.reader), 60)
    assert len(resp.body) == size
    await conn.close()


async def test_upload_counts_a_chunked_body(addr: Addr) -> None:
    conn = await Conn.open(addr)
    await conn.send(
        b"POST /_demo/upload HTTP/1.1\r\nHost: news.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    digest, total = hashlib.sha256(), 0
    for i in range(40):
        piece = bytes([i]) * (1000 + i * 997)
        digest.update(piece)
        total += len(piece)
        await conn.send(b"%x\r\n%b\r\n" % (len(piece), piece))
    await conn.send(b"0\r\n\r\n")
    resp = await conn.read()
    assert resp.json() == {"bytes": total, "sha256": digest.hexdigest()}
    assert resp.header("cache-control") == "no-store"
    # A large Content-Length upload on the same connection.
    body = os.urandom(3 * 1024 * 1024)
    resp = await conn.request("POST", "/_demo/upload", {}, body)
    assert resp.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    await conn.close()


async def test_upload_with_expect_100_continue(addr: Addr) -> None:
    conn = await Conn.open(addr)
    body = b"x" * 5000
    await conn.send(
        request_bytes("POST", "/_demo/upload", {"Expect": "100-continue", "Content-Length": "5000"})
    )
    interim = await conn.read()
    assert interim.status == 100
    await conn.send(body)
    resp = await conn.read()
    assert resp.json() == {"bytes": 5000, "sha256": hashlib.sha256(body).hexdigest()}
    await conn.close()


# --- running on its own -----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_until_signalled(sig: signal.Signals) -> None:
    # The child must import this same kalkan, installed or not.
    src = str(Path(kalkan.__file__).resolve().parents[1])
    paths = [src, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    code = (
        "from kalkan.demo.site import DemoSiteConfig, run; "
        "run('127.0.0.1', 0, DemoSiteConfig(page_cost=0.001))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        resp = await fetch(("127.0.0.1", int(match.group(1))), "/")
        assert resp.status == 200 and "84.77" in resp.text
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_http_behaviour_on_uvloop() -> None:
    """`run()` serves on uvloop, whose transports differ from asyncio's: replay the HTTP checks
    there (the rest of this file runs on pytest-asyncio's default loop)."""
    import uvloop

    async def scenario() -> None:
        sites: list[DemoSite] = []

        async def start(config: DemoSiteConfig = FAST) -> tuple[DemoSite, Addr]:
            site = DemoSite(config)
            sites.append(site)
            return site, await site.start("127.0.0.1", 0)

        try:
            _, addr = await start()
            await test_home_page_shows_latest_articles_and_rates(addr)
            await test_conditional_get_answers_304(addr)
            await test_head_sends_headers_only(addr)
            await test_keep_alive_and_pipelined_requests_answered_in_order(addr)
            await test_http_1_0_closes_unless_keep_alive_asked(addr)
            await test_bad_request_after_good_ones_is_answered_in_turn(addr)
            await test_bad_requests_get_400_and_the_connection_closes(addr, b"NOT HTTP\r\n\r\n")
            await test_echo_reports_the_request_as_received(addr)
            await test_big_streams_chunked_bytes(addr)
            await test_upload_counts_a_chunked_body(addr)
            await test_upload_with_expect_100_continue(addr)
            await test_big_pauses_for_a_slow_reader(start)
            await test_full_queue_sheds_with_503(start)
            await test_stop_closes_idle_connections(start)
        finally:
            for site in sites:
                await site.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
