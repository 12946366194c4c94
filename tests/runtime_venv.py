"""A runtime-only Kalkan on Debian's /usr/bin/python3, for tests that run it as another user
(`nobody`) or with only some capabilities: the test venv's Python may live where only root can
read (pyenv under /root), as no real install does. Built once per session: a venv with the
runtime dependencies pyproject.toml declares, and this checkout's src/ on PYTHONPATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534


@dataclass
class Runtime:
    python: Path
    env: dict[str, str]

    def kalkan(self, *args: str) -> list[str]:
        return [str(self.python), "-m", "kalkan.cli", *args]


@pytest.fixture(scope="session", name="runtime")
def runtime_fixture() -> Iterator[Runtime]:
    system = Path("/usr/bin/python3")
    if not system.exists():
        pytest.skip("needs Debian's /usr/bin/python3 (python3-venv) for a runtime others can read")
    where = Path(tempfile.mkdtemp(prefix="kalkan-runtime-"))
    where.chmod(0o755)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    try:
        subprocess.run([str(system), "-m", "venv", str(where)], check=True, timeout=120)
        subprocess.run([str(where / "bin" / "pip"), "install", "--quiet",
                        "--disable-pip-version-check", *deps], check=True, timeout=300)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        yield Runtime(where / "bin" / "python", env)
    finally:
        shutil.rmtree(where, ignore_errors=True)
