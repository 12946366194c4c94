"""The dashboard's page: one HTML file shipped with the package (inline CSS, script and SVG, nothing
loaded from elsewhere), served in the reader's language (Kyrgyz, Russian or English by
Accept-Language; the page can switch)."""

from __future__ import annotations

from functools import cache
from importlib import resources

LANGUAGES = ("ky", "ru", "en")


def language(accept_language: str) -> str:
    """The first of ky, ru, en that the header asks for by preference (q-values honoured);
    English when it names none of them."""
    best, best_q = "en", -1.0
    for i, item in enumerate(accept_language.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        primary = tag.strip().lower().split("-")[0]
        # Ties go to the earlier entry: subtract a little per position.
        score = q - i * 1e-6
        if primary in LANGUAGES and q > 0 and score > best_q:
            best, best_q = primary, score
    return best


@cache
def _template() -> str:
    return (resources.files("kalkan.observe") / "assets" / "dashboard.html").read_text("utf-8")


def page(accept_language: str) -> bytes:
    """The dashboard (its sign-in form included) in the language the browser prefers."""
    return _template().replace("__LANG__", language(accept_language)).encode()


_FAILED = {
    "en": ("Wrong token", "That is not this edge's admin token.", "Try again"),
    "ru": ("Неверный токен", "Это не admin-токен этого узла.", "Попробовать снова"),
    "ky": ("Туура эмес токен", "Бул түйүндүн admin-токени эмес.", "Кайра аракет кылуу"),
}


def login_failed(accept_language: str) -> bytes:
    lang = language(accept_language)
    title, text, again = _FAILED[lang]
    return (f'<!doctype html><html lang="{lang}"><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>{title}</title><body style="font:16px system-ui,sans-serif;margin:2em">'
            f'<h1>{title}</h1><p>{text}</p><p><a href="/">{again}</a></p></body></html>'
            ).encode()
