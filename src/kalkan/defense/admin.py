"""The operator's handles on the defence over the admin listener: standing decisions (list, add,
delete, clear) and attack mode. The app registers these routes; the edge is not involved."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kalkan.defense.attack_mode import LEVEL_NAMES, AttackMode
from kalkan.defense.decisions import DecisionError, Decisions
from kalkan.observe.admin import AdminError, Handler

Route = tuple[str, str, Handler]
_PATHS = (("GET", "/decisions"), ("POST", "/decisions"), ("DELETE", "/decisions"),
          ("POST", "/decisions/clear"), ("GET", "/attack-mode"), ("POST", "/attack-mode"))


class DefenseAdmin:
    """Handlers over the defence's decisions and attack mode; `save` persists the decisions and
    returns the problem, or None when they are on disk."""

    def __init__(self, decisions: Decisions, attack: AttackMode,
                 save: Callable[[float], str | None]) -> None:
        self.decisions = decisions
        self.attack = attack
        self.save = save

    def routes(self) -> list[Route]:
        handlers = (self.list_all, self.add, self.delete, self.clear, self.attack_mode,
                    self.attack_mode)
        return [(m, p, h) for (m, p), h in zip(_PATHS, handlers, strict=True)]

    def list_all(self, _q: dict[str, str], _b: object) -> tuple[int, object]:
        return 200, {"decisions": self.standing()}

    def standing(self) -> list[dict[str, object]]:
        """The decisions in force, as JSON-able rows."""
        now = time.time()
        return [{"target": d.target, "action": d.action, "reason": d.reason,
                 "origin": d.origin, "created": d.created,
                 "expires_in": None if d.expires == float("inf") else round(d.expires - now)}
                for d in self.decisions.all(now)]

    def threat(self) -> dict[str, object]:
        """The threat level, how it is set, and what each signal scored in the last second."""
        attack = self.attack
        return {"level": attack.level, "name": LEVEL_NAMES[attack.level], "mode": attack.mode,
                "reason": attack.reason, "baseline": round(attack.baseline, 1),
                "signals": [{"score": score, "level": LEVEL_NAMES[score], "what": what}
                            for score, what in attack.explain()]}

    def add(self, _q: dict[str, str], body: Any) -> tuple[int, object]:
        if not isinstance(body, dict) or "target" not in body:
            raise AdminError(400, 'expected JSON {"target": ADDRESS|CIDR, "action": ..., '
                                  '"ttl": seconds|null, "reason": ...}')
        try:
            ttl = body.get("ttl")
            d = self.decisions.add(str(body["target"]), str(body.get("action", "block")),
                                   None if ttl is None else float(ttl),
                                   str(body.get("reason", "")), "manual", time.time())
        except (DecisionError, ValueError, TypeError) as exc:
            raise AdminError(400, str(exc)) from None
        self._saved_or_fail(f"decision for {d.target} is in force but NOT saved: it will be "
                            "lost at restart")
        return 200, {"added": d.target, "action": d.action}

    def delete(self, query: dict[str, str], _b: object) -> tuple[int, object]:
        if "target" not in query:
            raise AdminError(400, "delete needs ?target=ADDRESS|CIDR")
        try:
            removed = self.decisions.delete(query["target"])
        except DecisionError as exc:
            raise AdminError(400, str(exc)) from None
        if removed:
            self._saved_or_fail("the decision is lifted but the removal is NOT saved: it "
                                "comes back at restart")
        return (200 if removed else 404), {"deleted": removed}

    def clear(self, _q: dict[str, str], _b: object) -> tuple[int, object]:
        n = self.decisions.clear()
        self._saved_or_fail(f"{n} decision(s) lifted but NOT saved: they come back at restart")
        return 200, {"cleared": n}

    def attack_mode(self, query: dict[str, str], _b: object) -> tuple[int, object]:
        attack = self.attack
        if "mode" in query:
            try:
                attack.set_mode(query["mode"], time.time())
            except ValueError as exc:
                raise AdminError(400, str(exc)) from None
        return 200, {"mode": attack.mode, "level": attack.level,
                     "level_name": LEVEL_NAMES[attack.level], "reason": attack.reason}

    def _saved_or_fail(self, consequence: str) -> None:
        """An operator's change answered 200 must be on disk: a failed save (full or read-only
        disk) is a 500 that says what happened, while the change stays in force in memory."""
        problem = self.save(time.time())
        if problem is not None:
            raise AdminError(500, f"{problem}; {consequence}")


def _disabled(_q: dict[str, str], _b: object) -> tuple[int, object]:
    raise AdminError(409, "the defence is disabled in this edge's config (defense.enabled)")


def disabled_routes() -> list[Route]:
    """The same routes on an edge without a defence: a clear 409, not a puzzling 404."""
    return [(m, p, _disabled) for m, p in _PATHS]
