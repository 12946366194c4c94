"""The report's charts (analyze/charts.py, drawn with Pillow): each is a PNG of the size the
report lays out, showing the outcomes that happened in their colours and no others, the
mitigation's first decision as a line at its time; the axes' ticks are round numbers and
round UTC times; a report of one request still draws."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench.analyze_log import Scenario, write  # noqa: E402

pytest.importorskip("duckdb")
Image = pytest.importorskip("PIL.Image")

from kalkan.analyze import charts, run  # noqa: E402


def _rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    log = tmp_path_factory.mktemp("charts") / "access.log"
    write(log, Scenario(lines=40_000, seconds=300.0, mitigation_delay=4.0))
    return run.analyze(run.Request(inputs=[str(log)], format="json"))


def _image(png: bytes):  # type: ignore[no-untyped-def]
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    img.load()
    return img.convert("RGB")


def test_three_charts_of_the_laid_out_sizes(report: dict) -> None:
    images = charts.render(report)
    assert set(images) == {"timeline", "mitigation", "prefixes"}
    assert _image(images["timeline"]).size == (charts.WIDTH, charts.HEIGHT)
    assert _image(images["mitigation"]).size == (charts.WIDTH, 510)
    shown = len(report["top"]["prefixes"][:10])
    assert _image(images["prefixes"]).size == (charts.WIDTH, 90 + 30 * shown)


def test_the_timeline_shows_the_outcomes_that_happened_in_their_colours(report: dict) -> None:
    img = _image(charts.render(report)["timeline"])
    colours = {c for _, c in img.getcolors(maxcolors=1 << 16)}
    outcomes = report["totals"]["outcomes"]
    for outcome, colour in charts.COLOURS.items():
        if outcomes[outcome]:
            assert _rgb(colour) in colours, outcome
        else:
            assert _rgb(colour) not in colours, outcome
    # The first mitigation is a dashed line in the plot, at its time.
    tl = report["timeline"]
    start = charts._seconds(tl["start"])
    end = start + len(tl["buckets"]) * tl["bucket_seconds"]
    at = charts._seconds(report["mitigation"]["first"]["mitigation"]["time"])
    x = round(charts._LEFT + (at - start) / (end - start) * (charts._RIGHT - charts._LEFT))
    column = [img.getpixel((x, y)) for y in range(40, 290)]
    assert column.count(_rgb("#1b1f24")) >= 100  # dashes: about half of the column


def test_a_report_of_one_request_draws(tmp_path: Path) -> None:
    log = tmp_path / "one.log"
    log.write_text(json.dumps({"time": "2026-12-05T04:51:16.123Z", "client": "127.0.0.1",
                               "path": "/", "status": 403, "cache": "BYPASS",
                               "decision": "block:rule:x"}) + "\n")
    images = charts.render(run.analyze(run.Request(inputs=[str(log)], format="json")))
    assert set(images) == {"timeline", "mitigation", "prefixes"}
    assert _rgb(charts.COLOURS["block"]) in {c for _, c in
                                             _image(images["timeline"]).getcolors(1 << 16)}


@pytest.mark.parametrize(("vmax", "ticks"), [
    (1.25, [0, 0.25, 0.5, 0.75, 1.0, 1.25]), (9_500, [0, 2000, 4000, 6000, 8000]),
    (48, [0, 10, 20, 30, 40]), (260_000, [0, 50_000, 100_000, 150_000, 200_000, 250_000]),
])
def test_value_ticks_are_round(vmax: float, ticks: list[float]) -> None:
    assert charts._ticks(vmax) == pytest.approx(ticks)
    assert charts._number(2000.0, [0.0, 2000.0]) == "2,000"
    assert charts._number(0.25, [0.0, 0.25]) == "0.25"


def test_time_ticks_fall_on_round_utc_times() -> None:
    start = 1796446276.0  # 2026-12-05T04:51:16Z
    marks, label, offset = charts._time_ticks(start, start + 600)
    assert [label(m) for m in marks][:3] == ["04:52", "04:54", "04:56"]
    assert offset == "2026-12-05"
    marks, label, _ = charts._time_ticks(start, start + 60)
    assert [label(m) for m in marks][:3] == ["04:51:20", "04:51:30", "04:51:40"]
    marks, label, offset = charts._time_ticks(start, start + 3 * 86400)
    assert "Dec 06" in [label(m) for m in marks]
    assert offset == "2026-12-05 – 2026-12-08"
