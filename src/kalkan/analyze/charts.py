"""The report's charts as PNG bytes (matplotlib, headless Agg backend): the timeline by outcome,
the mitigation (suspects stopped / let through, requests at the origin) and the top prefixes."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime
from typing import Any

from kalkan.analyze.shapes import OUTCOMES

# The dashboard's colours for the same outcomes (observe/assets), so both read alike.
COLOURS = {"hit": "#2da44e", "stale": "#8fd19e", "miss": "#0969da", "pass": "#8250df",
           "challenge": "#d4a72c", "block": "#cf222e", "refused": "#8c2f39", "error": "#6e7781"}
_WIDTH, _HEIGHT, _DPI = 9.6, 3.4, 100
# Fixed margins (inches' share of the figure): matplotlib's automatic layout costs a third of
# the time of drawing the charts.
_MARGINS = {"left": 0.08, "right": 0.985, "top": 0.9, "bottom": 0.14}


def preload() -> None:
    """Starts importing matplotlib in a thread of its own: about half a second of the
    command's time, spent while the engine reads the logs (its threads release the GIL)
    instead of after. `render` imports it again, waiting for this import if it is still
    under way; an error here is left for that import to raise."""
    def load() -> None:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.dates
            import matplotlib.pyplot
        except Exception:  # render's own import reports it
            pass
    threading.Thread(target=load, name="import matplotlib", daemon=True).start()


def render(report: dict[str, Any]) -> dict[str, bytes]:
    """Chart name → PNG; a chart with nothing to show is left out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    tl = report["timeline"]
    buckets = tl["buckets"]
    width = tl["bucket_seconds"]
    times = [_days(b["t"]) for b in buckets]
    out: dict[str, bytes] = {}
    locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
    formatter = mdates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]

    def finish(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        # zlib level 6 instead of 9: a third of the time for a few percent more bytes.
        fig.savefig(buf, format="png", dpi=_DPI, pil_kwargs={"compress_level": 6})
        plt.close(fig)
        out[name] = buf.getvalue()

    def time_axis(ax: Any) -> None:
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(formatter)
        ax.grid(axis="y", color="#e5e8eb", linewidth=0.8)
        ax.set_axisbelow(True)

    first = report["mitigation"]["first"]["mitigation"]
    first_at = _days(first["time"]) if first else None

    if buckets:
        fig, ax = plt.subplots(figsize=(_WIDTH, _HEIGHT))
        fig.subplots_adjust(**_MARGINS)
        present = [o for o in OUTCOMES if any(b[o] for b in buckets)]
        ax.stackplot(times, *[[b[o] / width for b in buckets] for o in present],
                     labels=present, colors=[COLOURS[o] for o in present], step="post")
        if first_at is not None:
            ax.axvline(first_at, color="#1b1f24", linestyle="--", linewidth=1,
                       label="first mitigation")
        peak = max(sum(b[o] for o in present) for b in buckets) / width
        ax.set_ylim(0, max(peak, 1.0) * 1.25)  # room for the legend above the peak
        ax.set_ylabel("requests/s")
        ax.set_title("Requests per second by outcome (UTC)", fontsize=11, loc="left")
        ax.legend(loc="upper left", fontsize=8, ncol=len(present) + 1, frameon=False)
        ax.margins(x=0)
        time_axis(ax)
        finish(fig, "timeline")

    if buckets and report["mitigation"]["suspects"]:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(_WIDTH, _HEIGHT * 1.5), sharex=True)
        fig.subplots_adjust(**(_MARGINS | {"bottom": 0.1, "top": 0.93, "hspace": 0.12}))
        stopped = [b["suspect_stopped"] / width for b in buckets]
        through = [(b["suspect"] - b["suspect_stopped"]) / width for b in buckets]
        top.stackplot(times, stopped, through, labels=["stopped", "let through"],
                      colors=[COLOURS["block"], "#f0a0a0"], step="post")
        top.set_ylim(0, max(max(b["suspect"] for b in buckets) / width, 1.0) * 1.25)
        top.set_ylabel("suspects' req/s")
        top.set_title("What the mitigation did (UTC)", fontsize=11, loc="left")
        bottom.step(times, [b["origin"] / width for b in buckets], where="post",
                    color=COLOURS["miss"], label="all requests at the origin")
        bottom.step(times, [b["suspect_origin"] / width for b in buckets], where="post",
                    color=COLOURS["block"], label="suspects' requests at the origin")
        bottom.set_ylabel("origin req/s")
        bottom.set_ylim(0, max(max(b["origin"] for b in buckets) / width, 1.0) * 1.3)
        for ax in (top, bottom):
            if first_at is not None:
                ax.axvline(first_at, color="#1b1f24", linestyle="--", linewidth=1)
            ax.legend(loc="upper left", fontsize=8, ncol=3, frameon=False)
            ax.margins(x=0)
            time_axis(ax)
        finish(fig, "mitigation")

    prefixes = report["top"]["prefixes"][:10]
    if prefixes:
        height = 0.9 + 0.3 * len(prefixes)
        fig, ax = plt.subplots(figsize=(_WIDTH, height))
        fig.subplots_adjust(left=0.17, right=0.98, top=1 - 0.15 / height,
                            bottom=0.6 / height)
        names = [p["prefix"] for p in prefixes][::-1]
        stopped_n = [p["stopped"] for p in prefixes][::-1]
        served_n = [p["requests"] - p["stopped"] for p in prefixes][::-1]
        ax.barh(names, served_n, color=COLOURS["hit"], label="served")
        ax.barh(names, stopped_n, left=served_n, color=COLOURS["block"], label="stopped")
        ax.set_xlabel("requests")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", color="#e5e8eb", linewidth=0.8)
        ax.set_axisbelow(True)
        finish(fig, "prefixes")
    return out


def _days(iso: str) -> float:
    """A report time as matplotlib's date number: days since its epoch, 1970-01-01 UTC."""
    when = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return when.timestamp() / 86400.0
