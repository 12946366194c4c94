"""What a request head may say: the per-field checks, framing (RFC 9112 §6.3) and Host
canonicalization, as pure functions of a `Request` that raise `BadRequest`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from kalkan.edge.request import Request
from kalkan.memo import Memo

ALLOW = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"


class BadRequest(Exception):
    """A request the edge will not interpret: answered with `status`, then the connection closed."""

    def __init__(self, status: int, detail: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


# unreserved / sub-delims / pct-encoded of a reg-name, plus ":" and "[]" for ports and IPv6.
_HOST_CHARS = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               b"-._~!$&'()*+,;=%:[]")
# Host values seen lately → (canonical name, port or None); bounded, any client can send any Host.
_HOSTS: Final[Memo[bytes, tuple[str, int | None]]] = Memo(1024)
_DEFAULT_PORT: Final = {"http": 80, "https": 443}
# Fields a Connection header may not make us drop: the edge frames and routes by them itself.
_NOT_HOP_BY_HOP = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                             # the connection options themselves, not fields to remove
                             b"keep-alive", b"close"})
def canonical_host(value: bytes) -> tuple[str, int | None]:
    """RFC 3986 host [":" port] → (lowercase name without a trailing dot, port); BadRequest if
    it is not one. The cache key and the Host sent to the origin are both built from this, so
    `NEWS.TEST`, `news.test.` and `news.test:80` are one site, fetched as one site."""
    known = _HOSTS.table.get(value)
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
    return _HOSTS.put(value, (name, port))


# -- noting fields as the parser hands them over --------------------------------------------
# One small function per field the edge decides on (framing, Host, the cache, the defence). The
# parser's header callback runs for every field of every request: looking a name up in a dict
# and calling its noter costs less than comparing it against each field name in turn.
# (llhttp strips the whitespace before a value but keeps what follows it, which is no part of the
# value either, RFC 9110 §5.5: the noters that compare or parse values strip it.)
Noter = Callable[[Request, bytes], None]


def _trimmed(value: bytes) -> bytes:
    """`value` without the spaces and tabs llhttp leaves at its end. Nearly every value has
    none: two byte reads instead of a call of `rstrip` (a generic method call, compiled)."""
    n = len(value)
    if n and (value[n - 1] == 32 or value[n - 1] == 9):
        return value.rstrip(b" \t")
    return value


def _content_length(req: Request, value: bytes) -> None:
    value = _trimmed(value)
    req.length_fields += 1
    if not value.isdigit() or len(value) > 18:
        raise BadRequest(400, "Invalid Content-Length.")
    req.content_length = int(value)


def _transfer_encoding(req: Request, value: bytes) -> None:
    value = _trimmed(value)
    te = req.transfer_encoding
    req.transfer_encoding = value if te is None else te + b"," + value


class _LastHost:
    """The Host value of the last request and what it meant: an edge serves one site or a few,
    so nearly every request repeats it (a bytes comparison instead of hashing a new object)."""

    __slots__ = ("value", "known")

    def __init__(self) -> None:
        # A valid value to begin with (b"" would skip canonical_host's refusal of an empty Host).
        self.value = b"localhost"
        self.known: tuple[str, int | None] = ("localhost", None)


_LAST_HOST: Final = _LastHost()


def _host(req: Request, value: bytes) -> None:
    req.host_fields += 1
    last = _LAST_HOST
    if value == last.value:
        host, port = last.known
    else:
        known = _HOSTS.table.get(value)  # canonical_host's memo, looked at first: one call fewer
        host, port = known if known is not None else canonical_host(value.rstrip(b" \t"))
        last.value, last.known = value, (host, port)
    req.host = host if port is None or port == _DEFAULT_PORT.get(req.scheme) \
        else f"{host}:{port}"


def _expect(req: Request, value: bytes) -> None:
    if value.rstrip(b" \t").lower() != b"100-continue":
        raise BadRequest(417, "Only 'Expect: 100-continue' is understood.")
    req.expect_continue = True


def _authorization(req: Request, value: bytes) -> None:
    req.authorization = True


def _cookie(req: Request, value: bytes) -> None:
    value = _trimmed(value)
    req.cookie = value if req.cookie is None else req.cookie + b"; " + value


def _user_agent(req: Request, value: bytes) -> None:
    value = _trimmed(value)
    req.user_agent = value if req.user_agent is None else req.user_agent + b", " + value


def _referer(req: Request, value: bytes) -> None:
    value = _trimmed(value)
    req.referer = value if req.referer is None else req.referer + b", " + value


def _forwarded_for(req: Request, value: bytes) -> None:
    value = _trimmed(value)
    req.xff = value if req.xff is None else req.xff + b", " + value


def _connection(req: Request, value: bytes) -> None:
    value = _trimmed(value)
    req.connection = value if req.connection is None else req.connection + b"," + value


def _conditional(req: Request, value: bytes) -> None:
    req.conditional = True


# The fields the edge notes, by lowercase name → a code: the commonest first (`note_coded`).
FIELD_CODES: Final[dict[bytes, int]] = {
    b"host": 1, b"user-agent": 2, b"cookie": 3, b"connection": 4, b"referer": 5,
    b"x-forwarded-for": 6, b"content-length": 7, b"transfer-encoding": 8, b"expect": 9,
    b"authorization": 10, b"if-none-match": 11, b"if-modified-since": 11,
}
_BY_CODE: Final[tuple[Noter, ...]] = (
    _host, _user_agent, _cookie, _connection, _referer, _forwarded_for, _content_length,
    _transfer_encoding, _expect, _authorization, _conditional)
NOTERS: dict[bytes, Noter] = {name: _BY_CODE[code - 1] for name, code in FIELD_CODES.items()}
# Field names as clients spell them, by length: (spelling, code) pairs, code 0 for a field the
# edge does not note. Browsers send a few dozen spellings; comparing a name with those of its
# length (bytes equality tests the first byte, then memcmp) costs a fraction of hashing a new
# bytes object for a dictionary lookup, on every field of every request.
_LONGEST: Final = max(len(name) for name in FIELD_CODES)  # a longer name is never noted
_SPELLINGS: Final[list[list[tuple[bytes, int]]]] = [[] for _ in range(_LONGEST + 1)]
_SPELLINGS_PER_LENGTH: Final = 16  # any client can invent names: the lists stay short


def field_code(name: bytes) -> int:
    """The code of the field `name` (any spelling), 0 if the edge does not note it."""
    n = len(name)
    if n > _LONGEST:
        return 0
    for spelling, code in _SPELLINGS[n]:
        if name == spelling:
            return code
    return _learn_spelling(name)


def _learn_spelling(name: bytes) -> int:
    code = FIELD_CODES.get(name.lower(), 0)
    spellings = _SPELLINGS[len(name)]
    if len(spellings) >= _SPELLINGS_PER_LENGTH:
        spellings.clear()  # invented spellings churn this length's list; browsers' come back
    spellings.append((name, code))
    return code


def note_coded(req: Request, code: int, value: bytes) -> None:
    """Note a field by its code (> 0). The four every browser sends are direct calls: a noter
    looked up as an object and called costs a generic call, compiled, on every field."""
    if code == 1:
        _host(req, value)
    elif code == 2:
        _user_agent(req, value)
    elif code == 3:
        _cookie(req, value)
    elif code == 4:
        _connection(req, value)
    else:
        _BY_CODE[code - 1](req, value)


def note_field(req: Request, name: bytes, value: bytes) -> None:
    """Note one field by its lowercase `name` (for callers that have one; the HTTP/1.1 reader
    goes through `field_code`)."""
    noter = NOTERS.get(name)
    if noter is not None:
        noter(req, value)


PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade",
                               b"Upgrade"})


def drop_connection_listed(req: Request) -> None:
    """Remove the fields the Connection header names (RFC 9110 §7.6.1), before anything reads
    them: the origin never sees them, so the cache key, Vary and the session check must not
    either (else a variant fetched without `Accept-Language` is stored as the `ru` one)."""
    connection = req.connection
    assert connection is not None
    if connection in PLAIN_CONNECTION:
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
    if b"referer" in names:
        req.referer = None
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


# Origin-form targets seen lately → (path, query); bounded, any client can send any target.
_TARGETS: Final[Memo[bytes, tuple[str, str]]] = Memo(1024)


def parse_target(req: Request, target: bytes) -> None:
    """Split an origin-form target into `req.path` and `req.query`; any other form: 400."""
    known = _TARGETS.table.get(target)
    if known is not None:
        req.path, req.query = known
    elif target[:1] == b"/" and target.find(b"#") < 0:
        path, _, query = target.partition(b"?")
        req.path, req.query = _TARGETS.put(  # bounded: random URLs in a flood
            target, (path.decode("latin-1"), query.decode("latin-1")))
    elif target == b"*" and req.method == "OPTIONS":
        req.path = "*"
    else:
        raise BadRequest(400, "Only origin-form request targets (/path) are accepted.")


def parser_reason(exc: Exception) -> str:
    """A short reason for a 400 from llhttp's error text."""
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text[:120]
