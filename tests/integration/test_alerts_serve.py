"""Alerts from a real `kalkan serve` in front of a real origin, received by local stand-ins of
the Telegram Bot API, a webhook receiver and an SMTP server: an attack from loopback, the
operator's switch, the origin going down and coming back, a certificate near expiry, and
`kalkan alerts test`."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from alert_standins import SmtpStandIn, TelegramStandIn, WebhookReceiver
from support import Client, Origin, fetch, free_port, start_origin, wait_for_port
from unit.test_alerts import make_cert

KALKAN = str(Path(sys.executable).with_name("kalkan"))
TOKEN = "123456:stand-in-token"


class Served:
    """`kalkan serve --config` on free loopback ports; its output goes to a file."""

    def __init__(self, tmp: Path, origin_url: str, config: str) -> None:
        self.port, self.admin = free_port(), free_port()
        self.state = tmp / "state"
        (tmp / "kalkan.yaml").write_text(config)
        self.output = tmp / "kalkan.out"
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [KALKAN, "serve", "--config", str(tmp / "kalkan.yaml"), "--origin", origin_url,
                 "--listen", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin}",
                 "--cache-dir", str(tmp / "cache"), "--access-log", "off",
                 "--state-dir", str(self.state)], stdout=out, stderr=subprocess.STDOUT)

    async def ready(self) -> None:
        await asyncio.to_thread(wait_for_port, self.admin, self.proc, 15.0)

    def admin_call(self, method: str, path: str) -> Any:
        token = (self.state / "admin.token").read_text().strip()
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method=method,
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if path != "/metrics" else body.decode()

    async def threat_level(self) -> int:
        text = await asyncio.to_thread(self.admin_call, "GET", "/metrics")
        for line in text.splitlines():
            if line.startswith("kalkan_threat_level "):
                return int(float(line.split()[1]))
        raise AssertionError("no kalkan_threat_level in /metrics")

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def threat_change_time(log: str) -> float:
    """Wall-clock time of the edge's first log line saying the threat level rose to attack or
    severe (attack_mode.py logs each change)."""
    for line in log.splitlines():
        if "threat level " in line and ("→ attack:" in line or "→ severe:" in line):
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()  # logged in local time, as strptime reads it
    raise AssertionError(f"no threat level change in the log:\n{log}")


@pytest.fixture
def telegram() -> Iterator[TelegramStandIn]:
    stand_in = TelegramStandIn(TOKEN)
    yield stand_in
    stand_in.stop()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    stand_in = WebhookReceiver()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def served() -> Iterator[list[Served]]:
    procs: list[Served] = []
    yield procs
    for p in procs:
        p.stop()


def telegram_section(stand_in: TelegramStandIn) -> str:
    return (f"  telegram:\n    chat_id: '-1001'\n    token: '{TOKEN}'\n"
            f"    api_url: {stand_in.url}\n")


async def flood(port: int, stop: asyncio.Event, clients: int = 8) -> int:
    """Requests for the front page from loopback on keep-alive connections until `stop`
    (a new connection whenever the edge closes one); returns how many were answered."""
    answered = 0

    async def one() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                client = await Client.connect(port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                while not stop.is_set():
                    await client.request("GET", "/")
                    answered += 1
            except (ConnectionError, OSError, TimeoutError):
                pass
            finally:
                await client.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return answered


@pytest.mark.slow
async def test_attack_from_loopback_alerts_within_5s_and_a_burst_is_summarised(
        origin: Origin, tmp_path: Path, telegram: TelegramStandIn,
        served: list[Served]) -> None:
    interval = 4.0
    edge = Served(tmp_path, origin.url,
                  f"alerts:\n  site_name: Kloop\n  interval: {interval:g}s\n"
                  + telegram_section(telegram))
    served.append(edge)
    await edge.ready()
    # One quiet second teaches the attack mode a baseline of about one request a second, so a
    # flood of a few hundred a second is an attack by its rate.
    assert (await fetch(edge.port, "/")).status == 200
    await asyncio.sleep(2.5)
    assert await edge.threat_level() == 0 and telegram.received == []
    stop = asyncio.Event()
    flood_began = time.monotonic()
    flooding = asyncio.create_task(flood(edge.port, stop))
    switched = False
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not switched:
            switched = await edge.threat_level() >= 2
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        answered = await flooding
    flood_took = time.monotonic() - flood_began
    assert switched, f"no attack mode after {answered} requests:\n{edge.log()}"
    got = await asyncio.to_thread(telegram.wait_for, 1, 5.0)
    assert got, f"no alert within 5 s of the attack mode switching on:\n{edge.log()}"
    started = got[0]
    # When the level rose, to the millisecond: the edge's own log line of the change.
    switched_on = threat_change_time(edge.log())
    delay = started.wall - switched_on
    print(f"attack alert received {delay:.2f} s after the threat level rose "
          f"({answered} requests in {flood_took:.1f} s of flood)")
    assert 0 <= delay <= 5.0
    body = started.json()
    assert body["chat_id"] == "-1001"
    text = body["text"]
    assert text.startswith("Attack on Kloop: threat level") and "Why: " in text
    assert "Top attackers now:" in text and "127.0.0.1" in text, text

    # The operator ends it, then a burst of switches inside one interval: one message after
    # the interval says all three, none before it.
    for mode in ("off", "on", "off"):
        await asyncio.to_thread(edge.admin_call, "POST", f"/attack-mode?mode={mode}")
        await asyncio.sleep(1.2)  # the watcher looks once a second
    got = await asyncio.to_thread(telegram.wait_for, 2, interval + 5)
    assert len(got) == 2, edge.log()
    summary = got[1]
    assert summary.at - started.at >= interval - 0.1
    lines = summary.json()["text"].splitlines()
    assert lines[0] == "3 events on Kloop since the last message:"
    assert "Attack on Kloop is over after" in lines[1]
    assert "Attack on Kloop: threat level 2 (attack). Why: operator set attack mode on" \
        in lines[2]
    assert "Attack on Kloop is over after" in lines[3]
    await asyncio.sleep(interval + 1.5)
    assert len(telegram.received) == 2  # nothing left over, nothing repeated


async def test_origin_down_and_back_up(tmp_path: Path, telegram: TelegramStandIn,
                                       webhook: WebhookReceiver, served: list[Served]) -> None:
    origin = await start_origin()
    try:
        edge = Served(tmp_path, origin.url,
                      "origin:\n  breaker_failures: 2\n  breaker_cooldown: 1s\n"
                      "  connect_timeout: 1s\n"
                      "alerts:\n  site_name: Kloop\n  interval: 1s\n"
                      + telegram_section(telegram) + f"  webhook:\n    url: {webhook.url}/hook\n")
        served.append(edge)
        await edge.ready()
        assert (await fetch(edge.port, "/")).status == 200
        await origin.site.stop()
        for i in range(4):  # misses the origin cannot answer open the breaker
            assert (await fetch(edge.port, f"/missing-{i}")).status in (502, 503, 504)
        got = await asyncio.to_thread(telegram.wait_for, 1, 5.0)
        assert got and got[0].json()["text"].startswith(
            f"Kloop: the origin {origin.url} is failing; readers get cached pages."), edge.log()
        origin = await start_origin(port=origin.port)
        await asyncio.sleep(1.5)  # the breaker's cooldown: the next miss is its probe
        assert (await fetch(edge.port, "/")).status == 200
        assert (await fetch(edge.port, "/feed/")).status == 200
        got = await asyncio.to_thread(telegram.wait_for, 2, 5.0)
        assert len(got) == 2 and got[1].json()["text"].startswith(
            "Kloop: the origin is back after"), edge.log()
        hooks = await asyncio.to_thread(webhook.wait_for, 2, 5.0)
        kinds = [h.json()["events"][0]["kind"] for h in hooks]
        assert kinds == ["origin_down", "origin_up"]
        assert hooks[0].path == "/hook" and hooks[0].headers["X-Kalkan-Event"] == "origin_down"
        assert "X-Kalkan-Signature" not in hooks[0].headers  # no secret configured
        # A channel counts a message sent once its answer is back, which may be just after the
        # stand-in saw it (this test read /metrics in between, under load, twice).
        deadline = time.monotonic() + 5
        while True:
            metrics = await asyncio.to_thread(edge.admin_call, "GET", "/metrics")
            if "kalkan_alerts_sent_total 4" in metrics or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert "kalkan_alert_events_total 2" in metrics
        assert "kalkan_alerts_sent_total 4" in metrics  # two messages, two channels
        assert "kalkan_alerts_failed_total 0" in metrics
    finally:
        await origin.site.stop()


@pytest.fixture
def smtp_tls(tmp_path: Path) -> Iterator[tuple[SmtpStandIn, Path]]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    stand_in = SmtpStandIn(tls=server_ctx, login=("kalkan", "pa55word"))
    yield stand_in, bundle
    stand_in.stop()


async def test_certificate_near_expiry_reaches_every_channel(
        origin: Origin, tmp_path: Path, telegram: TelegramStandIn, webhook: WebhookReceiver,
        smtp_tls: tuple[SmtpStandIn, Path], served: list[Served]) -> None:
    smtp, bundle = smtp_tls
    cert = make_cert(tmp_path / "site.pem", 3, "news.example")
    later = make_cert(tmp_path / "later.pem", 90, "other.example")
    (tmp_path / "hook.secret").write_text("a-shared-secret-of-some-length\n")
    (tmp_path / "smtp.password").write_text("pa55word\n")
    edge = Served(tmp_path, origin.url, f"""
tls:
  certificates:
    - {{cert: {later}, key: {tmp_path / 'later.key'}}}
    - {{cert: {cert}, key: {tmp_path / 'site.key'}}}
alerts:
  site_name: Kaktus
  language: ru
  ca_bundle: {bundle}
{telegram_section(telegram)}  webhook:
    url: {webhook.url}/k
    secret_file: {tmp_path / 'hook.secret'}
  email:
    host: 127.0.0.1
    port: {smtp.port}
    security: starttls
    username: kalkan
    password_file: {tmp_path / 'smtp.password'}
    sender: kalkan@kaktus.example
    to: [desk@kaktus.example, tech@kaktus.example]
""")
    served.append(edge)
    await edge.ready()
    got = await asyncio.to_thread(telegram.wait_for, 1, 5.0)
    assert got, edge.log()
    text = got[0].json()["text"]
    assert text.startswith("Kaktus: сертификат для news.example истекает через 2.9") or \
        text.startswith("Kaktus: сертификат для news.example истекает через 3.0"), text
    hooks = await asyncio.to_thread(webhook.wait_for, 1, 5.0)
    assert hooks, edge.log()
    hook = hooks[0]
    stamp, sig = hook.headers["X-Kalkan-Timestamp"], hook.headers["X-Kalkan-Signature"]
    want = hmac.new(b"a-shared-secret-of-some-length", stamp.encode() + b"." + hook.body,
                    hashlib.sha256).hexdigest()
    assert sig == "sha256=" + want and abs(int(stamp) - time.time()) < 60
    payload = hook.json()
    assert payload["site"] == "Kaktus" and payload["schema"] == 1
    event = payload["events"][0]
    assert event["kind"] == "cert_expiring" and event["facts"]["names"] == ["news.example"]
    assert event["facts"]["path"] == str(cert) and 2.9 < event["facts"]["days_left"] <= 3.0
    mails = await asyncio.to_thread(smtp.wait_for, 1, 10.0)
    assert mails, edge.log()
    _, envelope, mail = mails[0]
    assert envelope.mail_from == "kalkan@kaktus.example"
    assert envelope.rcpt_tos == ["desk@kaktus.example", "tech@kaktus.example"]
    assert smtp.logins  # logged in, after STARTTLS (aiosmtpd refuses AUTH before it)
    assert "Kaktus" in str(mail["Subject"]) and "сертификат" in str(mail["Subject"])
    assert "news.example" in mail.get_payload(decode=True).decode()
    # The other certificate is not near expiry: one event per channel, no more.
    await asyncio.sleep(1.5)
    assert len(telegram.received) == 1 and len(webhook.received) == 1


async def test_alerts_test_command_reports_each_channel(
        tmp_path: Path, telegram: TelegramStandIn, webhook: WebhookReceiver) -> None:
    smtp = SmtpStandIn()
    try:
        config = tmp_path / "kalkan.yaml"
        config.write_text("alerts:\n  site_name: Kloop\n  language: ky\n"
                          + telegram_section(telegram)
                          + f"  webhook: {{url: '{webhook.url}/x'}}\n"
                          f"  email: {{host: 127.0.0.1, port: {smtp.port}, security: none,"
                          " sender: k@kloop.example, to: [desk@kloop.example]}\n")
        out = await asyncio.to_thread(subprocess.run, [KALKAN, "alerts", "test", "--config",
                                                       str(config)],
                                      capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["telegram: sent", "webhook: sent", "email: sent"]
        assert telegram.texts() == ["Kalkan текшерүүсү, Kloop: эскертүүлөр бул каналга жетет."]
        assert webhook.received[0].json()["events"][0]["kind"] == "test"
        assert len(smtp.messages) == 1
        # A channel that cannot be reached is named with why; the others still go.
        dead = free_port()
        config.write_text("alerts:\n" + telegram_section(telegram)
                          + f"  webhook: {{url: 'http://127.0.0.1:{dead}/x'}}\n")
        out = await asyncio.to_thread(subprocess.run, [KALKAN, "alerts", "test", "--config",
                                                       str(config)],
                                      capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        lines = out.stdout.splitlines()
        assert lines[0] == "telegram: sent"
        assert lines[1].startswith(f"webhook: FAILED: cannot reach http://127.0.0.1:{dead}/…: ")
        assert len(telegram.received) == 2
        # No channel at all: said, and a failure.
        config.write_text("alerts:\n  interval: 5s\n")
        out = await asyncio.to_thread(subprocess.run, [KALKAN, "alerts", "test", "--config",
                                                       str(config)],
                                      capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "no alert channel configured" in out.stderr
    finally:
        smtp.stop()
