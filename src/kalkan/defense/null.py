"""The defence an edge runs with `defense.enabled: false`: the same interface as `Defense`,
deciding nothing, so the request path has no "is there a defence" branches."""

from __future__ import annotations

from kalkan.defense.admin import Route, disabled_routes
from kalkan.defense.verdict import ALLOWED, KNOWN, Action, RequestView, Verdict
from kalkan.pages import LOGO_PATH, Pages


class NullDefense:
    """Lets every request through; tracks, counts and persists nothing. It still serves the
    site's logo (the error pages show it), as the defence's endpoint would."""

    threat_level = 0   # never under attack: the cache keeps its configured grace

    def __init__(self, pages: Pages | None = None) -> None:
        self.pages = pages

    def start(self) -> None:
        pass

    def check(self, view: RequestView) -> Verdict:
        if view.path == LOGO_PATH and self.pages is not None and self.pages.logo is not None:
            logo = self.pages.logo
            return Verdict(Action.RESPOND, "logo", False, 200, logo.headers, logo.data)
        return ALLOWED

    def before_origin(self, _view: RequestView, _checked: Verdict) -> Verdict:
        return ALLOWED

    def origin_standing(self, _view: RequestView, _checked: Verdict) -> int:
        return KNOWN   # nobody is judged: every client may use every origin slot

    def count(self, _view: RequestView, _n: int) -> None:
        pass

    def answered(self, _view: RequestView, _status: int, _origin: bool) -> None:
        pass

    def tick(self, now: float, gate_active: int, gate_queue: int, gate_limit: int,
             origin_count: int, origin_seconds: float, origin_errors: int) -> None:
        pass

    def reload(self) -> tuple[bool, str]:
        return True, ""

    def threat_report(self) -> dict[str, object]:
        return {"level": 0, "name": "peace", "mode": "off", "reason": "the defence is disabled "
                "in this edge's config (defense.enabled)", "signals": []}

    def standing(self) -> list[dict[str, object]]:
        return []

    def loudest(self, _now: float, _n: int = 5) -> list[dict[str, str]]:
        return []

    def admin_routes(self) -> list[Route]:
        return disabled_routes()

    def close(self) -> None:
        pass
