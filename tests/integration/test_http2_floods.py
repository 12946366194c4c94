"""HTTP/2's own floods, each shown bounded over a real TLS socket on loopback with a hostile
client (frames written by hand): rapid reset (CVE-2023-44487), CONTINUATION flood, SETTINGS and
PING floods, too many concurrent streams, an HPACK bomb, a body past the flow-control window, a
client that never opens its window, and idle or stalled connections."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import trustme
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from h2_client import NAME, H2Client, Raw, goaway, statuses
from kalkan.edge.h2_connection import HPACK_TABLE, MAX_STREAMS
from kalkan.edge.h2_frames import PINGS_PER_SECOND, RESETS_PER_SECOND, SETTINGS_PER_SECOND
from kalkan.edge.h2_slow_path import SLOW_STREAMS
from support import EdgeFactory, Origin, access_log, fetch, origin_stats, port_of

CALM = ErrorCodes.ENHANCE_YOUR_CALM


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def h2_edge(origin: Origin, make_edge: EdgeFactory, ca: trustme.CA,
                  tmp_path: Path) -> Any:
    leaf = ca.issue_cert(NAME)
    pem = tmp_path / "site.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    return await make_edge(origin.url, tls={"certificates": [{"cert": str(pem),
                                                              "key": str(pem)}]},
                           limits={"header_timeout": 1.0, "keepalive_timeout": 1.0,
                                   "body_timeout": 1.0, "send_timeout": 1.0})


async def still_serves(edge: Any, ca: trustme.CA) -> None:
    """Another reader is answered while (or after) a connection was refused."""
    client = await H2Client.connect(port_of(edge), ca)
    try:
        assert (await client.request("GET", "/robots.txt")).status == 200
    finally:
        await client.close()


async def test_rapid_reset_is_cut_off(h2_edge: Any, origin: Origin, ca: trustme.CA) -> None:
    raw = await Raw.connect(port_of(h2_edge), ca)
    before = (await origin_stats(origin))["requests"]
    sid = 1
    for _ in range(40):  # batches of 50 requests, each cancelled at once: 2,000 in all
        frames = []
        for _ in range(50):
            frames.append(HeadersFrame(sid, raw.block(f"/_demo/echo?i={sid}"),
                                       flags=["END_HEADERS", "END_STREAM"]))
            frames.append(RstStreamFrame(sid, error_code=ErrorCodes.CANCEL))
            sid += 2
        if not await raw.pump(*frames):
            break
    frames = await raw.frames()
    await raw.close()
    end = goaway(frames)
    assert end is not None and end.error_code == CALM
    # The frames of one read are counted before any is handled: what reached the origin is
    # bounded by the reset budget, not by the 2,000 requests sent.
    reached = (await origin_stats(origin))["requests"] - before
    assert reached <= RESETS_PER_SECOND + 50
    assert h2_edge.server.h2_counters.refused >= 1
    await still_serves(h2_edge, ca)


@pytest.mark.parametrize("size, count", [(10, 1000), (16384, 10)])
async def test_continuation_flood_is_cut_off(h2_edge: Any, ca: trustme.CA, size: int,
                                             count: int) -> None:
    """Many small CONTINUATION frames, or a few large ones: the header block never ends and
    is refused before it is held whole (h2 alone would hold up to 64 × 16 KiB)."""
    raw = await Raw.connect(port_of(h2_edge), ca)
    await raw.pump(HeadersFrame(1, raw.block("/", extra=[("x-a", "b")])[:5]))
    for _ in range(count):
        if not await raw.pump(ContinuationFrame(1, b"\x00" * size)):
            break
    frames = await raw.frames()
    await raw.close()
    end = goaway(frames)
    assert end is not None and end.error_code == CALM
    assert 1 not in statuses(frames)  # the request was never handled
    reasons = [line.get("decision", "") for line in access_log(h2_edge)]
    expected = "CONTINUATION flood" if size == 10 else "header block too large"
    assert any(expected in r for r in reasons), reasons
    await still_serves(h2_edge, ca)


@pytest.mark.parametrize("kind", ["settings", "ping"])
async def test_settings_and_ping_floods_are_cut_off(h2_edge: Any, ca: trustme.CA,
                                                    kind: str) -> None:
    raw = await Raw.connect(port_of(h2_edge), ca)
    for i in range(500):
        frame = SettingsFrame(0) if kind == "settings" else PingFrame(0, i.to_bytes(8, "big"))
        if not await raw.pump(frame):
            break
    frames = await raw.frames()
    await raw.close()
    end = goaway(frames)
    assert end is not None and end.error_code == CALM
    # Each answered with an ACK only up to the budget: the flood cannot make us write.
    acks = [f for f in frames if isinstance(f, SettingsFrame | PingFrame) and "ACK" in f.flags]
    budget = SETTINGS_PER_SECOND if kind == "settings" else PINGS_PER_SECOND
    assert len(acks) <= budget + 1
    await still_serves(h2_edge, ca)


async def test_too_many_concurrent_streams_are_refused(h2_edge: Any, ca: trustme.CA) -> None:
    """Streams left open (a body announced, never sent): past SETTINGS_MAX_CONCURRENT_STREAMS
    the connection ends, and no stream beyond the limit was taken."""
    raw = await Raw.connect(port_of(h2_edge), ca)
    first = await raw.frames(timeout=2.0, until_closed=False)
    advertised = next(f for f in first if isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    assert advertised.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == MAX_STREAMS
    frames = [HeadersFrame(1 + 2 * i, raw.block("/_demo/upload", "POST"), flags=["END_HEADERS"])
              for i in range(MAX_STREAMS + 50)]
    await raw.pump(*frames)
    frames = await raw.frames()
    await raw.close()
    end = goaway(frames)
    assert end is not None and end.error_code != ErrorCodes.NO_ERROR
    assert end.last_stream_id <= 2 * MAX_STREAMS - 1
    await still_serves(h2_edge, ca)


async def test_hpack_bomb_is_refused(h2_edge: Any, ca: trustme.CA) -> None:
    """A small header block that decodes to far more than limits.max_header_bytes (one big
    field indexed once, then named by its index again and again)."""
    raw = await Raw.connect(port_of(h2_edge), ca)
    block = raw.block("/", extra=[("x-big", "a" * 4000)] * 40)
    assert len(block) < 8192  # compressed, it is small
    await raw.pump(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]))
    frames = await raw.frames()
    await raw.close()
    end = goaway(frames)
    assert end is not None and end.error_code != ErrorCodes.NO_ERROR
    assert 1 not in statuses(frames)
    await still_serves(h2_edge, ca)


async def test_body_past_the_window_is_a_flow_control_error(h2_edge: Any,
                                                             ca: trustme.CA) -> None:
    """What a client may send before the body is read is bounded by the windows we grant."""
    raw = await Raw.connect(port_of(h2_edge), ca)
    frames = [HeadersFrame(1, raw.block("/_demo/upload", "POST"), flags=["END_HEADERS"])]
    frames += [DataFrame(1, b"x" * 16384) for _ in range(8)]  # 128 KiB into a 64 KiB window
    await raw.pump(*frames)
    frames = await raw.frames()
    await raw.close()
    end = goaway(frames)
    assert end is not None and end.error_code == ErrorCodes.FLOW_CONTROL_ERROR


async def test_a_client_that_never_opens_its_window_is_cut_off(h2_edge: Any,
                                                               ca: trustme.CA) -> None:
    """INITIAL_WINDOW_SIZE 0 and no WINDOW_UPDATE: the answer waits at most send_timeout
    (the stream is reset), then the connection, idle, closes."""
    raw = await Raw.connect(port_of(h2_edge), ca, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    await raw.pump(SettingsFrame(0, flags=["ACK"]),
                   HeadersFrame(1, raw.block("/_demo/big?bytes=1000000"),
                                flags=["END_HEADERS", "END_STREAM"]))
    loop = asyncio.get_running_loop()
    started = loop.time()
    frames = await raw.frames(timeout=6.0)
    await raw.close()
    assert loop.time() - started < 5.0  # closed by the edge, not by our timeout
    assert not any(isinstance(f, DataFrame) and f.data for f in frames)
    assert any(isinstance(f, RstStreamFrame) and f.stream_id == 1 for f in frames)
    assert h2_edge.pipeline.metrics.timeouts["send"] >= 1


async def test_a_stream_kept_without_window_is_reset_whatever_the_others_do(
        h2_edge: Any, ca: trustme.CA) -> None:
    """Connection-level WINDOW_UPDATEs and other streams' progress do not keep a stalled
    stream (and the origin connection relaying it) alive past send_timeout."""
    raw = await Raw.connect(port_of(h2_edge), ca, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    await raw.pump(SettingsFrame(0, flags=["ACK"]),
                   HeadersFrame(1, raw.block("/_demo/big"), flags=["END_HEADERS", "END_STREAM"]))
    frames: list[Any] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + 3.0
    while loop.time() < end:  # 3 s of a client busy with everything but stream 1
        await raw.pump(WindowUpdateFrame(0, window_increment=1), PingFrame(0, b"12345678"))
        await asyncio.sleep(0.2)
        frames += await raw.frames(timeout=0.05, until_closed=False)
    await raw.close()
    assert any(isinstance(f, RstStreamFrame) and f.stream_id == 1 for f in frames)
    assert not any(isinstance(f, DataFrame) and f.data for f in frames)


async def test_idle_connections_are_closed(h2_edge: Any, ca: trustme.CA) -> None:
    loop = asyncio.get_running_loop()
    # No request at all: header_timeout (1 s).
    raw = await Raw.connect(port_of(h2_edge), ca)
    started = loop.time()
    frames = await raw.frames(timeout=5.0)
    await raw.close()
    assert loop.time() - started < 4.0 and goaway(frames) is not None
    # After an answer: keepalive_timeout (1 s), a graceful GOAWAY.
    client = await H2Client.connect(port_of(h2_edge), ca)
    assert (await client.request("GET", "/robots.txt")).status == 200
    started = loop.time()
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(5.0):
            while True:
                await client._read_once()
    assert loop.time() - started < 4.0
    assert client.terminated is not None and client.terminated.error_code == ErrorCodes.NO_ERROR
    await client.close()
    timeouts = h2_edge.pipeline.metrics.timeouts
    assert timeouts["headers"] >= 1 and timeouts["keepalive"] >= 1


async def test_a_stalled_body_times_out(h2_edge: Any, origin: Origin, ca: trustme.CA) -> None:
    raw = await Raw.connect(port_of(h2_edge), ca)
    await raw.pump(HeadersFrame(1, raw.block("/_demo/upload", "POST"), flags=["END_HEADERS"]),
                   DataFrame(1, b"x" * 100))
    frames = await raw.frames(timeout=4.0, until_closed=False)
    while not frames or not any(isinstance(f, HeadersFrame | RstStreamFrame)
                                and f.stream_id == 1 for f in frames):
        more = await raw.frames(timeout=4.0, until_closed=False)
        if not more:
            break
        frames += more
    await raw.close()
    assert statuses(frames).get(1) == 408
    assert h2_edge.pipeline.metrics.timeouts["body"] >= 1


@pytest.mark.slow
async def test_a_trickled_body_is_cut_off_by_its_rate(h2_edge: Any, ca: trustme.CA) -> None:
    """Slow POST over h2: a few bytes every half second never break body_timeout, but after
    the grace period the stream's rate is below limits.body_min_rate."""
    raw = await Raw.connect(port_of(h2_edge), ca)
    await raw.pump(HeadersFrame(1, raw.block("/_demo/upload", "POST"), flags=["END_HEADERS"]))
    frames: list[Any] = []
    for _ in range(20):
        if not await raw.pump(DataFrame(1, b"x" * 10)):
            break
        frames += await raw.frames(timeout=0.5, until_closed=False)
        if 1 in statuses(frames):
            break
    await raw.close()
    assert statuses(frames).get(1) == 408
    assert h2_edge.pipeline.metrics.timeouts["body_rate"] >= 1


async def test_one_connection_has_few_streams_at_the_origin(origin: Origin,
                                                            make_edge: EdgeFactory,
                                                            ca: trustme.CA,
                                                            tmp_path: Path) -> None:
    """40 slow requests on one connection, all at once: all answered, at most SLOW_STREAMS
    of them at the origin at a time (over HTTP/1.1 a connection has one in progress)."""
    pem = tmp_path / "site.pem"
    ca.issue_cert(NAME).private_key_and_cert_chain_pem.write_to_path(str(pem))
    edge = await make_edge(origin.url, tls={"certificates": [{"cert": str(pem),
                                                              "key": str(pem)}]},
                           origin={"max_concurrency": 64})
    body = tmp_path / "body"
    body.write_bytes(b"x")
    await fetch(origin.port, "/_demo/stats/reset", "POST")
    proc = await asyncio.create_subprocess_exec(
        "h2load", "-n", "40", "-c", "1", "-m", "40", "-d", str(body),
        f"https://127.0.0.1:{port_of(edge)}/_demo/respond?delay_ms=300",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await proc.communicate())[0].decode()
    assert "40 succeeded" in out and "40 2xx" in out, out
    stats = await origin_stats(origin)
    assert stats["requests"] == 40
    assert stats["max_in_flight"] <= SLOW_STREAMS


async def test_a_huge_hpack_table_offered_by_the_client_is_not_used(h2_edge: Any,
                                                                     ca: trustme.CA) -> None:
    """SETTINGS_HEADER_TABLE_SIZE is what the client allows us to keep for it; kept as asked,
    every distinct field we send (Date, Age, ETag...) would stay in memory for good."""
    client = await H2Client.connect(port_of(h2_edge), ca)
    try:
        client.conn.update_settings({SettingsFrame.HEADER_TABLE_SIZE: 1 << 30})
        client.flush()
        for i in range(50):
            reply = await client.request("POST", f"/_demo/respond?h_x-n={'y' * 100}{i}",
                                         body=b"x")
            assert reply.status == 200
        h2c = next(c for c in h2_edge.server.connections if hasattr(c, "h2"))
        assert h2c.h2.encoder.header_table_size <= HPACK_TABLE == 4096
        assert h2c.h2.encoder.header_table._current_size <= 4096
    finally:
        await client.close()
