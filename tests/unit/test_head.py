"""The one-call head reader (edge/head.py, _head.c) against its Python reference and against
llhttp: whatever it accepts, llhttp must read the same way (one message, same method, target
and fields, kept alive, no body), because the two now share the request path's input."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httptools
import pytest
from tests.unit.test_connection import Rig, settle

from kalkan.edge import head, reader
from kalkan.edge.framing import FIELD_CODES
from kalkan.edge.head import scan, scan_py
from kalkan.edge.request import Request

BROWSER = (b"GET /2026/12/the-story/?utm_source=x&p=1 HTTP/1.1\r\n"
           b"Host: news.test\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0\r\n"
           b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
           b"Accept-Language: en-GB,en;q=0.5\r\n"
           b"Accept-Encoding: gzip, deflate, br\r\n"
           b"Referer: https://news.test/\r\n"
           b"Cookie: _ga=GA1.2.3; theme=dark\r\n"
           b"Connection: keep-alive\r\n"
           b"If-None-Match: \"abc\"\r\n"
           b"Sec-Fetch-Mode: navigate\r\n"
           b"X-Forwarded-For: 203.0.113.9\r\n"
           b"\r\n")
SMALL = b"HEAD /a HTTP/1.1\r\nhost:news.test\r\nX-Empty:\r\nX-Pad: \t v \t\r\n\r\n"


class _Llhttp:
    """What llhttp reads from some bytes: every message's fields, and where each ended."""

    def __init__(self, data: bytes) -> None:
        self.messages: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._current: dict[str, Any] = {}
        try:
            for i in range(len(data)):  # a byte at a time: where each message ends is known
                self._at = i + 1
                self._parser.feed_data(data[i:i + 1])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.error = exc

    def on_message_begin(self) -> None:
        self._current = {"url": b"", "fields": []}

    def on_url(self, url: bytes) -> None:
        self._current["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current["fields"].append((name, value))

    def on_headers_complete(self) -> None:
        p = self._parser
        self._current.update(method=p.get_method().decode(), version=p.get_http_version(),
                             keep_alive=p.should_keep_alive(), upgrade=p.should_upgrade())

    def on_body(self, body: bytes) -> None:
        self._current["body"] = True

    def on_message_complete(self) -> None:
        self._current["end"] = self._at
        self.messages.append(self._current)


def _check_against_llhttp(data: bytes) -> bool:
    """C and Python agree on `data`; if they accept its head, so does llhttp, identically.
    True if accepted."""
    got = scan(data, 0)
    assert got == scan_py(data, 0), data
    if got is None:
        return False
    method, target, fields, coded, end = got
    ll = _Llhttp(data[:end])
    assert ll.error is None, (data, ll.error)
    assert len(ll.messages) == 1, data
    m = ll.messages[0]
    assert (m["method"], m["url"], m["fields"], m["version"]) == (method, target, fields, "1.1")
    assert m["keep_alive"] and not m["upgrade"] and "body" not in m and m["end"] == end, data
    assert coded == bytes(b for i, (name, _) in enumerate(fields)
                          if (code := FIELD_CODES.get(name.lower(), 0)) for b in (i, code))
    return True


def test_the_c_module_is_the_one_in_use_when_built() -> None:
    assert head.scan is not head.scan_py or not hasattr(head, "_head")


@pytest.mark.parametrize("data", [BROWSER, SMALL, b"GET / HTTP/1.1\r\n\r\n"])
def test_common_heads_are_read_whole_in_one_call(data: bytes) -> None:
    assert _check_against_llhttp(data)
    assert _check_against_llhttp(data + BROWSER)  # the next request is not part of it


def test_what_scan_returns_for_a_browser_head() -> None:
    got = scan(BROWSER + b"GET /next", 0)
    assert got is not None
    method, target, fields, coded, end = got
    assert (method, target, end) == ("GET", b"/2026/12/the-story/?utm_source=x&p=1", len(BROWSER))
    assert fields[1] == (b"User-Agent", fields[1][1]) and fields[6] == (b"Cookie",
                                                                       b"_ga=GA1.2.3; theme=dark")
    assert list(coded) == [0, 1, 1, 2, 5, 5, 6, 3, 7, 4, 8, 11, 10, 6]
    assert scan(b"xx" + SMALL, 2) == scan_py(b"xx" + SMALL, 2) is not None
    assert scan(SMALL, len(SMALL)) is None


@pytest.mark.parametrize("data", [
    b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",                      # may carry a body
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",               # absolute form
    b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\r\n\r\n",                         # bare LF
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",                   # llhttp skips the empty line
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",            # obs-fold
    b"GET / HTTP/1.1\r\n: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
    b"GET / HTTP/1.1\r\nProxy-Connection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n",                           # not whole yet
    b"GET / HTTP/1.1\r\nHost: a\r\n\r",
    b"GET /" + b"a" * 10 + b" HTTP/1.1\r",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
])
def test_declined_heads_go_to_llhttp(data: bytes) -> None:
    assert not _check_against_llhttp(data)


def test_more_fields_than_a_byte_counts_are_declined() -> None:
    many = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 255 + b"\r\n"
    assert _check_against_llhttp(many)
    assert not _check_against_llhttp(many.replace(b"\r\n\r\n", b"\r\nX: y\r\n\r\n"))


def test_every_byte_at_every_place_is_read_as_llhttp_reads_it_or_declined() -> None:
    """Each position of two heads replaced by each of the 256 byte values, and bytes inserted
    and removed: C, Python and llhttp agree wherever scan accepts."""
    accepted = 0
    for base in (SMALL, BROWSER[:120] + b"\r\n\r\n"):
        for i in range(len(base)):
            for b in range(256):
                mutated = base[:i] + bytes((b,)) + base[i + 1:]
                accepted += _check_against_llhttp(mutated)
                if b % 16 == 0:
                    accepted += _check_against_llhttp(base[:i] + bytes((b,)) + base[i:])
            accepted += _check_against_llhttp(base[:i] + base[i + 1:])
    assert accepted > 5000  # the mutations it takes are checked, not only refused


def test_random_heads_from_the_field_alphabet() -> None:
    rng = random.Random(8)
    alphabet = b"GETHAD/ :\r\n\tHTP1.-aZ09%?&=;,\x80\xff\"\x00\x7f"
    accepted = 0
    for _ in range(20_000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        lines = b"GET /" + body if rng.random() < 0.5 else \
            b"GET / HTTP/1.1\r\n" + body.replace(b"\n", b"\r\n") + b"\r\n\r\n"
        accepted += _check_against_llhttp(lines)
    assert accepted > 100


def test_set_codes_refuses_what_it_could_not_match() -> None:
    c_module = getattr(head, "_head", None)
    if c_module is None:
        pytest.skip("built without a C compiler")
    with pytest.raises(ValueError, match="lowercase"):
        c_module.set_codes(((b"Host", 1),))
    with pytest.raises(ValueError, match="1 to 32 bytes"):
        c_module.set_codes(((b"", 1),))
    with pytest.raises(ValueError, match="at most 32"):
        c_module.set_codes(tuple((b"x-%d" % i, 1) for i in range(33)))
    with pytest.raises(TypeError):
        c_module.scan("GET / HTTP/1.1\r\n\r\n", 0)
    with pytest.raises(ValueError, match="outside"):
        c_module.scan(b"GET", 4)
    c_module.set_codes(tuple(FIELD_CODES.items()))  # as head.py left it
    assert scan(BROWSER, 0) == scan_py(BROWSER, 0)


# -- the connection: the same bytes through scan and through llhttp alone give the same requests
_FIELDS = ("method", "target", "path", "query", "headers", "host", "client", "peer", "version",
           "keep_alive", "content_length", "chunked", "scheme", "expect_continue", "decision",
           "key", "cache_target", "conditional", "authorization", "cookie", "length_fields",
           "transfer_encoding", "host_fields", "has_pass", "prefetched_body", "connection",
           "user_agent", "xff", "referer", "client_ip")


def _requests(stream: list[bytes], monkeypatch: pytest.MonkeyPatch | None,
              hits: bool) -> tuple[list[tuple[Any, ...]], bytes, list[tuple[int, str]], bool]:
    declined: list[int] = []
    if monkeypatch is not None:
        # Every head declined: llhttp reads them all (the reader looks `scan` up at each call).
        monkeypatch.setattr(reader, "scan", lambda data, start: declined.append(start))
    try:
        rig = Rig(max_pipelined=64)
        seen: list[Request] = []
        respond_now = rig.pipeline.respond_now

        def recording(req: Request, read: bytes | None = None) -> tuple[bytes, ...] | None:
            seen.append(req)
            return respond_now(req, read) if hits else None
        rig.pipeline.respond_now = recording  # type: ignore[method-assign]
        rig.pipeline.hits["/a"] = b"hit"

        async def run() -> None:
            for data in stream:
                if rig.t.closed:
                    break
                rig.feed(data)
                await settle()
        asyncio.run(run())
        assert monkeypatch is None or declined or min(map(len, stream)) > 4096  # (read whole)
        seen += [r for r in rig.pipeline.requests if r not in seen]
        return ([tuple(getattr(r, f) for f in _FIELDS) for r in seen], bytes(rig.t.out),
                rig.pipeline.refusals, rig.t.closed)
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()


STREAMS = [
    [BROWSER],
    [BROWSER * 3],
    [SMALL + b"GET /a HTTP/1.1\r\nHost: news.test\r\n\r\n"],
    [BROWSER + b"POST /form HTTP/1.1\r\nHost: news.test\r\nContent-Length: 3\r\n\r\nabc" + SMALL],
    [BROWSER[:50], BROWSER[50:] + SMALL],
    [b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + BROWSER],     # two Hosts: 400
    [b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n"],                   # no Host: 400
    [b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: a\r\nExpect: nothing\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: keep-alive\r\n\r\n"],
    [SMALL + b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + BROWSER],
    [b"\r\n" + BROWSER, b"\r", b"\n" + SMALL],
    [b"GET /%00?x=%zz HTTP/1.1\r\nHost: news.test:80\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: news.test\r\n" + b"X: y\r\n" * 101 + b"\r\n"],  # 431
]


@pytest.mark.parametrize("hits", [False, True])
@pytest.mark.parametrize("stream", STREAMS)
def test_a_connection_reads_the_same_requests_with_and_without_scan(
        stream: list[bytes], hits: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _requests(stream, None, hits)
    slow = _requests(stream, monkeypatch, hits)
    assert fast == slow
    assert fast[0] or fast[2]  # something was read or refused


def test_browser_fields_that_repeat_share_their_objects_and_others_do_not() -> None:
    if scan is scan_py:
        pytest.skip("built without a C compiler: the reference shares nothing")
    first, second = scan(BROWSER, 0), scan(BROWSER.replace(b"theme=dark", b"theme=lite"), 0)
    assert first is not None and second is not None
    one, two = dict(enumerate(first[2])), dict(enumerate(second[2]))
    assert one[2] is two[2]                       # Accept: the same pair
    assert one[6] == (b"Cookie", b"_ga=GA1.2.3; theme=dark") and two[6][1].endswith(b"lite")
    assert one[6][0] is two[6][0]                 # a new value, the same name object
    lower = scan(b"GET / HTTP/1.1\r\nhost: a\r\naccept: x\r\nX-Own: y\r\n\r\n", 0)
    again = scan(b"GET / HTTP/1.1\r\nhost: a\r\naccept: x\r\nX-Own: y\r\n\r\n", 0)
    assert lower is not None and again is not None
    assert lower[2][1] is again[2][1] and lower[2][2] is not again[2][2]  # X-Own: not listed
    assert lower[3] == again[3] == bytes((0, 1))  # host noted, in either case
    long_value = b"GET / HTTP/1.1\r\nAccept: " + b"a" * 300 + b"\r\n\r\n"
    a, b = scan(long_value, 0), scan(long_value, 0)
    assert a is not None and b is not None and a[2][0] == b[2][0] and a[2][0] is not b[2][0]
