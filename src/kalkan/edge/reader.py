"""The reading half of a client connection: bytes → `Request`s through httptools (llhttp).

`RequestReader` owns the parser and the state of the request being read (head size, trailers, a
body to read after an ignored Upgrade, input held back while the pipelining queue is full) and
the connection's reading `State`, from which the read deadline follows. What to do with a request
read, or refused, is `HttpConnection`'s (edge/connection.py).
"""

from __future__ import annotations

import time
from enum import IntEnum
from typing import TYPE_CHECKING, Final

import httptools

from kalkan.edge.flow import FlowControl
from kalkan.edge.framing import (
    PLAIN_CONNECTION,
    BadRequest,
    check_framing,
    check_method,
    drop_connection_listed,
    field_code,
    note_coded,
    parse_target,
    parser_reason,
)
from kalkan.edge.head import scan
from kalkan.edge.request import BodyStream, Request

if TYPE_CHECKING:
    from kalkan.config import LimitsConfig
    from kalkan.edge.clock import Clock
    from kalkan.edge.listener import Listener

_monotonic: Final = time.monotonic  # called from a C static, compiled: no lookup per request
SLICE: Final = 4096  # bytes of request heads parsed at a time (see `RequestReader._parse`)
LINGER_TIME = 2.0  # seconds input is still read (and dropped) after a last error response


class State(IntEnum):
    """What the connection waits for from the client; each has its own read deadline."""

    IDLE = 0       # between keep-alive requests (keepalive_timeout)
    HEAD = 1       # a request head, or a new connection's first (header_timeout)
    BODY = 2       # a request body (body_timeout, and at least body_min_rate)
    ANSWERING = 3  # nothing: the requests read are being answered (no read deadline)
    DONE = 4       # input is no longer parsed (refused, Upgrade, after a last request)
    LINGERING = 5  # the last answer is sent: input is read and dropped (LINGER_TIME)


# Module names for the hot path, Final: compiled code holds them (and the tables below) in C
# statics instead of looking each up in the module's dict at every use (~130 instructions).
IDLE: Final = State.IDLE
HEAD: Final = State.HEAD
BODY: Final = State.BODY
ANSWERING: Final = State.ANSWERING
DONE: Final = State.DONE
LINGERING: Final = State.LINGERING
# Method names as llhttp hands them over → str, so the common ones are not decoded per request.
_METHODS: Final = {m.encode(): m
                   for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
# What nearly every request is: these skip `check_method` (which refuses the others by name).
_PLAIN_METHODS: Final = frozenset({"GET", "HEAD", "POST"})


def timeouts(limits: LimitsConfig) -> tuple[float, ...]:
    """Seconds allowed in each `State`, indexed by it; 0: no deadline."""
    return (limits.keepalive_timeout, limits.header_timeout, limits.body_timeout, 0.0, 0.0,
            LINGER_TIME)


class _Refusal:
    """Stands in the pipelining queue for an answer owed once the one in progress is sent."""

    __slots__ = ("status", "detail", "headers")
    body = None  # looked at like a queued Request's when the connection is lost

    def __init__(self, status: int, detail: str,
                 headers: list[tuple[bytes, bytes]] | None) -> None:
        self.status = status
        self.detail = detail
        self.headers = headers


class _PrimedBody:
    """Parser callbacks for a parser primed with a stand-in head (an ignored Upgrade's body, see
    `_parse_upgrade_body`): the stand-in head is dropped, the body, its trailers
    and anything after it go to the reader (which then stops: the connection is closing)."""

    __slots__ = ("reader", "in_body", "begun")

    def __init__(self, reader: RequestReader) -> None:
        self.reader = reader
        self.in_body = False
        self.begun = False

    def on_message_begin(self) -> None:
        if self.begun:
            self.reader.on_message_begin()  # a request after the body: refused (closing)
        self.begun = True

    def on_headers_complete(self) -> None:
        self.in_body = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_body:
            self.reader.on_header(name, value)  # chunked trailers: counted there

    def on_chunk_header(self) -> None:
        self.reader.on_chunk_header()

    def on_body(self, body: bytes) -> None:
        self.reader.on_body(body)

    def on_message_complete(self) -> None:
        self.reader.on_message_complete()


class _StopParsing(Exception):
    """Raised by a parser callback: input after a request that ends the connection is not read."""


# What a parser call may raise that `_feed_failed` handles (anything else is a bug).
_PARSER_STOPS = (httptools.HttpParserUpgrade, httptools.HttpParserError, BadRequest)


class RequestReader:
    """Parser callbacks and the per-request state they fill; subclassed by `HttpConnection`."""

    # Slots: the parser callbacks touch these on every request, and past ~30 attributes a plain
    # instance dict stops sharing keys and every access gets slower.
    __slots__ = ("server", "limits", "clock", "scheme", "parser", "peer", "client", "client_ip",
                 "flow",
                 "state", "deadline", "_timeouts", "body_started", "body_base", "_req", "_url",
                 "_header_bytes", "_in_head", "_head_new", "_head_fed", "_head_limit",
                 "_in_trailers", "_careful", "_big_read", "_body_queued", "_queue", "_stash",
                 "_upgrade_body", "_closing", "_max_headers", "_max_header_bytes",
                 "_small_read", "trusts_peer", "_fresh", "_line", "draining")

    def __init__(self, server: Listener, scheme: str) -> None:
        self.server = server
        self.limits = server.config.limits
        self.draining = False  # stopping (EdgeServer.close): answers say `Connection: close`
        self.clock: Clock = server.clock
        self.scheme = scheme
        # Dropped while the connection idles between requests (see `idle_memory`), made again
        # by the next read: an idle keep-alive connection should cost little more than its socket.
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.peer = ""
        self.client = ""
        self.client_ip: tuple[int, int] | None = None  # parse_ip(client), once per connection
        self.flow = FlowControl()
        self.state = HEAD
        self.deadline = 0.0  # when the current state times out (0: never); see check_timers
        self._timeouts = server.timeouts
        self.body_started = 0.0  # body_min_rate: when, and at how many bytes, measuring began
        self.body_base = 0
        # Per-request state being parsed right now.
        self._req: Request | None = None
        self._url = b""
        self._header_bytes = 0
        # httptools buffers a header line until it ends (growing it by concatenation), so the
        # bytes of a head in progress are bounded before they reach it; see `_count_head`.
        self._in_head = False
        self._head_new = False
        self._head_fed = 0
        self._head_limit = server.head_limit
        self._in_trailers = False  # fields now are chunked trailers: counted, never kept
        # Fields are counted against the limits one by one only while this is set (see
        # `on_header`): a head that arrives whole in a read no larger than the limit cannot
        # break it unseen, and nearly every head does.
        self._careful = False
        self._big_read = False  # the input being parsed is larger than max_header_bytes
        self._body_queued = False  # the request whose body is arriving was handed on
        # Requests parsed but not yet answered, in order; the first may be in progress.
        # (A list: one per connection, held while idle; an empty deque costs ten times more.)
        self._queue: list[Request | _Refusal] = []
        # Input not yet parsed because the pipelining queue is full (fed again as it drains).
        self._stash: bytes | None = None
        # A request that asked for an Upgrade and carries a body: its body is still to come.
        self._upgrade_body: Request | None = None
        self.trusts_peer = False  # X-Forwarded-For believed: set once the peer is known
        self._max_headers = self.limits.max_headers  # read on every header field
        self._max_header_bytes = self.limits.max_header_bytes
        # Reads up to this size are parsed in one call, no slicing, no per-field counting.
        self._small_read = min(SLICE, self._max_header_bytes)
        self._closing = False  # a request said the connection ends after it
        self._fresh: bytes | None = None  # a read begun between requests (see `_version`)
        self._line: bytes | None = None  # that read, for the request at its start

    def _enter(self, state: State) -> None:
        """Move to `state`, with its read deadline from now."""
        self.state = state
        seconds = self._timeouts[state]
        self.deadline = self.clock.mono + seconds if seconds else 0.0

    # What the connection does with what is read (see HttpConnection).
    def _enqueue(self, req: Request) -> None:
        raise NotImplementedError

    def _refuse(self, status: int, detail: str,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
        raise NotImplementedError

    # -- feeding the parser ---------------------------------------------------------------------
    def _read(self, data: bytes) -> None:
        """Parse a read, or hold it back behind input already held back; count head bytes."""
        if self._stash is not None:
            self._stash += data  # the queue is full: parse in order once it drains
            return
        if len(data) <= self._small_read:
            # What nearly every read is: whole request heads, each read in one call (`_scanned`)
            # where `scan` takes it; llhttp reads the rest of the input from the first it does not.
            start = 0
            while self._req is None and not self._closing and self.state < DONE:
                end = _scanned(self, data, start)
                if end <= start:
                    if end < 0:
                        return
                    break
                if end == len(data):
                    return
                start = end
            if start:
                data = data[start:]
        parser = self.parser
        if parser is not None and len(data) <= self._small_read:
            # What nearly every other read is (one head): `_parse` and `_feed` in one call.
            self._big_read, self._fresh = False, (data if self._req is None else None)
            try:
                parser.feed_data(data)
            except _PARSER_STOPS as exc:
                if not _feed_failed(self, exc, data):
                    return
        elif not self._parse(data):
            return
        if self._in_head:
            # Count whole reads after the one that began this head: at most one read (256 KiB)
            # more than the limit is ever buffered, and body bytes before the head never count.
            if self._head_new:
                self._head_new = False
                self._head_fed = 0
            else:
                self._head_fed += len(data)
                if self._head_fed > self._head_limit:
                    self._refuse(431, "The request head is too large.")
                    return
            if not self._careful:
                _count_fields_so_far(self)

    def _parse(self, data: bytes | memoryview) -> bool:
        """Feed the parser, in slices while requests pile up; False once the input is refused.

        llhttp parses everything it is given, so one read of many small pipelined requests would
        queue them all. Fed a slice at a time, parsing stops when the queue is full; the rest
        waits in `_stash` (reading paused) until answers drain it.
        """
        size = len(data)
        if size > self._max_header_bytes:
            self._big_read = self._careful = True  # a whole over-long head may be in it
        else:
            self._big_read = False
        view = memoryview(data) if size > SLICE else None
        start = 0
        while True:
            if view is None:
                piece: bytes | memoryview = data
            else:
                end = start + _slice_size(self)
                piece = view[start:end]
            if not self._feed(piece):
                return False
            if view is None:
                return True
            start += len(piece)
            if start >= len(data):
                return True
            if len(self._queue) > self.limits.max_pipelined and self.state < DONE:
                self._stash = bytes(view[start:])
                self.flow.pause_reading("pipeline")
                return True
            if self.state >= DONE:
                return False

    def _feed(self, data: bytes | memoryview) -> bool:
        """One parser call, with its refusals; False if parsing must stop."""
        self._fresh = None  # slices, held-back input: the version is asked of the parser
        try:
            parser = self.parser
            if parser is None:
                parser = self.parser = httptools.HttpRequestParser(self)
            parser.feed_data(data)
        except _PARSER_STOPS as exc:
            return _feed_failed(self, exc, data)
        return True

    def _stop_parsing(self) -> None:
        """Read nothing more: what was asked is answered, then the connection closes."""
        self.state, self.deadline = DONE, 0.0
        self.flow.pause_reading("upgrade")

    # -- parser callbacks (per-request state) ---------------------------------------------------
    def on_message_begin(self) -> None:
        if self._closing:
            # The last request said the connection ends after it: what follows is not a request
            # of ours to interpret (and must never reach the origin as one).
            raise _StopParsing()
        self._line, self._fresh = self._fresh, None
        self._req = _new_request(self)
        self._url = b""
        self._header_bytes = 0
        self._in_head = self._head_new = True
        self._in_trailers = False
        self._careful = self._big_read
        # Every head gets its own deadline, also one that starts while an earlier pipelined
        # request is still being answered (else a slow head behind it would never time out).
        if self.state != HEAD:
            self.state = HEAD  # `_enter(HEAD)`, inlined: once per request
            self.deadline = self.clock.mono + self._timeouts[HEAD]

    def on_url(self, url: bytes) -> None:
        # Nearly always one call per request; a target split over reads is joined (bounded).
        url = self._url + url if self._url else url
        _check_target(self, url)
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Runs for every field of every request: the limits are checked per field only when a
        # head could break them unseen (`_careful`), else once the head is complete.
        if self._careful and self._counted(name, value):
            return
        req = self._req
        assert req is not None
        req.headers.append((name, value))
        code = field_code(name)
        if code:
            note_coded(req, code, value)

    def _counted(self, name: bytes, value: bytes) -> bool:
        """Count a field against the head limits; True for a chunked trailer field (counted,
        never forwarded nor believed)."""
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._max_header_bytes:
            raise BadRequest(431, "The request headers are too large.")
        if self._in_trailers:
            return True
        req = self._req
        assert req is not None
        if len(req.headers) >= self._max_headers:
            raise BadRequest(431, "The request has too many header fields.")
        return False

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None
        self._in_head = False
        self._in_trailers = True
        parser = self.parser
        assert parser is not None  # it is parsing this very head
        method = _method_name(parser.get_method())
        version, self._line = _version(self._line, len(method) + 1 + len(self._url), parser), None
        _head_read(self, req, method, self._url, version, parser.should_keep_alive(),
                   parser.should_upgrade())

    def on_chunk_header(self) -> None:
        # After the last chunk come trailer fields, which httptools buffers like a head.
        self._in_head = self._head_new = True

    def on_body(self, body: bytes) -> None:
        self._in_head = False
        req = self._req
        assert req is not None and req.body is not None
        if req.body.received + len(body) > self.limits.max_body_bytes:
            raise BadRequest(413, "The request body is larger than this site accepts.")
        self.deadline = self.clock.mono + self.limits.body_timeout
        req.body.push(body)
        if not self._body_queued:
            self._body_queued = True
            self._enqueue(req)

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        if req is self._upgrade_body:
            return  # ended early by llhttp: the body follows (see `_parse_upgrade_body`)
        if not req.keep_alive:
            self._closing = True
        self._req = None
        self._in_head = False
        if req.body is not None:
            req.body.finish()
            self.state, self.deadline = ANSWERING, 0.0
            if self._body_queued:
                return
        self._enqueue(req)


# -- a request's head, read by llhttp or by `scan` ----------------------------------------------
def _new_request(reader: RequestReader) -> Request:
    req = Request()
    req.peer = reader.peer
    req.client = reader.client
    req.client_ip = reader.client_ip
    req.scheme = reader.scheme
    return req


def _check_target(reader: RequestReader, target: bytes) -> None:
    """The request target (or as much of it as llhttp has handed over) is within the limit."""
    if len(target) > reader.limits.max_request_line:
        raise BadRequest(414, "The request target is too long.")


def _head_read(reader: RequestReader, req: Request, method: str, target: bytes, version: str,
               keep_alive: bool, upgrade: bool) -> None:
    """A whole head is read: check it, and wait for its body if any."""
    if len(req.headers) > reader._max_headers:
        raise BadRequest(431, "The request has too many header fields.")
    req.method = method
    req.target = target
    req.version = version
    req.keep_alive = keep_alive and not reader.draining
    req.started = _monotonic()
    # The checks below run only for the requests they could refuse.
    if req.version != "1.1" or (method != "GET" and method not in _PLAIN_METHODS):
        check_method(req)
    if req.length_fields or req.transfer_encoding is not None or req.host_fields != 1 \
            or req.expect_continue:
        check_framing(req, reader.limits.max_body_bytes)
    connection = req.connection
    if connection is not None and connection != b"keep-alive" \
            and connection not in PLAIN_CONNECTION:
        drop_connection_listed(req)
    if upgrade:
        # No WebSocket or h2c here. A server may ignore Upgrade (RFC 9110 §7.8): answer as
        # plain HTTP (the pipeline drops the hop-by-hop fields), then close. llhttp ends the
        # message here, before any body: `_feed` then reads the body itself.
        req.keep_alive = False
        if req.content_length or req.chunked:
            reader._upgrade_body = req
    parse_target(req, target)
    if reader.trusts_peer and req.xff is not None:
        req.client, req.client_ip = reader.server.trusted.client_and_ip(
            reader.client, req.xff.decode("latin-1"), reader.client_ip)
    if req.content_length or req.chunked:
        if req.chunked:
            reader._careful = True  # trailer fields may follow the body: counted, not kept
        flow = reader.flow
        req.body = BodyStream(lambda: flow.pause_reading("body"),
                              lambda: flow.resume_reading("body"))
        reader._enter(BODY)
        reader.body_started = reader.clock.mono
        reader.body_base = 0
        # Ask the origin only once the body has begun and its first bytes framed correctly
        # (a bad first chunk never reaches it), unless the client waits for 100 Continue.
        reader._body_queued = req.expect_continue
        if req.expect_continue:
            reader._enqueue(req)
    else:
        reader.state, reader.deadline = ANSWERING, 0.0


def _scanned(reader: RequestReader, data: bytes, start: int) -> int:
    """Read the head at `start` in one call (edge/head.py) and hand its request on, as llhttp's
    callbacks would; where the next request starts, or `start` if `scan` declined the head
    (llhttp reads it), or -1 if the request was refused."""
    scanned = scan(data, start)
    if scanned is None:
        return start
    method, target, fields, coded, end = scanned
    req = _new_request(reader)
    req.headers = fields
    try:
        _check_target(reader, target)
        for i in range(0, len(coded), 2):
            note_coded(req, coded[i + 1], fields[coded[i]][1])
        _head_read(reader, req, method, target, "1.1", True, False)
        if not req.keep_alive:
            reader._closing = True
        reader._enqueue(req)
    except BadRequest as exc:
        reader._refuse(exc.status, exc.detail, exc.headers)
        return -1
    return end


def _method_name(method: bytes) -> str:
    if method == b"GET":  # nearly every request: no lookup (it would hash a new object)
        return "GET"
    return _METHODS.get(method) or method.decode("ascii")


def _version(line: bytes | None, after_target: int, parser: httptools.HttpRequestParser) -> str:
    """The request's HTTP version. Asking the parser costs ~2,000 CPU instructions (it formats
    a new string with str.format), so a request at the very start of a read (`line`) is read
    there: llhttp took "METHOD SP target SP version CRLF" from it, so the version follows the
    target. A request anywhere else, or a line over two reads, fails the test (a target holds
    no space, so it cannot fake one) and the parser is asked."""
    # (A slice compared, not `startswith` from an offset: that is a generic call, ~1,000.)
    if line is not None and line[after_target:after_target + 11] == b" HTTP/1.1\r\n":
        return "1.1"
    return str(parser.get_http_version())


# -- the rare paths of reading, apart from the class that calls them ---------------------------
def _count_fields_so_far(reader: RequestReader) -> None:
    """A head continues in the next read: from now on its fields are counted one by one,
    starting with those already parsed."""
    reader._careful = True
    req = reader._req
    if req is None or reader._in_trailers:
        return
    headers = req.headers
    reader._header_bytes = sum(len(k) + len(v) + 4 for k, v in headers)
    if reader._header_bytes > reader._max_header_bytes:
        reader._refuse(431, "The request headers are too large.")
    elif len(headers) > reader._max_headers:
        reader._refuse(431, "The request has too many header fields.")


def _slice_size(reader: RequestReader) -> int:
    """A whole Content-Length body in one go (uploads stay fast); heads a slice at a time."""
    req = reader._req
    if req is not None and req.body is not None and not reader._in_head and not req.chunked \
            and req.content_length is not None:
        return max(SLICE, req.content_length - req.body.received)
    return SLICE


def _feed_failed(reader: RequestReader, exc: Exception, data: bytes | memoryview) -> bool:
    """What the parser (or a callback) raised: an ignored Upgrade's body to read, or the end
    of parsing (a refusal, or a request that ends the connection); False if parsing stops."""
    if isinstance(exc, httptools.HttpParserUpgrade):
        req = reader._upgrade_body
        if req is not None:
            # llhttp ends a message that asks for an Upgrade before its body (httptools
            # skips it). We ignore Upgrade, so the body is this request's: parse it.
            return _parse_upgrade_body(reader, req, data[exc.args[0]:])
        # After a request whose Upgrade we ignore (see on_headers_complete) llhttp parses
        # no more: that request is answered, then the connection closes.
        reader._stop_parsing()
        return False
    if isinstance(exc, BadRequest):
        reader._refuse(exc.status, exc.detail, exc.headers)
        return False
    # An HttpParserError; httptools wraps what a callback raised in HttpParserCallbackError.
    cause = exc.__context__
    if isinstance(cause, _StopParsing):
        reader._stop_parsing()
    elif isinstance(cause, BadRequest):
        reader._refuse(cause.status, cause.detail, cause.headers)
    else:
        reader._refuse(400, f"Malformed request: {parser_reason(exc)}.")
    return False


def _parse_upgrade_body(reader: RequestReader, req: Request, rest: bytes | memoryview) -> bool:
    """Read the body of a request whose Upgrade was ignored, with llhttp's own framing.

    A fresh parser is primed with a stand-in head carrying the same framing; its callbacks
    are ignored until the body starts. The connection closes after this request, so nothing
    after the body is parsed (see `_StopParsing`).
    """
    reader._upgrade_body = None
    reader.parser = httptools.HttpRequestParser(_PrimedBody(reader))
    framing = b"Transfer-Encoding: chunked" if req.chunked else \
        b"Content-Length: %d" % (req.content_length or 0)
    reader.parser.feed_data(b"PUT / HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % framing)
    reader._req = req
    return reader._feed(rest) if len(rest) else True
