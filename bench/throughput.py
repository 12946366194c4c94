"""Cache-hit throughput on two loads, added miss latency and memory per object: Kalkan against
nginx proxy_cache and Varnish.

Run from the project root::

    .venv/bin/python -m bench.throughput            # full run, results in bench/results/
    .venv/bin/python -m bench.throughput --quick    # smoke test, results in bench/.work/
    .venv/bin/python -m bench.throughput --only nginx,varnish

Two loads, readers first:
  * ``readers``: every request is a different browser's (its own User-Agent, cookie and browser
    headers; ``bench/wrk/readers.lua``), so no two requests are byte-identical, as with real
    readers. Measured on a 20 KB page (the headline), a 2 KB page and a 200 KB page.
  * ``identical``: wrk's default, the same request bytes over and over (a one-URL flood).

wrk is a closed loop run at saturation: the p99 it records is mostly queueing (its own included,
when its core is the busier one). The latency below saturation, at the same fixed offered rates for
every peer, is ``bench/tail_latency.py``'s.

wrk spends 11-13 us of its own core per readers request (its Lua script, its parser), about as much
as the fastest peer spends serving it, so on two cores wrk can set the pace. The headline cell is
therefore also measured with a leaner closed-loop client, ``bench/fixed_rate.c --closed`` (the
readers heads precomputed by ``bench.readers_pool``, one request in flight per connection, no
script): the "capacity" figures, and the ones the issue-8 ratios are judged on; wrk's figures are
reported beside them.

Every peer proxies to the same origin and runs alone, pinned to core 1; wrk, the origin and this
script run on core 0. See bench/README.md for what is measured and why.
"""

from __future__ import annotations

import argparse
import http.client
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
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
from bench.fixed_rate import run_fixed_rate
from bench.peers import HOST, PEERS, Origin, Proxy, start_origin, start_proxy

MODULE = "bench.throughput"
BENCH_PATH = "/bench/20k"
BODY_SIZE = 20_480
READERS_LUA = BENCH_DIR / "wrk" / "readers.lua"
"""The wrk script that makes every request a different browser's."""
LOADS = ("readers", "identical")
PAGES = {"20k": 20_480, "2k": 2_048, "200k": 204_800}
"""Page sizes by the name in their route, ``/bench/<name>``."""
HEADLINE = "readers/20k"
"""The cell the targets apply to: readers on the 20 KB page."""
TARGETS = {"kalkan_vs_nginx": (1.2, 1.0), "kalkan_vs_varnish": (1.2, 1.0)}
"""Issue 8, readers load: Kalkan's req/s at least this many times the peer's (medians):
(target, first step)."""
SATURATED_PCT = 95.0
"""A load core this busy means the load generator, not the peer, may have set the pace."""
LEAN_CLIENT = "bench/fixed_rate.c --closed"
"""The closed-loop client the capacity figures (and the headline ratios) are measured with."""
CONTENTION_PCT = 10.0
"""Core time used by neither the peer nor wrk beyond this means other work interfered (the
origin and this script are idle during cache-hit runs)."""


@dataclass
class Settings:
    """One run's knobs (``--quick`` shrinks them)."""

    peers: list[str]
    loads: list[str] = field(default_factory=lambda: list(LOADS))
    pages: list[str] = field(default_factory=lambda: list(PAGES))
    """Page sizes for the readers load; the identical load uses the 20 KB page only."""
    duration_s: int = 10
    warmup_s: int = 2
    """An untimed wrk run before each timed one (threads, pools, connections all started)."""
    repetitions: int = 3
    connections: int = 64
    objects: int = 5000
    miss_requests: int = 200
    extras: bool = True
    """Measure the added miss latency and memory per object too."""
    stand_in_origin: bool = False
    quick: bool = False
    quiet_timeout_s: float = 60.0
    """Before each timed run, wait up to this long for both cores to be idle (0 = don't)."""
    lean_client: bool = True
    """Measure the headline cell's capacity with the closed-loop C client too."""


@dataclass(frozen=True)
class Cell:
    """One load on one page: a row of the results."""

    load: str
    page: str

    @property
    def key(self) -> str:
        """``readers/20k``."""
        return f"{self.load}/{self.page}"

    @property
    def path(self) -> str:
        """The page's route."""
        return f"/bench/{self.page}"

    @property
    def size(self) -> int:
        """The page's body size in bytes."""
        return PAGES[self.page]


def cells(settings: Settings) -> list[Cell]:
    """What one repetition measures, readers first: readers on every page (20 KB first), then
    identical requests on the 20 KB page."""
    out = [Cell("readers", p) for p in PAGES if p in settings.pages] \
        if "readers" in settings.loads else []
    if "identical" in settings.loads:
        out.append(Cell("identical", "20k"))
    return out


def load_args(load: str, xff_clients: int = 0) -> tuple[list[str], list[str]]:
    """wrk options and script arguments for *load*: the readers script (with *xff_clients*
    distinct X-Forwarded-For addresses if non-zero), or nothing for identical requests."""
    if load == "identical":
        if xff_clients:
            raise BenchError("distinct X-Forwarded-For addresses need the readers load")
        return [], []
    if load != "readers":
        raise BenchError(f"unknown load {load!r}")
    return ["-s", str(READERS_LUA)], (["--", f"xff={xff_clients}"] if xff_clients else [])


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
            extra_args: list[str] | None = None,
            script_args: list[str] | None = None, *, threads: int = 1,
            cpus: str | None = None) -> WrkResult:
    """``taskset -c 0 wrk -t1 -cN -dDs --latency [EXTRA] URL [SCRIPT_ARGS]``, bounded by a hard
    timeout (*script_args*, e.g. ``["--", "xff=100000"]``, go to a ``-s`` script's ``init``).

    Also records how busy both cores were and how much CPU wrk itself and the proxy's process
    tree (*proxy_pid*) used, so the report can tell who set the pace and whether other work on
    the machine interfered.
    """
    require_loopback(url)
    pin = taskset(cpus or LOAD_CPU)
    argv = [*pin, "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s",
            "--latency", *(extra_args or []), url, *(script_args or [])]
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


def _expect_body(status: int, length: int, what: str, size: int = BODY_SIZE) -> None:
    if status != 200 or length != size:
        raise BenchError(f"{what}: got status {status} with {length} bytes, expected 200 and "
                         f"{size}")


def origin_serves(origin: Origin, path: str, size: int) -> tuple[bool, dict[str, str], str]:
    """Whether *origin* answers ``GET path`` with 200, *size* bytes and a max-age; also its
    response headers and, if not, why not."""
    client = HttpClient(HOST, origin.port)
    try:
        status, headers, length = client.get(path)
    except (OSError, http.client.HTTPException) as err:
        raise BenchError(f"origin ({origin.kind}) failed GET {path}: {err!r}; its output:\n"
                         f"{origin.proc.output_tail()}") from err
    finally:
        client.close()
    if status != 200 or length != size:
        return False, headers, f"status {status} with {length} bytes, expected 200 and {size}"
    if "max-age" not in headers.get("cache-control", ""):
        return False, headers, f"no max-age: {headers.get('cache-control')}"
    return True, headers, ""


def check_origin(origin: Origin, path: str = BENCH_PATH, size: int = BODY_SIZE
                 ) -> dict[str, str]:
    """Check the origin keeps the bench route's contract; returns its response headers."""
    ok, headers, why = origin_serves(origin, path, size)
    if not ok:
        raise BenchError(f"origin ({origin.kind}) GET {path}: {why}")
    return headers


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
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


@dataclass
class Measured:
    """One measurement of a started peer (`measure_peer`): what it returned, what the warm-up
    returned, the peer's counters before and after, and how long the machine took to be quiet."""

    result: Any
    warmup: Any
    before: dict[str, float]
    after: dict[str, float]
    waited_s: float
    quiet: bool


def measure_peer(proxy: Proxy, cell: Cell, quiet_timeout_s: float, stopper: Stopper, what: str,
                 measure: Callable[[str], Any],
                 warm: Callable[[str], Any] | None = None) -> Measured:
    """Around one measurement of *proxy* on *cell*'s URL: fill its cache (one request, then a
    hit), `warm(url)` if given, wait for a quiet machine (up to *quiet_timeout_s*; 0 = don't),
    `measure(url)`, read its counters on
    either side, and stop it (nginx's counters come from its log, complete once it stopped)."""
    name = proxy.name
    with proxy.blame(what):
        client = HttpClient(HOST, proxy.port)
        for _ in range(2):  # the first fills the cache, the second is a hit
            _expect_body(*_status_len(client.get(cell.path)), f"{name} warm-up", cell.size)
        client.close()
        url = proxy.base_url + cell.path
        warmup = warm(url) if warm is not None else None
        before = _settle_counters(proxy)
        waited, quiet = (0.0, True)
        if quiet_timeout_s:
            waited, quiet = wait_until_quiet((LOAD_CPU, SERVER_CPU), timeout_s=quiet_timeout_s)
        result = measure(url)
        if name != "nginx":
            after = _settle_counters(proxy)
    if not proxy.proc.alive():
        raise BenchError(f"{name} died during the run; its output:\n{proxy.proc.output_tail()}")
    proxy.stop(stopper)
    if name == "nginx":
        after = proxy.counters()
    return Measured(result, warmup, before, after, waited, quiet)


def _sample(proxy: Proxy, cell: Cell, run: Measured, result: dict[str, Any],
            warmup_requests: int) -> dict[str, Any]:
    """One run's row: the client's *result* (WrkResult's fields) and what the peer counted."""
    sample = dict(result)
    sample.update(
        peer=proxy.name,
        load=cell.load,
        page=cell.page,
        cell=cell.key,
        warmup_requests=warmup_requests,
        waited_for_quiet_s=round(run.waited_s, 1),
        machine_was_quiet=run.quiet,
        cache_counters=counter_delta(run.before, run.after),
        access_log_lines=_log_lines(proxy),
    )
    if proxy.name == "kalkan":
        sample["metrics_after"] = {k: v for k, v in run.after.items()
                                   if k not in ("requests", "hits", "misses")}
    return sample


def hit_run(name: str, cell: Cell, origin: Origin, workdir: Path, stopper: Stopper,
            settings: Settings) -> dict[str, Any]:
    """Start one peer, fill its cache with one request, measure *cell* with wrk, stop it."""
    proxy = start_proxy(name, origin.port, workdir, stopper, "throughput", SERVER_CPU)
    extra, script = load_args(cell.load)
    run = measure_peer(
        proxy, cell, settings.quiet_timeout_s, stopper, f"serving the {cell.key} cache-hit run",
        lambda url: run_wrk(url, settings.duration_s, settings.connections, proxy.proc.pid,
                            extra, script),
        (lambda url: run_wrk(url, settings.warmup_s, settings.connections, None, extra, script))
        if settings.warmup_s else None)
    return _sample(proxy, cell, run, {"client": "wrk", **asdict(run.result)},
                   run.warmup.requests if run.warmup else 0)


def capacity_run(name: str, cell: Cell, origin: Origin, workdir: Path, stopper: Stopper,
                 settings: Settings) -> dict[str, Any]:
    """Start one peer, fill its cache, measure *cell* (readers) with the closed-loop C client
    (its warm-up inside the same run, unrecorded), stop it. The row has wrk's fields, so one
    summary serves both clients (``wrk_own`` is this client's own CPU)."""
    if cell.load != "readers":
        raise BenchError("the closed-loop client sends the readers load only")
    proxy = start_proxy(name, origin.port, workdir, stopper, "throughput", SERVER_CPU)
    run = measure_peer(
        proxy, cell, settings.quiet_timeout_s, stopper, f"serving the {cell.key} capacity run",
        lambda url: run_fixed_rate(url, None, settings.duration_s, settings.connections,
                                   warmup_s=settings.warmup_s, proxy_pid=proxy.proc.pid))
    r = run.result
    busy = r["cpu_busy_pct"]
    as_wrk = {
        "client": LEAN_CLIENT,
        "command": r["command"],
        "requests_per_s": r["achieved_rate"],
        "requests": r["responses"],
        "latency_ms": {k: r["latency_ms"][k] for k in ("p50", "p90", "p99")},
        "non_2xx_3xx": r["non_2xx"],
        "socket_errors": {k: v for k, v in r["errors"].items() if v},
        "cpu_busy_pct": {"proxy_core": busy["proxy_core"], "load_core": busy["load_core"],
                         "proxy_own": busy["proxy_own"], "wrk_own": busy["client_own"]},
    }
    return _sample(proxy, cell, run, as_wrk, r["warmup_responses"])


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
        "fill_counters": counter_delta(counters_before, counters_filled),
        "reread_requests": len(sample),
        "reread_counters": counter_delta(counters_filled, counters_reread),
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


def start_origins(work: Path, stopper: Stopper, settings: Settings
                  ) -> tuple[dict[str, Origin], dict[str, dict[str, str]], dict[str, str]]:
    """The origin for each page: the demo site where it serves the page, else the stand-in.

    Returns the origin per page name, each page's origin response headers, and why the demo
    site could not serve a page (the route the demo site still lacks).
    """
    main_origin = start_origin(work / "origin", stopper, settings.stand_in_origin, LOAD_CPU)
    origins: dict[str, Origin] = {}
    headers: dict[str, dict[str, str]] = {}
    missing: dict[str, str] = {}
    stand_in: Origin | None = main_origin if settings.stand_in_origin else None
    pages = [p for p in PAGES if p in settings.pages or p == "20k"]
    for page in pages:
        path, size = f"/bench/{page}", PAGES[page]
        ok, page_headers, why = origin_serves(main_origin, path, size)
        if ok:
            origins[page], headers[page] = main_origin, page_headers
            continue
        if page == "20k" or main_origin is stand_in:
            raise BenchError(f"origin ({main_origin.kind}) GET {path}: {why}")
        missing[page] = why
        if stand_in is None:
            stand_in = start_origin(work / "stand-in-origin", stopper, True, LOAD_CPU)
        origins[page], headers[page] = stand_in, check_origin(stand_in, path, size)
        log(f"the {main_origin.kind} origin does not serve {path} ({why}): "
            "bench/stand_in_origin.py serves it")
    return origins, headers, missing


def run(settings: Settings, output_dir: Path, keep_work: bool) -> Path:
    """Run every measurement and write the JSON, Markdown and PNG into *output_dir*."""
    if cpu_count() < 2:
        raise BenchError("needs 2 usable cores: the proxy on core 1, the load on core 0")
    if not READERS_LUA.exists():
        raise BenchError(f"{READERS_LUA} is missing")
    report = Report(
        name="throughput",
        command=command_line(MODULE),
        machine=machine_info({"wrk": _wrk_version()}),
    )
    pin_self(LOAD_CPU)
    samples: list[dict[str, Any]] = []
    capacity: list[dict[str, Any]] = []
    extras: dict[str, dict[str, Any]] = {}
    plan = cells(settings)
    if not plan:
        raise BenchError("--loads and --pages selected nothing to measure")
    with Stopper() as stopper, scratch_dir("throughput", keep=keep_work) as work:
        origins, headers, missing = start_origins(work, stopper, settings)
        log("origins: " + ", ".join(f"/bench/{p} {o.kind}" for p, o in origins.items()))
        for rep in range(settings.repetitions):
            for cell in plan:
                for name in settings.peers:
                    log(f"{cell.key}: {name}, repetition {rep + 1}/{settings.repetitions}")
                    sample = hit_run(name, cell, origins[cell.page],
                                     work / f"{name}-{cell.load}-{cell.page}-{rep}", stopper,
                                     settings)
                    sample["repetition"] = rep + 1
                    samples.append(sample)
                    log(f"  {sample['requests_per_s']:.0f} req/s, "
                        f"p99 {sample['latency_ms'].get('p99')} ms")
            headline = Cell(*HEADLINE.split("/"))
            for name in settings.peers if settings.lean_client and headline in plan else ():
                log(f"{HEADLINE} capacity ({LEAN_CLIENT}): {name}, repetition "
                    f"{rep + 1}/{settings.repetitions}")
                sample = capacity_run(name, headline, origins[headline.page],
                                      work / f"{name}-capacity-{rep}", stopper, settings)
                sample["repetition"] = rep + 1
                capacity.append(sample)
                log(f"  {sample['requests_per_s']:.0f} req/s, "
                    f"client core {sample['cpu_busy_pct']['load_core']:.0f}% busy")
        if settings.extras:
            for name in settings.peers:
                log(f"miss latency and memory: {name}")
                extras[name] = extras_run(name, origins["20k"], work / f"{name}-extras",
                                          stopper, settings)
        kinds = {page: origin.kind for page, origin in origins.items()}
    report.data = summarize(settings, samples, extras, kinds, headers, missing, capacity)
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


def _peer_summary(mine: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and spreads of one peer's runs of one cell."""
    return {
        "requests_per_s": spread([s["requests_per_s"] for s in mine]),
        "p50_ms": spread([s["latency_ms"].get("p50", float("nan")) for s in mine]),
        "p99_ms": spread([s["latency_ms"].get("p99", float("nan")) for s in mine]),
        "all_runs_clean": all(s["non_2xx_3xx"] == 0 and not any(s["socket_errors"].values())
                              for s in mine),
        "all_hits": all(s["cache_counters"].get("hits", 0) >= s["requests"] for s in mine),
        "proxy_core_busy_pct": spread([s["cpu_busy_pct"]["proxy_core"] for s in mine]),
        "load_core_busy_pct": spread([s["cpu_busy_pct"]["load_core"] for s in mine]),
        "proxy_own_cpu_pct": spread([s["cpu_busy_pct"]["proxy_own"] for s in mine]),
        "wrk_own_cpu_pct": spread([s["cpu_busy_pct"]["wrk_own"] for s in mine]),
        "peer_cpu_us_per_request": spread([
            10_000 * s["cpu_busy_pct"]["proxy_own"] / s["requests_per_s"]
            if s["requests_per_s"] else float("nan") for s in mine]),
        "load_generator_saturated": any(
            s["cpu_busy_pct"]["load_core"] >= SATURATED_PCT for s in mine),
        "other_work_on_cores": any(
            s["cpu_busy_pct"]["proxy_core"] - s["cpu_busy_pct"]["proxy_own"] > CONTENTION_PCT
            or s["cpu_busy_pct"]["load_core"] - s["cpu_busy_pct"]["wrk_own"] > CONTENTION_PCT
            for s in mine),
    }


def _ratios(peers: dict[str, Any]) -> dict[str, Any]:
    """Kalkan's median req/s over each other peer's, with worst and best cases."""
    ratios: dict[str, Any] = {}
    if "kalkan" not in peers:
        return ratios
    k = peers["kalkan"]["requests_per_s"]
    for peer, p in peers.items():
        if peer == "kalkan":
            continue
        p_rps = p["requests_per_s"]
        ratios[f"kalkan_vs_{peer}"] = {
            "ratio": k["median"] / p_rps["median"],
            "worst_case": k["min"] / p_rps["max"],
            "best_case": k["max"] / p_rps["min"],
            "kalkan_p99_ms": peers["kalkan"]["p99_ms"]["median"],
            "peer_p99_ms": p["p99_ms"]["median"],
        }
    return ratios


def summarize(settings: Settings, samples: list[dict[str, Any]],
              extras: dict[str, dict[str, Any]], origin_kinds: dict[str, str],
              origin_headers: dict[str, dict[str, str]],
              missing_routes: dict[str, str],
              capacity_runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Medians and spreads per cell and peer, the ratios and whether the targets are met.

    The targets are judged on the closed-loop client's capacity runs where there are any (wrk's
    own core can set the pace on the headline cell), else on wrk's; each names its client and
    carries the other client's ratio as ``wrk_ratio`` when both measured it."""
    results: dict[str, Any] = {}
    for cell in cells(settings):
        peers = {}
        for name in settings.peers:
            mine = [s for s in samples if s["cell"] == cell.key and s["peer"] == name]
            if mine:
                peers[name] = _peer_summary(mine)
        results[cell.key] = {
            "load": cell.load, "page": cell.page, "path": cell.path, "body_size": cell.size,
            "origin": origin_kinds.get(cell.page), "peers": peers, "ratios": _ratios(peers),
        }
    capacity: dict[str, Any] = {}
    if capacity_runs:
        peers = {name: _peer_summary([s for s in capacity_runs if s["peer"] == name])
                 for name in settings.peers if any(s["peer"] == name for s in capacity_runs)}
        capacity = {"cell": HEADLINE, "client": LEAN_CLIENT, "peers": peers,
                    "ratios": _ratios(peers)}
    targets: dict[str, Any] = {}
    headline = results.get(HEADLINE)
    if headline:
        for key, (target, first_step) in TARGETS.items():
            by_wrk = headline["ratios"].get(key)
            r = capacity.get("ratios", {}).get(key) or by_wrk
            if r is not None:
                targets[key] = {**r, "target": target, "first_step": first_step,
                                "met": r["ratio"] >= target,
                                "first_step_met": r["ratio"] >= first_step,
                                "measured_by": "wrk" if r is by_wrk else LEAN_CLIENT,
                                "wrk_ratio": by_wrk["ratio"] if by_wrk else None}
        r = headline["ratios"].get("kalkan_vs_nginx")
        if r is not None:
            targets["p99_vs_nginx"] = {"kalkan_p99_ms": r["kalkan_p99_ms"],
                                       "nginx_p99_ms": r["peer_p99_ms"],
                                       "target": "Kalkan p99 <= nginx p99",
                                       "met": r["kalkan_p99_ms"] <= r["peer_p99_ms"],
                                       "measured_by": "wrk, closed loop at saturation"}
    return {
        "settings": asdict(settings),
        "origin": {"kinds": origin_kinds,
                   "cache_control": {p: h.get("cache-control") for p, h in origin_headers.items()},
                   "missing_demo_routes": missing_routes, "cpu": LOAD_CPU},
        "pinning": {"proxy_cpu": SERVER_CPU, "load_cpu": LOAD_CPU},
        "headline": HEADLINE,
        "results": results,
        "capacity": capacity,
        "targets": targets,
        "runs": samples,
        "capacity_runs": capacity_runs or [],
        "extras": extras,
    }


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


_PEER_TITLE = {"nginx": "nginx proxy_cache", "varnish": "Varnish", "kalkan": "Kalkan"}


def _verdict_lines(data: dict[str, Any]) -> list[str]:
    out = []
    for key, t in data["targets"].items():
        if key == "p99_vs_nginx":
            out.append(f"- p99 latency under wrk: Kalkan {t['kalkan_p99_ms']:.2f} ms, nginx "
                       f"{t['nginx_p99_ms']:.2f} ms (target: no worse than nginx): "
                       f"**{'MET' if t['met'] else 'NOT MET'}** (wrk is a closed loop run at "
                       "saturation: its p99 is mostly queueing, its own included when its core "
                       "is the busier one; bench/tail_latency.py measures the servers below "
                       "saturation)")
            continue
        peer = _PEER_TITLE[key.split("_vs_")[1]]
        by = t.get("measured_by", "wrk")
        beside = (f"; by wrk {t['wrk_ratio']:.2f}x" if by != "wrk" and t.get("wrk_ratio")
                  else "")
        out.append(
            f"- Kalkan / {peer}: **{t['ratio']:.3f}x** (target >= {t['target']:.1f}x: "
            f"**{'MET' if t['met'] else 'NOT MET'}**; first step >= {t['first_step']:.1f}x: "
            f"**{'MET' if t['first_step_met'] else 'NOT MET'}**); worst case (Kalkan min / "
            f"peer max) {t['worst_case']:.2f}x, best case {t['best_case']:.2f}x; measured "
            f"with `{by}`{beside}")
    if not data["targets"]:
        out.append(f"- Kalkan and a peer were not both measured on {HEADLINE}: no verdict.")
    return out


def _cell_title(cell: dict[str, Any]) -> str:
    what = ("readers (each request its own User-Agent, cookie and browser headers)"
            if cell["load"] == "readers" else "identical requests (wrk's default)")
    return f"{what}, `GET {cell['path']}` ({cell['body_size']:,} bytes)"


def markdown_sections(data: dict[str, Any]) -> list[str]:
    """The Markdown body: verdict, one table per load and page, runs, miss latency, memory,
    setup notes."""
    s = data["settings"]
    out: list[str] = []
    kinds = data["origin"]["kinds"]
    if "stand-in" in kinds.get("20k", ""):
        out += ["> **Not a valid result: measured against bench/stand_in_origin.py, not the demo "
                "site.**", ""]
    if s["quick"]:
        out += ["> **Smoke test (`--quick`): short runs, 1 repetition; not a valid result.**", ""]
    out += ["## Verdict: readers load, 20 KB page (cache-hit requests/s, medians; issue 8 "
            "targets)", "", *_verdict_lines(data)]
    capacity = data.get("capacity") or {}
    every = [(key, name, p) for key, c in data["results"].items()
             for name, p in c["peers"].items()]
    every += [(f"{capacity['cell']}, capacity", name, p)
              for name, p in capacity.get("peers", {}).items()]
    saturated = sorted({f"{name} ({key})" for key, name, p in every
                        if p["load_generator_saturated"]})
    if saturated:
        out.append(f"- **Caution:** the load generator's core was >= {SATURATED_PCT:.0f}% busy "
                   f"while measuring {', '.join(saturated)}: it may have set the pace, so those "
                   "req/s are lower bounds (and a ratio involving them is uncertain).")
    else:
        out.append(f"- The load generator's core stayed below {SATURATED_PCT:.0f}% busy in "
                   "every run: each peer's own core was the limit.")
    misses = sorted({f"{name} ({key})" for key, name, p in every if not p["all_hits"]})
    if misses:
        out.append(f"- **Caution:** not every request was a cache hit by the peer's own "
                   f"counters for {', '.join(misses)} (see the per-run table).")
    noisy = [f"{r['peer']} {r['cell']} #{r['repetition']}" for r in data["runs"]
             if not r.get("machine_was_quiet", True)]
    if noisy:
        out.append(f"- **Caution:** the cores were still busy with other work after "
                   f"{s['quiet_timeout_s']:.0f} s of waiting before run(s) {', '.join(noisy)}.")
    disturbed = sorted({f"{name} ({key})" for key, name, p in every if p["other_work_on_cores"]})
    if disturbed:
        out.append(f"- **Caution:** other work used more than {CONTENTION_PCT:.0f}% of a "
                   f"benchmark core during some runs of {', '.join(disturbed)} (core busy minus "
                   "the peer's and wrk's own CPU; see the per-run table): the machine was not "
                   "quiet, so those numbers are less trustworthy.")
    for page, why in data["origin"]["missing_demo_routes"].items():
        out.append(f"- The demo site does not serve `/bench/{page}` ({why}); that page came "
                   f"from `bench/stand_in_origin.py` (a cache hit never reaches the origin).")
    out += ["", f"wrk runs: `wrk -t1 -c{s['connections']} -d{s['duration_s']}s --latency`, "
            f"{s['repetitions']} repetition(s), interleaved (every load and page in turn, every "
            "peer in turn); the readers load adds `-s bench/wrk/readers.lua`."]
    if capacity:
        out += ["", f"## Capacity: readers, 20 KB page, closed-loop C client (`{LEAN_CLIENT}`)",
                "", f"The same load from `bench.readers_pool` ({capacity['client']}: "
                "precomputed readers heads, one request in flight per connection, "
                f"{s['connections']} connections, {s['warmup_s']} s unrecorded then "
                f"{s['duration_s']} s counted): the client's own work per request is smaller "
                "than wrk's, so the peer's core sets the pace. The targets above are judged on "
                "these figures; latency here is from each request's send, at saturation.", "",
                _peer_table(capacity, "client")]
    for cell in data["results"].values():
        out += ["", f"## {_cell_title(cell)[0].upper()}{_cell_title(cell)[1:]}", "",
                _peer_table(cell, "wrk")]
    out += ["", "### Every run, in the order run", ""]
    rows = []
    for r in data["runs"] + data.get("capacity_runs", []):
        c = r["cache_counters"]
        hits = (f"{c['hits']:.0f}/{c['requests']:.0f}" if "requests" in c
                else f"{c.get('hits', 0):.0f} hits, {c.get('misses', 0):.0f} misses" if c
                else "n/a")
        rows.append([
            r["repetition"], r["cell"], r.get("client", "wrk"), r["peer"],
            _fmt(r["requests_per_s"]), r["requests"],
            f"{r['latency_ms'].get('p50', float('nan')):.2f}",
            f"{r['latency_ms'].get('p99', float('nan')):.2f}",
            r["non_2xx_3xx"], sum(r["socket_errors"].values()), hits,
            f"{r['cpu_busy_pct']['proxy_own']:.0f}% / {r['cpu_busy_pct']['wrk_own']:.0f}%",
            f"{r['cpu_busy_pct']['proxy_core']:.0f}% / {r['cpu_busy_pct']['load_core']:.0f}%",
            (f"{r['access_log_lines']} / {r['requests'] + r['warmup_requests'] + 2}"
             if r["access_log_lines"] is not None else "n/a"),
        ])
    out.append(markdown_table(
        ["rep", "load/page", "client", "peer", "req/s", "requests", "p50 ms", "p99 ms",
         "non-2xx", "errors", "cache hits (peer's own counters)", "CPU used: peer / client",
         "core busy: peer's / client's", "access log lines / requests sent"], rows))
    if data["extras"]:
        out += _extras_sections(data)
    out += ["", "## Setup", "",
            f"- Origin: {kinds.get('20k')} for `GET {BENCH_PATH}` ({BODY_SIZE} bytes, "
            f"`Cache-Control: {data['origin']['cache_control'].get('20k')}`)"
            + "".join(f"; {kind} for `/bench/{page}`" for page, kind in kinds.items()
                      if page != "20k")
            + f"; on core {LOAD_CPU}.",
            f"- Each peer runs alone, pinned with `taskset -c {SERVER_CPU}`; wrk, the origin and "
            f"the measuring script run on core {LOAD_CPU}. Every peer is started fresh for each "
            f"run; the cache is filled by one request (plus one hit), then an untimed "
            f"{s['warmup_s']} s wrk warm-up of the same load runs; the timed run starts once "
            f"both cores have been idle for a second (waiting at most "
            f"{s['quiet_timeout_s']:.0f} s).",
            "- Readers load: `bench/wrk/readers.lua` gives every request a User-Agent from ~50 "
            "real browser templates with a varying version/build, that browser's navigation "
            "headers (Accept, Accept-Language from a list, `Accept-Encoding: gzip, deflate, br`, "
            "Sec-Fetch-*, sometimes a Referer) and its own cookie (`_ga=GA1.2.<random>.<counter>; "
            "_gid=...; theme=...`): no two requests are byte-identical.",
            "- Kalkan: `kalkan serve --origin ... --listen ... --admin ... --access-log FILE` "
            "with the defence off (one wrk address sending thousands of requests a second is a "
            "flood to it; `bench.defense_scale` measures the defence on this load); access log "
            "and metrics on; the metrics endpoint is read before and after each run.",
            "- nginx: `bench/configs/nginx.conf.tmpl` + `nginx-throughput.inc`: 1 worker, "
            "proxy_cache with keys_zone (default key: the cookie is not part of it), "
            "proxy_cache_valid, lock, use_stale, background update, keep-alive upstream "
            "(HTTP/1.1); access log ON in nginx's combined format (Referer and User-Agent, "
            "as Kalkan's lines have them) plus request time and cache status, **buffered** "
            "(64 KiB, flush 1 s).",
            "- Varnish: `bench/configs/throughput.vcl.tmpl`: the built-in VCL plus "
            "`unset req.http.Cookie` in vcl_recv outside logins, admin, comments and search (as "
            "a real site's VCL does; the built-in VCL alone would pass every reader with a "
            "cookie), `-s malloc,256m -p thread_pools=1`, default shared-memory log (no "
            "varnishncsa).",
            "- Ratios are of medians; spread is (max - min) / median over the repetitions."]
    return out


def _peer_table(cell: dict[str, Any], client: str) -> str:
    """One cell's peers: medians, spreads, ratios, checks and CPU (*client* names the load
    generator in the CPU column)."""
    rows = []
    for name, p in cell["peers"].items():
        rps, p50, p99 = p["requests_per_s"], p["p50_ms"], p["p99_ms"]
        ratio = cell["ratios"].get(f"kalkan_vs_{name}")
        rows.append([
            name, _fmt(rps["median"]), f"{_fmt(rps['min'])} - {_fmt(rps['max'])}",
            f"{rps['spread_pct']:.1f}%", f"{p50['median']:.2f}", f"{p99['median']:.2f}",
            f"**{ratio['ratio']:.2f}x**" if ratio else "",
            "yes" if p["all_runs_clean"] else "**NO**",
            "yes" if p["all_hits"] else "**NO**",
            f"{p['proxy_own_cpu_pct']['median']:.0f}% / {p['wrk_own_cpu_pct']['median']:.0f}%",
            f"{p['load_core_busy_pct']['median']:.0f}%",
            f"{p['peer_cpu_us_per_request']['median']:.1f}",
        ])
    return markdown_table(
        ["peer", "req/s (median)", "min - max", "spread", "p50 ms", "p99 ms", "Kalkan / peer",
         "no errors", "all hits", f"CPU used: peer / {client}", f"{client}'s core busy",
         "peer's CPU µs per request"], rows)


def _extras_sections(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    out = ["", f"## Added latency of a cache miss ({s['miss_requests']} sequential requests to "
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
    out += ["", "Memory is the summed RSS (and PSS, which counts shared pages once) of the "
            "peer's process tree before and after the fill. `bench.connection_memory` measures "
            "a cached page after it has been hit (issue 8's <= 1.1x target)."]
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    """Grouped bars per load and page: req/s per peer (min-max whiskers), and p99 per peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = dict(data["results"])
    if data.get("capacity"):
        groups[f"{data['capacity']['cell']}\nlean client"] = data["capacity"]
    keys = list(groups)
    names = [n for n in PEERS if any(n in groups[k]["peers"] for k in keys)]
    colors = {"kalkan": "#2b6cb0", "nginx": "#2f855a", "varnish": "#c05621"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(names))
    xs = list(range(len(keys)))
    for i, name in enumerate(names):
        offset = (i - (len(names) - 1) / 2) * width
        cells_here = [groups[k]["peers"].get(name) for k in keys]
        rps = [c["requests_per_s"] if c else None for c in cells_here]
        med = [r["median"] if r else 0.0 for r in rps]
        err = [[r["median"] - r["min"] if r else 0.0 for r in rps],
               [r["max"] - r["median"] if r else 0.0 for r in rps]]
        bars = ax1.bar([x + offset for x in xs], med, width, yerr=err, capsize=3, label=name,
                       color=colors.get(name, "grey"))
        ax1.bar_label(bars, labels=[f"{m / 1000:.1f}k" if m else "" for m in med], padding=2,
                      fontsize=7)
        p99 = [c["p99_ms"]["median"] if c else 0.0 for c in cells_here]
        bars = ax2.bar([x + offset for x in xs], p99, width, label=name,
                       color=colors.get(name, "grey"))
        ax2.bar_label(bars, labels=[f"{v:.1f}" if v else "" for v in p99], padding=2,
                      fontsize=7)
    for ax in (ax1, ax2):
        ax.set_xticks(xs, keys)
        ax.legend(loc="upper right", fontsize=8)
    ax1.set_ylabel("requests/s (median, whiskers min-max)")
    ax1.set_title("Cache-hit throughput, 1 core each")
    ax2.set_ylabel("p99 latency ms (median of runs)")
    ax2.set_title(f"p99 at saturation, {data['settings']['connections']} connections")
    verdict = "; ".join(
        f"Kalkan/{key.split('_vs_')[1]} {t['ratio']:.2f}x (target {t['target']:.1f}x)"
        for key, t in data["targets"].items() if "ratio" in t)
    fig.suptitle(f"{HEADLINE}: {verdict}" if verdict else "cache-hit throughput")
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
    parser.add_argument("--loads", default=",".join(LOADS),
                        help="comma-separated loads (default: readers,identical)")
    parser.add_argument("--pages", default=",".join(PAGES),
                        help="page sizes for the readers load (default: 20k,2k,200k)")
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run (10)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="seconds of untimed wrk load before each timed run (2; 0 = none)")
    parser.add_argument("--repetitions", type=int, default=None, help="runs per peer (3)")
    parser.add_argument("--objects", type=int, default=None, help="objects for memory (5000)")
    parser.add_argument("--miss-requests", type=int, default=200,
                        help="sequential misses per target for the added latency (200)")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the miss latency and memory per object")
    parser.add_argument("--stand-in-origin", action="store_true",
                        help="use bench/stand_in_origin.py instead of the demo site (development)")
    parser.add_argument("--quiet-timeout", type=float, default=60.0,
                        help="before each timed run wait up to this many seconds for both cores "
                             "to be idle (other work on a shared machine); 0 = don't wait")
    parser.add_argument("--no-lean-client", action="store_true",
                        help=f"skip the capacity runs with {LEAN_CLIENT} (then the targets are "
                             "judged on wrk's figures)")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the scratch directory (configs, logs) under bench/.work/runs")
    args = parser.parse_args(argv)
    try:
        settings = Settings(
            peers=parse_only(args.only, PEERS),
            loads=parse_only(args.loads, LOADS),
            pages=parse_only(args.pages, tuple(PAGES)),
            duration_s=args.duration or (2 if args.quick else 10),
            warmup_s=args.warmup if args.warmup is not None else (1 if args.quick else 2),
            repetitions=args.repetitions or (1 if args.quick else 3),
            objects=args.objects or (200 if args.quick else 5000),
            miss_requests=args.miss_requests,
            extras=not args.no_extras,
            stand_in_origin=args.stand_in_origin,
            quick=args.quick,
            quiet_timeout_s=args.quiet_timeout,
            lean_client=not args.no_lean_client,
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
