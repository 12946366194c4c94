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

from kalkan.addresses import AddressSet, parse_ip
from kalkan.memo import Memo

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_MAX = 107  # the spec's longest v1 line, CRLF included
# Longest v2 header accepted: the address block plus room for balancers' TLVs (AWS, GCP, Azure
# send well under 300 bytes). Anything longer is refused rather than buffered.
PROXY_HEADER_MAX = 2048


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
    version = 4 if parts[1] == b"TCP4" else 6
    source = _v1_address(parts[2], version)
    _v1_address(parts[3], version)
    for port in parts[4:]:
        # 1-5 digits without a leading zero (the spec's form), at most 65535.
        if not (port.isdigit() and len(port) <= 5 and int(port) <= 65535
                and (port == b"0" or port[:1] != b"0")):
            raise ProxyHeaderError("bad port in PROXY v1 line")
    return ProxyHeader(end + 2, source)


def _v1_address(text: bytes, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:  # UnicodeDecodeError included
        raise ProxyHeaderError("bad address in PROXY v1 line") from None
    if addr.version != version:
        raise ProxyHeaderError("PROXY v1 address does not match its family")
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            raise ProxyHeaderError("PROXY v1 address has a zone")
        return _v6(addr.packed)
    return str(addr)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    ver_cmd, fam, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY protocol version")
    total = 16 + length
    if total > PROXY_HEADER_MAX:
        raise ProxyHeaderError("PROXY v2 header too long")
    if len(data) < total:
        return None
    command = ver_cmd & 0x0F
    if command == 0x0:  # LOCAL: the balancer's own health check
        return ProxyHeader(total, None)
    if command != 0x1:
        raise ProxyHeaderError("unknown PROXY v2 command")
    family, transport = fam >> 4, fam & 0x0F
    if family > 0x3 or transport > 0x2:
        raise ProxyHeaderError("unknown PROXY v2 address family or transport")
    body = data[16:total]
    if family == 0x1:
        if length < 12:
            raise ProxyHeaderError("truncated PROXY v2 IPv4 address block")
        return ProxyHeader(total, socket.inet_ntop(socket.AF_INET, body[:4]))
    if family == 0x2:
        if length < 36:
            raise ProxyHeaderError("truncated PROXY v2 IPv6 address block")
        return ProxyHeader(total, _v6(body[:16]))
    # UNSPEC, or AF_UNIX (a balancer on the same host): no client address to report.
    return ProxyHeader(total, None)


def _v6(packed: bytes) -> str:
    """An IPv6 source as text; an IPv4-mapped one (dual-stack balancers) as plain IPv4."""
    addr = ipaddress.IPv6Address(packed)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


class TrustedProxies:
    """Decides whose X-Forwarded-For to believe, and finds the client address in it."""

    def __init__(self, cidrs: list[str]) -> None:
        self.networks = AddressSet.from_texts(cidrs)
        self._any = bool(cidrs)
        # the few balancers in front: asked on every request (bounded: any client connects)
        self._peers: Memo[str, bool] = Memo(1024)

    def __bool__(self) -> bool:
        return self._any

    def trusts(self, address: str) -> bool:
        known = self._peers.table.get(address)
        if known is None:
            known = self._peers.put(address, self.networks.contains_text(address))
        return known

    def client_from_xff(self, peer: str, xff: str | None) -> str:
        """Walk X-Forwarded-For from the right, skipping trusted hops; the first untrusted is it."""
        return self.client_and_ip(peer, xff, None)[0]

    def client_and_ip(self, peer: str, xff: str | None, peer_ip: tuple[int, int] | None
                      ) -> tuple[str, tuple[int, int] | None]:
        """`client_from_xff` with the client's parsed address ((version, int), as parse_ip
        gives it; `peer_ip` when the peer is the client): the defence needs it, and every hop
        is parsed here anyway."""
        if xff is None or not self.trusts(peer):
            return peer, peer_ip
        for hop in reversed(xff.split(",")):
            hop = hop.strip()
            parsed = parse_ip(hop)
            if parsed is None:
                break  # a garbled hop: stop believing anything left of it
            if not self.networks.contains(parsed[0], parsed[1]):
                return hop, parsed
            peer, peer_ip = hop, parsed
        return peer, peer_ip
