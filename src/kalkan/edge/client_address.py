"""The real client address: PROXY protocol v1/v2 headers and X-Forwarded-For from trusted peers.

Sans-IO: `parse_proxy_header` looks at the first bytes of a connection and says how many belong to
the PROXY header and which address they carry; `TrustedProxies` picks the client out of
X-Forwarded-For.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_MAX = 107  # the spec's longest v1 line, CRLF included


class ProxyHeaderError(ValueError):
    """The connection did not start with a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    consumed: int           # bytes of the stream that were the header
    client: str | None      # None for LOCAL / UNKNOWN (health checks): keep the socket peer


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY v1 or v2 header at the start of `data`; None means "need more bytes"."""
    if data.startswith(PROXY_V2_SIGNATURE[: len(data)]) and len(data) < 16:
        return None
    if data.startswith(PROXY_V2_SIGNATURE):
        return _parse_v2(data)
    if b"PROXY "[: len(data)] == data[:6]:
        if len(data) < 6:
            return None
        return _parse_v1(data)
    raise ProxyHeaderError("connection did not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise ProxyHeaderError("PROXY v1 line too long")
        return None
    parts = data[:end].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(end + 2, None)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 line")
    try:
        addr = ipaddress.ip_address(parts[2].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyHeaderError("bad source address in PROXY v1 line") from None
    if (addr.version == 4) != (parts[1] == b"TCP4"):
        raise ProxyHeaderError("PROXY v1 address family mismatch")
    return ProxyHeader(end + 2, str(addr))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    ver_cmd, fam, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY protocol version")
    total = 16 + length
    if len(data) < total:
        return None
    command = ver_cmd & 0x0F
    if command == 0x0:  # LOCAL: the balancer's own health check
        return ProxyHeader(total, None)
    if command != 0x1:
        raise ProxyHeaderError("unknown PROXY v2 command")
    family = fam >> 4
    body = data[16:total]
    if family == 0x1 and length >= 12:
        return ProxyHeader(total, socket.inet_ntop(socket.AF_INET, body[:4]))
    if family == 0x2 and length >= 36:
        return ProxyHeader(total, socket.inet_ntop(socket.AF_INET6, body[:16]))
    if family == 0x0:
        return ProxyHeader(total, None)
    raise ProxyHeaderError("unsupported or truncated PROXY v2 address block")


class TrustedProxies:
    """Decides whose X-Forwarded-For to believe, and finds the client address in it."""

    def __init__(self, cidrs: list[str]) -> None:
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        hit = self._cache.get(address)
        if hit is None:
            try:
                ip = ipaddress.ip_address(address)
                hit = any(ip in net for net in self.networks)
            except ValueError:
                hit = False
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[address] = hit
        return hit

    def client_from_xff(self, peer: str, xff: str | None) -> str:
        """Walk X-Forwarded-For from the right, skipping trusted hops; the first untrusted is it."""
        if xff is None or not self.trusts(peer):
            return peer
        for hop in reversed([h.strip() for h in xff.split(",")]):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # a garbled hop: stop believing anything left of it
            if not self.trusts(hop):
                return hop
            peer = hop
        return peer
