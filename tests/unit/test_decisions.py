"""Standing decisions (TTL, lookup by address / prefix / network, escalation, persistence) and the
attack-mode threat level with its hysteresis."""

from __future__ import annotations

from pathlib import Path

import pytest

from kalkan.defense.attack_mode import ATTACK, ELEVATED, PEACE, SEVERE, AttackMode, Signals
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


def test_escalation_never_softens_a_harsher_decision_that_stands() -> None:
    d = Decisions()
    d.add("192.0.2.1", "block", 120, "rule search-flood", "rule", NOW)
    made = [r for r in (d.strike("192.0.2.1", "block", NOW + i) for i in range(5))
            if r is not None]
    assert [(r.action, r.expires) for r in made] == [("block", NOW + 4 + 600.0)]
    assert d.lookup("192.0.2.1", "192.0.2.0/24", NOW + 300).action == "block"


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
    [aside] = tmp_path.glob("decisions.json.damaged-*")
    assert aside.read_text() == "{not json" and not path.exists()


@pytest.mark.parametrize("doc", [
    "[1, 2]", '{"decisions": "all"}', '{"decisions": null}', "\xff\xfe", "",
])
def test_a_damaged_decisions_file_is_moved_aside_in_one_line(
        tmp_path: Path, doc: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "decisions.json"
    path.write_bytes(doc.encode("latin-1"))
    assert Decisions(path).load(NOW) == 0
    [aside] = tmp_path.glob("decisions.json.damaged-*")
    assert aside.read_bytes() == doc.encode("latin-1")
    [line] = [r.getMessage() for r in caplog.records]
    assert "decisions.json" in line and "moved aside" in line and "\n" not in line


def test_wrong_types_in_entries_keep_the_sound_ones(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "decisions.json"
    rows = [{"target": "192.0.2.1", "action": "block", "expires": None},
            {"target": 5, "action": "block"}, "banana",
            {"target": "192.0.2.2", "action": "block", "expires": "soon"},
            {"target": "192.0.2.3", "action": ["block"]},
            {"target": "192.0.2.4", "action": "block", "created": True},
            {"target": "192.0.2.5", "action": "challenge", "expires": NOW + 60, "created": NOW}]
    import json

    path.write_text(json.dumps({"version": 1, "decisions": rows}))
    d = Decisions(path)
    assert d.load(NOW) == 2
    assert d.lookup("192.0.2.1", "192.0.2.0/24", NOW).action == "block"
    assert d.lookup("192.0.2.5", "192.0.2.0/24", NOW).action == "challenge"
    assert d.lookup("192.0.2.2", "192.0.2.0/24", NOW) is None
    [aside] = tmp_path.glob("decisions.json.damaged-*")
    assert json.loads(aside.read_text())["decisions"] == rows   # the original, for the operator
    [line] = [r.getMessage() for r in caplog.records]
    assert "5 bad of 7 entries" in line and "2 sound ones loaded" in line


def test_a_directory_in_place_of_the_decisions_file(tmp_path: Path) -> None:
    path = tmp_path / "decisions.json"
    path.mkdir()
    (path / "inside").write_text("x")
    d = Decisions(path)
    assert d.load(NOW) == 0
    [aside] = tmp_path.glob("decisions.json.damaged-*")
    assert (aside / "inside").read_text() == "x"
    d.add("192.0.2.1", "block", 60, "flood", "manual", NOW)
    d.save(NOW)                                             # the path is usable again
    assert Decisions(path).load(NOW) == 1


def test_save_leaves_no_temp_file_and_load_removes_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "decisions.json"
    d = Decisions(path)
    d.add("192.0.2.1", "block", 60, "flood", "manual", NOW)
    d.save(NOW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.json"]
    (tmp_path / ".decisions-abc123").write_text('{"decisions": [')   # a SIGKILL mid-write
    assert Decisions(path).load(NOW) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.json"]


def test_ipv4_mapped_targets_match_ipv4_readers() -> None:
    d = Decisions()
    assert d.add("::ffff:203.0.113.7", "block", 60, "m", "manual", NOW).target == "203.0.113.7"
    assert d.lookup("203.0.113.7", "203.0.113.0/24", NOW).action == "block"
    net = d.add("::ffff:198.51.100.0/120", "tarpit", 60, "m", "manual", NOW)
    assert net.target == "198.51.100.0/24"
    assert d.lookup("198.51.100.9", "198.51.100.0/24", NOW).action == "tarpit"
    assert d.add("::ffff:10.0.0.0/104", "challenge", 60, "m", "manual", NOW).target == "10.0.0.0/8"
    assert d.lookup("10.9.9.9", "10.9.9.0/24", NOW).action == "challenge"
    assert d.lookup("::ffff:10.9.9.9", "10.9.9.0/24", NOW).action == "challenge"
    assert d.delete("::FFFF:203.0.113.7")
    assert d.lookup("203.0.113.7", "203.0.113.0/24", NOW) is None
    assert d.add("2001:db8::1", "block", 60, "m", "manual", NOW).target == "2001:db8::1"


def signals(rate: float, queue: int = 0, active: int = 0) -> Signals:
    return Signals(requests=rate, gate_queue=queue, gate_active=active, gate_limit=4,
                   origin_latency=0.04, origin_errors=0.0)


def steady(mode: AttackMode, t: float, seconds: int, s: Signals) -> float:
    """Feed `seconds` seconds of the same signals after `t`; the last second's time."""
    for _ in range(seconds):
        t += 1
        mode.update(s, t)
    return t


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
    t = steady(mode, t, 61, signals(100))
    assert mode.level == ELEVATED
    t = steady(mode, t, 61, signals(100))
    assert mode.level == PEACE


def test_the_level_rises_straight_to_what_has_held_not_one_step_at_a_time() -> None:
    mode = AttackMode()
    t = steady(mode, NOW, 300, signals(100))
    t = steady(mode, t, 1, signals(400, active=4))          # 4x: elevated, for one second
    assert mode.level == PEACE
    t = steady(mode, t, 2, signals(4000, queue=40, active=4))  # then 40x, a drowning gate
    # Severe has held 1 s (raise_after) since it began: severe now, without first waiting
    # raise_after again at elevated, which it reached a second ago.
    assert mode.level == SEVERE and mode.changes == 2
    steady(mode, t, 1, signals(400, active=4))     # a calmer second changes nothing yet
    assert mode.level == SEVERE


def test_a_score_that_breaks_off_restarts_its_clock() -> None:
    mode = AttackMode()
    t = steady(mode, NOW, 300, signals(100))
    for spike in (True, False, True, False, True):   # spikes of one second, never held
        t += 1
        mode.update(signals(4000, queue=40, active=4) if spike else signals(100), t)
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


def test_a_network_decision_holds_whatever_prefix_length_the_defence_groups_by() -> None:
    """With prefix_v4: 16, a /16 decision is found by the client's own prefix and a /24 one by
    the network scan (until 2026-12-05 a /24 was filed as a client prefix and never found)."""
    table = Decisions(client_prefix_len=(16, 48))
    now = 1000.0
    table.add("10.1.2.0/24", "block", 60, "a /24", "manual", now)
    table.add("10.2.0.0/16", "challenge", 60, "a /16", "manual", now)
    table.add("2001:db8:1::/48", "block", 60, "a /48", "manual", now)
    assert table.lookup("10.1.2.3", "10.1.0.0/16", now).reason == "a /24"
    assert table.lookup("10.1.3.3", "10.1.0.0/16", now) is None
    assert table.lookup("10.2.9.9", "10.2.0.0/16", now).reason == "a /16"
    assert "10.2.0.0/16" in table.exact
    assert table.lookup("2001:db8:1::5", "2001:db8:1::/48", now).reason == "a /48"
