"""Framing fuzzer: generated request framings through a real edge to a byte-logging origin.

Each example is one attacker connection carrying a generated request (method x version x
framing x connection fields) whose body is itself a request (`GET /smuggled/N`), followed by a
pipelined `GET /follower/N`; then an ordinary victim connection asks for `/victim/N`. The
origin (tests/byte_origin.py) answers as soon as a head arrives, like Apache for static files,
so a body the edge announces but does not send is taken from the next request on that origin
connection. An example fails on any desync:

- the origin is left waiting for body or head bytes on a connection the edge did not abandon;
- a request line from inside a body reached the origin (`/smuggled/N` answered to nobody);
- the origin parsed more requests than clients got answers, or could not parse what it got;
- a client got a response naming another request's target (or the victim lost its answer).

The short run (`make test`) is deterministic (derandomize, no example database).
KALKAN_FUZZ_EXAMPLES=N runs N random examples per test instead (see bench/fuzz_framing.py);
KALKAN_FUZZ_REPORT=path appends one JSON line of statistics per test run to `path`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from byte_origin import ORIGIN_SERIAL, ORIGIN_TARGET, ByteOrigin
from kalkan.edge.app import Edge
from kalkan.edge.connection import State
from support import EdgeFactory, port_of

HOST = "news.test"
LONG_RUN = int(os.environ.get("KALKAN_FUZZ_EXAMPLES", "0"))
SHORT_EXAMPLES = 200  # per generating test: the whole file takes about 30 s (under 60 s fixed)
QUIET = 0.3  # s without a byte (and nothing in flight at the edge) that ends a client's turn

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
           "PROPFIND", "PURGE", "SEARCH", "M-SEARCH", "FOO", "get", "G=T"]
VERSIONS = ["1.1", "1.0"]
FRAMINGS = [
    "none", "cl", "cl-short", "cl-to-smuggled", "cl-long", "cl-zero", "cl-dup-same",
    "cl-dup-diff", "cl-list", "cl-plus", "cl-minus", "cl-leading-zero", "cl-spaces",
    "cl-inner-space", "te", "te-two-chunks", "te-obs-fold", "te-comma-chunked",
    "te-chunked-identity", "te-and-cl", "te-bad-size", "te-ext", "te-early-end",
]
CONNECTION_OPTIONS = [
    "keep-alive", "close", "upgrade-websocket", "upgrade-h2c", "upgrade-x", "upgrade-no-token",
    "conn-lists-content-length", "conn-lists-transfer-encoding", "conn-lists-x-foo",
    "conn-lists-host", "expect-continue",
]
UPGRADES = {"upgrade-websocket", "upgrade-h2c", "upgrade-x"}
BAD_SIZES = ["zz", "-1", "0x{h}", "1" + "0" * 16, "{h} ", " {h}", "{h}\t", "+{h}", ""]
EXTENSIONS = ["{h};a=b", '{h};q="x;y"', "{h} ;a", "{h};", "{h};" + "e" * 40, "{h};a=b;c"]


@dataclass(frozen=True)
class Case:
    """One generated attacker request; `render` makes its bytes for example number `n`."""

    method: str
    version: str
    framing: str
    connection: tuple[str, ...]
    pad: int = 0  # filler body bytes before the smuggled request
    delta: int = 1  # how short/long a wrong length is; which bad size / extension
    host: bool = True

    def target(self, n: int) -> str:
        return f"/case/{n}"

    def render(self, n: int) -> bytes:
        smuggled = f"GET /smuggled/{n} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        body = b"a" * self.pad + smuggled
        fields, wire = _framing(self.framing, body, self.pad, self.delta)
        lines = [f"{self.method} {self.target(n)} HTTP/{self.version}"]
        if self.host:
            lines.append(f"Host: {HOST}")
        lines += fields
        for option in self.connection:
            lines += _CONNECTION_FIELDS[option]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + wire

    def has_body(self) -> bool:
        return self.framing != "none" and self.framing != "cl-zero"


def _framing(kind: str, body: bytes, pad: int, delta: int) -> tuple[list[str], bytes]:
    """The framing fields and the bytes that follow the head for one framing kind."""
    n = len(body)
    h = f"{n:x}"
    chunked = f"{h}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    match kind:
        case "none":
            return [], body
        case "cl":
            return [f"Content-Length: {n}"], body
        case "cl-short":
            return [f"Content-Length: {max(n - delta, 1)}"], body
        case "cl-to-smuggled":
            return [f"Content-Length: {pad}"], body
        case "cl-long":
            return [f"Content-Length: {n + delta}"], body
        case "cl-zero":
            return ["Content-Length: 0"], body
        case "cl-dup-same":
            return [f"Content-Length: {n}", f"Content-Length: {n}"], body
        case "cl-dup-diff":
            return [f"Content-Length: {n}", f"Content-Length: {n + delta}"], body
        case "cl-list":
            return [f"Content-Length: {n}, {n}"], body
        case "cl-plus":
            return [f"Content-Length: +{n}"], body
        case "cl-minus":
            return [f"Content-Length: -{n}"], body
        case "cl-leading-zero":
            return [f"Content-Length: 00{n}"], body
        case "cl-spaces":
            return [f"Content-Length:   {n}   "], body
        case "cl-inner-space":
            return [f"Content-Length: {n} {delta}"], body
        case "te":
            return ["Transfer-Encoding: chunked"], chunked
        case "te-two-chunks":
            cut = min(delta, n - 1)
            return ["Transfer-Encoding: chunked"], (
                f"{cut:x}\r\n".encode() + body[:cut] + f"\r\n{n - cut:x}\r\n".encode()
                + body[cut:] + b"\r\n0\r\n\r\n")
        case "te-obs-fold":
            return ["Transfer-Encoding:", " chunked"], chunked
        case "te-comma-chunked":
            return ["Transfer-Encoding: , chunked"], chunked
        case "te-chunked-identity":
            return ["Transfer-Encoding: chunked, identity"], chunked
        case "te-and-cl":
            return ["Transfer-Encoding: chunked", f"Content-Length: {len(chunked)}"], chunked
        case "te-bad-size":
            size = BAD_SIZES[delta % len(BAD_SIZES)].format(h=h)
            return ["Transfer-Encoding: chunked"], (
                f"{size}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        case "te-ext":
            line = EXTENSIONS[delta % len(EXTENSIONS)].format(h=h)
            return ["Transfer-Encoding: chunked"], (
                f"{line}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        case "te-early-end":  # an empty body, then the "body" is the next pipelined request
            return ["Transfer-Encoding: chunked"], b"0\r\n\r\n" + body
    raise ValueError(kind)


_CONNECTION_FIELDS: dict[str, list[str]] = {
    "keep-alive": ["Connection: keep-alive"],
    "close": ["Connection: close"],
    "upgrade-websocket": ["Connection: Upgrade", "Upgrade: websocket",
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                          "Sec-WebSocket-Version: 13"],
    "upgrade-h2c": ["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"],
    "upgrade-x": ["Connection: Upgrade", "Upgrade: x"],
    "upgrade-no-token": ["Upgrade: websocket"],
    "conn-lists-content-length": ["Connection: Content-Length"],
    "conn-lists-transfer-encoding": ["Connection: Transfer-Encoding"],
    "conn-lists-x-foo": ["Connection: X-Foo", "X-Foo: 1"],
    "conn-lists-host": ["Connection: Host"],
    "expect-continue": ["Expect: 100-continue"],
}


def cases(known_holes: bool = True) -> st.SearchStrategy[Case]:
    """Generated cases; without `known_holes`, none that hits a hole known today."""
    strategy = st.builds(
        Case,
        method=st.sampled_from(METHODS),
        version=st.sampled_from(VERSIONS),
        framing=st.sampled_from(FRAMINGS),
        connection=st.lists(st.sampled_from(CONNECTION_OPTIONS), max_size=3,
                            unique=True).map(tuple),
        pad=st.integers(0, 12),
        delta=st.integers(1, 60),
        host=st.sampled_from([True, True, True, False]),  # HTTP/1.0 may omit Host
    )
    if not known_holes:
        strategy = strategy.map(_without_known_holes)
    return strategy


def _without_known_holes(case: Case) -> Case:
    """The nearest case that avoids the two holes known today (see UPGRADE_HOLE, UNREAD_BODY)."""
    if not case.has_body():
        return case
    if UPGRADES & set(case.connection):
        case = replace(case, connection=tuple(o for o in case.connection if o not in UPGRADES))
    if case.method in ("GET", "HEAD"):
        case = replace(case, method="POST")
    return case


# The known hole (issue 7, critical 1): a body with Connection: Upgrade + Upgrade is forwarded
# with its Content-Length but without the body, and the origin connection is reused.
UPGRADE_HOLE = [
    Case("POST", "1.1", "cl", ("upgrade-x",), pad=3),
    Case("PUT", "1.0", "cl", ("upgrade-websocket",)),
    Case("DELETE", "1.1", "cl-to-smuggled", ("upgrade-h2c",), pad=5),
    Case("PATCH", "1.1", "te", ("upgrade-x",)),
    Case("OPTIONS", "1.1", "cl", ("upgrade-websocket", "expect-continue")),
]


# A second hole found by this fuzzer (issue 7): the body of a GET or HEAD is never read (the
# cache fetch drops it), so the edge half-closes after the answer; but the requests pipelined
# behind it are still dispatched: they reach the origin, and their answers are written after
# write_eof (RuntimeError "Cannot call write() after write_eof()", a task exception nobody
# retrieves). Origin work for answers no client gets.
UNREAD_BODY = [
    Case("GET", "1.1", "cl", ()),
    Case("HEAD", "1.1", "cl", (), pad=7),
    Case("GET", "1.1", "te", ("keep-alive",)),
    Case("HEAD", "1.1", "te-ext", (), delta=1),
]


# -- reading what the edge sends back ------------------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    @property
    def names(self) -> str | None:
        return self.headers.get(ORIGIN_TARGET.lower())


def parse_answers(data: bytes, first_is_head: bool) -> tuple[list[Answer], bytes]:
    """Responses in `data` (1xx skipped), and bytes left that form no whole response.

    The edge's own refusals of a HEAD request may carry a body; a body is taken after a HEAD
    response only when the bytes that follow are not a status line.
    """
    answers: list[Answer] = []
    rest = data
    while rest:
        end = rest.find(b"\r\n\r\n")
        if end < 0 or not rest.startswith(b"HTTP/1."):
            break
        head, after = rest[:end].decode("latin-1"), rest[end + 4:]
        status_line, *field_lines = head.split("\r\n")
        status = int(status_line.split(" ")[1])
        headers = {}
        for line in field_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            rest = after
            continue
        size = int(headers.get("content-length", "0") or 0)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, after, ok = _dechunk(after)
            if not ok:
                break
        elif (first_is_head and not answers and (after.startswith(b"HTTP/1.") or not after)) \
                or status in (204, 304):
            body = b""
        else:
            if len(after) < size:
                break
            body, after = after[:size], after[size:]
        answers.append(Answer(status, headers, body))
        rest = after
    return answers, rest


def _dechunk(data: bytes) -> tuple[bytes, bytes, bool]:
    out = bytearray()
    while True:
        end = data.find(b"\r\n")
        if end < 0:
            return b"", data, False
        size = int(data[:end].split(b";")[0], 16)
        data = data[end + 2:]
        if size == 0:
            return bytes(out), data[2:], data.startswith(b"\r\n")
        if len(data) < size + 2:
            return b"", data, False
        out += data[:size]
        data = data[size + 2:]


# -- the harness ---------------------------------------------------------------------------------
@dataclass
class Stats:
    examples: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    origin_requests: int = 0
    victim_errors: int = 0
    failures: list[str] = field(default_factory=list)


class Harness:
    """Runs one case against an edge and its byte origin and lists the desyncs it caused."""

    def __init__(self, edge: Edge, origin: ByteOrigin) -> None:
        self.edge = edge
        self.origin = origin
        self.port = port_of(edge)
        self.n = 0
        self.stats = Stats()

    def _source(self) -> str:
        # A fresh loopback address per connection, so the defence's per-client rates never
        # turn later examples into refusals (127.0.0.0/8 all lands on lo).
        self.n += 1
        return f"127.{(self.n >> 16) & 255}.{(self.n >> 8) & 255}.{(self.n & 255) or 1}"

    def _edge_idle(self, body_wait: bool = False) -> bool:
        """Nothing in flight at the edge; with `body_wait`, except requests whose client owes
        body bytes (a stalled upload: the edge and the origin rightly wait for it)."""
        for c in self.edge.server.connections:
            if c.busy and not (body_wait and c.state is State.BODY):
                return False
        return body_wait or self.edge.pipeline.upstream.gate.active == 0

    async def _converse(self, data: bytes, done: str, first_is_head: bool) -> tuple[
            list[Answer], bool]:
        """Send `data`; read until closed, an answer names `done`, or a quiet idle edge."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                       local_addr=(self._source(), 0))
        received = bytearray()
        closed = False
        loop = asyncio.get_running_loop()
        try:
            writer.write(data)
            start = last = loop.time()
            while loop.time() - start < 8.0:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), 0.05)
                except TimeoutError:
                    if loop.time() - last > QUIET and self._edge_idle(body_wait=True):
                        break
                    continue
                except (ConnectionError, OSError):
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                received += chunk
                last = loop.time()
                answers, _ = parse_answers(bytes(received), first_is_head)
                if any(a.names == done for a in answers):
                    break
        finally:
            # Reset, not FIN: the edge keeps a half-closed client's request open until
            # body_timeout (reported separately); a reset is a client that is surely gone.
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        answers, _ = parse_answers(bytes(received), first_is_head)
        return answers, closed

    async def run(self, case: Case) -> list[str]:
        self.stats.examples += 1
        n = self.stats.examples
        first_request = len(self.origin.requests)
        first_conn = len(self.origin.connections)
        follower = f"GET /follower/{n} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        expected = [case.target(n), f"/smuggled/{n}", f"/follower/{n}"]
        attacker, _ = await self._converse(case.render(n) + follower, expected[2],
                                           case.method == "HEAD")
        victim_target = f"/victim/{n}"
        victim, _ = await self._converse(
            f"GET {victim_target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), victim_target,
            False)
        # The edge abandons an origin connection once its client is gone: let that settle.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while loop.time() < deadline and not self._edge_idle():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.03)

        problems: list[str] = []
        seen = self.origin.requests[first_request:]
        touched = {r.conn_id for r in seen} | {c.id for c in self.origin.connections[first_conn:]}
        conns = [c for c in self.origin.connections if c.id in touched]
        for conn in conns:
            if conn.left_waiting:
                problems.append("origin left waiting for the rest of a request: "
                                + self.origin.describe(conn))
            if conn.upgrade:
                problems.append("an Upgrade request reached the origin: "
                                + self.origin.describe(conn))
            elif conn.parse_error:
                problems.append("the origin could not parse what the edge sent: "
                                + self.origin.describe(conn))
        answered = {a.headers.get(ORIGIN_SERIAL.lower()) for a in attacker + victim}
        for req in seen:
            if "/smuggled/" in req.target and str(req.serial) not in answered:
                problems.append(f"a request line from inside a body reached the origin: "
                                f"#{req.serial} {req.method} {req.target}")
        # A request the edge abandoned half-sent (its client went away or broke its body) is
        # partial on a connection the edge closed: no answer is owed for it.
        whole = [r for r in seen if r.complete]
        if len(whole) > len(attacker) + len(victim):
            problems.append(f"{len(whole)} origin requests "
                            f"({', '.join(r.method + ' ' + r.target for r in whole)}) for "
                            f"{len(attacker) + len(victim)} client answers")
        # The attacker's answers name its own requests, in order, nothing else.
        position = -1
        for a in attacker:
            if a.names is None:
                continue
            if a.names not in expected or expected.index(a.names) <= position:
                problems.append(f"the attacker got an answer naming {a.names!r} "
                                f"(its requests: {expected})")
                break
            position = expected.index(a.names)
        if not victim:
            problems.append("the victim got no answer")
        elif victim[0].names != victim_target:
            if victim[0].names is None and victim[0].status in (502, 503, 504) \
                    and victim[0].headers.get("x-cache") == "ERROR":
                # The edge's own error, e.g. a dead idle origin connection (issue 7, high 6):
                # no content of another request; counted, not judged here.
                self.stats.victim_errors += 1
            else:
                problems.append(f"the victim asked for {victim_target} and got "
                                f"{victim[0].status} naming {victim[0].names!r}")
        self.stats.origin_requests += len(seen)
        for a in attacker:
            self.stats.statuses[str(a.status)] += 1
        if problems:
            self.stats.failures.append(f"{case!r}: {problems[0]}")
        return problems


async def fuzz(make_edge: EdgeFactory, strategy: st.SearchStrategy[Case], defence: bool,
               explicit: list[Case] | None = None, generate: bool = True,
               label: str = "") -> None:
    """Run `explicit` cases, then (`generate`) `strategy`'s, through a fresh edge and byte
    origin; fails on the first desync."""
    origin = await ByteOrigin(answer_early=True, idle_timeout=1.0).start()
    edge = await make_edge(origin.url, origin={"timeout": 2.0, "breaker_failures": 10**6},
                           limits={"header_timeout": 2.0, "body_timeout": 2.0},
                           defense={"enabled": defence})
    harness = Harness(edge, origin)
    loop = asyncio.get_running_loop()
    examples = LONG_RUN or SHORT_EXAMPLES

    @settings(max_examples=examples, deadline=None, database=None,
              derandomize=not LONG_RUN, print_blob=False,
              phases=[Phase.explicit] + ([Phase.generate] if generate else [])
              + ([Phase.shrink] if LONG_RUN and generate else []),
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: Case) -> None:
        problems = asyncio.run_coroutine_threadsafe(harness.run(case), loop).result(60)
        assert not problems, f"{case!r} (attacker bytes {case.render(0)!r}):\n" + \
            "\n".join(problems)

    for case in explicit or []:
        check = example(case=case)(check)
    started = time.monotonic()
    outcome = "passed"
    try:
        await asyncio.to_thread(check)
    except AssertionError:
        outcome = "failed"
        raise
    finally:
        _report(label, defence, harness.stats, time.monotonic() - started, outcome)
        await origin.stop()


def _report(label: str, defence: bool, stats: Stats, seconds: float, outcome: str) -> None:
    path = os.environ.get("KALKAN_FUZZ_REPORT")
    if not path:
        return
    line = {"test": label, "defence": defence, "outcome": outcome, "seconds": round(seconds, 1),
            "examples": stats.examples, "origin_requests": stats.origin_requests,
            "victim_edge_errors": stats.victim_errors, "attacker_statuses": stats.statuses,
            "failures": stats.failures[:5]}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


# -- the tests -----------------------------------------------------------------------------------
DEFENCE = pytest.mark.parametrize("defence", [False, True], ids=["defence-off", "defence-on"])


@DEFENCE
async def test_framing_fuzz_without_known_holes(make_edge: EdgeFactory, defence: bool) -> None:
    """Every framing except the two holes known today: no desync of any kind."""
    await fuzz(make_edge, cases(known_holes=False), defence, label="without-known-holes")


@DEFENCE
async def test_upgrade_with_body_is_forwarded_whole(make_edge: EdgeFactory,
                                                    defence: bool) -> None:
    """The known Upgrade cases (explicit examples only)."""
    await fuzz(make_edge, cases(), defence, explicit=UPGRADE_HOLE, generate=False,
               label="upgrade-hole")


@DEFENCE
async def test_pipelined_behind_unread_body_never_reach_origin(make_edge: EdgeFactory,
                                                               defence: bool) -> None:
    """GET/HEAD with a body and a pipelined follower (explicit examples only)."""
    await fuzz(make_edge, cases(), defence, explicit=UNREAD_BODY, generate=False,
               label="unread-body")


@DEFENCE
async def test_framing_fuzz_all(make_edge: EdgeFactory, defence: bool) -> None:
    """The whole space, the known holes first: no desync of any kind."""
    await fuzz(make_edge, cases(), defence, explicit=UPGRADE_HOLE + UNREAD_BODY, label="all")


async def test_half_close_mid_body_releases_the_origin(make_edge: EdgeFactory) -> None:
    """After a FIN no more body bytes can come: the edge should give the origin request up."""
    origin = await ByteOrigin(answer_early=True, idle_timeout=5.0).start()
    try:
        edge = await make_edge(origin.url)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port_of(edge))
        writer.write(f"PATCH /case/1 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n"
                     .encode() + b"a" * 10)
        await writer.drain()
        for _ in range(100):  # the origin has the head: the edge is now sending the body
            if origin.requests:
                break
            await asyncio.sleep(0.01)
        writer.write_eof()
        await asyncio.sleep(1.0)
        assert [c.closed_by for c in origin.connections] == ["peer"], \
            origin.describe(origin.connections[0])
        writer.close()
    finally:
        await origin.stop()
