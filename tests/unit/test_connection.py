"""`HttpConnection` without sockets: real request bytes go through the real httptools parser,
the transport records what the connection does to it, and a fake clock drives the sweep."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

import httptools
import pytest

from kalkan.config import Config
from kalkan.edge.clock import CLOCK_STEP
from kalkan.edge.connection import (
    PARK_AFTER,
    BadRequest,
    Clock,
    ConnectionGone,
    HttpConnection,
    State,
)
from kalkan.edge.parked import ParkedConnection, ParkedTlsConnection, shared_deadline
from kalkan.edge.request import Request
from kalkan.edge.server import EdgeServer
from kalkan.edge.shelf import SHELVE_AFTER, Shelf
from kalkan.observe.metrics import Metrics

if TYPE_CHECKING:
    from kalkan.edge.pipeline import Pipeline


class FakeTransport:
    """Records writes and what the connection asked of it; a client that takes nothing unless
    `take()` is called. Pauses the protocol's writing past `high` buffered bytes, as asyncio's."""

    def __init__(self, protocol: HttpConnection, high: int = 64 * 1024) -> None:
        self.protocol = protocol
        self.out = bytearray()
        self.buffered = 0
        self.high = high
        self.writing_paused = False
        self.reading = True
        self.pauses = 0
        self.resumes = 0
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reads_everything = False  # a client that takes every byte at once

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof_written
        self.out += data
        if self.reads_everything:
            return
        self.buffered += len(data)
        if self.buffered > self.high and not self.writing_paused:
            self.writing_paused = True
            self.protocol.pause_writing()

    def writelines(self, buffers: Any) -> None:
        for b in buffers:
            self.write(b)

    def take(self, n: int) -> None:
        """The client reads `n` bytes of what we sent."""
        self.buffered = max(0, self.buffered - n)
        if self.writing_paused and self.buffered <= self.high // 4:
            self.writing_paused = False
            self.protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("192.0.2.7", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True
        self.resumes += 1

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True


def _answer(status: int, path: str, body: bytes) -> bytes:
    return b"HTTP/1.1 %d OK\r\nX-Path: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status, path.encode(), len(body), body)


class FakePipeline:
    """Answers from dicts: `hits` at once (the hot path), anything else as the slow path, which
    waits for `gates[path]` if there is one and reads the whole request body first."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.metrics = Metrics()
        self.hits: dict[str, bytes] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.large: dict[str, int] = {}  # path → size of a slow answer written in 16 KiB parts
        self.started: list[str] = []
        self.requests: list[Request] = []
        self.bodies: dict[str, bytes] = {}
        self.body_errors: list[Exception] = []
        self.refusals: list[tuple[int, str]] = []
        self.errors: list[BaseException] = []

    def respond_now(self, req: Request, read: bytes | None = None) -> tuple[bytes, ...] | None:
        body = self.hits.get(req.path)
        return None if body is None else (_answer(200, req.path, body),)

    async def respond(self, req: Request, conn: HttpConnection) -> None:
        self.started.append(req.path)
        self.requests.append(req)
        gate = self.gates.get(req.path)
        if gate is not None:
            await gate.wait()
        if req.body is not None:
            try:
                self.bodies[req.path] = b"".join([c async for c in _chunks(req)])
            except Exception as exc:
                self.body_errors.append(exc)
                raise
        size = self.large.get(req.path)
        if size is None:
            conn.write(_answer(200, req.path, b"slow:%d" % len(self.bodies.get(req.path, b""))))
            return
        conn.write(b"HTTP/1.1 200 OK\r\nX-Path: %s\r\nContent-Length: %d\r\n\r\n"
                   % (req.path.encode(), size))
        for _ in range(size // 16384):
            conn.write(b"x" * 16384)
            await conn.drain()

    def replay(self, data: bytes, conn: HttpConnection) -> bool:
        return False

    def log_refusal(self, client: str, status: int, detail: str) -> None:
        self.refusals.append((status, detail))

    def log_error(self, req: Request, exc: BaseException) -> None:
        self.errors.append(exc)

    def tick(self) -> None:
        pass


async def _chunks(req: Request) -> Any:
    assert req.body is not None
    while chunk := await req.body.read():
        yield chunk


class Rig:
    """One connection on an `EdgeServer` with the fakes above."""

    def __init__(self, **limits: Any) -> None:
        config = Config()
        for name, value in limits.items():
            setattr(config.limits, name, value)
        self.clock = Clock(manual=True)  # time moves only when a test says so
        self.pipeline = FakePipeline(self.clock)
        self.server = EdgeServer(config, cast("Pipeline", self.pipeline))
        self.conn = HttpConnection(self.server)
        self.t = FakeTransport(self.conn)
        self.conn.connection_made(cast(asyncio.Transport, self.t))

    def feed(self, data: bytes) -> None:
        self.conn.data_received(data)

    def sweep(self, seconds: float = 0.0) -> None:
        """Let time pass and run the server's sweep over its connections."""
        self.clock.advance(seconds)
        for conn in list(self.server.connections):
            if conn.deadline or conn.write_deadline:
                conn.check_timers(self.clock.mono)

    def answers(self) -> list[tuple[int, str, bytes]]:
        """(status, X-Path, body) of every response written, parsed by llhttp."""
        return _parse_responses(bytes(self.t.out))


async def settle() -> None:
    """Run the tasks the connection started until they wait for something."""
    for _ in range(20):
        await asyncio.sleep(0)


def _parse_responses(data: bytes) -> list[tuple[int, str, bytes]]:
    out: list[tuple[int, str, bytes]] = []

    class Sink:
        def __init__(self) -> None:
            self.path = ""
            self.body = bytearray()

        def on_message_begin(self) -> None:
            self.path, self.body = "", bytearray()

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == b"x-path":
                self.path = value.decode()

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            out.append((parser.get_status_code(), self.path, bytes(self.body)))

    parser = httptools.HttpResponseParser(Sink())
    parser.feed_data(data)
    return out


def get(path: str, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"GET %s HTTP/%s\r\nHost: news.test\r\n%s\r\n" % (path.encode(), version, extra)


# -- timeouts -----------------------------------------------------------------------------------
async def test_keepalive_idle_connection_closes_after_keepalive_timeout() -> None:
    rig = Rig(keepalive_timeout=15.0)
    rig.pipeline.hits["/"] = b"front page"
    rig.feed(get("/"))
    assert rig.answers() == [(200, "/", b"front page")]
    assert rig.conn.state == State.IDLE
    rig.sweep(14.0)
    assert not rig.t.closed
    rig.sweep(1.5)
    assert rig.t.closed and not rig.t.aborted
    assert rig.pipeline.metrics.timeouts["keepalive"] == 1
    assert rig.answers() == [(200, "/", b"front page")]  # nothing more was written


async def test_slowloris_head_byte_by_byte_gets_408_after_header_timeout() -> None:
    rig = Rig(header_timeout=10.0)
    head = get("/", b"X-Padding: " + b"a" * 40 + b"\r\n")
    fed = 0
    while rig.conn.state == State.HEAD:
        rig.feed(head[fed:fed + 1])
        fed += 1
        rig.sweep(0.25)
    assert fed == 41 < len(head)  # the deadline ran from the connection's start, not from each byte
    assert rig.answers()[0][0] == 408
    assert rig.t.eof_written and not rig.t.closed  # a lingering close: the 408 is not lost
    assert rig.conn.state == State.LINGERING
    assert rig.pipeline.metrics.timeouts["headers"] == 1
    assert rig.pipeline.started == []
    rig.sweep(2.5)
    assert rig.t.aborted


async def test_a_head_that_arrives_in_time_is_not_cut_off() -> None:
    rig = Rig(header_timeout=10.0)
    rig.pipeline.hits["/"] = b"ok"
    rig.sweep(9.0)
    rig.feed(get("/"))
    rig.sweep(9.0)  # now in keep-alive, with its own deadline
    assert rig.answers() == [(200, "/", b"ok")] and not rig.t.closed


async def test_body_below_min_rate_is_cut_off_and_the_reader_sees_408() -> None:
    rig = Rig(body_min_rate=1024, body_timeout=15.0)
    rig.feed(b"POST /upload HTTP/1.1\r\nHost: news.test\r\nContent-Length: 100000\r\n\r\n" +
             b"x" * 100)
    await settle()
    assert rig.pipeline.started == ["/upload"]
    for _ in range(6):  # 100 B/s, steadily: never a pause long enough for body_timeout
        rig.sweep(1.0)
        if rig.t.closed:
            break
        rig.feed(b"x" * 100)
    await settle()
    assert rig.pipeline.metrics.timeouts["body_rate"] == 1
    # The request was already with the pipeline, which may have answered part: cut off.
    assert rig.t.aborted
    assert isinstance(rig.pipeline.body_errors[0], BadRequest)
    assert cast(BadRequest, rig.pipeline.body_errors[0]).status == 408


async def test_a_body_that_never_starts_gets_408_after_body_timeout() -> None:
    rig = Rig(body_timeout=15.0, body_min_rate=0)  # (else the rate would end it after 5 s)
    rig.feed(b"POST /upload HTTP/1.1\r\nHost: news.test\r\nContent-Length: 10\r\n\r\n")
    assert rig.conn.state == State.BODY
    rig.sweep(14.0)
    assert rig.t.out == b""
    rig.sweep(1.5)
    assert rig.answers()[0][0] == 408 and rig.t.eof_written
    assert rig.pipeline.metrics.timeouts["body"] == 1
    assert rig.pipeline.started == []  # the origin was never asked


async def test_send_timeout_cuts_off_a_client_that_takes_nothing() -> None:
    rig = Rig(send_timeout=30.0)
    rig.pipeline.large["/big"] = 1024 * 1024
    rig.feed(get("/big"))
    await settle()
    assert rig.t.writing_paused and not rig.t.reading  # no more requests read meanwhile
    rig.sweep(29.0)
    assert not rig.t.closed
    rig.sweep(1.5)
    assert rig.t.aborted
    assert rig.pipeline.metrics.timeouts["send"] == 1


async def test_a_slow_reader_that_takes_something_is_not_cut_off() -> None:
    rig = Rig(send_timeout=30.0)
    rig.pipeline.large["/big"] = 1024 * 1024
    rig.feed(get("/big"))
    await settle()
    for _ in range(5):
        rig.t.take(4096)  # a trickle: not enough to resume writing
        rig.sweep(31.0)
        assert not rig.t.closed
    rig.sweep(31.0)  # and then nothing at all
    assert rig.t.aborted


# -- pipelining ---------------------------------------------------------------------------------
async def test_pipelined_requests_are_answered_in_order_behind_a_busy_one() -> None:
    rig = Rig(max_pipelined=200)
    rig.pipeline.gates["/slow"] = gate = asyncio.Event()
    for i in range(99):
        rig.pipeline.hits[f"/hit/{i}"] = b"hit %d" % i
    rig.feed(get("/slow") + b"".join(get(f"/hit/{i}") for i in range(99)))
    await settle()
    assert rig.t.out == b""  # the hits wait for the answer in progress
    gate.set()
    await settle()
    answers = rig.answers()
    assert [path for _, path, _ in answers] == ["/slow"] + [f"/hit/{i}" for i in range(99)]
    assert answers[50][2] == b"hit 49"
    assert rig.conn.state == State.IDLE and not rig.t.closed


async def test_a_full_queue_pauses_reading_and_resumes_as_answers_drain() -> None:
    rig = Rig(max_pipelined=4)
    rig.pipeline.gates["/slow"] = gate = asyncio.Event()
    n = 300  # ~12 KB: more than one parsing slice
    for i in range(n):
        rig.pipeline.hits[f"/h{i}"] = b"%d" % i
    rig.feed(get("/slow") + b"".join(get(f"/h{i}") for i in range(n)))
    await settle()
    assert not rig.t.reading and rig.t.pauses == 1
    assert len(rig.conn._queue) <= 4 + 4096 // 30  # bounded by one slice, not by the read
    assert rig.conn._stash is not None
    gate.set()
    await settle()
    assert [p for _, p, _ in rig.answers()] == ["/slow"] + [f"/h{i}" for i in range(n)]
    assert rig.t.reading and rig.conn._stash is None
    assert rig.pipeline.refusals == []


async def test_pipelined_requests_after_connection_close_are_not_read() -> None:
    rig = Rig()
    rig.pipeline.hits["/a"] = rig.pipeline.hits["/b"] = b"x"
    rig.feed(get("/a", b"Connection: close\r\n") + get("/b"))
    assert [p for _, p, _ in rig.answers()] == ["/a"]
    assert rig.t.closed


# -- 100-continue ---------------------------------------------------------------------------------
async def test_100_continue_is_sent_only_when_the_pipeline_starts_the_request() -> None:
    rig = Rig()
    rig.pipeline.gates["/slow"] = gate = asyncio.Event()
    rig.feed(get("/slow") + b"POST /up HTTP/1.1\r\nHost: news.test\r\nExpect: 100-continue\r\n"
             b"Content-Length: 5\r\n\r\n")
    await settle()
    assert rig.t.out == b"" and rig.pipeline.started == ["/slow"]
    gate.set()
    await settle()
    assert rig.t.out.endswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert rig.pipeline.started == ["/slow", "/up"]
    rig.feed(b"hello")
    await settle()
    assert [(s, p, b) for s, p, b in rig.answers() if s != 100] == [
        (200, "/slow", b"slow:0"), (200, "/up", b"slow:5")]
    assert rig.pipeline.bodies["/up"] == b"hello"


# -- refusals -------------------------------------------------------------------------------------
async def test_a_refusal_while_busy_comes_after_the_answer_in_progress() -> None:
    rig = Rig()
    rig.pipeline.gates["/slow"] = gate = asyncio.Event()
    rig.feed(get("/slow") + b"GET /x HTTP/1.1\r\nHost: news.test\r\nContent-Length: 1\r\n"
             b"Content-Length: 2\r\n\r\n")
    await settle()
    assert rig.t.out == b"" and not rig.t.reading
    assert [status for status, _ in rig.pipeline.refusals] == [400]
    gate.set()
    await settle()
    assert [(s, p) for s, p, _ in rig.answers()] == [(200, "/slow"), (400, "")]
    assert rig.t.eof_written and rig.conn.state == State.LINGERING
    assert rig.t.reading  # what still arrives is read and dropped, never answered
    rig.feed(get("/slow"))
    assert rig.pipeline.started == ["/slow"]


@pytest.mark.parametrize("raw", [
    b"POST / HTTP/1.1\r\nHost: news.test\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: news.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET http://news.test/ HTTP/1.1\r\nHost: news.test\r\n\r\n",
])
async def test_bad_framing_is_answered_400_and_closed(raw: bytes) -> None:
    rig = Rig()
    rig.feed(raw)
    assert rig.answers()[0][0] == 400
    assert rig.t.eof_written and rig.conn.state == State.LINGERING
    assert rig.pipeline.started == [] and rig.pipeline.metrics.bad_requests == 1


async def test_an_endless_head_is_refused_431_before_it_is_buffered() -> None:
    rig = Rig(max_header_bytes=8192)
    rig.feed(b"GET / HTTP/1.1\r\nHost: news.test\r\nX-Long: ")
    reads = 0
    while rig.conn.state == State.HEAD:
        rig.feed(b"a" * 4096)
        reads += 1
        assert reads < 10
    assert rig.answers()[0][0] == 431
    # The head limit (request line + headers + a slice) plus at most one more read.
    assert reads * 4096 <= rig.server.head_limit + 4096
    assert rig.t.eof_written


async def test_too_many_header_bytes_in_one_read_are_refused_431() -> None:
    rig = Rig(max_header_bytes=2048)
    rig.feed(get("/", b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 100) for i in range(30))))
    assert rig.answers()[0][0] == 431


async def test_a_head_over_the_limit_in_small_reads_is_refused_431() -> None:
    # Each read is smaller than the limit: the fields are counted once the head spans reads.
    rig = Rig(max_header_bytes=2048)
    head = get("/", b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 100) for i in range(30)))
    for i in range(0, len(head), 500):
        rig.feed(head[i:i + 500])
    assert rig.answers()[0][0] == 431
    assert rig.pipeline.started == []


@pytest.mark.parametrize("reads", [1, 7])
async def test_too_many_header_fields_are_refused_431(reads: int) -> None:
    rig = Rig(max_headers=20)
    head = get("/", b"".join(b"X-F%d: v\r\n" % i for i in range(25)))
    step = len(head) // reads + 1
    for i in range(0, len(head), step):
        rig.feed(head[i:i + step])
    assert rig.answers()[0][0] == 431
    assert rig.pipeline.started == []


async def test_exactly_the_field_limit_is_accepted() -> None:
    rig = Rig(max_headers=20)
    rig.pipeline.hits["/"] = b"ok"
    rig.feed(get("/", b"".join(b"X-F%d: v\r\n" % i for i in range(19))))  # + Host = 20
    assert rig.answers()[0][0] == 200


async def test_chunked_trailers_count_against_the_limit_and_are_never_kept() -> None:
    rig = Rig(max_header_bytes=2048)
    rig.feed(b"POST /t HTTP/1.1\r\nHost: news.test\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5\r\nhello\r\n0\r\nHost: evil.test\r\nCookie: wordpress_logged_in=x\r\n\r\n")
    await settle()
    req = rig.pipeline.requests[0]
    assert req.host == "news.test" and req.cookie is None
    assert all(k.lower() not in (b"cookie",) for k, _ in req.headers)
    assert rig.pipeline.bodies == {"/t": b"hello"}
    rig2 = Rig(max_header_bytes=2048)
    rig2.feed(b"POST /t HTTP/1.1\r\nHost: news.test\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\n" + b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100)
                                                   for i in range(30)) + b"\r\n")
    await settle()
    assert any(status == 431 for status, _, _ in rig2.answers()) or rig2.t.aborted


# -- how connections end ------------------------------------------------------------------------
async def test_upgrade_with_a_body_reads_the_body_then_closes() -> None:
    rig = Rig()
    rig.feed(b"POST /up HTTP/1.1\r\nHost: news.test\r\nConnection: Upgrade\r\n"
             b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhel")
    rig.feed(b"lo" + get("/smuggled"))
    await settle()
    assert rig.pipeline.bodies == {"/up": b"hello"}
    assert rig.pipeline.started == ["/up"]  # what follows the body is never a request
    assert [(s, p, b) for s, p, b in rig.answers()] == [(200, "/up", b"slow:5")]
    assert rig.t.closed


async def test_http10_keep_alive_stays_open_and_plain_http10_closes() -> None:
    rig = Rig()
    rig.pipeline.hits["/"] = b"ok"
    rig.feed(get("/", b"Connection: keep-alive\r\n", b"1.0"))
    assert rig.answers() == [(200, "/", b"ok")]
    assert not rig.t.closed and rig.conn.state == State.IDLE
    rig.feed(get("/", version=b"1.0"))
    assert len(rig.answers()) == 2 and rig.t.closed


async def test_each_request_has_its_own_version_wherever_it_starts() -> None:
    """The version is read from a request line at the start of a read when there is one (the
    parser is asked otherwise): pipelined requests of both versions, a line over two reads, a
    blank line before a request, and a body whose bytes look like a request line all keep the
    version the parser read."""
    rig = Rig()
    hidden = b"GET /x HTTP/1.1\r\n"
    rig.feed(get("/a") + get("/b", b"Connection: keep-alive\r\n", b"1.0") + get("/c"))
    rig.feed(get("/d", b"Connection: keep-alive\r\n", b"1.0") + get("/e"))
    rig.feed(b"GET /f HT")
    rig.feed(b"TP/1.0\r\nHost: news.test\r\nConnection: keep-alive\r\n\r\n")
    rig.feed(b"\r\n" + get("/g", b"Connection: keep-alive\r\n", b"1.0"))
    rig.feed(b"POST /h HTTP/1.1\r\nHost: news.test\r\nContent-Length: %d\r\n\r\n" % len(hidden))
    rig.feed(hidden + b"GET /x HTTP/1.0\r\nHost: news.test\r\nConnection: keep-alive\r\n\r\n")
    rig.feed(get("/i"))
    for _ in range(10):
        await settle()
    assert [(r.path, r.version) for r in rig.pipeline.requests] == [
        ("/a", "1.1"), ("/b", "1.0"), ("/c", "1.1"), ("/d", "1.0"), ("/e", "1.1"),
        ("/f", "1.0"), ("/g", "1.0"), ("/h", "1.1"), ("/x", "1.0"), ("/i", "1.1")]
    assert not rig.t.closed


async def test_half_close_after_requests_answers_them_then_closes() -> None:
    rig = Rig()
    rig.pipeline.gates["/slow"] = gate = asyncio.Event()
    rig.pipeline.hits["/hit"] = b"h"
    rig.feed(get("/slow") + get("/hit"))
    assert rig.conn.eof_received() is True  # keep the transport open for the answers
    await settle()
    assert not rig.t.closed
    gate.set()
    await settle()
    assert [p for _, p, _ in rig.answers()] == ["/slow", "/hit"]
    assert rig.t.closed


async def test_half_close_with_nothing_asked_closes_at_once() -> None:
    rig = Rig()
    assert rig.conn.eof_received() is None


async def test_connection_lost_mid_body_fails_the_body_and_releases_the_client() -> None:
    rig = Rig()
    rig.feed(b"POST /up HTTP/1.1\r\nHost: news.test\r\nContent-Length: 10\r\n\r\nabc")
    await settle()
    assert rig.server.per_client == {"192.0.2.7": 1}
    rig.conn.connection_lost(None)
    await settle()
    body = rig.pipeline.requests[0].body
    assert body is not None and isinstance(body.error, ConnectionGone)
    assert rig.server.per_client == {}
    assert not rig.server.connections


# -- parking idle connections -----------------------------------------------------------------
async def test_an_idle_connection_is_parked_after_a_moment_and_woken_by_its_next_request(
) -> None:
    rig = Rig()
    rig.pipeline.hits["/"] = b"ok"
    rig.feed(get("/"))
    rig.t.take(len(rig.t.out))  # the client read the answer
    rig.sweep(PARK_AFTER / 2)
    assert rig.t.protocol is rig.conn  # not yet
    rig.sweep(PARK_AFTER)
    assert rig.t.protocol is rig.conn  # (the clock's step: not known to be quiet that long)
    rig.sweep(CLOCK_STEP)
    parked = rig.t.protocol
    assert isinstance(parked, ParkedConnection)
    assert rig.server.connections == {parked} and rig.server.open == 1
    assert rig.conn.transport is None  # the old object can no longer touch the socket
    parked.data_received(get("/"))
    woken = rig.t.protocol
    assert isinstance(woken, HttpConnection) and woken is not rig.conn
    assert rig.server.connections == {woken} and woken.counted
    assert [a[0] for a in rig.answers()] == [200, 200]


async def test_a_parked_connection_keeps_five_slots_and_no_bound_method() -> None:
    rig = Rig()
    rig.pipeline.hits["/"] = b"ok"
    rig.feed(get("/"))
    rig.t.take(len(rig.t.out))
    rig.sweep(PARK_AFTER / 2)
    rig.sweep(PARK_AFTER + CLOCK_STEP)
    parked = rig.t.protocol
    assert isinstance(parked, ParkedConnection) and not isinstance(parked, ParkedTlsConnection)
    # uvloop keeps `protocol.data_received` while the protocol is set: no object per socket.
    assert parked.data_received is parked
    assert parked.scheme == "http" and parked.client == rig.conn.client
    assert not hasattr(parked, "__dict__") and len(ParkedConnection.__slots__) == 5
    # Its deadline: the connection's, rounded down to 1/8 s (never later than it was).
    assert 0 <= rig.conn.deadline - parked.deadline < 1 / 8


def test_parked_deadlines_within_one_step_share_one_float() -> None:
    a = shared_deadline(1000.0 + 0.01 * 3)
    b = shared_deadline(1000.0 + 0.01 * 7)
    assert a == b == 1000.0 and a is b
    c = shared_deadline(1000.2)
    assert c == 1000.125 and c is not a


async def test_a_connection_used_since_the_last_sweep_is_not_parked_by_a_late_sweep() -> None:
    # The clock moves only at the sweep: a request answered just before a sweep that came a
    # little late has "quiet" of one step, not PARK_AFTER, and the connection stays as it is.
    rig = Rig()
    rig.pipeline.hits["/"] = b"ok"
    for _ in range(8):
        rig.feed(get("/"))
        rig.t.take(len(rig.t.out))
        rig.sweep(CLOCK_STEP + 0.01)
        assert rig.t.protocol is rig.conn
    rig.sweep(CLOCK_STEP + 0.01)  # no request in the last step: quiet for PARK_AFTER at least
    assert isinstance(rig.t.protocol, ParkedConnection)


async def test_a_connection_with_work_in_progress_is_never_parked() -> None:
    rig = Rig()
    rig.pipeline.gates["/slow"] = gate = asyncio.Event()
    rig.feed(get("/slow"))
    await settle()
    rig.sweep(2.0)
    assert rig.t.protocol is rig.conn and rig.conn.busy
    gate.set()
    await settle()
    rig.sweep(1.1)
    assert rig.t.protocol is rig.conn  # the client has not read the answer yet
    rig.t.take(len(rig.t.out))
    rig.sweep(0.3)
    assert isinstance(rig.t.protocol, ParkedConnection)


async def test_with_many_connections_open_one_with_an_unread_tail_parks_at_the_next_sweep(
) -> None:
    rig = Rig()
    rig.server.park_at_once_past = 0
    rig.pipeline.hits["/"] = b"ok"
    rig.feed(get("/"))
    # The client has not read the answer yet: not parkable, but the parser goes at once.
    assert rig.t.protocol is rig.conn and rig.conn.parser is None
    rig.t.take(len(rig.t.out))
    rig.sweep(0.01)  # the first sweep, long before PARK_AFTER
    assert isinstance(rig.t.protocol, ParkedConnection)
    rig.t.protocol.data_received(get("/"))
    assert [a[0] for a in rig.answers()] == [200, 200]


async def test_with_many_connections_open_an_idle_one_is_parked_at_once() -> None:
    rig = Rig()
    rig.server.park_at_once_past = 0
    rig.t.reads_everything = True
    rig.pipeline.hits["/"] = b"ok"
    rig.feed(get("/"))
    assert isinstance(rig.t.protocol, ParkedConnection)


async def test_a_parked_connection_releases_its_slot_when_lost_and_times_out() -> None:
    rig = Rig(keepalive_timeout=3.0)
    rig.pipeline.hits["/"] = b"ok"
    rig.feed(get("/"))
    rig.t.take(len(rig.t.out))
    rig.sweep(1.1)
    parked = rig.t.protocol
    assert isinstance(parked, ParkedConnection)
    rig.sweep(2.0)
    assert rig.t.closed and rig.pipeline.metrics.timeouts["keepalive"] == 1
    parked.connection_lost(None)
    assert rig.server.open == 0 and not rig.server.per_client and not rig.server.connections


async def test_a_parked_connection_without_a_socket_is_never_shelved() -> None:
    # (The fake transport has no socket: the shelf declines it and it stays parked.)
    rig = Rig()
    rig.server.shelf = shelf = Shelf(asyncio.get_running_loop())
    rig.pipeline.hits["/"] = b"ok"
    rig.feed(get("/"))
    rig.t.take(len(rig.t.out))
    rig.sweep(PARK_AFTER)
    rig.sweep(PARK_AFTER)
    parked = rig.t.protocol
    assert isinstance(parked, ParkedConnection)
    rig.sweep(SHELVE_AFTER + 1.0)
    assert parked.transport is rig.t and parked.fd == -1 and not rig.t.closed
    assert len(shelf) == 0
    parked.data_received(get("/"))
    assert [a[0] for a in rig.answers()] == [200, 200]
    shelf.close()
