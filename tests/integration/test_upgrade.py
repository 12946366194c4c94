"""Upgrades without dropping connections (docs/workers.md "Upgrade"): real processes, real
sockets, a real origin.

A new version of Kalkan installed in the venv is stood in for by a `sitecustomize` module on
the supervisor's PYTHONPATH, which every interpreter runs at start: it reads the version the
"installed" code has from a file beside it (the test changes the file, as pip would change
the install). A supervisor that really executes itself again then runs that version, and so
do the workers it forks; the old workers, forked before, keep the old one. The workers say
which version they run in `kalkan_worker_version` (worker 0's /metrics has every worker's)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from test_workers import KALKAN, Supervised, _children, _running, supervise

from support import Client, fetch

NEW_CODE = '''\
# A stand-in for the Kalkan installed in the venv (tests/integration/test_upgrade.py).
import pathlib
import sys

_want = (pathlib.Path(__file__).parent / "version").read_text().strip()
if _want == "broken":
    # An install whose edge cannot be imported: `import kalkan.edge.app` raises.
    sys.modules["kalkan.edge.app"] = None
elif _want.endswith("-workers-fail"):
    # An install that imports, but whose workers fail before they serve.
    import kalkan
    import kalkan.edge.app

    kalkan.__version__ = _want

    async def _start(self):
        raise OSError(13, "a new worker that cannot start (test)", "/nowhere")

    kalkan.edge.app.Edge.start = _start
else:
    import kalkan

    kalkan.__version__ = _want
'''


class Installed:
    """The version the venv "holds" for every interpreter started from now on."""

    def __init__(self, tmp: Path, version: str) -> None:
        self.dir = tmp / "installed"
        self.dir.mkdir()
        (self.dir / "sitecustomize.py").write_text(NEW_CODE)
        self.set(version)

    def set(self, version: str) -> None:
        (self.dir / "version").write_text(version)

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.dir)}


async def versions(s: Supervised) -> dict[str, str]:
    """{worker slot: the Kalkan version it runs}, from worker 0's /metrics."""
    out = {}
    for key in await s.metrics():
        m = re.fullmatch(r'kalkan_worker_version\{worker="(\d+)",version="([^"]+)"\}', key)
        if m:
            out[m.group(1)] = m.group(2)
    return out


async def all_run(s: Supervised, version: str, timeout: float = 3.0) -> dict[str, str]:
    """Until both workers' metrics say they run `version` (a worker's metrics are written
    every second: just after an upgrade the file of a slot may still be its old worker's)."""
    deadline = time.monotonic() + timeout
    while (found := await versions(s)) != {"0": version, "1": version}:
        if time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)
    return found


async def until(condition: str, s: Supervised, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while condition not in s.said():
        assert s.proc.poll() is None, s.said()
        assert time.monotonic() < deadline, f"no {condition!r} in: {s.said()}"
        await asyncio.sleep(0.05)


class SlowOrigin:
    """An origin that answers /slow/... after `delay` seconds and everything else at once
    (cacheable), keep-alive."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                slow = b" /slow/" in head.split(b"\r\n", 1)[0]
                if slow:
                    await asyncio.sleep(self.delay)
                body = b"slow answer" if slow else b"a page of the site"
                cache = b"no-store" if slow else b"max-age=60"
                writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: " + cache +
                             b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def old_edge(slow_origin: SlowOrigin, tmp_path: Path, supervised: list[Supervised],
                   defense: bool = False) -> tuple[Installed, Supervised, dict[int, int]]:
    """Two workers of the "installed" version 1.0-old, serving; with their pids."""
    installed = Installed(tmp_path, "1.0-old")
    s = Supervised(tmp_path, await slow_origin.start(),
                   extra=f"defense: {{enabled: {'true' if defense else 'false'}}}\n",
                   env=installed.env)
    supervised.append(s)
    await s.serving()
    return installed, s, await s.pids()


@pytest.fixture
def supervised() -> Iterator[list[Supervised]]:
    yield from supervise()


@pytest.fixture
async def slow_origin() -> AsyncIterator[SlowOrigin]:
    origin = SlowOrigin(6.0)
    yield origin
    await origin.stop()


async def test_an_upgrade_under_load_answers_every_request_and_keeps_the_supervisor(
        slow_origin: SlowOrigin, tmp_path: Path, supervised: list[Supervised]) -> None:
    installed, s, before = await old_edge(slow_origin, tmp_path, supervised)
    assert await versions(s) == {"0": "1.0-old", "1": "1.0-old"}
    supervisor = s.proc.pid

    done = asyncio.Event()
    answered = reconnected = fresh = 0
    failures: list[str] = []

    async def keep_alive_client(n: int) -> None:
        """One keep-alive connection at a time; a new one when the server says
        `Connection: close` (what a draining worker answers), as any HTTP client does."""
        nonlocal answered, reconnected
        client = await Client.connect(s.port)
        for i in range(1500):  # bounded: about 50 requests a second for at most 30 s
            if done.is_set():
                break
            try:
                reply = await client.request("GET", f"/page/{(n * 7 + i) % 20}")
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                failures.append(f"client {n} request {i}: {exc!r}")
                await client.close()
                client = await Client.connect(s.port)
                continue
            if reply.status != 200:
                failures.append(f"client {n} request {i}: status {reply.status}")
            answered += 1
            if not reply.keep_alive:
                await client.close()
                client = await Client.connect(s.port)
                reconnected += 1
            await asyncio.sleep(0.02)
        await client.close()

    async def new_connections() -> None:
        nonlocal fresh
        for i in range(600):  # a new connection every 50 ms, at most 30 s
            if done.is_set():
                break
            try:
                reply = await fetch(s.port, f"/page/{i % 20}")
                if reply.status != 200:
                    failures.append(f"new connection {i}: status {reply.status}")
                fresh += 1
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                failures.append(f"new connection {i}: {exc!r}")
            await asyncio.sleep(0.05)

    async def slow(i: int) -> int:
        return (await fetch(s.port, f"/slow/{i}")).status

    load = [asyncio.create_task(keep_alive_client(n)) for n in range(4)]
    load.append(asyncio.create_task(new_connections()))
    await asyncio.sleep(0.5)
    # Requests in progress on the old workers (each is on one: no new worker exists yet),
    # 6 s long: the old worker of at least one slot is told to stop while they run.
    slow_ones = [asyncio.create_task(slow(i)) for i in range(4)]
    await asyncio.sleep(0.3)
    installed.set("2.0-new")
    asked = time.monotonic()
    os.kill(supervisor, signal.SIGUSR2)
    await until("upgrade done", s, 40.0)
    took = time.monotonic() - asked
    await asyncio.sleep(0.5)   # a little load on the new workers alone
    done.set()
    await asyncio.gather(*load)
    assert await asyncio.gather(*slow_ones) == [200] * 4

    print(f"upgrade under load: {took:.1f} s; {answered} keep-alive answers "
          f"({reconnected} told to reconnect), {fresh} new connections, "
          f"{len(failures)} failures")
    assert failures == [], failures[:10]
    assert answered > 300 and fresh > 20, (answered, fresh)
    assert reconnected > 0  # the draining workers told their keep-alive clients to go
    out = s.said()
    assert "kalkan 2.0-new: upgrading from 1.0-old" in out, out
    assert "kalkan 2.0-new: upgrade done: 2 workers replaced" in out, out
    assert s.proc.poll() is None and s.proc.pid == supervisor
    assert await all_run(s, "2.0-new") == {"0": "2.0-new", "1": "2.0-new"}
    after = await s.pids()
    assert set(after.values()).isdisjoint(before.values()), (before, after)
    assert sorted(_children(supervisor)) == sorted(after.values())  # its children still
    assert not any(_running(pid) for pid in before.values())
    drained = [float(t) for t in re.findall(
        r"old worker \d \(pid \d+\) finished its requests and exited in ([\d.]+) s", out)]
    assert len(drained) == 2, out
    # At least one old worker was told to stop with a slow request in progress, and waited for
    # it (a worker with nothing in progress is gone within about a second).
    assert max(drained) >= 1.5, out
    assert s.stop() == 0


def upgrade_command(s: Supervised) -> subprocess.CompletedProcess[str]:
    """`kalkan upgrade` against `s`: asks through worker 0's admin, waits for the outcome."""
    return subprocess.run([KALKAN, "upgrade", "--admin", f"127.0.0.1:{s.admin}", "--state-dir",
                           str(s.state), "--timeout", "60"],
                          capture_output=True, text=True, timeout=90)


async def test_an_upgrade_whose_new_code_cannot_start_changes_nothing(
        slow_origin: SlowOrigin, tmp_path: Path, supervised: list[Supervised]) -> None:
    installed, s, before = await old_edge(slow_origin, tmp_path, supervised)
    installed.set("broken")
    out = await asyncio.to_thread(upgrade_command, s)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "upgrade refused, the workers keep running: the new code cannot start" in \
        out.stdout and "kalkan.edge.app" in out.stdout, out.stdout
    assert "upgrade refused" in s.said() and "kalkan.edge.app" in s.said(), s.said()
    assert {(await fetch(s.port, f"/page/{i}")).status for i in range(20)} == {200}
    assert await s.pids() == before
    assert await versions(s) == {"0": "1.0-old", "1": "1.0-old"}
    # The install fixed, the next upgrade goes through.
    installed.set("2.0-new")
    out = await asyncio.to_thread(upgrade_command, s)
    assert out.returncode == 0, (out.stdout, out.stderr, s.said())
    assert "kalkan 2.0-new: upgrade done: 2 workers replaced" in out.stdout, out.stdout
    assert await all_run(s, "2.0-new") == {"0": "2.0-new", "1": "2.0-new"}
    assert s.stop() == 0


async def test_an_upgrade_whose_new_workers_fail_keeps_the_old_workers_serving(
        slow_origin: SlowOrigin, tmp_path: Path, supervised: list[Supervised]) -> None:
    installed, s, before = await old_edge(slow_origin, tmp_path, supervised)
    installed.set("2.0-workers-fail")
    out = await asyncio.to_thread(upgrade_command, s)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "upgrade stopped: the new worker 0" in out.stdout, out.stdout
    said = s.said()
    assert "the new worker 0" in said and "before it served" in said, said
    assert "a new worker that cannot start (test)" in said, said
    assert s.proc.poll() is None
    assert {(await fetch(s.port, f"/page/{i}")).status for i in range(20)} == {200}
    assert await s.pids() == before
    assert await versions(s) == {"0": "1.0-old", "1": "1.0-old"}
    assert sorted(_children(s.proc.pid)) == sorted(before.values())
    assert s.stop() == 0


async def test_one_edge_without_a_supervisor_is_not_killed_by_sigusr2(
        slow_origin: SlowOrigin, tmp_path: Path, supervised: list[Supervised]) -> None:
    s = Supervised(tmp_path, await slow_origin.start(), workers=1,
                   extra="defense: {enabled: false}\n")
    supervised.append(s)
    await until("serving http", s, 10.0)
    os.kill(s.proc.pid, signal.SIGUSR2)
    await until("SIGUSR2 (upgrade) ignored", s, 5.0)
    assert (await fetch(s.port, "/page/1")).status == 200
    out = await asyncio.to_thread(upgrade_command, s)
    assert out.returncode == 1 and "without a supervisor (workers: 1)" in out.stderr, out
    assert s.stop() == 0


async def test_an_upgrade_that_changes_the_listeners_is_refused_naming_the_key(
        slow_origin: SlowOrigin, tmp_path: Path, supervised: list[Supervised]) -> None:
    installed, s, before = await old_edge(slow_origin, tmp_path, supervised)
    config = tmp_path / "kalkan.yaml"
    config.write_text(config.read_text().replace(f"127.0.0.1:{s.port}", "127.0.0.1:1"))
    installed.set("2.0-new")
    os.kill(s.proc.pid, signal.SIGUSR2)
    await until("upgrade refused", s, 30.0)
    assert f"listeners: ['127.0.0.1:{s.port}'] -> ['127.0.0.1:1']" in s.said(), s.said()
    assert "needs a restart" in s.said()
    assert await s.pids() == before
    assert (await fetch(s.port, "/page/1")).status == 200
    assert s.stop() == 0


async def test_what_the_old_workers_held_is_held_by_the_new_ones(
        slow_origin: SlowOrigin, tmp_path: Path, supervised: list[Supervised]) -> None:
    """An operator's decision and the cached pages survive an upgrade: the new workers load
    the state files and the cache directory the old ones keep, and the relay passes the rest."""
    installed, s, _ = await old_edge(slow_origin, tmp_path, supervised, defense=True)
    token = (s.state / "admin.token").read_text().strip()
    reply = await fetch(s.admin, "/decisions", "POST", host="127.0.0.1", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        body=b'{"target": "127.0.0.66", "action": "block", "ttl": 3600}')
    assert reply.status == 200, reply.body
    for i in range(10):  # cached by both workers (the kernel spreads the connections)
        assert (await fetch(s.port, f"/page/{i}")).status == 200
    await asyncio.sleep(1.0)  # the cache's files are written after the answers
    installed.set("2.0-new")
    os.kill(s.proc.pid, signal.SIGUSR2)
    await until("upgrade done", s, 40.0)
    assert await all_run(s, "2.0-new") == {"0": "2.0-new", "1": "2.0-new"}

    async def blocked() -> int:
        client = await Client.connect(s.port, local_addr=("127.0.0.66", 0))
        try:
            return (await client.request("GET", "/page/1")).status
        finally:
            await client.close()

    assert {await blocked() for _ in range(12)} == {403}  # on both new workers
    hits = {(await fetch(s.port, f"/page/{i}")).header("X-Cache") for i in range(10)}
    assert hits == {"HIT"}, hits
    assert s.stop() == 0
