"""`read_request_head`: an HTTP/2 stream's header list into a `Request`, noted and checked as the
HTTP/1.1 reader notes and checks a head (the same `framing` rules), so the pipeline sees no
difference between the two protocols."""

from __future__ import annotations

from kalkan.config import LimitsConfig
from kalkan.edge.framing import (
    BadRequest,
    canonical_host,
    check_framing,
    check_method,
    note_field,
    parse_target,
)
from kalkan.edge.request import Request

__all__ = ["read_request_head"]

# The request fields `framing.note_field` notes (HTTP/2 forbids Connection and Transfer-Encoding:
# h2 refuses them before they get here).
_NOTED = frozenset({b"content-length", b"host", b"expect", b"authorization", b"user-agent",
                    b"referer", b"x-forwarded-for", b"if-none-match", b"if-modified-since"})


def read_request_head(req: Request, headers: list[tuple[bytes, bytes]], ended: bool,
                      limits: LimitsConfig) -> None:
    """Fill `req` from a stream's fields (`ended`: the stream has no body); BadRequest for what
    the HTTP/1.1 reader would refuse, or for what HTTP/2 adds (:authority against Host)."""
    if len(headers) > limits.max_headers:
        raise BadRequest(431, "The request has too many header fields.")
    authority: bytes | None = None
    target = b""
    cookies: list[bytes] = []
    fields = req.headers
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                req.method = value.decode("ascii", "replace")
            elif name == b":path":
                target = value
            elif name == b":authority":
                authority = value
            continue  # :scheme is https on this listener whatever it says
        if name == b"cookie":
            cookies.append(value)  # HTTP/2 may split one Cookie into several fields
            continue
        fields.append((name, value))
        if name in _NOTED:  # (h2 has refused names that are not lowercase)
            note_field(req, name, value)
    if cookies:
        req.cookie = b"; ".join(cookies)
        fields.append((b"cookie", req.cookie))
    if authority is not None:
        host, port = canonical_host(authority)
        site = host if port is None or port == 443 else f"{host}:{port}"
        if req.host_fields and req.host != site:  # (h2 already refuses any raw mismatch)
            raise BadRequest(400, "Host and :authority name different sites.")
        req.host, req.host_fields = site, 1
    if not req.host_fields:
        raise BadRequest(400, "An HTTP/2 request needs :authority or Host.")
    req.target = target
    check_method(req)
    if ended:
        req.content_length = None
    elif req.content_length is None:
        req.chunked = True  # the body's length is known only at its end
    check_framing(req, limits.max_body_bytes)
    parse_target(req, target)
