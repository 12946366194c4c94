"""Clients that behave alike: each client with enough requests gets a behaviour signature,
and clients with the same signature form one cluster.

The signature (docs/analyze.md argues the choice):
- kind: what the client mostly asks for, its route class and query shape ("search s=<word>"),
  when one of them is at least half its requests, else "mixed";
- assets: the share of its requests for assets (none / some / most): a browser fetches them;
- agent: the family of its most frequent User-Agent (Chrome, tool, bot, (none)...);
- outcome: what the edge mostly did with it (served, challenge, block, refused);
- rate: its requests per second while active. Among clients alike in the four words above,
  sorted by rate, a new cluster starts wherever the rate jumps by more than RATE_GAP times
  from one client to the next: one botnet's members (one schedule, random jitter) stay
  together however their rates straddle any fixed band edge, and a group at a tenth of
  another's pace is told apart.

Exact grouping on coarse words and one gap rule, not a trained or distance-weighted method:
every member of a cluster shares every word, so a cluster is explained by its row alone, and
the same logs always give the same clusters.
"""

from __future__ import annotations

import duckdb

MIN_REQUESTS = 5  # fewer requests say too little about a client to place it

# A client's rate: its requests over the time from its first to its last (at least a second).
RATE_GAP = 3.0  # a rate this many times the next slower client's starts a new cluster


def build(con: duckdb.DuckDBPyConnection, min_requests: int = MIN_REQUESTS) -> None:
    """Creates the tables `kinds` (requests per client × route class × query shape) and
    `clients` (one row per client: counts, prefix, rate, signature, `suspect`), from the
    table `groups` (load.py)."""
    # (The route is told from the query's shape, which keeps the query's keys: classified once
    # per client, path and shape instead of once per line.)
    con.execute("""
        CREATE OR REPLACE TABLE kinds AS
        SELECT client, route_class(method, path, qshape) AS route, qshape, sum(n) AS n
        FROM groups GROUP BY ALL""")
    # A client's User-Agent is its most frequent one; of two as frequent, the one it sent
    # first, then the first in text order (the report must not depend on the engine's
    # threads).
    con.execute("""
        CREATE OR REPLACE TABLE clients AS
        WITH base AS (
          SELECT client, sum(n)::BIGINT AS n, min(first) AS first, max(last) AS last,
                 coalesce(sum(n) FILTER (WHERE outcome IN ('challenge', 'block', 'refused')),
                          0)::BIGINT AS stopped,
                 coalesce(sum(n) FILTER (WHERE outcome = 'challenge'), 0)::BIGINT AS challenged,
                 coalesce(sum(n) FILTER (WHERE outcome = 'block'), 0)::BIGINT AS blocked,
                 coalesce(sum(n) FILTER (WHERE outcome = 'refused'), 0)::BIGINT AS refused,
                 coalesce(sum(n) FILTER (WHERE origin), 0)::BIGINT AS at_origin
          FROM groups GROUP BY client),
        agent AS (
          SELECT client, first(ua ORDER BY un DESC, seen, ua) AS ua
          FROM (SELECT client, ua, sum(n) AS un, min(first) AS seen FROM groups
                WHERE ua IS NOT NULL GROUP BY ALL)
          GROUP BY client),
        kind AS (
          SELECT client, first(k ORDER BY kn DESC, k) AS top_kind, max(kn) AS top_n
          FROM (SELECT client, route || coalesce(' ' || qshape, '') AS k, sum(n) AS kn
                FROM kinds GROUP BY ALL)
          GROUP BY client),
        assets AS (
          SELECT client, sum(n) FILTER (WHERE route = 'asset') AS asset_n
          FROM kinds GROUP BY client)
        SELECT b.*, agent.ua, prefix_of(b.client) AS prefix, ua_family(agent.ua) AS agent,
               CASE greatest(b.n - b.stopped, b.challenged, b.blocked, b.refused)
                    WHEN b.n - b.stopped THEN 'served' WHEN b.challenged THEN 'challenge'
                    WHEN b.blocked THEN 'block' ELSE 'refused' END AS main_outcome,
               b.n / greatest(1.0, (b.last - b.first) / 1000.0) AS rate,
               CASE WHEN kind.top_n * 2 >= b.n THEN kind.top_kind ELSE 'mixed' END AS kind,
               CASE WHEN coalesce(assets.asset_n, 0) = 0 THEN 'no assets'
                    WHEN assets.asset_n * 10 < b.n * 3 THEN 'some assets'
                    ELSE 'mostly assets' END AS assets,
               b.stopped > 0 AND b.stopped * 2 >= b.n AS suspect
        FROM base b JOIN kind USING (client)
             LEFT JOIN agent USING (client)
             LEFT JOIN assets USING (client)""")
    # The signature: the four words, then the rate segment among clients with those words.
    con.execute(f"""
        CREATE OR REPLACE TABLE clients AS
        SELECT c.*, CASE WHEN c.n >= {int(min_requests)} THEN
                      words || ' | ' || sum(CASE WHEN prev IS NULL OR rate > prev * {RATE_GAP}
                                                 THEN 1 ELSE 0 END)
                        OVER (PARTITION BY words ORDER BY rate, client
                              ROWS UNBOUNDED PRECEDING) END AS signature
        FROM (SELECT *, lag(rate) OVER (PARTITION BY words ORDER BY rate, client) AS prev
              FROM (SELECT *, CASE WHEN n >= {int(min_requests)} THEN
                                kind || ' | ' || assets || ' | ' || agent || ' | '
                                || main_outcome END AS words
                    FROM clients)) c""")


def clusters(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict[str, object]]:
    """The largest clusters (by requests), with what describes each."""
    rows = con.execute(f"""
        SELECT signature, any_value(kind), any_value(assets), any_value(agent),
               min(rate), max(rate), any_value(main_outcome), count(*) AS members,
               count(DISTINCT prefix), sum(n) AS requests, sum(stopped), sum(at_origin),
               min(first), max(last), median(rate),
               list(client ORDER BY n DESC, client)[1:3],
               list(prefix ORDER BY n DESC), count_if(suspect)
        FROM clients WHERE signature IS NOT NULL
        GROUP BY signature ORDER BY requests DESC, members DESC LIMIT {int(limit)}""").fetchall()
    out: list[dict[str, object]] = []
    for (sig, kind, assets, agent, slowest, fastest, outcome, members, prefixes, requests, stopped,
         at_origin, first, last, rate, sample, member_prefixes, suspects) in rows:
        counts: dict[str, int] = {}
        for p in member_prefixes:
            counts[p] = counts.get(p, 0) + 1
        top_prefixes = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        out.append({
            "signature": sig, "kind": kind, "assets": assets, "agent": agent,
            "rate": rate_range(slowest, fastest), "outcome": outcome, "clients": int(members),
            "prefixes": int(prefixes), "requests": int(requests), "stopped": int(stopped),
            "at_origin": int(at_origin), "first_ms": int(first), "last_ms": int(last),
            "median_rate": float(rate), "sample": list(sample),
            "top_prefixes": [{"prefix": p, "clients": c} for p, c in top_prefixes],
            "suspects": int(suspects)})
    return out


def rate_range(slowest: float, fastest: float) -> str:
    """"0.05-0.2/s": the cluster's slowest and fastest member (requests per second)."""
    def fmt(x: float) -> str:
        return f"{x:.2g}" if x < 10 else f"{x:.0f}"
    low, high = fmt(slowest), fmt(fastest)
    return f"{low}/s" if low == high else f"{low}-{high}/s"
