"""IP addresses as (version, int) pairs and sets of networks, without `ipaddress` objects on the
hot path: the edge and the defence both ask "is this address in these networks?" per request."""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Iterable

_V4_MAPPED = 0xFFFF << 32   # ::ffff:0:0/96
# Bound once: parse_ip runs per request, and socket.AF_INET is an enum member looked up on the
# module each time.
_inet_pton = socket.inet_pton
_AF_INET: int = int(socket.AF_INET)
_AF_INET6: int = int(socket.AF_INET6)


def parse_ip(text: str) -> tuple[int, int] | None:
    """(4 or 6, the address as an int) for a literal address, None for anything else. An
    IPv4-mapped IPv6 address (a dual-stack socket's IPv4 reader) is the IPv4 address."""
    try:
        if ":" not in text:
            return 4, int.from_bytes(_inet_pton(_AF_INET, text), "big")
        value = int.from_bytes(_inet_pton(_AF_INET6, text), "big")
    except (OSError, ValueError):
        return None
    if value >> 32 == 0xFFFF:
        return 4, value & 0xFFFFFFFF
    return 6, value


def prefix_text(version: int, ip: int, bits: int) -> str:
    """The network of `bits` around an address, in CIDR form: `203.0.113.0/24`."""
    width = 32 if version == 4 else 128
    net = ip & ~((1 << (width - bits)) - 1)
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, net.to_bytes(width // 8, 'big'))}/{bits}"


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`203.0.113.7`, `203.0.113.0/24` or `2001:db8::/32` (host bits are ignored)."""
    return ipaddress.ip_network(str(text).strip(), strict=False)


class AddressSet:
    """Addresses and CIDRs, merged into sorted intervals per IP version; lookup by bisection."""

    __slots__ = ("_v4", "_v6", "size")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        nets = list(networks)
        for net in nets:
            if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 \
                    and int(net.network_address) >> 32 == 0xFFFF:
                # ::ffff:a.b.c.d/120 names IPv4 addresses, and parse_ip reads those as IPv4
                first = int(net.network_address) & 0xFFFFFFFF
                spans[4].append((first, first + net.num_addresses - 1))
                continue
            spans[net.version].append((int(net.network_address), int(net.broadcast_address)))
        self._v4 = self._merge(spans[4])
        self._v6 = self._merge(spans[6])
        self.size = len(nets)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> AddressSet:
        return cls(parse_network(t) for t in texts)

    @staticmethod
    def _merge(spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        starts: list[int] = []
        ends: list[int] = []
        for lo, hi in sorted(spans):
            if ends and lo <= ends[-1] + 1:
                ends[-1] = max(ends[-1], hi)
            else:
                starts.append(lo)
                ends.append(hi)
        return starts, ends

    def contains(self, version: int, ip: int) -> bool:
        starts, ends = self._v4 if version == 4 else self._v6
        i = bisect.bisect_right(starts, ip)
        return i > 0 and ip <= ends[i - 1]

    def overlaps(self, version: int, first: int, last: int) -> bool:
        """Whether any address from `first` to `last` (a network's span) is in the set."""
        starts, ends = self._v4 if version == 4 else self._v6
        i = bisect.bisect_right(starts, last)
        return i > 0 and ends[i - 1] >= first

    def contains_text(self, address: str) -> bool:
        parsed = parse_ip(address)
        return parsed is not None and self.contains(*parsed)

    def __bool__(self) -> bool:
        return bool(self._v4[0]) or bool(self._v6[0])
