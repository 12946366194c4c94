"""The workers' relay over a real Unix socket: what one worker decides holds on the others,
the threat level and the busiest clients' counts travel, and the relay's worker dying and
coming back loses nothing (the workers resync into the new, empty relay)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kalkan.cluster.relay import Relay, RelayLink
from kalkan.cluster.state import ClusterState
from kalkan.defense.attack_mode import ATTACK, AttackMode
from kalkan.defense.decisions import Decisions


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout, "condition not met in time"
        await asyncio.sleep(0.005)


def action(state: ClusterState, target: str) -> str | None:
    d = state.decisions.lookup(target, target, time.time())
    return None if d is None else d.action


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[tuple[Relay, list[ClusterState],
                                                       list[RelayLink]]]:
    relay = Relay(tmp_path / "relay.sock")
    await relay.start()
    credited: list[list[tuple[str, str, int]]] = []
    states = [ClusterState(f"w{i}", Decisions(), AttackMode(),
                           counts=(lambda: [("192.0.2.50", "search", 7)]) if i == 0 else None,
                           credit=lambda rows, now: credited.append(rows) or len(rows))
              for i in range(3)]
    links = [RelayLink(relay.path, s) for s in states]
    for link in links:
        link.start()
    await until(lambda: all(link.up for link in links))
    yield relay, states, links
    for link in links:
        await link.close()
    await relay.close()


async def test_a_decision_on_one_worker_holds_on_the_others(workers: tuple) -> None:
    relay, (w0, w1, w2), _ = workers
    w0.decisions.add("192.0.2.40", "block", 600, "search flood", "rule", time.time())
    await until(lambda: action(w1, "192.0.2.40") == "block" and action(w2, "192.0.2.40") == "block")
    assert relay.decisions["192.0.2.40"]["edge"] == "w0"
    w2.decisions.delete("192.0.2.40")
    await until(lambda: action(w0, "192.0.2.40") is None and action(w1, "192.0.2.40") is None)


async def test_threat_level_and_busy_clients_travel(workers: tuple) -> None:
    _, (w0, w1, w2), _ = workers
    w0.attack.set_mode("on", time.time())    # w0's operator: under attack
    await until(lambda: w1.attack.level == ATTACK and w2.attack.level == ATTACK)
    await until(lambda: w1.credited > 0 and w2.credited > 0)   # w0's busiest client


async def test_the_relay_dying_and_back_loses_nothing(workers: tuple, tmp_path: Path) -> None:
    relay, (w0, w1, w2), links = workers
    w0.decisions.add("192.0.2.41", "block", 600, "before", "rule", time.time())
    await until(lambda: action(w2, "192.0.2.41") == "block")
    await relay.close()
    await until(lambda: not any(link.up for link in links))
    w1.decisions.add("192.0.2.42", "challenge", 600, "while the relay was away", "rule",
                     time.time())
    assert action(w0, "192.0.2.42") is None
    again = Relay(tmp_path / "relay.sock")       # the relay's worker restarted: empty
    await again.start()
    try:
        await until(lambda: all(link.up for link in links), timeout=10)
        await until(lambda: action(w0, "192.0.2.42") == "challenge"
                    and action(w2, "192.0.2.42") == "challenge")
        assert all(action(w, "192.0.2.41") == "block" for w in (w0, w1, w2))
        assert set(again.decisions) == {"192.0.2.41", "192.0.2.42"}
    finally:
        await again.close()
