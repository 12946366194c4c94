"""The contract between the edge and the defence: what the defence reads (`RequestView`) and
what it answers (`Verdict`, an immutable decision plus the answer to send as plain data).

The defence never writes to the edge's objects and never renders HTTP: the edge renders a
verdict's status, headers and body with its own response writer, adding Date, Server,
Content-Length, X-Cache and Connection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Protocol

Header = tuple[bytes, bytes]


class Action(enum.Enum):
    """What the edge does with a request the defence has judged."""

    ALLOW = "allow"          # go on to the cache and the origin
    BLOCK = "block"          # send the 403 block page now
    TARPIT = "tarpit"        # hold the request a while, then a 429 and close
    CHALLENGE = "challenge"  # send the challenge page (403) instead of the content
    RESPOND = "respond"      # the defence's own endpoint (/.kalkan/…): send its answer
    REFUSE = "refuse"        # a cheap 429/503 + Retry-After where a challenge cannot be solved


# Actions whose answer is the same bytes for everyone all second long (no per-request content):
# the edge memoizes their rendering, which keeps a flood's hot path as cheap as a cache hit.
REFUSALS = frozenset({Action.BLOCK, Action.TARPIT, Action.REFUSE})


@dataclass(frozen=True, slots=True, eq=False)
class Verdict:
    """One decision. `decision` is the access log's field ("block:rule:search-flood");
    `has_pass` says the client holds a valid challenge pass. `status`, `headers` and `body`
    are the answer when the action is not ALLOW (headers without Date, Server,
    Content-Length, X-Cache and Connection, which the edge adds).

    Compared and hashed by identity (eq=False): refusals are shared objects, and the edge keys
    its per-second memo of rendered bytes on that identity.
    """

    action: Action
    decision: str = ""
    has_pass: bool = False
    status: int = 0
    headers: tuple[Header, ...] = ()
    body: bytes = b""


# Nothing to say: the common case, one shared object (Final: a constant in compiled code).
ALLOWED: Final = Verdict(Action.ALLOW)

# Who asks the origin, as the defence answers the edge's origin gate (`origin_standing`):
# clients known to be good, clients it knows nothing of yet, clients behaving like bots.
KNOWN, UNKNOWN, SUSPECT = 0, 1, 2


class RequestView(Protocol):
    """What the defence reads from a request; the edge's own request object provides it.

    Read-only members, so a type checker refuses a write from the defence. No copy is made on
    the hot path: the edge passes its parsed request itself.
    """

    @property
    def method(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def query(self) -> str: ...
    @property
    def client(self) -> str: ...
    @property
    def client_ip(self) -> tuple[int, int] | None: ...
    @property
    def scheme(self) -> str: ...
    @property
    def headers(self) -> list[Header]: ...
    @property
    def cookie(self) -> bytes | None: ...
    @property
    def user_agent(self) -> bytes | None: ...
    @property
    def referer(self) -> bytes | None: ...
    @property
    def prefetched_body(self) -> bytes | None: ...

    def header(self, name: bytes) -> bytes | None: ...
