"""Tail latency below saturation: Kalkan against nginx proxy_cache (and Varnish with ``--only``)
at fixed offered rates of the readers load, many runs pooled into one distribution per server.

Run from the project root::

    .venv/bin/python -m bench.tail_latency            # results in bench/results/tail_latency.*
    .venv/bin/python -m bench.tail_latency --quick    # smoke test, results in bench/.work/
    .venv/bin/python -m bench.tail_latency --rates 10000,25000 --repetitions 3

Issue 8 asks for a p99 no worse than nginx's. wrk cannot say (at saturation its latencies are its
own queue, and its core saturates first with Kalkan), and one fixed-rate run cannot either: on
this shared machine one run's p99 moves 2-50x from the next's while the servers differ by
10-20%. So this bench:

  1. measures each server's capacity on the readers load with short wrk runs (readers/20k, as
     ``bench.throughput``) and offers every server the same rates, two shares of the slowest
     one's median (``SHARES``: a light and a busy load, both below every capacity);
  2. runs ``bench/fixed_rate.c`` (open loop, latency from each request's scheduled time; see
     ``bench/fixed_rate.py``) against each server fresh, interleaved: every repetition offers
     every rate to every server in turn, the servers' order rotating, so a noisy minute of the
     machine falls on all of them;
  3. keeps every latency (``--latencies``) and pools each server's runs at a rate into one
     distribution: its percentiles are the headline, next to each run's own p99;
  4. says how sure that is: the ratio of the pooled p99s with a bootstrap interval over runs
     (runs drawn again with replacement, ``BOOTSTRAP`` times), and how often Kalkan's run beat
     nginx's run of the same repetition.

Every server runs pinned to core 1; the client, wrk, the origin and this script on core 0.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    LOAD_CPU,
    RESULTS_DIR,
    SERVER_CPU,
    WORK_DIR,
    BenchError,
    Report,
    Stopper,
    command_line,
    cpu_count,
    guarded,
    log,
    machine_info,
    markdown_table,
    parse_only,
    percentile,
    pin_self,
    scratch_dir,
    spread,
)
from bench.fixed_rate import LATE_MS, read_latencies, run_fixed_rate
from bench.fixed_rate import clean as fixed_rate_clean
from bench.peers import Origin, start_origin, start_proxy
from bench.throughput import (
    BENCH_PATH,
    BODY_SIZE,
    Cell,
    check_origin,
    counter_delta,
    hit_run,
    measure_peer,
)
from bench.throughput import Settings as WrkSettings

MODULE = "bench.tail_latency"
PEERS = ("kalkan", "nginx", "varnish")
DEFAULT_PEERS = ("kalkan", "nginx")
"""The target compares Kalkan with nginx; Varnish doubles the run's length (``--only``)."""
SHARES = (0.4, 0.7)
"""The offered rates: these shares of the slowest server's median wrk req/s (readers/20k),
rounded down to two significant digits. 70%: busy, 30% headroom left; 40%: a light load."""
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
BOOTSTRAP = 2000
"""Resamplings of the runs for the interval of the p99 ratio."""
BINS = np.geomspace(0.001, 10_000.0, 2001)
"""Histogram edges in ms (1 µs to 10 s, ~0.8% apart): the bootstrap sums runs' histograms."""
SEED = 8


@dataclass
class Settings:
    """One run's knobs (``--quick`` shrinks them)."""

    peers: list[str] = field(default_factory=lambda: list(DEFAULT_PEERS))
    rates: list[float] | None = None
    """Offered req/s; None = SHARES of the slowest server's capacity, measured first."""
    repetitions: int = 5
    duration_s: float = 15.0
    """Measured seconds per fixed-rate run."""
    warmup_s: float = 2.0
    """Seconds at the same rate before each run, not recorded."""
    connections: int = 64
    probe_s: int = 5
    """Seconds per wrk run of the capacity probe (two per server)."""
    quiet_timeout_s: float = 60.0
    """Before each run, wait up to this long for both cores to be idle (0 = don't)."""
    quick: bool = False


def round_rate(rps: float) -> float:
    """*rps* rounded down to two significant digits (27,528 -> 27,000; 1,234 -> 1,200)."""
    if rps < 10:
        return float(max(1, math.floor(rps)))
    step = 10 ** (math.floor(math.log10(rps)) - 1)
    return float(math.floor(rps / step) * step)


def plan_rates(capacities: dict[str, float], shares: tuple[float, ...] = SHARES
               ) -> tuple[list[float], dict[str, Any]]:
    """The rates to offer every server, and how they were chosen, from each server's median
    wrk req/s."""
    if not capacities:
        raise BenchError("no capacity measured: give --rates")
    slowest = min(capacities, key=lambda name: capacities[name])
    rates = [round_rate(share * capacities[slowest]) for share in shares]
    return rates, {
        "how": f"{', '.join(f'{s:.0%}' for s in shares)} of the slowest server's median wrk "
               f"req/s on readers/20k ({slowest}, {capacities[slowest]:,.0f}), rounded down",
        "shares": list(shares), "basis_peer": slowest, "wrk_medians": capacities,
    }


def probe_capacity(settings: Settings, origin: Origin, work: Path, stopper: Stopper
                   ) -> dict[str, float]:
    """Each server's median req/s over two short wrk runs of the readers load (20 KB)."""
    wrk = WrkSettings(peers=settings.peers, duration_s=settings.probe_s, warmup_s=1,
                      repetitions=2, connections=settings.connections,
                      quiet_timeout_s=settings.quiet_timeout_s, extras=False)
    found: dict[str, list[float]] = {}
    for rep in range(wrk.repetitions):
        for name in settings.peers:
            sample = hit_run(name, Cell("readers", "20k"), origin,
                             work / f"{name}-probe-{rep}", stopper, wrk)
            found.setdefault(name, []).append(sample["requests_per_s"])
            log(f"capacity probe: {name} {sample['requests_per_s']:,.0f} req/s")
    return {name: percentile(values, 50) for name, values in found.items()}


def one_run(name: str, rate: float, origin: Origin, work: Path, stopper: Stopper,
            settings: Settings) -> tuple[dict[str, Any], np.ndarray]:
    """Start *name* fresh, fill its cache, offer it *rate* req/s (warm-up, then the measured
    seconds) and stop it; returns the client's summary and every latency in ms."""
    latencies = work / "latencies.bin"
    proxy = start_proxy(name, origin.port, work, stopper, "throughput", SERVER_CPU)
    run = measure_peer(
        proxy, Cell("readers", "20k"), settings.quiet_timeout_s, stopper,
        f"serving {rate:,.0f} req/s",
        lambda url: run_fixed_rate(url, rate, settings.duration_s, settings.connections,
                                   warmup_s=settings.warmup_s, proxy_pid=proxy.proc.pid,
                                   latencies_file=latencies))
    result: dict[str, Any] = run.result
    _, ms = read_latencies(latencies)
    latencies.unlink()
    counters = counter_delta(run.before, run.after)
    result.update(peer=name, rate=rate, waited_for_quiet_s=round(run.waited_s, 1),
                  machine_was_quiet=run.quiet, clean=fixed_rate_clean(result),
                  cache_counters=counters,
                  all_hits=counters.get("hits", 0) >= result["sent"] + result["warmup_sent"])
    return result, ms.astype(np.float32)


def quantiles(ms: np.ndarray) -> dict[str, float]:
    """The PERCENTILES, the max and the mean of latencies *ms*, in ms."""
    out = {f"p{q:g}": float(np.percentile(ms, q)) for q in PERCENTILES}
    out.update(max=float(ms.max()), mean=float(ms.mean()))
    return out


def histogram_p99(hist: np.ndarray) -> float:
    """The p99 of a BINS histogram (the upper edge of the bin it falls in)."""
    cumulative = np.cumsum(hist)
    return float(BINS[1:][np.searchsorted(cumulative, 0.99 * cumulative[-1])])


def bootstrap_ratio(mine: list[np.ndarray], theirs: list[np.ndarray],
                    rounds: int = BOOTSTRAP) -> dict[str, float]:
    """The ratio of pooled p99s (mine / theirs) when each side's runs are drawn again with
    replacement: its median and 5th-95th percentiles (a 90% interval)."""
    rng = np.random.default_rng(SEED)
    hm = np.array([np.histogram(ms, BINS)[0] for ms in mine])
    ht = np.array([np.histogram(ms, BINS)[0] for ms in theirs])
    ratios = []
    for _ in range(rounds):
        a = hm[rng.integers(0, len(hm), len(hm))].sum(axis=0)
        b = ht[rng.integers(0, len(ht), len(ht))].sum(axis=0)
        ratios.append(histogram_p99(a) / histogram_p99(b))
    low, mid, high = np.percentile(ratios, [5, 50, 95])
    return {"median": float(mid), "low": float(low), "high": float(high),
            "share_at_most_1": float(np.mean(np.array(ratios) <= 1.0))}


def summarize(settings: Settings, rates: list[float], basis: dict[str, Any],
              runs: list[dict[str, Any]], latencies: dict[tuple[float, str], list[np.ndarray]]
              ) -> dict[str, Any]:
    """Per rate: each server's pooled distribution and runs, and Kalkan against nginx."""
    by_rate = []
    verdicts = []
    for rate in rates:
        servers = {}
        for name in settings.peers:
            arrays = latencies.get((rate, name), [])
            mine = [r for r in runs if r["rate"] == rate and r["peer"] == name]
            if not arrays:
                continue
            servers[name] = {
                "runs": len(mine),
                "requests": int(sum(len(a) for a in arrays)),
                "pooled_ms": quantiles(np.concatenate(arrays)),
                "run_p99_ms": spread([r["latency_ms"]["p99"] for r in mine]),
                "over_1ms_per_million": 1e6 * float(sum((a > 1.0).sum() for a in arrays))
                / max(1, sum(len(a) for a in arrays)),
                "late_sends": sum(r["late_sends"] for r in mine),
                "errors": sum(r["errors_total"] + r["non_2xx"] for r in mine),
                "all_runs_clean": all(r["clean"] for r in mine),
                "all_hits": all(r["all_hits"] for r in mine),
                "proxy_own_cpu_pct": spread([r["cpu_busy_pct"]["proxy_own"] for r in mine]),
                "client_own_cpu_pct": spread([r["cpu_busy_pct"]["client_own"] for r in mine]),
            }
        entry: dict[str, Any] = {"rate": rate, "servers": servers}
        if "kalkan" in servers and "nginx" in servers:
            k, n = servers["kalkan"]["pooled_ms"]["p99"], servers["nginx"]["pooled_ms"]["p99"]
            pairs = [(a["latency_ms"]["p99"], b["latency_ms"]["p99"])
                     for a in runs for b in runs
                     if a["rate"] == b["rate"] == rate and a["peer"] == "kalkan"
                     and b["peer"] == "nginx" and a["repetition"] == b["repetition"]]
            km, nm = servers["kalkan"]["run_p99_ms"]["median"], \
                servers["nginx"]["run_p99_ms"]["median"]
            met = k <= n and km <= nm
            entry["kalkan_vs_nginx"] = {
                "kalkan_p99_ms": k, "nginx_p99_ms": n, "ratio": k / n,
                "kalkan_run_p99_median_ms": km, "nginx_run_p99_median_ms": nm,
                "run_median_ratio": km / nm, "met": met,
                "bootstrap": bootstrap_ratio(latencies[(rate, "kalkan")],
                                             latencies[(rate, "nginx")]),
                "repetitions_kalkan_not_worse": sum(a <= b for a, b in pairs),
                "repetitions": len(pairs),
            }
            verdicts.append(met)
        by_rate.append(entry)
    return {
        "settings": {"peers": settings.peers, "quick": settings.quick,
                     "repetitions": settings.repetitions, "duration_s": settings.duration_s,
                     "warmup_s": settings.warmup_s,
                     "connections": settings.connections, "late_ms": LATE_MS,
                     "cell": "readers/20k", "path": BENCH_PATH, "body_bytes": BODY_SIZE},
        "rates": rates,
        "basis": basis,
        "by_rate": by_rate,
        "target": {"what": "p99 no worse than nginx's at every rate, pooled and the runs' median",
                   "met": bool(verdicts) and all(verdicts),
                   "measured": bool(verdicts)},
        "runs": runs,
    }


def _ms(value: float) -> str:
    return f"{value:.3f}"


def markdown_sections(data: dict[str, Any]) -> list[str]:
    """The verdict, a table per rate, how it was measured, and every run."""
    s = data["settings"]
    t = data["target"]
    out = ["## Verdict", ""]
    for entry in data["by_rate"]:
        kn = entry.get("kalkan_vs_nginx")
        if kn is None:
            continue
        b = kn["bootstrap"]
        out.append(
            f"- {entry['rate']:,.0f} req/s: pooled p99 Kalkan **{_ms(kn['kalkan_p99_ms'])} ms** vs "
            f"nginx **{_ms(kn['nginx_p99_ms'])} ms** ({kn['ratio']:.2f}x; runs drawn again "
            f"{BOOTSTRAP:,} times: {b['low']:.2f}-{b['high']:.2f}x, at most 1.0 in "
            f"{b['share_at_most_1']:.0%}); the runs' median p99 "
            f"{_ms(kn['kalkan_run_p99_median_ms'])} vs {_ms(kn['nginx_run_p99_median_ms'])} ms "
            f"({kn['run_median_ratio']:.2f}x); Kalkan's run not worse than nginx's in "
            f"{kn['repetitions_kalkan_not_worse']} of {kn['repetitions']} repetitions: "
            f"{'met' if kn['met'] else '**not met**'}")
    if t["measured"]:
        out.append(f"- **{t['what']}: {'MET' if t['met'] else 'NOT MET'}**")
    out += ["", "## How", "",
            f"Rates: {', '.join(f'{r:,.0f}' for r in data['rates'])} req/s "
            f"({data['basis']['how']}), offered by `bench/fixed_rate.c` over "
            f"{s['connections']} keep-alive connections: {s['warmup_s']:g} s of warm-up, then "
            f"{s['duration_s']:g} s measured, each latency from the request's scheduled send "
            f"time. Each server fresh, pinned to core 1, its cache filled first; "
            f"{s['repetitions']} repetitions, each offering every rate to every server in "
            "turn (the order rotating). Pooled: every latency of a server's runs at a rate in "
            "one distribution (what readers met over the whole time, rare stalls of the machine "
            "included); the runs' median p99: the middle run's (a typical window, robust to one "
            "disturbed run). The target needs both no worse than nginx's. Each request a "
            "reader's (its own User-Agent and cookie), "
            f"`GET {s['path']}` ({s['body_bytes']:,} bytes)."]
    for entry in data["by_rate"]:
        out += ["", f"## {entry['rate']:,.0f} req/s", ""]
        rows = []
        for name, p in entry["servers"].items():
            q = p["pooled_ms"]
            rows.append([name, p["runs"], f"{p['requests']:,}", _ms(q["p50"]), _ms(q["p90"]),
                         f"**{_ms(q['p99'])}**", _ms(q["p99.9"]), _ms(q["p99.99"]),
                         f"{q['max']:.2f}",
                         f"{_ms(p['run_p99_ms']['median'])} ({_ms(p['run_p99_ms']['min'])} - "
                         f"{_ms(p['run_p99_ms']['max'])})",
                         f"{p['over_1ms_per_million']:,.0f}", p["late_sends"], p["errors"],
                         "yes" if p["all_hits"] else "**NO**",
                         f"{p['proxy_own_cpu_pct']['median']:.0f}% / "
                         f"{p['client_own_cpu_pct']['median']:.0f}%"])
        out.append(markdown_table(
            ["server", "runs", "requests", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
             "p99.99 ms", "max ms", "runs' p99 ms: median (min - max)", "> 1 ms per million",
             f"sent late (> {s['late_ms']:g} ms)", "errors", "all hits",
             "CPU server / client"], rows))
    out += ["", "## Every run", ""]
    out.append(markdown_table(
        ["rep", "rate", "server", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "achieved req/s",
         "late", "errors", "quiet before"],
        [[r["repetition"], f"{r['rate']:,.0f}", r["peer"], _ms(r["latency_ms"]["p50"]),
          _ms(r["latency_ms"]["p99"]), _ms(r["latency_ms"]["p99.9"]),
          f"{r['latency_ms']['max']:.2f}", f"{r['achieved_rate']:,.0f}", r["late_sends"],
          r["errors_total"] + r["non_2xx"], "yes" if r["machine_was_quiet"] else "no"]
         for r in data["runs"]]))
    return out


def plot(data: dict[str, Any], latencies: dict[tuple[float, str], list[np.ndarray]],
         path: Path) -> None:
    """Per rate, each server's pooled latency against the percentile (a 'nines' axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = data["rates"]
    fig, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 4.5), squeeze=False)
    nines = np.linspace(0, 4, 400)  # 0 = p0, 2 = p99, 4 = p99.99
    for ax, rate in zip(axes[0], rates, strict=True):
        for name in data["settings"]["peers"]:
            arrays = latencies.get((rate, name))
            if not arrays:
                continue
            pooled = np.concatenate(arrays)
            line = ax.plot(nines, np.percentile(pooled, 100 * (1 - 10.0 ** -nines)),
                           label=f"{name} (pooled)", linewidth=2)[0]
            for ms in arrays:
                ax.plot(nines, np.percentile(ms, 100 * (1 - 10.0 ** -nines)),
                        color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks([0, 1, 2, 3, 4], ["p0", "p90", "p99", "p99.9", "p99.99"])
        ax.axvline(2, color="grey", linewidth=0.5)
        ax.set_title(f"{rate:,.0f} req/s offered (readers, 20 KB)")
        ax.set_ylabel("latency, ms (log)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(settings: Settings, output_dir: Path) -> Path:
    """Probe, run every repetition, write the JSON, Markdown and PNG into *output_dir*."""
    if cpu_count() < 2:
        raise BenchError("needs 2 usable cores: the servers on core 1, the load on core 0")
    report = Report(name="tail_latency", command=command_line(MODULE), machine=machine_info())
    pin_self(LOAD_CPU)
    runs: list[dict[str, Any]] = []
    latencies: dict[tuple[float, str], list[np.ndarray]] = {}
    with Stopper() as stopper, scratch_dir("tail-latency") as work:
        origin = start_origin(work / "origin", stopper, False, LOAD_CPU)
        check_origin(origin)
        if settings.rates:
            rates, basis = settings.rates, {"how": "given with --rates"}
        else:
            rates, basis = plan_rates(probe_capacity(settings, origin, work, stopper))
        log(f"rates: {', '.join(f'{r:,.0f}' for r in rates)} req/s ({basis['how']})")
        for rep in range(settings.repetitions):
            order = settings.peers[rep % len(settings.peers):] + \
                settings.peers[:rep % len(settings.peers)]
            for rate in rates:
                for name in order:
                    log(f"{rate:,.0f} req/s: {name}, repetition {rep + 1}/{settings.repetitions}")
                    result, ms = one_run(name, rate, origin, work / f"{name}-{rate:g}-{rep}",
                                         stopper, settings)
                    result["repetition"] = rep + 1
                    runs.append(result)
                    latencies.setdefault((rate, name), []).append(ms)
                    lat = result["latency_ms"]
                    log(f"  p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms, p99.9 "
                        f"{lat['p99.9']:.3f} ms, {result['late_sends']} sent late, "
                        f"{result['errors_total']} errors")
    report.data = summarize(settings, rates, basis, runs, latencies)
    report.sections = markdown_sections(report.data)
    output_dir.mkdir(parents=True, exist_ok=True)
    _, md_path = report.write("Tail latency at fixed rates: Kalkan vs nginx proxy_cache",
                              output_dir)
    plot(report.data, latencies, output_dir / "tail_latency.png")
    log(f"wrote {md_path} and tail_latency.png")
    return md_path


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rates {text!r}: comma-separated numbers") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"--rates {text!r}: positive req/s values")
    return rates


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 s runs at 2,000 req/s, 1 repetition; results in "
                             "bench/.work/")
    parser.add_argument("--only", default=",".join(DEFAULT_PEERS),
                        help=f"servers, from {', '.join(PEERS)} (default: kalkan,nginx)")
    parser.add_argument("--rates", type=_rates, default=None,
                        help="offered req/s, comma-separated (default: "
                             f"{', '.join(f'{s:.0%}' for s in SHARES)} of the slowest "
                             "server's capacity, measured first)")
    parser.add_argument("--repetitions", type=int, default=None, help="runs per rate and server "
                        "(5)")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per run (15)")
    parser.add_argument("--quiet-timeout", type=float, default=60.0,
                        help="wait up to this long for idle cores before each run (0 = don't)")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    def body() -> None:
        settings = Settings(
            peers=parse_only(args.only, PEERS),
            rates=args.rates or ([2000.0] if args.quick else None),
            repetitions=args.repetitions or (1 if args.quick else 5),
            duration_s=args.duration or (2.0 if args.quick else 15.0),
            warmup_s=1.0 if args.quick else 2.0,
            quiet_timeout_s=args.quiet_timeout,
            quick=args.quick,
        )
        output = args.output_dir or (WORK_DIR / "quick-results" if args.quick else RESULTS_DIR)
        run(settings, output)

    return guarded(MODULE, body)


if __name__ == "__main__":
    sys.exit(main())
