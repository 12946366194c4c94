"""Real headless Chromium loads the demo site over HTTP/2 through Kalkan (TLS, ALPN h2): the
page and its assets arrive over h2, and the challenge a reader meets over h2 is passed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import trustme

from e2e.chromium import browser_fixture, needs_chromium, playwright_api  # noqa: F401
from support import EdgeFactory, Origin, access_log, port_of

ARTICLE = "/news/media-community-statement-ddos/"

pytestmark = needs_chromium




async def h2_port(origin: Origin, make_edge: EdgeFactory, tmp_path: Path,
                  **sections: dict[str, object]) -> tuple[int, object]:
    pem = tmp_path / "site.pem"
    trustme.CA().issue_cert("news.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
    edge = await make_edge(origin.url, tls={"certificates": [{"cert": str(pem),
                                                              "key": str(pem)}]}, **sections)
    return port_of(edge), edge


async def test_chromium_loads_the_demo_over_h2(origin: Origin, make_edge: EdgeFactory,
                                               tmp_path: Path, browser: object) -> None:
    port, edge = await h2_port(origin, make_edge, tmp_path)
    # The certificate is from a throwaway CA: the browser is told to accept it.
    context = await browser.new_context(ignore_https_errors=True)  # type: ignore[attr-defined]
    page = await context.new_page()
    seen: list[str] = []
    page.on("response", lambda r: seen.append(r.url))
    first = await page.goto(f"https://news.test:{port}/")
    assert first is not None and first.status == 200
    protocols = await page.evaluate(
        "performance.getEntries().filter(e => e.nextHopProtocol)"
        ".map(e => [e.name, e.nextHopProtocol])")
    assert protocols and all(p == "h2" for _, p in protocols), protocols
    assert any(url.endswith(".css") for url in seen)  # the stylesheet came too
    again = await page.goto(f"https://news.test:{port}/")
    assert again is not None and again.status == 200
    assert (await again.all_headers()).get("x-cache") == "HIT"
    await context.close()
    assert any(line["path"] == "/" and line["cache"] == "HIT" for line in access_log(edge))


async def test_chromium_passes_the_challenge_over_h2(origin: Origin, make_edge: EdgeFactory,
                                                     tmp_path: Path, browser: object) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: prove\n    match: {route: page}\n"
                      "    action: challenge\n")
    port, _ = await h2_port(origin, make_edge, tmp_path,
                            defense={"enabled": True, "policy": str(policy)})
    context = await browser.new_context(ignore_https_errors=True)  # type: ignore[attr-defined]
    page = await context.new_page()
    first = await page.goto(f"https://news.test:{port}{ARTICLE}")
    assert first is not None and first.status == 403
    await page.wait_for_url(f"**{ARTICLE}", timeout=60_000)
    for _ in range(100):
        try:
            await page.wait_for_load_state("load")
            if "DDoS" in await page.content():
                break
        except playwright_api.Error:
            pass  # still navigating
        await asyncio.sleep(0.1)
    assert "DDoS" in await page.content()
    assert await page.evaluate("performance.getEntriesByType('navigation')[0]"
                               ".nextHopProtocol") == "h2"
    assert any(c["name"] == "kalkan_pass" for c in await context.cookies())
    await context.close()
