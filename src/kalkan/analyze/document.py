"""The report's words and tables, once, as a list of blocks (heading, paragraph, bullets, table,
chart) that markdown.py and html.py each render: both outputs say the same thing.

Text from the log (paths, User-Agents, queries) is attacker-chosen: it is kept as `Code`, which
each renderer escapes for its format and cuts to a readable length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kalkan.analyze.shapes import OUTCOMES

CHARTS = {"timeline": "Requests per second by outcome",
          "mitigation": "Suspects' requests: stopped and let through; requests at the origin",
          "prefixes": "Top prefixes: requests served and stopped"}


class Code(str):
    """Text from the log, shown verbatim (escaped) in a code span."""


@dataclass
class Heading:
    text: str
    level: int = 2


Text = str | list[str]  # plain words, or words and Code parts in order


@dataclass
class Paragraph:
    text: Text


@dataclass
class Bullets:
    items: list[Text]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Chart:
    name: str     # file stem: timeline, mitigation, prefixes
    alt: str


Block = Heading | Paragraph | Bullets | Table | Chart


def _n(value: int | float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "–"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.2f}%"


def _clock(iso: str | None) -> str:
    """"2026-12-05T04:51:16.123Z" → "2026-12-05 04:51:16.123 UTC"."""
    return "–" if not iso else iso.replace("T", " ").replace("Z", " UTC")


def blocks(report: dict[str, Any], charts: bool = True) -> list[Block]:
    inputs, totals, top = report["inputs"], report["totals"], report["top"]
    mit, tl = report["mitigation"], report["timeline"]
    requests = totals["requests"]
    out: list[Block] = [Heading("Kalkan access-log report", 1)]
    files = ", ".join(inputs["files"][:5]) + (f" and {len(inputs['files']) - 5} more"
                                              if len(inputs["files"]) > 5 else "")
    out.append(Paragraph(
        f"{_n(requests)} requests from {_n(totals['clients'])} addresses in "
        f"{_n(totals['prefixes'])} prefixes, {_clock(inputs['first'])} to "
        f"{_clock(inputs['last'])} ({_n(float(inputs['seconds']))} s), read from {files}. "
        f"{_n(totals['origin_requests'])} requests reached the origin."))
    if report.get("pseudonymized"):
        out.append(Paragraph("Addresses are pseudonymized: each is shown as its prefix and a "
                             "keyed hash (HMAC-SHA256) of the whole address; the same address "
                             "has the same tag throughout this report."))
    oc = totals["outcomes"]
    out.append(Table(["outcome", "requests", "share"],
                     [[o, _n(oc[o]), _pct(oc[o], requests)] for o in OUTCOMES if oc[o]]))

    out.append(Heading("Timeline"))
    out.append(Paragraph(f"Requests per second by outcome, in buckets of "
                         f"{tl['bucket_seconds']} s from {_clock(tl['start'])}."))
    if charts:
        out.append(Chart("timeline", CHARTS["timeline"]))
    peaks = sorted(tl["buckets"], key=lambda b: -sum(b[o] for o in OUTCOMES))[:5]
    out.append(Table(["busiest buckets", "req/s", "served", "stopped", "at origin"],
                     [[_clock(b["t"]), _n(sum(b[o] for o in OUTCOMES) / tl["bucket_seconds"]),
                       _n(sum(b[o] for o in ("hit", "stale", "miss", "pass", "error"))),
                       _n(b["challenge"] + b["block"] + b["refused"]), _n(b["origin"])]
                      for b in peaks]))

    out.extend(_mitigation(mit, charts))
    out.extend(_clusters(report))

    out.append(Heading("Top prefixes"))
    if charts and top["prefixes"]:
        out.append(Chart("prefixes", CHARTS["prefixes"]))
    out.append(Table(["prefix", "requests", "share", "addresses", "stopped", "suspects"],
                     [[Code(p["prefix"]), _n(p["requests"]), _share(p["share"]), _n(p["clients"]),
                       _n(p["stopped"]), _n(p["suspects"])] for p in top["prefixes"]]))
    out.append(Heading("Top addresses"))
    out.append(Table(["address", "prefix", "requests", "stopped", "agent", "mostly", "req/s",
                      "suspect"],
                     [[Code(a["address"]), Code(a["prefix"]), _n(a["requests"]), _n(a["stopped"]),
                       a["agent"], Code(a["kind"]), f"{a['rate']:.2f}",
                       "yes" if a["suspect"] else ""] for a in top["addresses"]]))
    out.append(Heading("Top User-Agents"))
    out.append(Table(["User-Agent", "requests", "share", "stopped"],
                     [[Code(a["user_agent"]), _n(a["requests"]), _share(a["share"]),
                       _n(a["stopped"])] for a in top["user_agents"]]))
    out.append(Heading("Top paths"))
    out.append(Table(["path", "requests", "share", "stopped", "at origin"],
                     [[Code(p["path"]), _n(p["requests"]), _share(p["share"]), _n(p["stopped"]),
                       _n(p["at_origin"])] for p in top["paths"]]))
    out.append(Heading("Query patterns"))
    out.append(Paragraph("Queries with each value replaced by its shape (<num>, <hexN>: N random "
                         "hex digits, <word>, <token>, <id>, <text>, <empty>), after the route "
                         "class of the request."))
    out.append(Table(["route and query shape", "requests", "share", "addresses"],
                     [[Code(q["pattern"]), _n(q["requests"]), _share(q["share"]),
                       _n(q["clients"])] for q in top["queries"]])
               if top["queries"] else Paragraph("No request had a query."))
    out.append(Heading("Status codes"))
    out.append(Table(["status", "requests", "share"],
                     [[str(s["status"]), _n(s["requests"]), _share(s["share"])]
                      for s in top["statuses"]]))
    if top["decisions"]:
        out.append(Heading("The defence's decisions"))
        out.append(Table(["decision", "requests", "addresses"],
                         [[Code(d["decision"]), _n(d["requests"]), _n(d["clients"])]
                          for d in top["decisions"]]))
    out.append(Heading("How to read this report"))
    out.append(Bullets([
        "Outcomes: hit, stale (an old copy served), miss (the origin was asked), pass (not "
        "cacheable, answered by the origin), challenge (the proof-of-work page), block "
        "(block, drop or tarpit), refused (a quick 429/503, a malformed request), error (the "
        "origin failed, nothing cached).",
        "Suspects: addresses the edge stopped (challenged, blocked or refused) for at least "
        "half of their requests; the others are everyone else, readers among them.",
        "Clusters: addresses with at least "
        f"{report['clusters_method']['min_requests']} requests and the same behaviour "
        "signature (what they mostly ask for, asset share, User-Agent family, what the edge "
        "did) and request rates that form one run (no jump of more than 3× between "
        "neighbours); see docs/analyze.md.",
        f"Made by kalkan analyze in {report.get('analysis_seconds', 0)} s of analysis."]))
    return out


def _mitigation(mit: dict[str, Any], charts: bool) -> list[Block]:
    out: list[Block] = [Heading("When mitigation started and what it did")]
    first = mit["first"]
    items: list[Text] = []
    if first["mitigation"] is None:
        items.append("The edge challenged, blocked or refused nothing in these logs.")
    else:
        f = first["mitigation"]
        items.append([f"First mitigation: {_clock(f['time'])}, ", Code(f["decision"]), " for ",
                      Code(f["address"]), " on ", Code(f["path"]), "."])
        for kind, label in (("challenge", "First challenge"), ("block", "First block"),
                            ("refuse", "First quick refusal"),
                            ("attack_mode", "First decision by the under-attack mode")):
            if first[kind] is not None:
                items.append([f"{label}: {_clock(first[kind]['time'])} (",
                              Code(first[kind]["decision"]), ")."])
    if mit["suspects"]:
        items.append(f"Suspects: {_n(mit['suspects'])} addresses, "
                     f"{_n(mit['suspect_requests'])} requests, the first at "
                     f"{_clock(mit['suspect_first'])}; {_n(mit['suspect_origin_requests'])} of "
                     "their requests reached the origin.")
    if "seconds_to_first_mitigation" in mit:
        items.append(f"From the suspects' first request to the first mitigation: "
                     f"{mit['seconds_to_first_mitigation']:.1f} s.")
    if "stopped_90_from" in mit:
        items.append(f"At least 90% of the suspects' requests stopped from the bucket of "
                     f"{_clock(mit['stopped_90_from'])} "
                     f"({mit.get('seconds_to_90_stopped', 0):.1f} s after their first).")
    after = mit.get("after_mitigation")
    if after:
        items.append(f"After the first mitigation: {_share(after['suspect_stopped_share'])} of "
                     f"the suspects' requests stopped; {_n(after['suspect_at_origin'])} of "
                     f"{_n(after['origin_requests'])} origin requests were theirs "
                     f"({_share(after['suspect_share_of_origin'])}); the others were served "
                     f"{_share(after['other_served_share'])} of the time "
                     f"({_n(after['other_stopped'])} of {_n(after['other_requests'])} stopped, "
                     f"{_n(after['other_challenged'])} challenged).")
    others = mit["others"]
    items.append(f"Everyone else, the whole time: {_n(others['clients'])} addresses, "
                 f"{_n(others['requests'])} requests, served {_share(others['served_share'])}.")
    out.append(Bullets(items))
    if charts and mit["suspects"]:
        out.append(Chart("mitigation", CHARTS["mitigation"]))
    return out


def _clusters(report: dict[str, Any]) -> list[Block]:
    out: list[Block] = [Heading("Clusters of clients that behave alike")]
    method = report["clusters_method"]
    found = report["clusters"]
    out.append(Paragraph(
        f"{_n(method['clients_placed'])} addresses with at least {method['min_requests']} "
        f"requests fall into {_n(method['clusters'])} clusters by behaviour signature; the "
        f"{len(found)} largest by requests:"))
    rows = []
    for i, c in enumerate(found, 1):
        prefixes = ", ".join(f"{p['prefix']} ({p['clients']})" for p in c["top_prefixes"])
        rows.append([str(i), Code(c["kind"]), c["assets"], c["agent"], c["rate"],
                     c["outcome"], _n(c["clients"]), _n(c["prefixes"]), Code(prefixes),
                     _n(c["requests"]), _pct(c["stopped"], c["requests"]),
                     f"{_clock(c['first'])[11:19]}–{_clock(c['last'])[11:19]}",
                     Code(", ".join(c["sample"]))])
    out.append(Table(["#", "mostly asks for", "assets", "agent", "rate", "edge did",
                      "addresses", "prefixes", "top prefixes (addresses)", "requests",
                      "stopped", "active (UTC)", "e.g."], rows))
    return out
