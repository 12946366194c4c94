"""Session-wide checks: the compiled hot-path modules (setup.py, mypyc) must be built from the
sources as they are now, or the tests would run yesterday's code."""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Every `kalkan serve` a test starts is one process (workers: 1, today's path) unless the test is
# about workers: it sets `workers` in its config or passes --workers (both override this).
os.environ["KALKAN_WORKERS"] = "1"


def stale_compiled_modules() -> list[str]:
    """Sources newer than the compiled module built from them (which Python imports first)."""
    stale = []
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for compiled in SRC.rglob(f"*{suffix}"):
            source = compiled.with_name(compiled.name[:-len(suffix)] + ".py")
            if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
                stale.append(str(source.relative_to(SRC)))
    return stale


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_compiled_modules()
    if stale:
        raise pytest.UsageError(
            f"compiled modules older than their sources: {', '.join(sorted(stale))}; "
            "rebuild them (`make venv`, or `.venv/bin/pip install -e '.[test,bench]'`), or "
            "remove the *.so files next to them to test the sources interpreted")
