"""The whole deployment of docs/install.md, end to end: the shipped config (packaging/kalkan.yaml)
with its ACME block uncommented, checked and started by the shipped unit's ExecStartPre and
ExecStart lines with the unit's environment, as an unprivileged user holding only
CAP_NET_BIND_SERVICE, on ports below 1024, in front of a WordPress-like origin; the certificate
comes from Debian's pebble (a test ACME CA), and readers get the site over HTTP/2 with a cached
page on the second visit.

systemd itself cannot run in this container (no PID 1 systemd): the unit's lines are run as
systemd would run them (tests/integration/test_service.py checks the unit file itself)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from test_acme import DOMAIN, Pebble
from test_service import (
    FakeSystemd,
    make_unit_directories,
    shared_dir_fixture,  # noqa: F401 (the fixture)
    stop,
    unit_command,
    unit_environment,
    unit_lines,
)
from test_wordpress_defaults import wordpress_fixture  # noqa: F401 (the fixture)

from runtime_venv import NOBODY, REPO, Runtime, runtime_fixture  # noqa: F401 (the fixture)
from support import free_low_ports
from wordpress_origin import WordPressOrigin

pytestmark = pytest.mark.slow
CONFIG = REPO / "packaging" / "kalkan.yaml"

if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("pebble") is None \
        or shutil.which("curl") is None:
    pytest.skip("needs root, setpriv, pebble and curl", allow_module_level=True)


def shipped_config_with_acme(where: Path, https: int, http: int, origin_url: str,
                             pebble: Pebble) -> Path:
    """packaging/kalkan.yaml as docs/install.md says to edit it: the ACME block uncommented,
    the origin's address, this machine's names and ports; the paths systemd would make
    (StateDirectory= and friends) under `where`, and pebble's CA instead of Let's Encrypt."""
    lines = CONFIG.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# TLS with a certificate "
                                                                        "from an ACME CA"))
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("# listen:"))
    end = next(i for i in range(first, len(lines)) if not lines[i].startswith("# "))
    kept = [line for line in lines[:start] if not line.startswith("listen:")]
    text = "\n".join(kept + [line[2:] for line in lines[first:end]] + lines[end:]) + "\n"
    text = (text.replace('listen: ["0.0.0.0:443"]', f'listen: ["127.0.0.1:{https}"]')
            .replace("http_listen: 0.0.0.0:80", f"http_listen: 127.0.0.1:{http}")
            .replace("url: http://127.0.0.1:8000", f"url: {origin_url}")
            .replace("https://acme-v02.api.letsencrypt.org/directory", pebble.directory)
            .replace("domains: [news.example, www.news.example]",
                     f"domains: [{DOMAIN}]\n    ca_bundle: {pebble.ca_bundle}"))
    parsed = yaml.safe_load(text)
    assert parsed["tls"]["acme"]["domains"] == [DOMAIN], text  # the block really uncommented
    assert parsed["listen"] == [f"127.0.0.1:{https}"], text
    text += (f"state_dir: {where}/state\ncache:\n  dir: {where}/cache\naccess_log:\n"
             f"  path: {where}/log/access.log\nlimits:\n  max_connections: 4096\n")
    path = where / "kalkan.yaml"
    path.write_text(text)
    path.chmod(0o644)
    return path


def curl_h2(port: int, root: Path, target: str = "/") -> tuple[str, dict[str, str]]:
    """(HTTP version, response fields) of a verified HTTPS GET for DOMAIN with curl --http2."""
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-D", "-", "--http2", "--cacert", str(root),
         "--resolve", f"{DOMAIN}:{port}:127.0.0.1", "--max-time", "10",
         f"https://{DOMAIN}:{port}{target}"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise OSError(f"curl exited {out.returncode}: {out.stderr}")
    status, *fields = out.stdout.strip().splitlines()
    parsed = {}
    for field in fields:
        name, _, value = field.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return status.split()[0], parsed | {":status": status.split()[1]}


async def test_from_the_shipped_files_to_https_http2_and_a_cached_page(
        wordpress: WordPressOrigin, shared_dir: Path, runtime: Runtime) -> None:
    https, http = free_low_ports(2)
    pebble = Pebble(shared_dir, http)
    pebble.start()
    await pebble.wait_ready()
    config = shipped_config_with_acme(shared_dir, https, http, wordpress.url, pebble)
    make_unit_directories(shared_dir)
    env = unit_environment(runtime)

    def command(line: str) -> list[str]:
        return unit_command(line, config, runtime)

    pre = subprocess.run(command(unit_lines("ExecStartPre")[0]), env=env, capture_output=True,
                         text=True, timeout=60)
    assert pre.returncode == 0 and "ok" in pre.stdout, pre.stdout + pre.stderr
    systemd = FakeSystemd(str(shared_dir / "notify"))
    os.chmod(shared_dir / "notify", 0o777)
    env["NOTIFY_SOCKET"] = systemd.address
    output = shared_dir / "kalkan.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(command(unit_lines("ExecStart")[0]), env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        await asyncio.to_thread(systemd.expect, "READY=1", 30.0)
        root = shared_dir / "pebble-root.pem"
        root.write_text(await pebble.root())
        version, fields = "", {}
        for _ in range(300):  # the certificate arrives from pebble in about a second
            try:
                version, fields = await asyncio.to_thread(curl_h2, https, root)
                break
            except OSError:
                await asyncio.sleep(0.2)
        assert version == "HTTP/2" and fields[":status"] == "200", \
            output.read_text(errors="replace") + pebble.log()
        version, fields = await asyncio.to_thread(curl_h2, https, root)
        assert version == "HTTP/2" and fields.get("x-cache") == "HIT", fields
        assert wordpress.hits["/"] == 1  # WordPress sent no cache headers; one request reached it
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert f"Uid:\t{NOBODY}\t{NOBODY}" in status
        assert stop(proc) == 0
        await asyncio.to_thread(systemd.expect, "STOPPING=1")
    finally:
        stop(proc, signal.SIGKILL)
        systemd.close()
        pebble.stop()
