"""The framing fuzzer's long run: many random examples per test, and a short summary.

Runs tests/integration/test_framing_fuzz.py under pytest with KALKAN_FUZZ_EXAMPLES set (random
examples, shrinking on, no example database) and writes bench/results/fuzz_framing.md: per test,
examples run, seconds, the statuses the attacker saw, and the first desyncs found.

    .venv/bin/python -m bench.fuzz_framing [--examples 20000] [--tests EXPR]

`--tests` is a pytest -k expression; the default ("framing_fuzz", the file's name) selects every
test of the file, the known holes included with their xfail marks ignored (--runxfail), so the
summary also says whether those still hold. The fuzz over the whole space stops at its explicit
hole examples until both holes are fixed; then it runs the full count too.

Traffic stays on loopback: the edge, its origin and the clients all bind 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "fuzz_framing.md"
TEST_FILE = "tests/integration/test_framing_fuzz.py"


def run(examples: int, tests: str) -> tuple[int, list[dict[str, object]], float, str]:
    """Run the fuzz tests; return pytest's exit code, their report lines, seconds, last output."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        env = os.environ | {"KALKAN_FUZZ_EXAMPLES": str(examples),
                            "KALKAN_FUZZ_REPORT": str(report)}
        cmd = [str(ROOT / ".venv" / "bin" / "pytest"), TEST_FILE, "-q", "-p", "no:cacheprovider",
               "--runxfail", "-k", tests]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              check=False)
        seconds = time.monotonic() - started
        lines = [json.loads(line) for line in report.read_text().splitlines()] \
            if report.exists() else []
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    return proc.returncode, lines, seconds, tail


def summary(examples: int, tests: str, code: int, lines: list[dict[str, object]],
            seconds: float, tail: str) -> str:
    out = ["# Framing fuzzer, long run", "",
           f"`KALKAN_FUZZ_EXAMPLES={examples} pytest {TEST_FILE} --runxfail -k '{tests}'`"
           f" ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s,"
           f" pytest exit {code}).", "",
           "Each example: one attacker connection (generated request whose body is a request,"
           " then a pipelined follower) and one victim request, through a Kalkan edge (cache"
           " on) to tests/byte_origin.py answering early. A test stops at its first desync.", "",
           "| test | defence | outcome | examples | seconds | origin requests | attacker "
           "statuses | victim edge errors |", "|---|---|---|---|---|---|---|---|"]
    for line in lines:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(
            dict(line["attacker_statuses"]).items()))  # type: ignore[call-overload]
        out.append(f"| {line['test']} | {'on' if line['defence'] else 'off'} | "
                   f"{line['outcome']} | {line['examples']} | {line['seconds']} | "
                   f"{line['origin_requests']} | {statuses} | {line['victim_edge_errors']} |")
    failures = [(line["test"], line["defence"], f) for line in lines
                for f in line["failures"]]  # type: ignore[attr-defined]
    out += ["", "## First desyncs found", ""]
    if failures:
        for test, defence, text in failures[:12]:
            out.append(f"- {test} (defence {'on' if defence else 'off'}): "
                       f"`{str(text)[:400]}`")
    else:
        out.append("None.")
    if not lines:
        out += ["", "No report lines: pytest output follows.", "", "```", tail, "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="examples per test")
    parser.add_argument("--tests", default="framing_fuzz", help="pytest -k expression")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    code, lines, seconds, tail = run(args.examples, args.tests)
    text = summary(args.examples, args.tests, code, lines, seconds, tail)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0 if code in (0, 1) and lines else 1  # desyncs found are results, not errors


if __name__ == "__main__":
    sys.exit(main())
