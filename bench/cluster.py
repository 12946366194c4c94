"""Three edges of one site sharing their state through Redis (issue 12): how long a decision
made on one takes to be enforced on the others, and how many Redis operations the cluster
costs per request served.

Run from the project root::

    .venv/bin/python -m bench.cluster            # results in bench/results/cluster.*
    .venv/bin/python -m bench.cluster --quick    # smoke test, results in bench/.work/

A redis-server (Debian's, nothing kept on disk) and three `kalkan serve` processes on loopback,
each with its own state directory, `cluster.redis` pointing at it, the defence on and
`X-Forwarded-For` trusted from 127.0.0.1. Propagation: for each of N addresses in 198.18.0.0/15
(the benchmarking range), `POST /decisions` (block) on edge A's admin API; edges B and C are
then asked for the cached page as that address (forwarded) in a loop until they answer 403;
the time from the POST to each first 403 is one sample (polling adds up to a request's time,
about a millisecond, so the figures are upper bounds). The decisions go one at a time, 50 ms
apart; under a flood of decisions an edge sends one batch per `cluster.interval` (20 ms), which
adds up to that to a decision's way. Operations per request: wrk sends the
readers load (every request its own User-Agent and cookie, 10,000 forwarded addresses) to A and
B for the duration; every edge's `kalkan_cluster_redis_ops_total` before and after, over the
requests served.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BenchError,
    Managed,
    Report,
    Stopper,
    command_line,
    free_port,
    log,
    machine_info,
    markdown_table,
    percentile,
    quick_or_full_main,
    scratch_dir,
    start_process,
    wait_for_port,
)
from bench.peers import HOST, KALKAN, kalkan_counters, start_origin
from bench.throughput import BENCH_PATH, check_origin, load_args, run_wrk

MODULE = "bench.cluster"
TARGET_P99_MS = 100.0
TARGET_OPS = 0.01
PAUSE_S = 0.05   # between two decisions: one at a time, as an operator or a rule adds them
EDGES = ("a", "b", "c")
CONFIG = """client_address:
  trusted_proxies: ["127.0.0.1/32"]
defense:
  enabled: true
cluster:
  redis: {url}
  edge_id: {name}
"""


@dataclass
class Settings:
    decisions: int = 200
    duration_s: int = 10
    connections: int = 32
    quick: bool = False


@dataclass
class EdgeProc:
    name: str
    port: int
    admin: int
    token: str
    proc: Managed


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def start_edges(origin_port: int, redis_url: str, work: Path, stopper: Stopper) -> list[EdgeProc]:
    edges = []
    for name in EDGES:
        home = work / name
        home.mkdir(parents=True, exist_ok=True)
        config = home / "kalkan.yaml"
        config.write_text(CONFIG.format(url=redis_url, name=name))
        port, admin = free_port(), free_port()
        argv = [str(KALKAN), "serve", "--origin", f"http://{HOST}:{origin_port}",
                "--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}", "--config",
                str(config), "--state-dir", str(home / "state"), "--cache-dir",
                str(home / "cache"), "--access-log", str(home / "access.log")]
        proc = stopper.add(start_process(f"kalkan-{name}", argv, home, cwd=home))
        wait_for_port(HOST, port, timeout=30, proc=proc)
        wait_for_port(HOST, admin, timeout=30, proc=proc)
        token = (home / "state" / "admin.token").read_text().strip()
        edges.append(EdgeProc(name, port, admin, token, proc))
    return edges


def wait_connected(edges: list[EdgeProc], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = [kalkan_counters(f"http://{HOST}:{e.admin}/metrics").get("kalkan_cluster_up")
              for e in edges]
        if all(u == 1.0 for u in up):
            return
        time.sleep(0.1)
    raise BenchError("the edges did not all connect to Redis: "
                     + " | ".join(e.proc.output_tail(400) for e in edges))


def propagation(edges: list[EdgeProc], n: int) -> list[float]:
    """Milliseconds from A's POST to the first 403 on B, and on C, for `n` new addresses."""
    a, others = edges[0], edges[1:]
    samples: list[float] = []
    for i in range(n):
        target = f"198.18.{i // 250}.{i % 250 + 1}"
        forwarded = {"X-Forwarded-For": target, "User-Agent": "Mozilla/5.0 bench reader"}
        body = json.dumps({"target": target, "action": "block", "ttl": 600,
                           "reason": "bench.cluster"}).encode()
        began = time.monotonic()
        status = _request(a.admin, "POST", "/decisions", {
            "Authorization": f"Bearer {a.token}", "Content-Type": "application/json"}, body)
        if status != 200:
            raise BenchError(f"POST /decisions on edge a answered {status}")

        waiting = list(others)
        while waiting:
            for e in list(waiting):
                if _request(e.port, "GET", BENCH_PATH, forwarded) == 403:
                    samples.append(1000.0 * (time.monotonic() - began))
                    waiting.remove(e)
            if time.monotonic() - began > 5.0:
                raise BenchError(f"{target}: not enforced on {[e.name for e in waiting]} "
                                 "after 5 s")
        time.sleep(PAUSE_S)
    return samples


def ops_per_request(edges: list[EdgeProc], settings: Settings) -> dict[str, Any]:
    """Redis commands of all edges over the requests A and B served under the readers load."""
    def ops() -> float:
        return sum(kalkan_counters(f"http://{HOST}:{e.admin}/metrics")
                   .get("kalkan_cluster_redis_ops_total", 0.0) for e in edges)

    extra, script = load_args("readers", 10_000)
    before = ops()
    results = [run_wrk(f"http://{HOST}:{e.port}{BENCH_PATH}", settings.duration_s,
                       settings.connections, e.proc.pid, extra, script) for e in edges[:2]]
    used = ops() - before
    requests = sum(r.requests for r in results)
    return {"redis_ops": used, "requests": requests,
            "ops_per_request": used / requests if requests else float("nan"),
            "requests_per_s": [r.requests_per_s for r in results],
            "non_2xx": sum(r.non_2xx_3xx for r in results)}


def run(settings: Settings, output_dir: Path) -> Path:
    report = Report(name="cluster", command=command_line(MODULE), machine=machine_info())
    with Stopper() as stopper, scratch_dir("cluster") as work:
        origin = start_origin(work / "origin", stopper, False, None)
        check_origin(origin)
        redis_port = free_port()
        redis = stopper.add(start_process("redis", [
            "redis-server", "--port", str(redis_port), "--bind", HOST, "--save", "",
            "--appendonly", "no"], work))
        wait_for_port(HOST, redis_port, timeout=15, proc=redis)
        edges = start_edges(origin.port, f"redis://{HOST}:{redis_port}/0", work, stopper)
        wait_connected(edges)
        for e in edges:  # the page cached on each edge
            for _ in range(2):
                _request(e.port, "GET", BENCH_PATH)
        log(f"propagation of {settings.decisions} decisions from edge a to b and c")
        samples = propagation(edges, settings.decisions)
        log("Redis operations per request under the readers load")
        ops = ops_per_request(edges, settings)
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        report.data = {
            "settings": vars(settings),
            "propagation_ms": {"samples": len(samples), "p50": round(p50, 2),
                               "p99": round(p99, 2), "max": round(max(samples), 2)},
            "ops": ops,
            "targets": {"propagation_p99_ms": TARGET_P99_MS, "ops_per_request": TARGET_OPS,
                        "propagation_met": p99 <= TARGET_P99_MS,
                        "ops_met": ops["ops_per_request"] < TARGET_OPS},
        }
    d = report.data
    report.sections = [
        "## Verdict (issue 12 targets)", "",
        f"- A decision added on edge a is enforced on b and c within **{p50:.1f} ms** (p50), "
        f"**{p99:.1f} ms** (p99) over {len(samples)} samples (target p99 <= "
        f"{TARGET_P99_MS:.0f} ms: **{'MET' if d['targets']['propagation_met'] else 'NOT MET'}**)",
        f"- Redis operations per request: **{ops['ops_per_request']:.5f}** ({ops['redis_ops']:.0f} "
        f"commands for {ops['requests']:,} requests; target < {TARGET_OPS}: "
        f"**{'MET' if d['targets']['ops_met'] else 'NOT MET'}**)", "",
        markdown_table(["figure", "value"], [
            ["propagation p50 / p99 / max (ms)", f"{p50:.1f} / {p99:.1f} / "
             f"{d['propagation_ms']['max']:.1f}"],
            ["readers load req/s on a / b", " / ".join(f"{r:,.0f}"
                                                      for r in ops["requests_per_s"])],
            ["non-2xx answers under the readers load", ops["non_2xx"]],
        ]), "",
        "Setup: one redis-server and three `kalkan serve` on loopback, unpinned (this measures "
        "latency and operation counts, not throughput); each edge with its own state "
        "directory; the propagation poll adds up to one request's time to each sample.",
    ]
    json_path, md_path = report.write("Cluster: decision propagation and Redis load",
                                      output_dir)
    log(f"wrote {json_path} and {md_path}")
    return md_path


def quick_settings() -> Settings:
    return Settings(decisions=20, duration_s=2, quick=True)


def main(argv: list[str] | None = None) -> int:
    return quick_or_full_main(
        MODULE, __doc__, argv, "20 decisions, 2 s of load",
        lambda quick: quick_settings() if quick else Settings(), run)


if __name__ == "__main__":
    sys.exit(main())
