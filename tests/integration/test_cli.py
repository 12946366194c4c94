"""The `kalkan` command as a user runs it: processes, signals, a crash, purge, config checks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Origin, fetch, free_port, wait_for_port

KALKAN = str(Path(sys.executable).with_name("kalkan"))





class Served:
    """A `kalkan serve` process on free ports, ended by its PID."""

    def __init__(self, origin_url: str, cache_dir: Path, config: Path | None = None) -> None:
        self.port = free_port()
        self.admin = free_port()
        extra = ["--config", str(config)] if config is not None else []
        self.proc = subprocess.Popen(
            [KALKAN, "serve", "--origin", origin_url, "--listen", f"127.0.0.1:{self.port}",
             "--admin", f"127.0.0.1:{self.admin}", "--cache-dir", str(cache_dir),
             "--access-log", "off", "--state-dir", str(cache_dir.parent / "state"), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, 10.0)
        wait_for_port(self.admin, self.proc, 10.0)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=15)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[Served]]:
    procs: list[Served] = []
    yield procs
    for p in procs:
        p.stop(signal.SIGKILL)


async def test_serve_stops_cleanly_and_a_crash_keeps_the_cache(
        origin: Origin, tmp_path: Path, served: list[Served]) -> None:
    cache = tmp_path / "cache"
    first = Served(origin.url, cache)
    served.append(first)
    assert (await fetch(first.port, "/")).header("X-Cache") == "MISS"
    assert (await fetch(first.port, "/feed/")).header("X-Cache") == "MISS"
    assert first.stop(signal.SIGTERM) == 0
    second = Served(origin.url, cache)
    served.append(second)
    assert (await fetch(second.port, "/")).header("X-Cache") == "HIT"
    await asyncio.sleep(0.5)  # let the store's writer thread reach the disk
    second.stop(signal.SIGKILL)  # a crash: no shutdown code runs
    await origin.site.stop()
    third = Served(origin.url, cache)
    served.append(third)
    resp = await fetch(third.port, "/feed/")
    assert resp.status == 200 and resp.header("X-Cache") in ("HIT", "STALE")


async def test_purge_command(origin: Origin, tmp_path: Path, served: list[Served]) -> None:
    edge = Served(origin.url, tmp_path / "cache")
    served.append(edge)
    await fetch(edge.port, "/")
    assert (await fetch(edge.port, "/")).header("X-Cache") == "HIT"
    admin = ["--admin", f"127.0.0.1:{edge.admin}", "--state-dir", str(tmp_path / "state")]
    out = await asyncio.to_thread(subprocess.run, [KALKAN, "purge", "http://news.example/",
                                                   *admin],
                                  capture_output=True, text=True)
    assert out.returncode == 0 and "purged 1" in out.stdout
    assert (await fetch(edge.port, "/")).header("X-Cache") == "MISS"
    out = await asyncio.to_thread(subprocess.run, [KALKAN, "purge", "--all", *admin],
                                  capture_output=True, text=True)
    assert out.returncode == 0 and "purged" in out.stdout
    wrong = await asyncio.to_thread(subprocess.run, [KALKAN, "purge", "--all", *admin,
                                                     "--token", "guess"],
                                    capture_output=True, text=True)
    assert wrong.returncode == 1 and "401" in wrong.stderr


def test_purge_without_a_running_edge_says_why() -> None:
    out = subprocess.run([KALKAN, "purge", "--all", "--admin", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "cannot reach the admin listener" in out.stderr


def test_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("origin:\n  url: http://127.0.0.1:8000\n")
    out = subprocess.run([KALKAN, "check-config", str(good)], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("origin:\n  url: http://127.0.0.1:8000\n  timout: 5s\n")
    out = subprocess.run([KALKAN, "check-config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{bad}:3: unknown key origin.timout (did you mean origin.timeout?)" in out.stderr


def test_serve_refuses_a_bad_flag_value() -> None:
    out = subprocess.run([KALKAN, "serve", "--origin", "ftp://x", "--listen", "127.0.0.1:1"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "origin.url" in out.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KALKAN, *args], capture_output=True, text=True, timeout=30)


async def test_decisions_reload_and_attack_mode_commands(origin: Origin, tmp_path: Path,
                                                         served: list[Served]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules: []\n")
    config = tmp_path / "kalkan.yaml"
    config.write_text(f"defense:\n  policy: {policy}\n")
    edge = Served(origin.url, tmp_path / "cache", config)
    served.append(edge)
    admin = ("--admin", f"127.0.0.1:{edge.admin}", "--state-dir", str(tmp_path / "state"))
    out = await asyncio.to_thread(run_cli, "decisions", "add", "192.0.2.0/24", "--action",
                                  "block", "--ttl", "2h", "--reason", "test flood", *admin)
    assert out.returncode == 0 and "192.0.2.0/24 → block" in out.stdout
    out = await asyncio.to_thread(run_cli, "decisions", "list", *admin)
    assert "192.0.2.0/24" in out.stdout and "test flood" in out.stdout and "manual" in out.stdout
    out = await asyncio.to_thread(run_cli, "decisions", "add", "banana", *admin)
    assert out.returncode == 1 and "not an IP address" in out.stderr
    out = await asyncio.to_thread(run_cli, "decisions", "delete", "192.0.2.0/24", *admin)
    assert out.returncode == 0
    out = await asyncio.to_thread(run_cli, "decisions", "clear", *admin)
    assert out.returncode == 0 and "cleared 0" in out.stdout
    # A broken policy: `kalkan reload` says why and the old policy keeps running.
    policy.write_text("version: 1\nrules:\n  - name: x\n    action: explode\n")
    out = await asyncio.to_thread(run_cli, "reload", *admin)
    assert out.returncode == 1 and "keeping the old policy" in out.stderr
    assert f"{policy}:4" in out.stderr
    assert (await fetch(edge.port, "/")).status == 200
    # SIGHUP reloads too (a good file now).
    policy.write_text("version: 1\nrules:\n  - name: closed\n    match: {path: /}\n"
                      "    action: block\n")
    os.kill(edge.proc.pid, signal.SIGHUP)
    for _ in range(50):
        if (await fetch(edge.port, "/")).status == 403:
            break
        await asyncio.sleep(0.1)
    assert (await fetch(edge.port, "/")).status == 403
    out = await asyncio.to_thread(run_cli, "attack-mode", "on", *admin)
    assert out.returncode == 0 and "attack mode on: threat level 2" in out.stdout
    out = await asyncio.to_thread(run_cli, "attack-mode", *admin)
    assert "attack mode on" in out.stdout
    out = await asyncio.to_thread(run_cli, "attack-mode", "auto", *admin)
    assert "attack mode auto" in out.stdout
    out = await asyncio.to_thread(run_cli, "maintenance", "on", *admin)
    assert out.returncode == 0 and "maintenance on" in out.stdout
    out = await asyncio.to_thread(run_cli, "maintenance", *admin)
    assert "maintenance on" in out.stdout
    out = await asyncio.to_thread(run_cli, "maintenance", "off", *admin)
    assert "maintenance off" in out.stdout


# What `serve` refuses, `check-config` refuses with the same message (file, line, dotted key).
# {dir} is the test's directory, where the policy and certificate files are written.
REFUSED = {
    "missing policy": ("defense:\n  policy: {dir}/absent.yaml\n",
                       ":2: defense.policy: {dir}/absent.yaml: cannot read the policy"),
    "broken policy": ("defense:\n  policy: {dir}/broken.yaml\n",
                      ":2: defense.policy: {dir}/broken.yaml:4: rules[0] (x).action"),
    "missing TLS file": ("tls:\n  certificates:\n    - cert: {dir}/absent.pem\n"
                         "      key: {dir}/absent.key\n",
                         ":3: tls.certificates[0]: {dir}/absent.pem: no such file"),
    "unreadable TLS pair": ("tls:\n  certificates:\n    - cert: {dir}/junk.pem\n"
                            "      key: {dir}/junk.pem\n",
                            ":3: tls.certificates[0]: {dir}/junk.pem"),
    "pass_ttl 0": ("defense:\n  pass_ttl: 0\n", ":2: defense.pass_ttl: must be more than 0"),
    "max_headers 0": ("limits:\n  max_headers: 0\n", ":2: limits.max_headers: must be at least 8"),
    "max_request_line 1": ("limits:\n  max_request_line: 1\n",
                           ":2: limits.max_request_line: must be at least 64"),
    "nan timeout": ("origin:\n  timeout: .nan\n",
                    ":2: origin.timeout: a duration must be a finite number"),
    "inf timeout": ("limits:\n  send_timeout: .inf\n",
                    ":2: limits.send_timeout: a duration must be a finite number"),
    "duplicate key": ("limits:\n  max_headers: 50\n  max_headers: 60\n",
                      ":3: limits.max_headers: duplicate key, already given on line 2"),
    "alerts language": ("alerts:\n  language: de\n",
                        ":2: alerts.language: must be en, ru or ky, not 'de'"),
    "alerts secret file": ("alerts:\n  telegram:\n    chat_id: '1'\n"
                           "    token_file: {dir}/absent.token\n",
                           ":4: alerts.telegram.token_file: cannot read {dir}/absent.token"),
    "broken page template": ("site:\n  name: Kaktus\n  templates: {dir}/pages\n",
                             ":3: site.templates: {dir}/pages/block.html:2: unexpected '}}'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_check_config_refuses_what_serve_refuses(tmp_path: Path, case: str) -> None:
    (tmp_path / "broken.yaml").write_text("version: 1\nrules:\n  - name: x\n"
                                          "    action: explode\n")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "block.html").write_text('{% extends "message.html" %}\n{{ } }}\n')
    text, needle = REFUSED[case]
    config = tmp_path / "kalkan.yaml"
    config.write_text(text.format(dir=tmp_path))
    expected = f"{config}{needle.format(dir=tmp_path)}"
    checked = run_cli("check-config", str(config))
    assert checked.returncode == 2 and expected in checked.stderr, checked.stderr
    # serve stops before binding anything (a serve that started would hit the timeout).
    served = run_cli("serve", "--config", str(config), "--listen", "127.0.0.1:0",
                     "--admin", "off", "--access-log", "off", "--cache-dir", "off",
                     "--state-dir", str(tmp_path / "state"))
    assert served.returncode == 2 and expected in served.stderr, served.stderr
    assert "Traceback" not in served.stderr


def test_check_config_warns_about_a_public_admin_listener(tmp_path: Path) -> None:
    config = tmp_path / "kalkan.yaml"
    config.write_text("admin:\n  listen: 0.0.0.0:9181\n")
    out = run_cli("check-config", str(config))
    assert out.returncode == 2
    assert (f"{config}:2: admin.listen: 0.0.0.0:9181 is not on loopback, so every admin route "
            "needs a token: set admin.token") in out.stderr
    config.write_text("admin:\n  listen: 0.0.0.0:9181\n  token: 0123456789abcdef0123\n")
    out = run_cli("check-config", str(config))
    assert out.returncode == 0 and "ok" in out.stdout
    assert "admin.listen 0.0.0.0:9181 is not on loopback" in out.stderr


def _open_files_limit(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/PID/limits")


def _serve_with_nofile(origin_url: str, tmp_path: Path, soft: int, hard: int,
                       max_connections: int) -> tuple[subprocess.Popen[bytes], int]:
    import resource

    config = tmp_path / "kalkan.yaml"
    config.write_text(f"limits:\n  max_connections: {max_connections}\n")
    port = free_port()
    proc = subprocess.Popen(
        [KALKAN, "serve", "--config", str(config), "--origin", origin_url, "--listen",
         f"127.0.0.1:{port}", "--admin", "off", "--access-log", "off", "--cache-dir", "off",
         "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    return out.decode(errors="replace")


async def test_serve_raises_the_open_files_limit_to_fit_max_connections(
        origin: Origin, tmp_path: Path) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4000:
        pytest.skip(f"the hard open-files limit here ({hard}) is too low to raise towards")
    proc, port = _serve_with_nofile(origin.url, tmp_path, 512, hard, 3000)
    try:
        await asyncio.to_thread(wait_for_port, port, proc)
        soft_now, hard_now = _open_files_limit(proc.pid)
        assert hard_now == hard
        # max_connections plus the margin (256 + origin.max_concurrency + idle_connections),
        # not all of the hard limit.
        assert soft_now == 3000 + 256 + 16 + 32
        assert (await fetch(port, "/")).status == 200
    finally:
        out = _stop(proc)
    assert "open-files limit raised from 512" in out


async def test_serve_says_how_many_connections_fit_under_a_low_hard_limit(
        origin: Origin, tmp_path: Path) -> None:
    proc, port = _serve_with_nofile(origin.url, tmp_path, 400, 600, 3000)
    try:
        await asyncio.to_thread(wait_for_port, port, proc)
        assert _open_files_limit(proc.pid) == (600, 600)  # raised as far as the hard limit
    finally:
        out = _stop(proc)
    warnings = [line for line in out.splitlines() if "open-files limit is 600" in line]
    assert len(warnings) == 1, out
    # 600 minus the margin (256 + origin.max_concurrency 16 + idle_connections 32).
    assert "about 296 client connections can be held, not limits.max_connections=3000" \
        in warnings[0]


def test_alliance_commands(tmp_path: Path) -> None:
    """init makes the identity once, key prints it, add checks and stores an ally, list and
    remove show and drop it; every mistake is one line naming it."""
    state = ["--state-dir", str(tmp_path / "state")]
    made = run_cli("alliance", "init", "--name", "newsroom-a", *state)
    assert made.returncode == 0, made.stderr
    key = run_cli("alliance", "key", *state).stdout.strip()
    assert key in made.stdout and len(key) == 43
    again = run_cli("alliance", "init", *state)
    assert again.returncode == 1 and "exists already" in again.stderr
    url = "https://b.example/.well-known/kalkan/feed"
    assert run_cli("alliance", "add", "newsroom-b", url, key, "--trust", "block",
                   *state).returncode == 0
    listed = run_cli("alliance", "list", *state).stdout
    assert "newsroom-b" in listed and "block" in listed
    bad = run_cli("alliance", "add", "newsroom-c", url, "not-a-key", "--trust", "observe", *state)
    assert bad.returncode == 1 and "newsroom-c" in bad.stderr and "32 bytes" in bad.stderr
    assert run_cli("alliance", "remove", "newsroom-b", *state).returncode == 0
    assert run_cli("alliance", "list", *state).stdout.strip() == "no allies"
    rotated = run_cli("alliance", "rotate", *state)
    assert rotated.returncode == 0 and "next key" in rotated.stdout


def test_an_allys_key_that_begins_with_a_dash_is_taken(tmp_path: Path) -> None:
    # One base64url key in 32 begins with "-": argparse took it for an unknown option.
    state = ["--state-dir", str(tmp_path / "state")]
    key = "-" + "A" * 41 + "E"   # 32 bytes in base64url, beginning with "-"
    url = "https://b.example/.well-known/kalkan/feed"
    added = run_cli("alliance", "add", "newsroom-b", url, key, "--trust", "observe", *state)
    assert added.returncode == 0, added.stderr
    assert "newsroom-b" in run_cli("alliance", "list", *state).stdout
    unknown = run_cli("alliance", "add", "newsroom-c", url, key, "--trusts", "observe", *state)
    assert unknown.returncode == 2 and "--trust" in unknown.stderr   # options are still checked


def test_mirror_export_needs_a_cache_directory(tmp_path: Path) -> None:
    out = run_cli("mirror", "export", str(tmp_path / "mirror"), "--cache-dir",
                  str(tmp_path / "none"))
    assert out.returncode == 1 and "no cache directory" in out.stderr
