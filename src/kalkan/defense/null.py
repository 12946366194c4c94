"""The defence an edge runs with `defense.enabled: false`: the same interface as `Defense`,
deciding nothing, so the request path has no "is there a defence" branches."""

from __future__ import annotations

from kalkan.defense.admin import Route, disabled_routes
from kalkan.defense.verdict import ALLOWED, RequestView, Verdict


class NullDefense:
    """Lets every request through; tracks, counts and persists nothing."""

    threat_level = 0   # never under attack: the cache keeps its configured grace

    def start(self) -> None:
        pass

    def check(self, _view: RequestView) -> Verdict:
        return ALLOWED

    def before_origin(self, _view: RequestView, _checked: Verdict) -> Verdict:
        return ALLOWED

    def count(self, _view: RequestView, _n: int) -> None:
        pass

    def tick(self, now: float, gate_active: int, gate_queue: int, gate_limit: int,
             origin_count: int, origin_seconds: float, origin_errors: int) -> None:
        pass

    def reload(self) -> tuple[bool, str]:
        return True, ""

    def admin_routes(self) -> list[Route]:
        return disabled_routes()

    def close(self) -> None:
        pass
