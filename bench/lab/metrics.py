"""From one run's raw material (reader records, attack counters, origin and edge samples) to the
numbers the issue asks for: reader success, latency, challenges, attack requests at the origin,
origin utilization, time to mitigate, edge CPU and memory, plus per-second timelines.

Attack requests at the origin are not tagged (the origin counts paths, not clients): they are the
origin's request count minus the legitimate requests that reached it, which every legitimate
client knows from its response (no edge, or the edge's cache said MISS / BYPASS / EXPIRED).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from bench.common import percentile
from bench.lab.attacks import COUNTERS, ORIGIN_PAGE_CAPACITY
from bench.lab.readers import CACHE_CODES, KINDS, READER_KINDS, READER_LIKE_KINDS

_HIT = frozenset(CACHE_CODES.index(c) for c in ("HIT", "STALE", "UPDATING"))
_AT_ORIGIN = frozenset(CACHE_CODES.index(c) for c in ("MISS", "BYPASS", "EXPIRED",
                                                       "REVALIDATED"))
_READER = frozenset(KINDS.index(k) for k in READER_KINDS)
_READER_LIKE = frozenset(KINDS.index(k) for k in READER_LIKE_KINDS)
_FEED, _CRAWLER, _PAGE = KINDS.index("feed"), KINDS.index("crawler"), KINDS.index("page")
_PREVIEW, _APP = KINDS.index("preview"), KINDS.index("app")
UTIL_SAFE = 0.9
"""An origin more than 90% busy in a second is not safe (its queue is about to grow)."""
NORMAL_FLOOR_S = 0.25
"""Reader p95 within max(2x the peace p95, 250 ms) counts as normal for time to mitigate."""


@dataclass(frozen=True)
class Windows:
    """The phases of one run, in seconds since the lab's t0."""

    peace_s: float
    attack_s: float
    tail_s: float

    @property
    def attack_start(self) -> float:
        return self.peace_s

    @property
    def attack_end(self) -> float:
        return self.peace_s + self.attack_s

    @property
    def end(self) -> float:
        return self.peace_s + self.attack_s + self.tail_s


def _rate(ok: float, total: float) -> float | None:
    return min(1.0, ok / total) if total else None


def _ms(values: list[float], q: float) -> float | None:
    return round(percentile(values, q) * 1000.0, 1) if values else None


def reader_summary(records: list[list[float]], t0: float, lo: float, hi: float
                   ) -> dict[str, Any]:
    """Success, latency and challenges of the legitimate clients whose requests started in
    [lo, hi) seconds after t0."""
    rows = [r for r in records if lo <= r[0] - t0 < hi]
    readers = [r for r in rows if r[2] in _READER]
    ok_lat = [r[1] for r in readers if r[4]]
    cached = [r[1] for r in readers if r[4] and r[2] == _PAGE and (r[6] in _HIT or r[6] == 0)]
    sessions = {r[7] for r in readers}
    challenged = {r[7] for r in readers if r[5]}
    feeds = [r for r in rows if r[2] == _FEED]
    crawler = [r for r in rows if r[2] == _CRAWLER]
    # Everyone who reads: browsers, feed readers, feed apps, link previews (not the crawler).
    everyone = [r for r in rows if r[2] in _READER_LIKE]
    previews = [r for r in rows if r[2] == _PREVIEW]
    apps = [r for r in rows if r[2] == _APP]
    failures: dict[str, int] = defaultdict(int)
    for r in rows:
        if not r[4]:
            failures[f"{KINDS[int(r[2])]}:{int(r[3]) or 'error'}"] += 1
    return {
        "requests": len(readers),
        "success": _rate(sum(int(r[4]) for r in readers), len(readers)),
        "p50_ms": _ms(ok_lat, 50), "p95_ms": _ms(ok_lat, 95), "p99_ms": _ms(ok_lat, 99),
        "cached_pages": len(cached), "cached_page_p99_ms": _ms(cached, 99),
        "sessions": len(sessions), "sessions_challenged": len(challenged),
        "challenged_share": _rate(len(challenged), len(sessions)),
        "requests_challenged": sum(1 for r in readers if r[5]),
        "served_unchallenged": _rate(sum(1 for r in everyone if r[4] and not r[5]),
                                     len(everyone)),
        "reader_like_requests": len(everyone),
        "readers_challenged": len({r[7] for r in everyone if r[5]}),
        "nojs_challenged": sum(1 for r in readers if r[5] == 2),
        # Slow TCP handshakes (a full accept queue answers with SYN retries after 1 s, 3 s...).
        "connects_over_1s": sum(1 for r in readers if r[8] > 1.0),
        "feed_requests": len(feeds),
        "feed_success": _rate(sum(int(r[4]) for r in feeds), len(feeds)),
        "crawler_requests": len(crawler),
        "crawler_success": _rate(sum(int(r[4]) for r in crawler), len(crawler)),
        "preview_requests": len(previews),
        "preview_success": _rate(sum(int(r[4]) for r in previews), len(previews)),
        "app_requests": len(apps),
        "app_success": _rate(sum(int(r[4]) for r in apps), len(apps)),
        "app_not_modified": sum(1 for r in apps if r[3] == 304),
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1])[:8]),
    }


def _per_second_counter(samples: list[list[float]], column: int, seconds: int) -> list[float]:
    """Per-second increments of a cumulative counter sampled at irregular times."""
    values: list[float] = []
    j, last = 0, samples[0][column] if samples else 0.0
    for s in range(seconds):
        current = last
        while j < len(samples) and samples[j][0] < s + 1:
            current = samples[j][column]
            j += 1
        values.append(max(0.0, current - last))
        last = current
    return values


def analyse(target: str, windows: Windows, t0: float, records: list[list[float]],
            sessions: list[list[float]], attack: dict[str, Any], origin: list[list[float]],
            edge: list[list[float]], workers: int, offered_rate: float,
            segments: list[float] | None = None) -> dict[str, Any]:
    """Every number for one target in one scenario, and its per-second timeline.

    *segments*: the seconds into the attack at which its tactic changes (default: one tactic).
    """
    seconds = math.ceil(windows.end)
    a0, a1 = int(windows.attack_start), int(windows.attack_end)

    # -- per-second reader view
    by_second: dict[int, list[list[float]]] = defaultdict(list)
    legit_at_origin = [0.0] * seconds
    for r in records:
        s = int(r[0] - t0)
        if 0 <= s < seconds:
            if r[2] in _READER:
                by_second[s].append(r)
            if target == "origin" or r[6] in _AT_ORIGIN:
                legit_at_origin[s] += 1
    success_ts, p95_ts = [], []
    for s in range(seconds):
        rows = by_second.get(s, [])
        ok = [r[1] for r in rows if r[4]]
        success_ts.append(_rate(len(ok), len(rows)))
        p95_ts.append(_ms(ok, 95))

    # -- attack, origin, edge
    bins = {int(k): v for k, v in attack.get("bins", {}).items()}
    col = {name: i for i, name in enumerate(attack.get("counters", COUNTERS))}

    def attack_ts(name: str) -> list[int]:
        return [bins.get(s, [0] * len(col))[col[name]] for s in range(seconds)]

    sent_ts, missed_ts, open_ts = attack_ts("sent"), attack_ts("missed"), attack_ts("open")
    origin_ts = _per_second_counter(origin, 1, seconds)
    rejected_ts = [a + b for a, b in zip(_per_second_counter(origin, 4, seconds),
                                         _per_second_counter(origin, 5, seconds), strict=True)]
    util_ts: list[float | None] = []
    for s in range(seconds):
        busy = [min(workers, max(0.0, x[2] - x[3])) / workers for x in origin if s <= x[0] < s + 1]
        util_ts.append(sum(busy) / len(busy) if busy else None)
    attack_origin_ts = [max(0.0, o - legit) for o, legit in
                        zip(origin_ts, legit_at_origin, strict=True)]
    cpu_ts = [0.0] * seconds
    rss_max = 0.0
    level_ts: list[float | None] = [None] * seconds
    for prev, cur in itertools.pairwise(edge):
        s = int(cur[0])
        if 0 <= s < seconds and cur[0] > prev[0]:
            cpu_ts[s] = 100.0 * (cur[1] - prev[1]) / (cur[0] - prev[0])
            level_ts[s] = None if math.isnan(cur[3]) else cur[3]
    for row in edge:
        if windows.attack_start <= row[0] < windows.end:
            rss_max = max(rss_max, row[2])

    # -- time to mitigate: from attack start until every later attack second is fine
    peace = reader_summary(records, t0, 0.0, windows.attack_start)
    normal_s = max(2 * (peace["p95_ms"] or 0.0) / 1000.0, NORMAL_FLOOR_S)
    good: list[bool] = []
    for s in range(a0, min(a1, seconds)):
        util = util_ts[s]
        origin_safe = (util is None or util < UTIL_SAFE) and rejected_ts[s] == 0
        succ, p95 = success_ts[s], p95_ts[s]
        readers_ok = (succ is None or succ >= 0.99) and (p95 is None or p95 / 1000.0 <= normal_s)
        good.append(origin_safe and readers_ok)
    # A scenario whose tactic changes (the mixed wave) is mitigated once per tactic: each
    # segment gets its own time to mitigate, and the scenario's is the worst of them.
    bounds = sorted({int(b) for b in (segments or [0.0]) if 0 <= b < len(good)} | {len(good)})
    ttms: list[float | None] = []
    fine_from: list[int] = []    # attack seconds counted as "after mitigation"
    for lo, hi in itertools.pairwise(bounds):
        bad = [i for i in range(lo, hi) if not good[i]]
        if not bad:
            ttms.append(0.0)
            fine_from += range(lo, hi)
        elif bad[-1] == hi - 1:
            ttms.append(None)                # still not safe when the tactic ended
        else:
            ttms.append(float(bad[-1] + 1 - lo))
            fine_from += range(bad[-1] + 1, hi)
    ttm = None if not ttms or None in ttms else max(t for t in ttms if t is not None)

    attack_sent = sum(sent_ts[a0:a1])
    # Differences of sums, not sums of per-second differences: a legitimate request counted in
    # the second it started may reach the origin in the next one.
    at_origin = max(0.0, sum(origin_ts[a0:seconds]) - sum(legit_at_origin[a0:seconds]))
    sent_after = sum(sent_ts[a0 + i] for i in fine_from)
    at_origin_after = max(0.0, sum(origin_ts[a0 + i] - legit_at_origin[a0 + i]
                                   for i in fine_from)) if fine_from else None
    busy = [u for u in util_ts[a0:a1] if u is not None]
    cpu_attack = cpu_ts[a0:a1]
    # Over the whole run: bots that farm passes do it before the attack window.
    outcome = {name: sum(attack_ts(name)) for name in col if name not in ("open", "missed")}
    return {
        "target": target,
        "peace": peace,
        "attack": reader_summary(records, t0, windows.attack_start, windows.attack_end),
        "recovery": reader_summary(records, t0, windows.attack_end, windows.end),
        "attack_traffic": {
            "offered_per_s": offered_rate,
            "achieved_per_s": round(attack_sent / max(windows.attack_s, 1e-9), 1),
            "achieved_x_capacity": round(attack_sent / max(windows.attack_s, 1e-9)
                                         / ORIGIN_PAGE_CAPACITY, 1),
            "missed_slots": sum(missed_ts[a0:a1]),
            "slow_connections_max": max(open_ts[a0:a1], default=0),
            "outcome": outcome,
        },
        "origin": {
            "requests_during_attack": round(sum(origin_ts[a0:seconds])),
            "attack_requests": round(at_origin),
            "attack_share_reaching": _rate(round(at_origin), attack_sent),
            "attack_requests_after_mitigation": None if at_origin_after is None
            else round(at_origin_after),
            "attack_share_after_mitigation": None if at_origin_after is None
            else _rate(round(at_origin_after), sent_after),
            "utilization_mean": round(sum(busy) / len(busy), 3) if busy else None,
            "utilization_max": round(max(busy), 3) if busy else None,
            "rejected_503_504": round(sum(rejected_ts[a0:seconds])),
        },
        "time_to_mitigate_s": ttm,
        "time_to_mitigate_per_tactic_s": ttms,
        "normal_p95_ms": round(normal_s * 1000.0, 1),
        "seconds_ok_share": _rate(sum(good), len(good)),
        "edge": {
            "process": "origin (no edge)" if target == "origin" else target,
            "cpu_mean_pct": round(sum(cpu_attack) / len(cpu_attack), 1) if cpu_attack else None,
            "cpu_max_pct": round(max(cpu_attack), 1) if cpu_attack else None,
            "rss_max_mib": round(rss_max / 1024.0, 1),
            "threat_level_max": max((x for x in level_ts if x is not None), default=None),
        },
        "sessions_started": len(sessions),
        "timeline": {
            "second": list(range(seconds)),
            "reader_success": success_ts,
            "reader_p95_ms": p95_ts,
            "attack_sent": sent_ts,
            "slow_open": open_ts,
            "origin_requests": origin_ts,
            "attack_at_origin": attack_origin_ts,
            "origin_utilization": util_ts,
            "origin_rejected": rejected_ts,
            "edge_cpu_pct": cpu_ts,
            "threat_level": level_ts,
        },
    }
