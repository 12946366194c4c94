"""Three edges of one site sharing their state through a real redis-server on loopback: a
decision, a pass, the threat level and a purge made on one edge hold on the others; Redis killed
mid-attack leaves every edge serving and defending, and they converge when it is back."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from kalkan.config import Config
from kalkan.defense.attack_mode import ATTACK
from kalkan.edge.app import Edge
from support import Client, Origin, Response, free_port, port_of

UA = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) reader"}

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (make debian-deps)")


class RedisServer:
    """A redis-server we start and stop (by its PID), on one port, keeping nothing on disk."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait()

    def wait(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                                  capture_output=True, text=True, check=False)
            if done.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class Sentinel:
    """A Redis Sentinel (the same binary, --sentinel) watching one master as `main`."""

    def __init__(self, master: RedisServer, home: Path) -> None:
        self.port = free_port()
        conf = home / "sentinel.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\n"
                        f"sentinel monitor main 127.0.0.1 {master.port} 1\n")
        self.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis+sentinel://127.0.0.1:{self.port}/main"
        try:
            self._wait(master)
        except BaseException:
            self.kill()
            raise

    def _wait(self, master: RedisServer) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = subprocess.run(["redis-cli", "-p", str(self.port), "sentinel",
                                   "get-master-addr-by-name", "main"],
                                  capture_output=True, text=True, check=False)
            if str(master.port) in done.stdout:
                return
            time.sleep(0.05)
        raise RuntimeError("redis sentinel did not start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.kill()


EdgesFactory = Callable[..., "asyncio.Future[list[Edge]]"]


@pytest.fixture
async def cluster(tmp_path: Path, redis_server: RedisServer, origin: Origin
                  ) -> AsyncIterator[Callable[..., object]]:
    edges: list[Edge] = []

    async def start(n: int = 3, policy: str | None = None, url: str | None = None
                    ) -> list[Edge]:
        for name in "abc"[:n]:
            config = Config()
            config.listen = ["127.0.0.1:0"]
            config.admin.listen = "127.0.0.1:0"
            config.access_log.path = None
            config.origin.url = origin.url
            config.state_dir = str(tmp_path / name)          # each its own keys and decisions
            config.cache.dir = None
            config.defense.enabled = True
            config.defense.policy = policy
            config.cluster.redis = url or redis_server.url
            config.cluster.edge_id = name
            edge = Edge(config)
            await edge.start()
            edges.append(edge)
        await until(lambda: all(e.together.cluster is not None and e.together.cluster.up
                                for e in edges))
        return edges

    yield start
    for edge in edges:
        await edge.stop()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until `condition()` held (polled every 5 ms); fails the test after `timeout`."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - began


async def get(port: int, target: str, source: str, headers: dict[str, str] | None = None
              ) -> Response:
    client = await Client.connect(port, local_addr=(source, 0))
    try:
        return await client.request("GET", target, {**UA, **(headers or {})})
    finally:
        await client.close()


async def admin(edge: Edge, method: str, path: str, body: object | None = None) -> Response:
    assert edge.admin_address is not None
    client = await Client.connect(edge.admin_address[1])
    try:
        return await client.request(method, path, {
            "Authorization": f"Bearer {edge.admin_token}", "Content-Type": "application/json"},
            json.dumps(body).encode() if body is not None else b"")
    finally:
        await client.close()


def standing(edge: Edge, target: str) -> str | None:
    d = edge.pipeline.defense.decisions.lookup(target, target, time.time())  # type: ignore[union-attr]
    return None if d is None else d.action


async def test_a_decision_added_on_one_edge_is_enforced_on_the_others(cluster: object) -> None:
    a, b, c = await cluster()  # type: ignore[operator]
    assert (await get(port_of(b), "/", "127.0.40.1")).status == 200
    added = await admin(a, "POST", "/decisions", {"target": "127.0.40.1", "action": "block",
                                                   "reason": "seen flooding A"})
    assert added.status == 200
    took = await until(lambda: standing(b, "127.0.40.1") == "block"
                       and standing(c, "127.0.40.1") == "block")
    assert took < 1.0  # the target is 100 ms p99 (bench.cluster); this is a sanity bound
    assert (await get(port_of(b), "/", "127.0.40.1")).status == 403
    assert (await get(port_of(c), "/", "127.0.40.1")).status == 403
    assert (await get(port_of(c), "/", "127.0.40.2")).status == 200   # a reader next door
    listed = json.loads((await admin(c, "GET", "/decisions")).body)["decisions"]
    assert [d["origin"] for d in listed if d["target"] == "127.0.40.1"] == ["manual"]
    # Taken away on C: gone everywhere.
    assert (await admin(c, "DELETE", "/decisions?target=127.0.40.1")).status == 200
    await until(lambda: standing(a, "127.0.40.1") is None and standing(b, "127.0.40.1") is None)
    assert (await get(port_of(a), "/", "127.0.40.1")).status == 200


async def test_a_pass_earned_on_one_edge_is_accepted_by_the_others(cluster: object,
                                                                   tmp_path: Path) -> None:
    from kalkan.defense.challenge.pages import challenge_fields
    from kalkan.defense.challenge.pow import solve

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: all\n    match: {route: page}\n"
                      "    action: challenge\n")
    a, b, c = await cluster(policy=str(policy))  # type: ignore[operator]
    # Each edge started with its own key file: they now sign with one ring.
    ids = {e.pipeline.defense.keys.current.id for e in (a, b, c)}  # type: ignore[union-attr]
    assert len(ids) == 1
    page = await get(port_of(a), "/ru/", "127.0.41.1")
    assert page.status == 403
    challenge, difficulty, ret = challenge_fields(page.body)
    nonce = await asyncio.to_thread(solve, challenge, difficulty)
    answer = await get(port_of(a), f"/.kalkan/pow?c={challenge}&n={nonce}&r={ret}",
                       "127.0.41.1")
    cookie = (answer.header("Set-Cookie") or "").split(";")[0]
    assert cookie.startswith("kalkan_pass=")
    for e in (a, b, c):
        assert (await get(port_of(e), "/ru/", "127.0.41.1", {"Cookie": cookie})).status == 200
    assert (await get(port_of(b), "/ru/", "127.0.41.1")).status == 403   # no pass: challenged
    # C rotates the keys (its week is up): the others sign with the new key within seconds,
    # and the pass signed with the old one still holds everywhere (the overlap).
    rotated = c.pipeline.defense.keys.rotate(time.time())  # type: ignore[union-attr]
    await until(lambda: all(e.pipeline.defense.keys.current.id == rotated.id  # type: ignore[union-attr]
                            for e in (a, b)), timeout=5)
    for e in (a, b, c):
        assert (await get(port_of(e), "/ru/", "127.0.41.1", {"Cookie": cookie})).status == 200


async def test_the_threat_level_purges_and_reloads_are_shared(cluster: object,
                                                             tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules: []\n")
    a, b, c = await cluster(policy=str(policy))  # type: ignore[operator]
    assert (await admin(a, "POST", "/attack-mode?mode=on")).status == 200
    await until(lambda: b.pipeline.defense.threat_level == ATTACK
                and c.pipeline.defense.threat_level == ATTACK, timeout=5)
    reason = json.loads((await admin(b, "GET", "/attack-mode")).body)
    assert "another edge" in json.dumps(reason)
    assert (await admin(a, "POST", "/attack-mode?mode=auto")).status == 200
    await until(lambda: b.pipeline.defense.threat_level == 0, timeout=5)

    for e in (a, b, c):
        await get(port_of(e), "/ru/", "127.0.42.1")
    assert all(e.pipeline.store.objects > 0 for e in (a, b, c))
    assert (await admin(a, "POST", "/purge?all=1")).status == 200
    await until(lambda: b.pipeline.store.objects == 0 and c.pipeline.store.objects == 0)

    # The operator changes the policy (the same file on every edge) and reloads one edge.
    policy.write_text("version: 1\nrules:\n  - name: all\n    match: {route: page}\n"
                      "    action: challenge\n")
    assert (await get(port_of(c), "/ru/", "127.0.42.2")).status == 200
    assert (await admin(a, "POST", "/reload")).status == 200
    await until(lambda: len(c.pipeline.defense.policy.rules) > 0, timeout=5)  # type: ignore[union-attr]
    assert (await get(port_of(c), "/ru/", "127.0.42.3")).status == 403


async def test_redis_killed_mid_attack_then_back_loses_nothing(
        cluster: object, redis_server: RedisServer) -> None:
    a, b, c = await cluster()  # type: ignore[operator]
    await admin(a, "POST", "/decisions", {"target": "127.0.43.1", "action": "block"})
    await until(lambda: standing(c, "127.0.43.1") == "block")
    redis_server.kill()
    await until(lambda: not any(e.together.cluster.up for e in (a, b, c)))  # type: ignore[union-attr]
    # Cut off, every edge serves and defends on its own, and keeps deciding.
    await admin(b, "POST", "/decisions", {"target": "127.0.43.2", "action": "block"})
    for e in (a, b, c):
        assert (await get(port_of(e), "/", "127.0.43.9")).status == 200
        assert (await get(port_of(e), "/", "127.0.43.1")).status == 403
    assert (await get(port_of(b), "/", "127.0.43.2")).status == 403
    assert standing(a, "127.0.43.2") is None
    up = b.pipeline.metrics.render()
    assert "kalkan_cluster_up 0" in up
    # Back (empty: it kept nothing): the edges hand over what they hold and converge.
    redis_server.start()
    await until(lambda: all(e.together.cluster.up for e in (a, b, c)), timeout=10)  # type: ignore[union-attr]
    await until(lambda: standing(a, "127.0.43.2") == "block"
                and standing(c, "127.0.43.2") == "block", timeout=5)
    assert all(standing(e, "127.0.43.1") == "block" for e in (a, b, c))
    assert (await get(port_of(c), "/", "127.0.43.2")).status == 403


async def test_a_flood_spread_over_the_edges_meets_the_limit_of_all_together(
        cluster: object) -> None:
    """The default policy challenges more than 20 searches a minute from one address: 12 on
    each of two edges stays under it at each edge alone, not in total."""
    a, b = await cluster(2)  # type: ignore[operator]
    source = "127.0.44.1"
    on_a = [(await get(port_of(a), f"/search?q=a{i}", source)).status for i in range(12)]
    assert on_a == [200] * 12
    await until(lambda: b.together.cluster.state.credited > 0, timeout=5)  # type: ignore[union-attr]
    on_b = [(await get(port_of(b), f"/search?q=b{i}", source)).status for i in range(12)]
    assert on_b[:6] == [200] * 6      # 18 in all so far: under the limit
    assert 403 in on_b[6:]            # past 20 in all: challenged on b, which alone saw 12
    # A reader searching on both edges is not affected.
    assert (await get(port_of(b), "/search?q=reader", "127.0.44.2")).status == 200


async def test_edges_find_redis_through_sentinel(cluster: object, redis_server: RedisServer,
                                                 tmp_path: Path) -> None:
    sentinel = Sentinel(redis_server, tmp_path)
    try:
        a, b = await cluster(2, url=sentinel.url)  # type: ignore[operator]
        await admin(a, "POST", "/decisions", {"target": "127.0.45.1", "action": "block"})
        await until(lambda: standing(b, "127.0.45.1") == "block")
        assert (await get(port_of(b), "/", "127.0.45.1")).status == 403
    finally:
        sentinel.kill()


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000, which a cluster node also binds) is free."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisCluster:
    """Three redis-server nodes made one Redis Cluster (redis-cli --cluster create)."""

    def __init__(self, home: Path) -> None:
        self.ports = [cluster_port() for _ in range(3)]
        self.procs = [subprocess.Popen(
            ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file",
             f"nodes-{p}.conf", "--dir", str(home)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in self.ports]
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])
        try:
            self._create()
        except BaseException:
            self.kill()   # the test never gets the object to clean up
            raise

    def _create(self) -> None:
        for p in self.ports:
            RedisServer(p).wait()
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
                       capture_output=True, check=True, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            states = [subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"],
                                     capture_output=True, text=True, check=False).stdout
                      for p in self.ports]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not come up")

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


async def test_edges_share_through_a_redis_cluster(cluster: object, tmp_path: Path) -> None:
    nodes = RedisCluster(tmp_path)
    try:
        a, b = await cluster(2, url=nodes.url)  # type: ignore[operator]
        assert a.pipeline.defense.keys.current.id == \
            b.pipeline.defense.keys.current.id  # type: ignore[union-attr]
        await admin(a, "POST", "/decisions", {"target": "127.0.46.1", "action": "block"})
        await until(lambda: standing(b, "127.0.46.1") == "block")
        assert (await get(port_of(b), "/", "127.0.46.1")).status == 403
    finally:
        nodes.kill()
