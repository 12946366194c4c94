"""A `kalkan serve` that cannot start says so in one line naming the problem and the fix, exits
non-zero and shows no traceback (unless --debug): one test per kind of failure, each running the
real command. Permission cases run it as `nobody` (tests/runtime_venv.py) when tests run as root."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from runtime_venv import Runtime, runtime_fixture  # noqa: F401 (the `runtime` fixture)
from support import free_low_ports, free_port

KALKAN = str(Path(sys.executable).with_name("kalkan"))
ROOT = os.geteuid() == 0
NOBODY = 65534




def unprivileged(rt: Runtime) -> dict[str, Any]:
    """subprocess keywords that run the runtime's kalkan as nobody (as root), or as we are."""
    kw: dict[str, Any] = {"env": rt.env, "kalkan": rt.kalkan()}
    if ROOT:
        kw.update(user=NOBODY, group=NOBODY, extra_groups=[])
    return kw


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody can read and write (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="kalkan-startup-"))
    path.chmod(0o777)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


# Fits under this machine's open-files limit, so no start warns about it (conftest does the same).
FITS = "limits:\n  max_connections: 4096\n"


def write_config(path: Path, text: str) -> Path:
    path.write_text(text + ("" if "limits:" in text else FITS))
    path.chmod(0o644)
    return path


def serve(workdir: Path, *args: str, config: Path | None = None, cwd: str | None = None,
          kalkan: list[str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`kalkan serve` on a free port, everything else off unless `args` say otherwise. A serve
    that starts is a failure here: it would run into the timeout."""
    if config is None:
        config = write_config(workdir / "base.yaml", "")
    cmd = [*(kalkan or [KALKAN]), "serve", "--config", str(config), "--origin", "http://127.0.0.1:9",
           "--listen", f"127.0.0.1:{free_port()}", "--admin", "off", "--access-log", "off",
           "--cache-dir", "off", "--state-dir", str(workdir / "state"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=cwd, **kw)


def one_line(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = serve(tmp_path, "--listen", f"127.0.0.1:{port}")
    line = one_line(out, f"cannot listen on 127.0.0.1:{port} (listen[0])",
                    "already in use", "choose another port")
    assert line.startswith("kalkan: cannot start: ") and out.returncode == 1


def test_admin_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = serve(tmp_path, "--admin", f"127.0.0.1:{port}")
    one_line(out, f"cannot listen on 127.0.0.1:{port} (admin.listen)", "already in use")




def test_no_permission_for_a_low_port(shared_dir: Path, runtime: Runtime) -> None:
    port = free_low_ports()[0] if ROOT else 1
    out = serve(shared_dir, "--listen", f"127.0.0.1:{port}", **unprivileged(runtime))
    one_line(out, f"cannot listen on 127.0.0.1:{port} (listen[0]): permission denied",
             "CAP_NET_BIND_SERVICE", "user:")


def _tls_config(where: Path, cert: Path, key: Path) -> Path:
    return write_config(where / "kalkan.yaml",
                        f"tls:\n  certificates:\n    - {{cert: {cert}, key: {key}}}\n")


def test_missing_certificate(tmp_path: Path) -> None:
    config = _tls_config(tmp_path, tmp_path / "gone.crt", tmp_path / "gone.key")
    out = serve(tmp_path, config=config)
    one_line(out, f"config error: {config}:3: tls.certificates[0]: {tmp_path}/gone.crt: "
                  "no such file")
    assert out.returncode == 2


def test_unreadable_key(shared_dir: Path, runtime: Runtime) -> None:
    leaf = trustme.CA().issue_cert("news.example")
    cert, key = shared_dir / "site.crt", shared_dir / "site.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    cert.chmod(0o644)
    key.chmod(0o600 if ROOT else 0o000)   # root's own key, as nobody sees it
    config = _tls_config(shared_dir, cert, key)
    out = serve(shared_dir, config=config, **unprivileged(runtime))
    one_line(out, "tls.certificates[0]", "cannot load certificate and key", "Permission denied")


def test_missing_policy_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "kalkan.yaml", f"defense:\n  policy: {tmp_path}/policy.yaml\n")
    out = serve(tmp_path, config=config)
    one_line(out, f"{config}:2: defense.policy: {tmp_path}/policy.yaml: cannot read the policy",
             "No such file")


def test_policy_with_a_bad_action(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: x\n    match: {path: /x}\n"
                      "    action: explode\n")
    config = write_config(tmp_path / "kalkan.yaml", f"defense:\n  policy: {policy}\n")
    out = serve(tmp_path, config=config)
    one_line(out, f"{policy}:5: rules[0] (x).action: expected one of", "'explode'")


def test_bad_config_names_the_first_problem_and_counts_the_rest(tmp_path: Path) -> None:
    config = write_config(tmp_path / "kalkan.yaml",
                          "origin:\n  timout: 5s\nlimits:\n  max_connections: 4096\n"
                          "  max_headers: lots\n")
    out = serve(tmp_path, config=config)
    one_line(out, f"config error: {config}:2: unknown key origin.timout "
                  "(did you mean origin.timeout?)",
             f"(and 1 more problem: `kalkan check-config {config}` lists them)")


def test_state_dir_not_writable(shared_dir: Path, runtime: Runtime) -> None:
    state = shared_dir / "state"
    state.mkdir(mode=0o755)
    if not ROOT:
        state.chmod(0o555)
    out = serve(shared_dir, "--state-dir", str(state), **unprivileged(runtime))
    one_line(out, f"state_dir: cannot write in {state} (Permission denied)",
             f"install -d -o {'nobody' if ROOT else ''}")


def test_relative_paths_from_the_root_directory_are_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path / "kalkan.yaml", "")
    out = subprocess.run([KALKAN, "serve", "--config", str(config), "--listen",
                          f"127.0.0.1:{free_port()}", "--admin", "off", "--access-log", "off",
                          "--cache-dir", "off"],
                         capture_output=True, text=True, timeout=30, cwd="/")
    one_line(out, "state_dir 'var' is relative and the working directory is /",
             "kalkan --service serve")
    assert not Path("/var/admin.token").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = subprocess.run(
            [KALKAN, "--debug", "serve", "--config", str(write_config(tmp_path / "k.yaml", "")),
             "--listen", f"127.0.0.1:{port}", "--admin", "off",
             "--access-log", "off", "--cache-dir", "off", "--state-dir", str(tmp_path / "s")],
            capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "StartupError" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("kalkan: cannot start: cannot listen")


def test_check_config_lists_every_problem_at_once(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: x\n    match: {path: /x}\n"
                      "    action: explode\n")
    config = tmp_path / "kalkan.yaml"
    config.write_text(
        "listen: ['nowhere']\n"                                   # 1
        "origin:\n  timout: 5s\n"                                 # 2-3
        "limits:\n  max_headers: lots\n"                          # 4-5
        f"defense:\n  policy: {policy}\n"                         # 6-7
        "tls:\n  certificates:\n"                                 # 8-9
        f"    - {{cert: {tmp_path}/no.crt, key: {tmp_path}/no.key}}\n"  # 10
        "admin:\n  listen: 0.0.0.0:9181\n"                        # 11-12
        "user: no-such-user-here\n")                              # 13
    out = subprocess.run([KALKAN, "check-config", str(config)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[0] == f"{config}: 7 problems:", out.stderr
    expected = [
        f"{config}:3: unknown key origin.timout (did you mean origin.timeout?)",
        f"{config}:5: limits.max_headers: expected a whole number, got 'lots'",
        f"{config}:1: listen: expected HOST:PORT, got 'nowhere'",
        f"{config}:12: admin.listen: 0.0.0.0:9181 is not on loopback",
        f"{config}:13: user: no user 'no-such-user-here' on this machine",
        f"{config}:7: defense.policy: {policy}:5: rules[0] (x).action",
        f"{config}:10: tls.certificates[0]: {tmp_path}/no.crt: no such file",
    ]
    for want, line in zip(expected, lines[1:], strict=True):
        assert line.strip().startswith(want), (want, line)
