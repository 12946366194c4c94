"""The fixed-rate (open-loop) load client: latency at a given offered rate, corrected for
coordinated omission.

wrk is a closed loop: each connection sends its next request when the last answer arrives, so
at saturation the latencies it records are mostly queueing (its own included, when its core is
the busier one), and a stall hides the requests that would have been sent during it. The
client in ``bench/fixed_rate.c`` sends request k at start + k/rate whatever the server does, and
counts each latency from that scheduled time (see the C file's header for the schedule).

This module owns:
  * building the C client with gcc into ``bench/.work/bin/`` (gitignored) on first use; the file
    name carries a hash of the source and flags, so an edited source is rebuilt;
  * the request file it reads: readers-load heads from :mod:`bench.readers_pool`;
  * :func:`run_fixed_rate`, which runs it pinned to the load core under a time limit and adds how
    busy each core was, like ``bench.throughput.run_wrk``.

Ad hoc (loopback only)::

    .venv/bin/python -m bench.fixed_rate http://127.0.0.1:8080/bench/20k --rate 20000 \\
        --duration 5 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    LOAD_CPU,
    SERVER_CPU,
    WORK_DIR,
    BenchError,
    children_cpu_seconds,
    cpu_busy_pct,
    cpu_times,
    guarded,
    require_loopback,
    taskset,
    tree_cpu_seconds,
)
from bench.readers_pool import POOL_SIZE, write_pool

SOURCE = BENCH_DIR / "fixed_rate.c"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-std=gnu11")
BIN_DIR = WORK_DIR / "bin"
MAX_DURATION_S = 120.0
"""The C client refuses longer runs (and warm-ups over 60 s)."""
LATE_MS = 1.0
"""A request that goes out more than this after its scheduled time counts as sent late."""
ANSWER_TIMEOUT_S = 10.0
"""An answer not complete after this long is an error (the connection is reopened)."""


def binary() -> Path:
    """The compiled client, built first if this source (and these flags) have not been."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:12]
    exe = BIN_DIR / f"fixed_rate-{digest}"
    if exe.exists():
        return exe
    if shutil.which("gcc") is None:
        raise BenchError("gcc is missing: the fixed-rate client (bench/fixed_rate.c) is built "
                         "with it; install it (`sudo apt-get install gcc`) or pass "
                         "--no-fixed-rate")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    partial = exe.with_name(f"{exe.name}.{os.getpid()}.tmp")
    try:
        done = subprocess.run(["gcc", *CFLAGS, "-o", str(partial), str(SOURCE), "-lm"],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BenchError(f"gcc could not build {SOURCE}:\n{done.stderr.strip()}")
        os.replace(partial, exe)  # atomic: a concurrent run never sees half a binary
    finally:
        partial.unlink(missing_ok=True)
    for old in BIN_DIR.glob("fixed_rate-*"):  # builds of earlier versions of the source
        if old != exe and not old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)
    return exe


def clean(result: dict[str, Any]) -> bool:
    """Every scheduled request was sent and answered with a 2xx, without errors."""
    return bool(result["errors_total"] == 0 and result["non_2xx"] == 0
                and result["scheduled"] == result["sent"] == result["responses"])


def run_fixed_rate(url: str, rate: float | None, duration_s: float, connections: int, *,
                   warmup_s: float = 0.0, proxy_pid: int | None = None,
                   cpus: int | str | None = LOAD_CPU, pool_size: int = POOL_SIZE,
                   requests_file: Path | None = None, late_ms: float = LATE_MS,
                   answer_timeout_s: float = ANSWER_TIMEOUT_S,
                   latencies_file: Path | None = None) -> dict[str, Any]:
    """Offer *rate* requests/s of the readers load to *url* for *warmup_s* (not recorded) plus
    *duration_s* seconds over *connections* keep-alive connections; returns the client's JSON
    (see bench/fixed_rate.c) plus ``command`` and ``cpu_busy_pct``. *rate* None runs the client
    as a closed loop (``--closed``: each connection sends again when its answer is in), which
    measures capacity: its ``achieved_rate`` is the answers completed per measured second.

    The client runs pinned to *cpus* (``taskset``) and is killed if it outlives its schedule
    by more than the answer timeout plus 30 s. *requests_file* overrides the readers heads
    (a file of GET heads, each with the ``#########`` placeholder once). With *latencies_file*
    every measured answer is also written there (see :func:`read_latencies`). *proxy_pid*'s process
    tree is charged its CPU, as in ``run_wrk``: ``cpu_busy_pct`` has ``proxy_core`` and
    ``load_core`` (how busy each core was) and ``proxy_own`` and ``client_own`` (how much of a
    core the server and this client used).
    """
    require_loopback(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise BenchError(f"the fixed-rate client speaks plain http:// only, not {url!r}")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise BenchError(f"fixed-rate duration {duration_s} s: must be in (0, 120]")
    exe = binary()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fixed-rate-", dir=WORK_DIR) as scratch:
        requests = requests_file or write_pool(Path(scratch) / "requests.http", path,
                                               parts.netloc, pool_size)
        argv = [*taskset(cpus), str(exe), "--host", host, "--port", str(port),
                "--requests", str(requests),
                *(["--closed"] if rate is None else ["--rate", f"{rate:g}"]),
                "--duration", f"{duration_s:g}", "--connections", str(connections),
                "--warmup", f"{warmup_s:g}", "--timeout", f"{answer_timeout_s:g}",
                "--late-ms", f"{late_ms:g}"]
        if latencies_file is not None:
            argv += ["--latencies", str(latencies_file)]
        before, client_before = cpu_times(), children_cpu_seconds()
        proxy_before = tree_cpu_seconds(proxy_pid) if proxy_pid else 0.0
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=warmup_s + duration_s + answer_timeout_s + 30)
        except subprocess.TimeoutExpired as err:
            raise BenchError(f"the fixed-rate client did not finish in time: {err}") from None
        wall = time.monotonic() - started
        proxy_cpu = tree_cpu_seconds(proxy_pid) - proxy_before if proxy_pid else float("nan")
        client_cpu = children_cpu_seconds() - client_before
        busy = cpu_busy_pct(before, cpu_times())
    if done.returncode != 0:
        raise BenchError(f"the fixed-rate client failed ({done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()}")
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise BenchError(f"cannot read the fixed-rate client's output ({err}):\n"
                         f"{done.stdout[-2000:]}") from None
    shown = argv.copy()
    if requests_file is None:  # the pool file is gone: name what it was
        shown[shown.index("--requests") + 1] = f"<{pool_size} readers heads>"
    result["command"] = shlex.join(shown)
    result["cpu_busy_pct"] = {
        "proxy_core": busy.get(SERVER_CPU, float("nan")),
        "load_core": busy.get(LOAD_CPU, float("nan")),
        "proxy_own": 100.0 * proxy_cpu / wall,
        "client_own": 100.0 * client_cpu / wall,
    }
    return result


def read_latencies(path: Path) -> tuple[Any, Any]:
    """A ``--latencies`` file as two numpy arrays: each measured request's number (counted
    from the first measured one; due at number / rate after the measured schedule began) and
    its latency in milliseconds, in the order the answers came."""
    import numpy as np  # only the tail-latency bench reads these files

    records = np.fromfile(path, dtype=np.dtype([("k", "<u4"), ("us", "<f4")]))
    return records["k"].astype(np.int64), records["us"].astype(np.float64) / 1000.0


def main(argv: list[str] | None = None) -> int:
    """One run from the command line; the JSON goes to stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.fixed_rate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="http://127.0.0.1:PORT/PATH (loopback only)")
    pace = parser.add_mutually_exclusive_group(required=True)
    pace.add_argument("--rate", type=float, help="requests per second")
    pace.add_argument("--closed", action="store_true",
                      help="closed loop: each connection sends again when its answer is in")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds first (1)")
    parser.add_argument("--connections", type=int, default=64, help="connections (64)")
    parser.add_argument("--no-pin", action="store_true",
                        help=f"do not pin the client to core {LOAD_CPU}")
    args = parser.parse_args(argv)

    def body() -> None:
        result = run_fixed_rate(args.url, args.rate, args.duration, args.connections,
                                warmup_s=args.warmup, cpus=None if args.no_pin else LOAD_CPU)
        print(json.dumps(result, indent=2))

    with contextlib.suppress(BrokenPipeError):
        return guarded("bench.fixed_rate", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
