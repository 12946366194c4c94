"""`python -m bench.lab [--quick]`: every scenario against every target, one after the other on
the same pinned cores, then JSON + Markdown + PNG timelines (bench/lab/README.md explains it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from bench.common import (
    LOAD_CPU,
    RESULTS_DIR,
    ROOT,
    SERVER_CPU,
    VENV_BIN,
    WORK_DIR,
    BenchError,
    Stopper,
    command_line,
    log,
    machine_info,
    parse_only,
    pin_self,
    scratch_dir,
    start_process,
    wait_until_quiet,
)
from bench.lab.attacks import (
    SCENARIO_ORDER,
    SLOW_TACTICS,
    Scenario,
    compose,
    scenarios,
    wave_to_dict,
)
from bench.lab.metrics import Windows, analyse
from bench.lab.net import now
from bench.lab.readers import ReaderPlan
from bench.lab.report import write_report
from bench.lab.targets import HOST, ORIGIN_WORKERS, TARGETS, Sampler, start_target
from bench.lab.truth import GroundTruth, export_labelled, judge, read_kalkan_log, read_nginx_log

STARTUP_S = 2.5
"""Head start for the agents (interpreter, uvloop, the proof-of-work worker) before t0."""
ATTACK_NICE = 5
"""The attack agent yields the shared load core to readers and the origin when both want it."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.lab", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run under 60 s (one scenario, low rate) into bench/.work/")
    p.add_argument("--targets", default=",".join(TARGETS), help="subset of origin,nginx,kalkan")
    p.add_argument("--scenarios", default=None,
                   help="comma-separated; join with + to compose (e.g. cache-bust+slow)")
    p.add_argument("--rate", type=float, default=None, help="offered attack req/s (5000)")
    p.add_argument("--bots", type=int, default=None, help="botnet size in addresses (3000)")
    p.add_argument("--peace", type=float, default=None, help="seconds before the attack (5)")
    p.add_argument("--attack", type=float, default=None,
                   help="seconds of attack (10; the mixed wave: 3 x --mixed-phase)")
    p.add_argument("--mixed-phase", type=float, default=20.0,
                   help="seconds per tactic of the mixed scenario (20)")
    p.add_argument("--tail", type=float, default=None, help="seconds after the attack (2)")
    p.add_argument("--sessions", type=float, default=None, help="reader sessions per second (3)")
    p.add_argument("--nojs-share", type=float, default=0.1,
                   help="share of readers who never run JavaScript (0.1)")
    p.add_argument("--export-labelled", type=Path, default=None, metavar="DIR",
                   help="write Kalkan's access log joined with the ground truth as JSON lines, "
                        "one file per scenario (DIR/lab-labelled.SCENARIO.jsonl)")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch directories")
    args = p.parse_args(argv)
    if not 0.0 <= args.nojs_share <= 1.0:
        p.error(f"--nojs-share must be between 0 and 1, not {args.nojs_share}")
    args.peace_given = args.peace is not None
    quick = args.quick
    defaults = {"scenarios": "cache-bust" if quick else ",".join(SCENARIO_ORDER),
                "rate": 800.0 if quick else 5000.0, "bots": 400 if quick else 3000,
                "peace": 2.0 if quick else 5.0, "attack": 5.0 if quick else 10.0,
                "tail": 1.0 if quick else 2.0, "sessions": 3.0,
                "out": WORK_DIR / "quick-results" if quick else RESULTS_DIR}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick and args.mixed_phase == 20.0:
        args.mixed_phase = 2.0
    return args


def agent_command(spec_path: Path, out_path: Path) -> list[str]:
    python = VENV_BIN / "python"
    exe = str(python if python.exists() else Path(sys.executable))
    return [exe, "-m", "bench.lab.agent", str(spec_path), str(out_path)]


def scenario_plan(plan: ReaderPlan, scenario: Scenario) -> ReaderPlan:
    """The readers of *scenario*: the base plan with the scenario's changes (a flash crowd's
    surge, previews and apps, CGNAT's shared addresses)."""
    types = {f.name: type(getattr(plan, f.name)) for f in fields(ReaderPlan)}
    unknown = [k for k, _ in scenario.readers if k not in types]
    if unknown:
        raise BenchError(f"scenario {scenario.name} changes unknown reader fields {unknown}")
    return replace(plan, **{k: types[k](v) for k, v in scenario.readers})


def run_one(target: str, scenario: Scenario, windows: Windows, args: argparse.Namespace,
            work: Path, stopper: Stopper, plan: ReaderPlan) -> dict[str, Any]:
    """One target against one scenario: start, load, sample, stop, analyse."""
    run_dir = work / f"{scenario.name}-{target}"
    running = start_target(target, run_dir, stopper)
    plan = scenario_plan(plan, scenario)
    t0 = now() + STARTUP_S
    wall_t0 = time.time() + (t0 - now())   # the access logs' clock at t0
    end = t0 + windows.end
    # Mean offered rate over the attack window (the mixed scenario's waves take turns).
    offered = sum(w.rate * min(w.duration_s or windows.attack_s,
                               max(0.0, windows.attack_s - w.start_s))
                  for w in scenario.waves if w.tactic not in SLOW_TACTICS) / windows.attack_s
    specs = {
        "readers": {"role": "readers", "host": HOST, "port": running.port, "t0": t0,
                    "start": t0, "end": end, "max_requests": 200_000, "pow_workers": 1,
                    "plan": plan.__dict__, "seed": 7,
                    "surge_window": [t0 + windows.attack_start, t0 + windows.attack_end]},
        "attack": {"role": "attack", "host": HOST, "port": running.port, "t0": t0,
                   "start": t0 + windows.attack_start, "end": t0 + windows.attack_end,
                   "max_requests": int(offered * windows.attack_s * 1.2) + 10_000,
                   "waves": [wave_to_dict(w) for w in scenario.waves], "nice": ATTACK_NICE,
                   "pow_workers": int(any(w.solve_pow for w in scenario.waves)), "seed": 11},
    }
    agents = {}
    for role, spec in specs.items():
        spec_path = run_dir / f"{role}.spec.json"
        spec_path.write_text(json.dumps(spec))
        agents[role] = stopper.add(start_process(
            f"agent-{role}", agent_command(spec_path, run_dir / f"{role}.out.json"), run_dir,
            cwd=ROOT))
    sampler = Sampler(running, t0)
    sampler.start()
    try:
        deadline = end + 25.0
        while any(a.alive() for a in agents.values()) and now() < deadline:
            time.sleep(0.2)
    finally:
        sampler.stop()
        for agent in agents.values():
            stopper.stop(agent)   # by PID (and its process group: the proof-of-work pool)
    late = now() - end
    if late > 3.0:
        log(f"  the agents took {late:.1f} s past the deadline to finish")
    edge_counters = running.counters() if running.counters else {}
    for proc in (running.edge, running.origin):
        if proc is not None:
            proc.stop(timeout=3.0)   # the lab needs no graceful drain; its counters are read
            stopper.stop(proc)
    outputs = {}
    for role, agent in agents.items():
        path = run_dir / f"{role}.out.json"
        if not path.exists():
            raise BenchError(f"the {role} agent wrote no results ({scenario.name}, {target}); "
                             f"its output:\n{agent.output_tail()}")
        outputs[role] = json.loads(path.read_text())
    result = analyse(target, windows, t0, outputs["readers"]["records"],
                     outputs["readers"]["sessions"], outputs["attack"], sampler.origin,
                     sampler.edge, ORIGIN_WORKERS, offered,
                     sorted({w.start_s for w in scenario.waves if w.start_s >= 1.0} | {0.0}))
    result["edge_counters"] = {k: v for k, v in edge_counters.items()
                               if k in ("requests", "hits", "misses")
                               or k.startswith(("kalkan_decisions_total", "kalkan_challenges",
                                                "kalkan_threat"))}
    result["notes"] = running.notes
    result["decisions"] = judge_target(target, run_dir, scenario, windows, wall_t0, outputs, args)
    return result


def judge_target(target: str, run_dir: Path, scenario: Scenario, windows: Windows,
                 wall_t0: float, outputs: dict[str, Any], args: argparse.Namespace
                 ) -> dict[str, Any] | None:
    """Precision and recall of the edge's challenges and blocks against the lab's ground truth
    (bench/lab/truth.py), and the labelled export of Kalkan's access log."""
    if target == "origin":
        return None
    truth = GroundTruth.build(outputs["readers"].get("identities", []),
                              outputs["attack"].get("bot_addresses", {}))
    log_path = run_dir / "access.log"
    reader = read_kalkan_log if target == "kalkan" else read_nginx_log
    verdict = judge(reader(log_path), truth, wall_t0, windows.attack_start, windows.attack_end)
    verdict["shared_addresses"] = len(truth.shared())
    if target == "kalkan" and args.export_labelled is not None:
        out = args.export_labelled / f"lab-labelled.{scenario.name}.jsonl"
        n = export_labelled(read_kalkan_log(log_path), truth, out, scenario.name, wall_t0,
                            windows.attack_start, windows.attack_end)
        log(f"  labelled export: {n:,} lines -> {out}")
        verdict["export"] = {"path": str(out), "lines": n}
    return verdict


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    targets = parse_only(args.targets, TARGETS)
    if "nginx" in targets and shutil.which("nginx") is None:
        if not args.quick:
            raise BenchError("nginx is not installed (bash scripts/install-debian-deps.sh)")
        log("nginx is not installed: the quick run skips it")
        targets.remove("nginx")
    pin_self(LOAD_CPU)
    plan = ReaderPlan(sessions_per_s=args.sessions, nojs_share=args.nojs_share)
    table_for = {}
    chosen: list[Scenario] = []
    for item in args.scenarios.split(","):
        names = [n.strip() for n in item.split("+") if n.strip()]
        attack_s = args.mixed_phase * 3 if names == ["mixed"] else args.attack
        table = scenarios(args.rate, args.bots, attack_s)
        unknown = [n for n in names if n not in table]
        if unknown:
            raise BenchError(f"unknown scenario(s) {unknown}; choose from {SCENARIO_ORDER}")
        chosen.append(compose(names, table))
        peace_s = chosen[-1].peace_s
        table_for[chosen[-1].name] = Windows(
            args.peace if args.peace_given or peace_s is None else min(args.peace, peace_s),
            attack_s, args.tail)
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    machine = machine_info()
    with Stopper() as stopper, scratch_dir("lab", keep=args.keep_work) as work:
        for scenario in chosen:
            windows = table_for[scenario.name]
            for target in targets:
                if not args.quick:
                    waited, quiet = wait_until_quiet([LOAD_CPU, SERVER_CPU], threshold_pct=25.0,
                                                     timeout_s=5.0)
                else:
                    waited, quiet = 0.0, True
                log(f"{scenario.name} vs {target} ({windows.end:.0f} s)")
                try:
                    result = run_one(target, scenario, windows, args, work, stopper, plan)
                except BenchError as exc:
                    # One broken run must not cost the whole lab: note it and go on.
                    log(f"  FAILED: {exc}")
                    errors.append(f"{scenario.name} vs {target}: {exc}")
                    continue
                result.update(scenario=scenario.name, quiet_before=quiet,
                              waited_for_quiet_s=round(waited, 1))
                results.append(result)
                a, o = result["attack"], result["origin"]
                d = (result["decisions"] or {}).get("per_client", {})
                log(f"  readers {a['success']} p99 {a['p99_ms']} ms, attack "
                    f"{result['attack_traffic']['achieved_per_s']}/s, at origin "
                    f"{o['attack_requests']}, ttm {result['time_to_mitigate_s']}"
                    + (f", precision {d.get('precision')} recall {d.get('recall')}"
                       if d else ""))
    elapsed = time.monotonic() - started
    paths = write_report(args.out, results, chosen, table_for, plan, args,
                         command_line("bench.lab"), machine, elapsed, started_at, errors)
    for path in paths:
        log(f"wrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench.lab: {exc}", file=sys.stderr)
        sys.exit(2)
