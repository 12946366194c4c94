"""What the edge sends the origin for a client request: which fields are forwarded, which the
edge sets itself (Host, X-Forwarded-*, X-Real-IP, Via, framing), as one pure function."""

from __future__ import annotations

from kalkan.edge import cache_policy as policy
from kalkan.edge.request import Request

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(name.encode() for name in policy.HOP_BY_HOP)
VIA: Header = (b"Via", b"1.1 kalkan")
# Request fields the edge manages itself when it fetches for the cache.
_DROP_ON_CACHE_FETCH = frozenset({b"if-none-match", b"if-modified-since", b"if-match",
                                  b"if-unmodified-since", b"if-range", b"range",
                                  b"accept-encoding"})
# Never forwarded from a client: the framing the edge redoes itself, the Host it canonicalizes,
# and fields an origin or a framework may believe about the client address, the URL or the
# method (a client setting X-Original-URL or X-HTTP-Method-Override would reach routes and
# methods the edge never saw, and its answer could be cached under another URL).
DROP_UPSTREAM = HOP_BY_HOP | {
    b"content-length", b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-forwarded-port", b"x-forwarded-server", b"x-forwarded-prefix", b"forwarded",
    b"x-real-ip", b"true-client-ip", b"x-client-ip", b"x-cluster-client-ip", b"cf-connecting-ip",
    b"fastly-client-ip", b"x-original-url", b"x-rewrite-url", b"x-original-host", b"x-host",
    b"x-http-method-override", b"x-http-method", b"x-method-override",
}
_DROP_FOR_CACHE = DROP_UPSTREAM | _DROP_ON_CACHE_FETCH


def upstream_headers(req: Request, cache_fetch: bool, default_host: str) -> list[Header]:
    """The fields of the request sent to the origin. A cache fetch is a plain GET with one
    normalized Accept-Encoding and no client conditionals (the edge adds its own validators).
    Fields the client's Connection header named were removed when it was parsed."""
    drop = _DROP_FOR_CACHE if cache_fetch else DROP_UPSTREAM
    headers = [(k, v) for k, v in req.headers if k.lower() not in drop]
    if cache_fetch:
        ae = req.header(b"accept-encoding")
        # One normalized Accept-Encoding, so Vary: Accept-Encoding yields two variants, not 200.
        if ae is not None and b"gzip" in ae.lower():
            headers.append((b"Accept-Encoding", b"gzip"))
    # The Host the cache key was built from, never the raw one: `NEWS.TEST.` and
    # `news.test:80` must not make the origin redirect and have that cached for everyone.
    headers.append((b"Host", req.host.encode("latin-1") if req.host_fields
                    else default_host.encode()))  # HTTP/1.0 without Host
    prior = req.xff  # every X-Forwarded-For field, in order, as the client address was read
    if prior is not None and req.client != req.peer:  # a trusted proxy's list, extended
        xff = prior + b", " + req.peer.encode()
    else:
        xff = req.client.encode()
    headers.append((b"X-Forwarded-For", xff))
    headers.append((b"X-Real-IP", req.client.encode()))
    headers.append((b"X-Forwarded-Proto", req.scheme.encode()))
    headers.append(VIA)
    if req.body is not None and not cache_fetch:
        # A cache fetch is a plain GET: a body a client attached to its GET is not sent.
        headers.append((b"Transfer-Encoding", b"chunked") if req.chunked
                       else (b"Content-Length", str(req.content_length).encode()))
    return headers


def vary_view(req: Request) -> dict[str, str]:
    """Request headers as Vary sees them, with Accept-Encoding normalized as it is upstream."""
    view = req.header_dict()
    ae = view.get("accept-encoding")
    if ae is not None:
        view["accept-encoding"] = "gzip" if "gzip" in ae.lower() else ""
    return view


def forwarded_as_framed(req: Request) -> bool:
    """Was the request's body sent upstream whole, exactly as its framing declared?

    Only then may the origin connection carry another request: any gap (a message the parser
    ended early, a body the client broke off) would make the origin read the next request as
    the rest of this body.
    """
    body = req.body
    if body is None:
        return True
    if not body.done or body.error is not None:
        return False
    return req.chunked or body.received == req.content_length
