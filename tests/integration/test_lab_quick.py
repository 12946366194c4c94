"""The traffic lab's quick mode runs end to end and writes sane results; its guards hold.

This checks that the lab works (so a broken lab is caught by `make test`), not how well any
target does: the machine running the tests is busy, and the quick run is tiny.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench.common import BenchError  # noqa: E402
from bench.lab import attacks, net  # noqa: E402


@pytest.mark.parametrize("source", ["10.0.0.1", "192.168.1.7", "::2", "example.org"])
def test_sources_outside_loopback_are_refused(source: str) -> None:
    with pytest.raises(BenchError):
        net.require_loopback_source(source)


def test_address_plan_spreads_clients_over_prefixes() -> None:
    addresses = [net.spread_address(net.BOTS_BASE, i, 8) for i in range(4000)]
    assert len(set(addresses)) == 4000
    assert len({a.rsplit(".", 1)[0] for a in addresses}) == 500
    assert all(net.require_loopback_source(a) for a in addresses[:: 97])
    assert net.crawler_address(3).startswith("127.66.249.")


def test_scenarios_are_named_and_compose() -> None:
    table = attacks.scenarios(5000, 3000, 12)
    assert set(attacks.SCENARIO_ORDER) == set(table)
    both = attacks.compose(["cache-bust", "slow"], table)
    assert both.name == "cache-bust+slow"
    assert len(both.waves) == len(table["cache-bust"].waves) + len(table["slow"].waves)
    search = table["low-rate-search"].waves[0]
    assert search.rate / search.bots <= 20 / 60  # every bot under the 20 searches/min limit


@pytest.mark.slow
def test_quick_mode_produces_sane_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.lab", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=150, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "lab.json").read_text())
    assert data["quick"] is True
    targets = {r["target"] for r in data["results"]}
    expected = {"origin", "kalkan"} | ({"nginx"} if shutil.which("nginx") else set())
    assert targets == expected
    for r in data["results"]:
        peace, attack = r["peace"], r["attack"]
        assert peace["requests"] > 0 and attack["requests"] > 0, r["target"]
        assert 0.0 <= attack["success"] <= 1.0
        assert r["attack_traffic"]["achieved_per_s"] > 0
        assert r["origin"]["requests_during_attack"] >= 0
        assert len(r["timeline"]["second"]) == len(r["timeline"]["attack_sent"])
    by_target = {r["target"]: r for r in data["results"]}
    # The unprotected origin takes the whole flood; an edge takes it off the origin.
    assert by_target["origin"]["origin"]["attack_requests"] > \
        by_target["kalkan"]["origin"]["attack_requests"]
    # Peace is peace: no reader is challenged before the attack starts.
    assert by_target["kalkan"]["peace"]["sessions_challenged"] == 0
    md = (out / "lab.md").read_text()
    assert "| cache-bust | **kalkan** |" in md
    assert (out / "lab.cache-bust.png").stat().st_size > 1000
