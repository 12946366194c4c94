"""The cache with several workers (issue 12): per-worker memory over one shared directory, with
and without a worker reading its siblings' files on a miss, measured by hit ratio, origin
fetches, memory and latency.

Run from the project root::

    .venv/bin/python -m bench.worker_cache            # results in bench/results/worker_cache.*
    .venv/bin/python -m bench.worker_cache --quick    # smoke test, results in bench/.work/

A stand-in origin that behaves like WordPress (HTML pages of 20 KB with no cache headers, so
Kalkan microcaches them for `cache.microcache_ttl`, 10 s; 30 ms to "render" each page; it counts
what it is asked) serves 2,000 pages. A readers load asks for them with a Zipf-like popularity
(the page of rank r is asked in proportion to 1/r), every request with its own User-Agent and
cookies, 32 connections at a time, each reconnecting after a few pages (a reader's visit: the
kernel hashes every new connection to a worker), paced at 400 requests a second so that every
run sees the same requests at the same moments (pages expire at the same points). The same
seeded sequence runs against three arrangements, each started with an empty cache directory:

- `1 worker`: `kalkan serve --workers 1` (pinned to core 1);
- `2 workers, own memory`: `--workers 2` with `cache.share_directory: false` (each worker's
  miss goes to the origin, as before);
- `2 workers, shared dir`: `--workers 2`, `cache.share_directory: true` (a miss or a stale copy
  first looks for a sibling's file, edge/shared_dir.py).

Two workers run on both cores, sharing them with the load generator and the origin (core 0):
there are only two. Per arrangement: origin fetches, hit ratio (answers that did not wait for
the origin), every worker's RSS and cache bytes, and latency of hits and of the first request of
a page on each worker (the worker is found from the kernel's socket table: the one holding the
accepted end of the load's connection). Everything on loopback, bounded by a request count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    LOAD_CPU,
    RESULTS_DIR,
    SERVER_CPU,
    WORK_DIR,
    BenchError,
    Report,
    Stopper,
    command_line,
    cpu_count,
    free_port,
    guarded,
    log,
    machine_info,
    markdown_table,
    percentile,
    pin_self,
    process_tree,
    require_loopback,
    scratch_dir,
    start_process,
    taskset,
    wait_for_port,
)
from bench.peers import HOST, start_kalkan

MODULE = "bench.worker_cache"
ARRANGEMENTS = ("1 worker", "2 workers, own memory", "2 workers, shared dir")
PAGE_BYTES = 20_480


@dataclass
class Settings:
    pages: int = 2_000
    requests: int = 16_000
    rate: float = 400.0            # requests a second, paced: every run sees the same clock
    connections: int = 32
    visit: int = 8                 # requests per connection before it reconnects
    render_ms: float = 30.0        # the origin's time to make a page
    repetitions: int = 3
    seed: int = 12
    quick: bool = False


# --------------------------------------------------------------------------- the origin


def _page(n: int) -> bytes:
    head = b"<!doctype html><html><head><title>post %d</title></head><body><p>" % n
    tail = b"</p></body></html>\n"
    return head + b"w" * (PAGE_BYTES - len(head) - len(tail)) + tail


def serve_origin(port: int, render_ms: float) -> None:
    """A WordPress stand-in: `/post/N/` is a 20 KB page without Cache-Control, Expires or
    validators; `/__count` (not through the edge) says how many page requests came."""
    require_loopback(f"{HOST}:{port}")
    counts: dict[str, int] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("latin-1")
                if path == "/__count":
                    body = json.dumps({"requests": sum(counts.values()),
                                       "pages": len(counts)}).encode()
                    extra = b"Cache-Control: no-store\r\nContent-Type: application/json\r\n"
                elif path.startswith("/post/"):
                    counts[path] = counts.get(path, 0) + 1
                    await asyncio.sleep(render_ms / 1000)
                    body = _page(int(path.split("/")[2] or 0))
                    extra = (b"Content-Type: text/html; charset=UTF-8\r\n"
                             b"Link: <http://news.example/wp-json/>; rel=\"https://api.w.org/\"\r\n")
                else:
                    body, extra = b"", b""
                status = b"200 OK" if body else b"404 Not Found"
                writer.write(b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n"
                             % (status, extra, len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, HOST, port, backlog=512)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def origin_count(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/__count", timeout=5) as resp:
        data: dict[str, int] = json.loads(resp.read())
    return data


# --------------------------------------------------------------------------- which worker


def _socket_owners(pids: list[int]) -> dict[int, int]:
    """Socket inode -> the pid (of `pids`) holding it."""
    owners: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owners[int(target[8:-1])] = pid
    return owners


def accepted_by(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """The pid (of `pids`) holding the accepted end of the connection from `client_port`."""
    want_local, want_remote = f":{server_port:04X}", f":{client_port:04X}"
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 9 and parts[1].endswith(want_local) \
                    and parts[2].endswith(want_remote):
                inode = int(parts[9])
                break
    if not inode:
        return None
    return _socket_owners(pids).get(inode)


# --------------------------------------------------------------------------- the readers


@dataclass
class Sample:
    path: str
    conn: int
    started: float
    ms: float
    status: int
    cache: str


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    worker_of: dict[int, int | None] = field(default_factory=dict)   # conn id -> pid
    errors: int = 0
    seconds: float = 0.0


def request_plan(settings: Settings) -> list[str]:
    """The pages asked, in order: rank r in proportion to 1/r (the same for every run)."""
    rng = random.Random(settings.seed)
    weights = [1.0 / r for r in range(1, settings.pages + 1)]
    ranks = rng.choices(range(settings.pages), weights=weights, k=settings.requests)
    # Rank 0 is not page 0: popularity and the page's number are unrelated.
    order = list(range(settings.pages))
    rng.shuffle(order)
    return [f"/post/{order[r]}/" for r in ranks]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if fields.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(fields.get("content-length", "0")))
    return status, fields.get("x-cache", "")


async def readers_load(port: int, plan: list[str], settings: Settings,
                       pids: list[int]) -> LoadResult:
    require_loopback(f"{HOST}:{port}")
    result = LoadResult()
    queue = iter(enumerate(plan))
    conn_ids = iter(range(10**9))
    t0 = time.perf_counter()

    async def reader_visits() -> None:
        while True:
            conn = next(conn_ids)
            reader, writer = await asyncio.open_connection(HOST, port)
            client_port = writer.get_extra_info("sockname")[1]
            try:
                for k in range(settings.visit):
                    item = next(queue, None)
                    if item is None:
                        return
                    i, path = item
                    # Paced: request i leaves at i / rate (later if the edge is behind), so
                    # microcached pages expire at the same points of every run.
                    wait = t0 + i / settings.rate - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    # Every request its own reader: User-Agent and cookies differ each time.
                    req = (f"GET {path} HTTP/1.1\r\nHost: news.example\r\n"
                           f"User-Agent: Mozilla/5.0 (Linux; Android 12; reader-{i}) "
                           f"Chrome/120.0.{i % 5000}.0 Mobile Safari/537.36\r\n"
                           f"Accept: text/html,application/xhtml+xml\r\n"
                           f"Accept-Language: ky-KG,ru;q=0.8,en;q=0.5\r\n"
                           f"Cookie: _ga=GA1.2.{i * 7919 % 99991}.{1700000000 + i}; "
                           f"pll_language=ru\r\n\r\n").encode()
                    started = time.perf_counter()
                    writer.write(req)
                    try:
                        status, cache = await _read_response(reader)
                    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                        result.errors += 1
                        break
                    result.samples.append(Sample(path, conn, started - t0,
                                                 (time.perf_counter() - started) * 1000,
                                                 status, cache))
                    if k == 0:   # accepted by now: which worker holds it
                        result.worker_of[conn] = accepted_by(port, client_port, pids)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    await asyncio.gather(*(reader_visits() for _ in range(settings.connections)))
    result.seconds = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- one arrangement


def _config(shared: bool) -> str:
    return ("defense:\n  enabled: false\n"
            f"cache:\n  share_directory: {'true' if shared else 'false'}\n")


def _cache_gauges(metrics: str) -> dict[str, dict[str, float]]:
    """kalkan_cache_bytes / _objects per worker label ("0" with one worker)."""
    out: dict[str, dict[str, float]] = {}
    for line in metrics.splitlines():
        for name in ("kalkan_cache_bytes", "kalkan_cache_objects"):
            if line.startswith(name + " ") or line.startswith(name + "{"):
                worker = "0"
                if 'worker="' in line:
                    worker = line.split('worker="', 1)[1].split('"', 1)[0]
                out.setdefault(worker, {})[name] = float(line.rsplit(" ", 1)[1])
    return out


def one_run(arrangement: str, origin_port: int, work: Path, stopper: Stopper,
            settings: Settings, plan: list[str]) -> dict[str, Any]:
    workers = 1 if arrangement == "1 worker" else 2
    shared = arrangement.endswith("shared dir")
    before = origin_count(origin_port)
    proxy = start_kalkan(origin_port, work, stopper, "conformance", SERVER_CPU,
                         config=_config(shared), extra_args=["--workers", str(workers)],
                         cpus="0,1" if workers > 1 else None)
    try:
        # The supervisor listens before its workers are up: the port answers (the kernel queues
        # connections) a moment before they exist, so wait for them (a fresh checkout compiles
        # its bytecode at first start, which made that moment long enough to miss them).
        deadline = time.monotonic() + 15.0
        while True:
            tree = process_tree(proxy.proc.pid)
            pids = [p for p in tree if p != proxy.proc.pid] if workers > 1 else [proxy.proc.pid]
            if len(pids) == workers or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if len(pids) != workers:
            raise BenchError(f"{arrangement}: expected {workers} worker process(es), "
                             f"found {pids}")
        load = asyncio.run(readers_load(proxy.port, plan, settings, pids))
        time.sleep(1.5)   # the workers' metrics reach worker 0 once a second
        rss = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss[pid] = int(line.split()[1])
        with urllib.request.urlopen(proxy.extra["metrics_url"], timeout=5) as resp:
            gauges = _cache_gauges(resp.read().decode())
    finally:
        proxy.stop(stopper)
    after = origin_count(origin_port)
    return summarize_run(arrangement, load, pids, rss, gauges,
                         after["requests"] - before["requests"], settings)


def summarize_run(arrangement: str, load: LoadResult, pids: list[int], rss: dict[int, int],
                  gauges: dict[str, dict[str, float]], origin_fetches: int,
                  settings: Settings) -> dict[str, Any]:
    seen: set[tuple[int | None, str]] = set()
    first: list[float] = []
    first_from_origin: list[float] = []
    first_from_sibling: list[float] = []
    hits: list[float] = []
    counts: dict[str, int] = {}
    bad = 0
    for s in sorted(load.samples, key=lambda s: s.started):
        counts[s.cache] = counts.get(s.cache, 0) + 1
        if s.status != 200:
            bad += 1
        where = (load.worker_of.get(s.conn), s.path)
        if where not in seen:
            seen.add(where)
            first.append(s.ms)
            if s.cache == "MISS":
                first_from_origin.append(s.ms)
            elif s.cache == "HIT":   # this worker never had it: a sibling's file
                first_from_sibling.append(s.ms)
        elif s.cache == "HIT":
            hits.append(s.ms)
    n = len(load.samples)
    answered_from_cache = sum(v for k, v in counts.items() if k in ("HIT", "STALE"))
    unattributed = sum(1 for v in load.worker_of.values() if v is None)

    def lat(values: list[float]) -> dict[str, float]:
        return {"p50_ms": round(percentile(values, 50), 3),
                "p99_ms": round(percentile(values, 99), 3), "n": len(values)}

    return {
        "arrangement": arrangement, "workers": len(pids), "requests": n,
        "errors": load.errors, "non_200": bad, "seconds": round(load.seconds, 2),
        "origin_fetches": origin_fetches,
        "hit_ratio": round(answered_from_cache / n, 4) if n else 0.0,
        "x_cache": counts,
        "rss_kib_sum": sum(rss.values()), "rss_kib": list(rss.values()),
        "cache_bytes_sum": sum(g.get("kalkan_cache_bytes", 0) for g in gauges.values()),
        "cache_objects": {w: g.get("kalkan_cache_objects", 0) for w, g in gauges.items()},
        "latency_hit": lat(hits), "latency_first_on_worker": lat(first),
        "latency_first_from_origin": lat(first_from_origin),
        "latency_first_from_sibling_file": lat(first_from_sibling),
        "pages_asked": len({s.path for s in load.samples}),
        "connections_unattributed": unattributed,
    }


def miss_path_costs(files: int) -> dict[str, float]:
    """In one process, what the shared directory adds to a worker's miss: the look-up of a
    URL nobody stored (a cache-busting flood's request) and taking in a sibling's 20 KB file."""
    import tempfile

    from kalkan.edge.shared_dir import SharedDirectory
    from kalkan.edge.store import Entry, Store

    async def measure(directory: str) -> dict[str, float]:
        writer = Store(2**30, directory)
        now = time.time()
        for n in range(files):
            writer.put(Entry(f"http://news.example/post/{n}/", 200,
                             [(b"Content-Type", b"text/html")], _page(n), response_time=now,
                             initial_age=0.0, lifetime=10.0, micro=True))
        writer.flush()
        writer.close()
        reader = Store(2**30, directory)
        shared = SharedDirectory(reader)
        if not shared.start(asyncio.get_running_loop()):
            raise BenchError("no inotify")
        try:
            loops = 100_000
            t = time.perf_counter()
            for n in range(loops):
                shared.find(f"http://news.example/?s={n}", {}, None)
            absent_us = (time.perf_counter() - t) / loops * 1e6
            t = time.perf_counter()
            adopted = sum(shared.find(f"http://news.example/post/{n}/", {}, None) is not None
                          for n in range(files))
            adopt_us = (time.perf_counter() - t) / files * 1e6
        finally:
            shared.close()
            reader.close()
        if adopted != files:
            raise BenchError(f"took in {adopted} of {files} files")
        return {"files": files, "absent_lookup_us": round(absent_us, 2),
                "adopt_20k_file_us": round(adopt_us, 1),
                "index_bytes_per_file": round(
                    (sys.getsizeof(shared.present) + sum(sys.getsizeof(x)
                                                         for x in shared.present)) / files)}

    with tempfile.TemporaryDirectory(dir=WORK_DIR) as directory:
        return asyncio.run(measure(directory))


def _median(runs: list[dict[str, Any]], pick: Any) -> float:
    return percentile([float(pick(r)) for r in runs], 50)


def run(settings: Settings, output_dir: Path) -> Path:
    if cpu_count() < 2:
        raise BenchError("needs 2 usable cores")
    if not Path("/proc/net/tcp").exists():
        raise BenchError("needs Linux's /proc/net/tcp to tell which worker answered")
    report = Report(name="worker_cache", command=command_line(MODULE), machine=machine_info())
    pin_self(LOAD_CPU)
    plan = request_plan(settings)
    runs: list[dict[str, Any]] = []
    with Stopper() as stopper, scratch_dir("worker-cache") as work:
        port = free_port()
        origin = stopper.add(start_process(
            "origin", [*taskset(LOAD_CPU), sys.executable, "-m", MODULE, "--serve-origin",
                       str(port), "--render-ms", str(settings.render_ms)],
            work / "origin", cwd=Path(__file__).resolve().parent.parent))
        wait_for_port(HOST, port, timeout=30, proc=origin)
        for rep in range(settings.repetitions):
            for arrangement in ARRANGEMENTS:
                log(f"{arrangement}, repetition {rep + 1}/{settings.repetitions}")
                sample = one_run(arrangement, port, work / f"{rep}-{len(runs)}", stopper,
                                 settings, plan)
                sample["repetition"] = rep + 1
                runs.append(sample)
                log(f"  origin fetches {sample['origin_fetches']}, hit ratio "
                    f"{sample['hit_ratio']:.3f}, RSS {sample['rss_kib_sum'] / 1024:.0f} MiB")
    cells = {}
    for a in ARRANGEMENTS:
        mine = [r for r in runs if r["arrangement"] == a]
        cells[a] = {
            "origin_fetches": _median(mine, lambda r: r["origin_fetches"]),
            "hit_ratio": _median(mine, lambda r: r["hit_ratio"]),
            "rss_mib": _median(mine, lambda r: r["rss_kib_sum"] / 1024),
            "cache_mib": _median(mine, lambda r: r["cache_bytes_sum"] / 2**20),
            "hit_p50": _median(mine, lambda r: r["latency_hit"]["p50_ms"]),
            "hit_p99": _median(mine, lambda r: r["latency_hit"]["p99_ms"]),
            "first_p50": _median(mine, lambda r: r["latency_first_on_worker"]["p50_ms"]),
            "first_p99": _median(mine, lambda r: r["latency_first_on_worker"]["p99_ms"]),
            "sibling_p50": _median(mine, lambda r: r["latency_first_from_sibling_file"]["p50_ms"]),
            "sibling_p99": _median(mine, lambda r: r["latency_first_from_sibling_file"]["p99_ms"]),
            "clean": all(r["errors"] == 0 and r["non_200"] == 0 for r in mine),
        }
    costs = miss_path_costs(settings.pages)
    report.data = {"settings": vars(settings), "cells": cells, "miss_path_costs": costs,
                   "runs": runs}
    rows = [[a, f"{c['origin_fetches']:,.0f}", f"{c['hit_ratio']:.3f}",
             f"{c['rss_mib']:.0f}", f"{c['cache_mib']:.0f}",
             f"{c['hit_p50']:.2f} / {c['hit_p99']:.2f}",
             f"{c['first_p50']:.2f} / {c['first_p99']:.2f}",
             "yes" if c["clean"] else "**no**"] for a, c in cells.items()]
    own, shared = cells["2 workers, own memory"], cells["2 workers, shared dir"]
    fewer = own["origin_fetches"] / max(shared["origin_fetches"], 1)
    report.sections = [
        "## The cache with two workers", "",
        markdown_table(["arrangement", "origin fetches", "hit ratio", "RSS, all workers (MiB)",
                        "cache bytes, all workers (MiB)", "hit p50 / p99 (ms)",
                        "first request of a page on a worker p50 / p99 (ms)", "clean"], rows),
        "",
        f"Two workers reading each other's files: **{fewer:.2f}x**"
        f" fewer origin fetches than with each worker's own memory "
        f"({own['origin_fetches']:,.0f} -> {shared['origin_fetches']:,.0f}; one worker: "
        f"{cells['1 worker']['origin_fetches']:,.0f}).", "",
        f"The first request of a page on a worker served from a sibling's file: "
        f"{shared['sibling_p50']:.2f} / {shared['sibling_p99']:.2f} ms (p50 / p99), where it "
        f"was an origin fetch before.", "",
        "## What it costs on a miss (one process, measured in place)", "",
        f"- a URL nobody stored (a cache-busting flood): **{costs['absent_lookup_us']:.2f} µs** "
        f"(a SHA-256 of the key and a set look-up; no disk access);",
        f"- taking in a sibling's 20 KB file (read, checksum, checks, into memory): "
        f"**{costs['adopt_20k_file_us']:.0f} µs**, once per file a sibling writes;",
        f"- the index of the directory's names: ~{costs['index_bytes_per_file']} bytes per "
        f"file ({costs['files']:,} files indexed).", "",
        f"{settings.requests:,} requests for {settings.pages:,} pages of 20 KB (page of rank r "
        f"asked in proportion to 1/r, the same seeded sequence for every run), "
        f"paced at {settings.rate:,.0f} a second (achieved: "
        f"{min(r['requests'] / r['seconds'] for r in runs):,.0f} - "
        f"{max(r['requests'] / r['seconds'] for r in runs):,.0f}), "
        f"{settings.connections} connections, each reconnecting after {settings.visit} requests; "
        f"every request its own User-Agent and cookies. The origin: WordPress-like (no cache "
        f"headers: microcached for 10 s), {settings.render_ms:.0f} ms per page. Hit ratio: "
        f"answers that did not wait for the origin (X-Cache HIT or STALE). Latency as the load "
        f"generator (Python, asyncio, core {LOAD_CPU}) sees it; 'first request of a page on a "
        f"worker' is the first answer for that page from the worker holding the connection "
        f"(found in the kernel's socket table). One worker: Kalkan pinned to core {SERVER_CPU}; "
        f"two: Kalkan on cores 0,1 with the load and the origin on core 0. Medians of "
        f"{settings.repetitions} repetition(s), interleaved; every run in the JSON.",
    ]
    json_path, md_path = report.write("The cache with several workers", output_dir)
    log(f"wrote {json_path} and {md_path}")
    return md_path


def quick_settings() -> Settings:
    return Settings(pages=200, requests=1_500, rate=1_000.0, connections=8, repetitions=1,
                    quick=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="200 pages, 1,500 requests at 1,000/s, once")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--serve-origin", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--render-ms", type=float, default=Settings.render_ms,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_origin is not None:
        serve_origin(args.serve_origin, args.render_ms)
        return 0
    output = args.output_dir or (WORK_DIR / "quick-results" if args.quick else RESULTS_DIR)
    settings = quick_settings() if args.quick else Settings()
    return guarded(MODULE, lambda: run(settings, output))


if __name__ == "__main__":
    sys.exit(main())
