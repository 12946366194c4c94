"""`ChunkQueue`: body chunks from a parser callback to one async reader, with back-pressure.

Both directions use it: a client's request body on its way to the origin (`BodyStream`) and an
origin's response body on its way to the client (`UpstreamResponse`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class ChunkQueue:
    """Chunks pushed by a parser, read in order by one consumer.

    When more than `high_water` bytes wait, `pause` is called (stop reading the socket); once the
    consumer has taken them down to `low_water`, `resume`. The end is `finish()` or `fail(exc)`;
    the chunks already queued are still read before the error is raised.
    """

    __slots__ = ("_chunks", "_buffered", "_ended", "_waiter", "_pause", "_resume", "_paused",
                 "high_water", "low_water", "received", "error", "_on_take")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None],
                 high_water: int, low_water: int,
                 on_take: Callable[[int], None] | None = None) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume
        self._paused = False
        self.high_water = high_water
        self.low_water = low_water
        self.received = 0  # bytes pushed in all
        self.error: Exception | None = None
        # Told the size of every chunk taken (an HTTP/2 stream gives it back as window).
        self._on_take = on_take

    def push(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self.received += len(chunk)
        if self._buffered > self.high_water and not self._paused:
            self._paused = True
            self._pause()
        self._wake()

    def finish(self) -> None:
        self._ended = True
        self._wake()

    def fail(self, exc: Exception) -> None:
        self.error = exc
        self._ended = True
        self._wake()

    @property
    def ended(self) -> bool:
        """No more chunks will be pushed (some may still wait to be read)."""
        return self._ended

    @property
    def done(self) -> bool:
        """Ended and read to the end."""
        return self._ended and not self._chunks

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take(self) -> bytes | None:
        """The next chunk, b"" at the end (or the error raised), None if the reader must wait."""
        if not self._chunks:
            if self._ended:
                if self.error is not None:
                    raise self.error
                return b""
            return None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= self.low_water:
            self._paused = False
            self._resume()
        if self._on_take is not None and chunk:
            self._on_take(len(chunk))
        return chunk

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next push or end (for a reader that bounds its wait)."""
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    async def read(self) -> bytes:
        """The next chunk, or b"" at the end; raises the error the queue failed with."""
        while True:
            chunk = self.take()
            if chunk is not None:
                return chunk
            await self.waiter()

    def unread(self, chunks: list[bytes]) -> None:
        """Put already-read chunks back in front, for a reader that changed its mind."""
        self._chunks.extendleft(reversed(chunks))
        self._buffered += sum(len(c) for c in chunks)

    async def drain(self) -> None:
        """Read and drop the rest (so the connection it arrives on can be reused)."""
        while await self.read():
            pass
