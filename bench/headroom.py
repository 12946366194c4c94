"""Origin headroom under attack: how busy the origin is kept, with and without the budget.

A slow origin (workers that each take 40 ms a page, as a small WordPress does; pages sent
without freshness, so Kalkan microcaches them, for 1 s here so that they go stale often) sits
behind Kalkan in attack mode (the operator's override, level 2). Readers read a Zipf mix of
stored pages (they are served stale copies and ask for refreshes), and readers with a pass keep
asking for pages nobody fetched yet (misses). The same load runs with `origin.headroom` 1.0
(misses and refreshes may take every slot, as before issue 9; refreshes that find none are still
deferred, hottest first) and at its default 0.7. Measured: the origin's busy share
(busy workers / workers, sampled every 10 ms), the most cache requests the origin worked on at
once, what readers got and how fast, and what happened to the refreshes.

Everything runs in this one process on loopback (origin, edge, clients on one event loop): it
measures how the edge shares out the origin, not how fast the edge is.

    .venv/bin/python -m bench.headroom            # results in bench/results/headroom.*
    .venv/bin/python -m bench.headroom --quick    # 4 s per variant, the table only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    Report,
    command_line,
    guarded,
    log,
    machine_info,
    markdown_table,
    percentile,
    require_loopback,
)
from kalkan.config import Config
from kalkan.edge.app import Edge

WORKERS = 10          # the origin's workers = origin.max_concurrency
WORK = 0.040          # seconds of a worker per page
PAGES = 100           # stored pages the readers read (Zipf)
READERS = 40
MISSERS = 12          # readers with a pass reading pages not stored yet


@dataclass
class Origin:
    """An origin with a fixed number of workers; counts what it works on."""

    workers: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(WORKERS))
    busy: int = 0
    gets: int = 0
    max_gets: int = 0
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, require_loopback("127.0.0.1"), 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # (CancelledError too: connections still open when the run ends are cancelled.)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError,
                                 asyncio.CancelledError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                self.gets += 1
                self.max_gets = max(self.max_gets, self.gets)
                try:
                    async with self.workers:
                        self.busy += 1
                        try:
                            await asyncio.sleep(WORK)
                        finally:
                            self.busy -= 1
                finally:
                    self.gets -= 1
                body = b"<html><body>page %s</body></html>" % path
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()


async def get(port: int, path: str, conn: list[Any]) -> tuple[int, str, float]:
    """GET on a kept-alive connection (`conn` holds it): status, X-Cache and seconds."""
    t0 = time.monotonic()
    if not conn:
        conn.extend(await asyncio.open_connection("127.0.0.1", port))
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: news.example\r\n"
                 "User-Agent: Mozilla/5.0 bench\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, cache = 0, ""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        elif name.lower() == b"x-cache":
            cache = value.strip().decode()
        elif name.lower() == b"connection" and value.strip().lower() == b"close":
            conn.clear()
    await reader.readexactly(length)
    if not conn:
        writer.close()
    return status, cache, time.monotonic() - t0


async def run_variant(headroom: float, duration: float, state: str) -> dict[str, Any]:
    origin = Origin()
    await origin.start()
    config = Config()
    config.listen = ["127.0.0.1:0"]
    config.admin.listen = "127.0.0.1:0"
    config.access_log.path = None
    config.state_dir = state
    config.cache.dir = None
    config.cache.microcache_ttl = 1.0
    config.origin.url = f"http://127.0.0.1:{origin.port}"
    config.origin.max_concurrency = WORKERS
    config.origin.headroom = headroom
    config.defense.allow = ["127.0.0.0/8"]   # the load's clients: let through, not challenged
    config.limits.max_connections = 4096
    edge = Edge(config)
    await edge.start()
    port = edge.addresses[0][1]
    try:
        for i in range(PAGES):
            await get(port, f"/page/{i}", [])
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.admin_address[1])
        writer.write(f"POST /attack-mode?mode=on HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     f"{edge.admin_token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                     .encode())
        answer = await reader.read()
        writer.close()
        if b" 200 " not in answer.split(b"\r\n", 1)[0] + b" ":
            raise RuntimeError(f"attack mode not switched on: {answer[:200]!r}")
        await asyncio.sleep(1.1)   # every stored page is stale now
        results: dict[str, list[tuple[int, str, float]]] = {"reads": [], "misses": []}
        busy: list[float] = []
        end = time.monotonic() + duration
        weights = [1 / (rank + 1) for rank in range(PAGES)]
        rng = random.Random(9)
        fresh = iter(range(10**9))

        async def reader_loop() -> None:
            conn: list[Any] = []
            while time.monotonic() < end:
                page = rng.choices(range(PAGES), weights)[0]
                results["reads"].append(await get(port, f"/page/{page}", conn))
                await asyncio.sleep(0.01)

        async def misser_loop() -> None:
            conn: list[Any] = []
            while time.monotonic() < end:
                results["misses"].append(await get(port, f"/new/{next(fresh)}", conn))

        async def sampler() -> None:
            while time.monotonic() < end:
                busy.append(origin.busy / WORKERS)
                await asyncio.sleep(0.01)

        origin.max_gets = 0
        edge.pipeline.upstream.gate.max_cache = 0
        await asyncio.gather(*(reader_loop() for _ in range(READERS)),
                             *(misser_loop() for _ in range(MISSERS)), sampler())
        gate = edge.pipeline.upstream.gate
        return {
            "headroom": headroom,
            "origin_busy_mean": sum(busy) / len(busy),
            "origin_busy_p95": percentile(busy, 95),
            "origin_busy_over_70pct_share": sum(b > 0.7 for b in busy) / len(busy),
            "origin_max_cache_requests": origin.max_gets,
            "gate_max_cache": gate.max_cache,
            "reads": summary(results["reads"]),
            "misses": summary(results["misses"]),
            "refreshes": dict(edge.pipeline.upstream.refreshes),
            "stale_served": dict(edge.pipeline.metrics.stale_served),
        }
    finally:
        await edge.stop()
        assert origin.server is not None
        origin.server.close()


def summary(done: list[tuple[int, str, float]]) -> dict[str, Any]:
    ms = [t * 1000 for _, _, t in done]
    by_cache: dict[str, int] = {}
    by_status: dict[str, int] = {}
    for status, cache, _ in done:
        by_cache[cache] = by_cache.get(cache, 0) + 1
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    return {"count": len(done), "p50_ms": percentile(ms, 50) if ms else 0.0,
            "p99_ms": percentile(ms, 99) if ms else 0.0, "by_cache": by_cache,
            "by_status": by_status}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.headroom", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per variant (20; 4 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run that prints the table and writes nothing")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else 4.0 if args.quick else 20.0

    def body() -> None:
        variants = []
        for headroom in (1.0, 0.7):
            log(f"headroom {headroom}: {duration:g} s under attack")
            with tempfile.TemporaryDirectory(prefix="kalkan-headroom-") as state:
                variants.append(asyncio.run(run_variant(headroom, duration, state)))
        rows = [[v["headroom"], f"{v['origin_busy_mean']:.0%}", f"{v['origin_busy_p95']:.0%}",
                 f"{v['origin_busy_over_70pct_share']:.0%}", v["origin_max_cache_requests"],
                 v["reads"]["count"], f"{v['reads']['p99_ms']:.1f}",
                 v["misses"]["by_status"].get("200", 0),
                 v["misses"]["by_status"].get("503", 0), f"{v['misses']['p50_ms']:.0f}",
                 v["refreshes"]["started"], v["refreshes"]["deferred"],
                 v["refreshes"]["dropped"]] for v in variants]
        table = markdown_table(
            ["headroom", "origin busy (mean)", "busy p95", "time over 70%",
             "most cache requests at origin", "stale reads", "read p99 ms", "misses 200",
             "misses 503", "miss p50 ms", "refreshes started", "deferred", "dropped"], rows)
        print(table)
        if args.quick:
            return
        report = Report("headroom", command_line("bench.headroom", argv), machine_info())
        report.data["variants"] = variants
        report.sections += [
            f"{WORKERS} origin workers ({WORK * 1000:.0f} ms a page) = `origin.max_concurrency`;"
            f" {READERS} readers of {PAGES} stale pages (Zipf), {MISSERS} readers with a pass "
            f"asking for new pages; attack mode on; {duration:g} s per variant; one process.",
            "", table, "", "```json", json.dumps(variants, indent=2), "```"]
        json_path, md_path = report.write("Origin headroom under attack")
        log(f"wrote {json_path} and {md_path}")

    return guarded("bench.headroom", body)


if __name__ == "__main__":
    sys.exit(main())
