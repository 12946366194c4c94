"""The one place a request's outcome is recorded: every answer (hit, replay, refusal, slow path,
bad request) is counted in the metrics and written to the access log here, with the reason a
response was a miss or was not stored, so "why is the front page a MISS" is in the log."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from kalkan.observe.access_log import AccessLog
from kalkan.observe.metrics import Metrics

if TYPE_CHECKING:
    from kalkan.edge.request import Request

# A Final name: compiled code calls it from a C static, with no lookup per answer.
_monotonic: Final = time.monotonic


class Recorder:
    """Feeds the metrics and the access log from one call per answered request."""

    __slots__ = ("metrics", "log", "requests", "talkers", "_every", "_unsampled", "_hits")

    def __init__(self, metrics: Metrics, access_log: AccessLog) -> None:
        self.metrics = metrics
        self.log = access_log
        self.requests = metrics.requests
        self.talkers = metrics.talkers
        self._every = self.talkers.every  # kept here: a native int for the compiled check
        self._unsampled = 0  # answers since the last one the top-talkers sketch was fed
        self._hits = 0  # 200 HITs not yet in `requests` (see Metrics.fold_requests)
        metrics.fold_requests = self.fold

    def fold(self) -> None:
        """Add the 200 HITs counted apart to the metrics' counts by status and cache."""
        if self._hits:
            self.requests[(200, "HIT")] += self._hits
            self._hits = 0

    def _count(self, status: int, cache: str) -> None:
        if status == 200 and cache == "HIT":
            self._hits += 1  # nearly every answer under load
        else:
            self.requests[(status, cache)] += 1

    def answer(self, now: float, req: Request, status: int, size: int, cache: str,
               origin_ms: float | None, decision: str, reason: str = "") -> None:
        """One answered request. `reason` says why it was a miss, or why the response was not
        stored (cache_flow's reasons; kalkan_cache_not_stored_total counts the latter)."""
        self._count(status, cache)
        if self._sample_due():
            self.talkers.request(req.client, req.path)
        log = self.log
        if log.enabled:
            started = req.started
            total = (_monotonic() - started) * 1000.0 if started else 0.0
            log.write(now, req.client, req.method, req.host, req.path, req.query, status, size,
                      cache, origin_ms, total, decision, reason, req.user_agent, req.referer)

    def replayed(self, now: float, client: str, path: str, fragment: str, agent: str,
                 status: int, size: int, cache: str, total_ms: float, decision: str) -> None:
        """A request answered from the replay memo: its log parts were formatted once."""
        self._count(status, cache)
        if self._sample_due():
            self.talkers.request(client, path)
        if self.log.enabled:
            self.log.write_fragment(now, client, fragment, status, size, cache, None, total_ms,
                                    decision, "", agent)

    def refused(self, now: float, client: str, status: int, detail: str) -> None:
        """A request the connection would not interpret (bad framing, limits, timeouts)."""
        self.requests[(status, "BYPASS")] += 1
        if self.log.enabled:
            self.log.write(now, client, "-", "-", "-", "", status, 0, "BYPASS", None, 0.0,
                           f"refused: {detail}")

    def _sample_due(self) -> bool:
        """Is this answer the one in `every` that feeds the top-talkers sketch?"""
        self._unsampled += 1
        if self._unsampled < self._every:
            return False
        self._unsampled = self.talkers.restart()
        return True
