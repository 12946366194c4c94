"""Under-attack mode: global signals → a threat level 0–3, raised fast, lowered with hysteresis.

Signals, sampled once a second: the request rate against a slowly learned baseline, origin gate
saturation (queue depth, slots in use), origin latency, the share of origin errors, and the
requests of clients whose behaviour scores bad (defense/score.py). Each signal scores 0–3.
With behaviour scoring on, volume and origin strain alone raise the level to `elevated` at
most (the cache stretches its grace): a flash crowd of readers is large, not hostile. Bad
behaviour raises it further, and once it has, the origin's strain counts in full. The level
rises as soon as a score has held for `raise_after` seconds and falls one step at a time only
after the scores have stayed lower for `lower_after` seconds. An operator override
(`kalkan attack-mode on|off|auto`) pins the level. Every change is logged and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("kalkan.attack_mode")

# (Final: compiled code, here and where they are imported, uses the constants.)
PEACE: Final = 0
ELEVATED: Final = 1
ATTACK: Final = 2
SEVERE: Final = 3
LEVEL_NAMES = ("peace", "elevated", "attack", "severe")


@dataclass(frozen=True, slots=True)
class Signals:
    """One second of what the edge saw."""

    requests: float          # requests in the last second
    gate_queue: int          # requests waiting for an origin slot
    gate_active: int         # origin requests in flight
    gate_limit: int          # origin.max_concurrency
    origin_latency: float    # mean seconds to origin headers in the last second (0 if none)
    origin_errors: float     # share of origin requests that failed in the last second
    bad_requests: float = 0.0   # of `requests`, those from clients whose behaviour scores bad
    behaviour: bool = False     # behaviour scoring is on (else volume may raise any level)


@dataclass(slots=True)
class AttackModeConfig:
    # Request rate, as a multiple of the learned baseline, for levels 1, 2, 3.
    rate_factors: tuple[float, float, float] = (3.0, 8.0, 30.0)
    min_rate: float = 50.0          # below this many req/s, rate alone never raises the level
    latency_levels: tuple[float, float, float] = (0.5, 1.5, 5.0)   # seconds
    error_levels: tuple[float, float, float] = (0.05, 0.2, 0.5)    # share of origin requests
    raise_after: float = 1.0        # seconds a higher score must hold before the level rises
    lower_after: float = 60.0       # seconds of lower scores before the level drops one step
    baseline_halflife: float = 1800.0  # seconds; the baseline learns only while at peace
    # Requests a second from bad-scored clients for levels 1, 2, 3, and the share of all
    # requests they must also be for levels 2 and 3 (a few misjudged readers in a crowd of
    # thousands are not an attack).
    bad_levels: tuple[float, float, float] = (5.0, 20.0, 200.0)
    bad_shares: tuple[float, float] = (0.05, 0.25)


def _score(value: float, levels: tuple[float, float, float]) -> int:
    score = 0
    for i, threshold in enumerate(levels, start=1):
        if value >= threshold:
            score = i
    return score


class AttackMode:
    """The threat level and the reasons for it."""

    def __init__(self, config: AttackModeConfig | None = None) -> None:
        self.config = config or AttackModeConfig()
        self.level = PEACE        # what the edge acts on: max(own_level, peer_level) in auto
        self.own_level = PEACE    # what this edge's own signals say
        self.own_reason = "quiet"
        self.peer_level = PEACE   # the highest level other edges of the cluster report
        self.peer_reason = ""
        self.override: int | None = None
        self.baseline = 0.0
        self.reason = "quiet"
        self.changes = 0
        self._above_since: dict[int, float | None] = dict.fromkeys((ELEVATED, ATTACK, SEVERE))
        self._low_since: float | None = None
        self.signals: Signals | None = None  # the last second's, kept to explain the level

    @property
    def mode(self) -> str:
        return "auto" if self.override is None else ("on" if self.override else "off")

    def set_mode(self, mode: str, now: float) -> None:
        """`on` pins level ATTACK, `off` pins PEACE, `auto` follows the signals again."""
        if mode not in ("on", "off", "auto"):
            raise ValueError(f"attack mode must be on, off or auto, not {mode!r}")
        self.override = {"on": ATTACK, "off": PEACE, "auto": None}[mode]
        if self.override is not None:
            self._set(self.override, f"operator set attack mode {mode}")
        else:
            self._settle()

    def set_peer_level(self, level: int, why: str) -> None:
        """Another edge of the cluster is at `level` (kalkan.cluster): in auto mode this edge
        goes at least as high, since an attacker blocked there moves here next. A pinned mode
        (the operator's) stays pinned."""
        self.peer_level, self.peer_reason = level, why
        self._settle()

    def scores(self, s: Signals) -> tuple[int, str]:
        return max(self.candidates(s), key=lambda x: x[0])

    def _behaviour(self, s: Signals) -> tuple[int, str]:
        c = self.config
        share = s.bad_requests / s.requests if s.requests > 0 else 0.0
        score = _score(s.bad_requests, c.bad_levels)
        if score >= ATTACK and share < c.bad_shares[0]:
            score = ELEVATED
        elif score >= SEVERE and share < c.bad_shares[1]:
            score = ATTACK
        return score, f"{s.bad_requests:.0f} req/s ({share:.0%}) from clients behaving like bots"

    def explain(self) -> list[tuple[int, str]]:
        """What each signal scored in the last second (score 0–3, what it saw), highest first:
        the why behind the level, for the dashboard."""
        if self.signals is None:
            return []
        return sorted(self.candidates(self.signals), key=lambda x: -x[0])

    def candidates(self, s: Signals) -> list[tuple[int, str]]:
        """Each signal's score and a sentence naming what it saw."""
        c = self.config
        candidates: list[tuple[int, str]] = []
        if self.baseline > 0 and s.requests >= c.min_rate:
            ratio = s.requests / self.baseline
            candidates.append((_score(ratio, c.rate_factors),
                               f"{s.requests:.0f} req/s is {ratio:.1f}x the baseline"))
        elif self.baseline == 0 and s.requests >= c.min_rate * c.rate_factors[1]:
            candidates.append((ATTACK, f"{s.requests:.0f} req/s with no baseline learned yet"))
        if s.gate_limit:
            saturation = 0
            if s.gate_active >= s.gate_limit:
                saturation = ELEVATED
                if s.gate_queue >= s.gate_limit:
                    saturation = ATTACK
                if s.gate_queue >= 8 * s.gate_limit:
                    saturation = SEVERE
            candidates.append((saturation, f"origin gate {s.gate_active}/{s.gate_limit} busy, "
                                           f"{s.gate_queue} waiting"))
        candidates.append((_score(s.origin_latency, c.latency_levels),
                           f"origin answers in {s.origin_latency * 1000:.0f} ms"))
        candidates.append((_score(s.origin_errors, c.error_levels),
                           f"{s.origin_errors:.0%} of origin requests fail"))
        if s.behaviour:
            behaviour = self._behaviour(s)
            if behaviour[0] == PEACE:
                # Volume without bad behaviour: a crowd, not an attack.
                candidates = [(min(score, ELEVATED), why) for score, why in candidates]
            candidates.append(behaviour)
        return candidates

    def update(self, s: Signals, now: float) -> int:
        """Feed one second of signals; returns the (possibly new) level."""
        self.signals = s
        score, why = self.scores(s)
        c = self.config
        if self.level == PEACE and score == PEACE and s.requests > 0:
            # Learn what a normal second looks like, only in peace (an attack must not teach it).
            alpha = 1.0 - 0.5 ** (1.0 / c.baseline_halflife)
            self.baseline = s.requests if self.baseline == 0 else \
                self.baseline + alpha * (s.requests - self.baseline)
        if self.override is not None:
            return self.level
        # Each level above has its own clock: since when the score has been at least that
        # high without a break. The level rises straight to the highest one held for
        # `raise_after` (not one step per `raise_after`: a flood that scores 1 for a second,
        # then 3, is severe after 2 s, not 4).
        above = self._above_since
        held = PEACE
        for k in (ELEVATED, ATTACK, SEVERE):
            since = above[k]
            if score < k:
                above[k] = None
                continue
            if since is None:
                since = above[k] = now
            if now - since >= c.raise_after:
                held = k
        own = self.own_level
        if held > own:
            self._low_since = None
            self._own(held, why)
        elif score < own:
            if self._low_since is None:
                self._low_since = now
            elif now - self._low_since >= c.lower_after:
                self._own(own - 1, f"calmer for {c.lower_after:.0f} s: {why}")
                self._low_since = now
        else:
            self._low_since = None
        return self.level

    def _own(self, level: int, why: str) -> None:
        self.own_level, self.own_reason = level, why
        self._settle()

    def _settle(self) -> None:
        """The level acted on: this edge's own, or a higher one reported by another edge."""
        if self.override is not None:
            return
        if self.peer_level > self.own_level:
            self._set(self.peer_level, f"another edge of the cluster: {self.peer_reason}")
        else:
            self._set(self.own_level, self.own_reason)

    def _set(self, level: int, why: str) -> None:
        if level == self.level:
            return
        log.warning("threat level %s → %s: %s", LEVEL_NAMES[self.level], LEVEL_NAMES[level], why)
        self.level = level
        self.reason = why
        self.changes += 1
