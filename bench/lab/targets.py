"""What the lab attacks: the demo origin (fixed capacity) and, in front of it, nothing, nginx
with bench/configs/nginx-lab.conf.tmpl, or Kalkan with its default policy; plus the sampler that
watches the origin's load and the edge's CPU and memory while a scenario runs.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench.common import (
    LOAD_CPU,
    SERVER_CPU,
    BenchError,
    Managed,
    Stopper,
    free_port,
    start_process,
    taskset,
    tree_cpu_seconds,
    tree_memory_kib,
    wait_for_port,
)
from bench.lab.net import CRAWLER_NET, now
from bench.peers import KALKAN, _render, fetch_text, kalkan_counters, nginx_log_counts

# bench.peers._render fills the {{placeholders}} of bench/configs templates: reused, not copied.

HOST = "127.0.0.1"
TARGETS = ("origin", "nginx", "kalkan")
ORIGIN_WORKERS = 4
ORIGIN_ARGS = ["--workers", str(ORIGIN_WORKERS), "--page-cost-ms", "40", "--search-cost-ms", "200"]

# The lab's crawler list: the real Googlebot ranges are not loopback, so a 127.x range stands in
# for them. Everything else about the policy is Kalkan's shipped default.
LAB_CRAWLERS = f"""# Traffic lab only: Googlebot's published ranges replaced by a loopback stand-in.
snapshot: lab
crawlers:
  googlebot:
    user_agent: 'Googlebot|Google-InspectionTool|GoogleOther|Storebot-Google'
    published: https://developers.google.com/static/search/apis/ipranges/googlebot.json
    ranges: [{CRAWLER_NET}]
"""
# Deployment settings for this origin, as docs/DESIGN.md's demo config has them: never send the
# 4-worker origin more than 4 requests at once. The policy file is the shipped default plus the
# crawler list above.
KALKAN_CONFIG = """origin:
  max_concurrency: {workers}
defense:
  policy: {policy}
"""


@dataclass
class Running:
    """The origin and the target in front of it for one scenario run."""

    name: str
    origin: Managed
    origin_port: int
    port: int
    edge: Managed | None
    counters: Any = None              # () -> dict of the edge's own counters
    admin_url: str | None = None
    notes: dict[str, str] = field(default_factory=dict)


def start_origin(workdir: Path, stopper: Stopper) -> tuple[Managed, int]:
    """The demo newsroom site with a fixed capacity (4 workers, 40 ms pages, 200 ms searches)."""
    port = free_port(HOST)
    argv = [*taskset(LOAD_CPU), str(KALKAN), "demo-site", "--listen", f"{HOST}:{port}",
            *ORIGIN_ARGS]
    proc = stopper.add(start_process("origin", argv, workdir))
    wait_for_port(HOST, port, timeout=30, proc=proc)
    return proc, port


def start_target(name: str, workdir: Path, stopper: Stopper) -> Running:
    """Start the origin and, unless *name* is ``origin``, the edge in front of it."""
    workdir.mkdir(parents=True, exist_ok=True)
    origin, origin_port = start_origin(workdir, stopper)
    if name == "origin":
        return Running(name, origin, origin_port, origin_port, None,
                       notes={"command": "kalkan demo-site " + " ".join(ORIGIN_ARGS)})
    if name == "nginx":
        return _start_nginx(workdir, stopper, origin, origin_port)
    if name == "kalkan":
        return _start_kalkan(workdir, stopper, origin, origin_port)
    raise BenchError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")


def _start_nginx(workdir: Path, stopper: Stopper, origin: Managed, origin_port: int) -> Running:
    port = free_port(HOST)
    for sub in ("tmp", "cache"):
        (workdir / sub).mkdir(exist_ok=True)
    conf = _render("nginx-lab.conf.tmpl", workdir / "nginx.conf", workdir=workdir,
                   listen=f"{HOST}:{port}", origin=f"{HOST}:{origin_port}")
    argv = [*taskset(SERVER_CPU), "nginx", "-p", str(workdir), "-c", str(conf), "-e",
            str(workdir / "error.log")]
    proc = stopper.add(start_process("nginx", argv, workdir))
    wait_for_port(HOST, port, proc=proc)
    log_path = workdir / "access.log"
    return Running("nginx", origin, origin_port, port, proc,
                   counters=lambda: nginx_log_counts(log_path),
                   notes={"config": "bench/configs/nginx-lab.conf.tmpl"})


def _start_kalkan(workdir: Path, stopper: Stopper, origin: Managed, origin_port: int) -> Running:
    default_policy = resources.files("kalkan").joinpath("data/policy.yaml").read_text("utf-8")
    (workdir / "crawlers-lab.yaml").write_text(LAB_CRAWLERS)
    policy = workdir / "policy-lab.yaml"
    policy.write_text("crawlers: crawlers-lab.yaml\n" + default_policy)
    config = workdir / "kalkan-lab.yaml"
    config.write_text(KALKAN_CONFIG.format(workers=ORIGIN_WORKERS, policy=json.dumps(str(policy))))
    port, admin = free_port(HOST), free_port(HOST)
    argv = [*taskset(SERVER_CPU), str(KALKAN), "serve", "--config", str(config),
            "--origin", f"http://{HOST}:{origin_port}", "--listen", f"{HOST}:{port}",
            "--admin", f"{HOST}:{admin}", "--state-dir", str(workdir / "state"),
            "--cache-dir", str(workdir / "cache"), "--access-log", str(workdir / "access.log")]
    proc = stopper.add(start_process("kalkan", argv, workdir, cwd=workdir))
    wait_for_port(HOST, port, timeout=30, proc=proc)
    wait_for_port(HOST, admin, timeout=30, proc=proc)
    metrics_url = f"http://{HOST}:{admin}/metrics"
    return Running("kalkan", origin, origin_port, port, proc,
                   counters=lambda: kalkan_counters(metrics_url),
                   admin_url=f"http://{HOST}:{admin}",
                   notes={"config": "origin.max_concurrency: 4; default policy + lab crawlers"})


class Sampler:
    """Polls the origin's counters (5 Hz) and the edge's CPU, memory and threat level (1 Hz),
    each in its own thread (an overloaded origin answers its stats late and must not stall the
    edge's samples), until stopped; every sample carries the lab clock's seconds since *t0*."""

    def __init__(self, running: Running, t0: float, period_s: float = 0.2) -> None:
        self.running, self.t0, self.period_s = running, t0, period_s
        self.origin: list[list[float]] = []   # [t, requests, in_flight, queued, 503s, 504s]
        self.edge: list[list[float]] = []     # [t, cpu seconds, rss KiB, threat level]
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._every, args=(period_s, self._origin),
                                          daemon=True, name="lab-origin-sampler"),
                         threading.Thread(target=self._every, args=(1.0, self._edge),
                                          daemon=True, name="lab-edge-sampler")]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _every(self, period_s: float, sample: Any) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            sample(now() - self.t0)
            self._halt.wait(max(0.0, period_s - (time.monotonic() - started)))

    def _origin(self, t: float) -> None:
        try:
            s = json.loads(fetch_text(f"http://{HOST}:{self.running.origin_port}/_demo/stats",
                                      timeout=2.0))
            self.origin.append([t, s["requests"], s["in_flight"], s["queued"],
                                s["rejected_503"], s["timed_out_504"]])
        except (OSError, ValueError, KeyError):
            pass  # a sample lost to an overloaded origin is a gap, not an error

    def _edge(self, t: float) -> None:
        proc = self.running.edge or self.running.origin
        level = float("nan")
        if self.running.admin_url:
            try:
                text = fetch_text(self.running.admin_url + "/metrics", timeout=1.0)
                for line in text.splitlines():
                    if line.startswith("kalkan_threat_level "):
                        level = float(line.split()[1])
            except OSError:
                pass
        self.edge.append([t, tree_cpu_seconds(proc.pid),
                          float(tree_memory_kib(proc.pid)["rss_kib"]), level])

    def stop(self) -> None:
        self._halt.set()
        for thread in self._threads:
            thread.join(timeout=5)
