"""The cluster's shared state without Redis: what a local change puts in the outbox, and how
records from other edges merge (last writer wins, removals as tombstones, expiry silent)."""

from __future__ import annotations

import math
import time

from kalkan.cluster.state import THREAT_FRESH, ClusterState
from kalkan.defense.attack_mode import ATTACK, ELEVATED, PEACE, SEVERE, AttackMode
from kalkan.defense.decisions import Decisions


def edge(name: str) -> ClusterState:
    return ClusterState(name, Decisions(), AttackMode())


def relay(src: ClusterState, *dst: ClusterState) -> None:
    """What the Redis link does: the sender's outbox to every other edge."""
    records, events = src.take()
    for d in dst:
        d.apply(records + events, time.time())


def test_a_decision_made_on_one_edge_stands_on_the_others() -> None:
    a, b, c = edge("a"), edge("b"), edge("c")
    now = time.time()
    a.decisions.add("203.0.113.7", "block", 600, "search flood", "rule", now)
    relay(a, b, c)
    for other in (b, c):
        d = other.decisions.lookup("203.0.113.7", "203.0.113.0/24", now)
        assert d is not None and d.action == "block" and d.origin == "rule"
        assert d.expires == a.decisions.lookup("203.0.113.7", "203.0.113.0/24", now).expires
        assert not other.outbox          # applying a peer's change is not re-sent
    assert b.applied == 1


def test_the_newer_change_wins_whatever_the_order_of_arrival() -> None:
    a, b = edge("a"), edge("b")
    now = time.time()
    a.decisions.add("198.51.100.1", "challenge", 600, "older", "rule", now - 10)
    old, _ = a.take()
    b.decisions.add("198.51.100.1", "block", 600, "newer", "manual", now)
    b.apply(old, now)                  # a's older word arrives late: b keeps its own
    assert b.decisions.lookup("198.51.100.1", "198.51.100.0/24", now).action == "block"
    new, _ = b.take()
    a.apply(new, now)                  # b's newer word replaces a's
    assert a.decisions.lookup("198.51.100.1", "198.51.100.0/24", now).reason == "newer"


def test_a_removal_travels_and_is_not_undone_by_an_older_add() -> None:
    a, b = edge("a"), edge("b")
    now = time.time()
    a.decisions.add("192.0.2.9", "block", None, "manual block", "manual", now - 5)
    stale_add, _ = a.take()
    b.apply(stale_add, now)
    b.decisions.delete("192.0.2.9")
    removal, _ = b.take()
    assert removal[0]["t"] == "removed"
    a.apply(removal, now)
    assert a.decisions.lookup("192.0.2.9", "192.0.2.0/24", now) is None
    b.apply(stale_add, now)            # replayed (a resync): the tombstone is newer
    assert b.decisions.lookup("192.0.2.9", "192.0.2.0/24", now) is None


def test_a_decision_running_out_sends_nothing() -> None:
    a = edge("a")
    now = time.time()
    a.decisions.add("192.0.2.10", "challenge", 0.01, "short", "rule", now - 1)
    a.take()
    assert a.decisions.lookup("192.0.2.10", "192.0.2.0/24", now) is None   # expired here
    assert not a.outbox and not a.tombstones


def test_a_failed_send_is_kept_without_losing_a_newer_change() -> None:
    a = edge("a")
    now = time.time()
    a.decisions.add("192.0.2.11", "challenge", 600, "first", "rule", now - 1)
    records, events = a.take()
    a.decisions.add("192.0.2.11", "block", 600, "second", "rule", now)
    a.requeue(records, events)
    again, _ = a.take()
    assert [r["reason"] for r in again] == ["second"]


def test_the_threat_level_follows_the_highest_fresh_peer() -> None:
    a, b = edge("a"), edge("b")
    now = time.time()
    b.apply([{"t": "threat", "level": SEVERE, "reason": "flood", "at": now, "edge": "x"},
              {"t": "threat", "level": ELEVATED, "reason": "busy", "at": now, "edge": "y"}],
             now)
    assert b.attack.level == SEVERE and b.attack.own_level == PEACE
    assert "x: flood" in b.attack.reason
    assert b.threat_record(now)["level"] == PEACE   # never echoes what it took from others
    b.tick(now + THREAT_FRESH + 1)                   # x and y went quiet
    assert b.attack.level == PEACE
    a.attack.set_mode("on", now)                     # an operator's pinned mode is shared…
    assert a.threat_record(now)["level"] == ATTACK
    a.apply([{"t": "threat", "level": SEVERE, "reason": "flood", "at": now, "edge": "x"}], now)
    assert a.attack.level == ATTACK                  # …and not overruled by a peer


def test_purges_travel_and_bad_records_are_ignored() -> None:
    purged: list[str | None] = []
    b = ClusterState("b", Decisions(), AttackMode(), purge=purged.append)
    now = time.time()
    b.apply([{"t": "purge", "url": "http://news.example/", "edge": "a"},
             {"t": "decision", "target": "not an address", "action": "block", "reason": "",
              "origin": "rule", "created": now, "expires": None, "at": now, "edge": "a"},
             {"t": "decision", "target": "192.0.2.12", "action": "nuke", "reason": "",
              "origin": "rule", "created": now, "expires": None, "at": now, "edge": "a"},
             {"t": "what"}, {"edge": "a"}], now)
    assert purged == ["http://news.example/"]
    assert len(b.decisions) == 0


def test_a_resync_hands_over_what_this_edge_decided_while_cut_off() -> None:
    a = edge("a")
    now = time.time()
    a.decisions.add("192.0.2.13", "block", 3600, "while Redis was away", "rule", now)
    a.decisions.add("192.0.2.14", "block", None, "removed later", "manual", now)
    a.decisions.delete("192.0.2.14")
    rows = {r["target"]: r for r in a.all_records(now)}
    assert rows["192.0.2.13"]["t"] == "decision" and rows["192.0.2.13"]["expires"] > now
    assert rows["192.0.2.14"]["t"] == "removed"
    unlimited = edge("b")
    unlimited.apply([{**rows["192.0.2.13"], "expires": None}], now)
    assert unlimited.decisions.lookup("192.0.2.13", "192.0.2.0/24", now).expires == math.inf


def test_busy_clients_counts_go_to_the_others_meters() -> None:
    credited: list[tuple[list[tuple[str, str, int]], float]] = []

    def credit(rows: list[tuple[str, str, int]], now: float) -> int:
        credited.append((rows, now))
        return len(rows)

    a = ClusterState("a", Decisions(), AttackMode(),
                     counts=lambda: [("192.0.2.20", "search", 12)])
    b = ClusterState("b", Decisions(), AttackMode(), credit=credit)
    now = time.time()
    record = a.hits_record(now)
    assert record is not None and record["rows"] == [["192.0.2.20", "search", 12]]
    b.apply([record], now)
    assert credited == [([("192.0.2.20", "search", 12)], now)] and b.credited == 1
    assert ClusterState("c", Decisions(), AttackMode(), counts=list).hits_record(now) is None
