"""The pages readers see (kalkan/pages): language choice, status and title agreeing on every page,
the site's name and logo, a newsroom's override directory, and templates that cannot be used
refused at load with their file and line."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import pytest

from kalkan.config import ConfigError, DefenseConfig, load_config_text
from kalkan.defense.engine import Defense
from kalkan.defense.verdict import Action
from kalkan.observe.metrics import Metrics
from kalkan.pages import FIELDS, KINDS, LANGUAGES, LOGO_PATH, Chooser, Pages, PagesError, negotiate
from kalkan.pages.texts import TEXTS

# What each status means, in English: a page's title must say the same thing as its status.
TITLE_FOR_STATUS = {
    403: ("Checking your browser", "Just a moment", "The check did not succeed",
          "Access blocked for a while"),
    404: ("Not found",),
    429: ("Too many requests", "Too many attempts"),
    502: ("The site cannot be reached",),
    503: ("The site is very busy", "Down for maintenance"),
    504: ("The site did not answer in time",),
}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


@pytest.fixture(scope="module")
def pages() -> Pages:
    return Pages(name="Ала-Тоо Ньюс & Co")


def title_of(body: bytes) -> str:
    m = re.search(rb"<title>(.*?)</title>", body, re.DOTALL)
    assert m is not None
    return html.unescape(m.group(1).decode())


def sample(page_fields: tuple[str, ...]) -> dict[str, bytes]:
    return {f: b"1" for f in page_fields}


# -- Accept-Language ------------------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [
    ("ky", "ky"), ("ky-KG", "ky"), ("KY-kg,ru;q=0.9", "ky"), ("kir", "ky"),
    ("ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7", "ru"), ("en-US,en;q=0.9,ru;q=0.8", "en"),
    ("ru;q=0.5,ky;q=0.8", "ky"), ("de-DE,ru;q=0.3,en;q=0.2", "ru"), ("de-DE, ky-KG;q=0.1", "ky"),
    ("ru;q=0,en;q=0.1", "en"), ("ky;q=0", "DEFAULT"), ("de,fr", "DEFAULT"), ("*", "DEFAULT"),
    ("", "DEFAULT"), ("ru;q=abc,ky;q=0.1", "ky"), ("en;q=0.5,ru;q=0.5", "en"),
    (" ru ; q=1 ", "ru"), ("ru;q=2,en;q=0.5", "en"), ("x-klingon,tlh", "DEFAULT"),
    ("zh-Hant-TW;q=1, ru-KZ;q=0.4", "ru"), ("en-GB;Q=0.2,ru;q=0.3", "ru"),
])
@pytest.mark.parametrize("default", ["en", "ru"])
def test_accept_language(value: str, expected: str, default: str) -> None:
    want = default if expected == "DEFAULT" else expected
    assert negotiate(value, default) == want
    assert Chooser(default).choose(value.encode()) == want


def test_chooser_memo_is_bounded_and_unknown_default_refused() -> None:
    c = Chooser("ky")
    for i in range(5000):
        assert c.choose(b"x%d" % i) == "ky"
    assert len(c._memo) <= Chooser._LIMIT
    huge = b"de;q=0.1," * 4000 + b"ru"
    assert c.choose(huge) == "ky" and huge not in c._memo   # parsed from its start, not kept
    assert c.choose(b"ru;q=0.2," + huge) == "ru"
    assert c.choose(None) == "ky"
    with pytest.raises(ValueError, match="not one of ky, ru, en"):
        Chooser("de")
    assert Pages(language="ru").choose(b"de-DE") == "ru"


# -- every page: status, title, name, language ----------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_page_title_agrees_with_its_status(pages: Pages, kind: str, lang: str) -> None:
    page = pages.page(kind, lang)
    assert page.status == KINDS[kind]
    body = page.render(sample(FIELDS.get(kind, ())))
    title = title_of(body)
    heading = TEXTS[lang][kind]["title"]
    assert title == f"{heading} · Ала-Тоо Ньюс & Co"
    text = body.decode()
    assert f"<h1>{html.escape(heading)}</h1>" in text
    assert "Ала-Тоо Ньюс &amp; Co" in text                 # the site's name, escaped
    assert f'<html lang="{lang}">' in text
    assert (b"Content-Language", lang.encode()) in page.headers
    assert (b"Cache-Control", b"no-store") in page.headers
    english = TEXTS["en"][kind]["title"]
    assert english in TITLE_FOR_STATUS[page.status], (kind, page.status, english)
    # No other status's number in the title or on the page (the tarpit said "403 Forbidden").
    for other in TITLE_FOR_STATUS:
        if other != page.status:
            assert str(other) not in title
    if kind not in ("challenge", "nojs-wait"):
        code = TEXTS[lang]["common"]["code"].format(status=page.status)
        assert html.escape(code) in text


def test_titles_differ_between_pages(pages: Pages) -> None:
    for lang in LANGUAGES:
        titles = [TEXTS[lang][k]["title"] for k in KINDS]
        assert len(set(titles)) == len(titles), lang
        kyrgyz = "".join(t for k in KINDS for t in TEXTS["ky"][k].values())
        assert all(ch in kyrgyz for ch in "ңөү")   # Kyrgyz, not Russian
    for lang in LANGUAGES:
        assert set(TEXTS[lang]) == set(TEXTS["en"]), lang
        for kind in TEXTS["en"]:
            assert set(TEXTS[lang][kind]) == set(TEXTS["en"][kind]), (lang, kind)


def test_tarpit_is_a_429_about_too_many_requests(pages: Pages) -> None:
    for lang in LANGUAGES:
        page = pages.page("tarpit", lang)
        assert page.status == 429
        assert b"403" not in page.body and b"Forbidden" not in page.body


def test_nojs_reader_is_not_told_about_a_calculation(pages: Pages) -> None:
    """Without JavaScript only the HTML outside <script> shows; the words about the calculation
    are put on the page by the script."""
    for lang in LANGUAGES:
        body = pages.page("challenge", lang).bind(script="").render(
            sample(FIELDS["challenge"])).decode()
        without_script = re.sub(r"<script>.*?</script>", "", body, flags=re.DOTALL)
        calc = TEXTS[lang]["challenge"]["calc"]
        assert html.escape(calc) not in without_script.split('data-calc="')[0]
        visible = re.sub(r'data-[a-z]+="[^"]*"', "", without_script)
        assert html.escape(calc) not in visible
        assert html.escape(TEXTS[lang]["challenge"]["intro"]) in visible


def test_static_pages_are_one_piece_and_fields_are_slots(pages: Pages) -> None:
    for kind in KINDS:
        page = pages.page(kind, "en")
        if kind in FIELDS:
            assert {name for _, name in page.slots} <= set(FIELDS[kind])
        else:
            assert page.slots == () and len(page.parts) == 1 and page.body.startswith(
                b"<!doctype html>")
    with pytest.raises(ValueError, match="per-request fields"):
        _ = pages.page("challenge", "en").body


def test_no_name_no_header_and_csp_blocks_images(tmp_path: Path) -> None:
    bare = Pages()
    body = bare.page("block", "en").body.decode()
    assert 'class="site"' not in body and title_of(body.encode()) == "Access blocked for a while"
    csp = dict(bare.page("block", "en").headers)[b"Content-Security-Policy"]
    assert b"img-src 'none'" in csp and b"script-src 'none'" in csp


def test_logo_is_served_by_kalkan_and_shown(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    pages = Pages(name="Kaktus", logo=str(logo))
    assert pages.logo is not None
    assert pages.logo.url.startswith(LOGO_PATH + "?v=") and pages.logo.data == PNG
    assert (b"Content-Type", b"image/png") in pages.logo.headers
    for kind in KINDS:
        page = pages.page(kind, "ky")
        text = page.render(sample(FIELDS.get(kind, ()))).decode()
        assert f'<img src="{pages.logo.url}"' in text
        assert b"img-src 'self'" in dict(page.headers)[b"Content-Security-Policy"]


@pytest.mark.parametrize("name,data,problem", [
    ("logo.bmp", b"BM", "must be one of"),
    ("logo.png", b"\0" * (64 * 1024 + 1), "at most 65536"),
    ("missing.png", None, "cannot read the logo"),
])
def test_bad_logo_is_named(tmp_path: Path, name: str, data: bytes | None, problem: str) -> None:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(PagesError, match=problem) as exc:
        Pages(logo=str(path))
    assert str(path) in str(exc.value)


# -- the newsroom's templates ---------------------------------------------------------------------
def test_override_replaces_a_template_by_file_name(tmp_path: Path) -> None:
    (tmp_path / "block.html").write_text(
        '{% extends "message.html" %}\n{% block actions %}\n'
        '<p>{% if lang == "ru" %}Пишите нам: {% else %}Write to us: {% endif %}'
        'tips@news.test</p>\n{% endblock %}\n')
    (tmp_path / "_footer.html").write_text("<footer>{{ site_name }}</footer>\n")
    (tmp_path / "maintenance.html").write_text(
        '{% extends "base.html" %}{% block content %}<p>{{ t.text }}</p>'
        '{% include "_footer.html" %}{% endblock %}')
    pages = Pages(name="Kloop", templates=str(tmp_path))
    assert "Пишите нам: tips@news.test" in pages.page("block", "ru").body.decode()
    assert "Write to us" in pages.page("block", "en").body.decode()
    assert b"<footer>Kloop</footer>" in pages.page("maintenance", "ky").body
    # The others are the shipped ones, still with the site's name.
    shipped = Pages(name="Kloop")
    assert pages.page("tarpit", "en").body == shipped.page("tarpit", "en").body
    assert pages.page("block", "en").status == 403


def test_override_of_base_changes_every_page_and_its_csp(tmp_path: Path) -> None:
    base = (Path(__file__).parents[2] / "src/kalkan/pages/templates/base.html").read_text()
    (tmp_path / "base.html").write_text(base.replace("<style>{{ css }}</style>",
                                                     "<style>body{color:#000}</style>"))
    pages = Pages(templates=str(tmp_path))
    for kind in ("block", "busy", "challenge"):
        page = pages.page(kind, "en")
        assert b"<style>body{color:#000}</style>" in b"".join(page.parts)
        csp = dict(page.headers)[b"Content-Security-Policy"].decode()
        assert "style-src 'sha256-" in csp


def broken(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    with pytest.raises(PagesError) as exc:
        Pages(templates=str(tmp_path))
    return str(exc.value)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    message = broken(tmp_path, "block.html",
                     '{% extends "message.html" %}\n{% block actions %}\n{% if %}\n'
                     "{% endblock %}\n")
    assert f"{tmp_path / 'block.html'}:3:" in message


def test_unknown_variable_names_file_and_line(tmp_path: Path) -> None:
    message = broken(tmp_path, "busy.html",
                     '{% extends "base.html" %}\n{% block content %}\n<p>ok</p>\n'
                     "<p>{{ t.nonexistent_text }}</p>\n{% endblock %}\n")
    assert f"{tmp_path / 'busy.html'}:4" in message and "nonexistent_text" in message


def test_unknown_file_name_is_refused(tmp_path: Path) -> None:
    message = broken(tmp_path, "blocked.html", "<p>typo in the name</p>")
    assert "blocked.html" in message and "block.html" in message


def test_third_party_resources_are_refused(tmp_path: Path) -> None:
    for snippet in ('<script src="https://cdn.example/x.js"></script>',
                    '<link rel="stylesheet" href="//fonts.example/css">',
                    "<style>@import url(https://fonts.example/x.css);</style>",
                    '<img src="http://tracker.example/p.gif">'):
        message = broken(tmp_path, "timeout.html",
                         '{% extends "base.html" %}{% block content %}' + snippet
                         + "{% endblock %}")
        assert "timeout.html" in message and "another site" in message


def test_challenge_override_must_keep_what_the_script_needs(tmp_path: Path) -> None:
    message = broken(tmp_path, "challenge.html",
                     '{% extends "base.html" %}{% block content %}<p>{{ t.intro }}</p>'
                     "{% endblock %}")
    assert "challenge.html" in message and "{{ ticket }}" in message


def test_per_request_values_cannot_go_into_a_script(tmp_path: Path) -> None:
    message = broken(tmp_path, "nojs-wait.html",
                     '{% extends "base.html" %}{% block content %}{{ ticket }}{{ ret }}'
                     "<script>var t='{{ ticket }}'</script>{% endblock %}")
    assert "nojs-wait.html" in message and "inside <script>" in message


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PagesError, match="does not exist"):
        Pages(templates=str(tmp_path / "nope"))


def test_a_failed_reload_keeps_the_pages(tmp_path: Path) -> None:
    pages = Pages(templates=str(tmp_path))
    before = pages.page("block", "en")
    (tmp_path / "block.html").write_text("{% if %}")
    with pytest.raises(PagesError):
        pages.load()
    assert pages.page("block", "en") is before
    (tmp_path / "block.html").write_text('{% extends "message.html" %}{% block actions %}'
                                         "<p>new</p>{% endblock %}")
    generation = pages.generation
    pages.load()
    assert b"<p>new</p>" in pages.page("block", "en").body and pages.generation == generation + 1


# -- config ---------------------------------------------------------------------------------------
def test_check_config_names_the_broken_template(tmp_path: Path) -> None:
    (tmp_path / "tarpit.html").write_text('{% extends "message.html" %}\n{% block x %}\n')
    text = f"site:\n  name: Kaktus\n  templates: {tmp_path}\n"
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "kalkan.yaml")
    message = str(exc.value)
    assert message.startswith("kalkan.yaml:3: site.templates:")
    assert f"{tmp_path / 'tarpit.html'}:2" in message


def test_check_config_site_language_and_logo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kalkan.yaml:2: site.language: 'kg' is not one of"):
        load_config_text("site:\n  language: kg\n", "kalkan.yaml")
    with pytest.raises(ConfigError, match=r"kalkan.yaml:2: site.logo: .*must be one of"):
        load_config_text(f"site:\n  logo: {tmp_path / 'x.bmp'}\n", "kalkan.yaml")
    config = load_config_text("site:\n  name: Kaktus\n  language: ky\n  maintenance: true\n")
    assert config.site.name == "Kaktus" and config.site.maintenance


# -- the defence's refusals -----------------------------------------------------------------------
class View:
    def __init__(self, client: str, lang: bytes | None) -> None:
        self.method, self.host, self.path, self.query = "GET", "news.test", "/", ""
        self.client, self.scheme = client, "http"
        self.client_ip: tuple[int, int] | None = None
        self.headers = [(b"accept-language", lang)] if lang else []
        self.cookie = None
        self.user_agent = b"Mozilla/5.0"
        self.referer: bytes | None = None
        self.prefetched_body = None

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


def test_block_and_tarpit_verdicts_speak_the_readers_language(tmp_path: Path) -> None:
    pages = Pages(name="Kaktus", language="ru")
    defense = Defense(DefenseConfig(), tmp_path, Metrics(), pages)
    now = time.time()
    defense.decisions.add("192.0.2.1", "block", 600, "test", "manual", now)
    defense.decisions.add("192.0.2.2", "tarpit", 600, "test", "manual", now)
    ky = defense.check(View("192.0.2.1", b"ky-KG"))
    assert ky.action is Action.BLOCK and ky.status == 403
    assert ky.body == pages.page("block", "ky").body
    assert defense.check(View("192.0.2.1", b"ky-KG,ky;q=0.9")).body == ky.body
    assert defense.check(View("192.0.2.1", b"ky")) is ky              # one shared verdict
    assert defense.check(View("192.0.2.1", None)).body == pages.page("block", "ru").body
    tarpit = defense.check(View("192.0.2.2", b"en"))
    assert tarpit.action is Action.TARPIT and tarpit.status == 429
    assert title_of(tarpit.body) == "Too many requests · Kaktus"
    assert (b"Content-Language", b"en") in tarpit.headers
