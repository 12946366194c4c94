"""Delivery of alerts over real loopback sockets: retries with backoff, a channel that fails
keeps its events for the next message, a channel that never answers times out, and who is
loudest in the defence."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from alert_standins import TelegramStandIn
from kalkan.alerts.channels import Telegram, tls_context
from kalkan.alerts.dispatch import Dispatcher
from kalkan.alerts.events import ATTACK_ENDED, ATTACK_STARTED, Event
from kalkan.config import AlertsConfig, DefenseConfig, TelegramAlertConfig
from kalkan.defense.engine import Defense
from kalkan.observe.metrics import Metrics
from unit.test_verdict import View

TOKEN = "42:token"


@pytest.fixture
def telegram() -> Iterator[TelegramStandIn]:
    stand_in = TelegramStandIn(TOKEN)
    yield stand_in
    stand_in.stop()


async def settled(done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Until `done()` (the stand-in records a message before its answer reaches the sender)."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert done()


def dispatcher(url: str, **settings: float) -> Dispatcher:
    config = AlertsConfig(telegram=TelegramAlertConfig(chat_id="7", token=TOKEN, api_url=url))
    for key, value in settings.items():
        setattr(config, key, value)
    assert config.telegram is not None
    channel = Telegram(config.telegram, config.timeout, tls_context(None))
    return Dispatcher(config, "Kloop", [channel], Metrics())


async def test_a_failed_attempt_is_retried_with_backoff(telegram: TelegramStandIn) -> None:
    sender = dispatcher(telegram.url, retries=3, interval=60)
    sender.start()
    try:
        telegram.fail(2)
        began = time.monotonic()
        sender.notify(Event(ATTACK_STARTED, {"level": 2, "reason": "r", "attackers": []}))
        got = await asyncio.to_thread(telegram.wait_for, 1, 10.0)
        assert len(got) == 1 and got[0].at - began >= 3.0  # waited 1 s, then 2 s
        await settled(lambda: sender.sent == 1)
        assert sender.attempts_failed == 2 and sender.sent == 1 and sender.failed == 0
    finally:
        await sender.close()


async def test_a_message_not_delivered_goes_with_the_next(telegram: TelegramStandIn) -> None:
    sender = dispatcher(telegram.url, retries=0, interval=1)
    sender.start()
    try:
        telegram.fail(1)
        sender.notify(Event(ATTACK_STARTED, {"level": 2, "reason": "r", "attackers": []}))
        await asyncio.sleep(0.5)
        assert sender.failed == 1 and telegram.received == []
        sender.notify(Event(ATTACK_ENDED, {"level": 1, "duration": 30.0}))
        got = await asyncio.to_thread(telegram.wait_for, 1, 5.0)
        text = got[0].json()["text"]
        assert text.startswith("2 events on Kloop since the last message:")
        assert "Attack on Kloop: threat level 2" in text and "is over after 30 s" in text
        await settled(lambda: sender.sent == 1)
        assert len(sender.outboxes["telegram"]) == 0 and sender.failed == 1
    finally:
        await sender.close()


async def test_a_channel_that_never_answers_times_out_without_blocking() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does) and never answers
    try:
        sender = dispatcher(f"http://127.0.0.1:{silent.getsockname()[1]}", retries=0,
                            timeout=0.5)
        sender.start()
        began = time.monotonic()
        for i in range(1000):  # a storm of events: notify returns at once, the queue is bounded
            sender.notify(Event(ATTACK_STARTED, {"level": 2, "reason": str(i), "attackers": []}))
        assert time.monotonic() - began < 0.5
        await settled(lambda: sender.failed == 1)
        assert sender.failed == 1 and sender.attempts_failed == 1
        assert len(sender.outboxes["telegram"]) == sender.config.queue_size
        await sender.close()
    finally:
        silent.close()


def test_loudest_names_decisions_and_the_busiest_clients(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nrules:\n"
        "  - name: env\n    match: {path: /.env}\n    action: block\n    ttl: 10m\n"
        "  - name: fast\n    match: {rate: {more_than: 1000, in: 1m}}\n    action: log\n"
        "  - name: fast-prefix\n    match: {rate: {more_than: 2000, in: 1m, per: prefix}}\n"
        "    action: log\n")
    defense = Defense(DefenseConfig(policy=str(policy)), tmp_path, Metrics())
    defense.check(View("/.env", client="203.0.113.66"))
    for _ in range(300):
        defense.check(View("/", client="198.51.100.7"))
    for _ in range(30):
        defense.check(View("/", client="192.0.2.1"))
    rows = defense.loudest(time.time())
    assert rows[0]["target"] == "203.0.113.66", rows
    assert rows[0]["why"].startswith("block (rule): rule env"), rows
    # A meter drains as time passes: about 300 requests, as the test ran in well under 3 s.
    assert rows[1]["target"] == "198.51.100.7"
    assert re.fullmatch(r"(29\d|300) requests in 60 s, limit 1000 per address", rows[1]["why"])
    assert rows[2]["target"] == "198.51.100.0/24"
    assert re.fullmatch(r"(29\d|300) requests in 60 s, limit 2000 per prefix", rows[2]["why"])
    assert len(rows) == 3  # 192.0.2.1, far under every limit, is a reader
