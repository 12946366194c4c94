"""Kalkan with NO config file in front of an origin that behaves like a stock WordPress
(tests/wordpress_origin.py): pages are cached and served stale, readers' sessions are never
shared, versioned assets are keyed apart, admin/login/cron/previews/nonces never cached."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from support import Response, free_port
from support import fetch as raw_fetch
from wordpress_origin import COOKIEHASH, LOGGED_IN, POSTS, WordPressOrigin

KALKAN = str(Path(sys.executable).with_name("kalkan"))
POST = POSTS[1]
STYLE = "/wp-content/themes/twentytwentyfour/style.css"


# What a browser sends: the default policy scores a login or comment POST without these as a
# script and challenges it.
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
           "Accept-Language": "ky,ru;q=0.8,en;q=0.5"}


async def fetch(port: int, target: str, method: str = "GET",
                headers: dict[str, str] | None = None, body: bytes = b"") -> Response:
    return await raw_fetch(port, target, method, {**BROWSER, **(headers or {})}, body)




class Kalkan:
    """`kalkan serve` with no --config: only where to listen, the origin and where files go."""

    def __init__(self, origin_url: str, tmp: Path) -> None:
        self.port, self.admin = free_port(), free_port()
        self.log = tmp / "access.log"
        self.output = tmp / "kalkan.out"  # a file, not a pipe nobody reads (it could fill up)
        with self.output.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [KALKAN, "serve", "--origin", origin_url, "--listen", f"127.0.0.1:{self.port}",
                 "--admin", f"127.0.0.1:{self.admin}", "--cache-dir", str(tmp / "cache"),
                 "--state-dir", str(tmp / "state"), "--access-log", str(self.log)],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kalkan exited: {self.output.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("kalkan did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def reasons(self, path: str) -> list[str]:
        """The access log's `reason` of every request for `path` (the log is flushed ~1/s)."""
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [r.get("reason", "") for r in rows if r.get("path") == path]


@pytest.fixture(name="wordpress")
async def wordpress_fixture() -> AsyncIterator[WordPressOrigin]:
    origin = WordPressOrigin()
    await origin.start()
    yield origin
    await origin.stop()


@pytest.fixture
def kalkan(wordpress: WordPressOrigin, tmp_path: Path) -> Iterator[Kalkan]:
    edge = Kalkan(wordpress.url, tmp_path)
    yield edge
    edge.stop()


def _cookie_pairs(set_cookies: list[str]) -> str:
    """What a browser sends back: name=value of each Set-Cookie, in order."""
    return "; ".join(c.split(";", 1)[0] for c in set_cookies)


async def test_second_anonymous_get_is_a_hit_and_a_flood_costs_one_origin_request(
        wordpress: WordPressOrigin, kalkan: Kalkan) -> None:
    first = await fetch(kalkan.port, POST)
    assert first.status == 200 and first.header("X-Cache") == "MISS"
    assert first.header("Cache-Control") is None  # WordPress said nothing about caching
    second = await fetch(kalkan.port, POST)
    assert second.header("X-Cache") == "HIT" and second.body == first.body
    assert 'rel="https://api.w.org/"' in " ".join(second.all("Link"))
    assert wordpress.hits[POST] == 1
    # 50 readers at once on a page nobody asked for yet: one request reaches WordPress.
    results = await asyncio.gather(*(fetch(kalkan.port, "/") for _ in range(50)))
    assert all(r.status == 200 and b"Log in" in r.body for r in results)
    assert wordpress.hits["/"] == 1
    # Canonical redirects (?p=1 -> permalink) are pages too; a cache-busting query is dropped.
    assert (await fetch(kalkan.port, "/?p=1")).status == 301
    busted = await fetch(kalkan.port, "/?p=1&utm_source=x&rand=123")
    assert busted.status == 301 and busted.header("X-Cache") == "HIT"


async def test_a_logged_in_reader_never_gets_or_makes_a_shared_copy(
        wordpress: WordPressOrigin, kalkan: Kalkan) -> None:
    login = await fetch(kalkan.port, "/wp-login.php", "POST",
                        {"Content-Type": "application/x-www-form-urlencoded"},
                        b"log=editor&pwd=secret&wp-submit=Log+In")
    assert login.status == 302 and login.header("X-Cache") == "BYPASS"
    set_cookies = login.all("Set-Cookie")
    assert any(c.startswith(f"{LOGGED_IN}=") for c in set_cookies), set_cookies
    assert any(c.startswith(f"wordpress_sec_{COOKIEHASH}=") for c in set_cookies)
    editor = {"Cookie": "wp-settings-time-1=1700000000; " + _cookie_pairs(set_cookies)}

    # The editor first: their page is their own, and it leaves nothing for anyone else.
    for _ in range(2):
        mine = await fetch(kalkan.port, POST, headers=editor)
        assert b"Howdy, editor" in mine.body and mine.header("X-Cache") != "HIT"
    anonymous = await fetch(kalkan.port, POST)
    assert anonymous.header("X-Cache") == "MISS" and b"Howdy" not in anonymous.body
    assert (await fetch(kalkan.port, POST)).header("X-Cache") == "HIT"
    # Now a shared copy exists: the editor still never gets it.
    mine = await fetch(kalkan.port, POST, headers=editor)
    assert b"Howdy, editor" in mine.body and mine.header("X-Cache") != "HIT"
    assert wordpress.hits[POST] == 4  # editor x3, one anonymous miss

    # A commenter, a post-password reader and a shopper also get their own page.
    comment = await fetch(kalkan.port, "/wp-comments-post.php", "POST",
                          {"Content-Type": "application/x-www-form-urlencoded"},
                          b"author=Aida&email=r%40example.org&comment=Thanks&comment_post_ID=1")
    assert comment.status == 302
    # Where WordPress sends the commenter: their comment awaiting moderation, not the cached page.
    back = comment.header("Location")
    assert back is not None and "unapproved=7" in back
    pending = await fetch(kalkan.port, back.removeprefix("http://news.example").split("#")[0])
    assert b"awaiting moderation" in pending.body and pending.header("X-Cache") == "BYPASS"
    commenter = {"Cookie": _cookie_pairs(comment.all("Set-Cookie"))}
    assert commenter["Cookie"].startswith(f"comment_author_{COOKIEHASH}=Aida")
    postpass = await fetch(kalkan.port, "/wp-login.php?action=postpass", "POST",
                           {"Content-Type": "application/x-www-form-urlencoded"},
                           b"post_password=kalkan")
    reader = {"Cookie": _cookie_pairs(postpass.all("Set-Cookie"))}
    assert reader["Cookie"].startswith(f"wp-postpass_{COOKIEHASH}=")
    shopper = {"Cookie": "woocommerce_items_in_cart=1; woocommerce_cart_hash=ab12"}
    before = wordpress.hits[POST]
    for headers in (commenter, reader, shopper):
        assert (await fetch(kalkan.port, POST, headers=headers)).header("X-Cache") != "HIT"
    assert wordpress.hits[POST] == before + 3
    # ... and an analytics or consent cookie is not a session: that reader gets the shared copy.
    consent = {"Cookie": "_ga=GA1.2.1.1; cookielawinfo-checkbox-analytics=no"}
    assert (await fetch(kalkan.port, POST, headers=consent)).header("X-Cache") == "HIT"


async def test_pages_are_served_stale_with_the_origin_stopped(
        wordpress: WordPressOrigin, kalkan: Kalkan) -> None:
    first = await fetch(kalkan.port, POST)
    assert first.header("X-Cache") == "MISS"
    # Past the 10 s microcache TTL, and past WordPress's (Apache's) 5 s keep-alive timeout:
    # the idle origin connection it closed must not turn into a 502.
    await asyncio.sleep(10.5)
    other = await fetch(kalkan.port, POSTS[2])
    assert other.status == 200 and other.header("X-Cache") == "MISS"
    await wordpress.stop()
    stale = await fetch(kalkan.port, POST)
    assert stale.status == 200 and stale.header("X-Cache") == "STALE"
    assert stale.body == first.body
    # A logged-in reader is never handed the stale anonymous copy.
    editor = {"Cookie": f"{LOGGED_IN}=editor%7C1%7Ctok%7Cmac"}
    assert (await fetch(kalkan.port, POST, headers=editor)).status in (502, 503, 504)


async def test_versioned_assets_are_keyed_apart(wordpress: WordPressOrigin,
                                                kalkan: Kalkan) -> None:
    old = await fetch(kalkan.port, f"{STYLE}?ver=6.4.2")
    assert old.status == 200 and b"Version: 6.4.2" in old.body
    wordpress.style_version = "6.5"  # the theme is updated: WordPress links ?ver=6.5 now
    new = await fetch(kalkan.port, f"{STYLE}?ver=6.5")
    assert new.header("X-Cache") == "MISS" and b"Version: 6.5" in new.body
    again = await fetch(kalkan.port, f"{STYLE}?ver=6.5&utm_source=newsletter")
    assert again.header("X-Cache") == "HIT" and again.body == new.body
    # On pages `ver` means nothing to WordPress: it is dropped like any cache-buster.
    await fetch(kalkan.port, POST)
    assert (await fetch(kalkan.port, f"{POST}?ver=123")).header("X-Cache") == "HIT"


async def test_admin_login_cron_previews_and_nonces_are_never_cached(
        wordpress: WordPressOrigin, kalkan: Kalkan) -> None:
    async def twice(target: str, headers: dict[str, str] | None = None) -> list[bytes]:
        bodies = []
        for _ in range(2):
            resp = await fetch(kalkan.port, target, headers=headers)
            assert resp.header("X-Cache") == "BYPASS", (target, resp.header("X-Cache"))
            bodies.append(resp.body)
        return bodies

    # admin-ajax.php reaches WordPress with its parameters (a dropped `action` answers "0").
    assert await twice("/wp-admin/admin-ajax.php?action=load_more&page=2") == [b"load_more"] * 2
    assert wordpress.hits["/wp-admin/admin-ajax.php"] == 2
    await twice("/wp-admin/")
    await twice("/x/../wp-admin/")  # however it is spelled
    assert wordpress.hits["/wp-admin/"] == 2
    lost = await twice("/wp-login.php?action=lostpassword")
    assert all(b"action=lostpassword" in body for body in lost)
    await twice("/wp-cron.php?doing_wp_cron=1733270400.1234")
    assert wordpress.hits["/wp-cron.php"] == 2
    await twice("/xmlrpc.php")

    # Previews: an editor sees the draft, and neither they nor anyone else leave a copy; the
    # published post at /?p=1 stays cacheable.
    editor = {"Cookie": f"{LOGGED_IN}=editor%7C1%7Ctok%7Cmac"}
    drafts = await twice("/?p=3&preview=true", editor)
    assert all(b"Draft preview" in body for body in drafts)
    assert all(b"Draft preview" not in body for body in await twice("/?p=3&preview=true"))
    await fetch(kalkan.port, "/?p=1")
    assert (await fetch(kalkan.port, "/?p=1")).header("X-Cache") == "HIT"
    await twice("/?p=1&preview=true")

    # The REST API: parameters reach WordPress; a nonce or Authorization is an editor's request.
    rest = await fetch(kalkan.port, "/wp-json/wp/v2/posts?per_page=5&_fields=id")
    assert json.loads(rest.body)["args"] == {"_fields": "id", "per_page": "5"}
    await twice("/wp-json/wp/v2/posts", {**editor, "X-WP-Nonce": "0123456789"})
    await twice("/wp-json/wp/v2/posts?_wpnonce=0123456789", editor)
    authed = [await fetch(kalkan.port, "/wp-json/wp/v2/users/me",
                          headers={"Authorization": "Basic ZWRpdG9yOnh4eHg="}) for _ in range(2)]
    assert all(json.loads(r.body)["user"] == "editor" for r in authed)
    assert wordpress.hits["/wp-json/wp/v2/users/me"] == 2

    # The access log says why each was passed.
    await asyncio.sleep(1.5)
    assert kalkan.reasons("/wp-admin/admin-ajax.php") == ["never_cache:path=/wp-admin/*"] * 2
    assert kalkan.reasons("/wp-cron.php") == ["never_cache:path=/wp-cron.php"] * 2
    assert "never_cache:param=preview" in kalkan.reasons("/")
    assert kalkan.reasons("/wp-json/wp/v2/posts")[-4:] == \
        ["never_cache:header=x-wp-nonce"] * 2 + ["never_cache:param=_wpnonce"] * 2


# -- purge on publish: the shipped plugin, run by PHP against the real admin API ---------------

PLUGIN = Path(__file__).parents[2] / "examples" / "wordpress-plugin" / "kalkan-purge.php"
HARNESS = Path(__file__).parents[1] / "wordpress_plugin_harness.php"


async def _plugin(kalkan: Kalkan, tmp: Path, action: str, token: str | None = None
                  ) -> list[dict[str, object]]:
    if token is None:
        token = (tmp / "state" / "admin.token").read_text().strip()
    env = {**os.environ, "KALKAN_ADMIN_URL": f"http://127.0.0.1:{kalkan.admin}",
           "KALKAN_ADMIN_TOKEN": token}
    out = await asyncio.to_thread(subprocess.run, ["php", str(HARNESS), str(PLUGIN), action],
                                  capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    calls: list[dict[str, object]] = json.loads(out.stdout)
    return calls


async def test_the_purge_plugin_drops_what_a_published_change_shows_on(
        wordpress: WordPressOrigin, kalkan: Kalkan, tmp_path: Path) -> None:
    for target in (POST, "/", POSTS[2]):
        await fetch(kalkan.port, target)
        assert (await fetch(kalkan.port, target)).header("X-Cache") == "HIT"

    # A draft saved as a draft purges nothing.
    assert await _plugin(kalkan, tmp_path, "draft") == []
    assert (await fetch(kalkan.port, POST)).header("X-Cache") == "HIT"

    # An update to the published post: its page, the front page, feeds and archives, both
    # schemes; the other post keeps its copy.
    calls = await _plugin(kalkan, tmp_path, "update")
    assert all(c["code"] == 200 for c in calls), calls
    purged = {str(c["url"]).split("url=", 1)[1] for c in calls}
    assert {"http%3A%2F%2Fnews.example%2F2020%2F12%2Fstatement%2F",
            "https%3A%2F%2Fnews.example%2F2020%2F12%2Fstatement%2F",
            "http%3A%2F%2Fnews.example%2F", "http%3A%2F%2Fnews.example%2Ffeed%2F",
            "http%3A%2F%2Fnews.example%2Fcategory%2Fpolitics%2F",
            "http%3A%2F%2Fnews.example%2Fauthor%2Faida%2F"} <= purged
    assert sum(json.loads(str(c["body"]))["purged"] for c in calls) == 2  # the post and "/"
    assert (await fetch(kalkan.port, POST)).header("X-Cache") == "MISS"
    assert (await fetch(kalkan.port, "/")).header("X-Cache") == "MISS"
    assert (await fetch(kalkan.port, POSTS[2])).header("X-Cache") == "HIT"

    # A changed slug purges the old URL too; an approved comment purges the post's page.
    slug = {str(c["url"]) for c in await _plugin(kalkan, tmp_path, "slug")}
    assert any("statement-updated" in u for u in slug)
    assert any(u.endswith("statement%2F") for u in slug)
    await fetch(kalkan.port, POST)
    assert (await fetch(kalkan.port, POST)).header("X-Cache") == "HIT"
    await _plugin(kalkan, tmp_path, "comment")
    assert (await fetch(kalkan.port, POST)).header("X-Cache") == "MISS"

    # A wrong token is refused by Kalkan (and logged by the plugin), nothing purged; no token
    # at all: the plugin does not even ask.
    wrong = await _plugin(kalkan, tmp_path, "update", token="guess")
    assert wrong and all(c["code"] == 401 for c in wrong)
    assert (await fetch(kalkan.port, POST)).header("X-Cache") == "HIT"
    assert await _plugin(kalkan, tmp_path, "update", token="") == []
