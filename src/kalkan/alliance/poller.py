"""The allies an edge listens to (STATE_DIR/alliance/allies.json, written by `kalkan alliance
add`) and the poller that fetches their feeds: every `interval` seconds, with the last ETag (an
unchanged feed costs a 304), each checked by its Subscription and applied by trust. A feed that
is refused (forged, replayed, tampered, unknown key) changes nothing and is logged once per
reason; an ally that cannot be reached keeps its entries until its last feed expires."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from kalkan.addresses import AddressSet
from kalkan.alliance.allies import TRUSTS, apply_feed
from kalkan.alliance.feed import MAX_BYTES, FeedError, Subscription, public_key
from kalkan.defense.decisions import Decisions
from kalkan.statefiles import write_atomically
from kalkan.tasks import cancel_and_wait

log = logging.getLogger("kalkan.alliance")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# (status, body, etag) for (url, etag): a fetch that raises OSError is "unreachable"
Fetch = Callable[[str, str], Awaitable[tuple[int, bytes, str]]]


@dataclass
class AllyConfig:
    name: str
    url: str
    key: str          # base64url of the ally's Ed25519 public key
    trust: str

    def check(self) -> None:
        """ValueError naming what is wrong (for `kalkan alliance add` and at load)."""
        if not _NAME.match(self.name):
            raise ValueError(f"ally name {self.name!r}: lower-case letters, digits, '.', '_' "
                             "and '-' only")
        if not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"ally {self.name}: the feed URL must be http(s)://HOST/..., "
                             f"got {self.url!r}")
        try:
            public_key(self.key)
        except FeedError as exc:
            raise ValueError(f"ally {self.name}: {exc}") from None
        if self.trust not in TRUSTS:
            raise ValueError(f"ally {self.name}: trust must be {', '.join(TRUSTS)}, "
                             f"not {self.trust!r}")


def load_allies(path: Path) -> list[AllyConfig]:
    """The allies file; none when it does not exist. ValueError names a bad file or entry."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable allies file ({exc})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of allies")
    allies = []
    for i, row in enumerate(rows):
        try:
            ally = AllyConfig(str(row["name"]), str(row["url"]), str(row["key"]),
                              str(row["trust"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: ally {i}: missing {exc}") from None
        ally.check()
        allies.append(ally)
    return allies


def save_allies(path: Path, allies: list[AllyConfig]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(path, (json.dumps([asdict(a) for a in allies], indent=1) + "\n").encode())


async def fetch_url(url: str, etag: str) -> tuple[int, bytes, str]:
    """GET `url` (in a thread: urllib, the system's CAs for https), with If-None-Match."""
    def get() -> tuple[int, bytes, str]:
        request = urllib.request.Request(url, headers={
            "User-Agent": "kalkan-alliance/1", **({"If-None-Match": etag} if etag else {})})
        try:
            # (http(s) only: AllyConfig.check refuses other schemes)
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read(MAX_BYTES + 1)
                return response.status, body, response.headers.get("ETag", "")
        except urllib.error.HTTPError as exc:
            return exc.code, b"", ""

    return await asyncio.to_thread(get)


@dataclass
class AllyState:
    config: AllyConfig
    subscription: Subscription
    etag: str = ""
    last_problem: str = ""
    accepted: int = 0
    refused: int = 0
    observed: int = 0     # entries of its last feed (trust observe)
    agreed: int = 0       # ... that this edge had decided by itself too


class Poller:
    """Fetches every ally's feed each `interval` and applies what it believes."""

    def __init__(self, allies: Iterable[AllyConfig], decisions: Decisions, *,
                 never: Iterable[AddressSet] = (), interval: float = 10.0,
                 fetch: Fetch = fetch_url) -> None:
        self.allies = [AllyState(a, Subscription(a.name, public_key(a.key))) for a in allies]
        self.decisions = decisions
        self.never = list(never)
        self.interval = interval
        self.fetch = fetch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await self.poll_all()
            await asyncio.sleep(self.interval)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(a) for a in self.allies))

    async def poll(self, ally: AllyState) -> None:
        name = ally.config.name
        try:
            status, body, etag = await self.fetch(ally.config.url, ally.etag)
        except (OSError, ValueError) as exc:
            self._problem(ally, f"unreachable ({exc})")
            self._expire(ally)
            return
        if status == 304:
            self._expire(ally)
            return
        if status != 200:
            self._problem(ally, f"its feed answered {status}")
            self._expire(ally)
            return
        now = time.time()
        try:
            entries = ally.subscription.accept(body, now)
        except FeedError as exc:
            ally.refused += 1
            self._problem(ally, str(exc))
            self._expire(ally)
            return
        ally.etag, ally.last_problem = etag, ""
        ally.accepted += 1
        result = apply_feed(name, ally.config.trust, entries, ally.subscription.expires,
                            self.decisions, now, never=self.never)
        ally.observed, ally.agreed = result.observed, result.agreed
        if result.added or result.removed:
            log.warning("ally %s (trust %s): %d decisions added, %d removed%s", name,
                        ally.config.trust, result.added, result.removed,
                        f"; {len(result.refused)} entries not taken"
                        if result.refused else "")

    def _expire(self, ally: AllyState) -> None:
        """An ally that went quiet: its decisions go once its last feed expired."""
        if ally.subscription.expires and time.time() >= ally.subscription.expires:
            apply_feed(ally.config.name, ally.config.trust, [], 0.0, self.decisions,
                       time.time(), never=self.never)

    def _problem(self, ally: AllyState, problem: str) -> None:
        if problem != ally.last_problem:   # once per reason, not once per poll
            log.error("ally %s: feed not taken: %s", ally.config.name, problem)
        ally.last_problem = problem
