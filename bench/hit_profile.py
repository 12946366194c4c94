"""Where a cache hit's time goes: py-spy samples Kalkan (pinned to core 1) while wrk (core 0)
asks for the cached 20 KB page, with identical requests and with a distinct User-Agent per
request (which defeats the replay memo, as real readers' varied headers do).

Run from the project root::

    .venv/bin/python -m bench.hit_profile      # results in bench/results/hit_profile.*
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    LOAD_CPU,
    ROOT,
    SERVER_CPU,
    BenchError,
    Report,
    Stopper,
    command_line,
    log,
    machine_info,
    markdown_table,
    scratch_dir,
    wait_until_quiet,
)
from bench.peers import HOST, start_origin, start_proxy
from bench.throughput import BENCH_PATH, run_wrk

MODULE = "bench.hit_profile"
PY_SPY = Path(sys.executable).with_name("py-spy")
VARIED = 'request = function() return wrk.format(nil, nil, {["User-Agent"] = "r" .. ' \
         'math.random(1, 1000000000)}) end\n'
# Leaf frames, grouped into the few places a hit spends its time (matched on the source line
# py-spy names, so a rename in src/ cannot silently move time between groups).
GROUPS = (
    ("send syscall (transport.write, incl. loopback TCP delivery to wrk)", ("transport.write(",)),
    ("event loop: epoll, recv, callback dispatch (uvloop, C)", ("Runner.run",)),
    ("access log", ("access_log", "AccessLog", "_js(")),
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+):(?P<line>\d+)\)$")


def _source_line(frame: str) -> str:
    """The text of the line a py-spy frame points at, with the function name in front."""
    m = _FRAME.match(frame)
    if m is None:
        return frame
    path = Path(m["file"])
    for base in (ROOT / "src", Path(sys.prefix) / "lib"):
        candidate = base / path
        if candidate.exists():
            lines = candidate.read_text(errors="replace").splitlines()
            n = int(m["line"])
            return f"{m['func']}: {lines[n - 1].strip() if 0 < n <= len(lines) else ''}"
    return m["func"]


def profile(pid: int, seconds: int, out: Path) -> None:
    """Sample process *pid* for *seconds* with py-spy into *out* (raw format)."""
    subprocess.run([str(PY_SPY), "record", "-p", str(pid), "-d", str(seconds), "-r", "400",
                    "-f", "raw", "-o", str(out), "--nonblocking"],
                   capture_output=True, text=True, timeout=seconds + 60, check=False)


def read_profile(out: Path) -> Counter[str]:
    """Leaf-frame sample counts from a py-spy raw file."""
    if not out.exists():
        raise BenchError("py-spy wrote no profile (is ptrace allowed here?)")
    leaves: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        leaves[stack.split(";")[-1]] += int(n)
    return leaves


def grouped(leaves: Counter[str]) -> dict[str, float]:
    total = sum(leaves.values()) or 1
    shares: dict[str, float] = {name: 0.0 for name, _ in GROUPS}
    shares["the rest of Kalkan's Python (parsing, lookup, defence, metrics)"] = 0.0
    for frame, n in leaves.items():
        text = _source_line(frame)
        for name, needles in GROUPS:
            if any(needle in text for needle in needles):
                shares[name] += n
                break
        else:
            shares["the rest of Kalkan's Python (parsing, lookup, defence, metrics)"] += n
    return {k: 100.0 * v / total for k, v in shares.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args(argv)
    if not PY_SPY.exists():
        raise BenchError("py-spy is not installed in .venv (pip install py-spy)")
    results: dict[str, Any] = {}
    with Stopper() as stopper, scratch_dir("hit-profile") as work:
        origin = start_origin(work / "origin", stopper, False, LOAD_CPU)
        proxy = start_proxy("kalkan", origin.port, work / "kalkan", stopper, "throughput",
                            SERVER_CPU)
        url = f"http://{HOST}:{proxy.port}{BENCH_PATH}"
        run_wrk(url, 1, 8)
        lua = work / "varied.lua"
        lua.write_text(VARIED)
        for name, extra in (("identical requests", []), ("varied User-Agent", ["-s", str(lua)])):
            wait_until_quiet([SERVER_CPU])
            raw = work / f"{len(results)}.raw"
            t = threading.Thread(target=profile, args=(proxy.proc.pid, args.seconds, raw))
            t.start()  # py-spy samples while wrk runs (wrk outlasts it by 2 s)
            wrk = run_wrk(url, args.seconds + 2, 64, proxy.proc.pid, extra)
            t.join()
            leaves = read_profile(raw)
            results[name] = {"requests_per_s": wrk.requests_per_s, "shares": grouped(leaves),
                             "top_frames": [(_source_line(f), n) for f, n in
                                           leaves.most_common(15)],
                             "samples": sum(leaves.values())}
            log(f"{name}: {wrk.requests_per_s:,.0f} req/s")
    report = Report("hit_profile", command_line(MODULE, argv), machine_info(), data=results)
    for name, r in results.items():
        rows = [[k, f"{v:.1f}%"] for k, v in sorted(r["shares"].items(), key=lambda x: -x[1])]
        report.sections += [f"## {name}: {r['requests_per_s']:,.0f} req/s", "",
                            markdown_table(["where Kalkan's core time goes", "share"], rows), "",
                            "Top leaf frames (samples):", "",
                            markdown_table(["frame", "samples"],
                                           [[f"`{f}`", n] for f, n in r["top_frames"]]), ""]
    report.write("Where a cache hit's time goes (py-spy on the pinned Kalkan process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
