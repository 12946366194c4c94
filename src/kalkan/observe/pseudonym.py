"""Pseudonymous client addresses for logs and reports that leave the newsroom: a keyed hash
(HMAC-SHA256) of the whole address, shown after the network prefix it came from (IPv4 /24,
IPv6 /48), so "many addresses of one /24" stays readable while no single reader can be named
without the key (docs/analyze.md says what this does and does not protect)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from pathlib import Path

from kalkan.statefiles import load_or_create_secret

# Hex digits of the HMAC kept: 32 bits. Within one /24 (256 addresses) or one /48 a collision is
# unlikely (about n²/2³³ for n addresses shown), and a short tag stays readable in a table.
TAG_HEX = 8
MIN_KEY_BYTES = 16  # shorter keys make a dictionary of a /24's 256 addresses too cheap to test


class PseudonymKeyError(ValueError):
    """The key file or variable is missing, unreadable or too short."""


def pseudonymize(address: str, key: bytes) -> str:
    """`203.0.113.7` → `203.0.113.x-1a2b3c4d`; `2001:db8:1:2::7` → `2001:db8:1::x-5e6f7a8b`.

    The tag is HMAC-SHA256(key, canonical address) truncated to 8 hex digits: the same address
    and key give the same tag (so one client's requests stay linked within and across reports
    made with that key), and without the key the tag says nothing about the host part. An
    IPv4-mapped IPv6 address is treated as the IPv4 address it carries. Anything that is not
    an address (a Unix socket's "-") keeps no prefix: `x-<tag>`.
    """
    text = address.strip()
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return f"x-{_tag(text, key)}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    canonical = str(ip)
    if isinstance(ip, ipaddress.IPv4Address):
        prefix = canonical.rsplit(".", 1)[0] + ".x"
    else:
        net = ipaddress.IPv6Network((int(ip) >> 80 << 80, 48))
        prefix = str(net.network_address).removesuffix("::") + "::x"
    return f"{prefix}-{_tag(canonical, key)}"


def _tag(text: str, key: bytes) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:TAG_HEX]


def load_key(path: str | None = None, env: str | None = None) -> bytes:
    """The key from a file (its bytes, surrounding whitespace dropped) or an environment
    variable; at least 16 bytes. Raises PseudonymKeyError naming the file or variable."""
    if path is not None:
        try:
            key = Path(path).read_bytes().strip()
        except OSError as exc:
            raise PseudonymKeyError(f"pseudonym key file {path}: {exc.strerror or exc}") from exc
        where = f"pseudonym key file {path}"
    elif env is not None:
        value = os.environ.get(env)
        if value is None:
            raise PseudonymKeyError(f"pseudonym key variable {env} is not set")
        key = value.strip().encode("utf-8")
        where = f"pseudonym key variable {env}"
    else:
        raise PseudonymKeyError("no pseudonym key given")
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(f"{where} holds {len(key)} bytes; at least {MIN_KEY_BYTES} are "
                                "needed (e.g. `head -c 32 /dev/urandom | base64 > KEYFILE`)")
    return key


def log_key(key_file: str | None, state_dir: str) -> bytes:
    """The access log's key: the file named (access_log.pseudonym_key_file), else
    STATE_DIR/log-pseudonym.key, made on first start. Raises PseudonymKeyError for a named
    file that is missing or too short (check-config says so before a start)."""
    if key_file:
        return load_key(key_file)
    return load_or_create_secret(Path(state_dir) / "log-pseudonym.key", "log pseudonym key",
                                 "set access_log.pseudonym_key_file").encode("ascii")
