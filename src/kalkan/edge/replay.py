"""The replay memo: identical request bytes answered again without parsing (a flood of one URL
sends exactly that), and the defence's per-connection verdict on them, reused for a moment."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from kalkan.defense.verdict import Action
from kalkan.edge.request import Request
from kalkan.observe.access_log import AccessLog

if TYPE_CHECKING:
    from kalkan.defense.engine import Defense
    from kalkan.defense.null import NullDefense
    from kalkan.edge.body_files import BodyFiles
    from kalkan.edge.clock import Clock
    from kalkan.edge.connection import HttpConnection
    from kalkan.edge.store import Store
    from kalkan.observe.record import Recorder

# Remembered request byte strings, bounded in count and bytes: the oldest make room for new ones.
# (Final: compiled code holds them as constants, not names looked up per request.)
REPLAY_MEMO: Final = 2048
REPLAY_BYTES: Final = 4 * 1024 * 1024
STANDING_WINDOW: Final = 0.25   # seconds a per-connection verdict on identical bytes is reused
SAMPLE: Final = 64              # while replays are rare, one hit in SAMPLE is glimpsed
LOOK: Final = 15                # ... and one read in LOOK + 1 is looked up (a mask)
GLIMPSES: Final = 256           # ... and the hashes of this many glimpsed hits are kept


class Remembered:
    """What a remembered request meant: its cache key, HEAD or not, credentials, log parts,
    and the parsed request itself (for the defence, which decides per client)."""

    __slots__ = ("key", "head", "credentialed", "log", "agent", "request")

    def __init__(self, key: str, head: bool, credentialed: bool, log: str, agent: str,
                 request: Request) -> None:
        self.key = key
        self.head = head
        self.credentialed = credentialed
        self.log = log
        self.agent = agent
        self.request = request


class Standing:
    """The defence's verdict on one connection's last replayed bytes, reused for a moment."""

    __slots__ = ("data", "until", "request", "refusal", "status", "decision", "pending")

    def __init__(self, data: bytes, until: float, request: Request, refusal: bytes | None,
                 status: int, decision: str) -> None:
        self.data = data
        self.until = until
        self.request = request
        self.refusal = refusal
        self.status = status
        self.decision = decision
        self.pending = 0


class ReplayMemo:
    """Remembers the bytes of single requests answered on the hot path, and answers them again.

    Identical bytes parse identically, so no check is skipped: the defence still decides per
    client (once per connection per `STANDING_WINDOW`, counting what it let through since), and
    the entry must still be fresh. Requests whose meaning depends on more than their bytes (a
    client address from X-Forwarded-For) are never remembered.
    """

    def __init__(self, store: Store, recorder: Recorder, clock: Clock,
                 defense: Defense | NullDefense,
                 respond_now: Callable[[Request], tuple[bytes, ...] | None],
                 credentialed: Callable[[Request], bool], defended: bool,
                 body_files: BodyFiles) -> None:
        self.store = store
        self.body_files = body_files
        self.recorder = recorder
        self.clock = clock
        self.defense = defense
        self.respond_now = respond_now
        self.credentialed = credentialed  # asked only of a request that is remembered
        self.defended = defended  # else no verdicts to keep per connection
        self.memo: dict[bytes, Remembered] = {}
        self.order: deque[bytes] = deque()  # the memo's keys, oldest first
        self.bytes = 0
        # Adaptive: while remembered bytes are rarely seen again (readers never send identical
        # requests), nothing is remembered: one hit in SAMPLE is glimpsed (its bytes' hash kept)
        # and one read in LOOK + 1 looked up, so a varied load does not pay for a memo it never
        # uses. Bytes glimpsed twice (a flood repeats them) switch remembering back on for
        # every hit: a flood of one URL is caught within SAMPLE * 2 requests.
        self.sample = 1
        self.glimpses: set[int] = set()
        self._glimpsed: deque[int] = deque()  # the same hashes, oldest first
        self._seen = 0         # hits offered to `remember` since the last tick
        self._replayed = 0     # requests answered from the memo since the last tick
        self._reads = 0        # reads offered to `replay` while sampling

    def remember(self, data: bytes, req: Request) -> None:
        """After a hot-path hit: if `data` was exactly this one request, memoize what it meant.
        Only plain keep-alive HTTP/1.1 GET/HEAD without a body qualify."""
        self._seen += 1
        if self.sample != 1:
            if self.order:
                self._evict()  # what was remembered before sampling goes, one per hit
            if self._seen % self.sample or not self._glimpse(data):
                return
            self.sample = 1  # the same bytes again: a flood; remember every hit from now on
        if (req.version != "1.1" or not req.keep_alive
                or req.client != req.peer or not data.endswith(b"\r\n\r\n")
                or data.count(b"\r\n\r\n") != 1 or len(data) > 4096 or not self._room()):
            return
        memo = self.memo
        if data not in memo:
            self.order.append(data)
            self.bytes += _cost(data)
        memo[data] = Remembered(req.key, req.method == "HEAD", self.credentialed(req),
                                AccessLog.fragment(req.method, req.host, req.path, req.query),
                                AccessLog.agent(req.user_agent, req.referer), req)

    def _glimpse(self, data: bytes) -> bool:
        """Keep `data`'s hash among the last GLIMPSES; True if it was there already. (A hash
        that collides only turns remembering on until the next tick: no answer depends on it.)"""
        key = hash(data)
        glimpses = self.glimpses
        if key in glimpses:
            return True
        glimpses.add(key)
        self._glimpsed.append(key)
        if len(glimpses) > GLIMPSES:
            glimpses.discard(self._glimpsed.popleft())
        return False

    def _room(self) -> bool:
        """Let the oldest entries go until one more fits: freeing is spread over the requests.
        (The whole memo let go of at once, 2,048 parsed requests, took 0.3-2 ms: a stall for
        every connection in flight.) Over the byte bound, as many go as it takes (a few: an
        entry is at most ~8.7 KB)."""
        while self.order and (len(self.memo) >= REPLAY_MEMO or self.bytes > REPLAY_BYTES):
            self._evict()
        return len(self.memo) < REPLAY_MEMO

    def _evict(self) -> None:
        """Let the oldest remembered request go."""
        data = self.order.popleft()
        if self.memo.pop(data, None) is not None:
            self.bytes -= _cost(data)

    def forget(self) -> None:
        self.memo.clear()
        self.order.clear()
        self.bytes = 0
        self.glimpses.clear()
        self._glimpsed.clear()

    def tick(self) -> None:
        """About once a second: sample while the memo earns nothing."""
        if self._seen >= 256 and self._replayed * 16 < self._seen:
            self.sample = SAMPLE
        elif self._replayed:
            self.sample = 1
        self._seen = self._replayed = 0

    def replay(self, data: bytes, conn: HttpConnection) -> bool:
        """Answer `data` if it is a remembered request whose entry is still fresh; else False."""
        if self.sample != 1:
            # Replays are rare: hashing every read for a lookup that never finds anything
            # costs ~1,400 instructions (a readers-load hit is ~40,000). One read in LOOK + 1
            # still finds a flood's bytes, and the first replay found ends the sampling.
            self._reads += 1
            if self._reads & LOOK or not self.memo:
                return False
        memo = self.memo.get(data)
        if memo is None:
            return False
        self._replayed += 1
        self.sample = 1
        decision = ""
        if self.defended:
            standing = conn.standing
            if standing is None or standing.data != data or self.clock.mono >= standing.until:
                return self._decide(data, memo, conn)
            # The same client sent the same bytes a moment ago: same verdict, counted later.
            standing.pending += 1
            if standing.refusal is not None:
                conn.send_now((standing.refusal,))
                self.recorder.replayed(self.clock.now, conn.client, memo.request.path, memo.log,
                                       memo.agent, standing.status,
                                       len(standing.refusal), "BYPASS", 0.0, standing.decision)
                return True
            decision = standing.decision
        variants = self.store.get(memo.key)
        if variants is None or len(variants) != 1:
            return False
        entry = variants[0]
        now = self.clock.now
        if entry.vary or now >= entry.fresh_until or (entry.micro and memo.credentialed):
            return False
        started = time.monotonic()
        out = entry.wire(now, memo.head)
        conn.send_hit(out, entry.hot_file(self.body_files) if len(out) == 2 else None)
        self.recorder.replayed(now, conn.client, memo.request.path, memo.log, memo.agent,
                               entry.status, wire_len(out), "HIT",
                               (time.monotonic() - started) * 1000.0, decision)
        return True

    def _decide(self, data: bytes, memo: Remembered, conn: HttpConnection) -> bool:
        """Remembered bytes from a client the defence has not judged for them lately: judge
        (counting what the standing verdict let through meanwhile) and remember the verdict
        for a moment, so a flood of identical requests costs one decision per window."""
        standing = conn.standing
        if standing is not None and standing.pending:
            self.defense.count(standing.request, standing.pending)
        conn.standing = None
        req = memo.request.clone_for(conn.client, conn.peer)
        req.started = time.monotonic()
        out = self.respond_now(req)
        if out is None:
            return False  # the slow path takes it from the parser (and decides again)
        conn.send_hit(out, req.body_file)
        verdict = req.verdict
        if verdict is not None:
            refused = verdict.action is not Action.ALLOW
            conn.standing = Standing(data, self.clock.mono + STANDING_WINDOW, req,
                                     out[0] if refused else None,
                                     verdict.status if refused else 200, req.decision)
        return True


def _cost(data: bytes) -> int:
    """What a remembered request is counted as: its bytes, and about as much again for the
    parsed request kept with them."""
    return 2 * len(data) + 512


def wire_len(buffers: tuple[bytes, ...]) -> int:
    """Bytes in an answer's buffers: one (a head or a refusal) or two (head and body) nearly
    always, counted without a generic sum on every hit."""
    n = len(buffers)
    if n == 1:
        return len(buffers[0])
    if n == 2:
        return len(buffers[0]) + len(buffers[1])
    return sum(map(len, buffers))
