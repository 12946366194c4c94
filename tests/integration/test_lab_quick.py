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
from bench.lab import attacks, net, readers  # noqa: E402
from bench.lab.__main__ import scenario_plan  # noqa: E402


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


def _prefix(address: str) -> str:
    return address.rsplit(".", 1)[0]


def test_flash_crowd_is_ten_times_the_readers_on_a_cold_cache_and_no_attack() -> None:
    crowd = attacks.scenarios(5000, 3000, 10)["flash-crowd"]
    assert crowd.waves == ()
    plan = scenario_plan(readers.ReaderPlan(sessions_per_s=3.0), crowd)
    assert plan.surge == 10.0 and crowd.peace_s is not None and crowd.peace_s <= 1.0
    traffic = readers.Traffic("127.0.0.1", 1, plan, 0.0, 1, None, surge_window=(10.0, 20.0))
    assert traffic.arrival_rate(9.9) == 3.0
    assert traffic.arrival_rate(10.0) == 30.0 and traffic.arrival_rate(20.0) == 3.0


def test_previews_and_apps_come_during_the_search_botnet() -> None:
    s = attacks.scenarios(5000, 3000, 10)["previews-and-apps"]
    assert [w.tactic for w in s.waves] == ["search"]
    plan = scenario_plan(readers.ReaderPlan(), s)
    assert plan.previews_per_s > 0 and plan.apps >= 8
    platforms = " ".join(ua for _, ua in readers.PREVIEW_AGENTS)
    for name in ("TelegramBot", "facebookexternalhit", "Twitterbot", "WhatsApp", "Slackbot",
                 "Discordbot"):
        assert name in platforms
    assert any("Miniflux" in ua for ua in readers.APP_AGENTS)


def test_imitators_browse_like_readers_under_every_per_address_limit() -> None:
    wave = attacks.scenarios(5000, 3000, 10)["imitators"].waves[0]
    assert wave.tactic == "imitate" and wave.solve_pow and wave.ua_pool == "readers"
    from bench.lab.imitators import SEARCH_SHARE
    searches_per_min = wave.rate / wave.bots * SEARCH_SHARE * 60
    assert searches_per_min < 20 and searches_per_min * wave.per_prefix < 200


def test_cgnat_puts_bots_in_the_readers_prefixes_and_on_some_of_their_addresses() -> None:
    s = attacks.scenarios(5000, 3000, 10)["cgnat"]
    plan = scenario_plan(readers.ReaderPlan(), s)
    reader_addrs = {net.spread_address(net.READERS_BASE, i, plan.readers_per_prefix)
                    for i in range(plan.address_pool)}
    beside, same = s.waves[1], s.waves[2]
    beside_addrs = {net.spread_address(beside.base, i, beside.per_prefix, beside.host_offset)
                    for i in range(beside.bots)}
    same_addrs = {net.spread_address(same.base, i, same.per_prefix, same.host_offset)
                  for i in range(same.bots)}
    assert not beside_addrs & reader_addrs
    assert {_prefix(a) for a in beside_addrs} == {_prefix(a) for a in reader_addrs}
    assert same_addrs <= reader_addrs and len(same_addrs) == same.bots
    # Bots on readers' addresses send user agents no reader sends: the truth can tell them apart.
    assert same.ua_pool == "others"
    assert not set(attacks.OTHER_BROWSERS) & {*readers.BROWSERS, readers.TEXT_BROWSER}


def test_every_scenario_is_in_the_run_order_and_reader_changes_are_known_fields() -> None:
    table = attacks.scenarios(800, 400, 5)
    for scenario in table.values():
        scenario_plan(readers.ReaderPlan(), scenario)   # raises on an unknown field
    both = attacks.compose(["flash-crowd", "cgnat"], table)
    assert dict(both.readers)["surge"] == 10.0 and dict(both.readers)["address_pool"] == 64
    assert both.peace_s == table["flash-crowd"].peace_s
    with pytest.raises(BenchError):
        net.spread_address(net.READERS_BASE, 0, 48, 210)   # hosts past .254


@pytest.mark.slow
def test_quick_mode_produces_sane_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.lab", "--quick", "--out", str(out),
         "--export-labelled", str(tmp_path / "labelled")],
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
    # Kalkan's decisions judged against the lab's ground truth; its log exported with labels.
    decisions = by_target["kalkan"]["decisions"]
    assert decisions["clients"]["bots"] > 0 and decisions["clients"]["legitimate"] > 0
    assert decisions["per_client"]["recall"] is not None
    labelled = [json.loads(x) for x in
                (tmp_path / "labelled" / "lab-labelled.cache-bust.jsonl").read_text().splitlines()]
    assert {r["label"] for r in labelled} >= {"reader", "bot:bust"}
    assert all(r["bot"] is (r["label"].startswith("bot:")) for r in labelled
               if r["label"] not in ("shared", "unknown"))
    md = (out / "lab.md").read_text()
    assert "| cache-bust | **kalkan** |" in md
    assert (out / "lab.cache-bust.png").stat().st_size > 1000


async def test_previews_apps_and_nojs_browsers_against_a_real_origin() -> None:
    """The new reader kinds over real sockets, straight at the demo origin (no edge): link
    previews fetch one article each, feed apps get 304s for their conditional polls, and every
    client is in the ground truth with its label."""
    from support import start_origin

    origin = await start_origin()
    try:
        plan = readers.ReaderPlan(sessions_per_s=4.0, think_s=0.2, nojs_share=0.5, feeds=0,
                                  crawler_per_s=0.0, previews_per_s=6.0, apps=3,
                                  app_every_s=0.4, timeout_s=3.0)
        traffic = readers.Traffic("127.0.0.1", origin.port, plan, net.now() + 2.5, 10_000,
                                  None, seed=3)
        await traffic.run()
    finally:
        await origin.site.stop()
    kinds = {readers.KINDS[int(r[2])] for r in traffic.records}
    assert {"page", "preview", "app"} <= kinds
    apps = [r for r in traffic.records if readers.KINDS[int(r[2])] == "app"]
    assert any(r[3] == 304 for r in apps) and all(r[4] for r in apps)
    previews = [r for r in traffic.records if readers.KINDS[int(r[2])] == "preview"]
    assert previews and all(r[3] == 200 for r in previews)
    labels = {label for _, _, label in traffic.identities}
    assert {"reader", "preview", "app"} <= labels
    preview_sources = {a for a, _, label in traffic.identities if label == "preview"}
    assert all(a.startswith(f"127.{net.PREVIEWS_BASE}.") for a in preview_sources)


async def test_imitators_browse_then_search_against_a_real_origin() -> None:
    from support import origin_stats, start_origin

    origin = await start_origin()
    try:
        bins: attacks.Bins = {}
        wave = attacks.Wave("imitate", 20.0, 8, per_prefix=4, timeout_s=3.0)
        t0 = net.now()
        attacker = attacks.Attacker(wave, "127.0.0.1", origin.port, t0, t0, t0 + 2.5, 1_000,
                                    bins, None, seed=5)
        await attacker.run()
        stats = await origin_stats(origin)
    finally:
        await origin.site.stop()
    sent = sum(row[attacks.COUNTERS.index("sent")] for row in bins.values())
    assert sent >= 8 * 12   # each bot's page load: the home page and its assets
    assert attacker.used == {"bot:imitate": {attacker.address(b) for b in range(8)}}
    assert stats["requests"] > 8   # pages and searches reached the origin (assets are free)
