"""TLS termination: certificates chosen by SNI, swapped on reload without touching open connections.

The listener's context only dispatches: its SNI callback points each new handshake at the current
context for the requested name, so a reload replaces the table and open connections keep theirs.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TLSConfigError(ValueError):
    """A certificate or key could not be loaded; the message names the file."""


def _names_in(cert_path: str) -> list[str]:
    """DNS names (and the CN) a certificate is for, read from the PEM file."""
    try:
        decoded = ssl._ssl._test_decode_cert(cert_path)  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"{cert_path}: cannot read certificate: {exc}") from None
    names = [value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS"]
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value not in names:
                names.append(value)
    return [n.lower() for n in names]


def _context(cert: str, key: str, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(alpn)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"{cert} / {key}: cannot load certificate and key: {exc}") from None
    return ctx


def pending_listener() -> ssl.SSLContext:
    """A listener context without a certificate, for a socket bound (not yet accepting) before
    ACME has issued one; `CertificateSet(..., listener=it)` later picks for every handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class CertificateSet:
    """The current SNI table; `reload` builds a new one and swaps it in only if all files load."""

    def __init__(self, certificates: list[dict[str, str]],
                 listener: ssl.SSLContext | None = None, http2: bool = False) -> None:
        self.certificates = certificates
        # Every context offers the same protocols: the SNI callback may swap in any of them.
        self.alpn = ["h2", "http/1.1"] if http2 else ["http/1.1"]
        self.default: ssl.SSLContext
        self.by_name: dict[str, ssl.SSLContext] = {}
        self.wildcards: dict[str, ssl.SSLContext] = {}
        self.reload()
        # `listener` is one made by `pending_listener` for a socket bound before any
        # certificate existed (ACME); it serves only through `_pick`, like this one.
        self.listener = listener or _context(certificates[0]["cert"], certificates[0]["key"],
                                             self.alpn)
        self.listener.sni_callback = self._pick

    def reload(self) -> None:
        by_name: dict[str, ssl.SSLContext] = {}
        wildcards: dict[str, ssl.SSLContext] = {}
        default = None
        for item in self.certificates:
            for path in (item["cert"], item["key"]):
                if not Path(path).is_file():
                    raise TLSConfigError(f"{path}: no such file")
            ctx = _context(item["cert"], item["key"], self.alpn)
            default = default or ctx
            for name in _names_in(item["cert"]):
                if name.startswith("*."):
                    wildcards.setdefault(name[2:], ctx)
                else:
                    by_name.setdefault(name, ctx)
        assert default is not None
        self.default, self.by_name, self.wildcards = default, by_name, wildcards

    def _pick(self, sslobj: ssl.SSLObject, server_name: str | None,
              _ctx: ssl.SSLContext) -> None:
        ctx = self.default
        if server_name:
            name = server_name.lower()
            ctx = self.by_name.get(name) or self.wildcards.get(name.partition(".")[2]) or ctx
        sslobj.context = ctx
