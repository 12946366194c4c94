"""Which standing decisions a newsroom shares with its allies, and in what form: blocks and
challenges of attackers only (never an ally's entry passed on, never a pass token, never an
address or network that touches the allowlist, an `allow` decision or a crawler's published
ranges, never a reader's address that passed a challenge since), addresses gathered into their
prefix when several of one prefix stand (or always, with `prefixes_only`). No I/O: the
publisher signs what this returns."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable

from kalkan.addresses import AddressSet
from kalkan.alliance.feed import Entry
from kalkan.defense.decisions import SEVERITY, Decision

# A shared entry's action: what the publisher's action means to an ally.
_SHARED = {"block": "block", "drop": "block", "tarpit": "challenge", "challenge": "challenge"}
_NOT_SHARED_ORIGINS = frozenset({"ally"})   # an ally's word is its own to share
MAX_UNTIL = 86400.0     # an entry stands one day at most, however long the decision here


def shareable(decisions: Iterable[Decision], now: float, *, never: Iterable[AddressSet] = (),
              passed: Callable[[str], bool] = lambda _address: False,
              prefix_len: tuple[int, int] = (24, 64), gather_at: int = 3,
              prefixes_only: bool = False) -> list[Entry]:
    """The entries of a feed built from `decisions` (those standing at `now`)."""
    decisions = list(decisions)
    # What the operator allowed here stays out of what allies are told to refuse.
    allowed = AddressSet.from_texts(d.target for d in decisions
                                    if d.action == "allow" and d.expires > now
                                    and not d.target.startswith("token:"))
    keep_out = [*never, allowed]
    singles: dict[str, list[Decision]] = {}   # prefix text -> decisions on one address
    out: list[Entry] = []
    for d in decisions:
        if (d.expires <= now or d.action not in _SHARED or d.origin in _NOT_SHARED_ORIGINS
                or d.target.startswith("token:")):
            continue
        net = ipaddress.ip_network(d.target)
        if touches(keep_out, net):
            continue
        if net.num_addresses == 1:
            if passed(d.target):
                continue   # a reader behind that address proved itself since
            bits = prefix_len[0 if net.version == 4 else 1]
            singles.setdefault(str(net.supernet(new_prefix=bits)), []).append(d)
        else:
            out.append(_entry(d.target, [d], now))
    for prefix, members in singles.items():
        gathered = ipaddress.ip_network(prefix)
        if (prefixes_only or len(members) >= gather_at) and not touches(keep_out, gathered):
            out.append(_entry(prefix, members, now))
        elif not prefixes_only:
            out.extend(_entry(d.target, [d], now) for d in members)
    return sorted(out, key=lambda e: (-e.hits, e.target))


def touches(sets: list[AddressSet],
            net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether `net` has any address in one of `sets` (what no feed may name)."""
    first, last = int(net.network_address), int(net.broadcast_address)
    return any(s.overlaps(net.version, first, last) for s in sets)


def _entry(target: str, members: list[Decision], now: float) -> Entry:
    """One entry for `members` (one decision, or the addresses of one prefix): the mildest
    action among them (a prefix is blocked only if every address in it was), the earliest
    first seen, the latest end (a day at most)."""
    action = min((_SHARED[d.action] for d in members), key=lambda a: SEVERITY[a])
    until = max(now + MAX_UNTIL if math.isinf(d.expires) else min(d.expires, now + MAX_UNTIL)
                for d in members)
    reasons = sorted({d.reason for d in members})
    reason = reasons[0] if len(reasons) == 1 else f"{len(members)} addresses: {reasons[0]}"
    origins = {d.origin for d in members}
    return Entry(target, action, reason[:200], min(d.created for d in members), len(members),
                 until, origins.pop() if len(origins) == 1 else "rule")
