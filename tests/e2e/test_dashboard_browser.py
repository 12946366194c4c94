"""The operator's dashboard in real headless Chromium, in front of a real edge and origin while
the traffic lab's attack engine (bench/lab/attacks.py: a search wave from two loopback bot
addresses, bounded in time and count) runs against it: sign in, watch the numbers move and the
wave get blocked by its rule, pin attack mode, add a decision and see it enforced, remove it and
see the address served again. Screenshots at desktop and phone widths go to a temporary
directory, or to docs/screenshots/ with KALKAN_UPDATE_SCREENSHOTS=1 (how the committed ones were
made)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

from e2e.chromium import browser_fixture, needs_chromium  # noqa: F401
from support import EdgeFactory, Origin, fetch, port_of

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench.lab.attacks import Attacker, Bins, Wave  # noqa: E402
from bench.lab.net import BOTS_BASE, now, spread_address  # noqa: E402

pytestmark = needs_chromium

SHOTS = ROOT / "docs" / "screenshots"
# The lab's search tactic at 40 req/s from two bots (one per /24): each is over the policy's
# 20 searches a minute within a second or two.
WAVE = Wave("search", 40, 2, per_prefix=1, workers=4, timeout_s=2.0)
ATTACKER = spread_address(BOTS_BASE, 0, 1)
ATTACKER_PREFIX = ATTACKER.rsplit(".", 1)[0] + ".0/24"
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


async def readers(port: int, stop: asyncio.Event, sent: list[int]) -> None:
    """Readers from 40 addresses (trusted X-Forwarded-For) on a few pages, bounded."""
    pages = ["/", "/news/media-community-statement-ddos/", "/feed/", "/"]
    i = 0
    while not stop.is_set() and i < 20_000:
        i += 1
        reader = f"192.0.2.{i % 40 + 1}"
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            result = await fetch(port, pages[i % len(pages)], headers={
                "X-Forwarded-For": reader, "User-Agent": f"Mozilla/5.0 Reader/{i % 3}"})
            sent.append(result.status)
        await asyncio.sleep(0.02)


def lab_attack(port: int, bins: Bins, seconds: float) -> Attacker:
    """The lab's attack engine, one wave for `seconds` (and at most 5,000 requests)."""
    t0 = now()
    return Attacker(WAVE, "127.0.0.1", port, t0, t0, t0 + seconds, 5_000, bins, None, seed=7)


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
    bins: Bins = {}
    attacker = lab_attack(port, bins, 90.0)
    reading = asyncio.create_task(readers(port, stop, sent))
    attacking = asyncio.create_task(attacker.run())
    shots = SHOTS if os.environ.get("KALKAN_UPDATE_SCREENSHOTS") == "1" else tmp_path / "shots"
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

        # The numbers move: requests served from the cache, and the wave blocked by its rule.
        await page.wait_for_function(
            "() => parseFloat(document.querySelector('[data-testid=rate-hit]')?.textContent)"
            " > 0", timeout=20_000)
        await page.wait_for_function(
            "() => parseFloat(document.querySelector('[data-testid=rate-blocked]')?.textContent)"
            " > 0", timeout=20_000)
        await page.wait_for_function(
            f"() => document.querySelector('#top-prefixes').textContent.includes("
            f"'{ATTACKER_PREFIX}') && document.querySelector('#decisions')"
            f".textContent.includes('{ATTACKER}')", timeout=20_000)
        assert "/search" in (await page.text_content("#top-paths") or "")
        # The rule's standing decision for the bot's address (escalated by its strikes).
        action = await page.text_content(
            f"#decisions tr[data-target='{ATTACKER}'] td:nth-child(2)")
        assert action in ("block", "drop"), action

        # Attack mode from the page (a POST with the session cookie and the CSRF header).
        await page.click("button[data-mode=on]")
        await page.wait_for_function(
            "() => document.querySelector('#threat').textContent === 'attack'", timeout=10_000)
        assert edge.pipeline.defense.attack.mode == "on"  # type: ignore[union-attr]
        await asyncio.sleep(6)  # some seconds of sparkline under attack for the pictures
        shots.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(shots / "dashboard-desktop.png"), full_page=True)
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.click("#lang button[data-l=ky]")
        await page.wait_for_function(
            "() => document.querySelector('#threat').textContent === 'чабуул'")
        await page.screenshot(path=str(shots / "dashboard-phone.png"))
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
        attacking.cancel()  # the wave's connections close with it
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.gather(reading, attacking), 10)
        await context.close()
    assert 200 in sent
    refused = sum(row[2] + row[3] for row in bins.values())  # COUNTERS: challenged, refused
    assert attacker.sent > 0 and refused > 0, bins
    for shot in ("dashboard-desktop.png", "dashboard-phone.png"):
        size = (shots / shot).stat().st_size
        assert 5_000 < size < 600_000, (shot, size)
