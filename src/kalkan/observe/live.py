"""The dashboard's live view: once a second, the metrics' counters are turned into per-second
rates by outcome and kept for a few minutes; a snapshot adds the origin, the threat level and why,
the top talkers and the standing decisions (GET /api/live, `kalkan top`)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kalkan.observe.metrics import Metrics

# What became of a request, as the dashboard names it (docs/dashboard.md says what each holds).
OUTCOMES = ("hit", "stale", "miss", "pass", "challenged", "blocked", "refused", "error")
HISTORY = 300  # seconds of per-second samples kept for the sparklines
_RATIO_WINDOW = 10  # seconds the cache hit ratio is taken over
_BLOCKING = frozenset({"block", "tarpit", "drop"})


def outcome_totals(m: Metrics) -> dict[str, int]:
    """Requests so far by outcome, from the metrics' counters.

    The cache status says hit, stale, miss (MISS and REVALIDATED: the origin was asked) and pass
    (not cacheable, answered by the origin). Answers refused before the cache are split by the
    defence's decisions (challenged, blocked); the rest of the 4xx/5xx answered without the cache
    (the defence's 429/503, malformed requests, repeats of a refusal on one connection) are
    "refused". "error": the origin failed and no stale copy was there.
    """
    t = dict.fromkeys(OUTCOMES, 0)
    refused_answers = 0
    for (status, cache), n in m.request_counts().items():
        if cache == "HIT":
            t["hit"] += n
        elif cache == "STALE":
            t["stale"] += n
        elif cache in ("MISS", "REVALIDATED"):
            t["miss"] += n
        elif cache == "ERROR":
            t["error"] += n
        elif status < 400:
            t["pass"] += n
        else:
            refused_answers += n
    for (action, _why), n in m.decisions.items():
        if action == "challenge":
            t["challenged"] += n
        elif action in _BLOCKING:
            t["blocked"] += n
    t["refused"] = max(0, refused_answers - t["challenged"] - t["blocked"])
    return t


@dataclass(slots=True)
class Second:
    """One second of what the edge did."""

    time: float
    rates: dict[str, float]       # requests per second by outcome
    busy: float                   # origin slots in use / limit, 0..1
    latency_ms: float             # mean time to origin headers (0 when nothing reached it)
    threat: int                   # threat level 0..3


class LiveView:
    """Samples the metrics once a second (`sample`) and answers snapshots (`snapshot`).

    `gate` returns the origin gate's (in flight, limit, waiting); `threat` a JSON-able dict with
    at least level and name; `decisions` the standing decisions as JSON-able rows.
    """

    def __init__(self, metrics: Metrics, *, gate: Callable[[], tuple[int, int, int]],
                 threat: Callable[[], dict[str, Any]],
                 decisions: Callable[[], list[dict[str, Any]]], site: str = "") -> None:
        self.metrics = metrics
        self.gate = gate
        self.threat = threat
        self.decisions = decisions
        self.site = site
        self.history: deque[Second] = deque(maxlen=HISTORY)
        self.started = time.time()
        self._last: tuple[float, dict[str, int], int, float] | None = None

    def sample(self, now: float | None = None) -> Second | None:
        """Called about once a second: the rates since the last call, kept in the history."""
        now = time.time() if now is None else now
        totals = outcome_totals(self.metrics)
        lat = self.metrics.origin_latency
        last = self._last
        self._last = (now, totals, lat.count, lat.total)
        self.metrics.talkers.age(now - last[0] if last else 1.0)
        if last is None:
            return None
        elapsed = max(now - last[0], 1e-3)
        rates = {k: max(0, totals[k] - last[1].get(k, 0)) / elapsed for k in OUTCOMES}
        fetched = lat.count - last[2]
        latency = (lat.total - last[3]) / fetched * 1000.0 if fetched > 0 else 0.0
        active, limit, _queued = self.gate()
        second = Second(now, rates, active / limit if limit else 0.0, latency,
                        int(self.threat().get("level", 0)))
        self.history.append(second)
        return second

    def snapshot(self) -> dict[str, Any]:
        history = list(self.history)
        now_rates = history[-1].rates if history else dict.fromkeys(OUTCOMES, 0.0)
        recent = history[-_RATIO_WINDOW:]
        served = sum(s.rates["hit"] + s.rates["stale"] for s in recent)
        asked = served + sum(s.rates["miss"] for s in recent)
        active, limit, queued = self.gate()
        fetched = [s.latency_ms for s in recent if s.latency_ms > 0]
        return {
            "time": round(time.time(), 3),
            "site": self.site,
            "uptime": round(time.time() - self.started),
            "rates": {k: round(v, 1) for k, v in now_rates.items()},
            "total_rate": round(sum(now_rates.values()), 1),
            "totals": outcome_totals(self.metrics),
            "cache_hit_ratio": round(served / asked, 4) if asked else None,
            "origin": {"active": active, "limit": limit, "queued": queued,
                       "busy_share": round(active / limit, 3) if limit else 0.0,
                       "latency_ms": round(sum(fetched) / len(fetched), 1) if fetched else None},
            "threat": self.threat(),
            "top": self.metrics.talkers.snapshot(8),
            "decisions": self.decisions(),
            "history": {
                "time": [round(s.time) for s in history],
                **{k: [round(s.rates[k], 1) for s in history] for k in OUTCOMES},
                "busy": [round(s.busy, 3) for s in history],
                "latency_ms": [round(s.latency_ms, 1) for s in history],
                "threat": [s.threat for s in history],
            },
        }
