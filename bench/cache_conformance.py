"""HTTP caching conformance: the http-cache-tests suite through Kalkan, nginx and Varnish.

Run from the project root::

    .venv/bin/python -m bench.cache_conformance                 # all three, bench/results/
    .venv/bin/python -m bench.cache_conformance --only nginx,varnish
    .venv/bin/python -m bench.cache_conformance --only kalkan --id freshness-max-age

The suite (npm package ``http-cache-tests``, pinned in ``bench/package.json`` and
``bench/package-lock.json``, installed into ``bench/.work/node_modules``) brings an origin server
and a client; the client sends each test's requests through the cache under test, which proxies
to the suite's origin, and checks what comes back. Result kinds follow the suite's own
``lib/display.mjs``; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    RESULTS_DIR,
    WORK_DIR,
    BenchError,
    Report,
    Stopper,
    command_line,
    free_port,
    log,
    machine_info,
    markdown_table,
    parse_only,
    require_loopback,
    scratch_dir,
    start_process,
    wait_for_port,
)
from bench.peers import HOST, PEERS, start_proxy

MODULE = "bench.cache_conformance"
PACKAGE = "http-cache-tests"
PACKAGE_DIR = WORK_DIR / "node_modules" / PACKAGE
RUNNER = BENCH_DIR / "cache_tests_runner.mjs"
LOOPBACK_PRELOAD = BENCH_DIR / "cache_tests_loopback.mjs"
DEFAULT_CONCURRENCY = 100
"""Tests run at once: the suite's own default (client/runner.mjs chunkSize)."""
SUITE_TIMEOUT_S = 600
"""Hard limit for one peer's run of the whole suite (it normally takes well under two minutes)."""

PASS, FAIL, OPTIONAL_FAIL = "pass", "fail", "optional_fail"
YES, NO = "yes", "no"
SETUP_FAIL, HARNESS_FAIL, DEPENDENCY_FAIL, RETRY, UNTESTED = (
    "setup_fail", "harness_fail", "dependency_fail", "retry", "untested",
)
KINDS = (PASS, FAIL, OPTIONAL_FAIL, YES, NO, SETUP_FAIL, HARNESS_FAIL, DEPENDENCY_FAIL, RETRY,
         UNTESTED)
SYMBOL = {PASS: "✅", FAIL: "⛔️", OPTIONAL_FAIL: "⚠️", YES: "Y", NO: "N", SETUP_FAIL: "🔹",
          HARNESS_FAIL: "⁉️", DEPENDENCY_FAIL: "⚪️", RETRY: "↻", UNTESTED: "-"}
NOT_PASSED = (FAIL, OPTIONAL_FAIL, SETUP_FAIL, HARNESS_FAIL, DEPENDENCY_FAIL, RETRY)
"""Outcomes listed as failures (check-kind tests, Y/N, are information, not failures)."""


# --------------------------------------------------------------------------- the npm package


def package_version() -> str | None:
    """The installed suite's version, or None."""
    manifest = PACKAGE_DIR / "package.json"
    if not manifest.exists():
        return None
    return str(json.loads(manifest.read_text())["version"])


def pinned_version() -> str:
    """The version pinned in ``bench/package.json``."""
    return str(json.loads((BENCH_DIR / "package.json").read_text())["dependencies"][PACKAGE])


def ensure_suite() -> str:
    """Install the pinned suite into ``bench/.work`` with ``npm ci`` if it is missing or stale."""
    wanted = pinned_version()
    if package_version() == wanted:
        return wanted
    if shutil.which("npm") is None:
        raise BenchError("npm is not installed (bash scripts/install-debian-deps.sh)")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(BENCH_DIR / name, WORK_DIR / name)
    log(f"installing {PACKAGE}@{wanted} into {WORK_DIR} (npm ci)")
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=WORK_DIR, capture_output=True, text=True, timeout=600, check=False,
    )
    if done.returncode != 0 or package_version() != wanted:
        raise BenchError(f"npm ci failed:\n{done.stdout}\n{done.stderr}")
    return wanted


# --------------------------------------------------------------------------- running


def run_suite(base_url: str, test_id: str | None = None,
              concurrency: int = DEFAULT_CONCURRENCY) -> dict[str, Any]:
    """Run the suite's client against *base_url*, *concurrency* tests at a time; returns
    ``{"tests": [...], "results": {...}}``."""
    require_loopback(base_url)
    argv = ["node", "--no-warnings", str(RUNNER), str(PACKAGE_DIR), base_url]
    if test_id:
        argv.append(test_id)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONCURRENCY": str(concurrency)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S,
                          check=False, env=env)
    lines = done.stdout.rstrip().splitlines()
    if done.returncode != 0 or not lines:
        raise BenchError(f"the suite's client failed ({done.returncode}):\n{done.stderr}")
    payload: dict[str, Any] = json.loads(lines[-1])
    payload["dump"] = "\n".join(lines[:-1])
    return payload


@dataclass
class SuiteOrigin:
    """The suite's own origin server, running on loopback."""

    port: int


def start_suite_origin(workdir: Path, stopper: Stopper) -> SuiteOrigin:
    """Start ``server/server.mjs`` on a free loopback port (host forced by the preload)."""
    port = free_port()
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "npm_config_protocol": "http",
        "npm_config_port": str(port),
        "npm_config_pidfile": str(workdir / "server.pid"),
    }
    argv = ["node", "--no-warnings", "--import", LOOPBACK_PRELOAD.as_uri(),
            str(PACKAGE_DIR / "server" / "server.mjs")]
    proc = stopper.add(start_process("suite-origin", argv, workdir, cwd=PACKAGE_DIR, env=env))
    wait_for_port(HOST, port, proc=proc)
    return SuiteOrigin(port=port)


# --------------------------------------------------------------------------- classification


def classify(tests: list[dict[str, Any]], results: dict[str, Any],
             honor_dependencies: bool = True) -> dict[str, str]:
    """Each test id → outcome, with the suite's rules (lib/display.mjs determineTestResult):
    a test whose dependency did not pass is a dependency failure (unless *honor_dependencies*
    is false, as for a single test run alone); a ``Setup`` error is a setup
    failure (or a retry); otherwise ``required`` tests pass or fail, ``optimal`` tests pass or
    fail optionally, and ``check`` tests answer yes or no."""
    by_id = {t["id"]: t for t in tests}
    memo: dict[str, str] = {}

    def outcome(test_id: str) -> str:
        if test_id in memo:
            return memo[test_id]
        test, result = by_id[test_id], results.get(test_id)
        if result is None:
            kind = UNTESTED
        elif honor_dependencies and any(
            outcome(dep) not in (PASS, YES) for dep in test["depends_on"]
        ):
            kind = DEPENDENCY_FAIL
        elif isinstance(result, list) and result[:1] == ["Setup"]:
            kind = RETRY if result[1:2] == ["retry"] else SETUP_FAIL
        elif test["kind"] == "optimal":
            kind = PASS if result is True else OPTIONAL_FAIL
        elif test["kind"] == "check":
            kind = YES if result is True else NO
        else:
            kind = PASS if result is True else FAIL
        memo[test_id] = kind
        return kind

    return {t["id"]: outcome(t["id"]) for t in tests if not t["browser_only"]}


def message(result: Any) -> str:
    """The failure message the suite recorded for one test ('' for a pass)."""
    if isinstance(result, list) and len(result) > 1:
        return f"{result[0]}: {result[1]}"
    return ""


# --------------------------------------------------------------------------- report


def run(peers: list[str], output_dir: Path, keep_work: bool,
        concurrency: int = DEFAULT_CONCURRENCY) -> Path:
    """Run the suite through every peer and write the JSON and Markdown into *output_dir*."""
    version = ensure_suite()
    report = Report(
        name="cache_conformance",
        command=command_line(MODULE),
        machine=machine_info({PACKAGE: version, "node": _node_version()}),
    )
    tests: list[dict[str, Any]] = []
    outcomes: dict[str, dict[str, str]] = {}
    raw: dict[str, dict[str, Any]] = {}
    commands: dict[str, str] = {}
    with Stopper() as stopper, scratch_dir("conformance", keep=keep_work) as work:
        origin = start_suite_origin(work / "suite-origin", stopper)
        for name in peers:
            log(f"cache tests through {name}")
            proxy = start_proxy(name, origin.port, work / name, stopper, "conformance", None)
            commands[name] = proxy.argv_note
            try:
                payload = run_suite(proxy.base_url, concurrency=concurrency)
            finally:
                proxy.stop(stopper)
            tests = payload["tests"]
            raw[name] = payload["results"]
            outcomes[name] = classify(tests, raw[name])
            log(f"  {Counter(outcomes[name].values()).get(PASS, 0)} passed")
    report.data = summarize(peers, tests, outcomes, raw, commands)
    report.data["suite"]["concurrency"] = concurrency
    report.sections = markdown_sections(report.data)
    json_path, md_path = report.write("HTTP cache conformance: Kalkan vs nginx vs Varnish",
                                      output_dir)
    log(f"wrote {json_path} and {md_path}")
    return md_path


def _node_version() -> str | None:
    done = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def summarize(peers: list[str], tests: list[dict[str, Any]], outcomes: dict[str, dict[str, str]],
              raw: dict[str, dict[str, Any]], commands: dict[str, str]) -> dict[str, Any]:
    """Counts per peer, per-test outcomes, Kalkan's diffs against each peer and the verdict."""
    counts = {name: {k: Counter(outcomes[name].values()).get(k, 0) for k in KINDS}
              for name in peers}
    per_test = []
    for test in tests:
        if test["browser_only"]:
            continue
        row = {key: test[key] for key in ("id", "name", "suite", "kind")}
        row["outcomes"] = {name: outcomes[name][test["id"]] for name in peers}
        row["messages"] = {name: message(raw[name].get(test["id"])) for name in peers
                           if message(raw[name].get(test["id"]))}
        per_test.append(row)
    diffs: dict[str, dict[str, list[str]]] = {}
    verdict: dict[str, Any] = {}
    if "kalkan" in peers:
        for peer in (p for p in peers if p != "kalkan"):
            diffs[peer] = {
                "kalkan_fails_peer_passes": [
                    t["id"] for t in per_test
                    if t["outcomes"]["kalkan"] in NOT_PASSED and t["outcomes"][peer] == PASS
                ],
                "kalkan_passes_peer_fails": [
                    t["id"] for t in per_test
                    if t["outcomes"]["kalkan"] == PASS and t["outcomes"][peer] in NOT_PASSED
                ],
            }
            verdict[peer] = {
                "kalkan_passes": counts["kalkan"][PASS],
                "peer_passes": counts[peer][PASS],
                "met": counts["kalkan"][PASS] > counts[peer][PASS],
            }
    return {
        "suite": {"package": PACKAGE, "version": pinned_version(),
                  "tests": len(per_test)},
        "configs": {
            "kalkan": "kalkan serve --origin ... --listen ... --admin 127.0.0.1:FREE_PORT "
                      "(default configuration; the admin port only avoids collisions)",
            "nginx": "bench/configs/nginx.conf.tmpl + bench/configs/nginx-conformance.inc",
            "varnish": "bench/configs/default.vcl.tmpl, -p default_ttl=0 -p default_grace=0 "
                       "-p default_keep=3600",
        },
        "commands": commands,
        "counts": counts,
        "verdict": verdict,
        "diffs": diffs,
        "tests": per_test,
    }


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PORT = re.compile(r"127\.0\.0\.1:\d+")


def _normalize(text: str) -> str:
    """A failure message with test UUIDs and ports blanked, for grouping."""
    return _PORT.sub("127.0.0.1:PORT", _UUID.sub("UUID", text)).strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_sections(data: dict[str, Any]) -> list[str]:
    """The Markdown body: verdict, counts, Kalkan's failures, the diffs and every test."""
    peers = list(data["counts"])
    by_id = {t["id"]: t for t in data["tests"]}
    out = ["## Verdict (target: Kalkan passes more tests than nginx and than Varnish)", ""]
    for peer, v in data["verdict"].items():
        out.append(f"- Kalkan {v['kalkan_passes']} passes vs {peer} {v['peer_passes']}: "
                   f"**{'MET' if v['met'] else 'NOT MET'}**")
    if not data["verdict"]:
        out.append("- Kalkan was not tested in this run.")
    out += ["", f"## Outcomes per target ({data['suite']['package']} "
            f"{data['suite']['version']}, {data['suite']['tests']} tests, "
            f"{data['suite'].get('concurrency', DEFAULT_CONCURRENCY)} at a time)", ""]
    out.append(markdown_table(
        ["outcome", *peers],
        [[f"{SYMBOL[k]} {k}", *(data["counts"][p][k] for p in peers)] for k in KINDS
         if any(data["counts"][p][k] for p in peers)],
    ))
    out += ["", "Outcomes as the suite defines them: *pass*; *fail* (a required behaviour, "
            "likely a conformance problem); *optional_fail* (an optimal behaviour missed, "
            "usually not reusing a stored response when it could); *yes/no* (a `check` test: "
            "information only); *setup_fail* (the harness could not set the test up, e.g. a "
            "refused PUT); *dependency_fail* (a test it depends on did not pass); *retry* (the "
            "cache retried a request)."]
    if "kalkan" in peers:
        failures = [t for t in data["tests"] if t["outcomes"]["kalkan"] in NOT_PASSED]
        out += ["", f"## Every Kalkan failure ({len(failures)})", ""]
        rows = [[f"`{t['id']}`", _cell(t["name"]), t["kind"],
                 f"{SYMBOL[t['outcomes']['kalkan']]} {t['outcomes']['kalkan']}",
                 ", ".join(f"{p}: {SYMBOL[t['outcomes'][p]]}" for p in peers if p != "kalkan"),
                 _cell(t["messages"].get("kalkan", ""))] for t in failures]
        out.append(markdown_table(["test id", "name", "kind", "Kalkan", "peers", "message"],
                                  rows) if rows else "None.")
        grouped = Counter(_normalize(t["messages"].get("kalkan", "")) for t in failures)
        out += ["", "### Kalkan failure messages, grouped (ids and ports blanked)", ""]
        out.append(markdown_table(["tests", "message"],
                                  [[n, _cell(m) or "(no message: a dependency failed)"]
                                   for m, n in grouped.most_common()]))
        for peer, diff in data["diffs"].items():
            out += ["", f"## Kalkan fails, {peer} passes ({len(diff['kalkan_fails_peer_passes'])})",
                    ""]
            out += [f"- `{i}`: {_cell(by_id[i]['name'])}" for i in diff["kalkan_fails_peer_passes"]]
            out += ["", f"## Kalkan passes, {peer} fails ({len(diff['kalkan_passes_peer_fails'])})",
                    ""]
            out += [f"- `{i}`: {_cell(by_id[i]['name'])}" for i in diff["kalkan_passes_peer_fails"]]
    out += ["", "## Configurations", ""]
    out += [f"- {peer}: {data['configs'][peer]}; ran as `{data['commands'][peer]}`"
            for peer in peers]
    out += ["", "## Every test", ""]
    out.append(markdown_table(
        ["test id", "kind", *peers],
        [[f"`{t['id']}`", t["kind"], *(SYMBOL[t["outcomes"][p]] for p in peers)]
         for t in data["tests"]],
    ))
    return out


def debug_one(peer: str, test_id: str) -> int:
    """Run one test through one peer and print the suite's request/response dump."""
    ensure_suite()
    with Stopper() as stopper, scratch_dir("conformance-debug") as work:
        origin = start_suite_origin(work / "suite-origin", stopper)
        proxy = start_proxy(peer, origin.port, work / peer, stopper, "conformance", None)
        try:
            payload = run_suite(proxy.base_url, test_id)
        finally:
            proxy.stop(stopper)
    print(payload["dump"])
    outcome = classify(payload["tests"], payload["results"], honor_dependencies=False).get(
        test_id, UNTESTED)
    print(f"{test_id} through {peer}: {SYMBOL[outcome]} {outcome} "
          f"{message(payload['results'].get(test_id))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.cache_conformance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PEERS),
                        help="comma-separated targets (default: kalkan,nginx,varnish)")
    parser.add_argument("--id", help="run this one test through the first --only target and "
                                     "print the requests and responses (no result files)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help="tests run at once (default 100, the suite's own); every request "
                             "of a test in flight holds a connection")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the scratch directory (configs, logs) under bench/.work/runs")
    args = parser.parse_args(argv)
    try:
        peers = parse_only(args.only, PEERS)
        if not peers:
            raise BenchError("--only selected no target")
        if args.id:
            return debug_one(peers[0], args.id)
        run(peers, args.output_dir, args.keep_work, args.concurrency)
    except BenchError as err:
        print(f"bench.cache_conformance: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench.cache_conformance: interrupted; every started process was stopped",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
