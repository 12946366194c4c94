"""The container files, checked as far as this machine allows: no image registry and no Docker
daemon here, so neither the image nor the compose stack is built or run. What is checked: the
Dockerfile copies what exists and its ENTRYPOINT + CMD is a command line `kalkan` accepts; the
compose file's build context, Dockerfile, mounted config and published port agree, and the config
it mounts passes `kalkan check-config` as the container would run it (KALKAN_SERVICE=1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from kalkan.cli import build_parser
from kalkan.config import load_config, parse_hostport

REPO = Path(__file__).resolve().parents[2]
KALKAN = str(Path(sys.executable).with_name("kalkan"))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_what_exists_and_runs_a_valid_command() -> None:
    steps = dockerfile_instructions()
    assert [w for w, _ in steps].count("FROM") == 2  # build stage, then runtime only
    for word, args in steps:
        if word == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for source in sources:
                assert (REPO / source).exists(), source
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    cmd = json.loads(dict(steps)["CMD"])
    assert entry == ["/opt/kalkan/bin/kalkan"]
    args = build_parser().parse_args(cmd)
    assert args.command == "serve" and args.config == "/etc/kalkan/kalkan.yaml"
    env = dict(steps)["ENV"]
    assert "KALKAN_SERVICE=1" in env
    assert dict(steps)["USER"] == "kalkan"
    # Runtime dependencies only: pip installs `.` (no extras) in the build stage.
    installs = [a for w, a in steps if w == "RUN" and "pip install" in a]
    assert installs and all("[" not in a.split("pip install", 1)[1] for a in installs)


def test_compose_puts_kalkan_in_front_of_wordpress() -> None:
    compose_file = REPO / "packaging" / "compose.yaml"
    compose = yaml.safe_load(compose_file.read_text())
    services = compose["services"]
    assert {"kalkan", "wordpress", "db"} <= set(services)
    assert "ports" not in services["wordpress"]   # readers reach WordPress only through Kalkan
    kalkan = services["kalkan"]
    context = (compose_file.parent / kalkan["build"]["context"]).resolve()
    assert (context / kalkan["build"]["dockerfile"]).is_file()
    inside = {v.split(":")[1]: v.split(":")[0] for v in kalkan["volumes"]}  # SOURCE:TARGET[:ro]
    config_file = compose_file.parent / inside["/etc/kalkan/kalkan.yaml"]
    for named in ("/var/lib/kalkan", "/var/cache/kalkan"):
        assert inside[named] in compose["volumes"], named
    config = load_config(config_file, service=True)
    published, _, target = kalkan["ports"][0].partition(":")
    assert published == "80"
    assert parse_hostport(config.listen[0]) == ("0.0.0.0", int(target))
    assert config.origin.url == "http://wordpress:80"
    assert config.state_dir == "/var/lib/kalkan"
    out = subprocess.run([KALKAN, "check-config", str(config_file)], capture_output=True,
                         text=True, timeout=30, env={**os.environ, "KALKAN_SERVICE": "1"})
    assert out.returncode == 0, out.stderr


def test_shipped_service_config_passes_check_config() -> None:
    out = subprocess.run([KALKAN, "--service", "check-config",
                          str(REPO / "packaging" / "kalkan.yaml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
