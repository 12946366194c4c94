"""The report's charts as PNG bytes, drawn with Pillow: the timeline by outcome, the mitigation
(suspects stopped / let through, requests at the origin) and the top prefixes.

Every mark in them is an axis-aligned rectangle or line (step areas, bars, grid, ticks), which
plain rasterizing draws crisp, so no plotting library is needed: matplotlib took about 0.85
CPU-seconds per report to import and draw these three, a third of what reading a million
lines costs (bench/analyze_speed.py); this takes a few hundredths. Text is DejaVu Sans where
the system has it (Debian's fonts-dejavu-core), else Pillow's own font.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from kalkan.analyze.shapes import OUTCOMES

# The dashboard's colours for the same outcomes (observe/assets), so both read alike.
COLOURS = {"hit": "#2da44e", "stale": "#8fd19e", "miss": "#0969da", "pass": "#8250df",
           "challenge": "#d4a72c", "block": "#cf222e", "refused": "#8c2f39", "error": "#6e7781"}
WIDTH, HEIGHT = 960, 340            # pixels of a time chart
_LEFT, _RIGHT = 77, 946             # its plot area's edges, x
_INK, _GRID, _MUTED = "#1b1f24", "#e5e8eb", "#57606a"
_THROUGH = "#f0a0a0"                # suspects' requests let through
_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
          "/usr/share/fonts/TTF/DejaVuSans.ttf", "/usr/local/share/fonts/DejaVuSans.ttf")
# Time-axis steps (seconds) and the label each uses: the smallest giving at most 9 ticks.
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
               43200, 86400, 172800, 604800)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=8)
def _font(size: int) -> Font:
    for path in _FONTS:
        if os.path.exists(path):
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
    return ImageFont.load_default(size)


def render(report: dict[str, Any]) -> dict[str, bytes]:
    """Chart name → PNG; a chart with nothing to show is left out."""
    tl = report["timeline"]
    buckets = tl["buckets"]
    width = tl["bucket_seconds"]
    first = report["mitigation"]["first"]["mitigation"]
    first_at = _seconds(first["time"]) if first else None
    out: dict[str, bytes] = {}
    if buckets:
        start = _seconds(tl["start"])
        span = (start, start + len(buckets) * width)
        present = [o for o in OUTCOMES if any(b[o] for b in buckets)]
        img, draw = _canvas(WIDTH, HEIGHT)
        box = (_LEFT, 34, _RIGHT, 292)
        layers = [([b[o] / width for b in buckets], COLOURS[o]) for o in present]
        peak = max(sum(b[o] for o in present) for b in buckets) / width
        ymax = _axis_max(max(peak, 1.0) * 1.25)  # room for the legend above the peak
        _frame(draw, box, span, ymax, "requests/s", img, labels=True)
        _stack(draw, box, span, ymax, layers)
        if first_at is not None:
            _dashed_v(draw, box, span, first_at)
        _border(draw, box)
        _title(draw, box, "Requests per second by outcome (UTC)")
        _legend(draw, box[0] + 8, box[1] + 6,
                [(o, COLOURS[o], "box") for o in present]
                + ([("first mitigation", _INK, "dash")] if first_at is not None else []))
        out["timeline"] = _png(img)

    if buckets and report["mitigation"]["suspects"]:
        start = _seconds(tl["start"])
        span = (start, start + len(buckets) * width)
        img, draw = _canvas(WIDTH, 510)
        top, bottom = (_LEFT, 36, _RIGHT, 235), (_LEFT, 259, _RIGHT, 459)
        stopped = [b["suspect_stopped"] / width for b in buckets]
        through = [(b["suspect"] - b["suspect_stopped"]) / width for b in buckets]
        ymax = _axis_max(max(max(b["suspect"] for b in buckets) / width, 1.0) * 1.25)
        _frame(draw, top, span, ymax, "suspects' req/s", img, labels=False)
        _stack(draw, top, span, ymax, [(stopped, COLOURS["block"]), (through, _THROUGH)])
        origin = [b["origin"] / width for b in buckets]
        theirs = [b["suspect_origin"] / width for b in buckets]
        omax = _axis_max(max(max(b["origin"] for b in buckets) / width, 1.0) * 1.3)
        _frame(draw, bottom, span, omax, "origin req/s", img, labels=True)
        _steps(draw, bottom, span, omax, origin, COLOURS["miss"])
        _steps(draw, bottom, span, omax, theirs, COLOURS["block"])
        for box in (top, bottom):
            if first_at is not None:
                _dashed_v(draw, box, span, first_at)
            _border(draw, box)
        _title(draw, top, "What the mitigation did (UTC)")
        _legend(draw, top[0] + 8, top[1] + 6, [("stopped", COLOURS["block"], "box"),
                                               ("let through", _THROUGH, "box")])
        _legend(draw, bottom[0] + 8, bottom[1] + 6,
                [("all requests at the origin", COLOURS["miss"], "line"),
                 ("suspects' requests at the origin", COLOURS["block"], "line")])
        out["mitigation"] = _png(img)

    prefixes = report["top"]["prefixes"][:10]
    if prefixes:
        out["prefixes"] = _prefixes(prefixes)
    return out


def _prefixes(prefixes: list[dict[str, Any]]) -> bytes:
    """Horizontal bars, the top prefix first: requests served, then stopped."""
    height = 90 + 30 * len(prefixes)
    img, draw = _canvas(WIDTH, height)
    box = (163, 15, 941, height - 60)
    xmax = _axis_max(max(p["requests"] for p in prefixes) * 1.05)
    ticks = _ticks(xmax)
    x0, y0, x1, y1 = box

    def x(v: float) -> int:
        return round(x0 + v / xmax * (x1 - x0))

    for v in ticks:
        draw.line([(x(v), y0), (x(v), y1)], fill=_GRID)
        _tick_label(draw, x(v), y1, _number(v, ticks))
    draw.text(((x0 + x1) // 2, y1 + 32), "requests", font=_font(14), fill=_INK, anchor="mt")
    row = (y1 - y0) / len(prefixes)
    small = _font(11)
    for i, p in enumerate(prefixes):
        mid = y0 + row * (i + 0.5)
        a, b = round(mid - row * 0.4), round(mid + row * 0.4)
        served = p["requests"] - p["stopped"]
        if served > 0:
            draw.rectangle([x(0), a, max(x(0), x(served) - 1), b], fill=COLOURS["hit"])
        if p["stopped"] > 0:
            draw.rectangle([x(served), a, max(x(served), x(p["requests"]) - 1), b],
                           fill=COLOURS["block"])
        draw.line([(x0 - 4, round(mid)), (x0, round(mid))], fill=_INK)
        draw.text((x0 - 7, round(mid)), _clip(p["prefix"], 24), font=small, fill=_INK,
                  anchor="rm")
    _border(draw, box)
    entries = [("served", COLOURS["hit"], "box"), ("stopped", COLOURS["block"], "box")]
    _legend(draw, x1 - 8 - _legend_width(entries), y1 - 22, entries)
    return _png(img)


# Drawing helpers. A box is (left, top, right, bottom) in pixels; a span is (first, last)
# second of the time axis; values map linearly onto [0, ymax].

Box = tuple[int, int, int, int]


def _canvas(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (width, height), "white")
    return img, ImageDraw.Draw(img)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _x_of(box: Box, span: tuple[float, float]) -> Callable[[float], int]:
    x0, _, x1, _ = box
    first, last = span
    scale = (x1 - x0) / max(last - first, 1e-9)
    return lambda t: round(x0 + (t - first) * scale)


def _y_of(box: Box, ymax: float) -> Callable[[float], int]:
    _, y0, _, y1 = box
    return lambda v: round(y1 - min(v, ymax) / ymax * (y1 - y0))


def _frame(draw: ImageDraw.ImageDraw, box: Box, span: tuple[float, float], ymax: float,
           ylabel: str, img: Image.Image, labels: bool) -> None:
    """Grid, y ticks and label, and time ticks (with their labels if `labels`)."""
    x0, y0, x1, y1 = box
    y = _y_of(box, ymax)
    ticks = _ticks(ymax)
    for v in ticks:
        draw.line([(x0, y(v)), (x1, y(v))], fill=_GRID)
        draw.line([(x0 - 4, y(v)), (x0, y(v))], fill=_INK)
        draw.text((x0 - 7, y(v)), _number(v, ticks), font=_font(13), fill=_INK, anchor="rm")
    _vertical(img, 16, (y0 + y1) // 2, ylabel, 14)
    x = _x_of(box, span)
    marks, fmt, offset = _time_ticks(*span)
    for t in marks:
        draw.line([(x(t), y1), (x(t), y1 + 4)], fill=_INK)
        if labels:
            _tick_label(draw, x(t), y1, fmt(t))
    if labels and offset:
        draw.text((x1, y1 + 26), offset, font=_font(13), fill=_MUTED, anchor="rt")


def _stack(draw: ImageDraw.ImageDraw, box: Box, span: tuple[float, float], ymax: float,
           layers: Sequence[tuple[list[float], str]]) -> None:
    """Stacked step areas: bucket i of each layer holds its value over the bucket's width."""
    if not layers:
        return
    n = len(layers[0][0])
    y = _y_of(box, ymax)
    edges = _edges(box, span, n)
    base = [0.0] * n
    for values, colour in layers:
        for i, v in enumerate(values):
            if v > 0:
                low, high = y(base[i]), y(base[i] + v)
                if high < low:
                    draw.rectangle([edges[i], high, max(edges[i], edges[i + 1] - 1), low - 1],
                                   fill=colour)
                base[i] += v


def _steps(draw: ImageDraw.ImageDraw, box: Box, span: tuple[float, float], ymax: float,
           values: list[float], colour: str) -> None:
    """A step line: each bucket's value across its width, joined by vertical rises."""
    n = len(values)
    if not n:
        return
    y = _y_of(box, ymax)
    edges = _edges(box, span, n)
    points: list[tuple[int, int]] = []
    for i, v in enumerate(values):
        points.append((edges[i], y(v)))
        points.append((edges[i + 1], y(v)))
    draw.line(points, fill=colour, width=2)


def _edges(box: Box, span: tuple[float, float], n: int) -> list[int]:
    """The x pixel of each of `n` equal buckets' edges across the span (n + 1 of them)."""
    x = _x_of(box, span)
    first, last = span
    return [x(first + (last - first) * i / n) for i in range(n + 1)]


def _dashed_v(draw: ImageDraw.ImageDraw, box: Box, span: tuple[float, float], at: float) -> None:
    x = _x_of(box, span)(at)
    _, y0, _, y1 = box
    if box[0] <= x <= box[2]:
        for y in range(y0, y1, 6):
            draw.line([(x, y), (x, min(y + 3, y1))], fill=_INK)


def _border(draw: ImageDraw.ImageDraw, box: Box) -> None:
    draw.rectangle(box, outline=_INK)


def _title(draw: ImageDraw.ImageDraw, box: Box, text: str) -> None:
    draw.text((box[0], box[1] - 6), text, font=_font(15), fill=_INK, anchor="ld")


def _legend_width(entries: Sequence[tuple[str, str, str]]) -> int:
    return sum(_entry_width(label) for label, _, _ in entries) - _LEGEND_GAP


_SWATCH, _LEGEND_GAP = 26, 14   # a legend entry: swatch and its space, then the label, a gap


def _entry_width(label: str) -> int:
    return _SWATCH + round(_font(11).getlength(label)) + _LEGEND_GAP


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int,
            entries: Sequence[tuple[str, str, str]]) -> None:
    """One row: a swatch (box, line or dash) and its label per entry, no frame."""
    font = _font(11)
    for label, colour, kind in entries:
        if kind == "box":
            draw.rectangle([x, y + 2, x + 19, y + 9], fill=colour)
        elif kind == "line":
            draw.line([(x, y + 6), (x + 19, y + 6)], fill=colour, width=2)
        else:
            for dx in (0, 7, 14):
                draw.line([(x + dx, y + 6), (x + dx + 4, y + 6)], fill=colour)
        draw.text((x + _SWATCH, y + 6), label, font=font, fill=_INK, anchor="lm")
        x += _entry_width(label)


def _tick_label(draw: ImageDraw.ImageDraw, x: int, y1: int, text: str) -> None:
    font = _font(13)
    half = font.getlength(text) / 2
    if x - half >= 0 and x + half <= draw.im.size[0]:  # (a label cut at the edge is left out)
        draw.text((x, y1 + 7), text, font=font, fill=_INK, anchor="mt")


def _vertical(img: Image.Image, x: int, y: int, text: str, size: int) -> None:
    """`text` turned a quarter to the left, centred on (x, y)."""
    font = _font(size)
    w = round(font.getlength(text)) + 4
    h = size + 6
    label = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(label).text((w // 2, h // 2), text, font=font, fill=_INK, anchor="mm")
    turned = label.rotate(90, expand=True)
    img.paste(turned, (x - turned.width // 2, y - turned.height // 2))


def _axis_max(value: float) -> float:
    return value if value > 0 else 1.0


def _ticks(vmax: float) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 × 10^k) up to `vmax`: at most 7 ticks."""
    raw = vmax / 6
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    count = int(vmax / step + 1e-9)
    return [i * step for i in range(count + 1)]


def _number(v: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    if float(step).is_integer():
        return f"{round(v):,}"
    return f"{v:,.2f}".rstrip("0").rstrip(".")  # (steps are at least 0.25)


def _time_ticks(first: float, last: float) -> tuple[list[float], Callable[[float], str], str]:
    """Ticks at round UTC times, their labels, and the date they fall on (said once)."""
    span = max(last - first, 1.0)
    step = next((s for s in _TIME_STEPS if span / s <= 9), _TIME_STEPS[-1])
    t = math.ceil(first / step) * step
    marks = []
    while t <= last + 1e-9:
        marks.append(float(t))
        t += step
    day = time.gmtime(first)[:3] == time.gmtime(last - 1e-3)[:3]
    if step >= 86400:
        return marks, lambda s: time.strftime("%b %d", time.gmtime(s)), ""
    fmt = "%H:%M:%S" if step < 60 else "%H:%M"

    def label(s: float) -> str:
        parts = time.gmtime(s)
        if not day and parts.tm_hour == parts.tm_min == parts.tm_sec == 0:
            return time.strftime("%b %d", parts)
        return time.strftime(fmt, parts)

    offset = time.strftime("%Y-%m-%d", time.gmtime(first)) if day else \
        f"{time.strftime('%Y-%m-%d', time.gmtime(first))} – " \
        f"{time.strftime('%Y-%m-%d', time.gmtime(last - 1e-3))}"
    return marks, label, offset


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _seconds(iso: str) -> float:
    """A report time ("2026-12-05T04:51:16.123Z") as epoch seconds."""
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
