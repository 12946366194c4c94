"""The alliance in a running edge: its feed served at FEED_PATH (remade from the standing
decisions every `poll_interval` when they changed), and its allies' feeds polled and applied.
Started when `kalkan alliance init` made an identity (publishing) or `kalkan alliance add`
named an ally (polling); a reload reads the allies file again."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

from kalkan.addresses import AddressSet
from kalkan.alliance.identity import Identity, IdentityError, Publisher
from kalkan.alliance.poller import Poller, load_allies
from kalkan.alliance.share import shareable
from kalkan.config import Config

log = logging.getLogger("kalkan.alliance")

FEED_PATH = "/.well-known/kalkan/feed"


def alliance_dir(config: Config) -> Path:
    return Path(config.state_dir) / "alliance"


class AllianceService:
    """Publishing and polling for one edge (`start`, `reload`, `close`)."""

    def __init__(self, config: Config, defense: Any, metrics: Any = None) -> None:
        self.config = config
        self.defense = defense
        self.metrics = metrics
        self.publisher: Publisher | None = None
        self.poller: Poller | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._changes = -1

    def start(self) -> None:
        a = self.config.alliance
        where = alliance_dir(self.config)
        if a.publish and (where / "identity.json").exists():
            try:
                identity = Identity.load(where / "identity.json")
            except IdentityError as exc:
                log.error("alliance: not publishing: %s", exc)
            else:
                self.publisher = Publisher(identity, a.feed_lifetime)
                self.defense.published[FEED_PATH] = self._document
                log.warning("alliance: publishing the feed of %s (key %s) at %s",
                            identity.name, identity.key_id, FEED_PATH)
        self._start_poller()
        self._tick()

    def _start_poller(self) -> None:
        try:
            allies = load_allies(alliance_dir(self.config) / "allies.json")
        except ValueError as exc:
            log.error("alliance: allies not polled: %s", exc)
            return
        if allies:
            poller = self.poller = Poller(allies, self.defense.decisions, never=self._never(),
                                          interval=self.config.alliance.poll_interval)
            poller.start()
            if self.metrics is not None:   # (registering again replaces: a reload may)
                self.metrics.labeled_counter(
                    "kalkan_alliance_feeds_total", "Allies' feeds fetched and believed "
                    "(accepted) or refused (forged, tampered, replayed, unknown key, expired).",
                    "outcome", lambda: self._outcomes())
                self.metrics.labeled_gauge(
                    "kalkan_alliance_agreement", "Per ally on trust observe: the share of its "
                    "last feed's entries this edge had decided by itself too (0..1): whether to "
                    "trust it more.", "ally", lambda: self._agreement())

    def _agreement(self) -> dict[str, float]:
        allies = self.poller.allies if self.poller is not None else []
        return {a.config.name: a.agreed / a.observed for a in allies if a.observed}

    def _outcomes(self) -> dict[str, float]:
        allies = self.poller.allies if self.poller is not None else []
        return {"accepted": sum(a.accepted for a in allies),
                "refused": sum(a.refused for a in allies)}

    def _never(self) -> list[AddressSet]:
        """What no feed may name: the allowlist and every crawler's published ranges."""
        crawlers = self.defense.policy.crawlers.crawlers.values()
        return [self.defense.allow, *(c.ranges for c in crawlers)]

    def _document(self) -> tuple[bytes, str]:
        publisher = self.publisher
        return (publisher.body, publisher.etag) if publisher is not None else (b"", "")

    def _tick(self) -> None:
        """Remake the feed when the decisions changed (or it nears its expiry)."""
        publisher = self.publisher
        if publisher is not None:
            now = time.time()
            decisions = self.defense.decisions
            if decisions.changes != self._changes or not publisher.body or \
                    now > publisher.expires_soon:
                self._changes = decisions.changes
                v4, v6 = decisions.client_prefix_len
                entries = shareable(decisions.all(now), now, never=self._never(),
                                    passed=self.defense.passed_recently.table.__contains__,
                                    prefix_len=(v4, v6),
                                    prefixes_only=self.config.alliance.prefixes_only)
                publisher.current(entries, now)
        self._timer = asyncio.get_running_loop().call_later(
            self.config.alliance.poll_interval, self._tick)

    async def reload(self) -> None:
        """The allies file and the identity (a `kalkan alliance rotate` since), read again."""
        if self.publisher is not None:
            try:
                self.publisher.identity = Identity.load(alliance_dir(self.config)
                                                        / "identity.json")
            except IdentityError as exc:
                log.error("alliance: keeping the identity in memory: %s", exc)
            self._changes = -1   # publish again: a rotation is announced at once
            self.publisher.forget()
        if self.poller is not None:
            await self.poller.close()
            self.poller = None
        self._start_poller()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.poller is not None:
            await self.poller.close()
        self.defense.published.pop(FEED_PATH, None)


def default_name(config: Config) -> str:
    return config.alliance.name or config.site.name or socket.gethostname()
