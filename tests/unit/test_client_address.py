"""The sans-IO PROXY protocol parser and the trusted X-Forwarded-For walk."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kalkan.edge.client_address import (
    PROXY_HEADER_MAX,
    PROXY_V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    TrustedProxies,
    parse_proxy_header,
)
from support import proxy_v2

REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"

VALID = {
    "v1-tcp4": (b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n", "192.0.2.1"),
    "v1-tcp6": (b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n", "2001:db8::1"),
    "v1-tcp6-mapped": (b"PROXY TCP6 ::ffff:192.0.2.9 ::1 1 2\r\n", "192.0.2.9"),
    "v1-port-zero": (b"PROXY TCP4 192.0.2.1 192.0.2.2 0 65535\r\n", "192.0.2.1"),
    "v1-unknown": (b"PROXY UNKNOWN\r\n", None),
    "v1-unknown-rest-ignored": (b"PROXY UNKNOWN whatever follows\r\n", None),
    "v2-ipv4": (proxy_v2("192.0.2.3"), "192.0.2.3"),
    "v2-ipv6": (proxy_v2("2001:db8::3"), "2001:db8::3"),
    "v2-ipv4-mapped": (proxy_v2("::ffff:192.0.2.4"), "192.0.2.4"),
    "v2-tlvs": (proxy_v2("192.0.2.5", tlvs=b"\x01\x00\x02h2" + b"\x20\x00\x05\x01abcd"),
                "192.0.2.5"),
    "v2-local": (proxy_v2(None, local=True), None),
    "v2-local-with-addresses": (proxy_v2("192.0.2.6", local=True), None),
    "v2-unspec": (proxy_v2(None), None),
    "v2-unix": (PROXY_V2_SIGNATURE + b"\x21\x31" + struct.pack("!H", 216) + bytes(216), None),
}


@pytest.mark.parametrize(("header", "client"), VALID.values(), ids=VALID.keys())
def test_valid_header(header: bytes, client: str | None) -> None:
    assert parse_proxy_header(header + REQUEST) == ProxyHeader(len(header), client)


@pytest.mark.parametrize(("header", "client"), VALID.values(), ids=VALID.keys())
def test_every_prefix_asks_for_more(header: bytes, client: str | None) -> None:
    for n in range(len(header)):
        assert parse_proxy_header(header[:n]) is None, n
    assert parse_proxy_header(header) == ProxyHeader(len(header), client)


INVALID = {
    "http": REQUEST,
    "tls": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    "lowercase": b"proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
    "v1-no-space": b"PROXYTCP4\r\n",
    "v1-bad-family": b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",
    "v1-family-mismatch": b"PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n",
    "v1-dest-mismatch": b"PROXY TCP4 192.0.2.1 2001:db8::2 1 2\r\n",
    "v1-bad-source": b"PROXY TCP4 192.0.2.256 192.0.2.2 1 2\r\n",
    "v1-hostname": b"PROXY TCP4 localhost 192.0.2.2 1 2\r\n",
    "v1-zone": b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n",
    "v1-port-too-big": b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n",
    "v1-port-leading-zero": b"PROXY TCP4 192.0.2.1 192.0.2.2 080 2\r\n",
    "v1-port-sign": b"PROXY TCP4 192.0.2.1 192.0.2.2 +80 2\r\n",
    "v1-missing-port": b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
    "v1-extra-field": b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n",
    "v1-double-space": b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",
    "v1-non-ascii": b"PROXY TCP4 192.0.2.\xff 192.0.2.2 1 2\r\n",
    "v1-too-long": b"PROXY TCP4 " + b"1" * 200,
    "v2-version-1": PROXY_V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),
    "v2-command-2": PROXY_V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),
    "v2-family-4": PROXY_V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12),
    "v2-transport-3": PROXY_V2_SIGNATURE + b"\x21\x13\x00\x0c" + bytes(12),
    "v2-short-ipv4": PROXY_V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8),
    "v2-short-ipv6": PROXY_V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),
    "v2-too-long": PROXY_V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", PROXY_HEADER_MAX),
}


@pytest.mark.parametrize("data", INVALID.values(), ids=INVALID.keys())
def test_invalid_header(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


@given(st.binary(max_size=600))
def test_fuzz_any_bytes(data: bytes) -> None:
    """Whatever arrives, the parser answers "need more", a header, or ProxyHeaderError."""
    try:
        result = parse_proxy_header(data)
    except ProxyHeaderError:
        return
    if result is not None:
        assert 0 < result.consumed <= len(data)


@given(st.sampled_from([h for h, _ in VALID.values()]), st.integers(0, 40), st.binary(max_size=80))
def test_fuzz_corrupted_valid_headers(header: bytes, where: int, junk: bytes) -> None:
    """A valid header with bytes overwritten or cut short: never anything but those answers."""
    where = min(where, len(header))
    data = header[:where] + junk + header[where + len(junk):]
    try:
        result = parse_proxy_header(data)
    except ProxyHeaderError:
        return
    assert result is None or 0 < result.consumed <= len(data)


@given(st.sampled_from(list(VALID.values())), st.binary(max_size=200))
def test_fuzz_what_follows_is_not_consumed(item: tuple[bytes, str | None], rest: bytes) -> None:
    header, client = item
    assert parse_proxy_header(header + rest) == ProxyHeader(len(header), client)


@given(st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535))
def test_fuzz_v1_and_v2_agree(addr: object, sport: int, dport: int) -> None:
    v1 = f"PROXY TCP4 {addr} 127.0.0.1 {sport} {dport}\r\n".encode()
    v2 = proxy_v2(str(addr), source_port=sport, dest_port=dport)
    assert parse_proxy_header(v1).client == parse_proxy_header(v2).client == str(addr)  # type: ignore[union-attr]


# -- X-Forwarded-For from trusted proxies ----------------------------------------------------


TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8:f::/48"])


@pytest.mark.parametrize(("peer", "xff", "client"), [
    ("192.0.2.1", "198.51.100.1", "192.0.2.1"),          # untrusted peer: its XFF is ignored
    ("10.0.0.1", None, "10.0.0.1"),                       # trusted, but no XFF
    ("10.0.0.1", "198.51.100.1", "198.51.100.1"),
    ("10.0.0.1", "198.51.100.1, 10.0.0.2", "198.51.100.1"),        # trusted hops skipped
    ("10.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),         # forged left part ignored
    ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),                # all trusted: the leftmost
    ("10.0.0.1", "198.51.100.1, garbage, 10.0.0.2", "10.0.0.2"),   # stop at a garbled hop
    ("10.0.0.1", "198.51.100.1,,10.0.0.2", "10.0.0.2"),
    ("10.0.0.1", " 198.51.100.1 ", "198.51.100.1"),
    ("10.0.0.1", "198.51.100.1:4711", "10.0.0.1"),                 # ports are not addresses
    ("2001:db8:f::1", "2001:db8:1::1, 2001:db8:f::2", "2001:db8:1::1"),
])
def test_client_from_xff(peer: str, xff: str | None, client: str) -> None:
    assert TRUSTED.client_from_xff(peer, xff) == client


def test_trusts_and_bool() -> None:
    assert TRUSTED and not TrustedProxies([])
    assert TRUSTED.trusts("10.1.2.3") and TRUSTED.trusts("2001:db8:f:1::9")
    assert not TRUSTED.trusts("192.0.2.1") and not TRUSTED.trusts("not an address")


@given(st.text(max_size=200))
def test_fuzz_xff_never_raises(xff: str) -> None:
    client = TRUSTED.client_from_xff("10.0.0.1", xff)
    assert client == "10.0.0.1" or client in [h.strip() for h in xff.split(",")]
