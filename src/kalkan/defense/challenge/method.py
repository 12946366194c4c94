"""The interface every challenge method implements (proof-of-work, the no-JS wait, later others).

The facade checks the signed ticket (binding, expiry, replay); a method only judges the answer.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

from kalkan.defense.challenge.tokens import Ticket


class Verdict(enum.Enum):
    PASS = "pass"        # the answer is right: issue a pass
    FAIL = "fail"        # the answer is wrong: count a challenge failure
    WAIT = "wait"        # too early (the no-JS delay has not elapsed): not a failure yet


class Method(Protocol):
    """A way to earn a pass, answered at `/.kalkan/<name>`."""

    name: str            # endpoint path segment and log reason prefix, e.g. "pow"
    kind: str            # written into the pass it earns (tokens.POW, tokens.NOJS)

    def admit(self, prefix: str, now: float) -> bool:
        """May this prefix try now? (Rate limits of the method itself; False -> 429.)"""
        ...

    def verify(self, ticket: Ticket, params: Mapping[str, str], now: float) -> Verdict:
        """Judge the answer in `params` for a ticket whose signature already checked out."""
        ...
