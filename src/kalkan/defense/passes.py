"""How each pass is used: from how many addresses and how fast. A pass is bound to a prefix and a
user agent, so a botnet inside one /24 can earn one and share it; these limits make sharing it
cost a new proof-of-work soon after, while a reader's browser stays far below them.

A pass over a limit is not blocked: its token gets a challenge decision (engine.py), so whoever
holds it must earn a new pass. A reader misjudged this way solves one more challenge; a botnet
sharing a pass pays a proof-of-work per few hundred requests instead of one for the attack.
"""

from __future__ import annotations

from kalkan.memo import Memo

# Passes whose use is remembered; the oldest is forgotten first. At about 100 bytes each, the
# bound is a few megabytes.
_CAPACITY = 65536
# Seconds of requests a pass may send at once (a minute's worth), then per_minute a minute.
_BURST_S = 60.0


class _Usage:
    __slots__ = ("tat", "addresses")

    def __init__(self, now: float, ip: int) -> None:
        self.tat = now                  # GCRA theoretical arrival time (clients.py explains)
        self.addresses = [ip]           # distinct addresses seen, up to the limit


class PassUsage:
    """Per pass: distinct addresses (at most `max_addresses`) and a request rate (at most
    `per_minute` a minute, with a burst of as many). `note` says why a pass is over, or ""."""

    __slots__ = ("max_addresses", "per_minute", "_interval", "_usage")

    def __init__(self, max_addresses: int, per_minute: int) -> None:
        self.max_addresses = max_addresses
        self.per_minute = per_minute
        self._interval = 60.0 / per_minute
        self._usage: Memo[str, _Usage] = Memo(_CAPACITY)

    def __len__(self) -> int:
        return len(self._usage)

    def note(self, pass_id: str, ip: int, now: float) -> str:
        """Count one request made with this pass from this address; the reason it is over a
        limit ("" when it is not)."""
        usage = self._usage.table.get(pass_id)
        if usage is None:
            self._usage.put(pass_id, _Usage(now, ip))
            return ""
        addresses = usage.addresses
        if ip not in addresses:
            if len(addresses) >= self.max_addresses:
                return f"pass used from more than {self.max_addresses} addresses"
            addresses.append(ip)
        tat = usage.tat if usage.tat > now else now
        tat += self._interval
        if tat - now > _BURST_S:
            usage.tat = now + _BURST_S  # capped: a pass that slows down is forgiven soon
            return f"pass used for more than {self.per_minute} requests a minute"
        usage.tat = tat
        return ""

    def forget(self, pass_id: str) -> None:
        """A pass that met its decision: counted afresh if it is ever seen again."""
        self._usage.discard(pass_id)
