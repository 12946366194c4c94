"""What an edge does with an ally's believed feed, by the trust its operator gives that ally:
`observe` only scores its entries (how many, how many this edge decided by itself too), `challenge`
challenges them, `block` does what the ally did (block or challenge). An ally never makes an edge
refuse its allowlist or a crawler's range, a local decision always wins over an ally's, and
every imported decision names the ally and ends with its feed. No I/O: the poller feeds it."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from kalkan.addresses import AddressSet
from kalkan.alliance.feed import Entry
from kalkan.alliance.share import touches
from kalkan.defense.decisions import Decisions

log = logging.getLogger("kalkan.alliance")

TRUSTS = ("observe", "challenge", "block")
REASON_PREFIX = "ally "


@dataclass
class Imported:
    """What one ally's feed changed here, for the log and the metrics."""

    added: int = 0
    removed: int = 0
    observed: int = 0
    agreed: int = 0      # observed entries this edge had decided by itself too
    refused: list[str] = field(default_factory=list)   # why entries were not taken


def apply_feed(ally: str, trust: str, entries: Iterable[Entry], feed_expires: float,
               decisions: Decisions, now: float, *,
               never: Iterable[AddressSet] = ()) -> Imported:
    """Turn `ally`'s believed entries into decisions here (replacing what its last feed
    gave); returns what changed."""
    if trust not in TRUSTS:
        raise ValueError(f"trust must be one of {', '.join(TRUSTS)}, not {trust!r}")
    keep_out = list(never)
    mine = REASON_PREFIX + ally + ":"
    out = Imported()
    wanted: set[str] = set()
    for e in entries:
        if touches(keep_out, ipaddress.ip_network(e.target)):
            out.refused.append(f"{e.target}: allowlisted or a crawler's range")
            continue
        if trust == "observe":
            out.observed += 1
            own = decisions.get(e.target)
            if own is not None and own.origin != "ally" and own.action != "allow":
                out.agreed += 1   # how often it agrees with this edge: whether to trust it more
            continue
        until = min(e.until, feed_expires)
        if until <= now:
            continue
        current = decisions.get(e.target)
        if current is not None and not current.reason.startswith(mine):
            if current.origin != "ally":
                out.refused.append(f"{e.target}: a local decision stands")
            continue   # a local decision, or another ally's: the first word stays
        action = e.action if trust == "block" else "challenge"
        wanted.add(e.target)
        if (current is not None and current.action == action
                and abs(current.expires - until) < 1.0):
            continue   # unchanged
        decisions.add(e.target, action, until - now, f"{mine} {e.reason}"[:200], "ally", now)
        out.added += 1
    # What this ally no longer says ends here too.
    for d in decisions.all(now):
        if d.origin == "ally" and d.reason.startswith(mine) and d.target not in wanted:
            decisions.delete(d.target)
            out.removed += 1
    return out
