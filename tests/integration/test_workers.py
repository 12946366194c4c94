"""`kalkan serve` with several workers (docs/workers.md): real processes, real sockets, a real
origin. Which worker answered is read from worker 0's /metrics (every worker's, labelled
`worker`), never from anything on the public path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import Client, Origin, fetch, free_port

KALKAN = str(Path(sys.executable).with_name("kalkan"))


class Supervised:
    """A `kalkan serve` with `workers` workers on free loopback ports, ended by its PID."""

    def __init__(self, tmp: Path, origin_url: str, *, workers: int = 2,
                 extra: str = "", env: dict[str, str] | None = None,
                 admin: int | None = None, port: int | None = None, cache: str = "") -> None:
        self.tmp = tmp
        self.port = port or free_port()
        self.admin = admin or free_port()
        self.state = tmp / "state"
        self.log = tmp / "access.log"
        self.out = tmp / "serve.out"
        config = tmp / "kalkan.yaml"
        config.write_text(
            f"workers: {workers}\n"
            f"listen: ['127.0.0.1:{self.port}']\n"
            f"admin: {{listen: '127.0.0.1:{self.admin}'}}\n"
            f"access_log: {{path: '{self.log}'}}\n"
            f"state_dir: '{self.state}'\n"
            f"cache: {{dir: '{tmp / 'cache'}'{cache}}}\n"
            f"limits: {{max_connections: 2048}}\n" + extra, encoding="utf-8")
        self.proc = subprocess.Popen(
            [KALKAN, "serve", "--config", str(config), "--origin", origin_url],
            stdout=self.out.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def said(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    async def serving(self, timeout: float = 8.0) -> None:
        """Until the supervisor says every worker serves."""
        deadline = time.monotonic() + timeout
        while "workers (pids" not in self.said():
            assert self.proc.poll() is None, f"exited early: {self.said()}"
            assert time.monotonic() < deadline, f"not serving after {timeout} s: {self.said()}"
            await asyncio.sleep(0.05)

    async def metrics(self) -> dict[str, float]:
        """Worker 0's /metrics (every worker's samples) as {sample with labels: value}."""
        reply = await fetch(self.admin, "/metrics", host="127.0.0.1")
        assert reply.status == 200
        out = {}
        for line in reply.body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    async def pids(self, n: int = 2, timeout: float = 5.0) -> dict[int, int]:
        """{worker slot: pid} once all `n` workers' metrics are in (others write every second)."""
        deadline = time.monotonic() + timeout
        while True:
            found = {int(m.group(1)): int(v) for k, v in (await self.metrics()).items()
                     if (m := re.fullmatch(r'kalkan_worker_pid\{worker="(\d+)"\}', k))}
            if len(found) == n or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def supervised() -> Iterator[list[Supervised]]:
    yield from supervise()


def supervise() -> Iterator[list[Supervised]]:
    """The `Supervised` put in the list are killed at the end if still running (with their
    workers)."""
    started: list[Supervised] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            for pid in _children(s.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            s.stop(signal.SIGKILL)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _running(pid: int) -> bool:
    """Alive and not a zombie (a worker whose parent died is reaped by whoever adopts it)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text(errors="replace")
    except OSError:
        return False


def per_worker(metrics: dict[str, float], family: str) -> dict[str, float]:
    """A family's samples summed per `worker` label."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        m = re.fullmatch(rf'{family}\{{worker="(\d+)"[,}}].*', key)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


async def test_two_workers_serve_one_port_and_both_get_connections(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: false}\n")
    supervised.append(s)
    await s.serving()
    pids = await s.pids()
    assert len(pids) == 2 and pids[0] != pids[1] and s.proc.pid not in pids.values()
    assert sorted(_children(s.proc.pid)) == sorted(pids.values())
    for _ in range(40):  # a new connection each: the kernel spreads them over both sockets
        assert (await fetch(s.port, "/")).status == 200
    await asyncio.sleep(1.3)  # worker 1 writes its metrics every second
    served = per_worker(await s.metrics(), "kalkan_requests_total")
    assert set(served) == {"0", "1"} and sum(served.values()) == 40, served
    assert all(n > 0 for n in served.values()), served
    # Each worker holds its share of the origin's slots: 16 in all.
    limits = per_worker(await s.metrics(), "kalkan_origin_gate_limit")
    assert limits == {"0": 8.0, "1": 8.0}
    assert s.stop() == 0


async def test_a_killed_worker_comes_back_and_clients_retrying_succeed(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: false}\n")
    supervised.append(s)
    await s.serving()
    before = await s.pids()
    os.kill(before[1], signal.SIGKILL)
    failed = 0
    for i in range(60):  # a client that retries a failed request once succeeds
        try:
            reply = await fetch(s.port, f"/?n={i}")
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            failed += 1
            reply = await fetch(s.port, f"/?n={i}")
        assert reply.status == 200
    deadline = time.monotonic() + 5.0
    after = await s.pids()
    while after.get(1) in (None, before[1]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        after = await s.pids()
    assert after[1] != before[1] and after[0] == before[0]
    assert (await s.metrics())['kalkan_worker_restarts{worker="1"}'] == 1
    assert f"worker 1 (pid {before[1]}) was killed by SIGKILL" in s.said()
    assert failed <= 1, failed  # nothing was in flight on the killed worker
    assert s.stop() == 0


async def test_sighup_under_load_drops_no_connection(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    # The defence on (a reload reloads its policy), this client allowed: 360 requests in a
    # second from one address would meet the policy's rates, which is not what is tested here.
    s = Supervised(tmp_path, origin.url,
                   extra="defense: {enabled: true, allow: ['127.0.0.1']}\n")
    supervised.append(s)
    await s.serving()
    clients = [await Client.connect(s.port) for _ in range(6)]
    answered = 0

    async def keep_asking(client: Client) -> None:
        nonlocal answered
        for i in range(60):  # keep-alive: one connection for all of them
            reply = await client.request("GET", "/" if i % 2 else "/feed/")
            assert reply.status == 200 and reply.keep_alive
            answered += 1

    async def reload_repeatedly() -> None:
        for _ in range(3):
            await asyncio.sleep(0.15)
            os.kill(s.proc.pid, signal.SIGHUP)

    await asyncio.gather(*(keep_asking(c) for c in clients), reload_repeatedly())
    assert answered == 360
    for c in clients:  # still open after the reloads
        assert (await c.request("GET", "/")).status == 200
        await c.close()
    out = s.said()
    assert out.count("reload passed to 2 workers") == 3, out
    # The admin's POST /reload reaches the other worker through the same path.
    reply = await fetch(s.admin, "/reload", "POST", host="127.0.0.1",
                        headers={"Authorization": "Bearer " + (s.state / "admin.token")
                                 .read_text().strip()})
    assert reply.status == 200, reply.body
    assert "reload passed to the other 1 worker(s)" in json.loads(reply.body)["messages"]
    deadline = time.monotonic() + 3
    while "reload passed to 1 workers" not in s.said() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert "reload passed to 1 workers" in s.said()
    assert s.stop() == 0


class CountingOrigin:
    """A slow origin that counts its requests in flight (the most at once is what matters)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.now = 0
        self.most = 0
        self.served = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.now += 1
                self.most = max(self.most, self.now)
                await asyncio.sleep(self.delay)
                self.now -= 1
                self.served += 1
                writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                             b"Content-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def counting_origin() -> AsyncIterator[CountingOrigin]:
    o = CountingOrigin(0.15)
    yield o
    await o.stop()


async def test_the_origin_never_sees_more_than_max_concurrency_from_all_workers(
        counting_origin: CountingOrigin, tmp_path: Path, supervised: list[Supervised]) -> None:
    port = await counting_origin.start()
    s = Supervised(tmp_path, f"http://127.0.0.1:{port}",
                   extra="defense: {enabled: false}\norigin: {max_concurrency: 3}\n")
    supervised.append(s)
    await s.serving()

    async def one(i: int) -> int:
        return (await fetch(s.port, f"/page/{i}")).status

    statuses = await asyncio.gather(*(one(i) for i in range(40)))
    assert statuses == [200] * 40
    assert counting_origin.served == 40
    assert 2 <= counting_origin.most <= 3, counting_origin.most
    limits = per_worker(await s.metrics(), "kalkan_origin_gate_limit")
    assert limits == {"0": 2.0, "1": 1.0}
    assert s.stop() == 0


async def test_access_log_lines_of_two_workers_never_tear(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: false}\n")
    supervised.append(s)
    await s.serving()
    long = "x" * 1500  # long lines: a batch of them is several pages of the file
    total = 0

    async def ask(n: int) -> None:
        nonlocal total
        client = await Client.connect(s.port)
        for i in range(50):
            assert (await client.request("GET", f"/?q={long}{n}-{i}")).status == 200
            total += 1
        await client.close()

    await asyncio.gather(*(ask(n) for n in range(12)))
    await asyncio.sleep(1.3)
    served = per_worker(await s.metrics(), "kalkan_requests_total")
    assert all(served.get(w, 0) > 0 for w in ("0", "1")), served  # both wrote the one log
    assert s.stop() == 0  # stopping flushes what each worker holds
    lines = s.log.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # every line whole
    assert sum(1 for r in records if long in r.get("query", "") + r.get("path", "")) == total


async def test_sigterm_exits_0_within_the_grace_and_state_files_are_intact(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: true}\n")
    supervised.append(s)
    await s.serving()
    token = (s.state / "admin.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    reply = await fetch(s.admin, "/decisions", "POST", host="127.0.0.1", headers=auth,
                        body=b'{"target": "203.0.113.7", "action": "block", "ttl": 3600}')
    assert reply.status == 200, reply.body
    for i in range(20):
        assert (await fetch(s.port, f"/?n={i}")).status == 200
    workers = _children(s.proc.pid)
    started = time.monotonic()
    assert s.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 8.0
    assert not any(_running(pid) for pid in workers)
    saved = json.loads((s.state / "decisions.json").read_text())
    assert [d["target"] for d in saved["decisions"]] == ["203.0.113.7"]
    leftovers = [p.name for p in s.state.rglob("*") if p.name.endswith(".tmp")]
    leftovers += [p.name for p in (tmp_path / "cache").rglob("*.tmp")]
    assert leftovers == []
    # One process on the same state: the decision is still there, and the cache serves.
    # On the same ports (free_port() again could race with another process for a new one).
    again = Supervised(tmp_path, origin.url, workers=1, extra="defense: {enabled: true}\n",
                       port=s.port, admin=s.admin)
    supervised.append(again)
    deadline = time.monotonic() + 8
    while "serving http" not in again.said():
        assert again.proc.poll() is None and time.monotonic() < deadline, again.said()
        await asyncio.sleep(0.05)
    listed: Any = json.loads((await fetch(again.admin, "/decisions", host="127.0.0.1",
                                          headers=auth)).body)
    assert [d["target"] for d in listed["decisions"]] == ["203.0.113.7"]
    assert (await fetch(again.port, "/?n=1")).header("X-Cache") == "HIT"
    assert again.stop() == 0


async def test_an_operators_decision_and_purge_reach_every_worker(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    # Each worker's own memory only: a worker taking its sibling's cache file
    # (test_worker_cache.py) would make the misses below depend on which worker asked first.
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: true}\n",
                   cache=", share_directory: false")
    supervised.append(s)
    await s.serving()
    await s.pids()  # every worker's private admin listener is up
    token = (s.state / "admin.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    reply = await fetch(s.admin, "/decisions", "POST", host="127.0.0.1", headers=auth,
                        body=b'{"target": "127.0.0.1", "action": "block", "ttl": 600}')
    assert reply.status == 200, reply.body
    assert json.loads(reply.body)["workers"] == {"1": "ok (200)"}
    statuses = {(await fetch(s.port, "/")).status for _ in range(30)}  # over both workers
    assert statuses == {403}, statuses
    reply = await fetch(s.admin, "/decisions?target=127.0.0.1", "DELETE", host="127.0.0.1",
                        headers=auth)
    assert reply.status == 200 and json.loads(reply.body)["workers"] == {"1": "ok (200)"}
    assert {(await fetch(s.port, "/")).status for _ in range(30)} == {200}
    await asyncio.sleep(1.3)
    before = per_worker(await s.metrics(), 'kalkan_requests_total')
    assert all(before.get(w, 0) > 0 for w in ("0", "1")), before
    reply = await fetch(s.admin, "/purge?all=1", "POST", host="127.0.0.1", headers=auth)
    assert reply.status == 200 and json.loads(reply.body)["workers"] == {"1": "ok (200)"}
    for _ in range(30):
        await fetch(s.port, "/")
    await asyncio.sleep(1.3)
    misses = {k: v for k, v in (await s.metrics()).items()
              if k.startswith("kalkan_requests_total") and 'cache="MISS"' in k}
    # One miss per worker before the purge and one after it: both caches were emptied.
    assert sorted(misses.values()) == [2.0, 2.0], misses
    assert s.stop() == 0


async def test_a_worker_whose_event_loop_is_stuck_is_killed_and_replaced(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    # WatchdogSec=3s as systemd would set it: a worker silent for 3 s is stuck.
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: false}\n",
                   env={"WATCHDOG_USEC": "3000000"})
    supervised.append(s)
    await s.serving()
    before = await s.pids()
    os.kill(before[1], signal.SIGSTOP)  # its loop stops beating (as an endless loop would)
    deadline = time.monotonic() + 8.0
    while f"worker 1 (pid {before[1]}) has not beaten" not in s.said():
        assert time.monotonic() < deadline, s.said()
        await asyncio.sleep(0.1)
    after = await s.pids()
    while after.get(1) in (None, before[1]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        after = await s.pids()
    assert after[1] != before[1]
    assert {(await fetch(s.port, "/")).status for _ in range(10)} == {200}
    assert s.stop() == 0


async def test_sigusr1_makes_every_worker_reopen_the_access_log(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: false}\n")
    supervised.append(s)
    await s.serving()
    for i in range(20):
        assert (await fetch(s.port, f"/?before={i}")).status == 200
    await asyncio.sleep(1.2)  # each worker writes its lines at least once a second
    s.log.rename(tmp_path / "access.log.1")  # as logrotate does, then its postrotate:
    os.kill(s.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 3
    while not s.log.exists():  # worker 0 and 1 both reopen; wait for the file to appear
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    for i in range(30):
        assert (await fetch(s.port, f"/?after={i}")).status == 200
    await asyncio.sleep(1.3)
    served = per_worker(await s.metrics(), "kalkan_requests_total")
    assert all(served.get(w, 0) > 0 for w in ("0", "1")), served
    assert s.stop() == 0
    old = [json.loads(line) for line in (tmp_path / "access.log.1").read_text().splitlines()]
    new = [json.loads(line) for line in s.log.read_text().splitlines()]
    assert len(old) == 20 and all("before" in r["query"] for r in old)
    assert len(new) == 30 and all("after" in r["query"] for r in new)


async def test_a_worker_that_cannot_start_stops_serve_with_its_reason(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    (tmp_path / "access.log").mkdir()  # passes serve's checks; a worker cannot open it
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: false}\n")
    supervised.append(s)
    assert s.proc.wait(timeout=10) == 1
    said = s.said()
    assert re.search(rf"kalkan: worker \d cannot start: {tmp_path}/access.log: Is a directory",
                     said), said
    assert re.search(r"worker \d exited with status 1 before it could serve; stopping", said)
    assert not _children(s.proc.pid)


async def test_a_taken_admin_port_stops_serve_before_any_worker_starts(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    import socket

    with socket.socket() as taken:  # the admin port, held by something else
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # The supervisor binds worker 0's admin listener itself (as it binds the public ones),
        # so that it keeps listening while worker 0 is restarted or replaced.
        s = Supervised(tmp_path, origin.url, admin=taken.getsockname()[1],
                       extra="defense: {enabled: false}\n")
        supervised.append(s)
        assert s.proc.wait(timeout=10) == 1
    said = s.said()
    assert f"kalkan: cannot start: cannot listen on 127.0.0.1:{s.admin} (admin.listen): the " \
        "address is already in use" in said, said
    assert "worker" not in said


def test_workers_errors_name_the_key(tmp_path: Path) -> None:
    out = subprocess.run([KALKAN, "serve", "--workers", "0"], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 2
    assert "config error: command line: workers: must be at least 1" in out.stderr
    config = tmp_path / "k.yaml"
    config.write_text("workers: 3\norigin:\n  max_concurrency: 2\n")
    out = subprocess.run([KALKAN, "check-config", str(config)], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode != 0
    assert f"{config}:1: workers: 3 workers need origin.max_concurrency of at least 3" in \
        out.stdout + out.stderr


async def test_workers_stop_when_the_supervisor_is_killed(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: false}\n")
    supervised.append(s)
    await s.serving()
    workers = _children(s.proc.pid)
    assert len(workers) == 2
    assert s.stop(signal.SIGKILL) == -signal.SIGKILL
    deadline = time.monotonic() + 8.0  # SIGTERM: they drain (5 s at most) and exit
    while any(_running(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        await asyncio.sleep(0.1)


async def test_every_worker_loads_every_workers_decisions_and_one_process_folds_them(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    saved = {"version": 1, "decisions": [{
        "target": "127.0.0.1", "action": "block", "reason": "by worker 1", "origin": "manual",
        "created": time.time(), "expires": time.time() + 600}]}
    (state / "decisions.w1.json").write_text(json.dumps(saved))  # as worker 1 left it
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: true}\n")
    supervised.append(s)
    await s.serving()
    assert {(await fetch(s.port, "/")).status for _ in range(20)} == {403}  # both workers
    assert s.stop() == 0
    one = Supervised(tmp_path, origin.url, workers=1, extra="defense: {enabled: true}\n",
                     port=s.port, admin=s.admin)
    supervised.append(one)
    deadline = time.monotonic() + 8
    while "serving http" not in one.said():
        assert one.proc.poll() is None and time.monotonic() < deadline, one.said()
        await asyncio.sleep(0.05)
    assert (await fetch(one.port, "/")).status == 403
    assert one.stop() == 0
    assert not (state / "decisions.w1.json").exists()
    folded = json.loads((state / "decisions.json").read_text())["decisions"]
    # (Its reason may have become "escalated after N strikes": the client kept asking.)
    assert [(d["target"], d["action"]) for d in folded] == [("127.0.0.1", "block")]


async def test_the_admin_commands_work_against_several_workers(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: true}\n")
    supervised.append(s)
    await s.serving()
    await s.pids()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KALKAN, *args, "--admin", f"127.0.0.1:{s.admin}", "--state-dir",
                               str(s.state)], capture_output=True, text=True, timeout=20)

    out = await asyncio.to_thread(run, "decisions", "add", "203.0.113.0/24", "--ttl", "2h")
    assert out.returncode == 0 and "203.0.113.0/24" in out.stdout, out.stderr
    out = await asyncio.to_thread(run, "attack-mode", "on")
    assert out.returncode == 0 and out.stdout.startswith("attack mode on"), out.stderr
    out = await asyncio.to_thread(run, "purge", "--all")
    assert out.returncode == 0 and "purged" in out.stdout, out.stderr
    out = await asyncio.to_thread(run, "reload")
    assert out.returncode == 0, out.stderr
    await asyncio.sleep(1.3)
    levels = per_worker(await s.metrics(), "kalkan_threat_level")
    assert levels.keys() == {"0", "1"} and len(set(levels.values())) == 1 and \
        min(levels.values()) >= 1, levels  # attack mode on in both
    standing = per_worker(await s.metrics(), "kalkan_decisions_standing")
    assert standing == {"0": 1.0, "1": 1.0}, standing
    assert s.stop() == 0


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A redis-server on loopback (as tests/integration/test_cluster.py starts it)."""
    from test_cluster import RedisServer

    server = RedisServer(free_port())
    server.start()
    yield server.url
    server.kill()


async def test_workers_in_a_cluster_are_edges_of_their_own_to_each_other(
        origin: Origin, tmp_path: Path, supervised: list[Supervised], redis_url: str) -> None:
    s = Supervised(tmp_path, origin.url,
                   extra=f"defense: {{enabled: true}}\ncluster: {{redis: '{redis_url}'}}\n")
    supervised.append(s)
    await s.serving()
    await s.pids()
    deadline = time.monotonic() + 5
    while per_worker(await s.metrics(), "kalkan_cluster_up") != {"0": 1.0, "1": 1.0}:
        assert time.monotonic() < deadline, per_worker(await s.metrics(), "kalkan_cluster_up")
        await asyncio.sleep(0.1)
    # A decision taken on worker 1 alone (its private admin listener, not worker 0's fan-out)
    # reaches worker 0 through Redis: the workers have names of their own in the cluster.
    token = (s.state / "admin.token").read_text().strip()
    port = int((s.state / "workers" / "admin-1.port").read_text())
    reply = await fetch(port, "/decisions", "POST", host="127.0.0.1", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        body=b'{"target": "198.51.100.9", "action": "block", "ttl": 600}')
    assert reply.status == 200, reply.body
    while per_worker(await s.metrics(), "kalkan_decisions_standing").get("0") != 1.0:
        assert time.monotonic() < deadline + 5, await s.metrics()
        await asyncio.sleep(0.1)
    assert s.stop() == 0


async def test_a_flood_spread_over_the_workers_meets_the_limit_of_all_together(
        origin: Origin, tmp_path: Path, supervised: list[Supervised]) -> None:
    """No Redis: the workers share through their relay. The default policy challenges more
    than 20 searches a minute from one address; the kernel spreads one client's connections
    over both workers, so neither alone sees more than about half of them."""
    s = Supervised(tmp_path, origin.url, extra="defense: {enabled: true}\n")
    supervised.append(s)
    await s.serving()
    await s.pids()
    deadline = time.monotonic() + 5
    while per_worker(await s.metrics(), "kalkan_cluster_up") != {"0": 1.0, "1": 1.0}:
        assert time.monotonic() < deadline, per_worker(await s.metrics(), "kalkan_cluster_up")
        await asyncio.sleep(0.1)

    async def search(i: int) -> int:
        client = await Client.connect(s.port, local_addr=("127.0.70.1", 0))
        try:
            return (await client.request("GET", f"/search?q=spread{i}", {
                "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) reader"})).status
        finally:
            await client.close()

    first = [await search(i) for i in range(16)]
    assert first == [200] * 16
    await asyncio.sleep(2.5)   # the workers tell each other their busiest clients each second
    later = [await search(100 + i) for i in range(10)]
    assert 403 in later        # past 20 in all: challenged, though no worker saw 20 itself
    served = per_worker(await s.metrics(), "kalkan_cluster_clients_credited_total")
    assert served.get("0", 0) > 0 and served.get("1", 0) > 0
    assert s.stop() == 0
