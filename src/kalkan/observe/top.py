"""`kalkan top`: the dashboard's live view drawn as plain text with ANSI colours, one frame per
snapshot of GET /api/live (no curses: a frame is a string, so it can be printed once or tested)."""

from __future__ import annotations

from typing import Any

from kalkan.observe.live import OUTCOMES

_BARS = " ▁▂▃▄▅▆▇█"
_COLOURS = {"hit": 32, "stale": 92, "miss": 34, "pass": 35, "challenged": 33, "blocked": 31,
            "refused": 91, "error": 31}
_LEVEL_COLOURS = (32, 33, 91, 31)


def sparkline(values: list[float], width: int, top: float | None = None) -> str:
    """The last `width` values as block characters, scaled to `top` (default: their maximum)."""
    tail = values[-width:]
    peak = max([top or 0.0, *tail, 1e-9])
    return "".join(_BARS[min(8, round(v / peak * 8))] for v in tail)


def _fmt(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 1000:
        return f"{n:,.0f}"
    return f"{n:.0f}" if n >= 10 else f"{n:.1f}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def _paint(text: str, code: int, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text


def frame(s: dict[str, Any], width: int = 100, colour: bool = True) -> str:
    """One screen of the live view."""
    width = max(60, width)
    th = s["threat"]
    out: list[str] = []
    level = f" {th['name'].upper()} "
    if colour:  # reverse video in the level's colour
        level = f"\x1b[7;{_LEVEL_COLOURS[min(3, int(th['level']))]}m{level}\x1b[0m"
    site = f" {s['site']}" if s.get("site") else ""
    out.append(f"kalkan top{site} — threat {level} (mode {th['mode']}) — "
               f"{_fmt(s['total_rate'])} req/s")
    if th.get("reason"):
        out.append(_clip(f"  why: {th['reason']}", width))
    for sig in th.get("signals", [])[:4]:
        if sig["score"]:
            out.append(_clip(f"    {sig['level']}: {sig['what']}", width))
    out.append("")
    spark_w = max(10, width - 30)
    hist = s["history"]
    peak = max([1.0, *(v for k in OUTCOMES for v in hist.get(k, []))])
    out.append(_paint("requests/s by outcome", 1, colour))
    for k in OUTCOMES:
        line = f"  {k:<11}{_fmt(s['rates'][k]):>9}  {sparkline(hist.get(k, []), spark_w, peak)}"
        out.append(_paint(line, _COLOURS[k], colour) if s["rates"][k] else line)
    ratio = s["cache_hit_ratio"]
    o = s["origin"]
    out.append("")
    out.append(f"cache hit ratio {'-' if ratio is None else f'{ratio * 100:.1f} %'}   "
               f"origin busy {o['busy_share'] * 100:.0f} % ({o['active']}/{o['limit']}, "
               f"{o['queued']} waiting)   latency {_fmt(o['latency_ms'])} ms")
    out.append(f"  busy    {sparkline(hist.get('busy', []), spark_w, 1.0)}")
    out.append("")
    col = max(20, (width - 4) // 3)
    names = (("prefixes", "top prefixes"), ("agents", "top user agents"), ("paths", "top paths"))
    out.append("".join(_paint(f"{title:<{col}}", 1, colour) for _, title in names))
    rows = max((len(s["top"][k]) for k, _ in names), default=0)
    for i in range(min(rows, 8)):
        cells = []
        for key, _ in names:
            items = s["top"][key]
            if i < len(items):
                t = items[i]
                count = f" {_fmt(t['requests'])}"
                cells.append(f"{_clip(t['key'], col - len(count) - 2)}{count}".ljust(col))
            else:
                cells.append(" " * col)
        out.append("".join(cells).rstrip())
    out.append("")
    decisions = s["decisions"]
    out.append(_paint(f"standing decisions ({len(decisions)})", 1, colour))
    for d in decisions[:10]:
        left = "forever" if d["expires_in"] is None else f"{d['expires_in']}s"
        out.append(_clip(f"  {d['target']:<32} {d['action']:<10} {left:<9} {d['reason']}", width))
    if not decisions:
        out.append("  none")
    return "\n".join(out) + "\n"
