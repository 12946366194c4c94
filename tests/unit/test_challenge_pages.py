"""The challenge page: language, accessibility hooks, no external resources, size, return URLs."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

import pytest

from kalkan.defense.challenge import ChallengeResponse, Challenges, KeyRing
from kalkan.defense.challenge import pages as P
from kalkan.defense.facts import RequestFacts
from kalkan.pages import style as S

NOW = 1_700_000_000.0
SIZE_BUDGET = 10 * 1024


def facts(lang: bytes | None = None, path: str = "/news/1") -> RequestFacts:
    headers = [(b"accept-language", lang)] if lang is not None else []
    return RequestFacts("GET", "news.example", path, "", "page", "203.0.113.7", 0, 4,
                        "203.0.113.0/24", "Mozilla/5.0", headers, None)


@pytest.fixture(scope="module")
def ch() -> Challenges:
    return Challenges(KeyRing.generate(NOW))


def page(ch: Challenges, lang: bytes | None = b"en", ret: str = "/news/1?a=1&b=2",
         level: int = 2) -> ChallengeResponse:
    return ch.page(facts(lang), NOW, level, ret, "https")


def header(resp: ChallengeResponse, name: bytes) -> bytes | None:
    return next((v for k, v in resp.headers if k == name), None)


# -- language -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [
    ("ky", "ky"), ("ky-KG", "ky"), ("KY-kg,ru;q=0.9", "ky"), ("kir", "ky"),
    ("ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7", "ru"), ("en-US,en;q=0.9,ru;q=0.8", "en"),
    ("ru;q=0.5,ky;q=0.8", "ky"), ("de-DE,ru;q=0.3,en;q=0.2", "ru"),
    ("ru;q=0,en;q=0.1", "en"), ("ky;q=0", "en"), ("de,fr", "en"), ("*", "en"), ("", "en"),
    ("ru;q=abc,ky;q=0.1", "ky"), ("en;q=0.5,ru;q=0.5", "en"), (" ru ; q=1 ", "ru"),
])
def test_language_from_accept_language(value: str, expected: str) -> None:
    assert P.choose_language(value) == expected
    assert P.choose_language(value.encode()) == expected


def test_unknown_or_missing_language_is_english(ch: Challenges) -> None:
    for lang in (None, b"zh-CN", b"tr;q=1"):
        resp = page(ch, lang)
        assert b'<html lang="en">' in resp.body
        assert header(resp, b"Content-Language") == b"en"


@pytest.mark.parametrize("lang,marker", [
    ("ky", "Браузериңиз текшерилүүдө"), ("ru", "Проверка браузера"),
    ("en", "Checking your browser"),
])
def test_page_is_in_the_chosen_language(ch: Challenges, lang: str, marker: str) -> None:
    resp = page(ch, lang.encode())
    body = resp.body.decode("utf-8")
    assert f'<html lang="{lang}">' in body and marker in body
    assert header(resp, b"Content-Language") == lang.encode()


# -- what the page is made of ---------------------------------------------------------------------
class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ids: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.append(a["id"] or "")
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)


def parse(body: bytes) -> _Collect:
    p = _Collect()
    p.feed(body.decode("utf-8"))
    return p


@pytest.mark.parametrize("lang", P.LANGUAGES)
def test_page_size_budget(ch: Challenges, lang: str) -> None:
    long_return = "/" + "a" * 300
    size = len(page(ch, lang.encode(), ret=long_return).body)
    print(f"challenge page ({lang}): {size} bytes")
    assert size < SIZE_BUDGET
    for kind in ("failed", "limited", "notfound"):
        assert len(ch.pages.message(lang, f"challenge-{kind}", "/")) < 4096
    assert len(ch.pages.wait(lang, "c1.x", "/", 5)) < 4096


_EXTERNAL = re.compile(r"""(?:src|href|action|url|srcset|data)\s*[=(]\s*["']?\s*(?:https?:|//)""",
                       re.IGNORECASE)


@pytest.mark.parametrize("lang", P.LANGUAGES)
def test_no_external_resources(ch: Challenges, lang: str) -> None:
    bodies = [page(ch, lang.encode()).body, ch.pages.wait(lang, "c1.x", "/", 3),
              *(ch.pages.message(lang, f"challenge-{k}", "/")
                for k in ("failed", "limited", "notfound"))]
    for body in bodies:
        text = body.decode("utf-8")
        assert not _EXTERNAL.search(text)
        assert "http://" not in text and "https://" not in text
        for _, attrs in parse(body).tags:
            for name in ("src", "href", "action"):
                value = attrs.get(name)
                if value is not None:
                    assert value.startswith("/") and not value.startswith("//"), value


def test_page_structure_for_people_and_for_playwright(ch: Challenges) -> None:
    resp = page(ch, b"ru", level=0)
    doc = parse(resp.body)
    for needed in ("kalkan", "kalkan-js", "kalkan-nojs", "kalkan-nojs-continue"):
        assert doc.ids.count(needed) == 1, needed
    main = next(a for t, a in doc.tags if a.get("id") == "kalkan")
    for attr in ("data-c", "data-d", "data-r", "data-label", "data-starting", "data-progress",
                 "data-done", "data-cookies", "data-go", "data-trouble"):
        assert main.get(attr), attr
    # The script builds the JS-only controls (so text browsers never show a dead button), with
    # stable ids for the browser test, a label, and a polite live region for screen readers.
    for made in ('<label for="kalkan-progress">', 'id="kalkan-progress"',
                 'id="kalkan-status" role="status" aria-live="polite"',
                 'id="kalkan-form"', 'id="kalkan-nonce"',
                 'id="kalkan-continue"', 'id="kalkan-nojs-link"'):
        assert made in P.PAGE_JS, made
    # The no-JS path: a meta refresh (inside <noscript>) and a real button.
    body = resp.body.decode()
    assert re.search(r'<noscript><meta http-equiv="refresh" content="5;url=/\.kalkan/nojs\?t=c1\.'
                     r"[^\"]+&amp;r=/news/1\?a=1%26b=2\"></noscript>", body)
    assert '<form id="kalkan-nojs" action="/.kalkan/nojs" method="get">' in body
    assert doc.scripts and doc.scripts[0].startswith("(function(){var W=function(self){")
    assert '<meta name="viewport"' in body


def test_headers_and_status(ch: Challenges) -> None:
    resp = page(ch)
    assert resp.status == 403
    assert not resp.passed and not resp.failed
    assert header(resp, b"Content-Type") == b"text/html; charset=utf-8"
    assert header(resp, b"Cache-Control") == b"no-store"
    assert header(resp, b"X-Robots-Tag") == b"noindex, nofollow"
    csp = (header(resp, b"Content-Security-Policy") or b"").decode()
    assert "default-src 'none'" in csp and "worker-src blob:" in csp
    # The CSP pins exactly the inline script and style the page carries.
    doc = parse(resp.body)
    for source, directive in ((doc.scripts[0], "script-src"), (doc.styles[0], "style-src")):
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in csp


def test_challenge_fields_round_trip(ch: Challenges) -> None:
    resp = page(ch, ret="/a?x=1&y='2'")
    fields = P.challenge_fields(resp.body)
    assert fields is not None
    challenge, difficulty, ret = fields
    assert challenge.startswith("c1.") and difficulty == 18 and ret == "/a?x=1&y='2'"
    assert b"data-r=\"/a?x=1&amp;y=&#x27;2&#x27;\"" in resp.body


# -- return URLs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "//evil.example", "https://evil.example/", "http:/evil", "/\\evil.example", "\\\\evil",
    "evil.example", "", " /x", "/x y", "/\t/evil", "/x\r\nSet-Cookie:a=b", "/x#frag",
    "/.kalkan/pow?c=1", "/" + "a" * 3000, "javascript:alert(1)", '/"><script>', "/\u0430",
])
def test_unsafe_return_urls_rejected(url: str) -> None:
    assert P.safe_return(url) is None


@pytest.mark.parametrize("url", ["/", "/news/1", "/?s=word", "/a/b?x=1&y=2",
                                 "/%D0%BD%D0%BE%D0%B2%D0%BE%D1%81%D1%82%D0%B8", "/a@b:c;d=e"])
def test_safe_return_urls_kept(url: str) -> None:
    assert P.safe_return(url) == url


def test_page_never_offers_an_unsafe_return(ch: Challenges) -> None:
    for bad in ("//evil.example", "https://evil.example", "/\\evil.example"):
        fields = P.challenge_fields(page(ch, ret=bad).body)
        assert fields is not None and fields[2] == "/"


def test_endpoint_refuses_an_open_redirect(ch: Challenges) -> None:
    f = facts(path="/.kalkan/pow")
    for bad in ("//evil.example", "https://evil.example", "/\\evil.example"):
        from urllib.parse import urlencode

        resp = ch.endpoint(f, urlencode({"c": "x", "n": "1", "r": bad}), b"", NOW, "https")
        assert resp.failed and resp.reason == "pow:bad-return"
        assert header(resp, b"Location") is None
        assert b"evil" not in resp.body


def test_normalize_and_derive_return() -> None:
    # Raw non-ASCII bytes (decoded as latin-1 by the edge) become %XX.
    raw = "/новости".encode().decode("latin-1")
    assert P.normalize_return(raw) == "/%D0%BD%D0%BE%D0%B2%D0%BE%D1%81%D1%82%D0%B8"
    assert P.normalize_return("/a", "b=1") == "/a?b=1"
    assert P.normalize_return("//evil.example") == "/"
    assert P.normalize_return("/a\\b") == "/a%5Cb"
    assert P.return_url_for("GET", "/news/1", "x=1", "news.example", None) == "/news/1?x=1"
    # A POST goes back to the page holding the form, when that page is on this site.
    ref = b"https://news.example/article/7?c=1"
    assert P.return_url_for("POST", "/wp-comments-post.php", "", "news.example", ref) == \
        "/article/7?c=1"
    assert P.return_url_for("POST", "/wp-comments-post.php", "", "news.example",
                            b"https://evil.example/x") == "/"
    assert P.return_url_for("POST", "/x", "", "news.example", None) == "/"


# -- colours --------------------------------------------------------------------------------------
def _luminance(hex_colour: str) -> float:
    rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.mark.parametrize("fg,bg", [
    (S.FG, S.BG), (S.ACCENT, S.BG), (S.MUTED, S.BG), ("#ffffff", S.ACCENT),
    ("#ffffff", "#6b6b6b"), (S.DARK_FG, S.DARK_BG), (S.DARK_ACCENT, S.DARK_BG),
    (S.DARK_MUTED, S.DARK_BG), ("#ffffff", S.ACCENT),
])
def test_text_contrast_meets_wcag_aa(fg: str, bg: str) -> None:
    assert _contrast(fg, bg) >= 4.5


def test_focus_ring_is_visible() -> None:
    assert _contrast(S.FOCUS, S.BG) >= 3.0      # non-text contrast (WCAG 1.4.11)
    assert "a:focus,button:focus{outline:3px solid" in S.CSS
