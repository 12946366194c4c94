"""A reader in real headless Chromium meets the challenge, passes it and reads the article;
with JavaScript off, the no-JS fallback gets them there too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from e2e.chromium import browser_fixture, needs_chromium, playwright_api  # noqa: F401
from support import EdgeFactory, Origin, port_of

ARTICLE = "/news/media-community-statement-ddos/"
# Every page must be earned: a policy that challenges all page requests without a pass.
POLICY = """
version: 1
rules:
  - name: everyone-proves-themselves
    match: {route: page}
    action: challenge
    reason: e2e test
"""

pytestmark = needs_chromium




async def challenged_edge(origin: Origin, make_edge: EdgeFactory, tmp_path: Path,
                          nojs_delay: float = 5.0) -> int:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    edge = await make_edge(origin.url, defense={"enabled": True, "policy": str(policy),
                                                "nojs_delay": nojs_delay})
    return port_of(edge)


async def arrived(page: object) -> None:
    """Wait until the article itself is shown (the challenge page navigates on its own)."""
    for _ in range(100):
        try:
            await page.wait_for_load_state("load")  # type: ignore[attr-defined]
            if "DDoS" in await page.content():  # type: ignore[attr-defined]
                return
        except playwright_api.Error:
            pass  # still navigating
        await asyncio.sleep(0.1)
    raise AssertionError("the article never arrived")


async def test_reader_solves_the_proof_of_work(origin: Origin, make_edge: EdgeFactory,
                                               tmp_path: Path, browser: object) -> None:
    port = await challenged_edge(origin, make_edge, tmp_path)
    context = await browser.new_context(locale="ru-RU")  # type: ignore[attr-defined]
    page = await context.new_page()
    # The challenge page solves itself and navigates away, after which the browser no longer
    # has its body: read it on the way in.
    bodies: list[str] = []

    async def keep_body(route: Any) -> None:
        response = await route.fetch()
        bodies.append(await response.text())
        await route.fulfill(response=response)

    await page.route(f"**{ARTICLE}", keep_body, times=1)  # type: ignore[attr-defined]
    first = await page.goto(f"http://127.0.0.1:{port}{ARTICLE}")
    assert first is not None and first.status == 403
    challenge = bodies[0]
    assert 'id="kalkan-progress"' in challenge and '<html lang="ru"' in challenge
    await page.wait_for_url(f"**{ARTICLE}", timeout=60_000)
    await arrived(page)
    cookies = {c["name"]: c for c in await context.cookies()}
    assert "kalkan_pass" in cookies and cookies["kalkan_pass"]["httpOnly"]
    # The pass is reused: the next page arrives directly.
    again = await page.goto(f"http://127.0.0.1:{port}/")
    assert again is not None and again.status == 200
    await context.close()


async def test_reader_without_javascript_passes_the_fallback(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path, browser: object) -> None:
    port = await challenged_edge(origin, make_edge, tmp_path, nojs_delay=1.0)
    context = await browser.new_context(java_script_enabled=False)  # type: ignore[attr-defined]
    page = await context.new_page()
    first = await page.goto(f"http://127.0.0.1:{port}{ARTICLE}")
    assert first is not None and first.status == 403
    assert "noscript" in await first.text()
    await page.wait_for_url(f"**{ARTICLE}", timeout=30_000)
    await arrived(page)
    assert any(c["name"] == "kalkan_pass" for c in await context.cookies())
    await context.close()
