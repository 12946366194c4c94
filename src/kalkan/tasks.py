"""Ending a background task: cancel it and wait until it has ended (its cleanup has run)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None, *, quietly: bool = False) -> None:
    """Cancel `task` (None: nothing to do) and wait for it to end. `quietly`: an exception it
    ended with is swallowed too (a link that failed while being stopped has nothing to add)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, *((Exception,) if quietly else ())):
        await task
