"""The report's blocks as Markdown (report.md), charts as PNG files beside it.

Everything from the log is escaped: a path such as `![x](https://tracker/)` must stay text in
any Markdown viewer, never become an image that loads from elsewhere.
"""

from __future__ import annotations

import re

from kalkan.analyze.document import Block, Bullets, Chart, Code, Heading, Paragraph, Table, Text

MAX_CELL = 120  # characters of log text shown in one place
_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clip(text: str, limit: int = MAX_CELL) -> str:
    text = _CONTROL.sub("\N{REPLACEMENT CHARACTER}", text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _plain(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", _CONTROL.sub(" ", text))


def _code(text: str) -> str:
    """A code span that no backtick or pipe in the text can end early."""
    body = clip(text).replace("|", "\N{BOX DRAWINGS LIGHT VERTICAL}")
    if not body:
        return ""
    fence = "`" * (max((len(m) for m in re.findall(r"`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") or body.startswith(" ") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def _text(text: Text) -> str:
    parts = [text] if isinstance(text, str) else text
    return "".join(_code(p) if isinstance(p, Code) else _plain(p) for p in parts)


def render(doc: list[Block]) -> str:
    out: list[str] = []
    for block in doc:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {_plain(block.text)}\n")
        elif isinstance(block, Paragraph):
            out.append(_text(block.text) + "\n")
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {_text(item)}" for item in block.items) + "\n")
        elif isinstance(block, Chart):
            out.append(f"![{_plain(block.alt)}]({block.name}.png)\n")
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(_plain(h) for h in block.headers) + " |",
                     "|" + "|".join(" --- " for _ in block.headers) + "|"]
            for row in block.rows:
                lines.append("| " + " | ".join(_text(c) for c in row) + " |")
            out.append("\n".join(lines) + "\n")
    return "\n".join(out)
