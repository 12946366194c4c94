"""What sending hot bodies with sendfile (edge/body_files.py) buys: Kalkan with
``cache.sendfile_bytes: 0`` (every hit copied into its socket) against the default, on the
readers load, 20 KB and 200 KB pages, each measured to capacity by the closed-loop C client
(bench/fixed_rate.c --closed), the two variants run back to back in alternating order (ABBA),
so a slow spell of this shared machine hits both alike. Same cores as bench/throughput.py.

Run from the project root (loopback only; every run bounded by its duration)::

    .venv/bin/python -m bench.sendfile_ab            # results in bench/results/sendfile_ab.*
    .venv/bin/python -m bench.sendfile_ab --quick    # one short pair per page: a smoke run
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    LOAD_CPU,
    SERVER_CPU,
    BenchError,
    HttpClient,
    Stopper,
    command_line,
    log,
    machine_info,
    markdown_table,
    quick_or_full_main,
    scratch_dir,
)
from bench.fixed_rate import run_fixed_rate
from bench.peers import HOST, start_kalkan, start_origin

MODULE = "bench.sendfile_ab"
PAGES = {"20k": "/bench/20k", "200k": "/bench/200k"}
VARIANTS = {
    "copy": "defense:\n  enabled: false\ncache:\n  sendfile_bytes: 0\n",
    "sendfile": "defense:\n  enabled: false\n",
}
HOT = 12  # requests before measuring: past edge/body_files.HOT_HITS, so the file exists


@dataclass
class Settings:
    repetitions: int
    duration_s: float
    warmup_s: float
    connections: int


def settings(quick: bool) -> Settings:
    return Settings(1, 2.0, 0.5, 64) if quick else Settings(4, 8.0, 2.0, 64)


def one_run(variant: str, page: str, origin_port: int, work: Path, stopper: Stopper,
            s: Settings) -> dict[str, Any]:
    proxy = start_kalkan(origin_port, work, stopper, "throughput", SERVER_CPU,
                         config=VARIANTS[variant])
    try:
        client = HttpClient(HOST, proxy.port)
        for _ in range(HOT):
            status, _, _ = client.get(PAGES[page])
            if status != 200:
                raise BenchError(f"{variant}: GET {PAGES[page]} answered {status}")
        client.close()
        r = run_fixed_rate(f"{proxy.base_url}{PAGES[page]}", None, s.duration_s, s.connections,
                           warmup_s=s.warmup_s, proxy_pid=proxy.proc.pid)
    finally:
        stopper.stop(proxy.proc)
    if r["non_2xx"] or any(r["errors"].values()):
        raise BenchError(f"{variant} {page}: {r['non_2xx']} non-2xx, errors {r['errors']}")
    rate, busy = r["achieved_rate"], r["cpu_busy_pct"]
    return {"variant": variant, "page": page, "requests_per_s": rate,
            "cpu_us_per_request": busy["proxy_own"] / 100 / rate * 1e6 if rate else None,
            "server_own_pct": busy["proxy_own"], "client_own_pct": busy["client_own"],
            "client_core_pct": busy["load_core"], "p99_ms": r["latency_ms"]["p99"],
            "command": r["command"]}


def run(s: Settings, output: Path) -> Path:
    runs: list[dict[str, Any]] = []
    info = machine_info()
    with Stopper() as stopper, scratch_dir("sendfile-ab") as work:
        origin = start_origin(work / "origin", stopper, False, LOAD_CPU)
        for rep in range(s.repetitions):
            for page in PAGES:
                order = ("copy", "sendfile") if rep % 2 == 0 else ("sendfile", "copy")
                for variant in order:
                    log(f"{page}: {variant}, repetition {rep + 1}/{s.repetitions}")
                    row = one_run(variant, page, origin.port, work / f"{variant}-{page}-{rep}",
                                  stopper, s)
                    row["repetition"] = rep
                    runs.append(row)
                    log(f"  {row['requests_per_s']:,.0f} req/s, "
                        f"{row['cpu_us_per_request']:.2f} µs of CPU per request")
    data = {"command": command_line(MODULE), "machine": info, "settings": s.__dict__,
            "runs": runs, "summary": summarize(runs)}
    output.mkdir(parents=True, exist_ok=True)
    (output / "sendfile_ab.json").write_text(json.dumps(data, indent=2) + "\n")
    (output / "sendfile_ab.md").write_text(markdown(data))
    log(f"wrote {output / 'sendfile_ab.json'} and sendfile_ab.md")
    return output


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for page in PAGES:
        by = {v: [r for r in runs if r["page"] == page and r["variant"] == v] for v in VARIANTS}
        pairs = [b["requests_per_s"] / a["requests_per_s"]
                 for a, b in zip(by["copy"], by["sendfile"], strict=True)]
        out[page] = {
            v: {"requests_per_s": statistics.median(r["requests_per_s"] for r in rows),
                "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in rows)}
            for v, rows in by.items()}
        out[page]["pair_ratios"] = pairs
        out[page]["median_pair_ratio"] = statistics.median(pairs)
    return out


def markdown(data: dict[str, Any]) -> str:
    m, summary = data["machine"], data["summary"]
    rows = []
    for page, s in summary.items():
        rows.append([page, f"{s['copy']['requests_per_s']:,.0f}",
                     f"{s['sendfile']['requests_per_s']:,.0f}",
                     f"**{s['median_pair_ratio']:.3f}x**",
                     ", ".join(f"{p:.2f}" for p in s["pair_ratios"]),
                     f"{s['copy']['cpu_us_per_request']:.2f}",
                     f"{s['sendfile']['cpu_us_per_request']:.2f}"])
    every = [[r["repetition"] + 1, r["page"], r["variant"], f"{r['requests_per_s']:,.0f}",
              f"{r['cpu_us_per_request']:.2f}", f"{r['p99_ms']:.2f}",
              f"{r['client_core_pct']:.0f}%"] for r in data["runs"]]
    return "\n".join([
        "# Hot bodies by sendfile vs copied into the socket (Kalkan against itself)", "",
        f"- Command: `{data['command']}` (from the project root)",
        f"- git: {m['git']}; {m['nproc']} cores ({m['cpu_model']}), Linux {m['kernel']}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        "- Load: the readers heads (bench.readers_pool: every request its own browser, headers "
        f"and cookie), `bench/fixed_rate.c --closed`, {data['settings']['connections']} "
        f"connections, {data['settings']['warmup_s']:g} s unrecorded then "
        f"{data['settings']['duration_s']:g} s counted; Kalkan on core {SERVER_CPU}, the client "
        f"on core {LOAD_CPU}; access log and metrics on; the variants in ABBA order.",
        "- `copy`: `cache.sendfile_bytes: 0`; `sendfile`: the default (hot bodies of 16 KiB or "
        "more sent from a memfd, edge/body_files.py).", "",
        markdown_table(["page", "copy req/s (median)", "sendfile req/s (median)",
                        "sendfile / copy (median of pairs)", "each pair", "copy CPU µs/req",
                        "sendfile CPU µs/req"], rows), "",
        "## Every run", "",
        markdown_table(["rep", "page", "variant", "req/s", "CPU µs/req", "p99 ms",
                        "client's core busy"], every), ""])


def main(argv: list[str] | None = None) -> int:
    return quick_or_full_main(MODULE, __doc__, argv, "one short pair per page (a smoke run)",
                              settings, run)


if __name__ == "__main__":
    raise SystemExit(main())
