"""Per-client memory and per-request cost of the client table (kalkan.defense.clients).

Run from the project root::

    .venv/bin/python -m bench.client_memory                 # 1M clients, results in bench/results/
    .venv/bin/python -m bench.client_memory --clients 100000 --output-dir /tmp/x

The table counts the shipped default policy's meters. Memory is measured twice, by tracemalloc
(bytes Python allocated and still holds) and by the process's RSS growth, for three floods of
distinct addresses: IPv4 page requests (no prefix meter applies, so no prefix entries), IPv4
search requests (every address also brings its own /24 entry: the worst case) and IPv6 search
requests (distinct /64s). Time per call is measured without tracemalloc, on one pinned core,
next to two references measured in the same run: one dict lookup + one function call, and a
plain-Python peer (a dict of per-client lists) doing the same counting.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import ipaddress
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    Report,
    command_line,
    log,
    machine_info,
    markdown_table,
    pin_self,
    wait_until_quiet,
)
from kalkan.defense.clients import ClientTable
from kalkan.defense.facts import RequestFacts
from kalkan.defense.rows import WIDTH
from kalkan.defense.rules import Policy

MODULE = "bench.client_memory"
TARGET_BYTES = 256 + WIDTH * 8
"""Issue 8's 256 B per client, plus issue 9's 128 B of behaviour features (defense/behaviour.py),
which the table holds as the edge runs it."""
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def make_facts(route: str, version: int) -> RequestFacts:
    """One facts object, re-aimed at each address: the loop measures the table, not parsing."""
    return RequestFacts("GET", "news.example", "/", "", route, "", 0, version, "", "Mozilla/5.0")


def addresses(n: int, version: int, seed: int) -> list[tuple[int, str]]:
    """n distinct (address as int, address as text), spread so almost each has its own prefix."""
    rng = random.Random(seed)
    if version == 4:
        ips = rng.sample(range(1 << 24, 224 << 24), n)
        return [(ip, f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}") for ip in ips]
    out = []
    for _ in range(n):
        ip = (0x2001 << 112) | (rng.getrandbits(48) << 64) | rng.getrandbits(64)
        out.append((ip, str(ipaddress.IPv6Address(ip))))
    return out


class NaivePeer:
    """What one would write first: a dict of client -> list [first, last, TAT per meter]."""

    def __init__(self, meters: int) -> None:
        self.clients: dict[tuple[int, int], list[float]] = {}
        self.meters = meters
        self.interval = 60.0 / 100

    def hit(self, f: RequestFacts, now: float) -> None:
        state = self.clients.get((f.version, f.ip))
        if state is None:
            state = [now, now] + [0.0] * self.meters
            self.clients[(f.version, f.ip)] = state
        state[1] = now
        for i in range(2, 2 + self.meters):
            tat = state[i]
            state[i] = (tat if tat > now else now) + self.interval


# --------------------------------------------------------------------------- memory


def trim() -> None:
    """Collect garbage and hand free heap pages back to the system, for a clean RSS baseline."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def fill(policy: Policy, ips: list[tuple[int, str]], route: str, version: int) -> ClientTable:
    f = make_facts(route, version)
    table = ClientTable(len(ips), policy.meters, seed=1, trait_width=WIDTH)
    for ip, text in ips:
        f.ip, f.client = ip, text
        table.hit(f, 1000.0)
    return table


def measure_memory(policy: Policy, n: int, route: str, version: int) -> dict[str, Any]:
    """Fill a table twice: once for RSS growth, once under tracemalloc (which costs RSS too)."""
    ips = addresses(n, version, seed=version)
    trim()
    rss0 = rss_bytes()
    table = fill(policy, ips, route, version)
    trim()
    rss = rss_bytes() - rss0
    addresses_tracked, prefixes, own = len(table), table.prefixes, table.memory_bytes()
    del table
    trim()
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    table = fill(policy, ips, route, version)
    traced = tracemalloc.get_traced_memory()[0] - traced0
    tracemalloc.stop()
    del table
    trim()
    return {
        "route": route, "ip_version": version, "addresses": addresses_tracked,
        "prefixes": prefixes, "meters": len(policy.meters),
        "tracemalloc_bytes": traced, "rss_bytes": rss, "self_reported_bytes": own,
        "bytes_per_address_tracemalloc": traced / addresses_tracked,
        "bytes_per_address_rss": rss / addresses_tracked,
    }


def measure_peer_memory(meters: int, n: int) -> dict[str, Any]:
    ips = addresses(n, 4, seed=4)
    f = make_facts("page", 4)
    trim()
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    peer = NaivePeer(meters)
    for ip, _ in ips:
        f.ip = ip
        peer.hit(f, 1000.0)
    traced = tracemalloc.get_traced_memory()[0] - traced0
    tracemalloc.stop()
    del peer
    gc.collect()
    return {"clients": n, "meters": meters, "tracemalloc_bytes": traced,
            "bytes_per_client": traced / n}


# --------------------------------------------------------------------------- time


def per_call_us(fn: Callable[[int], None], calls: int, repetitions: int) -> dict[str, float]:
    """fn(k) makes k calls; the median and spread over repetitions of µs per call."""
    samples = []
    for _ in range(repetitions):
        gc.disable()
        t0 = time.perf_counter()
        fn(calls)
        samples.append((time.perf_counter() - t0) / calls * 1e6)
        gc.enable()
    return {"median_us": statistics.median(samples), "min_us": min(samples),
            "max_us": max(samples)}


def measure_time(policy: Policy, n: int, repetitions: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ips = addresses(n, 4, seed=11)
    f = make_facts("page", 4)
    table = ClientTable(n, policy.meters, seed=2)
    now = 1000.0
    inserted = [0]

    def insert(k: int) -> None:                      # new clients, table not yet full
        start = inserted[0]
        for ip, text in ips[start:start + k]:
            f.ip, f.client = ip, text
            table.hit(f, now)
        inserted[0] = start + k
    out["hit_new_client"] = per_call_us(insert, n // (repetitions + 1), repetitions)
    insert(n - inserted[0])
    log(f"  table full: {len(table):,} addresses")

    rng = random.Random(3)
    known = rng.sample(ips, min(n, 200_000))
    # A reader's page brings its assets: the same client for 20 requests in a row.
    bursts = [c for c in known[:10_000] for _ in range(20)]

    def known_cold(k: int) -> None:                  # each a different client
        for ip, text in known[:k]:
            f.ip, f.client = ip, text
            table.hit(f, now)
    out["hit_known_client"] = per_call_us(known_cold, len(known), repetitions)

    def known_warm(k: int) -> None:
        for ip, text in bursts[:k]:
            f.ip, f.client = ip, text
            table.hit(f, now)
    out["hit_known_client_burst"] = per_call_us(known_warm, len(bursts), repetitions)

    search = make_facts("search", 4)

    def known_search(k: int) -> None:                # search also updates the prefix table
        for ip, text in known[:k]:
            search.ip, search.client = ip, text
            table.hit(search, now)
    out["hit_known_client_search"] = per_call_us(known_search, len(known), repetitions)

    def evaluate(k: int) -> None:                    # what the engine does per request
        for ip, text in bursts[:k]:
            f.ip, f.client = ip, text
            table.hit(f, now)
            policy.evaluate(f, table, now)
    out["hit_and_evaluate_page"] = per_call_us(evaluate, len(bursts), repetitions)

    fresh = addresses(200_000, 4, seed=99)
    evicted = [0]

    def evict(k: int) -> None:                       # new clients into a full table
        start = evicted[0]
        for ip, text in fresh[start:start + k]:
            f.ip, f.client = ip, text
            table.hit(f, now + 1)
        evicted[0] = start + k
    out["hit_new_client_table_full"] = per_call_us(evict, len(fresh) // repetitions,
                                                   repetitions)
    out["evictions"] = table.evictions

    def scan(k: int) -> None:                        # nothing idle: the sweep only looks
        for _ in range(k):
            table.expire(now + table.idle_ttl - 1)
    t = per_call_us(scan, 20, repetitions)
    out["expire_default_budget_none_idle_ms"] = {key: v / 1000 for key, v in t.items()}

    def sweep(k: int) -> None:                       # everything idle: the sweep removes all
        for _ in range(k):
            table.expire(now + 10_000)
    t = per_call_us(sweep, 4, repetitions)
    out["expire_default_budget_all_idle_ms"] = {key: v / 1000 for key, v in t.items()}

    # The peer updates every meter on every request; give it the page route's three to be fair.
    peer = NaivePeer(3)
    for ip, _ in known:
        f.ip = ip
        peer.hit(f, now)

    def peer_cold(k: int) -> None:
        for ip, _ in known[:k]:
            f.ip = ip
            peer.hit(f, now)
    out["peer_hit_known_client"] = per_call_us(peer_cold, len(known), repetitions)

    def peer_warm(k: int) -> None:
        for ip, _ in bursts[:k]:
            f.ip = ip
            peer.hit(f, now)
    out["peer_hit_known_client_burst"] = per_call_us(peer_warm, len(bursts), repetitions)

    d = {ip: ip for ip, _ in known}

    def noop(x: int) -> None:
        pass

    def reference(k: int) -> None:
        get = d.get
        for ip, _ in known[:k]:
            noop(get(ip))
    out["reference_dict_get_and_call"] = per_call_us(reference, len(known), repetitions)
    return out


# --------------------------------------------------------------------------- instructions

PROBES = ("loop", "hit", "hit_evaluate", "peer")


def probe(mode: str, calls: int) -> None:
    """Make `calls` calls of one kind, for a run under callgrind (see count_instructions)."""
    policy = Policy.default()
    table = ClientTable(1000, policy.meters, seed=1)
    peer = NaivePeer(3)
    f = make_facts("page", 4)
    f.ip, f.client = 0xCB007109, "203.0.113.9"
    f.user_agent = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 Chrome/126.0 Mobile"
    # One request a second: a reader well under every limit, as most requests are.
    clock = iter(range(1000, 1000 + calls))
    if mode == "loop":
        for t in clock:
            float(t)
    elif mode == "hit":
        for t in clock:
            table.hit(f, float(t))
    elif mode == "hit_evaluate":
        for t in clock:
            now = float(t)
            table.hit(f, now)
            policy.evaluate(f, table, now)
    elif mode == "peer":
        for t in clock:
            peer.hit(f, float(t))


def count_instructions() -> dict[str, float] | None:
    """CPU instructions per call, counted by valgrind's callgrind: unlike µs, they do not move
    with the machine's load. Each kind runs with 1,000 and 11,000 calls; the difference / 10,000
    leaves out start-up, and the bare loop's count is subtracted."""
    if shutil.which("valgrind") is None:
        return None
    counts: dict[str, float] = {}
    for mode in PROBES:
        totals = []
        for calls in (1000, 11000):
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                 sys.executable, "-m", MODULE, "--probe", mode, str(calls)],
                capture_output=True, text=True, timeout=600, check=True)
            m = re.search(r"Collected : (\d+)", done.stderr)
            if m is None:
                raise RuntimeError(f"no callgrind total in: {done.stderr[-500:]}")
            totals.append(int(m.group(1)))
        counts[mode] = (totals[1] - totals[0]) / 10_000
    loop = counts.pop("loop")
    return {mode: value - loop for mode, value in counts.items()}


# --------------------------------------------------------------------------- report


def fmt_us(t: dict[str, float]) -> str:
    return f"{t['median_us']:.2f} ({t['min_us']:.2f} - {t['max_us']:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--peer-clients", type=int, default=200_000,
                        help="clients for the naive peer's memory (it needs ~0.5 KB each)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-instructions", action="store_true",
                        help="skip counting instructions under valgrind (callgrind)")
    parser.add_argument("--probe", nargs=2, metavar=("KIND", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.probe[0], int(args.probe[1]))
        return 0

    pin_self(0)
    policy = Policy.default()
    report = Report("client_memory", command_line(MODULE, argv), machine_info())
    address_meters = sum(1 for m in policy.meters if m.per == "address")
    log(f"default policy: {len(policy.meters)} meters ({address_meters} per address)")

    memory = []
    for route, version in (("page", 4), ("search", 4), ("search", 6)):
        log(f"memory: {args.clients:,} IPv{version} {route} clients")
        memory.append(measure_memory(policy, args.clients, route, version))
    log(f"memory: naive peer, {args.peer_clients:,} clients")
    peer_memory = measure_peer_memory(address_meters, args.peer_clients)

    waited, quiet = wait_until_quiet([0], timeout_s=60.0)
    log(f"time: {args.clients:,} clients, {args.repetitions} repetitions"
        f" (waited {waited:.0f}s for a quiet core: {'yes' if quiet else 'no'})")
    timing = measure_time(policy, args.clients, args.repetitions)
    instructions = None
    if not args.no_instructions:
        log("instructions per call under callgrind")
        instructions = count_instructions()

    worst = max(m["bytes_per_address_tracemalloc"] for m in memory)
    worst_rss = max(m["bytes_per_address_rss"] for m in memory)
    met = worst <= TARGET_BYTES and worst_rss <= TARGET_BYTES
    report.data = {
        "target_bytes_per_client": TARGET_BYTES, "met": met, "clients": args.clients,
        "meters": [m.id for m in policy.meters], "memory": memory, "peer_memory": peer_memory,
        "time": timing, "quiet_core": quiet, "instructions_per_call": instructions,
    }

    rows = [[f"IPv{m['ip_version']} {m['route']}", f"{m['addresses']:,}", f"{m['prefixes']:,}",
             f"{m['bytes_per_address_tracemalloc']:.0f}", f"{m['bytes_per_address_rss']:.0f}",
             f"{m['self_reported_bytes'] / 2**20:.0f} MiB"] for m in memory]
    t = timing
    ref = t["reference_dict_get_and_call"]["median_us"]
    time_rows = [
        ["hit(), known client, page: 20 requests in a row (a page and its assets)",
         fmt_us(t["hit_known_client_burst"]), fmt_us(t["peer_hit_known_client_burst"])],
        ["hit(), known client, page: each request another client",
         fmt_us(t["hit_known_client"]), fmt_us(t["peer_hit_known_client"])],
        ["hit(), known client, search (+ the /24's entry)", fmt_us(t["hit_known_client_search"]),
         ""],
        ["hit(), new client, table not full", fmt_us(t["hit_new_client"]), ""],
        ["hit(), new client, table full (evicts one)", fmt_us(t["hit_new_client_table_full"]),
         ""],
        ["hit() + policy.evaluate(), page, 20 in a row (default policy, no rule matches)",
         fmt_us(t["hit_and_evaluate_page"]), ""],
        ["reference: dict.get + a function call", fmt_us(t["reference_dict_get_and_call"]), ""],
    ]
    scan, sweep = t["expire_default_budget_none_idle_ms"], t["expire_default_budget_all_idle_ms"]
    report.sections = [
        "## Verdict",
        "",
        f"- Bytes per tracked address, worst case: **{worst:.0f} B** (tracemalloc), "
        f"**{worst_rss:.0f} B** (RSS growth); target <= {TARGET_BYTES} B with "
        f"{args.clients:,} clients: **{'MET' if met else 'NOT MET'}**.",
        f"- A plain-Python peer (dict of per-client lists, {address_meters} meters) needs "
        f"{peer_memory['bytes_per_client']:.0f} B per client "
        f"({peer_memory['bytes_per_client'] / worst:.1f}x the worst case above).",
        f"- `hit()` for a reader on a page costs {t['hit_known_client_burst']['median_us']:.2f} µs "
        f"({t['hit_known_client']['median_us']:.2f} µs when every request is another client); "
        f"`hit()` + `evaluate()` {t['hit_and_evaluate_page']['median_us']:.2f} µs. For scale: "
        f"a dict lookup plus a function call takes {ref:.2f} µs on this machine in the same run.",
        "",
        f"## Memory: {args.clients:,} distinct addresses, the default policy's "
        f"{len(policy.meters)} meters",
        "",
        markdown_table(["flood", "addresses", "prefix entries", "B/address (tracemalloc)",
                        "B/address (RSS)", "table's own count"], rows),
        "",
        "IPv4 addresses are drawn at random from 1.0.0.0-223.255.255.255, IPv6 from distinct "
        "/64s under 2001::/16, so nearly every address brings its own prefix entry when the "
        "route has a prefix meter (search): the worst case. Pages have none, so a page flood "
        "makes no prefix entries. The table is sized for the clients (capacity = clients); its "
        "hash index is allocated up front and counted.",
        "",
        f"## Time per call (µs, median of {args.repetitions}, min - max), one pinned core",
        "",
        markdown_table(["call", "Kalkan µs", "peer µs (dict of lists, no bound)"], time_rows),
        "",
        f"- `expire()` with its default budget (4,096 slots of each table): "
        f"{scan['median_us']:.1f} ms when nothing is idle, {sweep['median_us']:.1f} ms when "
        "every slot it looks at is idle and removed (after a flood of one-off addresses). "
        "Called once a second, it sweeps a million clients in about four minutes.",
        f"- Evictions during the full-table run: {t['evictions']:,}.",
        "- Known clients: 200,000 drawn at random from the table, each sending one request "
        "(nothing cached), or 10,000 of them sending 20 requests in a row, as a page and its "
        "assets do. The peer counts the same three meters with a dict of lists; it has no "
        "prefix table, no bound and no eviction.",
    ]
    if instructions is not None:
        report.sections += [
            "",
            "## CPU instructions per call (callgrind; the same on a busy or an idle machine)",
            "",
            markdown_table(["call", "instructions"], [
                ["hit(), a reader under every limit, page (3 meters)",
                 f"{instructions['hit']:,.0f}"],
                ["hit() + policy.evaluate(), the same, default policy",
                 f"{instructions['hit_evaluate']:,.0f}"],
                ["peer: dict of lists, 3 meters", f"{instructions['peer']:,.0f}"],
            ]),
            "",
            "One client at one request a second, so the numbers are for warm caches; the loop "
            "around the calls is subtracted. The µs above vary with the machine's load; these "
            "counts do not, so compare changes to the hot path with them.",
        ]
    if not quiet:
        report.sections.append("- **Caution:** the core did not get quiet before the timing "
                               "runs; other work may have inflated the µs figures.")
    json_path, md_path = report.write("Client table: memory per client and time per request",
                                      args.output_dir)
    log(f"wrote {json_path} and {md_path}")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
