"""Debian's headless Chromium for the browser tests: where it is, how it is started (never a
downloaded browser), and the `browser` fixture both browser test modules use."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = "/usr/bin/chromium"
# news.test resolves to loopback, for the tests that need a name a certificate can carry.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP news.test 127.0.0.1"]

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="Debian chromium is not installed")


@pytest.fixture(name="browser")
async def browser_fixture() -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        await b.close()
