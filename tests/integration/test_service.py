"""Kalkan as a service, with real processes: sd_notify to a real unix datagram socket standing in
for systemd, the shipped unit's ExecStart line run with its environment (systemd itself cannot run
here: no PID 1 systemd in this container), `user:` dropping root after binding a low port, and
the shipped logrotate rule run by Debian's logrotate against a running edge (SIGUSR1 reopens)."""

from __future__ import annotations

import asyncio
import configparser
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime_venv import NOBODY, REPO, Runtime, runtime_fixture  # noqa: F401 (the fixture)
from support import EdgeFactory, Origin, fetch, free_low_ports, free_port, port_of, wait_for_port

KALKAN = str(Path(sys.executable).with_name("kalkan"))
ROOT = os.geteuid() == 0
UNIT = REPO / "packaging" / "kalkan.service"
LOGROTATE = REPO / "packaging" / "logrotate" / "kalkan"
FITS = "limits:\n  max_connections: 4096\n"   # under this machine's open-files limit






class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound unix datagram socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.address = path if not path.startswith("\0") else "@" + path[1:]
        self.seen: list[str] = []

    def expect(self, field: str, timeout: float = 15.0) -> list[str]:
        """Datagrams until one has `field` (e.g. READY=1); returns that one's fields."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                fields = self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                break
            self.seen.append("|".join(fields))
            if field in fields:
                return fields
        raise AssertionError(f"no {field} from kalkan; got {self.seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(name="shared_dir")
def shared_dir_fixture() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kalkan-service-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)



def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    return proc.wait(timeout=20)


@pytest.fixture
def origin_process() -> Iterator[str]:
    """The demo site as its own process, for tests that are not async."""
    port = free_port()
    proc = subprocess.Popen([KALKAN, "demo-site", "--listen", f"127.0.0.1:{port}",
                             "--page-cost-ms", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, signal.SIGKILL)


def http_status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
        return int(resp.status)


def edge_config(where: Path, port: int, origin_url: str, extra: str = "") -> Path:
    config = where / "kalkan.yaml"
    config.write_text(
        f"listen: ['127.0.0.1:{port}']\norigin:\n  url: {origin_url}\n"
        f"admin:\n  listen: 127.0.0.1:{free_port()}\nstate_dir: {where}/state\n"
        f"cache:\n  dir: {where}/cache\naccess_log:\n  path: {where}/log/access.log\n"
        f"{FITS}{extra}")
    config.chmod(0o644)
    return config


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
async def test_sd_notify_ready_watchdog_reload_stopping(
        origin: Origin, tmp_path: Path, abstract: bool) -> None:
    name = f"\0kalkan-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    systemd = FakeSystemd(name)
    port = free_port()
    config = edge_config(tmp_path, port, origin.url)
    env = {**os.environ, "NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen([KALKAN, "serve", "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = await asyncio.to_thread(systemd.expect, "READY=1")
        # READY=1 comes once the listener answers: no race between "started" and "serving".
        assert any(f.startswith("STATUS=serving on 127.0.0.1:") for f in ready), ready
        assert (await fetch(port, "/")).status == 200
        await asyncio.to_thread(systemd.expect, "WATCHDOG=1")  # every 0.2 s
        os.kill(proc.pid, signal.SIGHUP)
        reloading = await asyncio.to_thread(systemd.expect, "RELOADING=1")
        assert any(f.startswith("MONOTONIC_USEC=") for f in reloading)
        await asyncio.to_thread(systemd.expect, "READY=1")
        os.kill(proc.pid, signal.SIGTERM)
        await asyncio.to_thread(systemd.expect, "STOPPING=1")
        assert await asyncio.to_thread(proc.wait, 20) == 0
    except AssertionError as exc:  # say what the edge printed, too
        stop(proc, signal.SIGKILL)
        said = proc.stdout.read().decode() if proc.stdout else ""
        raise AssertionError(f"{exc}; kalkan said: {said}") from exc
    finally:
        stop(proc, signal.SIGKILL)
        systemd.close()


def unit_service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def unit_lines(key: str) -> list[str]:
    """Every value of `key` in [Service] (configparser keeps only the last of repeated keys)."""
    text = UNIT.read_text().split("[Service]", 1)[1].split("\n[", 1)[0]
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def unit_environment(runtime: Runtime) -> dict[str, str]:
    """The runtime's environment with the unit's Environment= assignments."""
    env = dict(runtime.env)
    for assignment in unit_lines("Environment"):
        key, _, value = assignment.partition("=")
        env[key] = value
    return env


def make_unit_directories(where: Path) -> None:
    """What StateDirectory=, CacheDirectory= and LogsDirectory= do, for the unit's user."""
    for d in ("state", "cache", "log"):
        (where / d).mkdir()
        os.chown(where / d, NOBODY, NOBODY)


# The unit's user (nobody here) with CAP_NET_BIND_SERVICE as its only (ambient) capability.
AS_UNIT_USER = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
                "--bounding-set=-all,+net_bind_service", "--no-new-privs"]


def unit_command(line: str, config: Path, runtime: Runtime) -> list[str]:
    """An Exec*= line of the unit as systemd would run it, on `config` and the runtime venv."""
    argv = shlex.split(line.replace("/etc/kalkan/kalkan.yaml", str(config)))
    assert argv[0] == "/opt/kalkan/bin/kalkan", argv
    return AS_UNIT_USER + runtime.kalkan(*argv[1:])


def test_unit_file_verifies_and_is_hardened(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "kalkan.service"
    unit.write_text(UNIT.read_text().replace("/opt/kalkan/bin/kalkan", KALKAN))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                         capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for kalkan.service: ([0-9.]+)", sec.stdout)
    assert score is not None, sec.stdout + sec.stderr
    assert float(score.group(1)) <= 2.0, sec.stdout    # systemd calls up to 2.0 "OK"
    service = unit_service_section()
    assert service["Type"] == "notify"
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"] == \
        "CAP_NET_BIND_SERVICE"
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("PrivateTmp", "yes"), ("User", "kalkan")):
        assert service[key] == value, key


def test_unit_execstart_runs_with_its_environment(
        origin_process: str, shared_dir: Path, runtime: Runtime) -> None:
    """ExecStartPre and ExecStart as systemd would run them: the unit's Environment=, the
    unit's user (nobody here) with CAP_NET_BIND_SERVICE as its only (ambient) capability, on a
    port below 1024, with NOTIFY_SOCKET. The config path is swapped for a test config (with
    paths under a temporary directory: StateDirectory= and friends are systemd's to create)."""
    if not ROOT or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user with one capability")
    env = unit_environment(runtime)
    assert env["KALKAN_SERVICE"] == "1"
    port = free_low_ports()[0]
    config = edge_config(shared_dir, port, origin_process)
    make_unit_directories(shared_dir)

    def command(line: str) -> list[str]:
        return unit_command(line, config, runtime)

    pre = subprocess.run(command(unit_lines("ExecStartPre")[0]), env=env, capture_output=True,
                         text=True, timeout=60)
    assert pre.returncode == 0 and "ok" in pre.stdout, pre.stderr
    systemd = FakeSystemd(str(shared_dir / "notify"))
    os.chmod(shared_dir / "notify", 0o777)
    env["NOTIFY_SOCKET"] = systemd.address
    proc = subprocess.Popen(command(unit_lines("ExecStart")[0]), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        systemd.expect("READY=1")
        assert http_status(port) == 200
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{NOBODY}\s+{NOBODY}\s+{NOBODY}\s+{NOBODY}$", status, re.M)
        assert int(re.search(r"^CapEff:\s+(\w+)$", status, re.M).group(1), 16) == \
            1 << 10  # CAP_NET_BIND_SERVICE and nothing else
        assert stop(proc) == 0
        systemd.expect("STOPPING=1")
    finally:
        stop(proc, signal.SIGKILL)
        systemd.close()


def test_user_drops_root_after_binding_a_low_port(
        origin_process: str, shared_dir: Path, runtime: Runtime) -> None:
    """Started as root by hand with `user: nobody`: binds port < 1024, creates its directories
    for nobody, then runs as nobody for good."""
    if not ROOT:
        pytest.skip("needs root: the point is giving it up")
    port = free_low_ports()[0]
    config = edge_config(shared_dir, port, origin_process, "user: nobody\n")
    proc = subprocess.Popen(runtime.kalkan("serve", "--config", str(config)), env=runtime.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        assert http_status(port) == 200
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{NOBODY}\s+{NOBODY}\s+{NOBODY}\s+{NOBODY}$", status, re.M)
        assert re.search(rf"^Gid:\s+{NOBODY}\s+{NOBODY}\s+{NOBODY}\s+{NOBODY}$", status, re.M)
        assert re.search(r"^Groups:\s*$", status, re.M) or f"Groups:\t{NOBODY}" in status
        for d in ("state", "cache", "log"):
            assert (shared_dir / d).stat().st_uid == NOBODY, d
        assert (shared_dir / "state" / "admin.token").stat().st_uid == NOBODY
        assert stop(proc) == 0
    finally:
        stop(proc, signal.SIGKILL)


async def test_logrotate_rule_and_sigusr1_reopen(origin: Origin, tmp_path: Path) -> None:
    """The shipped logrotate rule, run by logrotate against a running edge: the old lines stay
    in the rotated file and new ones go to a new access.log (no copytruncate)."""
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate is not installed (scripts/install-debian-deps.sh installs it)")
    port = free_port()
    config = edge_config(tmp_path, port, origin.url)
    proc = subprocess.Popen([KALKAN, "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        await asyncio.to_thread(wait_for_port, port, proc)
        assert (await fetch(port, "/before")).status in (200, 404)
        logs = tmp_path / "log"
        await wait_for_lines(logs / "access.log", 1)
        rule = LOGROTATE.read_text()
        assert "systemctl kill --signal=SIGUSR1 --kill-whom=main kalkan.service" in rule
        assert "copytruncate" not in rule.split("{", 1)[1]
        rule = (rule.replace("/var/log/kalkan", str(logs))
                .replace("su kalkan kalkan", "su root root")
                .replace("create 0640 kalkan kalkan", "create 0640 root root")
                .replace("systemctl kill --signal=SIGUSR1 --kill-whom=main kalkan.service",
                         f"kill -USR1 {proc.pid}"))
        (tmp_path / "rule").write_text(rule)
        rotated = await asyncio.to_thread(
            subprocess.run, ["logrotate", "--force", "--state", str(tmp_path / "state.lr"),
                             str(tmp_path / "rule")], capture_output=True, text=True, timeout=60)
        assert rotated.returncode == 0, rotated.stderr
        assert (await fetch(port, "/after")).status in (200, 404)
        new = await wait_for_lines(logs / "access.log", 1)
        old = (logs / "access.log.1").read_text().splitlines()   # delaycompress: not yet .gz
        assert [json.loads(line)["path"] for line in old] == ["/before"]
        assert [json.loads(line)["path"] for line in new] == ["/after"]
        assert stop(proc) == 0
    finally:
        stop(proc, signal.SIGKILL)


async def wait_for_lines(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    """The log is flushed about once a second."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= count:
                return lines
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} did not get {count} line(s)")


async def test_reopen_that_fails_says_so_and_the_next_one_recovers(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    edge = await make_edge(origin.url)
    log = Path(edge.config.access_log.path or "")
    await fetch(port_of(edge), "/one")
    log.rename(log.with_name("access.log.1"))
    log.mkdir()                                  # something that cannot be opened for append
    with caplog.at_level(logging.ERROR, logger="kalkan"):
        edge.reopen_log()
    assert any("cannot reopen the access log" in r.getMessage() for r in caplog.records)
    await fetch(port_of(edge), "/lost")          # no file to write to: dropped, not a crash
    log.rmdir()
    edge.reopen_log()
    await fetch(port_of(edge), "/two")
    edge.pipeline.access_log.flush()
    assert [json.loads(line)["path"] for line in log.read_text().splitlines()] == ["/two"]
    old = log.with_name("access.log.1").read_text().splitlines()
    assert [json.loads(line)["path"] for line in old] == ["/one"]
