"""How fast `kalkan analyze` reads access logs: lines per second end to end (the command as a user
runs it, Python's start and every output included) and for the engine's pass alone (JSON
lines read and grouped into the report's table, load.load), on a generated realistic log
(bench/analyze_log.py: readers all along, an attack by three botnets of loopback addresses in
the middle, mixed outcomes). Target: at least 1,000,000 lines/s on this 2-core machine.

    .venv/bin/python -m bench.analyze_speed                 # 3,000,000 lines, 3 runs each
    .venv/bin/python -m bench.analyze_speed --quick         # 300,000 lines, 1 run each (smoke)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.analyze_log import Scenario, write
from bench.common import (
    RESULTS_DIR,
    VENV_BIN,
    Report,
    command_line,
    guarded,
    log,
    machine_info,
    markdown_table,
    scratch_dir,
    wait_until_quiet,
)

MODULE = "bench.analyze_speed"
TARGET = 1_000_000  # lines per second


def scan_seconds(path: Path, lines: int) -> float:
    """The engine's part: the files read and grouped into the report's table (load.load),
    in-process."""
    from kalkan.analyze import load
    con = load.connect()
    try:
        started = time.perf_counter()
        n = load.load(con, [str(path)])
        elapsed = time.perf_counter() - started
    finally:
        con.close()
    assert n == lines, (n, lines)
    return elapsed


def command_seconds(args: list[str]) -> float:
    """`kalkan analyze ARGS` as a user runs it, interpreter start included."""
    started = time.perf_counter()
    done = subprocess.run([str(VENV_BIN / "kalkan"), "analyze", *args], capture_output=True,
                          text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"kalkan analyze failed: {done.stderr.strip()}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=3_000_000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="300,000 lines, one run each")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.lines, args.repetitions = 300_000, 1

    def body() -> None:
        report = Report("analyze_speed", command_line(MODULE, argv),
                        machine_info({"duckdb": _version("duckdb"),
                                      "Pillow": _version("Pillow")}))
        with scratch_dir("analyze-speed") as work:
            path = work / "access.log"
            log(f"writing a {args.lines:,}-line access log")
            sc = Scenario(lines=args.lines, seconds=max(60.0, args.lines / 5000))
            write(path, sc)
            size = path.stat().st_size
            waited, quiet = wait_until_quiet(list(range(os.cpu_count() or 1)), timeout_s=30)
            runs: dict[str, list[float]] = {"scan": [], "report": [], "full": []}
            for i in range(args.repetitions):
                log(f"run {i + 1}/{args.repetitions}")
                runs["scan"].append(scan_seconds(path, args.lines))
                runs["report"].append(command_seconds(
                    [str(path), "--out", str(work / "r"), "--format", "json"]))
                runs["full"].append(command_seconds([str(path), "--out", str(work / "r")]))
        medians = {k: statistics.median(v) for k, v in runs.items()}
        rates = {k: args.lines / v for k, v in medians.items()}
        names = {"scan": "engine pass: JSON lines → the report's grouped table (in-process)",
                 "report": "`kalkan analyze LOG --out DIR --format json` (analysis, no charts)",
                 "full": "`kalkan analyze LOG --out DIR` (report.md, report.html, "
                         "report.json, 3 PNG charts)"}
        report.data = {"lines": args.lines, "bytes": size, "repetitions": args.repetitions,
                       "quiet_before": quiet, "waited_for_quiet_s": round(waited, 1),
                       "seconds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
                       "median_seconds": {k: round(v, 3) for k, v in medians.items()},
                       "lines_per_second": {k: round(v) for k, v in rates.items()},
                       "target_lines_per_second": TARGET,
                       "target_met": rates["full"] >= TARGET}
        verdict = "MET" if rates["full"] >= TARGET else "**NOT MET**"
        report.sections = [
            "## Verdict", "",
            f"- `kalkan analyze` end to end, every output: **{rates['full']:,.0f} lines/s** "
            f"(median of {args.repetitions}); target ≥ {TARGET:,} lines/s: {verdict}.",
            f"- The engine's pass alone: {rates['scan']:,.0f} lines/s "
            f"({size / medians['scan'] / 1e6:,.0f} MB/s of JSON).",
            "", "## Runs", "",
            f"A generated log of {args.lines:,} lines ({size / 1e6:,.0f} MB, "
            f"{size / args.lines:.0f} bytes a line; bench/analyze_log.py: readers, then an "
            "attack by a search botnet, cache-busters and a login flood, challenged and "
            "blocked after 4 s).", "",
            markdown_table(["what is timed", "median s", "lines/s", "runs (s)"],
                           [[names[k], f"{medians[k]:.2f}", f"{rates[k]:,.0f}",
                             ", ".join(f"{x:.2f}" for x in runs[k])] for k in runs]),
        ]
        if not quiet:
            report.sections.append(
                "\n- **Caution:** the machine did not get quiet before the runs (other work "
                "shared its cores): these numbers are lower than the machine can do.")
        json_path, md_path = report.write("kalkan analyze: lines per second",
                                          args.output_dir)
        log(f"wrote {json_path} and {md_path}")

    return guarded(MODULE, body)


def _version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
