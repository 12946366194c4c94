"""Which of the pages' languages (Kyrgyz, Russian, English) a reader gets: their
Accept-Language (RFC 9110 §12.5.4, q-values honoured), else the site's default."""

from __future__ import annotations

LANGUAGES = ("ky", "ru", "en")

# Primary subtags (and their ISO 639-2 forms) for the languages the pages are written in.
_ALIASES = {"ky": "ky", "kir": "ky", "ru": "ru", "rus": "ru", "en": "en", "eng": "en"}
_MAX_ITEMS = 32      # a header of thousands of ranges costs no more than this many
_MAX_CHARS = 512


def negotiate(value: str, default: str) -> str:
    """The best of LANGUAGES for one Accept-Language value; `default` when none is acceptable.

    A tag counts by its primary subtag (ky-KG is Kyrgyz); an unknown tag, a malformed q or
    q=0 never chooses; on equal q the earlier entry wins; `*` means the default.
    """
    best, best_q = default, 0.0
    for item in value[:_MAX_CHARS].split(",")[:_MAX_ITEMS]:
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        q = 1.0
        for param in params.split(";"):
            name, _, val = param.strip().partition("=")
            if name.strip().lower() == "q":
                q = _qvalue(val.strip())
        lang = default if primary == "*" else _ALIASES.get(primary)
        if lang is not None and q > best_q:
            best, best_q = lang, q
    return best


def _qvalue(text: str) -> float:
    """RFC 9110 qvalue: 0 to 1 with up to three decimals; anything else counts as 0."""
    try:
        q = float(text)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


class Chooser:
    """negotiate() memoized per header value, so a refusal's language costs one dict lookup.
    Bounded in count and in size: a flood of odd or huge headers cannot make it hold more than
    _LIMIT values of _MEMO_BYTES (longer ones are parsed each time, from their first 512
    characters)."""

    __slots__ = ("default", "_memo")

    _LIMIT = 1024
    _MEMO_BYTES = 128

    def __init__(self, default: str = "en") -> None:
        if default not in LANGUAGES:
            raise ValueError(f"language {default!r} is not one of {', '.join(LANGUAGES)}")
        self.default = default
        self._memo: dict[bytes, str] = {}

    def choose(self, accept_language: bytes | None) -> str:
        if not accept_language:
            return self.default
        lang = self._memo.get(accept_language)
        if lang is None:
            lang = negotiate(accept_language[:_MAX_CHARS].decode("latin-1"), self.default)
            if len(accept_language) <= self._MEMO_BYTES:
                if len(self._memo) >= self._LIMIT:
                    self._memo.clear()
                self._memo[accept_language] = lang
        return lang
