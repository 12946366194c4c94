"""Cache-hit throughput, added miss latency and memory per object: Kalkan against nginx and Varnish.

Run from the project root::

    .venv/bin/python -m bench.throughput            # full run, results in bench/results/
    .venv/bin/python -m bench.throughput --quick    # smoke test, results in bench/.work/
    .venv/bin/python -m bench.throughput --only nginx,varnish

Every peer proxies to the same demo-site origin and runs alone, pinned to core 1; wrk, the origin
and this script run on core 0. See bench/README.md for what is measured and why.
"""

from __future__ import annotations

import argparse
import http.client
import re
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
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
    children_cpu_seconds,
    command_line,
    cpu_busy_pct,
    cpu_count,
    cpu_times,
    log,
    machine_info,
    markdown_table,
    parse_only,
    percentile,
    pin_self,
    require_loopback,
    scratch_dir,
    spread,
    taskset,
    tree_cpu_seconds,
    wait_until_quiet,
)
from bench.peers import HOST, PEERS, Origin, Proxy, start_origin, start_proxy

MODULE = "bench.throughput"
BENCH_PATH = "/bench/20k"
BODY_SIZE = 20_480
TARGETS = {"kalkan_vs_nginx": 2.0, "kalkan_vs_varnish": 1.5}
"""Kalkan's cache-hit req/s must be at least this many times the peer's (medians)."""
SATURATED_PCT = 95.0
"""A load core this busy means wrk, not the peer, may have set the pace."""
CONTENTION_PCT = 10.0
"""Core time used by neither the peer nor wrk beyond this means other work interfered (the
origin and this script are idle during cache-hit runs)."""


@dataclass
class Settings:
    """One run's knobs (``--quick`` shrinks them)."""

    peers: list[str]
    duration_s: int = 10
    warmup_s: int = 2
    """An untimed wrk run before each timed one (threads, pools, connections all started)."""
    repetitions: int = 3
    connections: int = 64
    objects: int = 5000
    miss_requests: int = 200
    stand_in_origin: bool = False
    quick: bool = False
    quiet_timeout_s: float = 60.0
    """Before each timed run, wait up to this long for both cores to be idle (0 = don't)."""


# --------------------------------------------------------------------------- wrk

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class WrkResult:
    """What one wrk run reported."""

    command: str
    requests_per_s: float
    requests: int
    latency_ms: dict[str, float]
    """Percentiles from ``--latency``: keys ``p50``, ``p75``, ``p90``, ``p99``."""
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu_busy_pct: dict[str, float] = field(default_factory=dict)
    """How busy the proxy's core and the load core were during the run (``proxy_core``,
    ``load_core``), and how much of a core the proxy and wrk used themselves (``proxy_own``,
    ``wrk_own``): busy minus own is other work on the machine."""

    @property
    def clean(self) -> bool:
        """No error responses and no socket errors."""
        return self.non_2xx_3xx == 0 and not any(self.socket_errors.values())


def parse_wrk(output: str, command: str) -> WrkResult:
    """Read requests/s, the latency distribution and error counts from wrk's text output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    if not rps or not total:
        raise BenchError(f"cannot read wrk output:\n{output}")
    latency = {
        f"p{pct}": _ms(value)
        for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M)
    }
    errors_line = re.search(r"Socket errors: (.*)$", output, re.M)
    socket_errors = (
        {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", errors_line.group(1))}
        if errors_line
        else {}
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        command=command,
        requests_per_s=float(rps.group(1)),
        requests=int(total.group(1)),
        latency_ms=latency,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def run_wrk(url: str, duration_s: int, connections: int, proxy_pid: int | None = None,
            extra_args: list[str] | None = None) -> WrkResult:
    """``taskset -c 0 wrk -t1 -cN -dDs --latency URL``, bounded by a hard timeout.

    Also records how busy both cores were and how much CPU wrk itself and the proxy's process
    tree (*proxy_pid*) used, so the report can tell who set the pace and whether other work on
    the machine interfered.
    """
    require_loopback(url)
    argv = [*taskset(LOAD_CPU), "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s",
            "--latency", *(extra_args or []), url]
    before, wrk_before = cpu_times(), children_cpu_seconds()
    proxy_before = tree_cpu_seconds(proxy_pid) if proxy_pid else 0.0
    started = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    wall = time.monotonic() - started
    proxy_cpu = tree_cpu_seconds(proxy_pid) - proxy_before if proxy_pid else float("nan")
    wrk_cpu = children_cpu_seconds() - wrk_before
    busy = cpu_busy_pct(before, cpu_times())
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_wrk(done.stdout, " ".join(argv))
    result.cpu_busy_pct = {
        "proxy_core": busy[SERVER_CPU],
        "load_core": busy[LOAD_CPU],
        "proxy_own": 100.0 * proxy_cpu / wall,
        "wrk_own": 100.0 * wrk_cpu / wall,
    }
    return result


# --------------------------------------------------------------------------- measurements


def _expect_body(status: int, length: int, what: str) -> None:
    if status != 200 or length != BODY_SIZE:
        raise BenchError(f"{what}: got status {status} with {length} bytes, expected 200 and "
                         f"{BODY_SIZE}")


def check_origin(origin: Origin) -> dict[str, str]:
    """Check the origin keeps the bench route's contract; returns its response headers."""
    client = HttpClient(HOST, origin.port)
    try:
        status, headers, length = client.get(BENCH_PATH)
    except (OSError, http.client.HTTPException) as err:
        raise BenchError(f"origin ({origin.kind}) failed GET {BENCH_PATH}: {err!r}; its output:\n"
                         f"{origin.proc.output_tail()}") from err
    finally:
        client.close()
    _expect_body(status, length, f"origin GET {BENCH_PATH}")
    if "max-age" not in headers.get("cache-control", ""):
        raise BenchError(f"origin {BENCH_PATH} has no max-age: {headers.get('cache-control')}")
    return headers


def _counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in ("requests", "hits", "misses") if k in after}


def _log_lines(proxy: Proxy) -> int | None:
    path = proxy.extra.get("access_log") or (
        proxy.workdir / "access.log" if proxy.name == "nginx" else None
    )
    if path is None or not Path(str(path)).exists():
        return None
    with open(str(path), "rb") as handle:
        return sum(1 for _ in handle)


def _settle_counters(proxy: Proxy) -> dict[str, float]:
    """Counters once they are current: nginx flushes its buffered access log every second and
    Varnish publishes its worker threads' counters to shared memory lazily."""
    if proxy.name in ("nginx", "varnish"):
        time.sleep(1.3)
    return proxy.counters()


def hit_run(name: str, origin: Origin, workdir: Path, stopper: Stopper,
            settings: Settings) -> dict[str, Any]:
    """Start one peer, fill its cache with one request, measure hits with wrk, stop it."""
    proxy = start_proxy(name, origin.port, workdir, stopper, "throughput", SERVER_CPU)
    with proxy.blame("serving the cache-hit run"):
        client = HttpClient(HOST, proxy.port)
        for _ in range(2):  # the first fills the cache, the second is a hit
            _expect_body(*_status_len(client.get(BENCH_PATH)), f"{name} warm-up")
        client.close()
        url = proxy.base_url + BENCH_PATH
        warmup = (run_wrk(url, settings.warmup_s, settings.connections)
                  if settings.warmup_s else None)
        before = _settle_counters(proxy)
        waited, quiet = (0.0, True)
        if settings.quiet_timeout_s:
            waited, quiet = wait_until_quiet((LOAD_CPU, SERVER_CPU),
                                             timeout_s=settings.quiet_timeout_s)
        result = run_wrk(url, settings.duration_s, settings.connections, proxy.proc.pid)
        if proxy.name != "nginx":
            after = _settle_counters(proxy)
    if not proxy.proc.alive():
        raise BenchError(f"{name} died during the run; its output:\n{proxy.proc.output_tail()}")
    proxy.stop(stopper)
    if proxy.name == "nginx":
        after = proxy.counters()
    sample = asdict(result)
    sample.update(
        peer=name,
        warmup_requests=warmup.requests if warmup else 0,
        waited_for_quiet_s=round(waited, 1),
        machine_was_quiet=quiet,
        cache_counters=_counter_delta(before, after),
        access_log_lines=_log_lines(proxy),
    )
    if name == "kalkan":
        sample["metrics_after"] = {k: v for k, v in after.items()
                                   if k not in ("requests", "hits", "misses")}
    return sample


def _status_len(response: tuple[int, dict[str, str], int]) -> tuple[int, int]:
    return response[0], response[2]


def miss_latency(proxy: Proxy, origin: Origin, requests: int) -> dict[str, Any]:
    """Sequential misses (distinct URLs) through *proxy* and directly to the origin, interleaved.

    Returns the p50/p99 of each and the difference (the latency the proxy adds to a miss).
    """
    clients = {"direct": HttpClient(HOST, origin.port), "proxy": HttpClient(HOST, proxy.port)}
    times: dict[str, list[float]] = {"direct": [], "proxy": []}
    for i in range(requests + 5):
        order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
        for which in order:
            path = f"{BENCH_PATH}/miss-{uuid.uuid4().hex}"
            start = time.perf_counter()
            status, _, length = clients[which].get(path)
            elapsed = (time.perf_counter() - start) * 1000.0
            _expect_body(status, length, f"{which} GET {path}")
            if i >= 5:  # the first five open connections (ours and the proxy's upstream)
                times[which].append(elapsed)
    for client in clients.values():
        client.close()
    summary: dict[str, Any] = {"requests": requests}
    for which, values in times.items():
        summary[which] = {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}
    summary["added_p50_ms"] = summary["proxy"]["p50_ms"] - summary["direct"]["p50_ms"]
    summary["added_p99_ms"] = summary["proxy"]["p99_ms"] - summary["direct"]["p99_ms"]
    return summary


def memory_per_object(proxy: Proxy, objects: int) -> dict[str, Any]:
    """Fill *proxy* with *objects* distinct 20 KiB objects; memory growth per object.

    Afterwards re-requests a sample of the objects and reads the peer's counters, so an
    evicting cache cannot look cheap.
    """
    client = HttpClient(HOST, proxy.port)
    time.sleep(0.5)
    before = proxy.memory_kib()
    counters_before = _settle_counters(proxy)
    tag = uuid.uuid4().hex[:8]
    for i in range(objects):
        _expect_body(*_status_len(client.get(f"{BENCH_PATH}/obj-{tag}-{i}")), f"{proxy.name} fill")
    time.sleep(1.0)
    after = proxy.memory_kib()
    counters_filled = _settle_counters(proxy)
    sample = list(range(0, objects, max(1, objects // 100)))
    for i in sample:
        path = f"{BENCH_PATH}/obj-{tag}-{i}"
        _expect_body(*_status_len(client.get(path)), f"{proxy.name} re-read")
    client.close()
    counters_reread = _settle_counters(proxy)
    return {
        "objects": objects,
        "before_kib": before,
        "after_kib": after,
        "rss_bytes_per_object": (after["rss_kib"] - before["rss_kib"]) * 1024 / objects,
        "pss_bytes_per_object": (after["pss_kib"] - before["pss_kib"]) * 1024 / objects,
        "fill_counters": _counter_delta(counters_before, counters_filled),
        "reread_requests": len(sample),
        "reread_counters": _counter_delta(counters_filled, counters_reread),
        "peer_cache_gauges": {k: v for k, v in counters_filled.items()
                              if k.startswith("kalkan_cache_")},
    }


def extras_run(name: str, origin: Origin, workdir: Path, stopper: Stopper,
               settings: Settings) -> dict[str, Any]:
    """One fresh peer: added miss latency, then memory per cached object."""
    proxy = start_proxy(name, origin.port, workdir, stopper, "throughput", SERVER_CPU)
    try:
        with proxy.blame("measuring miss latency"):
            latency = miss_latency(proxy, origin, settings.miss_requests)
        with proxy.blame("measuring memory per object"):
            memory = memory_per_object(proxy, settings.objects)
        result = {"miss_latency": latency, "memory": memory, "command": proxy.argv_note}
    finally:
        proxy.stop(stopper)
    return result


# --------------------------------------------------------------------------- orchestration


def run(settings: Settings, output_dir: Path, keep_work: bool) -> Path:
    """Run every measurement and write the JSON, Markdown and PNG into *output_dir*."""
    if cpu_count() < 2:
        raise BenchError("needs 2 usable cores: the proxy on core 1, the load on core 0")
    report = Report(
        name="throughput",
        command=command_line(MODULE),
        machine=machine_info({"wrk": _wrk_version()}),
    )
    pin_self(LOAD_CPU)
    samples: list[dict[str, Any]] = []
    extras: dict[str, dict[str, Any]] = {}
    with Stopper() as stopper, scratch_dir("throughput", keep=keep_work) as work:
        origin = start_origin(work / "origin", stopper, settings.stand_in_origin, LOAD_CPU)
        origin_headers = check_origin(origin)
        log(f"origin: {origin.kind} on port {origin.port}")
        for rep in range(settings.repetitions):
            for name in settings.peers:
                log(f"hit throughput: {name}, repetition {rep + 1}/{settings.repetitions}")
                sample = hit_run(name, origin, work / f"{name}-hit-{rep}", stopper, settings)
                sample["repetition"] = rep + 1
                samples.append(sample)
                log(f"  {sample['requests_per_s']:.0f} req/s, p99 {sample['latency_ms']['p99']} ms")
        for name in settings.peers:
            log(f"miss latency and memory: {name}")
            extras[name] = extras_run(name, origin, work / f"{name}-extras", stopper, settings)
        origin_kind = origin.kind
    report.data = summarize(settings, samples, extras, origin_kind, origin_headers)
    report.sections = markdown_sections(report.data)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = report.write("Throughput: Kalkan vs nginx proxy_cache vs Varnish",
                                      output_dir)
    plot(report.data, output_dir / "throughput.png")
    log(f"wrote {json_path}, {md_path} and throughput.png")
    return md_path


def _wrk_version() -> str | None:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else None


def summarize(settings: Settings, samples: list[dict[str, Any]],
              extras: dict[str, dict[str, Any]], origin_kind: str,
              origin_headers: dict[str, str]) -> dict[str, Any]:
    """Medians and spreads per peer, the ratios and whether the targets are met."""
    per_peer: dict[str, Any] = {}
    for name in settings.peers:
        mine = [s for s in samples if s["peer"] == name]
        per_peer[name] = {
            "requests_per_s": spread([s["requests_per_s"] for s in mine]),
            "p50_ms": spread([s["latency_ms"]["p50"] for s in mine]),
            "p99_ms": spread([s["latency_ms"]["p99"] for s in mine]),
            "all_runs_clean": all(s["non_2xx_3xx"] == 0 and not any(s["socket_errors"].values())
                                  for s in mine),
            "proxy_core_busy_pct": spread([s["cpu_busy_pct"]["proxy_core"] for s in mine]),
            "load_core_busy_pct": spread([s["cpu_busy_pct"]["load_core"] for s in mine]),
            "proxy_own_cpu_pct": spread([s["cpu_busy_pct"]["proxy_own"] for s in mine]),
            "wrk_own_cpu_pct": spread([s["cpu_busy_pct"]["wrk_own"] for s in mine]),
        }
        per_peer[name]["load_generator_saturated"] = any(
            s["cpu_busy_pct"]["load_core"] >= SATURATED_PCT for s in mine
        )
        per_peer[name]["other_work_on_cores"] = any(
            s["cpu_busy_pct"]["proxy_core"] - s["cpu_busy_pct"]["proxy_own"] > CONTENTION_PCT
            or s["cpu_busy_pct"]["load_core"] - s["cpu_busy_pct"]["wrk_own"] > CONTENTION_PCT
            for s in mine
        )
    ratios: dict[str, Any] = {}
    for key, target in TARGETS.items():
        peer = key.split("_vs_")[1]
        if "kalkan" in per_peer and peer in per_peer:
            k, p = per_peer["kalkan"]["requests_per_s"], per_peer[peer]["requests_per_s"]
            ratio = k["median"] / p["median"]
            ratios[key] = {
                "ratio": ratio,
                "worst_case": k["min"] / p["max"],
                "best_case": k["max"] / p["min"],
                "target": target,
                "met": ratio >= target,
            }
    return {
        "settings": asdict(settings),
        "origin": {"kind": origin_kind, "cache_control": origin_headers.get("cache-control"),
                   "cpu": LOAD_CPU},
        "pinning": {"proxy_cpu": SERVER_CPU, "load_cpu": LOAD_CPU},
        "summary": per_peer,
        "ratios": ratios,
        "runs": samples,
        "extras": extras,
    }


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def markdown_sections(data: dict[str, Any]) -> list[str]:
    """The Markdown body: verdict, hit table, runs, miss latency, memory, setup notes."""
    s = data["settings"]
    out: list[str] = []
    if data["origin"]["kind"] == "stand-in":
        out += ["> **Not a valid result: measured against bench/stand_in_origin.py, not the demo "
                "site.**", ""]
    if s["quick"]:
        out += ["> **Smoke test (`--quick`): 2 s runs, 1 repetition; not a valid result.**", ""]
    out += ["## Verdict (cache-hit requests/s, medians)", ""]
    for key, r in data["ratios"].items():
        peer = "nginx proxy_cache" if key.endswith("nginx") else "Varnish"
        out.append(
            f"- Kalkan / {peer}: **{r['ratio']:.2f}x** (target >= {r['target']:.1f}x): "
            f"**{'MET' if r['met'] else 'NOT MET'}**; worst case (Kalkan min / peer max) "
            f"{r['worst_case']:.2f}x, best case {r['best_case']:.2f}x"
        )
    if not data["ratios"]:
        out.append("- Kalkan was not measured in this run: no ratios.")
    saturated = [n for n, p in data["summary"].items() if p["load_generator_saturated"]]
    if saturated:
        out.append(f"- **Caution:** wrk's core was >= {SATURATED_PCT:.0f}% busy while measuring "
                   f"{', '.join(saturated)}: the load generator may have set the pace, so those "
                   "req/s are lower bounds (and a ratio involving them is uncertain).")
    else:
        out.append(f"- wrk's core stayed below {SATURATED_PCT:.0f}% busy in every run: each "
                   "peer's own core was the limit.")
    noisy = [f"{r['peer']} #{r['repetition']}" for r in data["runs"]
             if not r.get("machine_was_quiet", True)]
    if noisy:
        out.append(f"- **Caution:** the cores were still busy with other work after "
                   f"{s['quiet_timeout_s']:.0f} s of waiting before run(s) {', '.join(noisy)}.")
    disturbed = [n for n, p in data["summary"].items() if p["other_work_on_cores"]]
    if disturbed:
        out.append(f"- **Caution:** other work used more than {CONTENTION_PCT:.0f}% of a "
                   f"benchmark core during some runs of {', '.join(disturbed)} (core busy minus "
                   "the peer's and wrk's own CPU; see the per-run table): the machine was not "
                   "quiet, so those numbers are less trustworthy.")
    out += ["", f"## Cache-hit throughput: `wrk -t1 -c{s['connections']} -d{s['duration_s']}s "
            f"--latency`, {s['repetitions']} repetition(s), interleaved", ""]
    rows = []
    for name, p in data["summary"].items():
        rps, p50, p99 = p["requests_per_s"], p["p50_ms"], p["p99_ms"]
        rows.append([
            name, _fmt(rps["median"]), f"{_fmt(rps['min'])} - {_fmt(rps['max'])}",
            f"{rps['spread_pct']:.1f}%", f"{p50['median']:.2f}", f"{p99['median']:.2f}",
            "yes" if p["all_runs_clean"] else "**NO**",
            f"{p['proxy_own_cpu_pct']['median']:.0f}% / "
            f"{p['wrk_own_cpu_pct']['median']:.0f}%",
        ])
    out.append(markdown_table(
        ["peer", "req/s (median)", "min - max", "spread", "p50 ms", "p99 ms", "no errors",
         "CPU used: peer / wrk"], rows))
    out += ["", "### Every run, in the order run", ""]
    rows = []
    for r in data["runs"]:
        c = r["cache_counters"]
        hits = (f"{c['hits']:.0f}/{c['requests']:.0f}" if "requests" in c
                else f"{c.get('hits', 0):.0f} hits, {c.get('misses', 0):.0f} misses" if c
                else "n/a")
        rows.append([
            r["repetition"], r["peer"], _fmt(r["requests_per_s"]), r["requests"],
            f"{r['latency_ms'].get('p50', float('nan')):.2f}",
            f"{r['latency_ms'].get('p99', float('nan')):.2f}",
            r["non_2xx_3xx"], sum(r["socket_errors"].values()), hits,
            f"{r['cpu_busy_pct']['proxy_own']:.0f}% / {r['cpu_busy_pct']['wrk_own']:.0f}%",
            f"{r['cpu_busy_pct']['proxy_core']:.0f}% / {r['cpu_busy_pct']['load_core']:.0f}%",
            (f"{r['access_log_lines']} / {r['requests'] + r['warmup_requests'] + 2}"
             if r["access_log_lines"] is not None else "n/a"),
        ])
    out.append(markdown_table(
        ["rep", "peer", "req/s", "requests", "p50 ms", "p99 ms", "non-2xx", "socket errors",
         "cache hits (peer's own counters)", "CPU used: peer / wrk",
         "core busy: peer's / wrk's",
         "access log lines / requests sent"], rows))
    out += ["", f"## Added latency of a cache miss ({s['miss_requests']} sequential requests to "
            "distinct URLs, interleaved with as many direct to the origin)", ""]
    rows = []
    for name, e in data["extras"].items():
        m = e["miss_latency"]
        rows.append([name, f"{m['direct']['p50_ms']:.2f}", f"{m['direct']['p99_ms']:.2f}",
                     f"{m['proxy']['p50_ms']:.2f}", f"{m['proxy']['p99_ms']:.2f}",
                     f"**{m['added_p50_ms']:+.2f}**", f"**{m['added_p99_ms']:+.2f}**"])
    out.append(markdown_table(
        ["peer", "direct p50 ms", "direct p99 ms", "via peer p50 ms", "via peer p99 ms",
         "added p50 ms", "added p99 ms"], rows))
    out += ["", f"## Memory per cached object ({s['objects']} distinct 20 KiB objects)", ""]
    rows = []
    for name, e in data["extras"].items():
        m = e["memory"]
        rr = m["reread_counters"]
        reread = (f"{rr.get('hits', 0):.0f}/{m['reread_requests']} hits" if rr else "n/a")
        note = ("stores bodies on disk (page cache, not RSS): **not comparable**"
                if name == "nginx" else "")
        rows.append([name, _fmt(m["before_kib"]["rss_kib"]), _fmt(m["after_kib"]["rss_kib"]),
                     _fmt(m["rss_bytes_per_object"]), _fmt(m["pss_bytes_per_object"]),
                     reread, note])
    out.append(markdown_table(
        ["peer", "RSS before KiB", "RSS after KiB", "RSS bytes/object", "PSS bytes/object",
         "re-read sample", "note"], rows))
    out += ["", "## Setup", "",
            f"- Origin: {data['origin']['kind']} (`GET {BENCH_PATH}`, {BODY_SIZE} bytes, "
            f"`Cache-Control: {data['origin']['cache_control']}`), on core {LOAD_CPU}.",
            f"- Each peer runs alone, pinned with `taskset -c {SERVER_CPU}`; wrk, the origin and "
            f"the measuring script run on core {LOAD_CPU}. Every peer is started fresh for each "
            f"run; the cache is filled by one request (plus one hit), then an untimed "
            f"{s['warmup_s']} s wrk warm-up runs; the timed run starts once both cores have "
            f"been idle for a second (waiting at most {s['quiet_timeout_s']:.0f} s).",
            "- Kalkan: `kalkan serve --origin ... --listen ... --admin ... --access-log FILE` "
            "(access log and metrics on); the metrics endpoint is read before and after each run.",
            "- nginx: `bench/configs/nginx.conf.tmpl` + `nginx-throughput.inc`: 1 worker, "
            "proxy_cache with keys_zone, proxy_cache_valid, lock, use_stale, background update, "
            "keep-alive upstream (HTTP/1.1); access log ON, **buffered** (64 KiB, flush 1 s).",
            "- Varnish: `bench/configs/default.vcl.tmpl` (backend only, built-in VCL), "
            "`-s malloc,256m -p thread_pools=1`, default shared-memory log (no varnishncsa).",
            "- Memory is the summed RSS (and PSS, which counts shared pages once) of the peer's "
            "process tree before and after the fill. nginx keeps bodies in files, so its number "
            "only shows the keys zone and is not comparable.",
            "- Ratios are of medians; spread is (max - min) / median over the repetitions."]
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    """Bar charts: req/s per peer (min-max whiskers) and p50/p99 latency per peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["summary"])
    colors = {"kalkan": "#2b6cb0", "nginx": "#2f855a", "varnish": "#c05621"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    rps = [data["summary"][n]["requests_per_s"] for n in names]
    medians = [r["median"] for r in rps]
    errors = [[r["median"] - r["min"] for r in rps], [r["max"] - r["median"] for r in rps]]
    bars = ax1.bar(names, medians, yerr=errors, capsize=6,
                   color=[colors.get(n, "grey") for n in names])
    ax1.bar_label(bars, labels=[f"{m:,.0f}" for m in medians], padding=8)
    ax1.set_ylabel("requests/s (median, whiskers min-max)")
    ax1.set_title("Cache-hit throughput, 1 core each")
    ax1.set_ylim(0, max(r["max"] for r in rps) * 1.2)
    width = 0.38
    xs = list(range(len(names)))
    for offset, key, label, hatch in ((-width / 2, "p50_ms", "p50", "//"),
                                      (width / 2, "p99_ms", "p99", "")):
        vals = [data["summary"][n][key] for n in names]
        bars = ax2.bar([x + offset for x in xs], [v["median"] for v in vals], width,
                       yerr=[[v["median"] - v["min"] for v in vals],
                             [v["max"] - v["median"] for v in vals]],
                       capsize=4, label=label, hatch=hatch, edgecolor="white",
                       alpha=0.55 if hatch else 1.0,
                       color=[colors.get(n, "grey") for n in names])
        ax2.bar_label(bars, labels=[f"{v['median']:.1f}" for v in vals], padding=3, fontsize=8)
    ax2.set_xticks(xs, names)
    ax2.set_ylabel("latency ms (median of runs, whiskers min-max)")
    ax2.set_title(f"wrk latency at {data['settings']['connections']} connections")
    top = max(data["summary"][n]["p99_ms"]["max"] for n in names)
    ax2.set_ylim(0, top * 1.4)
    ax2.legend(loc="upper left", fontsize=8, ncols=2)
    ratios = "; ".join(
        f"Kalkan/{key.split('_vs_')[1]} {r['ratio']:.2f}x (target {r['target']:.1f}x)"
        for key, r in data["ratios"].items()
    )
    fig.suptitle(f"{data['origin']['kind']} origin, wrk {data['settings']['duration_s']} s x "
                 f"{data['settings']['repetitions']}" + (f" | {ratios}" if ratios else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 s runs, 1 repetition, 200 objects; results go to "
                             "bench/.work/quick-results unless --output-dir is given")
    parser.add_argument("--only", default=",".join(PEERS),
                        help="comma-separated peers to measure (default: kalkan,nginx,varnish)")
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run (10)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="seconds of untimed wrk load before each timed run (2; 0 = none)")
    parser.add_argument("--repetitions", type=int, default=None, help="runs per peer (3)")
    parser.add_argument("--objects", type=int, default=None, help="objects for memory (5000)")
    parser.add_argument("--miss-requests", type=int, default=200,
                        help="sequential misses per target for the added latency (200)")
    parser.add_argument("--stand-in-origin", action="store_true",
                        help="use bench/stand_in_origin.py instead of the demo site (development)")
    parser.add_argument("--quiet-timeout", type=float, default=60.0,
                        help="before each timed run wait up to this many seconds for both cores "
                             "to be idle (other work on a shared machine); 0 = don't wait")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the scratch directory (configs, logs) under bench/.work/runs")
    args = parser.parse_args(argv)
    try:
        settings = Settings(
            peers=parse_only(args.only, PEERS),
            duration_s=args.duration or (2 if args.quick else 10),
            warmup_s=args.warmup if args.warmup is not None else (1 if args.quick else 2),
            repetitions=args.repetitions or (1 if args.quick else 3),
            objects=args.objects or (200 if args.quick else 5000),
            miss_requests=args.miss_requests,
            stand_in_origin=args.stand_in_origin,
            quick=args.quick,
            quiet_timeout_s=args.quiet_timeout,
        )
        if not settings.peers:
            raise BenchError("--only selected no peer")
        output = args.output_dir or (WORK_DIR / "quick-results" if args.quick else RESULTS_DIR)
        run(settings, output, args.keep_work)
    except BenchError as err:
        print(f"bench.throughput: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench.throughput: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
