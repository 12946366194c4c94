"""`kalkan analyze`'s report.html, opened in real headless Chromium: it asks for nothing at all
(no request leaves the page: its charts are data: URIs, its styles inline), every chart is
drawn (loaded, with a width), and its tables are there. The screenshot goes to a temporary
directory, or to docs/screenshots/analyze-report.png with KALKAN_UPDATE_SCREENSHOTS=1 (how the
committed one was made: a generated log with three botnets, see bench/analyze_log.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from e2e.chromium import browser_fixture, needs_chromium  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench.analyze_log import Scenario, write  # noqa: E402

from kalkan.cli import main  # noqa: E402

pytestmark = needs_chromium
SHOT = ROOT / "docs" / "screenshots" / "analyze-report.png"


async def test_report_html_is_self_contained_and_draws_its_charts(browser: Any,
                                                                   tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    write(log, Scenario(lines=120_000, seconds=600.0, mitigation_delay=4.0))
    out = tmp_path / "report"
    assert main(["analyze", str(log), "--out", str(out)]) == 0
    report = out / "report.html"
    own = report.as_uri()

    context = await browser.new_context(viewport={"width": 1280, "height": 900},
                                        java_script_enabled=False)
    asked: list[str] = []

    async def route(r: Any) -> None:
        asked.append(r.request.url)
        if r.request.url == own:
            await r.continue_()
        else:
            await r.abort()

    await context.route("**/*", route)
    page = await context.new_page()
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    await page.goto(own)
    assert await page.title() == "Kalkan report"
    images = await page.evaluate(
        "() => Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth,"
        " i.src.slice(0, 22)])")
    assert [i[0] for i in images] == ["chart-timeline", "chart-mitigation", "chart-prefixes"]
    for ident, complete, width, src in images:
        assert complete and width > 0, ident
        assert src == "data:image/png;base64,", ident
    tables = await page.locator("table").count()
    assert tables >= 8
    clusters = page.locator("h2:has-text('Clusters') + p + table")
    assert "search s=<word>" in await clusters.inner_text()  # the search botnet's cluster
    # Nothing but the page itself was asked for (a data: URI is not a request that leaves).
    leaving = [u for u in requests + asked if u != own and not u.startswith("data:")]
    assert leaving == [], leaving
    shots = SHOT.parent if os.environ.get("KALKAN_UPDATE_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    # The top of the page: summary, timeline, mitigation and clusters (the rest is tables).
    await page.screenshot(path=str(shots / SHOT.name), full_page=True,
                          clip={"x": 0, "y": 0, "width": 1280, "height": 2300})
    await context.close()
