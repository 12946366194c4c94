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


class Drawing:
    """The charts, drawn in a thread of their own: it imports matplotlib at once (about half a
    second, spent while the engine reads the logs: its threads release the GIL), then draws
    as soon as `draw` hands it what the charts show, while the engine works on the rest of
    the report. `images` waits for the PNGs (and raises what drawing raised)."""

    def __init__(self) -> None:
        self._report: dict[str, Any] | None = None
        self._given = threading.Event()
        self._images: dict[str, bytes] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="charts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.dates
            import matplotlib.pyplot  # (imported now, used by render)
            self._given.wait()
            if self._report is not None:
                self._images = render(self._report)
        except BaseException as exc:  # handed to whoever waits for the images
            self._error = exc

    def draw(self, report: dict[str, Any]) -> None:
        """Start drawing `report`'s charts (its timeline, mitigation and top prefixes)."""
        self._report = report
        self._given.set()

    def cancel(self) -> None:
        """No charts after all (the analysis failed): let the thread end."""
        self._given.set()

    def images(self) -> dict[str, bytes]:
        """Chart name → PNG, once drawn; a chart with nothing to show is left out."""
        self._given.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._images


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
