"""The readers load as a file of request heads, for the fixed-rate client (bench/fixed_rate.c).

``bench/wrk/readers.lua`` builds every request of the readers load inside wrk. The fixed-rate
client cannot run Lua, so this module builds a pool of heads with the same distributions: the
same browser templates, languages, referers and themes (read from readers.lua itself, so the two
cannot drift apart), the same per-browser navigation headers and the same header order, and a
cookie ``_ga=GA1.2.<random>.1#########; _gid=...; theme=...`` whose nine ``#`` the client
overwrites with the request's number, so no two requests it sends are byte-identical.

Differences from readers.lua, on purpose: the pool is finite (:data:`POOL_SIZE` heads, cycled),
so a head's fields all come back together every ``POOL_SIZE`` requests, where the script draws
fresh ones (a Chromium User-Agent with a random build and patch is nearly always new); the pool
is larger than every memo of request fields in Kalkan (at most 4,096 entries), so no memo sees
a repeat it would not see with wrk. It is drawn from a fixed seed, so every peer gets the same
heads in the same order. No ``xff=`` variant.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bench.common import BENCH_DIR, BenchError

READERS_LUA = BENCH_DIR / "wrk" / "readers.lua"
PLACEHOLDER = "#" * 9
"""Where the fixed-rate client writes each request's number (zero-padded, nine digits)."""
POOL_SIZE = 32_768
SEED = 20_201_222
"""A fixed seed: every peer is sent the same heads in the same order."""

# What each browser family sends on a navigation besides its User-Agent and Accept (readers.lua's
# `request`; test_bench_smoke checks that every line is still in the script).
EXTRA_HEADERS = {
    "chrome": ("Upgrade-Insecure-Requests: 1", "Sec-Fetch-Site: none", "Sec-Fetch-Mode: navigate",
               "Sec-Fetch-User: ?1", "Sec-Fetch-Dest: document"),
    "safari": ("Sec-Fetch-Site: none", "Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: document"),
    "firefox": ("Upgrade-Insecure-Requests: 1", "Sec-Fetch-Dest: document",
                "Sec-Fetch-Mode: navigate", "Sec-Fetch-Site: cross-site", "Sec-Fetch-User: ?1"),
}
"""By header style: readers.lua's "ffdup" and "firefox" template styles send Firefox's."""


@dataclass(frozen=True)
class Template:
    """One browser: its User-Agent around the version, the version range and the style."""

    prefix: str
    suffix: str
    low: int
    high: int
    style: str


@dataclass(frozen=True)
class ReadersTables:
    """The data of readers.lua."""

    templates: tuple[Template, ...]
    accept: dict[str, str]
    """By header style (chrome, safari, firefox)."""
    languages: tuple[str, ...]
    referers: tuple[str, ...]
    """Each "" or a whole ``Referer: ...`` line with its CRLF, as in the script."""
    themes: tuple[str, ...]


# --------------------------------------------------------------------------- reading readers.lua

_TOKEN = re.compile(r'(?:\s|--[^\n]*)*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+)'
                    r"|(?P<name>[A-Za-z_]\w*)|(?P<op>\.\.|[{},]))")
"""One token of a Lua table constructor, after any white space and comments."""
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), literal[1:-1])


class _Reader:
    """Reads one Lua table constructor from *source* at *pos*, token by token: the table ends
    before the code after it, which these tokens could not read."""

    def __init__(self, source: str, pos: int, names: dict[str, str]) -> None:
        self.source, self.pos, self.names = source, pos, names

    def _match(self) -> re.Match[str]:
        match = _TOKEN.match(self.source, self.pos)
        if match is None:
            near = self.source[self.pos:self.pos + 40]
            raise BenchError(f"{READERS_LUA}: cannot read a table near {near!r}")
        return match

    def peek(self) -> tuple[str, str]:
        """The next token (kind, text), not taken."""
        match = self._match()
        kind = match.lastgroup or ""
        return kind, match.group(kind)

    def take(self) -> tuple[str, str]:
        """The next token (kind, text), taken."""
        token = self.peek()
        self.pos = self._match().end()
        return token

    def value(self) -> object:
        """A table, a number, or strings and names joined with ``..``."""
        kind, text = self.take()
        if (kind, text) == ("op", "{"):
            items: list[object] = []
            while self.peek() != ("op", "}"):
                items.append(self.value())
                if self.peek() == ("op", ","):
                    self.take()
            self.take()
            return items
        if kind == "num":
            return int(text)
        parts = []
        while True:
            if kind == "str":
                parts.append(_unquote(text))
            elif kind == "name" and text in self.names:
                parts.append(self.names[text])
            else:
                raise BenchError(f"{READERS_LUA}: unexpected {text!r} in a table")
            if self.peek() != ("op", ".."):
                return "".join(parts)
            self.take()
            kind, text = self.take()


def _table(source: str, name: str, names: dict[str, str]) -> list[object]:
    match = re.search(rf"^local {name} = (?=\{{)", source, re.M)
    if match is None:
        raise BenchError(f"{READERS_LUA}: no table {name!r}")
    value = _Reader(source, match.end(), names).value()
    if not isinstance(value, list):
        raise BenchError(f"{READERS_LUA}: {name} is not a table")
    return value


@cache
def readers_tables(path: Path = READERS_LUA) -> ReadersTables:
    """Read the templates, Accept values, languages, referers and themes from readers.lua."""
    source = path.read_text()
    names = {m.group(1): _unquote(m.group(2)) for m in re.finditer(
        r'^local (\w+) = ("(?:[^"\\]|\\.)*")\s*$', source, re.M)}
    templates = []
    for row in _table(source, "templates", names):
        if not (isinstance(row, list) and len(row) == 5):
            raise BenchError(f"{path}: a template is not {{prefix, suffix, low, high, style}}")
        prefix, suffix, low, high, style = row
        if style not in ("chrome", "ffdup", "safari", "firefox"):
            raise BenchError(f"{path}: unknown template style {style!r}")
        templates.append(Template(str(prefix), str(suffix), int(str(low)), int(str(high)),
                                  str(style)))
    accept = {style: names[f"ACCEPT_{style.upper()}"] for style in EXTRA_HEADERS}
    return ReadersTables(
        templates=tuple(templates),
        accept=accept,
        languages=tuple(str(v) for v in _table(source, "languages", names)),
        referers=tuple(str(v) for v in _table(source, "referers", names)),
        themes=tuple(str(v) for v in _table(source, "themes", names)),
    )


# --------------------------------------------------------------------------- the heads


def header_style(template_style: str) -> str:
    """The navigation headers a template's browser sends: chrome, safari or firefox."""
    return template_style if template_style in ("chrome", "safari") else "firefox"


def user_agent(t: Template, rng: random.Random) -> str:
    """A User-Agent from template *t* with a random version, as readers.lua's ``user_agent``."""
    major = rng.randint(t.low, t.high)
    if t.style == "chrome":
        version = f"{major}.0.{rng.randint(4000, 6999)}.{rng.randint(10, 250)}"
    elif t.style == "ffdup":  # Firefox repeats its version: rv:V.0) Gecko/... Firefox/V.0
        return f"{t.prefix}{major}.0{t.suffix}{major}.0"
    elif t.style == "safari":
        version = f"{major}.{rng.randint(0, 6)}"
    else:
        version = f"{major}.{rng.randint(0, 9)}.{rng.randint(0, 99)}"
    return t.prefix + version + t.suffix


def reader_head(path: str, host: str, rng: random.Random,
                tables: ReadersTables | None = None) -> str:
    """One reader's ``GET`` head (ending with the empty line), with the placeholder in its
    cookie: header for header what readers.lua sends."""
    tables = tables or readers_tables()
    t = rng.choice(tables.templates)
    style = header_style(t.style)
    agent = user_agent(t, rng)
    cookie = (f"_ga=GA1.2.{rng.randint(100_000_000, 999_999_999)}.1{PLACEHOLDER}; "
              f"_gid=GA1.2.{rng.randint(100_000_000, 999_999_999)}."
              f"{rng.randint(1_700_000_000, 1_799_999_999)}; theme={rng.choice(tables.themes)}")
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
            f"User-Agent: {agent}\r\n"
            f"Accept: {tables.accept[style]}\r\n"
            f"Accept-Language: {rng.choice(tables.languages)}\r\n"
            "Accept-Encoding: gzip, deflate, br\r\n"
            + rng.choice(tables.referers)
            + "".join(line + "\r\n" for line in EXTRA_HEADERS[style])
            + f"Cookie: {cookie}\r\n"
            "Connection: keep-alive\r\n\r\n")


def request_pool(path: str, host: str, count: int = POOL_SIZE, seed: int = SEED) -> list[bytes]:
    """*count* readers' heads for ``GET path`` with ``Host: host``; each distinct (their
    placeholders still unfilled) and ASCII."""
    if not path.startswith("/") or any(ch in path + host for ch in " \r\n#"):
        raise BenchError(f"cannot build requests for path {path!r} and host {host!r}")
    rng = random.Random(seed)
    tables = readers_tables()
    heads: list[bytes] = []
    seen: set[bytes] = set()
    while len(heads) < count:
        head = reader_head(path, host, rng, tables).encode("ascii")
        if head not in seen:
            seen.add(head)
            heads.append(head)
    return heads


def write_pool(target: Path, path: str, host: str, count: int = POOL_SIZE,
               seed: int = SEED) -> Path:
    """Write :func:`request_pool`'s heads one after another into *target* (the client's
    ``--requests`` file); returns *target*."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"".join(request_pool(path, host, count, seed)))
    return target


def fill(head: bytes, number: int) -> bytes:
    """*head* as the client sends it as request *number* (for tests)."""
    return head.replace(PLACEHOLDER.encode(), f"{number:09d}".encode(), 1)
