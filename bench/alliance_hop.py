"""The attack that hops to the next newsroom (issue 13): a botnet floods newsroom A's search, then
moves on to newsroom B. How many of its requests reach B's origin, with B allied to A (trust
`block`) and without?

Run from the project root::

    .venv/bin/python -m bench.alliance_hop            # results in bench/results/alliance_hop.*
    .venv/bin/python -m bench.alliance_hop --quick    # smoke test, results in bench/.work/

Two newsrooms on loopback, each a demo site behind its own `kalkan serve` (the shipped default
policy, X-Forwarded-For trusted from 127.0.0.1, `alliance.poll_interval` at its default, 10 s).
The botnet: BOTS addresses in 198.18.0.0/15 (the benchmarking range; forwarded addresses are
only header text, every connection goes to 127.0.0.1), each sending search requests with a new
query (what a cache cannot answer) at RATE requests/s in all: ATTACK_S seconds at A, then the
same at B. Counted: B's origin's requests during the hop (its own /_demo/stats), and how many
requests B refused. Run twice, the same way, B allied to A or not. Bounded: every phase stops by
itself; every process is ours and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    Report,
    Stopper,
    command_line,
    free_port,
    log,
    machine_info,
    markdown_table,
    quick_or_full_main,
    require_loopback,
    scratch_dir,
    start_process,
    wait_for_port,
)
from bench.peers import HOST, KALKAN, fetch_text, start_origin

MODULE = "bench.alliance_hop"
CONFIG = """client_address:
  trusted_proxies: ["127.0.0.1/32"]
defense:
  enabled: true
cache:
  dir: null
"""


@dataclass
class Settings:
    bots: int = 60
    rate: float = 150.0      # requests/s of the whole botnet
    attack_s: float = 25.0   # at A, then at B
    quick: bool = False


def bot_address(i: int) -> str:
    return f"198.18.{i // 20}.{i % 20 + 1}"


async def flood(port: int, settings: Settings, seconds: float, tag: str) -> dict[str, int]:
    """The botnet's searches at `port` for `seconds`: statuses counted."""
    require_loopback(HOST)
    statuses: dict[str, int] = {}
    rng = random.Random(7)
    interval = 1.0 / settings.rate
    end = time.monotonic() + seconds
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
            writer.write((f"GET /search?q={tag}{rng.getrandbits(48):x} HTTP/1.1\r\n"
                          f"Host: news.example\r\nX-Forwarded-For: {bot_address(i)}\r\n"
                          "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) bot\r\n"
                          "Connection: close\r\n\r\n").encode())
            head = await asyncio.wait_for(reader.readline(), 10)
            status = head.split(b" ")[1].decode() if head.count(b" ") >= 2 else "none"
            writer.close()
        except (TimeoutError, OSError):
            status = "error"
        statuses[status] = statuses.get(status, 0) + 1

    i = 0
    while time.monotonic() < end:
        task = asyncio.create_task(one(i % settings.bots))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        await asyncio.sleep(interval)
    if tasks:
        await asyncio.wait(tasks, timeout=15)
    return statuses


def origin_requests(port: int) -> int:
    return int(json.loads(fetch_text(f"http://{HOST}:{port}/_demo/stats"))["requests"])


def start_edge(name: str, origin_port: int, home: Path, stopper: Stopper) -> int:
    home.mkdir(parents=True, exist_ok=True)
    (home / "kalkan.yaml").write_text(CONFIG)
    port, admin = free_port(), free_port()
    argv = [str(KALKAN), "serve", "--origin", f"http://{HOST}:{origin_port}",
            "--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}", "--config",
            str(home / "kalkan.yaml"), "--state-dir", str(home / "state"),
            "--access-log", str(home / "access.log")]
    proc = stopper.add(start_process(f"kalkan-{name}", argv, home, cwd=home))
    wait_for_port(HOST, port, timeout=30, proc=proc)
    return port


def one_run(allied: bool, work: Path, stopper: Stopper, settings: Settings) -> dict[str, Any]:
    from kalkan.alliance.identity import Identity
    from kalkan.alliance.poller import AllyConfig, save_allies
    from kalkan.alliance.service import FEED_PATH

    origin_a = start_origin(work / "origin-a", stopper, False, None)
    origin_b = start_origin(work / "origin-b", stopper, False, None)
    identity = Identity.create(work / "a" / "state" / "alliance" / "identity.json", "newsroom-a")
    port_a = start_edge("a", origin_a.port, work / "a", stopper)
    if allied:
        save_allies(work / "b" / "state" / "alliance" / "allies.json", [AllyConfig(
            "newsroom-a", f"http://{HOST}:{port_a}{FEED_PATH}", identity.public_text,
            "block")])
    port_b = start_edge("b", origin_b.port, work / "b", stopper)
    log(f"  the botnet at newsroom A for {settings.attack_s:.0f} s")
    at_a = asyncio.run(flood(port_a, settings, settings.attack_s, "a"))
    before = origin_requests(origin_b.port)
    log(f"  ... then at newsroom B for {settings.attack_s:.0f} s")
    at_b = asyncio.run(flood(port_b, settings, settings.attack_s, "b"))
    reached = origin_requests(origin_b.port) - before
    return {"allied": allied, "at_a": at_a, "at_b": at_b, "reached_b_origin": reached,
            "sent_to_b": sum(at_b.values())}


def run(settings: Settings, output_dir: Path) -> Path:
    report = Report(name="alliance_hop", command=command_line(MODULE), machine=machine_info())
    runs = []
    for allied in (False, True):
        log(f"B {'allied to A (trust block)' if allied else 'alone'}")
        with Stopper() as stopper, scratch_dir("alliance-hop") as work:
            runs.append(one_run(allied, work, stopper, settings))
        log(f"  {runs[-1]['reached_b_origin']} of the botnet's requests reached B's origin")
    alone, allied = runs
    report.data = {"settings": vars(settings), "runs": runs,
                   "reduction": 1 - allied["reached_b_origin"] / alone["reached_b_origin"]
                   if alone["reached_b_origin"] else None}
    rows = [[("allied to A (trust block)" if r["allied"] else "alone"), r["sent_to_b"],
             r["reached_b_origin"], ", ".join(f"{k}: {v}" for k, v in sorted(r["at_b"].items()))]
            for r in runs]
    report.sections = [
        "## Verdict (issue 13)", "",
        f"- Requests of the botnet that reached newsroom B's origin after it hopped from A: "
        f"**{alone['reached_b_origin']}** with B alone, **{allied['reached_b_origin']}** with B "
        f"allied to A.", "",
        markdown_table(["newsroom B", "botnet requests sent to B", "reached B's origin",
                        "B's answers"], rows), "",
        f"Botnet: {settings.bots} addresses in 198.18.0.0/15 (forwarded), {settings.rate:.0f} "
        f"search requests/s with a new query each, {settings.attack_s:.0f} s at A then "
        f"{settings.attack_s:.0f} s at B; the shipped default policy on both edges; "
        "alliance.poll_interval 10 s (the default).",
    ]
    json_path, md_path = report.write("The attack that hops to the next newsroom", output_dir)
    log(f"wrote {json_path} and {md_path}")
    return md_path


def main(argv: list[str] | None = None) -> int:
    if not KALKAN.exists():
        raise SystemExit(f"{MODULE}: Kalkan is not installed in the venv")
    return quick_or_full_main(
        MODULE, __doc__, argv, "12 s phases (longer than one poll interval, 10 s)",
        lambda quick: Settings(attack_s=12.0, quick=True) if quick else Settings(), run)


if __name__ == "__main__":
    sys.exit(main())
