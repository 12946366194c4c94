"""What an alert is about: one Event per change the newsroom should hear of, and its kinds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

ATTACK_STARTED = "attack_started"
ATTACK_ENDED = "attack_ended"
ORIGIN_DOWN = "origin_down"
ORIGIN_UP = "origin_up"
CERT_EXPIRING = "cert_expiring"
TEST = "test"
KINDS = (ATTACK_STARTED, ATTACK_ENDED, ORIGIN_DOWN, ORIGIN_UP, CERT_EXPIRING, TEST)


@dataclass(frozen=True, slots=True)
class Event:
    """One change, when it happened (wall clock) and its facts (JSON-ready: the webhook sends
    them as they are; docs/alerts.md lists them per kind)."""

    kind: str
    facts: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown alert kind {self.kind!r}")
