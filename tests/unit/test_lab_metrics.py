"""The traffic lab's reader metrics (bench/lab/metrics.py) on small known records: served without
a challenge counts every reader-like client (browsers, feed readers, feed apps, link previews),
readers challenged counts clients, previews and apps are also reported alone, and the origin's
busiest second is kept beside its mean."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench.lab.metrics import Windows, analyse, reader_summary  # noqa: E402
from bench.lab.readers import CACHE_CODES, KINDS  # noqa: E402

HIT, MISS = CACHE_CODES.index("HIT"), CACHE_CODES.index("MISS")


def rec(t: float, kind: str, status: int, challenge: int = 0, sid: int = 0,
        cache: int = HIT) -> list[float]:
    ok = 200 <= status < 400
    return [t, 0.01, KINDS.index(kind), status, int(ok), challenge, cache, sid, 0.0]


RECORDS = [
    rec(0.5, "page", 200, sid=1),
    rec(0.6, "asset", 200, sid=1),
    rec(0.7, "page", 200, challenge=1, sid=2),      # served, but after a challenge
    rec(0.8, "feed", 200, sid=-100),
    rec(0.9, "app", 304, sid=-200),                 # a conditional poll answered 304: served
    rec(1.0, "app", 503, sid=-201),                 # refused: not served
    rec(1.1, "preview", 403, challenge=2, sid=-1000),   # a link preview met a challenge
    rec(1.2, "crawler", 200, sid=-1),               # not a reader: not counted in served
    rec(5.0, "page", 200, sid=3),                   # outside the window
]


def test_served_without_challenge_counts_every_reader_like_client() -> None:
    s = reader_summary(RECORDS, 0.0, 0.0, 2.0)
    assert s["reader_like_requests"] == 7
    assert s["served_unchallenged"] == 4 / 7      # pages of 1, asset, feed, the 304
    assert s["readers_challenged"] == 2           # session 2 and the preview
    assert s["sessions_challenged"] == 1          # browser sessions only, as before
    assert s["preview_requests"] == 1 and s["preview_success"] == 0.0
    assert s["app_requests"] == 2 and s["app_success"] == 0.5 and s["app_not_modified"] == 1
    assert s["success"] == 1.0                    # browsers' own requests all succeeded


def test_origin_busy_keeps_its_worst_second() -> None:
    windows = Windows(1.0, 2.0, 1.0)
    # [t, requests, in_flight, queued, 503s, 504s]: 1 of 4 workers busy, then all four.
    origin = [[t / 5, 0, 1 if t < 10 else 4, 0, 0, 0] for t in range(20)]
    r = analyse("kalkan", windows, 0.0, RECORDS, [], {}, origin, [], 4, 0.0)
    assert r["origin"]["utilization_max"] == 1.0
    assert r["origin"]["utilization_mean"] == 0.625   # seconds 1 and 2: 25%, 100%
