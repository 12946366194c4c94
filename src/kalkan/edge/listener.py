"""What a client connection needs from outside itself, as types: the `Handler` it hands requests
to (the pipeline, or the HTTPS redirect) and the `Listener` that accepted it (the server).
Connection modules import these, never the server or the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from kalkan.config import Config
from kalkan.edge.client_address import TrustedProxies
from kalkan.edge.clock import Clock
from kalkan.edge.request import Request
from kalkan.edge.shelf import Shelf
from kalkan.observe.metrics import Metrics


class Handler(Protocol):
    """Answers the requests of a connection (`conn` is the HttpConnection asking)."""

    metrics: Metrics
    clock: Clock

    def respond_now(self, req: Request, read: bytes | None = None
                    ) -> tuple[bytes, ...] | None: ...
    async def respond(self, req: Request, conn: Any) -> None: ...
    def replay(self, data: bytes, conn: Any) -> bool: ...
    def log_refusal(self, client: str, status: int, detail: str) -> None: ...
    def log_error(self, req: Request, exc: BaseException) -> None: ...
    def tick(self) -> None: ...


class Listener(Protocol):
    """The server side of a connection: limits, admission, the clock, where answers come from."""

    config: Config
    clock: Clock
    metrics: Metrics
    pipeline: Handler
    connections: set[Any]
    head_limit: int
    park_at_once_past: int  # open connections past which an idle one is parked at once
    shelf: Shelf | None     # where long-idle plain-HTTP sockets wait (edge/shelf.py)
    timeouts: tuple[float, ...]
    trusted: TrustedProxies
    log_refusal: Callable[[str, int, str], None]
    log_error: Callable[[Request, BaseException], None]

    def admit(self, client: str) -> bool: ...
    def release(self, client: str) -> None: ...
