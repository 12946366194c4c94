"""The dashboard's live view: outcomes from the metrics' counters, per-second rates, the hit
ratio, the origin and threat as given, and `kalkan top`'s frame drawn from a snapshot."""

from __future__ import annotations

import json

from kalkan.observe.live import OUTCOMES, LiveView, outcome_totals
from kalkan.observe.metrics import Metrics
from kalkan.observe.top import frame, sparkline


def _view(m: Metrics, active: int = 0) -> LiveView:
    return LiveView(m, gate=lambda: (active, 8, 3),
                    threat=lambda: {"level": 2, "name": "attack", "mode": "auto",
                                    "reason": "900 req/s is 9.0x the baseline",
                                    "signals": [{"score": 2, "level": "attack",
                                                 "what": "900 req/s is 9.0x the baseline"}]},
                    decisions=lambda: [{"target": "192.0.2.0/24", "action": "block",
                                        "reason": "flood", "expires_in": 60}],
                    site="news.test")


def test_outcomes_from_counters() -> None:
    m = Metrics()
    m.requests.update({(200, "HIT"): 70, (200, "STALE"): 5, (200, "MISS"): 10,
                       (304, "REVALIDATED"): 2, (200, "BYPASS"): 3, (403, "BYPASS"): 9,
                       (429, "BYPASS"): 4, (502, "ERROR"): 1, (400, "BYPASS"): 2})
    m.decisions.update({("challenge", "attack_mode"): 5, ("block", "rule"): 3,
                        ("tarpit", "rule"): 1, ("challenge_failed", "pow"): 7})
    t = outcome_totals(m)
    assert t == {"hit": 70, "stale": 5, "miss": 12, "pass": 3, "challenged": 5, "blocked": 4,
                 "refused": 15 - 9, "error": 1}


def test_rates_ratio_and_snapshot() -> None:
    m = Metrics()
    view = _view(m, active=6)
    assert view.sample(100.0) is None  # the first call only sets the baseline
    m.requests[(200, "HIT")] += 180
    m.requests[(200, "MISS")] += 20
    m.decisions[("block", "decision")] += 50
    m.requests[(403, "BYPASS")] += 50
    m.origin_latency.observe(0.25)
    m.origin_latency.observe(0.05)
    second = view.sample(102.0)
    assert second is not None
    assert second.rates["hit"] == 90 and second.rates["miss"] == 10
    assert second.rates["blocked"] == 25 and second.rates["refused"] == 0
    assert second.busy == 0.75 and round(second.latency_ms) == 150
    m.talkers.request("192.0.2.10", "/")
    snap = view.snapshot()
    json.dumps(snap)  # all of it JSON
    assert snap["rates"]["hit"] == 90 and snap["total_rate"] == 125
    assert snap["cache_hit_ratio"] == 0.9
    assert snap["origin"] == {"active": 6, "limit": 8, "queued": 3, "busy_share": 0.75,
                              "latency_ms": 150.0}
    assert snap["threat"]["name"] == "attack"
    assert snap["top"]["prefixes"][0]["key"] == "192.0.2.0/24"
    assert set(OUTCOMES) <= set(snap["history"]) and snap["history"]["threat"] == [2]


def test_history_is_bounded() -> None:
    m = Metrics()
    view = _view(m)
    for i in range(400):
        m.requests[(200, "HIT")] += 1
        view.sample(float(i))
    assert len(view.history) == 300
    assert view.snapshot()["rates"]["hit"] == 1.0


def test_top_frame_shows_the_snapshot() -> None:
    m = Metrics()
    view = _view(m, active=8)
    view.sample(0.0)
    m.requests[(200, "HIT")] += 1000
    view.sample(1.0)
    for _ in range(3):
        m.talkers.request("198.51.100.9", "/?s=flood")
        m.talkers.agent("FloodBot/2")
    text = frame(view.snapshot(), width=100, colour=False)
    lines = text.splitlines()
    assert lines[0] == "kalkan top news.test — threat  ATTACK  (mode auto) — 1,000 req/s"
    assert "why: 900 req/s is 9.0x the baseline" in text
    assert any(line.split()[:2] == ["hit", "1,000"] for line in lines)
    assert "origin busy 100 % (8/8, 3 waiting)" in text
    assert "198.51.100.0/24" in text and "FloodBot/2" in text and "/?s=flood" in text
    assert "192.0.2.0/24" in text and "standing decisions (1)" in text
    assert max(len(line) for line in lines) <= 100
    coloured = frame(view.snapshot(), width=100, colour=True)
    assert "\x1b[7;91m ATTACK \x1b[0m" in coloured


def test_sparkline() -> None:
    assert sparkline([0, 4, 8], 10) == " ▄█"
    assert sparkline([1] * 50, 5, 2.0) == "▄▄▄▄▄"
