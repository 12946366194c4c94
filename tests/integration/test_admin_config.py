"""The admin commands find the edge they talk to from its config (--config or KALKAN_CONFIG:
admin address, token, state_dir), and the README's attack-time commands work as written against
`kalkan demo` (what `make demo` runs), from the directory it was started in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import free_port, wait_for_port

KALKAN = str(Path(sys.executable).with_name("kalkan"))
FITS = "limits:\n  max_connections: 4096\n"





def run(*args: str, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("KALKAN_CONFIG", "KALKAN_SERVICE")}
    return subprocess.run([KALKAN, *args], capture_output=True, text=True, timeout=30, cwd=cwd,
                          env={**clean, **(env or {})})


@pytest.fixture
def edge(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`kalkan serve` with an admin listener on a non-default port and its own state_dir,
    both known only from its config file."""
    admin = free_port()
    config = tmp_path / "kalkan.yaml"
    config.write_text(f"listen: ['127.0.0.1:{free_port()}']\n"
                      f"origin:\n  url: http://127.0.0.1:{free_port()}\n"
                      f"admin:\n  listen: 127.0.0.1:{admin}\n"
                      f"state_dir: {tmp_path}/state\ncache:\n  dir: null\n"
                      f"access_log:\n  path: null\n{FITS}")
    proc = subprocess.Popen([KALKAN, "serve", "--config", str(config)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(admin, proc)
        yield config
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_admin_commands_read_kalkan_config(edge: Path, tmp_path: Path) -> None:
    env = {"KALKAN_CONFIG": str(edge)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run("decisions", "add", "203.0.113.0/24", "--ttl", "2h", "--reason", "search flood",
              cwd=elsewhere, env=env)
    assert out.returncode == 0 and "203.0.113.0/24 → block" in out.stdout, out.stderr
    out = run("decisions", "list", cwd=elsewhere, env=env)
    assert out.returncode == 0 and "search flood" in out.stdout
    out = run("attack-mode", "on", cwd=elsewhere, env=env)
    assert out.returncode == 0 and out.stdout.startswith("attack mode on"), out.stderr
    out = run("purge", "--all", cwd=elsewhere, env=env)
    assert out.returncode == 0 and "purged" in out.stdout
    out = run("reload", cwd=elsewhere, env=env)
    assert out.returncode == 0, out.stderr
    # Without it the defaults (127.0.0.1:9181, var/) are not this edge: said, not a traceback.
    out = run("decisions", "list", "--admin", "127.0.0.1:1", cwd=elsewhere)
    assert out.returncode == 1 and "cannot reach the admin listener" in out.stderr


def test_admin_commands_read_config_flag_over_the_environment(edge: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(f"admin:\n  listen: 127.0.0.1:{free_port()}\n")
    out = run("decisions", "list", "--config", str(edge), env={"KALKAN_CONFIG": str(wrong)})
    assert out.returncode == 0 and "no standing decisions" in out.stdout, out.stderr
    # A token that is not the edge's: the refusal says where the token came from.
    out = run("decisions", "list", "--config", str(edge), "--state-dir", str(tmp_path / "no"))
    assert out.returncode == 1
    assert "401" in out.stderr and f"{tmp_path}/no/admin.token does not exist" in out.stderr


def test_readme_attack_commands_work_against_the_demo(tmp_path: Path) -> None:
    """`make demo` runs `kalkan demo` in the checkout; the README's commands run there too.
    The ports are moved off the defaults so the test cannot meet another demo; nothing else."""
    listen, admin, site = free_port(), free_port(), free_port()
    demo = subprocess.Popen([KALKAN, "demo", "--listen", f"127.0.0.1:{listen}", "--admin",
                             f"127.0.0.1:{admin}", "--origin-listen", f"127.0.0.1:{site}"],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_port(admin, demo)
        at = ("--admin", f"127.0.0.1:{admin}")
        readme = (Path(__file__).parents[2] / "README.md").read_text()
        for command in ("decisions list", "decisions add 203.0.113.0/24 --action block --ttl 2h",
                        "decisions delete 203.0.113.0/24", "attack-mode on", "reload"):
            assert f".venv/bin/kalkan {command}" in readme, command
            out = run(*command.split(), *at, cwd=tmp_path)
            assert out.returncode == 0, (command, out.stderr)
        assert (tmp_path / "var" / "admin.token").exists()
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=15)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
