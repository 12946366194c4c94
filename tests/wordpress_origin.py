"""A WordPress-like origin for the tests: the headers and cookies a stock WordPress (6.x on Apache
with mod_php) sends, on a real asyncio socket.

What makes it WordPress for a cache: pages carry no Cache-Control, Expires or Last-Modified (only
`Link: <.../wp-json/>; rel="https://api.w.org/"` and friends) and are sent chunked; 404s, the login
page, wp-admin, admin-ajax and every page for a logged-in user carry `nocache_headers()`; login sets
`wordpress_sec_<hash>` and `wordpress_logged_in_<hash>`, a comment `comment_author_<hash>`, a post
password `wp-postpass_<hash>`; `?p=N` is redirected to the permalink by canonical redirects;
static files come from Apache with Last-Modified and ETag and ignore their query string; idle
keep-alive connections are closed after 5 s (Apache's KeepAliveTimeout).

Every request is counted by path (`hits`), so a test can tell what reached the origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qs, unquote

SITE = "http://news.example"
COOKIEHASH = hashlib.md5(SITE.encode()).hexdigest()  # WordPress: md5(siteurl)
NOCACHE = [("Expires", "Wed, 11 Jan 1984 05:00:00 GMT"),
           ("Cache-Control", "no-cache, must-revalidate, max-age=0, no-store, private")]
HTML = ("Content-Type", "text/html; charset=UTF-8")
API_LINK = ("Link", f'<{SITE}/wp-json/>; rel="https://api.w.org/"')
LOGGED_IN = f"wordpress_logged_in_{COOKIEHASH}"
POSTS = {1: "/2020/12/statement/", 2: "/2020/12/exchange-rates/"}
DRAFT = 3  # a draft: only a logged-in editor's preview shows it


@dataclass
class WordPressOrigin:
    """Start with `await start()`, stop with `await stop()`; `port` is where it listens."""

    keepalive_timeout: float = 5.0
    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    renders: int = 0                        # pages rendered by "PHP", numbered in each body
    style_version: str = "6.4.2"           # what style.css holds (a theme update changes it)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection (the origin is down)."""
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()
            self._server = None

    # -- the connection: HTTP/1.1 keep-alive, idle connections closed after 5 s ---------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                                  self.keepalive_timeout)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                status, fields, payload, chunked = self._route(method, target, headers, body)
                writer.write(_response(status, fields, b"" if method == "HEAD" else payload,
                                       chunked and method != "HEAD"))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    # -- WordPress --------------------------------------------------------------------------
    def _route(self, method: str, target: str, headers: dict[str, str],
               body: bytes) -> tuple[int, list[tuple[str, str]], bytes, bool]:
        path, _, query = target.partition("?")
        path = unquote(path)
        self.hits[path] += 1
        args = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        cookies = _cookies(headers.get("cookie", ""))
        user = "editor" if cookies.get(LOGGED_IN, "").startswith("editor|") else None
        if path == "/wp-content/themes/twentytwentyfour/style.css":
            css = f"/* Theme Name: Twenty Twenty-Four; Version: {self.style_version} */".encode()
            return 200, [("Last-Modified", "Tue, 21 Nov 2023 10:00:00 GMT"),
                         ("ETag", f'"{hashlib.md5(css).hexdigest()[:12]}"'),
                         ("Accept-Ranges", "bytes"), ("Content-Type", "text/css")], css, False
        if path == "/wp-login.php":
            return self._login(method, args, body, headers)
        if path == "/wp-comments-post.php" and method == "POST":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            name = form.get("author", "reader")
            fields = [("Set-Cookie", f"comment_author_{COOKIEHASH}={name}; expires=Sat, "
                       "04 Dec 2027 00:00:00 GMT; Max-Age=31536000; path=/"),
                      ("Set-Cookie", f"comment_author_email_{COOKIEHASH}=r%40example.org; "
                       "expires=Sat, 04 Dec 2027 00:00:00 GMT; Max-Age=31536000; path=/"),
                      ("X-Redirect-By", "WordPress"),
                      ("Location", f"{SITE}{POSTS[1]}?unapproved=7&moderation-hash=ab12#comment-7"),
                      HTML]
            return 302, fields, b"", False
        if path.startswith("/wp-admin"):
            if path == "/wp-admin/admin-ajax.php":
                action = args.get("action", "")
                return 200, [HTML, *NOCACHE, ("X-Robots-Tag", "noindex"),
                             ("X-Content-Type-Options", "nosniff")], \
                    (action or "0").encode(), False
            if user is None:
                return 302, [HTML, *NOCACHE, ("X-Redirect-By", "WordPress"), (
                    "Location", f"{SITE}/wp-login.php?redirect_to=%2Fwp-admin%2F&reauth=1")], \
                    b"", False
            return 200, [HTML, *NOCACHE, ("X-Frame-Options", "SAMEORIGIN")], \
                self._page("Dashboard", user), True
        if path == "/wp-cron.php":
            return 200, [HTML, ("Expires", NOCACHE[0][1]),
                         ("Cache-Control", "no-cache, must-revalidate, max-age=0")], b"", False
        if path == "/xmlrpc.php":
            if method != "POST":
                return 405, [("Allow", "POST"), ("Content-Type", "text/plain;charset=UTF-8")], \
                    b"XML-RPC server accepts POST requests only.", False
            return 200, [("Content-Type", "text/xml; charset=UTF-8")], b"<methodResponse/>", False
        if path.startswith("/wp-json"):
            return self._rest(path, args, headers, user)
        if path == "/" and "p" in args:
            post_id = int(args["p"]) if args["p"].isdigit() else 0
            if post_id == DRAFT and "preview" in args:
                if user is None:
                    return 404, [HTML, *NOCACHE, API_LINK], self._page("Not found", None), True
                return 200, [HTML, *NOCACHE, API_LINK], \
                    self._page("Draft preview", user), True
            if post_id in POSTS:
                return 301, [HTML, ("X-Redirect-By", "WordPress"),
                             ("Location", f"{SITE}{POSTS[post_id]}")], b"", False
            return 404, [HTML, *NOCACHE, API_LINK], self._page("Not found", None), True
        if path == "/" and "s" in args:
            return 200, self._page_fields(user), self._page(f"Search: {args['s']}", user), True
        if path == "/":
            return 200, self._page_fields(user), self._page("Front page", user), True
        for post_id, permalink in POSTS.items():
            if path == permalink:
                fields = self._page_fields(user)
                fields += [("Link", f'<{SITE}/wp-json/wp/v2/posts/{post_id}>; rel="alternate"; '
                                    'title="JSON"; type="application/json"'),
                           ("Link", f"<{SITE}/?p={post_id}>; rel=shortlink")]
                title = f"Post {post_id}"
                if "unapproved" in args and "moderation-hash" in args:
                    # WordPress 5.x+: how a commenter without cookies sees their own comment.
                    title += " (your comment is awaiting moderation)"
                return 200, fields, self._page(title, user), True
        return 404, [HTML, *NOCACHE, API_LINK], self._page("Not found", user), True

    def _page_fields(self, user: str | None) -> list[tuple[str, str]]:
        # WP::send_headers(): nothing about caching for a reader, nocache_headers() for a user.
        return [HTML, API_LINK, *(NOCACHE if user else [])]

    def _page(self, title: str, user: str | None) -> bytes:
        self.renders += 1
        who = f"Howdy, {user}" if user else "Log in"
        return (f"<!doctype html><title>{title}</title><p>{who}</p>"
                f"<link rel='stylesheet' href='{SITE}/wp-content/themes/twentytwentyfour/"
                f"style.css?ver={self.style_version}'><!-- render {self.renders} -->").encode()

    def _login(self, method: str, args: dict[str, str], body: bytes,
               headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes, bool]:
        test_cookie = ("Set-Cookie", "wordpress_test_cookie=WP%20Cookie%20check; path=/; "
                                     "HttpOnly")
        if method == "POST" and args.get("action") == "postpass":
            return 302, [HTML, *NOCACHE, (
                "Set-Cookie", f"wp-postpass_{COOKIEHASH}=%24P%24Bhash; expires=Fri, 14 Dec 2026 "
                              "00:00:00 GMT; Max-Age=864000; path=/"),
                ("X-Redirect-By", "WordPress"), ("Location", f"{SITE}{POSTS[2]}")], b"", False
        if method == "POST":
            token = "editor|1893456000|tok|mac"
            sec = f"wordpress_sec_{COOKIEHASH}={token.replace('|', '%7C')}"
            return 302, [HTML, *NOCACHE, test_cookie,
                         ("Set-Cookie", f"{sec}; path=/wp-content/plugins; secure; HttpOnly"),
                         ("Set-Cookie", f"{sec}; path=/wp-admin; secure; HttpOnly"),
                         ("Set-Cookie", f"{LOGGED_IN}={token.replace('|', '%7C')}; path=/; "
                                        "secure; HttpOnly"),
                         ("X-Redirect-By", "WordPress"), ("Location", f"{SITE}/wp-admin/")], \
                b"", False
        fields = [HTML, *NOCACHE, test_cookie, ("X-Frame-Options", "SAMEORIGIN"),
                  ("Referrer-Policy", "strict-origin-when-cross-origin")]
        form = f"<form action=wp-login.php?action={args.get('action', 'login')}></form>"
        return 200, fields, form.encode(), True

    def _rest(self, path: str, args: dict[str, str], headers: dict[str, str],
              user: str | None) -> tuple[int, list[tuple[str, str]], bytes, bool]:
        fields = [("Content-Type", "application/json; charset=UTF-8"),
                  ("X-Robots-Tag", "noindex"), API_LINK,
                  ("X-Content-Type-Options", "nosniff"),
                  ("Access-Control-Expose-Headers", "X-WP-Total, X-WP-TotalPages, Link"),
                  ("Access-Control-Allow-Headers", "Authorization, X-WP-Nonce, "
                   "Content-Disposition, Content-MD5, Content-Type"), ("Allow", "GET")]
        # A nonce authenticates only with the login cookie (rest_cookie_check_errors).
        authed = (user is not None and "x-wp-nonce" in headers) or "authorization" in headers
        if authed:
            fields += NOCACHE
        self.renders += 1
        payload = {"path": path, "args": args, "user": "editor" if authed else None,
                   "render": self.renders}
        return 200, fields, json.dumps(payload).encode(), False


def _cookies(header: str) -> dict[str, str]:
    jar: dict[str, str] = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            jar[name] = unquote(value)
    return jar


def _response(status: int, fields: list[tuple[str, str]], body: bytes, chunked: bool) -> bytes:
    reason = {200: "OK", 301: "Moved Permanently", 302: "Found", 404: "Not Found",
              405: "Method Not Allowed"}[status]
    head = [f"HTTP/1.1 {status} {reason}", f"Date: {formatdate(usegmt=True)}",
            "Server: Apache/2.4.62 (Debian)", *(f"{k}: {v}" for k, v in fields),
            "Keep-Alive: timeout=5, max=100", "Connection: Keep-Alive"]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        framed = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else \
            b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        framed = body
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + framed
