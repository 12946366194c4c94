"""The workers' relay over a real Unix socket: what one worker decides holds on the others,
the threat level and the busiest clients' counts travel, and the relay's worker dying and
coming back loses nothing (the workers resync into the new, empty relay)."""

from __future__ import annotations

import asyncio
import os
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


@pytest.fixture(params=["file", "abstract"])
async def workers(request: pytest.FixtureRequest, tmp_path: Path
                  ) -> AsyncIterator[tuple[Relay, list[ClusterState], list[RelayLink]]]:
    where: str | Path = tmp_path / "relay.sock" if request.param == "file" \
        else f"@kalkan-test-relay-{os.getpid()}-{id(tmp_path)}"
    relay = Relay(where)
    await relay.start()
    credited: list[list[tuple[str, str, int]]] = []
    states = [ClusterState(f"w{i}", Decisions(), AttackMode(),
                           counts=(lambda: [("192.0.2.50", "search", 7)]) if i == 0 else None,
                           credit=lambda rows, now: credited.append(rows) or len(rows))
              for i in range(3)]
    links = [RelayLink(where, s) for s in states]
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
    again = Relay(relay.path)                    # the relay's worker restarted: empty
    await again.start()
    try:
        await until(lambda: all(link.up for link in links), timeout=10)
        await until(lambda: action(w0, "192.0.2.42") == "challenge"
                    and action(w2, "192.0.2.42") == "challenge")
        assert all(action(w, "192.0.2.41") == "block" for w in (w0, w1, w2))
        assert set(again.decisions) == {"192.0.2.41", "192.0.2.42"}
    finally:
        await again.close()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
async def test_another_user_cannot_join_the_relay(workers: tuple) -> None:
    """An abstract socket has no file mode: the relay checks who connects (SO_PEERCRED)."""
    import pwd
    import shutil
    import subprocess

    relay, _, _ = workers
    address = relay.path if isinstance(relay.path, str) else str(relay.path)
    if isinstance(relay.path, Path):
        os.chmod(relay.path, 0o666)   # even a socket file opened to all: refused by the check
    probe = ("import socket,sys\n"
             "a=sys.argv[1]\n"
             "s=socket.socket(socket.AF_UNIX)\n"
             "s.connect('\\0'+a[1:] if a.startswith('@') else a)\n"
             "s.settimeout(5)\n"
             "print(repr(s.recv(100)))\n")
    nobody = pwd.getpwnam("nobody")
    python = shutil.which("python3", path="/usr/bin:/bin")   # one `nobody` may run
    if python is None:
        pytest.skip("no system python3 for the other user")

    def become_nobody() -> None:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    done = await asyncio.to_thread(
        subprocess.run, [python, "-c", probe, address], capture_output=True, text=True,
        timeout=20, preexec_fn=become_nobody, check=False, cwd="/")
    # Kept out by the file system (a socket file in the edge's private directory), or let in
    # and closed at once, no snapshot sent (an abstract socket).
    refused = done.returncode == 0 and done.stdout.strip() == "b''"
    assert refused or "PermissionError" in done.stderr, (done.stdout, done.stderr)
    if isinstance(relay.path, str):
        assert refused


async def test_two_edges_joined_by_a_relay_share_decisions(tmp_path: Path, origin: object
                                                           ) -> None:
    """What the supervisor sets up for two workers without cluster.redis (RelayPlan)."""
    from kalkan.cluster.relay import RelayPlan
    from kalkan.config import Config
    from kalkan.edge.app import Edge

    address = f"@kalkan-test-edges-{os.getpid()}"
    edges = []
    for slot in (0, 1):
        config = Config()
        config.listen, config.admin.listen = ["127.0.0.1:0"], None
        config.access_log.path, config.cache.dir = None, None
        config.origin.url = origin.url  # type: ignore[attr-defined]
        config.state_dir = str(tmp_path / f"w{slot}")
        edge = Edge(config)
        edge.together.relay_plan = RelayPlan(address, f"w{slot}", serve=slot == 0)
        await edge.start()
        edges.append(edge)
    try:
        await until(lambda: all(e.together.cluster is not None and e.together.cluster.up
                                for e in edges))
        w0, w1 = (e.pipeline.defense.decisions for e in edges)  # type: ignore[union-attr]
        w1.add("192.0.2.60", "block", 600, "seen on worker 1", "rule", time.time())
        await until(lambda: w0.lookup("192.0.2.60", "192.0.2.0/24", time.time()) is not None)
    finally:
        for edge in edges:
            await edge.stop()
