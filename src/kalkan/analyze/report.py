"""The report as plain data (a JSON-ready dict): what was read, the timeline by outcome, the top
prefixes, addresses, agents, paths, query shapes and statuses, the clusters, and what the
mitigation did. The renderers (markdown.py, html.py, charts.py) only format it.

"Suspects" are the clients the edge stopped (challenged, blocked or refused) for at least half
of their requests: the traffic the defence itself judged to be the attack. The mitigation
section measures how fast and how completely they were stopped, and what the others got.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

from kalkan.analyze import clusters as clustering
from kalkan.analyze.shapes import OUTCOMES, STOPPED

# Bucket widths the timeline may use: the smallest that keeps it within MAX_BUCKETS.
BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
MAX_BUCKETS = 720
_STOPPED_SQL = "(" + ", ".join(f"'{o}'" for o in STOPPED) + ")"
_MITIGATION_SQL = ("(starts_with(decision, 'challenge:') OR starts_with(decision, 'block:') "
                   "OR starts_with(decision, 'drop:') OR starts_with(decision, 'tarpit:') "
                   "OR starts_with(decision, 'refuse:'))")


@dataclass
class Options:
    bucket: int | None = None        # seconds per timeline bucket; None: chosen from the span
    top: int = 15                    # rows per top list
    clusters: int = 12               # clusters shown
    min_requests: int = clustering.MIN_REQUESTS
    name_address: Callable[[str], str] = field(default=lambda a: a)  # pseudonymize, or not
    pseudonymized: bool = False


def iso(ms: int | float | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000.0, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def choose_bucket(span_ms: int) -> int:
    for width in BUCKETS:
        if span_ms / 1000.0 / width <= MAX_BUCKETS:
            return width
    return BUCKETS[-1]


def build(con: duckdb.DuckDBPyConnection, files: list[str], opts: Options) -> dict[str, Any]:
    """The report from the loaded table `groups` (load.load)."""
    started = time.perf_counter()
    row = con.execute("SELECT sum(n), min(first), max(last), "
                      "coalesce(sum(n) FILTER (WHERE origin), 0) FROM groups").fetchone()
    assert row is not None
    lines, t0, t1, at_origin = (int(v) for v in row)
    bucket = opts.bucket or choose_bucket(t1 - t0)
    clustering.build(con, opts.min_requests)
    name = opts.name_address
    report: dict[str, Any] = {
        "generator": "kalkan analyze",
        "inputs": {"files": files, "lines": lines, "first": iso(t0), "last": iso(t1),
                   "seconds": round((t1 - t0) / 1000.0, 3)},
        "pseudonymized": opts.pseudonymized,
    }
    first = _firsts(con, name)
    mitigation = first["mitigation"]
    since = mitigation["ms"] if mitigation else None
    width = bucket * 1000
    start = t0 - t0 % width
    # One pass over the requests' times for the totals, the timeline and the mitigation's
    # before/after: requests by bucket, after-the-first-mitigation, outcome and whether a
    # suspect sent them.
    after = f"t >= {int(since)}" if since is not None else "false"
    cells = [(int(b), bool(a), o, bool(s), int(n), int(g)) for b, a, o, s, n, g in con.execute(f"""
        SELECT (t - {start}) // {width} AS b, {after} AS after, outcome, suspect, count(*),
               count_if(origin)
        FROM (SELECT g.outcome, g.origin, c.suspect, unnest(g.times) AS t
              FROM groups g JOIN clients c USING (client))
        GROUP BY ALL""").fetchall()]
    report["totals"] = _totals(con, cells, lines, at_origin)
    report["timeline"] = _timeline(cells, start, bucket)
    prefixes = _top_prefixes(con, opts.top, lines or 1)
    mitigation_report = _mitigation(con, cells, first, report["timeline"])
    report["top"] = _tops(con, opts.top, name, prefixes, lines or 1)
    found = clustering.clusters(con, opts.clusters)
    for c in found:
        c["sample"] = [name(a) for a in c["sample"]]  # type: ignore[attr-defined]
        c["first"], c["last"] = iso(c.pop("first_ms")), iso(c.pop("last_ms"))  # type: ignore[arg-type]
    report["clusters"] = found
    report["clusters_method"] = {"min_requests": opts.min_requests,
                                 "clients_placed": _scalar(con, "SELECT count(*) FROM clients "
                                                           "WHERE signature IS NOT NULL"),
                                 "clusters": _scalar(con, "SELECT count(DISTINCT signature) "
                                                          "FROM clients")}
    report["mitigation"] = mitigation_report
    report["analysis_seconds"] = round(time.perf_counter() - started, 3)
    return report


def _sum_if(condition: str) -> str:
    """SQL: the requests of the groups where `condition` holds (0 if none)."""
    return f"coalesce(sum(n) FILTER (WHERE {condition}), 0)::BIGINT"


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


Cell = tuple[int, bool, str, bool, int, int]  # bucket, after, outcome, suspect, n, at origin


def _totals(con: duckdb.DuckDBPyConnection, cells: list[Cell], lines: int,
            at_origin: int) -> dict[str, Any]:
    outcomes = dict.fromkeys(OUTCOMES, 0)
    for _, _, outcome, _, n, _ in cells:
        outcomes[outcome] += n
    return {"requests": lines, "clients": _scalar(con, "SELECT count(*) FROM clients"),
            "prefixes": _scalar(con, "SELECT count(DISTINCT prefix) FROM clients"),
            "origin_requests": at_origin, "outcomes": outcomes}


def _timeline(cells: list[Cell], start: int, bucket: int) -> dict[str, Any]:
    """Per bucket: requests by outcome, requests that reached the origin, and the suspects'
    requests (all, stopped, at the origin)."""
    width = bucket * 1000
    n_buckets = max(c[0] for c in cells) + 1 if cells else 0
    table: list[dict[str, Any]] = [
        {"t": iso(start + i * width), **dict.fromkeys(OUTCOMES, 0), "origin": 0, "suspect": 0,
         "suspect_stopped": 0, "suspect_origin": 0} for i in range(n_buckets)]
    for b, _, outcome, suspect, n, origin in cells:
        row = table[b]
        row[outcome] += n
        row["origin"] += origin
        if suspect:
            row["suspect"] += n
            row["suspect_origin"] += origin
            if outcome in STOPPED:
                row["suspect_stopped"] += n
    return {"bucket_seconds": bucket, "start": iso(start), "buckets": table}


def _rows(con: duckdb.DuckDBPyConnection, sql: str, keys: tuple[str, ...],
          total: int) -> list[dict[str, Any]]:
    """A top list: the rows of `sql` as dicts, each with its share of all `total` requests."""
    out = []
    for values in con.execute(sql).fetchall():
        item = dict(zip(keys, values, strict=True))
        item["share"] = round(item["requests"] / total, 4)
        out.append(item)
    return out


def _top_prefixes(con: duckdb.DuckDBPyConnection, top: int,
                  total: int) -> list[dict[str, Any]]:
    return _rows(con, f"""
        SELECT prefix, sum(n)::BIGINT AS requests, count(*) AS clients,
               sum(stopped)::BIGINT AS stopped, count_if(suspect) AS suspects
        FROM clients GROUP BY prefix ORDER BY requests DESC, prefix LIMIT {int(top)}""",
                 ("prefix", "requests", "clients", "stopped", "suspects"), total)


def _tops(con: duckdb.DuckDBPyConnection, top: int, name: Callable[[str], str],
          prefixes: list[dict[str, Any]], total: int) -> dict[str, list[dict[str, Any]]]:
    lim = int(top)

    def rows(sql: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
        return _rows(con, sql, keys, total)

    addresses = rows(f"""
        SELECT client, prefix, n AS requests, stopped, agent, kind, round(rate, 2), suspect
        FROM clients ORDER BY n DESC, client LIMIT {lim}""",
                     ("address", "prefix", "requests", "stopped", "agent", "kind", "rate",
                      "suspect"))
    for a in addresses:
        a["address"] = name(a["address"])
    agents = rows(f"""
        SELECT coalesce(ua, '(none)') AS ua, sum(n)::BIGINT AS requests,
               {_sum_if(f"outcome IN {_STOPPED_SQL}")} AS stopped
        FROM groups GROUP BY ALL ORDER BY requests DESC, ua LIMIT {lim}""",
                  ("user_agent", "requests", "stopped"))
    paths = rows(f"""
        SELECT path, sum(n)::BIGINT AS requests, {_sum_if(f"outcome IN {_STOPPED_SQL}")} AS stopped,
               {_sum_if("origin")} AS at_origin
        FROM groups GROUP BY ALL ORDER BY requests DESC, path LIMIT {lim}""",
                 ("path", "requests", "stopped", "at_origin"))
    queries = rows(f"""
        SELECT route || ' ' || qshape AS pattern, sum(n)::BIGINT AS requests,
               count(DISTINCT client) AS clients
        FROM kinds WHERE qshape IS NOT NULL GROUP BY ALL
        ORDER BY requests DESC, pattern LIMIT {lim}""", ("pattern", "requests", "clients"))
    statuses = rows("""
        SELECT status, sum(n)::BIGINT AS requests FROM groups GROUP BY ALL
        ORDER BY requests DESC, status LIMIT 20""", ("status", "requests"))
    decisions = rows(f"""
        SELECT decision, sum(n)::BIGINT AS requests, count(DISTINCT client) AS clients
        FROM groups WHERE decision <> '' GROUP BY ALL ORDER BY requests DESC, decision
        LIMIT {lim}""", ("decision", "requests", "clients"))
    return {"prefixes": prefixes, "addresses": addresses, "user_agents": agents,
            "paths": paths, "queries": queries, "statuses": statuses, "decisions": decisions}


def _first(con: duckdb.DuckDBPyConnection, where: str,
           name: Callable[[str], str]) -> dict[str, Any] | None:
    # The first request by (time, client, path, decision): ties within a millisecond broken by
    # the request's fields, not by the order lines were read. Within a group all but the time
    # are one, so its first request is the group's `first`.
    row = con.execute(f"SELECT first, decision, client, path FROM groups WHERE {where} "
                      "ORDER BY first, client, path, decision LIMIT 1").fetchone()
    if row is None:
        return None
    return {"time": iso(row[0]), "decision": row[1], "address": name(row[2]), "path": row[3],
            "ms": int(row[0])}


def _firsts(con: duckdb.DuckDBPyConnection,
            name: Callable[[str], str]) -> dict[str, dict[str, Any] | None]:
    return {
        "mitigation": _first(con, _MITIGATION_SQL, name),
        "challenge": _first(con, "starts_with(decision, 'challenge:')", name),
        "block": _first(con, "starts_with(decision, 'block:') OR starts_with(decision, "
                              "'drop:') OR starts_with(decision, 'tarpit:')", name),
        "refuse": _first(con, "starts_with(decision, 'refuse:')", name),
        "attack_mode": _first(con, "strpos(decision, 'attack_mode') > 0", name),
    }


def _mitigation(con: duckdb.DuckDBPyConnection, cells: list[Cell],
                first: dict[str, dict[str, Any] | None],
                timeline: dict[str, Any]) -> dict[str, Any]:
    srow = con.execute("""SELECT count(*), sum(n), min(first), sum(at_origin)
                          FROM clients WHERE suspect""").fetchone()
    assert srow is not None
    suspects, suspect_requests, suspect_first, suspect_origin = srow
    out: dict[str, Any] = {"first": first, "suspects": int(suspects or 0),
                           "suspect_requests": int(suspect_requests or 0),
                           "suspect_first": iso(suspect_first),
                           "suspect_origin_requests": int(suspect_origin or 0)}
    mitigation = first["mitigation"]
    if mitigation is not None and suspect_first is not None:
        out["seconds_to_first_mitigation"] = round((mitigation["ms"] - suspect_first) / 1000, 3)
    # The first bucket in which at least 90% of the suspects' requests were stopped.
    width = timeline["bucket_seconds"]
    for i, b in enumerate(timeline["buckets"]):
        if b["suspect"] and b["suspect_stopped"] >= 0.9 * b["suspect"]:
            out["stopped_90_from"] = b["t"]
            if suspect_first is not None:
                start_ms = _parse_iso_ms(timeline["start"]) + i * width * 1000
                out["seconds_to_90_stopped"] = round(max(0, start_ms - suspect_first) / 1000, 3)
            break
    if mitigation is not None:
        s_all = s_stopped = s_origin = origin = o_all = o_stopped = o_challenged = 0
        for _, after, outcome, suspect, n, at_origin in cells:
            if not after:
                continue
            origin += at_origin
            if suspect:
                s_all += n
                s_origin += at_origin
                s_stopped += n if outcome in STOPPED else 0
            else:
                o_all += n
                o_stopped += n if outcome in STOPPED else 0
                o_challenged += n if outcome == "challenge" else 0
        out["after_mitigation"] = {
            "suspect_requests": s_all, "suspect_stopped": s_stopped,
            "suspect_stopped_share": round(s_stopped / s_all, 4) if s_all else None,
            "suspect_at_origin": s_origin, "origin_requests": origin,
            "suspect_share_of_origin": round(s_origin / origin, 4) if origin else None,
            "other_requests": o_all, "other_stopped": o_stopped,
            "other_challenged": o_challenged,
            "other_served_share": round(1 - o_stopped / o_all, 4) if o_all else None}
    requests = sum(c[4] for c in cells if not c[3])
    stopped = sum(c[4] for c in cells if not c[3] and c[2] in STOPPED)
    clients = _scalar(con, "SELECT count(*) FROM clients WHERE NOT suspect")
    out["others"] = {"requests": requests, "stopped": stopped, "clients": clients,
                     "served_share": round(1 - stopped / requests, 4) if requests else None}
    for f in first.values():
        if f is not None:
            f.pop("ms", None)
    return out


def _ints(row: tuple[Any, ...]) -> list[int]:
    """A row of counts (count_if over no rows is NULL)."""
    return [int(v or 0) for v in row]


def _parse_iso_ms(text: str) -> int:
    when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(when.timestamp() * 1000)
