"""The lab's output: lab.json (every number and timeline), lab.md (the tables and the verdict
against the issue's targets) and one PNG timeline per scenario (lab.SCENARIO.png)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import Report, markdown_table
from bench.lab.attacks import ORIGIN_PAGE_CAPACITY, TACTICS, Scenario
from bench.lab.metrics import NORMAL_FLOOR_S, UTIL_SAFE, Windows
from bench.lab.net import BOTS_BASE
from bench.lab.readers import ReaderPlan

COLORS = {"origin": "#c0392b", "nginx": "#2980b9", "kalkan": "#27ae60"}
# The targets for Kalkan.
SUCCESS_MIN, CACHED_P99_MAX_MS, TTM_MAX_S, ORIGIN_SHARE_MAX, X_CAPACITY_MIN = \
    0.999, 250.0, 5.0, 0.005, 50.0
ORIGIN_BUSY_MAX, PRECISION_MIN, RECALL_MIN = 0.70, 0.99, 0.95


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100.0 * x:.{digits}f}%"


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f}{unit}" if abs(x) >= 100 else f"{x:g}{unit}"


def _ttm(x: float | None) -> str:
    return "never" if x is None else f"{x:g} s"


def results_table(results: list[dict[str, Any]]) -> str:
    header = ["scenario", "target", "attack req/s (x capacity)", "reader success",
              "p50 / p95 / p99 ms", "cached page p99 ms", "readers challenged: peace / attack",
              "attack reqs at origin (share)", "... after mitigation", "origin busy",
              "time to mitigate", "edge CPU mean / max", "edge RSS MiB"]
    rows = []
    for r in results:
        a, p, o, t, e = r["attack"], r["peace"], r["origin"], r["attack_traffic"], r["edge"]
        rate = f"{_num(t['achieved_per_s'])} ({t['achieved_x_capacity']:g}x)"
        if t["slow_connections_max"]:
            rate += f", {t['slow_connections_max']:,} slow conns"
        rows.append([
            r["scenario"], f"**{r['target']}**", rate, _pct(a["success"], 2),
            f"{_num(a['p50_ms'])} / {_num(a['p95_ms'])} / {_num(a['p99_ms'])}",
            _num(a["cached_page_p99_ms"]),
            f"{p['sessions_challenged']}/{p['sessions']} / "
            f"{a['sessions_challenged']}/{a['sessions']}",
            f"{o['attack_requests']:,} ({_pct(o['attack_share_reaching'], 2)})",
            "n/a" if o["attack_requests_after_mitigation"] is None else
            f"{o['attack_requests_after_mitigation']:,} "
            f"({_pct(o['attack_share_after_mitigation'], 2)})",
            _pct(o["utilization_mean"], 0), _ttm(r["time_to_mitigate_s"]) + (
                " (per tactic: " + ", ".join(_ttm(x) for x in r["time_to_mitigate_per_tactic_s"])
                + ")" if len(r["time_to_mitigate_per_tactic_s"]) > 1 else ""),
            "n/a" if e["cpu_mean_pct"] is None else
            f"{e['cpu_mean_pct']:.0f}% / {e['cpu_max_pct']:.0f}%"
            + (" (origin)" if r["target"] == "origin" else ""),
            _num(e["rss_max_mib"]),
        ])
    return markdown_table(header, rows)


def others_table(results: list[dict[str, Any]]) -> str:
    header = ["scenario", "target", "feed success", "crawler success", "reader success "
              "after the attack", "reader TCP connects > 1 s", "origin 503/504",
              "threat level max", "most common failures (kind:status)"]
    rows = []
    for r in results:
        a, rec = r["attack"], r["recovery"]
        fails = ", ".join(f"{k} x{v}" for k, v in a["failures"].items()) or "none"
        rows.append([r["scenario"], r["target"], _pct(a["feed_success"]),
                     _pct(a["crawler_success"]), _pct(rec["success"]),
                     f"{a['connects_over_1s']}",
                     f"{r['origin']['rejected_503_504']:,}",
                     _num(r["edge"]["threat_level_max"]), fails])
    return markdown_table(header, rows)


def _mark(ok: bool) -> str:
    return "MET" if ok else "**NOT MET**"


def verdict(results: list[dict[str, Any]]) -> list[str]:
    """One line per scenario: Kalkan against each of the issue's targets."""
    by = {(r["scenario"], r["target"]): r for r in results}
    lines = []
    for (scenario, target), r in by.items():
        if target != "kalkan":
            continue
        a, o, t = r["attack"], r["origin"], r["attack_traffic"]
        flood = t["outcome"].get("sent", 0) > 0
        attacked = flood or t["slow_connections_max"] > 0
        checks: list[tuple[str, str, str]] = [
            ("attack >= 50x capacity",
             _mark(t["achieved_x_capacity"] >= X_CAPACITY_MIN) if flood else "n/a",
             f"{t['achieved_x_capacity']:g}x" if flood
             else f"{t['slow_connections_max']:,} slow connections" if attacked
             else "no attack"),
            ("reader success >= 99.9%", _mark((a["success"] or 0) >= SUCCESS_MIN),
             _pct(a["success"], 2)),
            ("cached page p99 <= 250 ms", _mark(a["cached_page_p99_ms"] is not None
                                                and a["cached_page_p99_ms"] <= CACHED_P99_MAX_MS),
             _num(a["cached_page_p99_ms"])),
            ("time to mitigate <= 5 s", _mark(r["time_to_mitigate_s"] is not None
                                              and r["time_to_mitigate_s"] <= TTM_MAX_S),
             _ttm(r["time_to_mitigate_s"])),
            ("attack at origin after mitigation <= 0.5%",
             _mark(o["attack_share_after_mitigation"] is not None
                   and o["attack_share_after_mitigation"] <= ORIGIN_SHARE_MAX) if flood else "n/a",
             _pct(o["attack_share_after_mitigation"], 2) if flood
             else f"{o['attack_requests']:,} slow requests reached it"),
            ("no reader challenged in peace", _mark(r["peace"]["sessions_challenged"] == 0),
             f"{r['peace']['sessions_challenged']}"),
            *served_checks(r, attacked),
            *decision_checks(r, flood or attacked),
        ]
        nginx = by.get((scenario, "nginx"))
        if nginx is not None:
            ours, theirs = a["success"] or 0.0, nginx["attack"]["success"] or 0.0
            # Equal success (typically both 100%) cannot be "better": say so instead.
            checks.append(("reader success better than nginx",
                           "TIE" if ours == theirs else _mark(ours > theirs),
                           f"{_pct(ours, 2)} vs {_pct(theirs, 2)}"))
        marks = "; ".join(f"{name}: {mark} ({value})" for name, mark, value in checks)
        lines.append(f"- **{scenario}**: {marks}")
    return lines


def served_checks(r: dict[str, Any], attacked: bool) -> list[tuple[str, str, str]]:
    """Issue 9's reader targets: served without a challenge in every phase, nobody challenged
    in a flash crowd (a window with readers and no attack), origin busy under 70%."""
    phases = [("peace", r["peace"]), ("attack" if attacked else "crowd", r["attack"]),
              ("after", r["recovery"])]
    checks = [(f"served without challenge >= 99.9% ({name})",
               _mark((p.get("served_unchallenged") or 0.0) >= SUCCESS_MIN),
               _pct(p.get("served_unchallenged"), 2)) for name, p in phases]
    if not attacked:
        n = r["attack"].get("readers_challenged", 0)
        checks.append(("no reader challenged in the flash crowd", _mark(n == 0), f"{n}"))
    else:
        busy = r["origin"].get("utilization_max")
        checks.append(("origin busy <= 70% (max second)",
                       _mark(busy is not None and busy <= ORIGIN_BUSY_MAX), _pct(busy, 0)))
    return checks


def decision_checks(r: dict[str, Any], attacked: bool) -> list[tuple[str, str, str]]:
    """Precision and recall of "challenge or block" per client (bench/lab/truth.py)."""
    d = (r.get("decisions") or {}).get("per_client")
    if not d or not attacked:
        return []
    p, rec = d["precision"], d["recall"]
    return [("precision >= 0.99", _mark(p is not None and p >= PRECISION_MIN), _num(p)),
            ("recall >= 0.95", _mark(rec is not None and rec >= RECALL_MIN), _num(rec))]


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def readers_table(results: list[dict[str, Any]]) -> str:
    """Served without a challenge per phase, readers challenged, origin busy, and how well the
    edge's challenges and blocks fell on bots (per client and per request)."""
    header = ["scenario", "target", "served w/o challenge: peace / attack / after",
              "readers challenged: peace / attack / after", "origin busy mean / max",
              "precision / recall (clients)", "precision / recall (requests)",
              "clients: bots / legitimate", "legitimate flagged: peace / attack / after"]
    rows = []
    for r in results:
        p, a, rec, o = r["peace"], r["attack"], r["recovery"], r["origin"]
        d = r.get("decisions") or {}
        pc, pr = d.get("per_client", {}), d.get("per_request", {})
        lf = d.get("legitimate_flagged_by_phase", {})
        rows.append([
            r["scenario"], f"**{r['target']}**",
            " / ".join(_pct(x.get("served_unchallenged"), 2) for x in (p, a, rec)),
            " / ".join(str(x.get("readers_challenged", "n/a")) for x in (p, a, rec)),
            f"{_pct(o['utilization_mean'], 0)} / {_pct(o.get('utilization_max'), 0)}",
            f"{_ratio(pc.get('precision'))} / {_ratio(pc.get('recall'))}" if pc else "n/a",
            f"{_ratio(pr.get('precision'))} / {_ratio(pr.get('recall'))}" if pr else "n/a",
            f"{d['clients']['bots']:,} / {d['clients']['legitimate']:,}" if d else "n/a",
            " / ".join(str(lf.get(k, 0)) for k in ("peace", "attack", "after")) if d else "n/a",
        ])
    return markdown_table(header, rows)


def previews_table(results: list[dict[str, Any]]) -> str | None:
    """Link previews and feed apps (their success is part of "served", shown here alone)."""
    rows = []
    for r in results:
        a = r["attack"]
        if not a.get("preview_requests") and not a.get("app_requests"):
            continue
        rows.append([r["scenario"], r["target"],
                     f"{_pct(a['preview_success'], 2)} of {a['preview_requests']}",
                     f"{_pct(a['app_success'], 2)} of {a['app_requests']}",
                     f"{a['app_not_modified']}"])
    if not rows:
        return None
    return markdown_table(["scenario", "target", "link previews served (attack)",
                           "feed-app polls served (attack)", "... of which 304"], rows)


def labels_table(results: list[dict[str, Any]]) -> str | None:
    """Per true label: how many clients and requests Kalkan challenged, blocked or refused."""
    rows = []
    for r in results:
        d = r.get("decisions")
        if r["target"] != "kalkan" or not d:
            continue
        for label, x in d["by_label"].items():
            rows.append([r["scenario"], label, f"{x['clients_flagged']:,} / {x['clients']:,}",
                         f"{x['requests']:,}", f"{x.get('challenge', 0):,}",
                         f"{x.get('block', 0):,}", f"{x.get('refuse', 0):,}",
                         f"{x.get('limit', 0):,}", f"{x.get('pass', 0):,}"])
        for label, n in d.get("lines_left_out", {}).items():
            rows.append([r["scenario"], f"({label}: left out)", "", f"{n:,}", "", "", "", "",
                         ""])
    if not rows:
        return None
    return markdown_table(["scenario", "true label", "clients flagged / seen", "requests",
                           "challenged", "blocked", "refused", "connection limits",
                           "with a pass"], rows)


def plot(results: list[dict[str, Any]], scenario: Scenario, windows: Windows,
         path: Path) -> Path | None:
    """Reader success, reader p95, attack rate and origin load over time, one line per target."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    runs = [r for r in results if r["scenario"] == scenario.name]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    panels = [("reader success %", "reader_success", 100.0),
              ("reader p95 latency ms (log)", "reader_p95_ms", 1.0),
              ("attack req/s sent (solid) and reaching the origin (dotted)", "attack_sent", 1.0),
              ("origin workers busy %", "origin_utilization", 100.0)]
    for ax, (title, key, scale) in zip(axes, panels, strict=True):
        for r in runs:
            tl = r["timeline"]
            xs = [s - windows.attack_start for s in tl["second"]]
            ys = [None if v is None else v * scale for v in tl[key]]
            ax.plot(xs, ys, color=COLORS.get(r["target"]), label=r["target"], linewidth=1.5)
            if key == "attack_sent":
                ax.plot(xs, tl["attack_at_origin"], color=COLORS.get(r["target"]),
                        linestyle=":", linewidth=1.5)
        ax.axvspan(0, windows.attack_s, color="#f39c12", alpha=0.12)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if key == "reader_p95_ms":
            ax.set_yscale("log")
    axes[0].set_ylim(-5, 105)
    axes[0].legend(loc="lower left", fontsize=9)
    axes[-1].set_xlabel("seconds since the attack started (shaded: attack)")
    fig.suptitle(f"Traffic lab: {scenario.title}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def setup_section(scenarios: list[Scenario], windows: dict[str, Windows], plan: ReaderPlan,
                  args: argparse.Namespace, elapsed_s: float) -> list[str]:
    lines = ["## Setup", "",
             "- Targets, one at a time, each started fresh for each scenario: the demo origin "
             "alone, nginx (`bench/configs/nginx-lab.conf.tmpl`), Kalkan (default policy; "
             "`origin.max_concurrency: 4`; a lab crawler list). The edge runs pinned to core 1; "
             "the origin, the readers, the attackers (nice +5) and this script share core 0.",
             f"- Origin: `kalkan demo-site --workers 4 --page-cost-ms 40 --search-cost-ms 200`: "
             f"{ORIGIN_PAGE_CAPACITY:.0f} pages/s, 20 searches/s.",
             f"- Readers: {plan.sessions_per_s:g} sessions/s, {plan.pages_mean:g} page views "
             f"each on average (home page, then Zipf-popular articles with their assets), "
             f"think time {plan.think_s:g} s (compressed human time), "
             f"{plan.nojs_share:.0%} without JavaScript ({plan.nojs_browser_share:.0%} of "
             f"those browsers with it switched off, the rest text browsers), "
             f"{plan.search_share:.0%} searches, "
             f"{plan.comment_share:.0%} comments; {plan.feeds} feed readers every "
             f"{plan.feed_every_s:g} s; one crawler at {plan.crawler_per_s:g} req/s from the "
             f"stand-in Googlebot range 127.66.249.0/24.",
             f"- Offered attack rate {args.rate:,.0f} req/s ({args.rate / ORIGIN_PAGE_CAPACITY:g}x "
             f"the origin's page capacity), botnet {args.bots:,} addresses unless the scenario "
             f"says otherwise. The achieved rate is what the generator really sent.",
             f"- Time to mitigate: from the attack's start until every later attack second has "
             f"the origin below {UTIL_SAFE:.0%} busy with no 503/504, reader success >= 99% and "
             f"reader p95 within max(2x the peace p95, {NORMAL_FLOOR_S * 1000:.0f} ms); "
             f"'never' if the last attack second still fails.",
             f"- Total wall time {elapsed_s:.0f} s.", "", "### Scenarios", ""]
    for s in scenarios:
        w = windows[s.name]
        lines.append(f"- **{s.name}** — {s.title} (peace {w.peace_s:g} s, attack "
                     f"{w.attack_s:g} s, after {w.tail_s:g} s):")
        if s.readers:
            lines.append("  - readers: " + ", ".join(f"{k} = {v:g}" for k, v in s.readers))
        if not s.waves:
            lines.append("  - no attack")
        for wave in s.waves:
            what = TACTICS[wave.tactic]
            unit = "connections" if wave.tactic.startswith("slow") else "req/s"
            extra = ", solving the proof-of-work" if wave.solve_pow else ""
            when = "" if wave.duration_s is None and not wave.start_s else \
                f", from {wave.start_s:g} s" + (f" for {wave.duration_s:g} s"
                                                if wave.duration_s else "")
            where = "" if wave.base == BOTS_BASE else \
                f" in 127.{wave.base}.x.0/24s, hosts .{wave.host_offset + 1} up"
            lines.append(f"  - {wave.tactic}: {what}; {wave.rate:,.0f} {unit} from "
                         f"{wave.bots:,} addresses ({wave.per_prefix} per /24{where}){extra}"
                         f"{when}")
    return lines


def write_report(out: Path, results: list[dict[str, Any]], scenarios: list[Scenario],
                 windows: dict[str, Windows], plan: ReaderPlan, args: argparse.Namespace,
                 command: str, machine: dict[str, Any], elapsed_s: float,
                 started: str, errors: list[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for s in scenarios:
        png = plot(results, s, windows[s.name], out / f"lab.{s.name}.png")
        if png is not None:
            images.append(png)
    report = Report(name="lab", command=command, machine=machine, started=started)
    report.data = {"quick": args.quick, "elapsed_s": round(elapsed_s, 1),
                   "reader_plan": plan.__dict__,
                   "windows": {k: v.__dict__ for k, v in windows.items()},
                   "results": results, "errors": errors}
    failed = ["## Runs that failed", "", *(f"- {e.splitlines()[0]}" for e in errors), ""] \
        if errors else []
    report.sections = [
        *failed,
        "## Kalkan against the issue's targets", "", *verdict(results), "",
        "## Readers, attack and origin, per scenario and target (attack window)", "",
        results_table(results), "",
        "Readers challenged = sessions with at least one challenged request / sessions with "
        "requests in the window. Attack requests at the origin = the origin's requests minus "
        "the legitimate requests that reached it; 'after mitigation' counts the attack seconds "
        "after the time to mitigate (per tactic for the mixed wave; tactics never mitigated "
        "are left out). Origin busy = mean share of the 4 workers in use.", "",
        "## Readers served without a challenge, and whom the edge challenged or blocked", "",
        readers_table(results), "",
        "Served w/o challenge = requests of everyone who reads (browsers, feed readers, feed "
        "apps, link previews) that succeeded without meeting a challenge page / all their "
        "requests, by the phase they started in. Readers challenged = reader clients (sessions, "
        "feed readers, apps, previews) with at least one challenged request. Precision and "
        "recall of \"challenge or block\" come from the edge's access log joined with the lab's "
        "ground truth (bench/lab/README.md, Metrics); a client is an address, or an (address, "
        "user agent) pair where readers and bots share the address.", "",
        *(["### Link previews and feed apps", "", t, ""]
          if (t := previews_table(results)) else []),
        *(["### Kalkan's decisions by true label (whole run)", "", t, ""]
          if (t := labels_table(results)) else []),
        "## Feeds, crawler, recovery and failures", "", others_table(results), "",
        "## Timelines", "", *[f"![{p.stem}]({p.name})" for p in images], "",
        *setup_section(scenarios, windows, plan, args, elapsed_s),
    ]
    json_path, md_path = report.write("Traffic lab: readers during an attack", out)
    return [json_path, md_path, *images]
