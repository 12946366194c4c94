"""Alerts without the network: the per-channel rate limiter and summariser, the words of the
messages, the watcher's transitions, the webhook signature, and the config's errors."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from kalkan.alerts.channels import signature, webhook_body
from kalkan.alerts.events import ATTACK_ENDED, ATTACK_STARTED, CERT_EXPIRING, Event
from kalkan.alerts.messages import render
from kalkan.alerts.outbox import Batch, Outbox
from kalkan.alerts.watch import Sources, Watcher
from kalkan.config import ConfigError, load_config_text

# -- the outbox: one message per interval, nothing lost unsaid ------------------------------------


def ev(kind: str = ATTACK_STARTED, **facts: object) -> Event:
    return Event(kind, dict(facts))


def test_first_event_goes_at_once_and_the_next_wait_for_the_interval() -> None:
    box = Outbox(interval=60, capacity=10)
    assert box.due(0.0) is None
    box.add(ev(level=2))
    assert box.due(0.0) == 0.0
    first = box.take(0.0)
    assert len(first.events) == 1 and first.unlisted == 0
    assert box.due(1.0) is None
    for i in range(5):  # a storm inside the interval
        box.add(ev(ATTACK_ENDED if i % 2 else ATTACK_STARTED, level=i % 3))
    assert box.due(10.0) == pytest.approx(50.0)
    assert box.due(59.9) == pytest.approx(0.1)
    assert box.due(60.0) == 0.0
    second = box.take(60.0)
    assert [e.kind for e in second.events] == [ATTACK_STARTED, ATTACK_ENDED] * 2 + [
        ATTACK_STARTED]
    assert box.due(61.0) is None and len(box) == 0


def test_a_full_outbox_counts_what_it_cannot_list() -> None:
    box = Outbox(interval=60, capacity=3)
    box.take(0.0)
    for i in range(10):
        box.add(ev(level=i))
    batch = box.take(60.0)
    assert [e.facts["level"] for e in batch.events] == [7, 8, 9]
    assert batch.unlisted == 7 and box.overflowed == 7
    assert "10 events" in render(batch, "news.example").text


def test_undelivered_events_ride_in_the_next_message_oldest_first() -> None:
    box = Outbox(interval=5, capacity=10)
    box.add(ev(level=1))
    failed = box.take(0.0)
    box.add(ev(level=2))
    box.give_back(failed)
    assert box.due(1.0) == pytest.approx(4.0)  # a failed send still used the interval
    assert [e.facts["level"] for e in box.take(5.0).events] == [1, 2]


# -- the words ------------------------------------------------------------------------------------

ATTACKERS = [{"target": "203.0.113.7", "why": "block (rule): rule search-flood: too fast"},
             {"target": "198.51.100.0/24", "why": "412 requests in 10 s, limit 100 per prefix"}]


def test_attack_start_names_site_level_reason_and_attackers() -> None:
    batch = Batch((ev(level=2, reason="origin gate 16/16 busy, 40 waiting",
                      attackers=ATTACKERS),))
    msg = render(batch, "Kloop")
    assert msg.subject.startswith("[Kalkan] Attack on Kloop: threat level 2 (attack)")
    lines = msg.text.splitlines()
    assert "origin gate 16/16 busy" in lines[0]
    assert lines[1] == "Top attackers now:"
    assert lines[2] == "• 203.0.113.7 — block (rule): rule search-flood: too fast"
    assert "198.51.100.0/24" in lines[3]


@pytest.mark.parametrize(("language", "words"), [
    ("en", ("Attack on Kloop", "is over after 5 min", "Top attackers")),
    ("ru", ("Атака на Kloop", "закончилась через 5 мин", "Главные атакующие")),
    ("ky", ("Kloop сайтына чабуул", "5 мүн кийин токтоду", "негизги чабуулчулар")),
])
def test_a_summary_in_each_language(language: str, words: tuple[str, ...]) -> None:
    batch = Batch((ev(level=2, reason="x", attackers=ATTACKERS),
                   ev(ATTACK_ENDED, level=1, duration=300.0)))
    msg = render(batch, "Kloop", language)
    for word in words:
        assert word in msg.text, (word, msg.text)
    assert msg.text.splitlines()[0].count("2") == 1  # "2 events ..." in its words
    assert "Kloop" in msg.subject and "\n" not in msg.subject


def test_certificate_words_expiring_and_expired() -> None:
    soon = render(Batch((ev(CERT_EXPIRING, names=["news.example"], days_left=2.96,
                            not_after="2026-12-08 02:00 UTC"),)), "site")
    assert "the certificate for news.example expires in 3.0 days (2026-12-08" in soon.text
    gone = render(Batch((ev(CERT_EXPIRING, names=["news.example"], days_left=-1.0,
                            not_after="2026-12-04 02:00 UTC"),)), "site", "ru")
    assert "истёк" in gone.text


def test_webhook_signature_is_an_hmac_of_timestamp_and_body() -> None:
    batch = Batch((ev(level=2, reason="r", attackers=[]),), unlisted=2)
    body = webhook_body(render(batch, "s"), batch, "s")
    assert body["schema"] == 1 and body["unlisted"] == 2
    assert body["events"][0]["kind"] == ATTACK_STARTED
    raw = b'{"a": 1}'
    want = hmac.new(b"k" * 32, b"1700000000." + raw, hashlib.sha256).hexdigest()
    assert signature("k" * 32, "1700000000", raw) == "sha256=" + want


# -- the watcher ----------------------------------------------------------------------------------


def make_cert(path: Path, days: float, name: str = "news.example") -> Path:
    """A self-signed certificate for `name` expiring in `days`; its key beside it (.key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                           NoEncryption()))
    return path


def test_watcher_reports_each_transition_once(tmp_path: Path) -> None:
    state = {"level": 0, "failing": False}
    soon = make_cert(tmp_path / "soon.pem", 3)
    later = make_cert(tmp_path / "later.pem", 60, "later.example")
    events: list[Event] = []
    watcher = Watcher(Sources(threat=lambda: (state["level"], "why"),
                              attackers=lambda: ATTACKERS,
                              origin_failing=lambda: bool(state["failing"]),
                              origin="http://127.0.0.1:8000",
                              certificates=lambda: [str(soon), str(later)]),
                      events.append, cert_expiry_days=14)
    now = time.time()
    watcher.check(now)
    assert [e.kind for e in events] == [CERT_EXPIRING]
    assert events[0].facts["names"] == ["news.example"]
    assert 2.9 < events[0].facts["days_left"] <= 3.0
    state["level"] = 1
    watcher.check(now + 1)
    state["level"] = 3
    watcher.check(now + 2)
    watcher.check(now + 3)      # still under attack: nothing new
    state["level"] = 1
    state["failing"] = True
    watcher.check(now + 12)
    state["failing"] = False
    watcher.check(now + 20)
    watcher.check(now + 3600 * 2)  # the certificate again only after a day
    kinds = [e.kind for e in events]
    assert kinds == [CERT_EXPIRING, ATTACK_STARTED, ATTACK_ENDED, "origin_down", "origin_up"]
    assert events[1].facts["attackers"] == ATTACKERS and events[1].facts["level"] == 3
    assert events[2].facts["duration"] == 10.0 and events[4].facts["duration"] == 8.0
    watcher.check(now + 86400 + 3600)
    assert [e.kind for e in events][-1] == CERT_EXPIRING


# -- config errors --------------------------------------------------------------------------------

def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "k.yaml")
    return caught.value.problems


def test_a_good_alerts_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    monkeypatch.setenv("KALKAN_TEST_BOT", "1:abc")
    config = load_config_text(
        "alerts:\n  site_name: Kloop\n  language: ky\n  interval: 2m\n"
        "  telegram: {chat_id: -1001, token_env: KALKAN_TEST_BOT}\n"
        f"  webhook: {{url: 'https://hooks.example/k', secret_file: {tmp_path}/secret}}\n"
        "  email: {host: smtp.example, sender: k@news.example, to: [desk@news.example],"
        " username: k, password_env: KALKAN_TEST_BOT}\n")
    alerts = config.alerts
    assert alerts.interval == 120 and alerts.language == "ky"
    assert alerts.telegram is not None and alerts.telegram.chat_id == "-1001"
    assert alerts.email is not None and alerts.email.port == 587


def test_every_alerts_problem_is_named_with_its_line(tmp_path: Path) -> None:
    found = problems(
        "alerts:\n"
        "  language: de\n"                                                    # 2
        "  interval: 0\n"                                                     # 3
        "  telegram:\n"                                                       # 4
        "    token: abc\n"                                                    # 5
        f"    token_file: {tmp_path}/none\n"                                  # 6
        "    api_url: http://api.telegram.org\n"                              # 7
        "  webhook: {url: 'ftp://x'}\n"                                       # 8
        "  email:\n"                                                          # 9
        "    host: smtp.example\n"                                            # 10
        "    security: ssl\n"                                                 # 11
        "    sender: nobody\n"                                                # 12
        "    password: p\n")                                                  # 13
    text = "\n".join(found)
    for needle in ("k.yaml:2: alerts.language: must be en, ru or ky, not 'de'",
                   "k.yaml:3: alerts.interval: must be at least 1",
                   "k.yaml:4: alerts.telegram.chat_id: the chat to write to is needed",
                   "alerts.telegram.token: give only one of alerts.telegram.token, "
                   "alerts.telegram.token_file",
                   "k.yaml:7: alerts.telegram.api_url: plain http would send the bot's token",
                   "k.yaml:8: alerts.webhook.url: expected an http(s):// URL, got 'ftp://x'",
                   "k.yaml:11: alerts.email.security: must be starttls, tls or none",
                   "k.yaml:12: alerts.email.sender: expected a From: address",
                   "alerts.email.to: at least one recipient is needed",
                   "alerts.email.username: needed with a password"):
        assert needle in text, (needle, text)


def test_secret_sources_that_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    text = "\n".join(problems(
        "alerts:\n  telegram: {chat_id: '1', token_env: KALKAN_NO_SUCH_VARIABLE}\n"
        f"  webhook: {{url: 'http://127.0.0.1:1/', secret_file: {tmp_path}/empty}}\n"
        f"  email: {{host: h, sender: a@b, to: [c@d], password_file: {tmp_path}/absent}}\n"))
    assert "the environment variable KALKAN_NO_SUCH_VARIABLE is not set or empty" in text
    assert f"alerts.webhook.secret_file: {tmp_path}/empty is empty" in text
    assert f"alerts.email.password_file: cannot read {tmp_path}/absent" in text
    assert "alerts.telegram: the bot's token is needed" not in text
    text = "\n".join(problems("alerts:\n  telegram: {chat_id: '1'}\n"))
    assert "alerts.telegram: the bot's token is needed: token_file, token_env or token" in text


def test_admin_commands_need_not_read_the_secrets(tmp_path: Path) -> None:
    """`kalkan purge` and friends load the config without its files: a secret file only the
    service's user can read must not stop them; serve and check-config read it."""
    text = (f"alerts:\n  telegram: {{chat_id: '1', token_file: {tmp_path}/unreadable}}\n")
    load_config_text(text, "k.yaml", files=False)
    assert any("cannot read" in p for p in problems(text))
    both = "alerts:\n  telegram: {chat_id: '1', token: a, token_env: B}\n"
    with pytest.raises(ConfigError, match="give only one of"):
        load_config_text(both, "k.yaml", files=False)
