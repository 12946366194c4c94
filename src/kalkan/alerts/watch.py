"""What the alerts watch, polled once a second off the request path: the threat level (attack
on at level 2), the origin's circuit breaker, and the certificates' expiry dates (hourly)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kalkan.alerts.events import (
    ATTACK_ENDED,
    ATTACK_STARTED,
    CERT_EXPIRING,
    ORIGIN_DOWN,
    ORIGIN_UP,
    Event,
)
from kalkan.tasks import cancel_and_wait

log = logging.getLogger("kalkan.alerts")

ATTACK_LEVEL = 2           # attack_mode.ATTACK: where the defence turns strict
CERT_CHECK_EVERY = 3600.0  # seconds between two reads of the certificate files
CERT_REPEAT_EVERY = 86400.0  # a certificate still near expiry is mentioned again after a day


@dataclass
class Sources:
    """Read-only views of the running edge, as plain callables (alerts know nothing of edge/)."""

    threat: Callable[[], tuple[int, str]] = lambda: (0, "")    # level, why
    attackers: Callable[[], list[dict[str, str]]] = list      # [{target, why}], loudest first
    origin_failing: Callable[[], bool] = lambda: False
    origin: str = ""
    certificates: Callable[[], list[str]] = list               # PEM files in use


def certificate_expiry(path: str) -> tuple[tuple[str, ...], datetime.datetime]:
    """Names and notAfter of the first certificate in a PEM file; ValueError/OSError if bad."""
    from cryptography import x509  # late: only read once an hour

    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return names, cert.not_valid_after_utc


class Watcher:
    """Turns changes in the sources into Events for `emit`."""

    def __init__(self, sources: Sources, emit: Callable[[Event], None],
                 cert_expiry_days: float) -> None:
        self.sources = sources
        self.emit = emit
        self.cert_expiry_days = cert_expiry_days
        self.attack_since: float | None = None
        self.down_since: float | None = None
        self._next_cert_check = 0.0
        self._cert_told: dict[tuple[str, str], float] = {}   # (path, notAfter) → when told
        self._task: asyncio.Task[None] | None = None

    def check(self, now: float) -> None:
        """One look at every source; `now` is wall-clock seconds."""
        level, why = self.sources.threat()
        if level >= ATTACK_LEVEL and self.attack_since is None:
            self.attack_since = now
            try:
                attackers = self.sources.attackers()
            except Exception as exc:  # a report must never stop the alert itself
                log.error("cannot list the attackers for the alert: %s", exc)
                attackers = []
            self.emit(Event(ATTACK_STARTED, {"level": level, "reason": why,
                                             "attackers": attackers}, now))
        elif level < ATTACK_LEVEL and self.attack_since is not None:
            self.emit(Event(ATTACK_ENDED, {"level": level, "reason": why,
                                           "duration": round(now - self.attack_since, 1)}, now))
            self.attack_since = None
        failing = self.sources.origin_failing()
        if failing and self.down_since is None:
            self.down_since = now
            self.emit(Event(ORIGIN_DOWN, {"origin": self.sources.origin}, now))
        elif not failing and self.down_since is not None:
            self.emit(Event(ORIGIN_UP, {"origin": self.sources.origin,
                                        "duration": round(now - self.down_since, 1)}, now))
            self.down_since = None
        if now >= self._next_cert_check:
            self._next_cert_check = now + CERT_CHECK_EVERY
            self.check_certificates(now)

    def check_certificates(self, now: float) -> None:
        limit = self.cert_expiry_days * 86400.0
        for path in self.sources.certificates():
            try:
                names, not_after = certificate_expiry(path)
            except (OSError, ValueError) as exc:
                log.warning("cannot read certificate %s for its expiry date: %s", path, exc)
                continue
            left = not_after.timestamp() - now
            key = (path, not_after.isoformat())
            if left > limit or now - self._cert_told.get(key, -CERT_REPEAT_EVERY) \
                    < CERT_REPEAT_EVERY:
                continue
            self._cert_told[key] = now
            self.emit(Event(CERT_EXPIRING, {
                "path": path, "names": list(names), "days_left": round(left / 86400.0, 2),
                "not_after": not_after.strftime("%Y-%m-%d %H:%M UTC")}, now))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alerts-watch")

    async def _run(self) -> None:
        while True:
            try:
                self.check(time.time())
            except Exception:  # keep watching: one bad read must not end the alerts
                log.exception("alert watcher failed once")
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
