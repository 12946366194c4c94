"""The static mirror of the demo site, opened in Chromium: every page of it reached by its own
links, every asset each page loads there, nothing failing and nothing fetched from elsewhere."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urldefrag, urlsplit

from e2e.chromium import browser_fixture, needs_chromium  # noqa: F401 - the fixture, by name
from integration.test_mirror import crawl
from kalkan.mirror.export import export
from kalkan.mirror.serve import serve_in_thread
from support import EdgeFactory, Origin, port_of


@needs_chromium
async def test_the_exported_demo_site_works_in_a_browser(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path, browser: object) -> None:
    edge = await make_edge(origin.url)
    await crawl(port_of(edge))
    edge.pipeline.store.flush()
    out = tmp_path / "mirror"
    export(Path(edge.config.cache.dir or ""), out)
    server, thread = serve_in_thread(out)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    failed: list[str] = []
    elsewhere: list[str] = []
    try:
        page = await browser.new_page()  # type: ignore[attr-defined]
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
        page.on("request", lambda r: not r.url.startswith((base, "data:"))
                and elsewhere.append(r.url))
        queue, seen = [f"{base}/news.example/"], set()
        while queue and len(seen) < 40:
            url = queue.pop(0)
            if url in seen:
                continue
            seen.add(url)
            response = await page.goto(url, wait_until="load")
            assert response is not None and response.status == 200, url
            if not (response.headers.get("content-type") or "").startswith("text/html"):
                continue
            for href in await page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)"):
                link = urldefrag(href)[0]
                if link.startswith(base) and urlsplit(link).path.startswith("/news.example/"):
                    queue.append(link)
        await page.close()
    finally:
        server.shutdown()
        thread.join(5)
    assert len(seen) > 10
    assert failed == [] and elsewhere == []
