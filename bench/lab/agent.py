"""One load process of the lab (readers, or one scenario's attack waves): reads a JSON spec,
runs on uvloop until the spec's deadline or request budget, writes its records as JSON and exits.

`python -m bench.lab.agent SPEC.json OUT.json`. The orchestrator starts agents as separate
processes so a saturated attacker cannot delay the readers' clock; an alarm ends the process
even if something hangs, so every agent stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.common import require_loopback
from bench.lab.attacks import COUNTERS, Attacker, Bins, wave_from_dict
from bench.lab.net import now
from bench.lab.readers import ReaderPlan, Traffic, warm_pool

GRACE_S = 20.0
"""How long past its deadline an agent may take to wind down before the alarm ends it."""


def _pool(spec: dict[str, Any]) -> Executor | None:
    if not spec.get("pow_workers"):
        return None
    # spawn, not fork: the pool starts before the event loop, but a clean child is cheaper to
    # reason about than a fork of a process that imported uvloop.
    pool = ProcessPoolExecutor(spec["pow_workers"], mp_context=multiprocessing.get_context("spawn"))
    warm_pool(pool)
    return pool


async def _readers(spec: dict[str, Any], pool: Executor | None) -> dict[str, Any]:
    known = {f.name for f in fields(ReaderPlan)}
    plan = ReaderPlan(**{k: v for k, v in spec["plan"].items() if k in known})
    surge = spec.get("surge_window")
    traffic = Traffic(spec["host"], spec["port"], plan, spec["end"], spec["max_requests"], pool,
                      seed=spec.get("seed", 1),
                      surge_window=(surge[0], surge[1]) if surge else None)
    await asyncio.sleep(max(0.0, spec["start"] - now()))
    await traffic.run()
    return {"records": traffic.records, "sessions": traffic.sessions,
            "identities": sorted(traffic.identities)}


async def _attack(spec: dict[str, Any], pool: Executor | None) -> dict[str, Any]:
    bins: Bins = {}
    waves = [wave_from_dict(w) for w in spec["waves"]]
    attackers = []
    for i, wave in enumerate(waves):
        start = spec["start"] + wave.start_s
        end = spec["end"] if wave.duration_s is None else min(spec["end"], start + wave.duration_s)
        # Each wave's own bound: 20% over its offered count, never more than the whole budget.
        budget = min(spec["max_requests"], int(wave.rate * (end - start) * 1.2) + 1000)
        attackers.append(Attacker(wave, spec["host"], spec["port"], spec["t0"], start, end,
                                  budget, bins, pool, seed=spec.get("seed", 1) * 100 + i))
    await asyncio.gather(*(a.run() for a in attackers))
    # The ground truth: every address a bot used, under its wave's label (bench/lab/truth.py).
    used: dict[str, set[str]] = {}
    for attacker in attackers:
        for label, addresses in attacker.used.items():
            used.setdefault(label, set()).update(addresses)
    return {"counters": list(COUNTERS), "bins": {str(k): v for k, v in sorted(bins.items())},
            "bot_addresses": {k: sorted(v) for k, v in sorted(used.items())}}


def main(argv: list[str]) -> None:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    require_loopback(spec["host"])
    signal.alarm(int(max(1.0, spec["end"] - now()) + GRACE_S))  # stop by itself, whatever
    if spec.get("nice"):
        os.nice(int(spec["nice"]))
    pool = _pool(spec)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # the venv has uvloop; keep working without it
        runner = asyncio.run
    role = {"readers": _readers, "attack": _attack}[spec["role"]]
    try:
        result = runner(role(spec, pool))
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, separators=(",", ":")))
    tmp.rename(out_path)
    # Leave now: the interpreter's exit would wait for a proof-of-work still being searched.
    # The orchestrator then ends this agent's process group (the pool's workers) by our PID.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
