"""Who is attacking right now, for alerts and reports: the harshest standing decisions and the
recent clients nearest their rate limits, with why. Read-only and off the request path."""

from __future__ import annotations

from kalkan.defense.decisions import SEVERITY
from kalkan.defense.engine import Defense
from kalkan.defense.facts import RequestFacts, address_facts

# Recent addresses looked at (the newest of the defence's memo): bounds the time one report
# takes on the event loop during a flood from many addresses (~20 ms per 10,000 here).
SCAN = 10_000


def loudest(defense: Defense, now: float, n: int = 5) -> list[dict[str, str]]:
    """Up to `n` standing decisions (harshest, then newest) and up to `n` busiest clients (by
    how full their fullest rate meter is), each {target, why}."""
    rows: list[dict[str, str]] = []
    standing = [d for d in defense.decisions.all(now) if d.action != "allow"
                and not d.target.startswith("token:")]
    standing.sort(key=lambda d: (SEVERITY.get(d.action, 0), d.created), reverse=True)
    named = set()
    for d in standing[:n]:
        rows.append({"target": d.target, "why": f"{d.action} ({d.origin}): {d.reason}"})
        named.add(d.target)
    cfg = defense.config
    meters = list(defense.policy.meters)
    if not meters:
        return rows
    best: dict[str, tuple[float, str]] = {}
    read: set[tuple[str, str]] = set()   # (prefix, meter): the same for all its addresses
    for client in defense.recent_clients()[-SCAN:]:
        ip, version, prefix = address_facts(client, cfg.prefix_v4, cfg.prefix_v6)
        if not ip:
            continue
        facts = RequestFacts("GET", "", "/", "", "page", client, ip, version, prefix, "")
        for meter in meters:
            target = client if meter.per == "address" else prefix
            if meter.per != "address":
                if (target, meter.id) in read:
                    continue
                read.add((target, meter.id))
            level = defense.clients.level(meter.id, facts, now)
            if level <= 0:
                continue
            share = level / meter.limit
            if share > best.get(target, (0.0, ""))[0]:
                routes = f" on {', '.join(sorted(meter.routes))}" if meter.routes else ""
                best[target] = (share, f"{level:.0f} requests in {meter.period:g} s{routes}, "
                                       f"limit {meter.limit} per {meter.per}")
    busiest = sorted(((share, target, why) for target, (share, why) in best.items()
                      if target not in named), reverse=True)
    rows.extend({"target": target, "why": why} for _, target, why in busiest[:n])
    return rows
