"""What a request head may say: the per-field checks, framing (RFC 9112 §6.3) and Host
canonicalization, as pure functions of a `Request` that raise `BadRequest`."""

from __future__ import annotations

from kalkan.edge.request import Request

ALLOW = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"


class BadRequest(Exception):
    """A request the edge will not interpret: answered with `status`, then the connection closed."""

    def __init__(self, status: int, detail: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


# The fields `note_field` looks at, by lowercase name.
NOTED_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"host", b"expect",
                          b"user-agent", b"x-forwarded-for",
                          b"if-none-match", b"if-modified-since", b"authorization", b"cookie",
                          b"connection"})
# unreserved / sub-delims / pct-encoded of a reg-name, plus ":" and "[]" for ports and IPv6.
_HOST_CHARS = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               b"-._~!$&'()*+,;=%:[]")
# Host values seen lately → (canonical name, port or None); bounded, any client can send any Host.
_HOSTS: dict[bytes, tuple[str, int | None]] = {}
_DEFAULT_PORT = {"http": 80, "https": 443}
# Fields a Connection header may not make us drop: the edge frames and routes by them itself.
_NOT_HOP_BY_HOP = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                             # the connection options themselves, not fields to remove
                             b"keep-alive", b"close"})
# Field names as clients spell them → the lowercase name if the edge notes that field, else b"".
# Browsers send a few dozen spellings: looked up once each instead of lower-cased per request.
NOTED_NAMES: dict[bytes, bytes] = {}


def noted_name(name: bytes) -> bytes:
    """The lowercase name of a field the edge notes (NOTED_FIELDS), or b""; memoized."""
    lname = name.lower()
    noted = lname if lname in NOTED_FIELDS else b""
    if len(NOTED_NAMES) >= 4096:
        NOTED_NAMES.clear()  # any client can invent names: keep the memo bounded
    NOTED_NAMES[name] = noted
    return noted


def canonical_host(value: bytes) -> tuple[str, int | None]:
    """RFC 3986 host [":" port] → (lowercase name without a trailing dot, port); BadRequest if
    it is not one. The cache key and the Host sent to the origin are both built from this, so
    `NEWS.TEST`, `news.test.` and `news.test:80` are one site, fetched as one site."""
    known = _HOSTS.get(value)
    if known is not None:
        return known
    # A Host with "/", "@", spaces... would make the cache key, redirects and the origin's
    # virtual host disagree about which site this is.
    if not value or value.translate(None, _HOST_CHARS):
        raise BadRequest(400, "Invalid Host header.")
    text = value.decode("ascii").lower()
    if text.startswith("["):  # an IPv6 literal
        end = text.find("]")
        name, rest = text[:end + 1], text[end + 1:]
        if end < 2 or (rest and not rest.startswith(":")):
            raise BadRequest(400, "Invalid Host header.")
    else:
        name, sep, rest = text.partition(":")
        rest = sep + rest
        if name.endswith("."):
            name = name[:-1]  # the absolute form of a DNS name is the same site
        if not name or name.startswith(".") or ".." in name:
            raise BadRequest(400, "Invalid Host header.")
    port: int | None = None
    digits = rest[1:]
    if digits:  # "host:" (an empty port) is allowed by RFC 3986 and means the default
        if not digits.isdigit() or len(digits) > 5 or not 0 < int(digits) < 65536:
            raise BadRequest(400, "Invalid port in the Host header.")
        port = int(digits)
    if len(_HOSTS) >= 1024:
        _HOSTS.clear()
    _HOSTS[value] = result = (name, port)
    return result


def note_field(req: Request, name: bytes, value: bytes) -> None:
    """Remember the fields that framing and the cache decide on, as the parser hands them over."""
    if name == b"content-length":
        req.length_fields += 1
        if not value.isdigit() or len(value) > 18:
            raise BadRequest(400, "Invalid Content-Length.")
        req.content_length = int(value)
    elif name == b"transfer-encoding":
        te = req.transfer_encoding
        req.transfer_encoding = value if te is None else te + b"," + value
    elif name == b"host":
        req.host_fields += 1
        host, port = canonical_host(value)
        req.host = host if port is None or port == _DEFAULT_PORT.get(req.scheme) \
            else f"{host}:{port}"
    elif name == b"expect":
        if value.lower() != b"100-continue":
            raise BadRequest(417, "Only 'Expect: 100-continue' is understood.")
        req.expect_continue = True
    elif name == b"authorization":
        req.authorization = True
    elif name == b"cookie":
        req.cookie = value if req.cookie is None else req.cookie + b"; " + value
    elif name == b"user-agent":
        req.user_agent = value if req.user_agent is None else req.user_agent + b", " + value
    elif name == b"x-forwarded-for":
        req.xff = value if req.xff is None else req.xff + b", " + value
    elif name == b"connection":
        req.connection = value if req.connection is None else req.connection + b"," + value
    else:
        req.conditional = True


_PLAIN_CONNECTION = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade",
                               b"Upgrade"})


def drop_connection_listed(req: Request) -> None:
    """Remove the fields the Connection header names (RFC 9110 §7.6.1), before anything reads
    them: the origin never sees them, so the cache key, Vary and the session check must not
    either (else a variant fetched without `Accept-Language` is stored as the `ru` one)."""
    connection = req.connection
    assert connection is not None
    if connection in _PLAIN_CONNECTION:
        return  # what nearly every client sends: nothing to remove
    names = {t.strip().lower() for t in connection.split(b",")} - _NOT_HOP_BY_HOP
    names.discard(b"")
    if not names:
        return
    req.headers = [(k, v) for k, v in req.headers if k.lower() not in names]
    if b"cookie" in names:
        req.cookie = None
    if b"user-agent" in names:
        req.user_agent = None
    if b"x-forwarded-for" in names:
        req.xff = None
    if b"authorization" in names:
        req.authorization = False
    if names & {b"if-none-match", b"if-modified-since"}:
        req.conditional = any(k.lower() in (b"if-none-match", b"if-modified-since")
                              for k, _ in req.headers)


def check_framing(req: Request, max_body: int) -> None:
    """Refuse any framing two parsers could read differently (RFC 9112 §6.3, smuggling)."""
    if req.length_fields > 1:
        raise BadRequest(400, "More than one Content-Length.")
    te = req.transfer_encoding
    if te is not None:
        if req.length_fields:
            raise BadRequest(400, "Both Content-Length and Transfer-Encoding.")
        if req.version == "1.0":  # RFC 9112 §6.1: HTTP/1.0 had no chunking; treat as faulty
            raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request.")
        if te.strip().lower() != b"chunked":
            raise BadRequest(400, "Only 'Transfer-Encoding: chunked' is accepted.")
        req.chunked = True
    if req.host_fields > 1:
        raise BadRequest(400, "More than one Host header.")
    if req.host_fields == 0 and req.version == "1.1":
        raise BadRequest(400, "An HTTP/1.1 request needs a Host header.")
    if req.content_length is not None and req.content_length > max_body:
        raise BadRequest(413, "The request body is larger than this site accepts.")
    if req.content_length == 0:
        req.content_length = None
    if req.expect_continue and not (req.content_length or req.chunked):
        req.expect_continue = False


def check_method(req: Request) -> None:
    """Refuse the versions and methods this edge does not speak."""
    if req.version not in ("1.1", "1.0"):
        raise BadRequest(505, "Only HTTP/1.0 and HTTP/1.1 are spoken here.")
    if req.method == "CONNECT":
        raise BadRequest(501, "CONNECT is not supported by this edge.")
    if req.method in ("TRACE", "TRACK"):
        # Echoing requests helps cross-site tracing; no news site needs it (nginx: 405).
        raise BadRequest(405, "TRACE is not allowed here.", [(b"Allow", ALLOW)])


def parse_target(req: Request, target: bytes) -> None:
    """Split an origin-form target into `req.path` and `req.query`; any other form: 400."""
    if target[:1] == b"/" and target.find(b"#") < 0:
        path, _, query = target.partition(b"?")
        req.path = path.decode("latin-1")
        req.query = query.decode("latin-1")
    elif target == b"*" and req.method == "OPTIONS":
        req.path = "*"
    else:
        raise BadRequest(400, "Only origin-form request targets (/path) are accepted.")


def parser_reason(exc: Exception) -> str:
    """A short reason for a 400 from llhttp's error text."""
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text[:120]
