"""The operator's dashboard in real headless Chromium, in front of a real edge and origin under a
short, bounded flood from one (trusted X-Forwarded-For) address: sign in, watch the numbers move
and the flood get blocked by its rule, pin attack mode, add a decision and see it enforced, remove
it and see the address served again. Screenshots at desktop and phone widths go to
docs/screenshots/."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from e2e.chromium import browser_fixture, needs_chromium  # noqa: F401
from support import EdgeFactory, Origin, fetch, port_of

pytestmark = needs_chromium

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ATTACKER = "203.0.113.66"
OPERATOR_TARGET = "198.51.100.23"
POLICY = """
version: 1
rules:
  - name: search-flood
    match:
      route: search
      rate: {more_than: 20, in: 1m, routes: [search]}
    action: block
    ttl: 2m
    reason: search flood
"""


async def traffic(port: int, stop: asyncio.Event, sent: list[int]) -> None:
    """Readers from 40 addresses on a few pages, and one address flooding search (bounded)."""
    pages = ["/", "/news/media-community-statement-ddos/", "/feed/", "/"]
    i = 0
    while not stop.is_set() and i < 20_000:
        i += 1
        reader = f"192.0.2.{i % 40 + 1}"
        jobs = [fetch(port, pages[i % len(pages)], headers={
            "X-Forwarded-For": reader, "User-Agent": f"Mozilla/5.0 Reader/{i % 3}"})]
        if i % 2 == 0:
            jobs.append(fetch(port, f"/?s=flood{i}", headers={
                "X-Forwarded-For": ATTACKER, "User-Agent": "FloodBot/1.0"}))
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if not isinstance(result, BaseException):
                sent.append(result.status)
        await asyncio.sleep(0.01)


async def status_for(port: int, address: str) -> int:
    return (await fetch(port, "/", headers={"X-Forwarded-For": address})).status


async def test_dashboard_shows_an_attack_and_enforces_a_decision(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path, browser: object) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    edge = await make_edge(origin.url, defense={"enabled": True, "policy": str(policy)},
                           client_address={"trusted_proxies": ["127.0.0.0/8"]})
    port = port_of(edge)
    assert edge.admin_address is not None
    dashboard = f"http://127.0.0.1:{edge.admin_address[1]}/"
    stop, sent = asyncio.Event(), []
    generator = asyncio.create_task(traffic(port, stop, sent))
    context = await browser.new_context(  # type: ignore[attr-defined]
        locale="en-US", viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = await context.new_page()
    try:
        await page.goto(dashboard)
        # Not signed in: the page is read-only and offers the sign-in form.
        await page.wait_for_selector("#login:not(.hidden)")
        await page.fill("#token", edge.admin_token)
        await page.click("#signin")
        await page.wait_for_selector("#login.hidden", state="attached")
        await page.wait_for_selector("#logout:not(.hidden)")

        # The numbers move: requests served from the cache, and the flood blocked by its rule.
        await page.wait_for_function(
            "() => parseFloat(document.querySelector('[data-testid=rate-hit]')?.textContent)"
            " > 0", timeout=20_000)
        await page.wait_for_function(
            "() => parseFloat(document.querySelector('[data-testid=rate-blocked]')?.textContent)"
            " > 0", timeout=20_000)
        await page.wait_for_function(
            f"() => document.querySelector('#top-prefixes').textContent.includes("
            f"'203.0.113.0/24') && document.querySelector('#decisions')"
            f".textContent.includes('{ATTACKER}')", timeout=20_000)
        assert "FloodBot/1.0" in await page.text_content("#top-agents")
        # The rule's standing decision for the flooding address (escalated by its strikes).
        row = await page.text_content(f"#decisions tr[data-target='{ATTACKER}']")
        assert row is not None and ("block" in row or "drop" in row)

        # Attack mode from the page (a POST with the session cookie and the CSRF header).
        await page.click("button[data-mode=on]")
        await page.wait_for_function(
            "() => document.querySelector('#threat').textContent === 'attack'", timeout=10_000)
        assert edge.pipeline.defense.attack.mode == "on"  # type: ignore[union-attr]
        await asyncio.sleep(6)  # some seconds of sparkline under attack for the pictures
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "dashboard-desktop.png"), full_page=True)
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.click("#lang button[data-l=ky]")
        await page.wait_for_function(
            "() => document.querySelector('#threat').textContent === 'чабуул'")
        await page.screenshot(path=str(SHOTS / "dashboard-phone.png"))
        await page.click("#lang button[data-l=en]")
        await page.set_viewport_size({"width": 1280, "height": 900})
        await page.click("button[data-mode=auto]")
        await page.wait_for_function(
            "() => document.querySelector('#mode').textContent.endsWith('auto')")

        # An operator's decision for an address that is served now...
        assert await status_for(port, OPERATOR_TARGET) == 200
        await page.fill("#d-target", OPERATOR_TARGET)
        await page.select_option("#d-action", "block")
        await page.fill("#d-reason", "seen in the logs")
        await page.click("#d-add")
        await page.wait_for_selector(f"#decisions tr[data-target='{OPERATOR_TARGET}']")
        assert await status_for(port, OPERATOR_TARGET) == 403
        # ...and removed again: served again.
        await page.click(f"button[data-remove='{OPERATOR_TARGET}']")
        await page.wait_for_selector(f"#decisions tr[data-target='{OPERATOR_TARGET}']",
                                     state="detached")
        assert await status_for(port, OPERATOR_TARGET) == 200
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await generator
        await context.close()
    assert 403 in sent and 200 in sent
    for shot in ("dashboard-desktop.png", "dashboard-phone.png"):
        size = (SHOTS / shot).stat().st_size
        assert 5_000 < size < 600_000, (shot, size)
