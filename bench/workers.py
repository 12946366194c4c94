"""Every core (issue 12): Kalkan with 1 and 2 workers against nginx with 1 and 2 worker
processes, on the readers load, on this machine's two cores.

Run from the project root::

    .venv/bin/python -m bench.workers            # results in bench/results/workers.*
    .venv/bin/python -m bench.workers --quick    # smoke test, results in bench/.work/

With one worker a server runs pinned to core 1 and wrk (one thread) to core 0 (as
bench.throughput); with two, the server and wrk (two threads) share both cores. Both servers
meet the same conditions, and the question is the ratio: Kalkan / nginx with 2 workers should be
no worse than with 1. The
readers load (every request its own User-Agent, cookie and browser headers) on the cached 20 KB
page, access logs on, Kalkan's defence off (one wrk address is a flood to it; bench.throughput
says why). Configurations interleaved, repeated; medians.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    LOAD_CPU,
    SERVER_CPU,
    BenchError,
    HttpClient,
    Report,
    Stopper,
    command_line,
    cpu_count,
    log,
    machine_info,
    markdown_table,
    pin_self,
    quick_or_full_main,
    scratch_dir,
    spread,
    wait_until_quiet,
)
from bench.peers import HOST, Proxy, start_kalkan, start_nginx, start_origin
from bench.throughput import BENCH_PATH, BODY_SIZE, check_origin, load_args, run_wrk

MODULE = "bench.workers"
PEERS = ("kalkan", "nginx")
WORKERS = (1, 2)


@dataclass
class Settings:
    duration_s: int = 10
    warmup_s: int = 2
    repetitions: int = 3
    connections: int = 64
    quiet_timeout_s: float = 60.0
    quick: bool = False


def start(peer: str, workers: int, origin_port: int, work: Path, stopper: Stopper) -> Proxy:
    cpus = "0,1" if workers > 1 else None
    if peer == "kalkan":
        return start_kalkan(origin_port, work, stopper, "throughput", SERVER_CPU,
                            extra_args=["--workers", str(workers)], cpus=cpus)
    return start_nginx(origin_port, work, stopper, "throughput", SERVER_CPU, workers=workers,
                       cpus=cpus)


def one_run(peer: str, workers: int, origin_port: int, work: Path, stopper: Stopper,
            settings: Settings) -> dict[str, Any]:
    proxy = start(peer, workers, origin_port, work, stopper)
    try:
        client = HttpClient(HOST, proxy.port)
        for _ in range(4 * workers):   # each worker (its own memory cache) fills and hits
            status, _, length = client.get(BENCH_PATH)
            client.close()             # a new connection: the kernel may pick another worker
            if (status, length) != (200, BODY_SIZE):
                raise BenchError(f"{peer} x{workers}: GET {BENCH_PATH} gave {status}, "
                                 f"{length} bytes")
        extra, script = load_args("readers")
        url = f"http://{HOST}:{proxy.port}{BENCH_PATH}"
        # Two workers: wrk gets two threads on both cores too (one thread on one core is the
        # bottleneck already for one Kalkan worker), sharing them with the server's workers.
        load = {"threads": 2, "cpus": "0,1"} if workers > 1 else {}
        if settings.warmup_s:
            run_wrk(url, settings.warmup_s, settings.connections, None, extra, script, **load)
        waited, quiet = (0.0, True)
        if settings.quiet_timeout_s:
            waited, quiet = wait_until_quiet((LOAD_CPU, SERVER_CPU),
                                             timeout_s=settings.quiet_timeout_s)
        result = run_wrk(url, settings.duration_s, settings.connections, proxy.proc.pid, extra,
                         script, **load)
    finally:
        proxy.stop(stopper)
    return {"peer": peer, "workers": workers, "requests_per_s": result.requests_per_s,
            "requests": result.requests, "latency_ms": result.latency_ms,
            "non_2xx_3xx": result.non_2xx_3xx, "socket_errors": result.socket_errors,
            "cpu_busy_pct": result.cpu_busy_pct, "machine_was_quiet": quiet,
            "waited_for_quiet_s": round(waited, 1), "command": result.command}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for w in WORKERS:
        for peer in PEERS:
            mine = [r["requests_per_s"] for r in runs if r["peer"] == peer and r["workers"] == w]
            cells[f"{peer}/{w}"] = spread(mine)
    ratios = {w: cells[f"kalkan/{w}"]["median"] / cells[f"nginx/{w}"]["median"]
              for w in WORKERS}
    return {"cells": cells, "ratio_1": ratios[1], "ratio_2": ratios[2],
            "met": ratios[2] >= ratios[1], "shared_cores": shared_cores(runs),
            "clean": all(r["non_2xx_3xx"] == 0 and not r["socket_errors"] for r in runs)}


def shared_cores(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What two shared cores allow each server, from the one-worker runs (each on a core of its
    own): CPU per request of the server (s) and of wrk (w), in µs. With two workers, server and
    wrk share both cores, so at best 2 / (s + w) requests a second; the ratio of two servers'
    ceilings is (s_nginx + w) / (s_kalkan + w), nearer 1 than s_nginx / s_kalkan whenever wrk's
    own cost is not negligible: the cheaper server gains less from a second core."""
    out: dict[str, Any] = {}
    for peer in PEERS:
        one = [r for r in runs if r["peer"] == peer and r["workers"] == 1 and r["requests_per_s"]]
        if not one:
            return {}
        server = statistics.median(r["cpu_busy_pct"]["proxy_own"] / 100 / r["requests_per_s"]
                                   for r in one) * 1e6
        wrk = statistics.median(r["cpu_busy_pct"]["wrk_own"] / 100 / r["requests_per_s"]
                                for r in one) * 1e6
        two = [r["requests_per_s"] for r in runs if r["peer"] == peer and r["workers"] == 2]
        ceiling = 2 / (server + wrk) * 1e6
        out[peer] = {"server_us": server, "wrk_us": wrk, "ceiling_2": ceiling,
                     "reached_2": statistics.median(two) / ceiling if two else 0.0}
    out["ratio_allowed_2"] = out["kalkan"]["ceiling_2"] / out["nginx"]["ceiling_2"]
    return out


def run(settings: Settings, output_dir: Path) -> Path:
    if cpu_count() < 2:
        raise BenchError("needs 2 usable cores")
    report = Report(name="workers", command=command_line(MODULE), machine=machine_info())
    pin_self(LOAD_CPU)
    runs: list[dict[str, Any]] = []
    with Stopper() as stopper, scratch_dir("workers") as work:
        origin = start_origin(work / "origin", stopper, False, LOAD_CPU)
        check_origin(origin)
        for rep in range(settings.repetitions):
            for w in WORKERS:
                for peer in PEERS:
                    log(f"{peer} with {w} worker(s), repetition {rep + 1}/{settings.repetitions}")
                    sample = one_run(peer, w, origin.port, work / f"{peer}-{w}-{rep}", stopper,
                                     settings)
                    sample["repetition"] = rep + 1
                    runs.append(sample)
                    log(f"  {sample['requests_per_s']:,.0f} req/s")
    s = summarize(runs)
    report.data = {"settings": vars(settings), "summary": s, "runs": runs}
    rows = [[f"{peer}, {w} worker{'s' if w > 1 else ''}",
             f"{s['cells'][f'{peer}/{w}']['median']:,.0f}",
             f"{s['cells'][f'{peer}/{w}']['min']:,.0f} - {s['cells'][f'{peer}/{w}']['max']:,.0f}"]
            for w in WORKERS for peer in PEERS]
    report.sections = [
        "## Verdict (issue 12 target)", "",
        f"- Kalkan / nginx, readers load: **{s['ratio_1']:.2f}x** with 1 worker each, "
        f"**{s['ratio_2']:.2f}x** with 2 (target: no worse with 2 than with 1: "
        f"**{'MET' if s['met'] else 'NOT MET'}**)"
        + ("" if s["clean"] else " — **some runs had errors or non-2xx answers**"), "",
        markdown_table(["server", "req/s (median)", "min - max"], rows), "",
        f"All runs: `wrk -c{settings.connections} -d{settings.duration_s}s --latency -s "
        f"bench/wrk/readers.lua`. One worker: the server pinned to core {SERVER_CPU}, wrk "
        f"(-t1) to core {LOAD_CPU}. Two workers: the server and wrk (-t2) both on cores 0,1, "
        f"sharing them: on this two-core machine a second worker can only use what the load "
        f"generator leaves. {settings.repetitions} repetition(s), interleaved.",
    ]
    shared = s["shared_cores"]
    if shared:
        report.sections += [
            "", "## What two shared cores allow", "",
            "CPU per request measured in the one-worker runs (server and wrk each on a core of "
            "their own). With two workers the server and wrk share both cores, so a server "
            "can do at most 2 / (server + wrk) requests a second: the ratio of two servers' "
            "ceilings is nearer 1 than their ratio on a core each whenever wrk's own cost is "
            "not negligible (the cheaper server gains less from the second core).", "",
            markdown_table(
                ["server", "server CPU µs / request", "wrk CPU µs / request",
                 "ceiling with 2 shared cores, req/s", "2 workers reached"],
                [[peer, f"{shared[peer]['server_us']:.1f}", f"{shared[peer]['wrk_us']:.1f}",
                  f"{shared[peer]['ceiling_2']:,.0f}", f"{shared[peer]['reached_2']:.0%}"]
                 for peer in PEERS]), "",
            f"Kalkan / nginx as the two ceilings allow with 2 workers: "
            f"**{shared['ratio_allowed_2']:.2f}x** (measured {s['ratio_2']:.2f}x; with 1 worker "
            f"each {s['ratio_1']:.2f}x).",
        ]
    json_path, md_path = report.write("Every core: 1 and 2 workers, Kalkan and nginx",
                                      output_dir)
    log(f"wrote {json_path} and {md_path}")
    return md_path


def quick_settings() -> Settings:
    return Settings(duration_s=2, warmup_s=1, repetitions=1, quiet_timeout_s=0,
                    quick=True)


def main(argv: list[str] | None = None) -> int:
    return quick_or_full_main(
        MODULE, __doc__, argv, "2 s runs, 1 repetition",
        lambda quick: quick_settings() if quick else Settings(), run)


if __name__ == "__main__":
    sys.exit(main())
