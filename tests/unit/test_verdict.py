"""The edge/defence contract without sockets: the defence reads a request view and answers with
immutable verdicts (shared objects for refusals); the edge's writer renders them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kalkan.config import DefenseConfig
from kalkan.defense.engine import Defense
from kalkan.defense.null import NullDefense
from kalkan.defense.verdict import ALLOWED, Action, Verdict
from kalkan.edge.responses import VerdictWriter, error_response, write_response
from kalkan.observe.admin import AdminError
from kalkan.observe.metrics import Metrics

T0 = 1_700_000_000.0


@dataclasses.dataclass(frozen=True, slots=True)
class View:
    """A request view that cannot be written to: a defence that tried would raise."""

    path: str = "/"
    client: str = "198.51.100.7"
    client_ip: tuple[int, int] | None = None
    method: str = "GET"
    host: str = "news.example"
    query: str = ""
    scheme: str = "https"
    headers: list[tuple[bytes, bytes]] = dataclasses.field(
        default_factory=lambda: [(b"Host", b"news.example"), (b"User-Agent", b"Mozilla/5.0")])
    cookie: bytes | None = None
    user_agent: bytes | None = b"Mozilla/5.0"
    referer: bytes | None = None
    prefetched_body: bytes | None = None

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


@pytest.fixture
def defense(tmp_path: Path) -> Defense:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: no-env\n    match: {path: /.env}\n"
                      "    action: block\n")
    return Defense(DefenseConfig(policy=str(policy)), tmp_path, Metrics())


def test_an_ordinary_request_is_allowed_by_the_one_shared_verdict(defense: Defense) -> None:
    verdict = defense.check(View("/news/today"))
    assert verdict is ALLOWED
    assert verdict.action is Action.ALLOW and not verdict.has_pass and verdict.decision == ""


def test_a_block_is_the_same_immutable_object_for_every_request(defense: Defense) -> None:
    first = defense.check(View("/.env", client="203.0.113.1"))
    second = defense.check(View("/.env", client="203.0.113.2"))
    assert first is second
    assert first.action is Action.BLOCK and first.decision == "block:rule:no-env"
    assert first.status == 403 and b"blocked" in first.body
    assert (b"Cache-Control", b"no-store") in first.headers
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status = 200  # type: ignore[misc]
    assert defense.decided[("block", "rule")] == 2


def test_under_attack_a_miss_meets_a_challenge_and_a_feed_a_shared_503(
        tmp_path: Path) -> None:
    # Without behaviour scoring every client without a pass proves itself (with it, only
    # those that score bad: tests/unit/test_behaviour.py).
    defense = Defense(DefenseConfig(behaviour=False), tmp_path, Metrics())
    page = View("/news/today", client="203.0.113.9")
    checked = defense.check(page)
    assert defense.before_origin(page, checked) is ALLOWED  # peace: nothing to prove
    defense.attack.set_mode("on", T0)
    assert defense.threat_level == 2
    challenge = defense.before_origin(page, checked)
    assert challenge.action is Action.CHALLENGE and challenge.status == 403
    assert challenge.decision == "challenge:attack_mode" and b"<html" in challenge.body.lower()
    assert not any(k.lower() in (b"date", b"content-length") for k, _ in challenge.headers)
    feed = View("/feed/", client="203.0.113.9")
    busy = defense.before_origin(feed, defense.check(feed))
    assert busy.action is Action.REFUSE and busy.status == 503
    assert busy is defense.before_origin(feed, defense.check(feed))
    assert (b"Retry-After", b"120") in busy.headers


def test_the_writer_adds_framing_and_memoizes_refusals_per_second(defense: Defense) -> None:
    block = defense.check(View("/.env"))
    writer = VerdictWriter()
    data = writer.render(block, T0, True, False)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    for field in (b"Date: Tue, 14 Nov 2023 22:13:20 GMT", b"Server: kalkan",
                  b"Content-Length: %d" % len(block.body), b"X-Cache: BYPASS",
                  b"Connection: keep-alive", b"Content-Type: text/html; charset=utf-8"):
        assert field in head.split(b"\r\n")
    assert body == block.body
    assert writer.render(block, T0 + 0.5, True, False) is data      # same second: same bytes
    assert writer.render(block, T0 + 1.0, True, False) is not data  # the Date moved on
    closing = writer.render(block, T0, False, True)
    assert closing.endswith(b"Connection: close\r\n\r\n")  # HEAD: the length, no body
    assert b"Content-Length: %d" % len(block.body) in closing


def test_a_challenge_page_is_rendered_afresh_each_time() -> None:
    page = Verdict(Action.CHALLENGE, "challenge:rule:x", False, 403,
                   ((b"Content-Type", b"text/html"),), b"<p>prove it</p>")
    writer = VerdictWriter()
    one = writer.render(page, T0, True, False)
    assert one.endswith(b"\r\n\r\n<p>prove it</p>")
    assert writer.render(page, T0, True, False) is not one  # never memoized


def test_error_pages_go_through_the_same_writer() -> None:
    data = error_response(502, "The origin is down.", T0, keep_alive=True,
                          extra=[(b"Retry-After", b"5")], cache_status=b"MISS")
    head, _, body = data.partition(b"\r\n\r\n")
    assert data == write_response(502, [(b"Content-Type", b"text/html; charset=utf-8"),
                                        (b"Cache-Control", b"no-store"),
                                        (b"Retry-After", b"5")], body, T0, keep_alive=True,
                                  cache_status=b"MISS")
    assert b"X-Cache: MISS" in head and b"The origin is down." in body


def test_the_null_defense_lets_everything_through_and_says_so_to_operators() -> None:
    null = NullDefense()
    view = View("/.env")
    assert null.check(view) is ALLOWED and null.before_origin(view, ALLOWED) is ALLOWED
    assert null.threat_level == 0 and null.reload() == (True, "")
    routes = null.admin_routes()
    assert ("POST", "/decisions") in {(m, p) for m, p, _ in routes}
    with pytest.raises(AdminError) as refused:
        routes[0][2]({}, None)
    assert refused.value.status == 409


def test_the_admin_routes_change_decisions_and_save_them(defense: Defense) -> None:
    handlers = {(m, p): h for m, p, h in defense.admin_routes()}
    status, added = handlers[("POST", "/decisions")]({}, {"target": "192.0.2.0/24",
                                                          "action": "block", "ttl": 60})
    assert status == 200 and added == {"added": "192.0.2.0/24", "action": "block"}
    assert defense.decisions.path.exists()
    assert defense.check(View("/", client="192.0.2.9")).action is Action.BLOCK
    with pytest.raises(AdminError) as bad:
        handlers[("POST", "/decisions")]({}, {"target": "nonsense"})
    assert bad.value.status == 400
    status, mode = handlers[("POST", "/attack-mode")]({"mode": "on"}, None)
    assert status == 200 and mode["level_name"] == "attack"  # type: ignore[index]
