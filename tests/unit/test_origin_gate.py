"""The origin gate (concurrency, bounded queue, timeout), the circuit breaker and the request
head the pool writes upstream, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from kalkan.config import OriginConfig
from kalkan.defense.verdict import KNOWN, SUSPECT, UNKNOWN
from kalkan.edge.origin import (
    IDLE_TIMEOUT,
    MISS,
    PASS,
    REFRESH,
    BadUpstreamRequest,
    Breaker,
    ClientLeft,
    GateFull,
    OriginGate,
    OriginPool,
    _serialize_head,
    budget_slots,
    near_budget,
    refresh_floor,
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


# -- the headroom budget (under attack) ---------------------------------------------------------

@pytest.mark.parametrize(("limit", "share", "slots"), [
    (10, 0.7, 7), (16, 0.7, 11), (10, 1.0, 10), (3, 0.5, 1), (1, 0.7, 1), (2, 0.01, 1),
    (100, 0.7, 70),
])
def test_budget_is_the_share_rounded_down_never_zero(limit: int, share: float,
                                                     slots: int) -> None:
    assert budget_slots(limit, share) == slots


@pytest.mark.parametrize(("load", "budget", "near"), [
    (5, 7, False), (6, 7, True), (9, 7, True), (0, 1, False), (1, 1, True), (7, 10, False),
    (8, 10, True),
])
def test_near_budget_from_four_fifths_of_it(load: int, budget: int, near: bool) -> None:
    assert near_budget(load, budget) is near


async def _settle() -> None:
    """Let woken waiters run (a granted slot reaches its task a few loop turns later)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def _holding(gate: OriginGate, kind: str, n: int) -> None:
    for _ in range(n):
        await gate.acquire(kind)


async def test_capped_gate_holds_misses_and_refreshes_to_the_budget_passes_to_the_limit() -> None:
    gate = OriginGate(limit=10, queue_size=50, queue_timeout=5.0, budget=7)
    gate.set_capped(True)
    await _holding(gate, MISS, 5)
    assert gate.try_take(REFRESH) and gate.try_take(REFRESH)
    assert not gate.try_take(REFRESH)          # 7 of 7: a refresh never queues
    waiting = asyncio.ensure_future(gate.acquire(MISS))
    await asyncio.sleep(0)
    assert not waiting.done() and gate.queued == 1
    await _holding(gate, PASS, 3)              # the other 3 slots are the passes'
    assert gate.active == 10 and gate.in_use == {MISS: 5, REFRESH: 2, PASS: 3}
    gate.release(PASS)                         # a pass slot frees: still no room for the miss
    await _settle()
    assert not waiting.done()
    gate.release(REFRESH)                      # a budgeted one frees: the miss takes it
    await waiting
    assert gate.in_use == {MISS: 6, REFRESH: 1, PASS: 2} and gate.max_cache == 7


async def test_pressure_reads_the_cache_against_its_budget_under_attack() -> None:
    gate = OriginGate(limit=10, queue_size=50, queue_timeout=5.0, budget=7)
    await _holding(gate, MISS, 7)
    await _holding(gate, PASS, 1)
    assert gate.pressure() == (8, 0, 10)          # in peace: everything against the limit
    gate.set_capped(True)
    waiters = [asyncio.ensure_future(gate.acquire(MISS)) for _ in range(2)]
    await _settle()
    assert gate.pressure() == (7, 2, 7)           # under attack: saturated at its budget
    gate.set_capped(False)
    await asyncio.gather(*waiters)
    assert gate.pressure() == (10, 0, 10)


async def test_a_pass_behind_a_blocked_miss_goes_first_else_arrival_order() -> None:
    gate = OriginGate(limit=2, queue_size=10, queue_timeout=5.0, budget=1)
    gate.set_capped(True)
    await gate.acquire(MISS)
    await gate.acquire(PASS)
    order: list[str] = []

    async def wait(kind: str, tag: str) -> None:
        await gate.acquire(kind)
        order.append(tag)

    tasks = [asyncio.ensure_future(wait(MISS, "miss")), asyncio.ensure_future(wait(PASS, "pass"))]
    await asyncio.sleep(0)
    gate.release(PASS)       # the miss is older, but only a pass fits
    await _settle()
    assert order == ["pass"]
    gate.release(MISS)
    await asyncio.gather(*tasks)
    assert order == ["pass", "miss"]


async def test_uncapping_lets_queued_misses_through_at_once() -> None:
    gate = OriginGate(limit=4, queue_size=10, queue_timeout=5.0, budget=1)
    gate.set_capped(True)
    await gate.acquire(MISS)
    waiters = [asyncio.ensure_future(gate.acquire(MISS)) for _ in range(3)]
    await asyncio.sleep(0)
    assert gate.queued == 3
    gate.set_capped(False)
    await asyncio.gather(*waiters)
    assert gate.active == 4 and gate.queued == 0


async def test_in_peace_the_budget_does_not_apply() -> None:
    gate = OriginGate(limit=4, queue_size=10, queue_timeout=5.0, budget=1)
    await _holding(gate, MISS, 2)
    assert gate.try_take(REFRESH) and gate.try_take(REFRESH)
    assert gate.active == 4 and not gate.strained


async def test_a_waiter_whose_client_left_is_dropped_when_its_turn_comes() -> None:
    gate = OriginGate(limit=1, queue_size=10, queue_timeout=5.0)
    await gate.acquire(MISS)
    left = False
    gone_waiter = asyncio.ensure_future(gate.acquire(MISS, lambda: left))
    staying = asyncio.ensure_future(gate.acquire(MISS, lambda: False))
    await asyncio.sleep(0)
    left = True
    gate.release(MISS)
    with pytest.raises(ClientLeft):
        await gone_waiter
    await staying           # the slot went to the next reader instead
    assert gate.left == 1 and gate.active == 1 and gate.queued == 0


async def test_purge_drops_waiters_whose_client_left_at_once() -> None:
    gate = OriginGate(limit=1, queue_size=2, queue_timeout=5.0)
    await gate.acquire(MISS)
    gone = {"a": False}
    waiters = [asyncio.ensure_future(gate.acquire(kind, lambda: gone["a"]))
               for kind in (MISS, PASS)]
    await asyncio.sleep(0)
    assert gate.queued == 2
    with pytest.raises(GateFull):
        await gate.acquire(MISS)   # the queue is full of them…
    gone["a"] = True
    assert gate.purge() == 2       # …until they are dropped: room for readers still here
    for waiter in waiters:
        with pytest.raises(ClientLeft):
            await waiter
    assert gate.queued == 0 and gate.left == 2 and gate.active == 1


async def test_a_cancelled_reader_in_the_queue_counts_as_left() -> None:
    gate = OriginGate(limit=1, queue_size=5, queue_timeout=5.0)
    await gate.acquire(MISS)
    reader = asyncio.ensure_future(gate.acquire(MISS, lambda: False))
    background = asyncio.ensure_future(gate.acquire(REFRESH))
    await asyncio.sleep(0)
    reader.cancel()
    background.cancel()
    for task in (reader, background):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gate.left == 1 and gate.queued == 0   # a refresh has no client to leave


async def test_free_budget_slots_go_to_deferred_refreshes_misses_first_above_the_floor() -> None:
    gate = OriginGate(limit=4, queue_size=5, queue_timeout=5.0, budget=3)
    assert gate.refresh_floor == 1
    pending = 5  # deferred refreshes waiting for a slot (fill.Filler.start_deferred)

    def on_free() -> None:
        nonlocal pending
        while pending and gate.try_take(REFRESH):
            pending -= 1

    gate.on_free = on_free
    await gate.acquire(MISS)
    gate.release(MISS)
    assert pending == 5                 # in peace nothing is offered
    gate.set_capped(True)               # the budget's three slots go to refreshes
    assert gate.in_use[REFRESH] == 3 and pending == 2
    waiters = [asyncio.ensure_future(gate.acquire(MISS)) for _ in range(3)]
    await _settle()
    gate.release(REFRESH)               # above the floor a queued reader comes first
    gate.release(REFRESH)
    await _settle()
    assert [w.done() for w in waiters] == [True, True, False]
    gate.release(REFRESH)               # below it, a refresh goes before the queued miss
    await _settle()
    assert gate.in_use == {MISS: 2, REFRESH: 1, PASS: 0} and pending == 1
    assert not waiters[2].done()
    gate.release(MISS)
    await waiters[2]
    gate.release(MISS)                  # nobody waits: the last refresh takes the slot
    assert pending == 0 and gate.in_use == {MISS: 1, REFRESH: 2, PASS: 0}
    assert gate.max_cache == 3


@pytest.mark.parametrize(("budget", "floor"), [(1, 1), (3, 1), (7, 1), (8, 2), (11, 2),
                                               (70, 17)])
def test_refresh_floor_is_a_quarter_of_the_budget_at_least_one(budget: int, floor: int) -> None:
    assert refresh_floor(budget) == floor


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


# -- who asks: known readers keep their share of the origin at all times -----------------------

def _asks(standing: int, asked: list[int] | None = None) -> Callable[[], int]:
    def judge() -> int:
        if asked is not None:
            asked.append(standing)
        return standing
    return judge


async def test_clients_not_known_to_be_good_share_the_budget_even_in_peace() -> None:
    gate = OriginGate(limit=4, queue_size=10, queue_timeout=5.0, budget=2)
    asked: list[int] = []
    assert await gate.acquire(PASS, standing=_asks(UNKNOWN, asked))
    assert await gate.acquire(PASS, standing=_asks(SUSPECT, asked))
    assert asked == []                       # room in the open share: nobody is judged
    flood = asyncio.ensure_future(gate.acquire(PASS, standing=_asks(UNKNOWN, asked)))
    await _settle()
    assert asked == [UNKNOWN] and not flood.done() and gate.open_in_use == 2
    assert not await gate.acquire(MISS, standing=_asks(KNOWN))   # a reader: the kept slots
    assert not await gate.acquire(PASS, standing=_asks(KNOWN))
    assert gate.active == 4 and gate.max_open == 2
    gate.release(PASS, True)                 # an open slot frees: the waiting flood takes it
    assert await flood and gate.open_in_use == 2
    for kind, open_slot in ((PASS, True), (PASS, True), (MISS, False), (PASS, False)):
        gate.release(kind, open_slot)
    assert gate.active == 0 and gate.open_in_use == 0


async def test_known_waiters_are_granted_before_older_unknown_ones() -> None:
    gate = OriginGate(limit=1, queue_size=10, queue_timeout=5.0, budget=1)
    await gate.acquire(MISS)                 # the edge's own: known
    unknown = asyncio.ensure_future(gate.acquire(MISS, standing=_asks(UNKNOWN)))
    await _settle()
    known = asyncio.ensure_future(gate.acquire(MISS, standing=_asks(KNOWN)))
    await _settle()
    gate.release(MISS)
    await _settle()
    assert known.done() and not unknown.done()
    gate.release(MISS, await known)
    assert await unknown                     # then the older unknown one
    gate.release(MISS, True)


async def test_a_full_queue_sheds_its_newest_worst_waiter_for_a_better_client() -> None:
    gate = OriginGate(limit=1, queue_size=3, queue_timeout=5.0, budget=1)
    await gate.acquire(PASS)
    suspects = [asyncio.ensure_future(gate.acquire(PASS, standing=_asks(SUSPECT)))
                for _ in range(2)]
    unknown = asyncio.ensure_future(gate.acquire(MISS, standing=_asks(UNKNOWN)))
    await _settle()
    assert gate.queued == 3
    with pytest.raises(GateFull):            # a suspect meets a full queue of its equals
        await gate.acquire(PASS, standing=_asks(SUSPECT))
    reader = asyncio.ensure_future(gate.acquire(MISS, standing=_asks(KNOWN)))
    await _settle()
    assert suspects[1].done() and isinstance(suspects[1].exception(), GateFull)
    assert not suspects[0].done() and gate.displaced == 1 and gate.queued == 3
    newcomer = asyncio.ensure_future(gate.acquire(PASS, standing=_asks(UNKNOWN)))
    await _settle()
    assert isinstance(suspects[0].exception(), GateFull) and gate.displaced == 2
    with pytest.raises(GateFull):            # no one worse than an unknown client is left
        await gate.acquire(PASS, standing=_asks(UNKNOWN))
    gate.release(PASS)
    assert not await reader                  # the reader first, then the unknown, in order
    gate.release(MISS)
    assert await unknown
    gate.release(MISS, True)
    assert await newcomer
    gate.release(PASS, True)
    assert gate.active == 0 and gate.queued == 0


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
