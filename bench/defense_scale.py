"""What the defence costs at scale: readers from 100,000 distinct client addresses, with the
defence on against the same run with it off (issue 8: on >= 0.8x off).

Run from the project root::

    .venv/bin/python -m bench.defense_scale            # results in bench/results/defense_scale.*
    .venv/bin/python -m bench.defense_scale --quick    # smoke test, results in bench/.work/

Kalkan runs pinned to core 1 with wrk on core 0, in two configurations that differ only in
``defense.enabled``; both trust ``X-Forwarded-For`` from 127.0.0.1 (``client_address.
trusted_proxies: ["127.0.0.1/32"]``), keep the access log and metrics on, and serve the cached
20 KB page ``/bench/20k``. wrk sends the readers load (``bench/wrk/readers.lua``: every request
its own cookie, and a browser's User-Agent and headers) with ``xff=100000``: the forwarded
address cycles through 100,000 distinct ones, so the defence tracks, meters and checks 100,000
clients, each keeping its browser as a reader does (until 2026-12-05 each request drew a new
User-Agent, which made every address look shared by many browsers: the defence now keeps a
behaviour row per agent on such addresses). Every run starts Kalkan fresh (an empty client
table), warms it up with the same load, and the two configurations are interleaved and
repeated. A run in which the defence refused or challenged readers (any non-2xx) is reported:
its req/s would measure refusals, not the defence's cost on readers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    LOAD_CPU,
    RESULTS_DIR,
    SERVER_CPU,
    WORK_DIR,
    BenchError,
    HttpClient,
    Report,
    Stopper,
    command_line,
    cpu_count,
    free_port,
    guarded,
    log,
    machine_info,
    markdown_table,
    pin_self,
    scratch_dir,
    spread,
    start_process,
    taskset,
    wait_for_port,
    wait_until_quiet,
)
from bench.peers import HOST, KALKAN, kalkan_counters, kalkan_installed, start_origin
from bench.throughput import BENCH_PATH, BODY_SIZE, check_origin, load_args, run_wrk

MODULE = "bench.defense_scale"
CLIENTS = 100_000
TARGET = 0.8
"""Issue 8: readers' req/s with the defence on >= this times the same run with it off."""
VARIANTS = ("defence-off", "defence-on", "defence-on-no-behaviour")
"""The third measures what behaviour scoring (issue 9) costs per request: its features are
updated on every request the defence lets through."""
CONFIG = """client_address:
  trusted_proxies: ["127.0.0.1/32"]
defense:
  enabled: {enabled}
  behaviour: {behaviour}
"""


@dataclass
class Settings:
    """One run's knobs (``--quick`` shrinks them)."""

    duration_s: int = 10
    warmup_s: int = 2
    repetitions: int = 3
    connections: int = 64
    clients: int = CLIENTS
    quiet_timeout_s: float = 60.0
    quick: bool = False


def start_kalkan(variant: str, origin_port: int, work: Path, stopper: Stopper
                 ) -> tuple[int, str, Any]:
    """Kalkan with the defence on or off, trusting 127.0.0.1's X-Forwarded-For; returns its
    port, metrics URL and process."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "kalkan.yaml"
    config.write_text(CONFIG.format(enabled="false" if variant == "defence-off" else "true",
                                    behaviour="false" if variant.endswith("no-behaviour")
                                    else "true"))
    port, admin = free_port(), free_port()
    argv = [*taskset(SERVER_CPU), str(KALKAN), "serve", "--origin", f"http://{HOST}:{origin_port}",
            "--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}", "--config", str(config),
            "--state-dir", str(work / "state"), "--cache-dir", str(work / "cache"),
            "--access-log", str(work / "access.log")]
    proc = stopper.add(start_process(f"kalkan-{variant}", argv, work, cwd=work))
    wait_for_port(HOST, port, timeout=30, proc=proc)
    wait_for_port(HOST, admin, timeout=30, proc=proc)
    return port, f"http://{HOST}:{admin}/metrics", proc


def _distinct_clients(access_log: Path, limit: int = 200_000) -> int:
    """Distinct client addresses (each line's `client`) in the first *limit* log lines:
    proof that Kalkan saw the forwarded addresses, not 127.0.0.1."""
    seen: set[str] = set()
    if not access_log.exists():
        return 0
    with access_log.open("rb") as handle:
        for i, line in enumerate(handle):
            if i >= limit:
                break
            with contextlib.suppress(ValueError):
                seen.add(str(json.loads(line).get("client")))
    return len(seen)


def one_run(variant: str, origin_port: int, work: Path, stopper: Stopper,
            settings: Settings) -> dict[str, Any]:
    """Start Kalkan fresh, fill the page, warm up, measure, read the metrics, stop it."""
    port, metrics_url, proc = start_kalkan(variant, origin_port, work, stopper)
    client = HttpClient(HOST, port)
    for _ in range(2):  # the first fills the cache, the second is a hit
        status, _, length = client.get(BENCH_PATH)
        if (status, length) != (200, BODY_SIZE):
            raise BenchError(f"{variant}: GET {BENCH_PATH} gave {status} with {length} bytes")
    client.close()
    extra, script = load_args("readers", settings.clients)
    url = f"http://{HOST}:{port}{BENCH_PATH}"
    warm = (run_wrk(url, settings.warmup_s, settings.connections, None, extra, script)
            if settings.warmup_s else None)
    waited, quiet = (0.0, True)
    if settings.quiet_timeout_s:
        waited, quiet = wait_until_quiet((LOAD_CPU, SERVER_CPU), timeout_s=settings.quiet_timeout_s)
    before = kalkan_counters(metrics_url)
    result = run_wrk(url, settings.duration_s, settings.connections, proc.pid, extra, script)
    after = kalkan_counters(metrics_url)
    if not proc.alive():
        raise BenchError(f"Kalkan ({variant}) died during the run:\n{proc.output_tail()}")
    stopper.stop(proc)
    return {
        "variant": variant,
        "requests_per_s": result.requests_per_s,
        "requests": result.requests,
        "warmup_requests": warm.requests if warm else 0,
        "latency_ms": result.latency_ms,
        "non_2xx_3xx": result.non_2xx_3xx,
        "socket_errors": result.socket_errors,
        "cpu_busy_pct": result.cpu_busy_pct,
        "waited_for_quiet_s": round(waited, 1),
        "machine_was_quiet": quiet,
        "hits": after.get("hits", 0.0) - before.get("hits", 0.0),
        "clients_tracked": after.get("kalkan_clients_tracked"),
        "challenges_issued": sum(v for k, v in after.items()
                                 if k.startswith("kalkan_challenges_issued_total")),
        "distinct_clients_in_log": _distinct_clients(work / "access.log"),
        "command": result.command,
    }


def run(settings: Settings, output_dir: Path) -> Path:
    """Interleave the variants, write the JSON and Markdown into *output_dir*."""
    if cpu_count() < 2:
        raise BenchError("needs 2 usable cores: Kalkan on core 1, the load on core 0")
    if not kalkan_installed():
        raise BenchError("`.venv/bin/kalkan serve --help` does not work: Kalkan is not installed")
    report = Report(name="defense_scale", command=command_line(MODULE), machine=machine_info())
    pin_self(LOAD_CPU)
    runs: list[dict[str, Any]] = []
    with Stopper() as stopper, scratch_dir("defense-scale") as work:
        origin = start_origin(work / "origin", stopper, False, LOAD_CPU)
        check_origin(origin)
        for rep in range(settings.repetitions):
            for variant in VARIANTS:
                log(f"{variant}, repetition {rep + 1}/{settings.repetitions}")
                sample = one_run(variant, origin.port, work / f"{variant}-{rep}", stopper,
                                 settings)
                sample["repetition"] = rep + 1
                runs.append(sample)
                log(f"  {sample['requests_per_s']:,.0f} req/s, non-2xx {sample['non_2xx_3xx']}, "
                    f"clients tracked {sample['clients_tracked']}")
    report.data = summarize(settings, runs)
    report.sections = markdown_sections(report.data)
    json_path, md_path = report.write("What the defence costs at scale: 100,000 readers",
                                      output_dir)
    log(f"wrote {json_path} and {md_path}")
    return md_path


def summarize(settings: Settings, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per variant, the ratio and the target."""
    per: dict[str, Any] = {}
    for v in VARIANTS:
        mine = [r for r in runs if r["variant"] == v]
        per[v] = {
            "requests_per_s": spread([r["requests_per_s"] for r in mine]),
            "p50_ms": spread([r["latency_ms"].get("p50", float("nan")) for r in mine]),
            "p99_ms": spread([r["latency_ms"].get("p99", float("nan")) for r in mine]),
            "kalkan_cpu_us_per_request": spread(
                [r["cpu_busy_pct"]["proxy_own"] / 100.0 / r["requests_per_s"] * 1e6
                 for r in mine if r["requests_per_s"]]),
            "all_2xx": all(r["non_2xx_3xx"] == 0 and not any(r["socket_errors"].values())
                           for r in mine),
            "all_hits": all(r["hits"] >= r["requests"] for r in mine),
        }
    on, off = per["defence-on"]["requests_per_s"], per["defence-off"]["requests_per_s"]
    cpu = {v: per[v]["kalkan_cpu_us_per_request"]["median"] for v in VARIANTS}
    ratio = on["median"] / off["median"]
    valid = per["defence-on"]["all_2xx"] and per["defence-off"]["all_2xx"]
    return {
        "settings": vars(settings),
        "summary": per,
        "target": {"ratio": ratio, "worst_case": on["min"] / off["max"],
                   "best_case": on["max"] / off["min"], "target": TARGET,
                   "met": valid and ratio >= TARGET, "valid": valid},
        "behaviour_us_per_request": cpu["defence-on"] - cpu["defence-on-no-behaviour"],
        "runs": runs,
    }


def markdown_sections(data: dict[str, Any]) -> list[str]:
    """The verdict, the per-variant table and every run."""
    s, t, per = data["settings"], data["target"], data["summary"]
    out: list[str] = []
    if s["quick"]:
        out += ["> **Smoke test (`--quick`): short runs, 1 repetition; not a valid result.**", ""]
    out += ["## Verdict", "",
            f"- Defence on / defence off, readers from {s['clients']:,} addresses: "
            f"**{t['ratio']:.2f}x** (target >= {t['target']:.1f}x): "
            f"**{'MET' if t['met'] else 'NOT MET'}**; worst case (on min / off max) "
            f"{t['worst_case']:.2f}x, best case {t['best_case']:.2f}x."]
    out.append(f"- Behaviour scoring's cost: **{data['behaviour_us_per_request']:.1f} µs** of "
               "Kalkan CPU per request (defence on, minus defence on with `defense.behaviour: "
               "false`, medians).")
    if not t["valid"]:
        out.append("- **Not valid:** some requests were not answered 2xx (the defence refused or "
                   "challenged readers, or sockets failed): see the runs below.")
    out += ["", f"`wrk -t1 -c{s['connections']} -d{s['duration_s']}s --latency -s "
            f"bench/wrk/readers.lua URL -- xff={s['clients']}`, {s['repetitions']} "
            "repetition(s), interleaved; Kalkan on core 1, wrk on core 0.", ""]
    rows = [[v, f"{p['requests_per_s']['median']:,.0f}",
             f"{p['requests_per_s']['min']:,.0f} - {p['requests_per_s']['max']:,.0f}",
             f"{p['p50_ms']['median']:.2f}", f"{p['p99_ms']['median']:.2f}",
             f"{p['kalkan_cpu_us_per_request']['median']:.1f}",
             "yes" if p["all_2xx"] else "**NO**", "yes" if p["all_hits"] else "**NO**"]
            for v, p in per.items()]
    out.append(markdown_table(["variant", "req/s (median)", "min - max", "p50 ms", "p99 ms",
                               "Kalkan CPU µs / request", "all 2xx", "all hits"], rows))
    out += ["", "### Every run, in the order run", ""]
    rows = [[r["repetition"], r["variant"], f"{r['requests_per_s']:,.0f}", r["requests"],
             f"{r['latency_ms'].get('p99', float('nan')):.2f}", r["non_2xx_3xx"],
             sum(r["socket_errors"].values()), f"{r['hits']:.0f}",
             f"{r['clients_tracked']:,.0f}" if r["clients_tracked"] is not None else "n/a",
             r["distinct_clients_in_log"], f"{r['challenges_issued']:.0f}",
             f"{r['cpu_busy_pct']['proxy_own']:.0f}% / {r['cpu_busy_pct']['wrk_own']:.0f}%",
             "yes" if r["machine_was_quiet"] else "**no**"] for r in data["runs"]]
    out.append(markdown_table(
        ["rep", "variant", "req/s", "requests", "p99 ms", "non-2xx", "socket errors",
         "cache hits", "clients tracked (defence)", "distinct clients in the access log",
         "challenges issued", "CPU used: Kalkan / wrk", "quiet before"], rows))
    out += ["", "## Setup", "",
            "- Both variants: `kalkan serve` with `client_address.trusted_proxies: "
            "[\"127.0.0.1/32\"]`, `--access-log FILE`, the admin listener (metrics) on; the only "
            "difference is `defense.enabled` (the default policy when on), and in the third "
            "`defense.behaviour: false`.",
            f"- The forwarded addresses are 100.64.0.0/10 (carrier-grade NAT) addresses spread "
            f"over many /24s; they are only header text, all traffic is on loopback. Each run "
            f"starts Kalkan fresh and warms it for {s['warmup_s']} s with the same load.",
            "- \"distinct clients in the access log\" counts the first field of the log's lines "
            "(up to 200,000 lines, warm-up included): it shows the forwarded address was the "
            "client address in both variants."]
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 s runs, 1 repetition; results in bench/.work/")
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run (10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed seconds first (2)")
    parser.add_argument("--repetitions", type=int, default=None, help="runs per variant (3)")
    parser.add_argument("--clients", type=int, default=CLIENTS,
                        help="distinct X-Forwarded-For addresses (100000)")
    parser.add_argument("--quiet-timeout", type=float, default=60.0,
                        help="wait up to this long for idle cores before each run (0 = don't)")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = Settings(
        duration_s=args.duration or (2 if args.quick else 10),
        warmup_s=args.warmup if args.warmup is not None else (1 if args.quick else 2),
        repetitions=args.repetitions or (1 if args.quick else 3),
        clients=args.clients,
        quiet_timeout_s=args.quiet_timeout,
        quick=args.quick,
    )
    output = args.output_dir or (WORK_DIR / "quick-results" if args.quick else RESULTS_DIR)
    return guarded(MODULE, lambda: run(settings, output))


if __name__ == "__main__":
    sys.exit(main())
