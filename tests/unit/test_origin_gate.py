"""The origin gate (concurrency, bounded queue, timeout), the circuit breaker and the request
head the pool writes upstream, no sockets."""

from __future__ import annotations

import asyncio

import pytest

from kalkan.config import OriginConfig
from kalkan.edge.origin import (
    IDLE_TIMEOUT,
    BadUpstreamRequest,
    Breaker,
    GateFull,
    OriginGate,
    OriginPool,
    _serialize_head,
)


async def test_gate_bounds_concurrency_and_serves_in_order() -> None:
    gate = OriginGate(limit=2, queue_size=10, queue_timeout=5.0)
    order: list[int] = []

    async def job(i: int) -> None:
        await gate.acquire()
        try:
            order.append(i)
            await asyncio.sleep(0.01)
        finally:
            gate.release()

    await asyncio.gather(*(job(i) for i in range(8)))
    assert gate.max_active == 2
    assert order == list(range(8))
    assert gate.active == 0 and gate.queued == 0


async def test_gate_sheds_when_the_queue_is_full() -> None:
    gate = OriginGate(limit=1, queue_size=1, queue_timeout=5.0)
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    with pytest.raises(GateFull):
        await gate.acquire()
    gate.release()
    await waiter
    assert gate.active == 1 and gate.shed == 1
    gate.release()


async def test_gate_times_out_waiters() -> None:
    gate = OriginGate(limit=1, queue_size=5, queue_timeout=0.05)
    await gate.acquire()
    with pytest.raises(GateFull):
        await gate.acquire()
    assert gate.queued == 0
    gate.release()
    assert gate.active == 0


async def test_cancelled_waiter_gives_its_place_back() -> None:
    gate = OriginGate(limit=1, queue_size=5, queue_timeout=5.0)
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release()
    assert gate.active == 0 and gate.queued == 0


def test_breaker_opens_probes_and_closes() -> None:
    breaker = Breaker(failures=3, cooldown=10.0)
    for _ in range(3):
        assert breaker.allow(0.0)
        breaker.failure(0.0)
    assert breaker.state == Breaker.OPEN
    assert not breaker.allow(5.0)
    assert breaker.allow(10.5)       # half-open: one probe
    assert not breaker.allow(10.6)   # and only one
    breaker.failure(10.7)            # the probe failed: open again
    assert breaker.state == Breaker.OPEN and not breaker.allow(15.0)
    assert breaker.allow(21.0)
    breaker.success()
    assert breaker.state == Breaker.CLOSED and breaker.allow(21.1)
    assert breaker.opens == 2


# -- what may be written upstream ---------------------------------------------------------------

@pytest.mark.parametrize(("method", "target", "headers"), [
    ("GET", b"/", [(b"X-Evil", b"a\r\nContent-Length: 5")]),
    ("GET", b"/", [(b"X-Evil", b"a\nb")]),
    ("GET", b"/", [(b"X-Evil", b"a\rb")]),
    ("GET", b"/", [(b"X-Evil", b"a\x00b")]),
    ("GET", b"/", [(b"X-Evil\r\nHost", b"a")]),
    ("GET", b"/", [(b"Content-Length ", b"5")]),
    ("GET", b"/", [(b"", b"a")]),
    ("GET", b"/ HTTP/1.1\r\nHost: x\r\n\r\nGET /admin", []),
    ("GET", b"/a b", []),
    ("GET", b"", []),
    ("GET /x HTTP/1.1\r\n", b"/", []),
    ("G\x00T", b"/", []),
])
async def test_nothing_that_could_split_a_request_is_sent_upstream(
        method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    pool = OriginPool(OriginConfig(url="http://127.0.0.1:9"))
    with pytest.raises(BadUpstreamRequest):
        await pool.request(method, target, [(b"Host", b"news.example"), *headers])
    assert pool.connects == 0  # refused before any connection was taken or made


def test_a_well_formed_head_is_written_as_given() -> None:
    head = _serialize_head("GET", b"/a?b=%20c", [(b"Host", b"news.example"),
                                                  (b"X-Tab", b"a\tb \xe4")])
    assert head == (b"GET /a?b=%20c HTTP/1.1\r\nHost: news.example\r\n"
                    b"X-Tab: a\tb \xe4\r\n\r\n")


def test_idle_timeout_defaults_below_common_origin_keepalive_timeouts() -> None:
    pool = OriginPool(OriginConfig())
    assert pool.idle_timeout == IDLE_TIMEOUT < 5.0  # Apache's KeepAliveTimeout
    assert OriginPool(OriginConfig(), idle_timeout=1.5).idle_timeout == 1.5
