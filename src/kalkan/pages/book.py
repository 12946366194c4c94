"""The rendered pages: every (page, language) rendered once from the Jinja2 templates at start
(and on reload) into byte pieces, so answering a reader during a flood is a dict lookup (static
pages) or a join of a few pieces (the challenge's ticket, a wait's seconds), never a template
walk. A newsroom's template directory replaces shipped templates by file name; a template that
does not render is a `PagesError` naming the file and line, raised at start, never per request.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import jinja2
from markupsafe import Markup

from kalkan.pages.language import LANGUAGES, Chooser
from kalkan.pages.style import CSS
from kalkan.pages.texts import texts_for

Header = tuple[bytes, bytes]

SHIPPED = Path(__file__).resolve().parent / "templates"
LOGO_PATH = "/.kalkan/logo"      # where the site's logo is served (by the edge itself)
MAX_LOGO_BYTES = 64 * 1024   # sent whole to any reader who asks, blocked ones too
_LOGO_TYPES = {".png": b"image/png", ".svg": b"image/svg+xml", ".jpg": b"image/jpeg",
               ".jpeg": b"image/jpeg", ".webp": b"image/webp", ".gif": b"image/gif",
               ".ico": b"image/x-icon"}

# Every page and its HTTP status; the template is KIND.html. The status says what the page's
# title says (tests/unit/test_pages.py holds them together).
KINDS: dict[str, int] = {
    "challenge": 403,            # prove you are a reader (see defense/challenge/__init__.py)
    "nojs-wait": 403,            # the no-JS answer came before its ticket was valid
    "challenge-failed": 403,
    "challenge-limited": 429,
    "challenge-notfound": 404,
    "block": 403,
    "tarpit": 429,
    "busy": 503,                 # the origin gate is full or the breaker open, nothing cached
    "maintenance": 503,          # site.maintenance: only cached pages are served
    "bad-gateway": 502,
    "timeout": 504,
}
# Values filled per request (or, for `script`, once by the page's owner: see Page.bind). In a
# template they are placeholders: use them as they are, never through a filter.
FIELDS: dict[str, tuple[str, ...]] = {
    "challenge": ("ticket", "difficulty", "ret", "nojs_url", "delay", "nojs_text", "script"),
    "nojs-wait": ("ticket", "ret", "nojs_url", "wait", "wait_text"),
    "challenge-failed": ("ret",),
    "challenge-limited": ("ret",),
    "challenge-notfound": ("ret",),
}
# The fields a page cannot work without (the challenge script reads them from the page).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "challenge": ("ticket", "difficulty", "ret", "script"),
    "nojs-wait": ("ticket", "ret"),
}
_BOUND = frozenset({"script"})   # filled by bind(), so allowed inside <script>
_MARK = "\x00"
_IMG_SRC = {True: "'self'", False: "'none'"}   # the logo is served by Kalkan itself

_INLINE = re.compile(r"<(script|style)\b[^>]*>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
# Anything that would make a browser fetch from another origin (or any scheme-relative URL).
_EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|action|srcset|poster|data)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//"""
    r"""|url\(\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//|@import)""", re.IGNORECASE)
_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


class PagesError(ValueError):
    """A template (or the logo) that cannot be used; the message names the file and line."""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@dataclass(frozen=True, slots=True)
class Page:
    """One page in one language: literal byte pieces with per-request fields between them.

    `parts` alternates literal bytes (even indexes) and empty slots (odd indexes) whose field
    names are in `slots`; a page without fields is `parts[0]`, the same bytes for everyone.
    `headers` has the Content-Type, Content-Security-Policy (hashes of the page's own inline
    script and style: nothing else may run or load), Content-Language and no-store.
    """

    kind: str
    lang: str
    status: int
    title: str
    text: str
    origin: str                   # the template file, for errors
    logo: bool
    parts: tuple[bytes, ...]
    slots: tuple[tuple[int, str], ...]
    headers: tuple[Header, ...]

    @property
    def body(self) -> bytes:
        """The page when it has no per-request fields."""
        if self.slots:
            raise ValueError(f"page {self.kind} has per-request fields: use render()")
        return self.parts[0]

    def render(self, fields: Mapping[str, bytes]) -> bytes:
        """The page with its fields filled (bytes already HTML-safe)."""
        out = list(self.parts)
        for i, name in self.slots:
            out[i] = fields[name]
        return b"".join(out)

    def bind(self, **values: str) -> Page:
        """The page with some fields fixed for good (the challenge's script, owned by the
        defence), its CSP recomputed to allow exactly that script."""
        text = self.text
        for name, value in values.items():
            text = text.replace(f"{_MARK}{name}{_MARK}", value)
        return _finish(self.kind, self.lang, text, self.origin, self.logo)


def _finish(kind: str, lang: str, text: str, origin: str, logo: bool) -> Page:
    """Split a rendered page into pieces and work out its headers."""
    scripts: list[str] = []
    styles: list[str] = []
    for m in _INLINE.finditer(text):
        body = m.group(2)
        if _MARK in body:
            names = set(body.split(_MARK)[1::2]) - _BOUND
            if names:
                raise PagesError(
                    f"{origin}: {', '.join(sorted(names))} inside <{m.group(1)}>: per-request "
                    "values cannot go into an inline script or style (the page's "
                    "Content-Security-Policy pins their exact text); put them in the HTML, e.g. "
                    "a data- attribute")
            continue   # bound later; the CSP is recomputed then
        (scripts if m.group(1).lower() == "script" else styles).append(body)
    title_m = _TITLE.search(text)
    title = title_m.group(1).strip() if title_m else ""
    pieces = text.split(_MARK)
    parts = tuple(p.encode("utf-8") if i % 2 == 0 else b"" for i, p in enumerate(pieces))
    slots = tuple((i, p) for i, p in enumerate(pieces) if i % 2)
    script_src = " ".join(sorted({_csp_hash(s) for s in scripts})) or "'none'"
    style_src = " ".join(sorted({_csp_hash(s) for s in styles})) or "'none'"
    csp = (f"default-src 'none'; script-src {script_src}; style-src {style_src}; "
           f"img-src {_IMG_SRC[logo]}; worker-src blob:; child-src blob:; "
           "connect-src 'none'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    headers = (
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Cache-Control", b"no-store"),
        (b"Content-Security-Policy", csp.encode("ascii")),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"X-Robots-Tag", b"noindex, nofollow"),
        (b"Referrer-Policy", b"same-origin"),
        (b"Content-Language", lang.encode("ascii")),
    )
    return Page(kind, lang, KINDS[kind], title, text, origin, logo, parts, slots, headers)


@dataclass(frozen=True, slots=True)
class Logo:
    """The site's logo as Kalkan serves it at LOGO_PATH."""

    content_type: bytes
    data: bytes
    url: str                      # LOGO_PATH?v=<digest>: a new file is a new URL

    @property
    def headers(self) -> tuple[Header, ...]:
        return ((b"Content-Type", self.content_type),
                (b"Cache-Control", b"public, max-age=86400"),
                (b"X-Content-Type-Options", b"nosniff"),
                # An SVG opened on its own must not run anything.
                (b"Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'"))


def read_logo(path: str | None) -> Logo | None:
    if not path:
        return None
    p = Path(path)
    kind = _LOGO_TYPES.get(p.suffix.lower())
    if kind is None:
        raise PagesError(f"{p}: the logo must be one of {', '.join(sorted(_LOGO_TYPES))} "
                         "(a local file: Kalkan serves it itself)")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PagesError(f"{p}: cannot read the logo: {exc.strerror}") from None
    if len(data) > MAX_LOGO_BYTES:
        raise PagesError(f"{p}: the logo is {len(data)} bytes; at most {MAX_LOGO_BYTES} "
                         "(every refused reader may fetch it)")
    digest = hashlib.sha256(data).hexdigest()[:12]
    return Logo(kind, data, f"{LOGO_PATH}?v={digest}")


class Pages:
    """Every page in every language, rendered; `choose` picks a reader's language.

    `name`/`logo`: the site's name and logo file; `language`: the default for readers whose
    Accept-Language names none of ky/ru/en; `templates`: a directory whose files replace the
    shipped templates of the same name (and may add partials whose names start with "_").
    """

    def __init__(self, *, name: str = "", logo: str | None = None, language: str = "en",
                 templates: str | None = None) -> None:
        self.name = name
        self.logo_file = logo
        self.template_dir = templates
        self.chooser = Chooser(language)
        self.generation = 0
        self.logo: Logo | None = None
        self._pages: dict[tuple[str, str], Page] = {}
        self.load()

    @classmethod
    def from_config(cls, site: object) -> Pages:
        """From a config's `site` section (anything with name, logo, language, templates)."""
        return cls(name=getattr(site, "name", "") or "", logo=getattr(site, "logo", None),
                   language=getattr(site, "language", "en") or "en",
                   templates=getattr(site, "templates", None))

    def load(self) -> None:
        """Render everything now; on any problem raise PagesError and keep what was there."""
        logo = read_logo(self.logo_file)
        env = _environment(self.template_dir)
        pages: dict[tuple[str, str], Page] = {}
        for kind in KINDS:
            for lang in LANGUAGES:
                pages[(kind, lang)] = _render(env, kind, lang, self.name, logo)
        self.logo, self._pages = logo, pages
        self.generation += 1

    def choose(self, accept_language: bytes | None) -> str:
        return self.chooser.choose(accept_language)

    def page(self, kind: str, lang: str) -> Page:
        return self._pages[(kind, lang)]

    def all(self) -> list[Page]:
        return list(self._pages.values())


def _environment(template_dir: str | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if template_dir:
        d = Path(template_dir)
        if not d.is_dir():
            raise PagesError(f"{d}: the pages' template directory does not exist")
        known = {f"{k}.html" for k in KINDS} | {p.name for p in SHIPPED.glob("*.html")}
        for f in sorted(d.iterdir()):
            if f.suffix == ".html" and f.name not in known and not f.name.startswith("_"):
                raise PagesError(
                    f"{f}: not one of Kalkan's templates, so it would never be used (the names "
                    f"are {', '.join(sorted(known))}; a file of your own that others include "
                    "must start with _)")
        loaders.append(jinja2.FileSystemLoader(str(d)))
    loaders.append(jinja2.FileSystemLoader(str(SHIPPED)))
    return jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True)


def _render(env: jinja2.Environment, kind: str, lang: str, name: str, logo: Logo | None) -> Page:
    template_name = f"{kind}.html"
    t = texts_for(lang, kind)
    context: dict[str, object] = {
        "kind": kind, "lang": lang, "status": KINDS[kind], "t": t,
        "site_name": name, "logo_url": logo.url if logo else None,
        "css": Markup(CSS), "code": t["code"].format(status=KINDS[kind]),
    }
    fields = FIELDS.get(kind, ())
    context.update({f: Markup(f"{_MARK}{f}{_MARK}") for f in fields})
    origin = template_name
    try:
        template = env.get_template(template_name)
        origin = template.filename or template_name
        text = template.render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise PagesError(f"{exc.filename or template_name}:{exc.lineno}: {exc.message}") \
            from None
    except jinja2.TemplateNotFound as exc:
        raise PagesError(f"{template_name}: template {exc.name} not found") from None
    except Exception as exc:  # anything a template does is its author's error
        raise PagesError(f"{_where(sys.exc_info()[2], origin)}: {type(exc).__name__}: "
                         f"{exc} (rendering {template_name} in {lang})") from None
    used = set(text.split(_MARK)[1::2])
    missing = [f for f in _REQUIRED.get(kind, ()) if f not in used]
    if missing:
        raise PagesError(f"{origin}: must use {', '.join('{{ ' + f + ' }}' for f in missing)}"
                         " (the page does not work without it)")
    if _MARK in text and not used <= set(fields):
        raise PagesError(f"{origin}: a per-request value was changed by a filter; use "
                         f"{', '.join(sorted(fields))} as they are")
    m = _EXTERNAL.search(text)
    if m is not None:
        line = text.count("\n", 0, m.start()) + 1
        raise PagesError(f"{origin}: loads something from another site near rendered line "
                         f"{line} ({m.group(0)!r}): pages may use only what is inline, and the "
                         "logo from site.logo")
    return _finish(kind, lang, text, origin, logo is not None)


def _where(tb: TracebackType | None, default: str) -> str:
    """FILE:LINE of the innermost template frame in a traceback (Jinja maps its frames)."""
    found = default
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".html") or filename.endswith(".j2"):
            found = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found
