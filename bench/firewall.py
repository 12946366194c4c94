"""Kernel drops at scale: how fast decisions reach an nftables set, and a million entries in it.

Run as root: ``.venv/bin/python -m bench.firewall`` (about a minute). It writes
``bench/results/firewall.{json,md}``; ``--quick`` (50,000 entries) writes to
``bench/.work/quick-results/`` instead.

Everything happens inside two network namespaces that this script creates
(``kalkan-bench-<random>``) and deletes at the end, however it ends. The firewall namespace and
the client namespace are joined by a veth pair with TEST-NET style addresses (10.233.0.0/24,
10.234.0.0/24, 2001:db8:233::/64) that exist only there, so the machine's own network and
nftables rules are never touched. :class:`NetnsLab` is also what
``tests/integration/test_firewall.py`` uses.

What it measures, on one :class:`kalkan.defense.firewall.Firewall`:

1. Loading: 1,000,000 distinct IPv4 addresses, 20,000 IPv6 addresses, 10,000 IPv4 /24 and 5,000
   IPv6 /64 prefixes, queued with ``drop()`` and applied with ``flush()`` in rounds of 50,000
   (the engine flushes whatever has queued since the last flush). This gives decisions/s per
   round, so a slowdown as the set fills would show, and the cost of ``drop()`` itself.
2. Proof that the kernel holds them all: the IPv4 address set is created with ``size`` equal to
   the number of addresses, so one more distinct address must be refused as "set full". A TCP
   connection from a client address in the set must time out, and one from an address outside
   it must still work.
3. Refreshing 50,000 existing entries (a new timeout), both with the kernel's native refresh and
   with add+delete+add (the path for kernels before 6.10).
4. Batch sizes: 100,000 entries into a fresh table with 1,000, 5,000 and 20,000 per batch.
5. Replacing a leftover table that holds everything (a restart after a crash), and ``stop()``.
6. Kernel memory: the change in ``Slab`` (from /proc/meminfo) between before loading and after,
   and after stop. This is approximate, because the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import random
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    WORK_DIR,
    BenchError,
    Report,
    command_line,
    log,
    machine_info,
    markdown_table,
)
from kalkan.defense.firewall import Firewall

MODULE = "bench.firewall"
PORT = 8080

# The lab's addresses: they exist only inside the namespaces.
SERVER4, CLIENT4, NEIGHBOUR4 = "10.233.0.1", "10.233.0.2", "10.233.0.3"  # same /24
SERVER4B, OTHER4 = "10.234.0.1", "10.234.0.2"  # a second subnet: outside 10.233.0.0/24
SERVER6, CLIENT6, NEIGHBOUR6 = "2001:db8:233::1", "2001:db8:233::2", "2001:db8:233::3"

_SERVER = r"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", PORT))
s.listen(64)
while True:
    c, _ = s.accept()
    with c:
        c.sendall(b"ok\n")
"""

_CLIENT = r"""
import socket, sys
src, dst, port, timeout = sys.argv[1:5]
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(float(timeout))
s.bind((src, 0))
try:
    s.connect((dst, int(port)))
    print("ok" if s.recv(16).startswith(b"ok") else "bad reply")
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print("error", exc)
"""


# --------------------------------------------------------------------------- the lab


def lab_unavailable() -> str | None:
    """Why a namespace lab cannot run here, or ``None`` if it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool!r} not found (Debian packages iproute2, nftables)"
    return None


def _ip(*args: str, timeout: float = 10.0) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class NetnsLab:
    """Two network namespaces joined by a veth pair, and a tiny TCP server in the first.

    ``server`` is where the firewall goes (``Firewall(netns=lab.server)``); ``client`` holds
    the client addresses. Use as a context manager: both namespaces (and with them the veth
    pair) are deleted and the server process is stopped by its PID on the way out, even after
    an error. Addresses: the module's ``SERVER4``, ``CLIENT4`` etc.
    """

    def __init__(self, prefix: str = "kalkan-test") -> None:
        tag = secrets.token_hex(4)
        self.server = f"{prefix}-{tag}-s"
        self.client = f"{prefix}-{tag}-c"
        self._made: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NetnsLab:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        for ns in (self.server, self.client):
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # The veth is created inside the server namespace and its peer moved to the client
        # one at once, so no interface ever appears in the machine's own namespace.
        _ip("-n", self.server, "link", "add", "veth-s", "type", "veth",
            "peer", "name", "veth-c", "netns", self.client)
        for ns, dev, addrs in (
            (self.server, "veth-s", [f"{SERVER4}/24", f"{SERVER4B}/24"]),
            (self.client, "veth-c", [f"{CLIENT4}/24", f"{NEIGHBOUR4}/24", f"{OTHER4}/24"]),
        ):
            for addr in addrs:
                _ip("-n", ns, "addr", "add", addr, "dev", dev)
        for ns, dev, addrs in ((self.server, "veth-s", [SERVER6]),
                               (self.client, "veth-c", [CLIENT6, NEIGHBOUR6])):
            for addr in addrs:  # nodad: usable at once, no duplicate address detection wait
                _ip("-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", self.server, sys.executable, "-I", "-S", "-c",
             _SERVER.replace("PORT", str(PORT))],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while self.connect(CLIENT4, timeout=0.5) != "ok":
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise BenchError("the lab's TCP server did not come up")
            time.sleep(0.05)

    def connect(self, source: str, timeout: float = 0.8) -> str:
        """Connect from *source* (a client address) to the server: "ok", "timeout", ..."""
        dest = {CLIENT4: SERVER4, NEIGHBOUR4: SERVER4, OTHER4: SERVER4B}.get(source, SERVER6)
        done = subprocess.run(
            ["ip", "netns", "exec", self.client, sys.executable, "-I", "-S", "-c", _CLIENT,
             source, dest, str(PORT), str(timeout)],
            capture_output=True, text=True, timeout=timeout + 15, check=False)
        return done.stdout.strip() or f"client failed: {done.stderr.strip()[-300:]}"

    def nft(self, *args: str, stdin: str | None = None) -> str:
        """Run nft inside the firewall namespace; returns its output (raises on failure)."""
        done = subprocess.run(["ip", "netns", "exec", self.server, "nft", *args], input=stdin,
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise BenchError(f"nft {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def close(self) -> None:
        """Stop the server (by PID) and delete the namespaces this lab made."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        self._proc = None
        while self._made:
            ns = self._made.pop()
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30,
                           check=False)


# --------------------------------------------------------------------------- workload


def v4_addresses(count: int, seed: int) -> list[str]:
    """*count* distinct public-looking IPv4 addresses (a bijection of 0..count-1 onto 2**32)."""
    rng = random.Random(seed)
    mul = rng.randrange(1 << 31) * 2 + 1  # odd, so i -> i*mul+add mod 2**32 is one-to-one
    add = rng.randrange(1 << 32)
    skip = [(int(n.network_address), int(n.broadcast_address)) for n in map(
        ipaddress.ip_network, ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "10.233.0.0/16",
                               "10.234.0.0/16"))]
    out: list[str] = []
    i = 0
    while len(out) < count:
        v = (i * mul + add) & 0xFFFFFFFF
        i += 1
        if not any(lo <= v <= hi for lo, hi in skip):
            out.append(f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}")
    return out


def v6_addresses(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    base = int(ipaddress.IPv6Address("2001:db8::")) + (1 << 80)  # away from the lab's /64
    return list({str(ipaddress.IPv6Address(base + rng.getrandbits(80))): None
                 for _ in range(count)})


def v4_prefixes(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    firsts = [n for n in range(11, 224) if n not in (127, 169)]  # protected, link-local
    picked = {f"{rng.choice(firsts)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
              for _ in range(count * 2)}
    return sorted(picked)[:count]


def v6_prefixes(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    base = int(ipaddress.IPv6Address("2001:db8::")) + (1 << 90)
    return list({f"{ipaddress.IPv6Address(base + (rng.getrandbits(26) << 64))}/64": None
                 for _ in range(count)})


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the nft runs), user and system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def slab_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


def settled_slab(wait: float = 2.0) -> int:
    """Slab after a pause: namespace and set teardown frees memory in the background."""
    time.sleep(wait)
    return slab_kib()


def load(fw: Firewall, targets: Sequence[str], round_size: int, ttl: float = 3600.0
         ) -> dict[str, Any]:
    """Queue and flush *targets* in rounds; returns timings per round and in total."""
    rounds = []
    drop_s = flush_s = 0.0
    applied = 0
    cpu0 = _cpu_seconds()
    for i in range(0, len(targets), round_size):
        chunk = targets[i:i + round_size]
        t0 = time.perf_counter()
        for target in chunk:
            fw.drop(target, ttl)
        t1 = time.perf_counter()
        c1 = _cpu_seconds()
        done = fw.flush()
        t2 = time.perf_counter()
        flush_cpu = _cpu_seconds() - c1
        drop_s += t1 - t0
        flush_s += t2 - t1
        applied += done
        rounds.append({"entries": len(chunk), "applied": done, "drop_s": t1 - t0,
                       "flush_s": t2 - t1, "per_s": done / (t2 - t1), "flush_cpu_s": flush_cpu,
                       "per_flush_cpu_s": done / flush_cpu if flush_cpu else 0.0})
    cpu = _cpu_seconds() - cpu0  # nft (user + kernel) and this process: drop() and flush()
    return {"entries": len(targets), "applied": applied, "drop_s": drop_s, "flush_s": flush_s,
            "per_s": applied / flush_s if flush_s else 0.0, "cpu_s": cpu,
            "per_cpu_s": applied / cpu if cpu else 0.0,
            "drop_us_each": drop_s / max(1, len(targets)) * 1e6, "rounds": rounds}


# --------------------------------------------------------------------------- the benchmark


def run(addresses: int, round_size: int, batch_size: int) -> dict[str, Any]:
    extra = {"v6_addresses": addresses // 50, "v4_prefixes": addresses // 100,
             "v6_prefixes": addresses // 200}
    log(f"generating {addresses:,} IPv4 addresses and {sum(extra.values()):,} other targets")
    v4 = [*v4_addresses(addresses - 1, seed=1), CLIENT4]  # the lab's client is one of them
    others = (v6_addresses(extra["v6_addresses"], 2) + v4_prefixes(extra["v4_prefixes"], 3)
              + v6_prefixes(extra["v6_prefixes"], 4))
    data: dict[str, Any] = {"settings": {"addresses": addresses, "round_size": round_size,
                                         "batch_size": batch_size, **extra}}
    with NetnsLab("kalkan-bench") as lab:
        log(f"namespaces {lab.server} (firewall) and {lab.client} (client)")
        fw = Firewall(netns=lab.server, batch_size=batch_size, max_entries=addresses)
        slab_before = settled_slab()
        t0 = time.perf_counter()
        fw.start()
        data["start_s"] = time.perf_counter() - t0
        data["refresh_mode"] = fw.refresh
        before = lab.connect(CLIENT4)
        log(f"loading {addresses:,} IPv4 addresses in rounds of {round_size:,}")
        data["load_v4"] = load(fw, v4, round_size)
        log(f"  {data['load_v4']['per_s']:,.0f}/s; loading the IPv6 addresses and prefixes")
        data["load_other"] = load(fw, others, round_size)
        data["sizes"] = list(fw.sizes())
        slab_loaded = settled_slab()

        log("checking the kernel holds them all")
        listed = set(v4)
        fw.drop(next(a for a in v4_addresses(100, seed=99) if a not in listed), 3600)
        fw.flush()
        stats = fw.stats()
        data["one_more_refused_as_full"] = stats.set_full and stats.failed == 1
        data["connect"] = {"listed_before": before, "listed_after": lab.connect(CLIENT4),
                           "unlisted_after": lab.connect(OTHER4)}

        log("refreshing 50,000 existing entries")
        sample = v4[:: max(1, len(v4) // 50_000)][:50_000]
        data["refresh_native"] = load(fw, sample, round_size, ttl=7200.0)
        data["refresh_native"]["mode"] = fw.refresh
        readd = Firewall("kalkan_readd", netns=lab.server, batch_size=batch_size,
                         refresh="readd", max_entries=addresses)
        readd.start()
        load(readd, sample, round_size)  # present first, so the second pass refreshes
        data["refresh_readd"] = load(readd, sample, round_size, ttl=7200.0)
        readd.stop()

        log("replacing the leftover table (restart after a crash), then stop")
        t0 = time.perf_counter()
        fw.start()
        data["replace_leftover_s"] = time.perf_counter() - t0
        data["connect"]["listed_after_replace"] = lab.connect(CLIENT4)
        t0 = time.perf_counter()
        fw.stop()
        data["stop_s"] = time.perf_counter() - t0
        data["tables_after_stop"] = lab.nft("list", "tables").strip()
        slab_after = settled_slab()
        data["slab_kib"] = {"before": slab_before, "loaded": slab_loaded, "after_stop": slab_after}

        batch_runs = []
        trial_entries = v4[:100_000]
        for size in (1000, 5000, 20000):
            log(f"batch size {size:,}: {len(trial_entries):,} entries into a fresh table")
            trial = Firewall("kalkan_batch", netns=lab.server, batch_size=size)
            trial.start()
            result = load(trial, trial_entries, len(trial_entries))
            trial.stop()
            batch_runs.append({"batch_size": size, "entries": len(trial_entries),
                               "per_s": result["per_s"], "per_cpu_s": result["per_cpu_s"],
                               "flush_s": result["flush_s"]})
        data["batch_sizes"] = batch_runs
    return data


def verdict(data: dict[str, Any]) -> dict[str, Any]:
    load_v4 = data["load_v4"]
    slowest = min(r["per_s"] for r in load_v4["rounds"])
    held = data["load_v4"]["applied"]
    connect = data["connect"]
    return {
        "decisions_per_s": load_v4["per_s"],
        "slowest_round_per_s": slowest,
        "rate_met": slowest >= 10_000,
        "entries_v4": held,
        "entries_met": held >= 1_000_000 and data["one_more_refused_as_full"],
        "entries_total": data["sizes"][0] + data["sizes"][1],
        "drops_work": connect["listed_after"] == "timeout" and connect["unlisted_after"] == "ok",
    }


def markdown(data: dict[str, Any], v: dict[str, Any]) -> list[str]:
    s = data["settings"]
    load_v4, other = data["load_v4"], data["load_other"]
    slab = data["slab_kib"]
    grown = slab["loaded"] - slab["before"]
    total = data["sizes"][0] + data["sizes"][1]
    rounds = load_v4["rounds"]
    pick = sorted({0, len(rounds) // 2, len(rounds) - 1})
    out = [
        "## Verdict",
        "",
        f"- Decisions applied: **{v['decisions_per_s']:,.0f}/s** over {s['addresses']:,} IPv4 "
        f"addresses (slowest round of {s['round_size']:,}: {v['slowest_round_per_s']:,.0f}/s); "
        f"target >= 10,000/s: **{'MET' if v['rate_met'] else 'NOT MET'}**. In CPU time "
        f"(nft in user and kernel space, plus `drop()` and `flush()`): "
        f"{load_v4['per_cpu_s']:,.0f} decisions per CPU-second, which does not depend on how "
        f"busy the shared machine was",
        f"- Entries: **{v['entries_v4']:,}** IPv4 addresses in one set (the kernel refused one "
        f"more as full: {'yes' if data['one_more_refused_as_full'] else 'NO'}), "
        f"{data['sizes'][1]:,} IPv6 entries and {s['v4_prefixes']:,} IPv4 /24 prefixes besides "
        f"({v['entries_total']:,} in all); "
        f"target 1 million: **{'MET' if v['entries_met'] else 'NOT MET'}**",
        f"- With all of them in place, a TCP connect from a listed client address: "
        f"`{data['connect']['listed_after']}` (before: `{data['connect']['listed_before']}`); "
        f"from an address outside the set: `{data['connect']['unlisted_after']}`",
        f"- Kernel memory (Slab, approximate on a shared machine): +{grown / 1024:,.0f} MiB "
        f"for {total:,} entries, about {grown * 1024 / max(1, total):,.0f} bytes each; "
        f"{(slab['after_stop'] - slab['before']) / 1024:+,.0f} MiB after stop",
        "",
        "## Loading",
        "",
        f"Each round queues entries with `drop()` (from one thread) and applies them with one "
        f"`flush()`, which runs `nft -f -` once per {s['batch_size']:,} entries. The refresh "
        f"mode is `{data['refresh_mode']}` (probed at start).",
        "",
        markdown_table(
            ["what", "entries", "flush s", "applied/s", "per CPU-second", "drop() µs each"],
            [["IPv4 addresses", f"{load_v4['entries']:,}", f"{load_v4['flush_s']:.1f}",
              f"{load_v4['per_s']:,.0f}", f"{load_v4['per_cpu_s']:,.0f}",
              f"{load_v4['drop_us_each']:.1f}"],
             ["IPv6 addresses, IPv4 /24, IPv6 /64", f"{other['entries']:,}",
              f"{other['flush_s']:.1f}", f"{other['per_s']:,.0f}", f"{other['per_cpu_s']:,.0f}",
              f"{other['drop_us_each']:.1f}"],
             *[[f"IPv4 round {i + 1} of {len(rounds)}", f"{rounds[i]['entries']:,}",
                f"{rounds[i]['flush_s']:.2f}", f"{rounds[i]['per_s']:,.0f}",
                f"{rounds[i]['per_flush_cpu_s']:,.0f} (flush only)", ""] for i in pick]],
        ),
        "",
        "## Refreshing existing entries (a new timeout)",
        "",
        markdown_table(
            ["mode", "entries", "applied/s", "per CPU-second"],
            [[f"`add` (probed: {data['refresh_native']['mode']})",
              f"{data['refresh_native']['entries']:,}", f"{data['refresh_native']['per_s']:,.0f}",
              f"{data['refresh_native']['per_cpu_s']:,.0f}"],
             ["add+delete+add (kernels before 6.10)", f"{data['refresh_readd']['entries']:,}",
              f"{data['refresh_readd']['per_s']:,.0f}",
              f"{data['refresh_readd']['per_cpu_s']:,.0f}"]],
        ),
        "",
        f"## Batch size ({data['batch_sizes'][0]['entries']:,} entries into an empty table)",
        "",
        markdown_table(["batch size", "applied/s", "per CPU-second", "flush s"],
                       [[f"{b['batch_size']:,}", f"{b['per_s']:,.0f}", f"{b['per_cpu_s']:,.0f}",
                         f"{b['flush_s']:.2f}"] for b in data["batch_sizes"]]),
        "",
        "## Lifecycle",
        "",
        f"- `start()` on an empty namespace (with the refresh probe): {data['start_s']:.2f} s",
        f"- `start()` replacing a leftover table with all {total:,} entries: "
        f"{data['replace_leftover_s']:.2f} s; afterwards the listed client connects: "
        f"`{data['connect']['listed_after_replace']}`",
        f"- `stop()`: {data['stop_s']:.2f} s; tables left in the namespace: "
        f"`{data['tables_after_stop'] or 'none'}`",
        "",
        "## Method",
        "",
        "Two network namespaces made for the run and deleted after it, joined by a veth pair; "
        "the firewall's table lives in one, the client addresses in the other. IPv4 addresses "
        "are distinct by construction; the set's `size` equals their number, so the kernel "
        "refusing one more proves they are all held. Sets are never listed: a dump of a large "
        "hash set is quadratic in the kernel (about 2 minutes at a million entries).",
    ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.firewall", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="50,000 addresses; results to bench/.work/quick-results/")
    parser.add_argument("--addresses", type=int, default=None, help="IPv4 addresses to load")
    parser.add_argument("--round-size", type=int, default=50_000,
                        help="entries queued between flushes")
    parser.add_argument("--batch-size", type=int, default=5000, help="entries per nft run")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    why = lab_unavailable()
    if why:
        print(f"bench.firewall: {why}", file=sys.stderr)
        return 2
    addresses = args.addresses or (50_000 if args.quick else 1_000_000)
    out_dir = args.output_dir or (WORK_DIR / "quick-results" if args.quick else RESULTS_DIR)
    nft_version = subprocess.run(["nft", "--version"], capture_output=True, text=True,
                                 check=False).stdout.strip()
    report = Report(name="firewall", command=command_line(MODULE, argv),
                    machine=machine_info({"nft": nft_version}))
    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        data = run(addresses, args.round_size, args.batch_size)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    v = verdict(data)
    report.data.update({"verdict": v, **data})
    report.sections.extend(markdown(data, v))
    json_path, md_path = report.write("Kernel drops: nftables sets at a million entries", out_dir)
    log(f"wrote {json_path} and {md_path}")
    log(f"{v['decisions_per_s']:,.0f} decisions/s, {v['entries_v4']:,} IPv4 entries, "
        f"drops work: {v['drops_work']}")
    return 0 if v["rate_met"] and v["entries_met"] and v["drops_work"] else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
