"""What the defence costs on the two paths a flood exercises: a refused request and a reader with
a valid pass, both against a plain cache hit with no defence at all, in the same run.

Run from the project root::

    .venv/bin/python -m bench.defense_cost            # results in bench/results/defense_cost.*
    .venv/bin/python -m bench.defense_cost --quick

Three Kalkan configurations, each pinned to core 1 with wrk on core 0, interleaved and repeated:
  * ``no-defence``: the cache alone (defence disabled);
  * ``pass``: defence on, a policy that challenges every page, and wrk sending a valid pass
    cookie (so every request pays the pass check, the client table and the policy walk);
  * ``block``: defence on and a standing block decision for 127.0.0.1 (every request refused).
Targets (issue 3): a refused request costs <= 1/3 of a cache hit (block req/s >= 3x hit req/s:
on a saturated core, cost per request is the inverse of throughput); a request with a valid
pass costs no more than 5% over no defence (pass req/s >= 0.95x).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    LOAD_CPU,
    RESULTS_DIR,
    SERVER_CPU,
    WORK_DIR,
    Report,
    Stopper,
    command_line,
    free_port,
    log,
    machine_info,
    markdown_table,
    scratch_dir,
    spread,
    start_process,
    taskset,
    wait_for_port,
    wait_until_quiet,
)
from bench.peers import HOST, KALKAN, start_origin
from bench.throughput import BENCH_PATH, run_wrk

MODULE = "bench.defense_cost"
UA = "kalkan-bench-reader/1.0"
CHALLENGE_ALL = """version: 1
rules:
  - name: every-page-needs-a-pass
    match: {route: page}
    action: challenge
    reason: measure the cost of checking a pass on every request
"""


def _pass_cookie(state: Path) -> str:
    """A valid pass for 127.0.0.1's /24 and our user agent, signed with the edge's own keys."""
    from kalkan.defense.challenge.keys import KeyRing
    from kalkan.defense.challenge.tokens import issue_pass, ua_digest

    now = time.time()
    keys = KeyRing.load_or_create(state / "keys.json", now)
    token = issue_pass(keys, "127.0.0.0/24", ua_digest(UA), "w", now, 86400.0)
    return f"kalkan_pass={token}"


def _start(variant: str, origin_port: int, work: Path, stopper: Stopper) -> tuple[int, Any]:
    state = work / "state"
    state.mkdir(parents=True, exist_ok=True)
    policy = work / "policy.yaml"
    policy.write_text(CHALLENGE_ALL)
    config = work / "kalkan.yaml"
    if variant == "no-defence":
        config.write_text("defense:\n  enabled: false\n")
    elif variant == "pass":
        # One pass sends tens of thousands of requests a second here: far past the per-pass
        # limit (defense/passes.py), which would challenge it. This measures what checking a
        # pass costs, so the limit is lifted.
        config.write_text(f"defense:\n  policy: {policy}\n  pass_max_per_minute: 1000000000\n")
    else:
        config.write_text("defense:\n  enabled: true\n")
    port, admin = free_port(), free_port()
    argv = [*taskset(SERVER_CPU), str(KALKAN), "serve", "--origin", f"http://{HOST}:{origin_port}",
            "--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}", "--config", str(config),
            "--state-dir", str(state), "--cache-dir", str(work / "cache"),
            "--access-log", str(work / "access.log")]
    proc = stopper.add(start_process(f"kalkan-{variant}", argv, work, cwd=work))
    wait_for_port(HOST, port, timeout=30, proc=proc)
    wait_for_port(HOST, admin, timeout=30, proc=proc)
    if variant == "block":
        token = (state / "admin.token").read_text().strip()
        req = urllib.request.Request(
            f"http://{HOST}:{admin}/decisions", method="POST",
            data=json.dumps({"target": "127.0.0.1", "action": "block", "ttl": 3600,
                             "reason": "bench"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
    return port, proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 repetition")
    args = parser.parse_args(argv)
    duration, reps = (2, 1) if args.quick else (8, 3)
    variants = ("no-defence", "pass", "block")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with Stopper() as stopper, scratch_dir("defense-cost") as work:
        origin = start_origin(work / "origin", stopper, False, LOAD_CPU)
        started = {}
        for v in variants:
            started[v] = _start(v, origin.port, work / v, stopper)
        cookie = _pass_cookie(work / "pass" / "state")
        headers = {"no-defence": [], "pass": ["-H", f"Cookie: {cookie}", "-H", f"User-Agent: {UA}"],
                   "block": []}
        for v in variants:  # warm: the page is cached, the pass checked once
            run_wrk(f"http://{HOST}:{started[v][0]}{BENCH_PATH}", 1, 8, None, headers[v])
        for rep in range(reps):
            for v in variants:
                wait_until_quiet([SERVER_CPU])
                result = run_wrk(f"http://{HOST}:{started[v][0]}{BENCH_PATH}", duration, 64,
                                 started[v][1].pid, headers[v])
                log(f"rep {rep + 1} {v}: {result.requests_per_s:,.0f} req/s "
                    f"(non-2xx {result.non_2xx_3xx})")
                runs[v].append({"rps": result.requests_per_s, "non_2xx": result.non_2xx_3xx,
                                "p50_ms": result.latency_ms.get("p50", float("nan")),
                                "p99_ms": result.latency_ms.get("p99", float("nan")),
                                "cpu": result.cpu_busy_pct})
    med = {v: spread([r["rps"] for r in runs[v]])["median"] for v in variants}
    # Cost per request = Kalkan's own CPU time / requests answered. Throughput alone would
    # understate a cheap path: a refusal is so cheap that wrk's core, not Kalkan's, sets the
    # pace (see the CPU columns).
    cost = {v: spread([r["cpu"]["proxy_own"] / 100.0 / r["rps"] * 1e6 for r in runs[v]])["median"]
            for v in variants}
    block_ratio = cost["block"] / cost["no-defence"]
    pass_ratio = cost["pass"] / cost["no-defence"]
    verdicts = {
        "refusal_cost_vs_hit": {"value": block_ratio, "target": "<= 0.333",
                                "met": block_ratio <= 1 / 3},
        "pass_overhead": {"value": pass_ratio - 1, "target": "<= 0.05",
                          "met": pass_ratio <= 1.05},
    }
    checks = {"pass_all_2xx": all(r["non_2xx"] == 0 for r in runs["pass"]),
              "block_all_refused": all(r["non_2xx"] > 0 for r in runs["block"])}
    data = {"command": command_line(MODULE, argv), "machine": machine_info(),
            "duration_s": duration, "repetitions": reps, "runs": runs, "median_rps": med,
            "median_cpu_us_per_request": cost, "targets": verdicts, "checks": checks}
    rows = [[v, f"{med[v]:,.0f}", f"{spread([r['rps'] for r in runs[v]])['min']:,.0f}–"
             f"{spread([r['rps'] for r in runs[v]])['max']:,.0f}", f"{cost[v]:.1f}",
             f"{spread([r['cpu']['proxy_own'] for r in runs[v]])['median']:.0f}% / "
             f"{spread([r['cpu']['wrk_own'] for r in runs[v]])['median']:.0f}%",
             f"{runs[v][-1]['p50_ms']:.2f}", f"{runs[v][-1]['p99_ms']:.2f}"] for v in variants]
    md = [
        "# What the defence costs on the hot paths", "",
        f"- Command: `{data['command']}`",
        f"- wrk -t1 -c64 for {duration} s per run on core {LOAD_CPU}, Kalkan on core "
        f"{SERVER_CPU}, {reps} interleaved repetitions; the 20 KB cached page `{BENCH_PATH}`.",
        "", markdown_table(["variant", "req/s (median)", "range", "Kalkan CPU µs / request",
                            "CPU used: Kalkan / wrk", "p50 ms", "p99 ms"], rows), "",
        "Cost per request is Kalkan's own CPU time divided by the requests it answered "
        "(median over the repetitions): on a shared machine and with wrk near its own core's "
        "limit for tiny refusals, req/s alone would misstate it.", "",
        f"- A refused request costs **{block_ratio:.2f}x** a cache hit (target <= 0.33): "
        f"**{'MET' if verdicts['refusal_cost_vs_hit']['met'] else 'NOT MET'}**",
        f"- A request with a valid pass costs **{(pass_ratio - 1) * 100:+.1f}%** over no "
        f"defence (target <= +5%): **{'MET' if verdicts['pass_overhead']['met'] else 'NOT MET'}**",
        f"- Checks: every pass request answered 2xx: {checks['pass_all_2xx']}; every block "
        f"request refused: {checks['block_all_refused']}.",
        "", "wrk sends identical requests on keep-alive connections, as a flood of one URL does: "
        "Kalkan answers such repeats from its replay memo and reuses a connection's defence "
        "verdict for 250 ms (requests in between are counted into the rate meters afterwards).",
    ]
    out_dir = RESULTS_DIR if not args.quick else WORK_DIR / "quick-results"
    report = Report("defense_cost", data["command"], data["machine"], data=data,
                    sections=md[2:])
    report.write("What the defence costs on the hot paths", out_dir)
    log(f"cost per request: block/hit {block_ratio:.2f}x, pass/hit {pass_ratio:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
