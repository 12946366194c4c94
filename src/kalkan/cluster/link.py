"""The loop every transport of the cluster shares: connect, resync both ways, send a change at
once (one batch per `interval` under a flood of them), report the threat level and the busiest
clients once a second, apply what the others send, and when the other side goes away, go on
with the local state, log it once, and retry with backoff. A transport (Redis, the workers'
relay) says only how to open, resync, send, and receive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod

from kalkan.cluster.state import ClusterState, Record
from kalkan.tasks import cancel_and_wait

log = logging.getLogger("kalkan.cluster")

_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


class Link(ABC):
    """One edge's (or worker's) side of the shared state (`start` / `close`)."""

    def __init__(self, state: ClusterState, where: str, *, interval: float = 0.02) -> None:
        self.state = state
        self.where = where        # what the log calls the other side: "Redis at URL", ...
        self.interval = interval
        self.up = False
        self.ops = 0              # commands sent to the other side (a pipeline counts each)
        self.sent = 0             # records sent
        self.outages = 0
        self._task: asyncio.Task[None] | None = None
        self._pending = asyncio.Event()
        state.wake = self._pending.set

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop; what is still in the outbox is sent if the other side answers within 1 s."""
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task, quietly=True)
        if self.state.outbox or self.state.events:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._last_words(), 1.0)

    async def _last_words(self) -> None:
        await self._open(0)
        try:
            await self._flush()
        finally:
            await self._shut()

    # -- what a transport provides -----------------------------------------------------------
    @abstractmethod
    async def _open(self, attempt: int) -> None:
        """Connect (the `attempt`th time: a transport with several servers tries the next)."""

    @abstractmethod
    async def _shut(self) -> None:
        """Disconnect; never raises."""

    @abstractmethod
    async def _resync(self, now: float) -> None:
        """Listen first, then merge both ways: the shared table into the state, and the
        state's records (`all_records`) into the table."""

    @abstractmethod
    async def _send(self, records: list[Record], events: list[Record]) -> None:
        """Decision records (kept by the other side, newest per target) and events (only
        passed on), to every other edge."""

    @abstractmethod
    async def _report(self, now: float, threat: Record, hits: Record | None) -> None:
        """The once-a-second report: the threat record is kept, the hits passed on."""

    @abstractmethod
    async def _receive(self) -> list[Record] | None:
        """The next batch of other edges' records; None when there was none for a while."""

    def _received(self, records: list[Record]) -> None:  # noqa: B027 - a hook, not abstract
        """Called after a batch was applied (a transport may react to some records)."""

    # -- the loop -----------------------------------------------------------------------------
    async def _run(self) -> None:
        failures = attempts = 0
        while True:
            attempts += 1
            try:
                await self._open(attempts)
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection errors, timeouts, protocol errors: "away"
                if self.up or failures == 0:
                    self.outages += 1
                    log.error("cluster: %s unreachable (%s); this edge goes on with its own "
                              "state and resyncs when it is back", self.where,
                              " ".join(str(exc).split()) or type(exc).__name__)
                self.up = False
                failures += 1
            else:
                failures = 0
            finally:
                await self._shut()
            await asyncio.sleep(_BACKOFF[min(failures, len(_BACKOFF) - 1)])

    async def _serve(self) -> None:
        await self._resync(time.time())
        if not self.up:
            log.warning("cluster: connected to %s (%d decisions standing here)", self.where,
                        len(self.state.decisions))
        self.up = True
        reader = asyncio.get_running_loop().create_task(self._read())
        try:
            next_second = 0.0
            while not reader.done():
                # A change goes out at once; under a flood of them, one batch per interval.
                self._pending.clear()
                await self._flush()
                now = time.time()
                if now >= next_second:
                    next_second = now + 1.0
                    self.state.tick(now)
                    await self._report(now, self.state.threat_record(now),
                                       self.state.hits_record(now))
                await asyncio.sleep(self.interval)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._pending.wait(),
                                           max(0.0, next_second - time.time()))
            reader.result()   # raises what ended the reader
        finally:
            await cancel_and_wait(reader, quietly=True)

    async def _read(self) -> None:
        while True:
            records = await self._receive()
            if records:
                self.state.apply(records, time.time())
                self._received(records)

    async def _flush(self) -> None:
        records, events = self.state.take()
        if not records and not events:
            return
        try:
            await self._send(records, events)
        except BaseException:
            self.state.requeue(records, events)
            raise
        self.sent += len(records) + len(events)
