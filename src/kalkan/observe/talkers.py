"""Top talkers right now: bounded Space-Saving sketches of prefixes, user agents and paths, fed
by a sample of the answered requests and aged so that they describe the last minute or so.

Space-Saving (Metwally et al.) keeps at most `capacity` counters: a new key takes over the smallest
counter and inherits its count as its possible overestimate, so any key seen more than
total / capacity times is in the table whatever an attacker sends, and memory never grows.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from kalkan.memo import Memo


@dataclass(frozen=True, slots=True)
class Talker:
    key: str
    count: float     # estimated requests (already scaled up by the sampling rate)
    error: float     # how much of `count` may be overestimate
    share: float     # of all sampled requests in the window


class SpaceSaving:
    """At most `capacity` keys with counts; `add` is O(1) amortised, evictions included.

    Evicting takes the first key (in insertion order) holding the smallest count. One scan
    finds every key at that floor (`_lows`); later evictions take them in turn, skipping any
    that has been counted since. Counts only grow between scans and a new key enters above the
    floor, so a key still at the floor is still a smallest one. A flood of new keys (every
    sample a new client) then costs one scan per `capacity` evictions, not one per sample.
    """

    __slots__ = ("capacity", "counts", "errors", "total", "_lows", "_low_at", "_floor")

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError("a Space-Saving sketch needs a capacity of at least 1")
        self.capacity = capacity
        self.counts: dict[str, float] = {}
        self.errors: dict[str, float] = {}
        self.total = 0.0
        self._lows: list[str] = []   # keys at the floor when last scanned, in insertion order
        self._low_at = 0             # the next of them to try
        self._floor = 0.0

    def add(self, key: str, weight: float = 1.0) -> None:
        self.total += weight
        counts = self.counts
        if key in counts:
            counts[key] += weight
            return
        if len(counts) < self.capacity:
            counts[key] = weight
            self.errors[key] = 0.0
            return
        victim = self._lowest()
        floor = counts.pop(victim)
        del self.errors[victim]
        counts[key] = floor + weight
        self.errors[key] = floor

    def _lowest(self) -> str:
        """The first key holding the smallest count (the table is full, so there is one)."""
        counts, lows, floor = self.counts, self._lows, self._floor
        at = self._low_at
        while at < len(lows):
            key = lows[at]
            at += 1
            if counts.get(key, -1.0) == floor:
                self._low_at = at
                return key
        floor = self._floor = min(counts.values())
        lows = self._lows = [k for k, c in counts.items() if c == floor]
        self._low_at = 1
        return lows[0]

    def decay(self, factor: float) -> None:
        """Scale every count down (0 < factor < 1): older requests weigh less; counts that fade
        below a hundredth of a request are dropped."""
        self._lows, self._low_at = [], 0   # the floor moves: the next eviction scans again
        for key in list(self.counts):
            c = self.counts[key] * factor
            if c < 0.01:
                del self.counts[key]
                del self.errors[key]
            else:
                self.counts[key] = c
                self.errors[key] *= factor
        self.total *= factor

    def top(self, n: int, scale: float = 1.0) -> list[Talker]:
        total = self.total or 1.0
        ranked = sorted(self.counts.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return [Talker(k, c * scale, self.errors[k] * scale, c / total) for k, c in ranked]

    def __len__(self) -> int:
        return len(self.counts)


def prefix_of(client: str, v4: int = 24, v6: int = 64) -> str:
    """The network a client address belongs to (IPv4 /24, IPv6 /64 by default); text that is
    not an address (a Unix socket peer, '-') is kept as it is."""
    if v4 == 24 and client.count(".") == 3 and ":" not in client:
        # The common case without the ipaddress module (tens of microseconds less per sample).
        head, _, last = client.rpartition(".")
        if last.isdigit() and all(p.isdigit() and int(p) < 256 for p in client.split(".")):
            return f"{head}.0/24"
    try:
        addr = ipaddress.ip_address(client)
    except ValueError:
        return client
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    bits = v4 if addr.version == 4 else v6
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


# Longest text kept as a key: a user agent or path of a flood can be any length.
_MAX_KEY = 200


class Talkers:
    """The three sketches, fed one sampled request at a time; `every` says how many answered
    requests one sample stands for, so estimates are scaled back to requests."""

    __slots__ = ("addresses", "agents", "every", "halflife", "paths", "prefixes", "_nets",
                 "_seed", "_v4", "_v6")

    def __init__(self, every: int = 16, capacity: int = 64, halflife: float = 30.0,
                 prefix_v4: int = 24, prefix_v6: int = 64) -> None:
        if every < 1:
            raise ValueError("the sampling interval must be at least 1")
        self.every = every
        self.halflife = halflife
        self.prefixes = SpaceSaving(capacity)
        self.addresses = SpaceSaving(capacity)
        self.paths = SpaceSaving(capacity)
        self.agents = SpaceSaving(capacity)
        self._v4, self._v6 = prefix_v4, prefix_v6
        self._seed = random.getrandbits(31)
        self._nets: Memo[str, str] = Memo(4096)  # address → its prefix, for the last few thousand

    def restart(self) -> int:
        """Where a feeder's count starts after a sample: a random offset within half the
        interval either way, so the mean interval stays `every` while traffic with a period (a
        client that sends every other request) cannot always fall between two samples."""
        half = self.every // 2
        # A linear congruential step: random enough to break a period, far cheaper than random.
        self._seed = (self._seed * 1103515245 + 12345) & 0x7FFFFFFF
        return (self._seed >> 8) % (2 * half + 1) - half

    def request(self, client: str, path: str, weight: float = 1.0) -> None:
        """One sampled answered request (the recorder calls this for every `every`-th)."""
        self.addresses.add(client[:_MAX_KEY], weight)
        net = self._nets.table.get(client)
        if net is None:  # bounded: a botnet's addresses
            net = self._nets.put(client, prefix_of(client, self._v4, self._v6))
        self.prefixes.add(net, weight)
        self.paths.add(path[:_MAX_KEY], weight)

    def agent(self, user_agent: str, weight: float = 1.0) -> None:
        """One sampled user agent (the defence samples these: it is where they are read)."""
        self.agents.add(user_agent[:_MAX_KEY] or "(none)", weight)

    def age(self, seconds: float) -> None:
        """Called about once a second: halve every count each `halflife` seconds."""
        factor = 0.5 ** (seconds / self.halflife)
        for sketch in (self.prefixes, self.addresses, self.paths, self.agents):
            sketch.decay(factor)

    def snapshot(self, n: int = 10) -> dict[str, list[dict[str, object]]]:
        """The top `n` of each, as JSON-able rows: key, estimated requests in the window
        (about `halflife` / ln 2 seconds of traffic), how much may be overestimate, share."""
        out: dict[str, list[dict[str, object]]] = {}
        for name, sketch in (("prefixes", self.prefixes), ("addresses", self.addresses),
                             ("paths", self.paths), ("agents", self.agents)):
            out[name] = [{"key": t.key, "requests": round(t.count), "error": round(t.error),
                          "share": round(t.share, 4)} for t in sketch.top(n, self.every)]
        return out
