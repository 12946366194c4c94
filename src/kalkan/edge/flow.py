"""`FlowControl`: reading paused for any of several reasons, and waiting for the peer to take
what was written; shared by the client connection and the origin connection."""

from __future__ import annotations

import asyncio
from typing import Protocol


class _Reading(Protocol):
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class FlowControl:
    """Reading is paused while any reason holds (a full body queue, a full pipeline, a peer that
    does not read...); the transport is told only on the first pause and the last resume.
    `drain()` waits while the transport has paused our writing."""

    __slots__ = ("transport", "reasons", "write_paused", "_drain_waiter")

    def __init__(self) -> None:
        self.transport: _Reading | None = None  # None: not yet connected, or closed
        # A list, not a set: an idle keep-alive connection holds one, and a handful of
        # reasons at most are ever present (an empty set costs four times the memory).
        self.reasons: list[str] = []
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    @property
    def read_paused(self) -> bool:
        return bool(self.reasons)

    def pause_reading(self, why: str) -> None:
        reasons = self.reasons
        if not reasons and self.transport is not None:
            self.transport.pause_reading()
        if why not in reasons:
            reasons.append(why)

    def resume_reading(self, why: str) -> None:
        reasons = self.reasons
        if why in reasons:
            reasons.remove(why)
        if not reasons and self.transport is not None:
            self.transport.resume_reading()

    def read_again(self) -> None:
        """Drop every reason and read (a connection that now only drains its input)."""
        self.reasons.clear()
        if self.transport is not None:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    async def drain(self) -> None:
        """Wait until the transport resumes our writing, or the connection is closed."""
        if self.write_paused and self.transport is not None:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter
            self._drain_waiter = None

    def closed(self) -> None:
        """The connection is closed: never touch the transport again, release a drain."""
        self.transport = None
        self._wake()

    def _wake(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
