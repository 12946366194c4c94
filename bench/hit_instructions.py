"""CPU instructions per cache hit on the readers load, counted under valgrind: repeatable where
wall-clock figures on a shared machine are not, so a change to the hot path can be judged by it.

Run from the project root::

    .venv/bin/python -m bench.hit_instructions     # results in bench/results/hit_instructions.*

Each case runs in a child process under ``valgrind --tool=callgrind``: real request bytes (every
request its own User-Agent and cookie, as `bench/wrk/readers.lua` sends) are fed to real
`HttpConnection`s (64 of them, with a transport that only counts bytes) in front of a cached
20 KB page; no sockets, so no kernel work is counted. The cost per request is the difference
between a run of LONG and a run of SHORT requests divided by their difference (start-up and
imports cancel out), less what making the request bytes costs (measured the same way). Beside
Kalkan: the ceiling, a bare httptools parser that keeps the fields and writes a fixed answer.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    BenchError,
    Report,
    command_line,
    guarded,
    log,
    machine_info,
    markdown_table,
)

MODULE = "bench.hit_instructions"
SHORT, LONG = 2_000, 12_000
CASES: dict[str, str] = {
    "kalkan": "Kalkan, access log on (the readers-load hit as served)",
    "kalkan-nolog": "Kalkan, access log off",
    "bare": "ceiling: bare httptools parser, fields kept, fixed answer written",
    "xff-off": "Kalkan, access log on, 100,000 clients (trusted X-Forwarded-For), defence off",
    "xff-on": "Kalkan, access log on, 100,000 clients (trusted X-Forwarded-For), defence on",
}
CLIENTS = 100_000   # the xff cases: distinct forwarded addresses, all seen once before counting
# The edge's once-a-second work (metrics, the defence's threat level: it scores up to 512
# clients) runs every this many requests: about a second of this load on one core.
TICK_EVERY = 25_000
# ... and once after the first SETTLE requests: what the edge adapts within its first second (the
# replay memo's sampling) is in place when counting starts (SHORT runs past it, so it cancels out).
SETTLE = 1_000

# The child: `python -m bench.hit_instructions --child CASE N`.
_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.{}.{} Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.{} Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.{}.{}",
)


def readers_requests(n: int, xff: bool = False, start: int = 0) -> list[bytes]:
    """`n` requests for /bench/20k, each with its own User-Agent and cookie; with `xff`, each
    also with an X-Forwarded-For address, cycling through CLIENTS of them (in 100.64.0.0/10)
    from the `start`th request on, and each client keeps its User-Agent (a reader's browser
    does: a client whose agent changed at every request would look like one address shared
    by many browsers, or a bot rotating agents)."""
    out = []
    for i in range(start, start + n):
        u = i % CLIENTS if xff else i
        ua = _UAS[u % 3].format(u % 9000, u // 7 % 300)
        fwd = ""
        if xff:
            a = 100 * 2**24 + 64 * 2**16 + (i % CLIENTS) * 37 % 2**22
            fwd = f"X-Forwarded-For: {a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}\r\n"
        out.append((
            f"GET /bench/20k HTTP/1.1\r\nHost: news.example\r\nUser-Agent: {ua}\r\n{fwd}"
            "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
            "Accept-Language: ru-RU,ru;q=0.9,en;q=0.8\r\nAccept-Encoding: gzip, deflate, br\r\n"
            f"Cookie: _ga=GA1.2.{i * 7919}.{i * 104729}; theme=dark\r\n"
            "Sec-Fetch-Mode: navigate\r\nConnection: keep-alive\r\n\r\n").encode())
    return out


class _CountingTransport:
    """What HttpConnection writes to, counted and dropped."""

    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += len(data)

    def writelines(self, buffers: Any) -> None:
        for b in buffers:
            self.sent += len(b)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_closing(self) -> bool: return False
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def can_write_eof(self) -> bool: return True
    def write_eof(self) -> None: ...
    def set_protocol(self, protocol: Any) -> None: ...


def _child_kalkan(n: int, log_on: bool, xff: bool = False, defense: bool = False) -> None:
    import asyncio
    import tempfile
    import time

    import uvloop

    from kalkan.config import Config
    from kalkan.edge.connection import HttpConnection
    from kalkan.edge.pipeline import Pipeline
    from kalkan.edge.server import EdgeServer
    from kalkan.edge.store import Entry

    async def main() -> None:
        tmp = tempfile.mkdtemp(prefix="kalkan-hit-")
        cfg = Config()
        cfg.state_dir = tmp
        cfg.cache.dir = None
        cfg.access_log.path = f"{tmp}/access.log" if log_on else None
        cfg.defense.enabled = defense
        if xff:
            cfg.client_address.trusted_proxies = ["127.0.0.1/32"]
        pipe = Pipeline(cfg)
        server = EdgeServer(cfg, pipe)
        pipe.store.put(Entry("GET http://news.example/bench/20k", 200,
                             [(b"Content-Type", b"text/html"),
                              (b"Cache-Control", b"public, max-age=3600"),
                              (b"Content-Length", b"20480")], b"x" * 20480,
                             response_time=time.time(), initial_age=0, lifetime=1e9))
        conns = []
        for _ in range(64):
            c = HttpConnection(server)
            c.connection_made(_CountingTransport())  # type: ignore[arg-type]
            conns.append(c)
        warm = readers_requests(CLIENTS, True) if xff else []
        for i, data in enumerate([*warm, *readers_requests(n, xff, len(warm))]):
            conns[i % 64].data_received(data)
            if i % TICK_EVERY == 0:
                server.clock.tick()
                pipe.tick()
            if i == SETTLE:
                pipe.replays.tick()  # (pipe.tick: only once a second has passed)
        shutil.rmtree(tmp, ignore_errors=True)

    uvloop.install()
    asyncio.run(main())


def _child_bare(n: int) -> None:
    import httptools

    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 20480\r\n\r\n" + b"x" * 20480

    class Bare:
        def __init__(self) -> None:
            self.transport = _CountingTransport()
            self.parser = httptools.HttpRequestParser(self)
            self.fields: list[tuple[bytes, bytes]] = []
            self.url = b""

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.fields.append((name, value))

        def on_message_complete(self) -> None:
            self.transport.write(answer)
            self.fields = []

    conns = [Bare() for _ in range(64)]
    for i, data in enumerate(readers_requests(n)):
        conns[i % 64].parser.feed_data(data)


def child(case: str, n: int) -> None:
    if case == "requests":
        readers_requests(n)  # what every case spends making its input, subtracted
    elif case == "requests-xff":
        readers_requests(n, True)
    elif case == "bare":
        _child_bare(n)
    elif case.startswith("xff-"):
        _child_kalkan(n, log_on=True, xff=True, defense=case == "xff-on")
    else:
        _child_kalkan(n, log_on=case == "kalkan")


# -- the parent ----------------------------------------------------------------------------------
def instructions(case: str, n: int) -> int:
    """Instructions a child running `n` requests of `case` executed, whole process."""
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, "-m", MODULE, "--child", case, str(n)]
    # A fixed hash seed: with a random one, where dictionaries' keys collide differs from run
    # to run, and the same code measured up to 5% apart.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False,
                          env=env)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise BenchError(f"valgrind run of {case} failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-400:]}")
    return int(found.group(1))


def per_request(case: str) -> tuple[int, int, float]:
    log(f"{case}: {SHORT:,} and {LONG:,} requests under valgrind (both at once)")
    with ThreadPoolExecutor(2) as pool:
        short_run, long_run = pool.submit(instructions, case, SHORT), \
            pool.submit(instructions, case, LONG)
        short, long = short_run.result(), long_run.result()
    return short, long, (long - short) / (LONG - SHORT)


def measure(cases: list[str]) -> dict[str, Any]:
    *_, making = per_request("requests")
    *_, making_xff = per_request("requests-xff")
    log(f"  making the request bytes: {making:,.0f} instructions per request, "
        f"{making_xff:,.0f} with X-Forwarded-For (subtracted)")
    results: dict[str, Any] = {"making_requests": round(making),
                               "making_requests_xff": round(making_xff)}
    for case in cases:
        short, long, per = per_request(case)
        cost = per - (making_xff if case.startswith("xff-") else making)
        results[case] = {"description": CASES[case], "instructions_short": short,
                         "instructions_long": long, "instructions_per_request": round(cost)}
        log(f"  {cost:,.0f} instructions per request")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0

    def body() -> None:
        if shutil.which("valgrind") is None:
            raise BenchError("valgrind is not installed (scripts/install-debian-deps.sh)")
        results = measure(list(CASES))
        report = Report(MODULE.split(".")[1], command_line(MODULE, argv), machine_info())
        report.data["cases"] = results
        rows = [[name, results[name]["description"],
                 f"{results[name]['instructions_per_request']:,}"] for name in CASES]
        ratio = results["kalkan"]["instructions_per_request"] / \
            results["bare"]["instructions_per_request"]
        report.sections += [
            "CPU instructions per request (valgrind callgrind), readers load (every request its "
            "own User-Agent and cookie), cached 20 KB page, in-process: no sockets, no kernel. "
            f"Making the request bytes ({results['making_requests']:,} per request) is "
            "subtracted.",
            "",
            markdown_table(["case", "what", "instructions / request"], rows),
            "",
            f"Kalkan with its access log: {ratio:.1f}x the bare parser's instructions.",
            "",
            f"The defence at {CLIENTS:,} clients (every request forwarded from one of them, each "
            "seen before): defence off / defence on = "
            f"{results['xff-off']['instructions_per_request'] / results['xff-on']['instructions_per_request']:.2f} "  # noqa: E501
            "(the instruction-count counterpart of bench.defense_scale's throughput ratio; "
            "no kernel work, no cache misses counted).",
        ]
        json_path, md_path = report.write("Instructions per cache hit (readers load)",
                                          args.output_dir)
        log(f"wrote {json_path} and {md_path}")

    return guarded(MODULE, body)


if __name__ == "__main__":
    sys.exit(main())
