"""The shipped Grafana dashboard (packaging/grafana/kalkan.json) queries only metrics that a real
edge's /metrics exports, so no panel is silently empty after a rename."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

from support import EdgeFactory, Origin

DASHBOARD = Path(__file__).resolve().parents[2] / "packaging" / "grafana" / "kalkan.json"
_SUFFIXES = ("_bucket", "_sum", "_count")


def queried_metrics() -> set[str]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in data["panels"] for t in panel["targets"]]
    assert exprs, "the dashboard has no queries"
    names = set()
    for expr in exprs:
        for name in re.findall(r"\bkalkan_[a-z0-9_]+", expr):
            for suffix in _SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
            names.add(name)
    return names


async def test_every_queried_metric_is_exported(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    assert edge.admin_address is not None
    url = f"http://127.0.0.1:{edge.admin_address[1]}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    exported = set(re.findall(r"^# TYPE (kalkan_[a-z0-9_]+) ", text, re.MULTILINE))
    queried = queried_metrics()
    assert {"kalkan_rule_decisions_total", "kalkan_challenges_total",
            "kalkan_route_requests_total", "kalkan_origin_busy_share"} <= queried
    assert queried - exported == set(), "queried by the dashboard but not exported"


def test_dashboard_shape() -> None:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"  # chosen at import, not hard-coded
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
