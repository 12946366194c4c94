"""Standing decisions (TTL, lookup by address / prefix / network, escalation, persistence) and the
attack-mode threat level with its hysteresis."""

from __future__ import annotations

from pathlib import Path

import pytest

from kalkan.defense.attack_mode import ATTACK, ELEVATED, PEACE, AttackMode, Signals
from kalkan.defense.decisions import DecisionError, Decisions

NOW = 1_800_000_000.0


def test_address_prefix_and_network_lookup_with_ttl() -> None:
    d = Decisions()
    d.add("203.0.113.7", "block", 60, "flood", "manual", NOW)
    d.add("198.51.100.0/24", "challenge", 60, "noisy prefix", "rule", NOW)
    d.add("10.0.0.0/8", "tarpit", None, "lab", "manual", NOW)
    assert d.lookup("203.0.113.7", "203.0.113.0/24", NOW).action == "block"
    assert d.lookup("203.0.113.8", "203.0.113.0/24", NOW) is None
    assert d.lookup("198.51.100.9", "198.51.100.0/24", NOW).action == "challenge"
    assert d.lookup("10.1.2.3", "10.1.2.0/24", NOW).action == "tarpit"
    assert d.lookup("203.0.113.7", "203.0.113.0/24", NOW + 61) is None  # expired
    assert [x.target for x in d.all(NOW + 61)] == ["10.0.0.0/8"]


def test_harshest_decision_wins_and_ipv6_prefixes() -> None:
    d = Decisions()
    d.add("2001:db8:1:2::/64", "block", 60, "v6 prefix", "manual", NOW)
    d.add("2001:db8:1:2::5", "challenge", 60, "v6 addr", "manual", NOW)
    got = d.lookup("2001:db8:1:2::5", "2001:db8:1:2::/64", NOW)
    assert got is not None and got.action == "block"


@pytest.mark.parametrize(("target", "action", "ttl"), [
    ("not-an-ip", "block", 60), ("1.2.3.4", "explode", 60), ("1.2.3.4", "block", -1)])
def test_bad_decisions_are_refused_with_a_reason(target: str, action: str, ttl: float) -> None:
    with pytest.raises(DecisionError):
        Decisions().add(target, action, ttl, "", "manual", NOW)


def test_escalation_after_repeated_strikes() -> None:
    d = Decisions()
    results = [d.strike("192.0.2.1", "failed challenge", NOW + i) for i in range(20)]
    made = [r for r in results if r is not None]
    assert [r.action for r in made] == ["challenge", "block", "drop"]
    assert d.lookup("192.0.2.1", "192.0.2.0/24", NOW + 21).action == "drop"
    assert made[-1].origin == "escalation"


def test_decisions_survive_a_restart_and_a_damaged_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "decisions.json"
    d = Decisions(path)
    d.add("192.0.2.1", "block", 3600, "flood", "manual", NOW)
    d.add("192.0.2.0/24", "challenge", None, "forever", "manual", NOW)
    d.save(NOW)
    again = Decisions(path)
    assert again.load(NOW + 10) == 2
    assert again.lookup("192.0.2.1", "192.0.2.0/24", NOW + 10).action == "block"
    path.write_text("{not json")
    broken = Decisions(path)
    assert broken.load(NOW) == 0
    assert (tmp_path / "decisions.damaged").read_text() == "{not json"


def signals(rate: float, queue: int = 0, active: int = 0) -> Signals:
    return Signals(requests=rate, gate_queue=queue, gate_active=active, gate_limit=4,
                   origin_latency=0.04, origin_errors=0.0)


def test_attack_mode_rises_fast_and_falls_with_hysteresis() -> None:
    mode = AttackMode()
    t = NOW
    for _ in range(300):          # a quiet evening teaches the baseline
        t += 1
        assert mode.update(signals(100), t) == PEACE
    for _ in range(3):            # a flood: 20x the baseline, gate saturated
        t += 1
        mode.update(signals(2000, queue=10, active=4), t)
    assert mode.level == ATTACK
    assert mode.changes == 1
    t += 1
    mode.update(signals(100), t)  # one calm second is not enough to stand down
    assert mode.level == ATTACK
    for _ in range(61):
        t += 1
        mode.update(signals(100), t)
    assert mode.level == ELEVATED
    for _ in range(61):
        t += 1
        mode.update(signals(100), t)
    assert mode.level == PEACE


def test_operator_override() -> None:
    mode = AttackMode()
    mode.set_mode("on", NOW)
    assert mode.level == ATTACK and mode.mode == "on"
    mode.update(signals(1), NOW + 1)
    assert mode.level == ATTACK
    mode.set_mode("auto", NOW + 2)
    assert mode.mode == "auto"
    with pytest.raises(ValueError):
        mode.set_mode("maybe", NOW)
