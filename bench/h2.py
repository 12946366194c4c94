"""Cache hits over HTTP/2 (TLS): Kalkan against nginx's HTTP/2 (`listen ... ssl http2`), both
in front of the demo origin, measured with h2load.

Run from the project root::

    .venv/bin/python -m bench.h2             # full run, results in bench/results/h2.{json,md}
    .venv/bin/python -m bench.h2 --quick     # smoke test (2 s runs), results in bench/.work/

Each peer runs alone, pinned to core 1, with a self-signed certificate (trustme); h2load, the
origin and this script run on core 0. For each page (2 KB and 20 KB, `Cache-Control: public,
max-age=3600`) and each load (clients × concurrent streams per client), the page is fetched once
to fill the cache, then h2load runs for `--duration` seconds after a 1 s warm-up, repeated
`--repetitions` times; the median run is reported. The peers' own counters show whether the
timed requests were cache hits.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trustme

from bench.common import (
    CONFIG_DIR,
    LOAD_CPU,
    RESULTS_DIR,
    SERVER_CPU,
    WORK_DIR,
    BenchError,
    Managed,
    Report,
    Stopper,
    command_line,
    cpu_count,
    free_port,
    guarded,
    log,
    machine_info,
    markdown_table,
    parse_only,
    pin_self,
    require_loopback,
    scratch_dir,
    start_process,
    taskset,
    wait_for_port,
    wait_until_quiet,
)
from bench.peers import HOST, KALKAN, kalkan_counters, nginx_log_counts, start_origin

MODULE = "bench.h2"
PEERS = ("kalkan", "nginx")
PAGES = {"2k": 2_048, "20k": 20_480}
# (clients, concurrent streams per client): a few browsers with many streams each, and many
# connections with a few.
LOADS = {"4x16": (4, 16), "32x4": (32, 4)}
NAME = "news.test"


@dataclass
class Settings:
    peers: list[str]
    pages: list[str]
    loads: list[str]
    duration: float = 10.0
    repetitions: int = 3
    quick: bool = False


@dataclass
class Peer:
    name: str
    port: int
    argv: list[str]
    proc: Managed
    counters: Any = field(repr=False)


def certificate(work: Path) -> tuple[Path, Path]:
    """A self-signed chain for news.test (trustme's CA), as cert and key files."""
    ca = trustme.CA()
    leaf = ca.issue_cert(NAME, HOST)
    cert, key = work / "site.crt", work / "site.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def start_kalkan(origin_port: int, work: Path, stopper: Stopper, cert: Path,
                 key: Path) -> Peer:
    if not KALKAN.exists():
        raise BenchError("`.venv/bin/kalkan` is missing: run `make venv`")
    port, admin = free_port(), free_port()
    config = work / "kalkan.yaml"
    config.write_text(
        "defense:\n  enabled: false\n"  # one load generator on one address IS a flood
        f"tls:\n  certificates:\n    - {{cert: {cert}, key: {key}}}\n  http2: true\n")
    argv = [*taskset(SERVER_CPU), str(KALKAN), "serve", "--origin",
            f"http://{HOST}:{origin_port}", "--listen", f"{HOST}:{port}", "--admin",
            f"{HOST}:{admin}", "--config", str(config), "--access-log", str(work / "access.log")]
    proc = stopper.add(start_process("kalkan", argv, work, cwd=work))
    wait_for_port(HOST, port, timeout=30, proc=proc)
    wait_for_port(HOST, admin, timeout=30, proc=proc)
    metrics = f"http://{HOST}:{admin}/metrics"
    return Peer("kalkan", port, argv, proc, lambda: kalkan_counters(metrics))


def start_nginx(origin_port: int, work: Path, stopper: Stopper, cert: Path, key: Path) -> Peer:
    if shutil.which("nginx") is None:
        raise BenchError("nginx is not installed (bash scripts/install-debian-deps.sh)")
    version = subprocess.run(["nginx", "-V"], capture_output=True, text=True, check=False)
    if "--with-http_v2_module" not in version.stderr:
        raise BenchError("this nginx has no HTTP/2 module (nginx -V lacks "
                         "--with-http_v2_module); run with --only kalkan")
    port = free_port()
    for sub in ("tmp", "cache"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    text = (CONFIG_DIR / "nginx-h2.conf.tmpl").read_text()
    values = {"workdir": work, "listen": f"{HOST}:{port}", "origin": f"{HOST}:{origin_port}",
              "policy": CONFIG_DIR / "nginx-throughput.inc", "cert": cert, "key": key}
    conf = work / "nginx.conf"
    conf.write_text(re.sub(r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]), text))
    argv = [*taskset(SERVER_CPU), "nginx", "-p", str(work), "-c", str(conf), "-e",
            str(work / "error.log")]
    proc = stopper.add(start_process("nginx", argv, work))
    wait_for_port(HOST, port, proc=proc)
    log_path = work / "access.log"
    return Peer("nginx", port, argv, proc, lambda: nginx_log_counts(log_path))


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s, ([\d.]+)([KMG]?B)/s")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout")
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_TIME = re.compile(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+"
                   r"([\d.]+)(us|ms|s)")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def h2load(url: str, clients: int, streams: int, duration: float) -> dict[str, Any]:
    """One h2load run pinned to the load core; its numbers parsed."""
    require_loopback(url)
    argv = [*taskset(LOAD_CPU), "h2load", "-c", str(clients), "-m", str(streams), "-t", "1",
            "--warm-up-time", "1", "-D", str(max(1, round(duration))), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          check=False)
    out = done.stdout
    finished, requests = _FINISHED.search(out), _REQUESTS.search(out)
    status, times = _STATUS.search(out), _TIME.search(out)
    if done.returncode != 0 or not (finished and requests and status and times):
        raise BenchError(f"h2load failed ({done.returncode}): {(out + done.stderr)[-1500:]}")
    if "Application protocol: h2" not in out:
        raise BenchError(f"h2load did not speak h2 to {url}: {out[-800:]}")
    return {
        "req_per_s": float(finished.group(3)),
        "requests": int(requests.group(1)), "succeeded": int(requests.group(4)),
        "failed": int(requests.group(5)), "errored": int(requests.group(6)),
        "status_2xx": int(status.group(1)),
        "latency_ms": {"min": _ms(*times.group(1, 2)), "max": _ms(*times.group(3, 4)),
                       "mean": _ms(*times.group(5, 6))},
        "command": " ".join(argv),
    }


def measure(peer: Peer, settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"argv": " ".join(peer.argv), "cells": {}}
    for page in settings.pages:
        url = f"https://{HOST}:{peer.port}/bench/{page}"
        h2load(url, 1, 1, 1)  # fill the cache (and one more second of warm-up)
        for load in settings.loads:
            clients, streams = LOADS[load]
            wait_until_quiet([SERVER_CPU], timeout_s=30)
            before = peer.counters()
            runs = [h2load(url, clients, streams, settings.duration)
                    for _ in range(settings.repetitions)]
            after = peer.counters()
            median = sorted(runs, key=lambda r: r["req_per_s"])[len(runs) // 2]
            served = after.get("requests", 0) - before.get("requests", 0)
            hits = after.get("hits", 0) - before.get("hits", 0)
            out["cells"][f"{page}/{load}"] = {
                "page": page, "load": load, "clients": clients, "streams": streams,
                "median": median, "req_per_s_all": [r["req_per_s"] for r in runs],
                "spread_pct": 100 * (max(r["req_per_s"] for r in runs)
                                     - min(r["req_per_s"] for r in runs))
                / statistics.median(r["req_per_s"] for r in runs),
                "hit_ratio": hits / served if served else None,
                "all_ok": all(r["failed"] == 0 and r["errored"] == 0
                              and r["status_2xx"] == r["succeeded"] for r in runs),
            }
            log(f"{peer.name} {page}/{load}: {median['req_per_s']:,.0f} req/s")
    return out


def run(settings: Settings, output_dir: Path) -> Path:
    if cpu_count() < 2:
        raise BenchError("needs 2 usable cores: the peer on core 1, the load on core 0")
    if shutil.which("h2load") is None:
        raise BenchError("h2load is not installed (bash scripts/install-debian-deps.sh: "
                         "nghttp2-client)")
    pin_self(LOAD_CPU)
    report = Report("h2", command_line(MODULE), machine_info(
        {"h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True,
                                  check=False).stdout.strip()}))
    results: dict[str, Any] = {}
    with Stopper() as stopper, scratch_dir("h2") as work:
        cert, key = certificate(work)
        origin = start_origin(work / "origin", stopper, False, LOAD_CPU)
        for name in settings.peers:
            log(f"starting {name}")
            starter = start_kalkan if name == "kalkan" else start_nginx
            (work / name).mkdir()
            peer = starter(origin.port, work / name, stopper, cert, key)
            try:
                results[name] = measure(peer, settings)
            finally:
                stopper.stop(peer.proc)
    report.data = {"settings": asdict(settings), "results": results}
    report.sections = sections(settings, results)
    json_path, md_path = report.write("HTTP/2 cache hits: Kalkan vs nginx (h2load)", output_dir)
    log(f"wrote {json_path} and {md_path}")
    return md_path


def sections(settings: Settings, results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if settings.quick:
        out += ["> **Smoke test (`--quick`): short runs, one repetition; not a valid result.**",
                ""]
    cells = [f"{p}/{ld}" for p in settings.pages for ld in settings.loads]
    rows = []
    for cell in cells:
        row: list[object] = [cell]
        for name in settings.peers:
            c = results.get(name, {}).get("cells", {}).get(cell)
            if c is None:
                row += ["-", "-"]
                continue
            ok = "" if c["all_ok"] else " (errors)"
            hit = "-" if c["hit_ratio"] is None else f"{100 * c['hit_ratio']:.0f}%"
            row += [f"{c['median']['req_per_s']:,.0f}{ok} (±{c['spread_pct']:.0f}%, hits "
                    f"{hit})", f"{c['median']['latency_ms']['mean']:.2f}"]
        if "kalkan" in settings.peers and "nginx" in settings.peers:
            k = results.get("kalkan", {}).get("cells", {}).get(cell)
            n = results.get("nginx", {}).get("cells", {}).get(cell)
            row.append(f"{k['median']['req_per_s'] / n['median']['req_per_s']:.2f}x"
                       if k and n else "-")
        rows.append(row)
    header = ["page/load (clients x streams)"]
    for name in settings.peers:
        header += [f"{name} req/s (median)", f"{name} mean ms"]
    if "kalkan" in settings.peers and "nginx" in settings.peers:
        header.append("kalkan / nginx")
    out += ["## Cache hits over HTTP/2", "", markdown_table(header, rows), "",
            "## Setup", "",
            f"- Each peer alone on core {SERVER_CPU} (`taskset`); h2load (`-t 1`), the demo "
            f"origin and this script on core {LOAD_CPU}. TLS 1.3 with a trustme certificate.",
            f"- {settings.repetitions} runs of {settings.duration:g} s (after a 1 s warm-up) "
            "per cell; the median run's req/s and mean latency; ± is the spread of the runs "
            "relative to the median. `hits` is the share of the timed requests the peer's own "
            "counters call cache hits.",
            "- Kalkan: `kalkan serve` with `tls.http2: true`, `defense.enabled: false`, an "
            "access log; nginx: `bench/configs/nginx-h2.conf.tmpl` (one worker, "
            "`listen ... ssl http2`, the throughput benchmark's proxy_cache policy).",
            "- The h2load command of each median run is in the JSON."]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 s runs, one repetition; results in bench/.work/")
    parser.add_argument("--only", default=",".join(PEERS), help="peers (default: kalkan,nginx)")
    parser.add_argument("--pages", default=",".join(PAGES), help="pages (default: 2k,20k)")
    parser.add_argument("--loads", default=",".join(LOADS), help="loads (default: 4x16,32x4)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run (10)")
    parser.add_argument("--repetitions", type=int, default=None, help="runs per cell (3)")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    def body() -> None:
        settings = Settings(
            peers=parse_only(args.only, PEERS), pages=parse_only(args.pages, tuple(PAGES)),
            loads=parse_only(args.loads, tuple(LOADS)),
            duration=args.duration or (2.0 if args.quick else 10.0),
            repetitions=args.repetitions or (1 if args.quick else 3), quick=args.quick)
        run(settings, args.output_dir or (WORK_DIR / "quick-results" if args.quick
                                          else RESULTS_DIR))

    return guarded(MODULE, body)


if __name__ == "__main__":
    sys.exit(main())
