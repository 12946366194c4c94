"""The plain-HTTP listener's handler when certificates come by ACME: `/.well-known/acme-challenge/`
is answered here, before the redirect to HTTPS, the defence and the cache; every other request
goes to the redirect (once HTTPS serves) or to the pipeline (until then, or without redirect).

Why the challenge path skips the defence and the cache, and never reaches the origin: the CA's
validators come from addresses we cannot allowlist and must not meet a challenge page, a rate
limit or a cached answer from an older order; answering costs one dict lookup, less than the
defence's own check, so a flood of made-up tokens buys an attacker nothing (connection limits
and timeouts still hold: they are the listener's). Unknown tokens get a 404 from the edge rather
than the origin: the tokens are the edge's, the origin cannot know them, and forwarding would
give a flood a path to the origin that no cache absorbs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kalkan.edge.clock import Clock
from kalkan.edge.listener import Handler
from kalkan.edge.request import Request
from kalkan.edge.responses import write_response
from kalkan.observe.metrics import Metrics
from kalkan.observe.record import Recorder

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"

Header = tuple[bytes, bytes]
_TEXT: tuple[Header, ...] = ((b"Content-Type", b"text/plain"), (b"Cache-Control", b"no-store"))
_NOT_FOUND = b"No such ACME challenge token.\n"


class AcmeFront:
    """Stands in for the pipeline on the plain-HTTP listener when `tls.acme` is set."""

    def __init__(self, tokens: Mapping[str, str], behind: Handler, recorder: Recorder) -> None:
        self.tokens = tokens
        self.behind = behind  # the pipeline; `serve_behind` swaps in the redirect later
        self.recorder = recorder
        self.metrics: Metrics = behind.metrics
        self.clock: Clock = behind.clock
        self.log_refusal = behind.log_refusal
        self.log_error = behind.log_error

    def serve_behind(self, handler: Handler) -> None:
        """What answers the other requests from now on (HTTPS is up: the redirect)."""
        self.behind = handler

    def respond_now(self, req: Request, _read: bytes | None = None) -> tuple[bytes, ...] | None:
        if not req.path.startswith(CHALLENGE_PREFIX):
            return self.behind.respond_now(req)  # (no replay memo on this listener)
        if req.body is not None:
            return None  # drained in `respond` first, so the connection stays in step
        return (self._answer(req),)

    async def respond(self, req: Request, conn: Any) -> None:
        if not req.path.startswith(CHALLENGE_PREFIX):
            await self.behind.respond(req, conn)
            return
        if req.body is not None:
            await req.body.drain()
        conn.write(self._answer(req))

    def _answer(self, req: Request) -> bytes:
        now = self.clock.now
        head = req.method == "HEAD"
        if req.method not in ("GET", "HEAD"):
            status, headers, body = 405, (*_TEXT, (b"Allow", b"GET, HEAD")), b""
        else:
            token = req.path[len(CHALLENGE_PREFIX):]
            validation = self.tokens.get(token)
            if validation is None:
                status, headers, body = 404, _TEXT, _NOT_FOUND
            else:
                status, headers, body = 200, _TEXT, validation.encode("ascii")
        data = write_response(status, headers, body, now, keep_alive=req.keep_alive,
                              head_only=head)
        self.recorder.answer(now, req, status, len(data), "BYPASS", None, "acme")
        return data

    # Every request here is parsed: the pipeline's replay memo holds the bytes of requests
    # answered on the HTTPS listener too, and identical bytes there mean an https cache key.
    def replay(self, _data: bytes, _conn: Any) -> bool:
        return False

    def tick(self) -> None:
        pass  # the pipeline is ticked by its own listener's sweep
