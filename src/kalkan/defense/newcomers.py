"""Newcomers under attack: how many clients seen for the first time lately may cost the origin
before they have proven anything, all of them together, and when a wave of them begins.

A botnet that imitates readers (a page, its assets, cookies kept, human pauses, then a search)
scores like a reader on its first costly request: one request says little. What gives it away is
the crowd: during an attack, new identities keep arriving and each spends its first request on the
origin. Readers who were already reading when the wave began read on; a newcomer who arrives
during the wave proves itself once (a challenge, or the no-JavaScript wait) before its first miss.
"""

from __future__ import annotations

from math import trunc
from typing import Final

from kalkan.defense.bucket import Bucket

# A client is a newcomer for this long after it was first seen.
YOUNG: Final = 60.0
# Misses newcomers may cost the origin together before a wave is declared: real readers arriving
# during an attack land on a page (later pages come by links, with a Referer): a few a minute.
RATE: Final = 1.0
BURST: Final = 5.0
# A wave ends when no newcomer of it has asked for the origin for this long.
CALM: Final = 60.0
# New addresses in one second that make a surge of arrivals: at least this many, and this many
# times the usual (a moving average of calm seconds).
SURGE_MIN: Final = 20
SURGE_FACTOR: Final = 5.0


class NewcomerWave:
    """A token bucket for newcomers' misses under attack, and the wave it detects.

    `admit(first_seen, now)` for a miss of a client whose behaviour does not score bad and who
    holds no pass (nor came from one of the site's pages, nor asks for an asset: the caller
    lets those through): False means it proves itself first. Once the bucket runs dry, the wave
    has begun: clients first seen since then are refused, those first seen before are let
    through without drawing on the bucket. It began when the surge of new addresses that
    brought it began (`tick` counts arrivals each second), or else in the current second: a
    botnet's identities arrive in a burst and spend their first misses seconds later, by which
    time they would otherwise count as having been there before.
    """

    def __init__(self, rate: float = RATE, burst: float = BURST, young: float = YOUNG,
                 calm: float = CALM) -> None:
        self.young, self.calm = young, calm
        self.budget = Bucket(rate, burst)    # drawn on only while no wave is on
        self.wave_since: int | None = None   # whole second the wave began, None in calm
        self.last_refused = 0.0
        self.waves = 0                       # waves declared since start (a metric)
        self.refused = 0                     # misses refused (a metric)
        self.baseline = 0.0                  # new addresses per second, calm seconds' average
        self.surge_since: int | None = None  # start of the current (or latest) surge
        self.surge_end = 0.0                 # when the latest surge ended (0: going on)
        self._last_tick = 0.0

    def tick(self, now: float, arrivals: int) -> None:
        """Once a second: the new addresses seen since the previous tick."""
        if arrivals >= SURGE_MIN and arrivals > SURGE_FACTOR * self.baseline:
            if self.surge_since is None or self.surge_end:
                self.surge_since = trunc(self._last_tick or now - 1.0)
                self.surge_end = 0.0
        else:
            if self.surge_since is not None and not self.surge_end:
                self.surge_end = now
            self.baseline += 0.1 * (arrivals - self.baseline)
        self._last_tick = now

    def _began(self, now: float) -> int:
        """When a wave declared now began: with the surge of arrivals going on or ended less
        than `young` seconds ago, else now."""
        since = self.surge_since
        if since is not None and (not self.surge_end or now - self.surge_end <= self.young):
            return since
        return trunc(now)

    def admit(self, first_seen: int, now: float) -> bool:
        if now - first_seen > self.young:
            return True                      # no newcomer: its history speaks for it
        wave = self.wave_since
        if wave is not None and now - self.last_refused > self.calm:
            wave = self.wave_since = None
        if wave is not None and first_seen < wave:
            return True                      # it was reading before the wave began
        if wave is None:
            if self.budget.take(now):
                return True
            self.wave_since = self._began(now)
            self.waves += 1
        self.last_refused = now
        self.refused += 1
        return False

    @property
    def active(self) -> bool:
        """Whether a wave is on (as of the latest refusal; ends `calm` seconds after it)."""
        return self.wave_since is not None
