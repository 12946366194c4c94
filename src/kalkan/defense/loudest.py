"""Who is attacking right now, for alerts and reports: the harshest standing decisions and the
recent clients nearest their rate limits, with why. Read-only, off the request path, and
bounded in time: it runs on the event loop once per attack start."""

from __future__ import annotations

import time
from collections.abc import Iterable

from kalkan.defense.clients import ClientTable, Meter
from kalkan.defense.decisions import SEVERITY, Decisions
from kalkan.defense.facts import AddressFacts, RequestFacts

# Longest the scan of recent clients may hold the event loop (a flood from many addresses
# fills the client table's recent-client memo with up to 16,384 of them); the newest first.
BUDGET = 0.025
# A client under a tenth of every limit is a reader, not an attacker.
MIN_SHARE = 0.1


def _general(meters: Iterable[Meter]) -> list[Meter]:
    """The meters that count every route (the policy's general limits): one or two lookups per
    client instead of one per meter; all meters when the policy has no general one."""
    every = list(meters)
    general = [m for m in every if not m.routes]
    return general or every


def loudest(decisions: Decisions, clients: ClientTable, policy_meters: Iterable[Meter],
            addresses: AddressFacts, now: float, n: int = 5) -> list[dict[str, str]]:
    """Up to `n` standing decisions (harshest, then newest) and up to `n` busiest clients or
    prefixes (by how full their fullest rate meter is), each {target, why}."""
    rows: list[dict[str, str]] = []
    standing = [d for d in decisions.all(now) if d.action != "allow"
                and not d.target.startswith("token:")]
    standing.sort(key=lambda d: (SEVERITY.get(d.action, 0), d.created), reverse=True)
    named = set()
    for d in standing[:n]:
        rows.append({"target": d.target, "why": f"{d.action} ({d.origin}): {d.reason}"})
        named.add(d.target)
    meters = _general(policy_meters)
    if not meters:
        return rows
    best: dict[str, tuple[float, str]] = {}
    read: set[tuple[str, str]] = set()   # (prefix, meter): the same for all its addresses
    stop_at = time.perf_counter() + BUDGET
    for i, client in enumerate(reversed(clients.recent())):
        if i & 255 == 255 and time.perf_counter() > stop_at:
            break
        ip, version, prefix = addresses(client)
        if not ip:
            continue
        facts = RequestFacts("GET", "", "/", "", "page", client, ip, version, prefix, "")
        for meter in meters:
            target = client if meter.per == "address" else prefix
            if meter.per != "address":
                if (target, meter.id) in read:
                    continue
                read.add((target, meter.id))
            level = clients.level(meter.id, facts, now)
            share = level / meter.limit
            if share >= MIN_SHARE and share > best.get(target, (0.0, ""))[0]:
                routes = f" on {', '.join(sorted(meter.routes))}" if meter.routes else ""
                best[target] = (share, f"{level:.0f} requests in {meter.period:g} s{routes}, "
                                       f"limit {meter.limit} per {meter.per}")
    busiest = sorted(((share, target, why) for target, (share, why) in best.items()
                      if target not in named), reverse=True)
    rows.extend({"target": target, "why": why} for _, target, why in busiest[:n])
    return rows
