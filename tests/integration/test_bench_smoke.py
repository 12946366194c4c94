"""Smoke tests for bench/: parsers and guards, and real nginx/Varnish behind a stand-in origin.

These do not measure anything; they check that the benchmark scripts still work, so a broken
benchmark is caught by `make test` rather than on the day numbers are needed.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench import cache_conformance, common, peers, throughput  # noqa: E402

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:8080/bench/20k
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.60ms  412.00us  12.30ms   90.00%
    Req/Sec    26.00k     1.10k   27.50k    85.00%
  Latency Distribution
     50%    2.57ms
     75%    2.80ms
     90%    3.01ms
     99%  950.00us
  52047 requests in 2.00s, 1.03GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:  25995.10
Transfer/sec:    517.00MB
"""


@pytest.mark.parametrize(
    "target", ["127.0.0.1", "127.8.9.10:80", "http://127.0.0.1:9/x", "[::1]:8080", "localhost:1"]
)
def test_loopback_targets_pass(target: str) -> None:
    assert common.require_loopback(target) == target


@pytest.mark.parametrize(
    "target", ["10.0.0.1", "192.168.1.1:80", "http://8.8.8.8/", "example.org", "http://[2001:db8::1]/"]
)
def test_other_targets_are_refused(target: str) -> None:
    with pytest.raises(common.BenchError):
        common.require_loopback(target)


def test_wrk_output_is_parsed() -> None:
    result = throughput.parse_wrk(WRK_OUTPUT, "wrk ...")
    assert result.requests_per_s == pytest.approx(25995.10)
    assert result.requests == 52047
    assert result.latency_ms == pytest.approx({"p50": 2.57, "p75": 2.80, "p90": 3.01, "p99": 0.95})
    assert result.non_2xx_3xx == 3
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert not result.clean


def test_spread_and_percentile() -> None:
    s = common.spread([10.0, 30.0, 20.0])
    assert (s["median"], s["min"], s["max"]) == (20.0, 10.0, 30.0)
    assert s["spread_pct"] == pytest.approx(100.0)
    assert common.percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_kalkan_metrics_are_summed() -> None:
    text = (
        "# TYPE kalkan_requests_total counter\n"
        'kalkan_requests_total{status="200",cache="HIT"} 7\n'
        'kalkan_requests_total{status="200",cache="MISS"} 2\n'
        'kalkan_requests_total{status="404",cache="BYPASS"} 1\n'
        "kalkan_cache_objects 2\n"
    )
    series = peers.parse_prometheus(text)
    assert series['kalkan_requests_total{status="200",cache="HIT"}'] == 7.0
    requests = {k: v for k, v in series.items() if k.startswith("kalkan_requests_total")}
    assert sum(v for k, v in requests.items() if peers._label(k, "cache") == "hit") == 7.0


def test_nginx_log_is_counted(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(
        '127.0.0.1 [x] "GET / HTTP/1.1" 200 5 0.000 MISS\n'
        '127.0.0.1 [x] "GET / HTTP/1.1" 200 5 0.000 HIT\n'
        '127.0.0.1 [x] "GET / HTTP/1.1" 200 5 0.000 HIT\n'
    )
    counts = peers.nginx_log_counts(log)
    assert (counts["requests"], counts["hits"], counts["misses"]) == (3.0, 2.0, 1.0)


def test_suite_outcomes_follow_the_suite_rules() -> None:
    tests = [
        {"id": "base", "kind": "required", "depends_on": [], "browser_only": False},
        {"id": "opt", "kind": "optimal", "depends_on": ["base"], "browser_only": False},
        {"id": "chk", "kind": "check", "depends_on": [], "browser_only": False},
        {"id": "dep", "kind": "required", "depends_on": ["chk"], "browser_only": False},
        {"id": "setup", "kind": "required", "depends_on": [], "browser_only": False},
        {"id": "browser", "kind": "required", "depends_on": [], "browser_only": True},
    ]
    results = {
        "base": True,
        "opt": ["Assertion", "Response 2 does not come from cache"],
        "chk": ["Assertion", "no"],
        "dep": True,
        "setup": ["Setup", "PUT config resulted in 503"],
    }
    assert cache_conformance.classify(tests, results) == {
        "base": "pass",
        "opt": "optional_fail",
        "chk": "no",
        "dep": "dependency_fail",
        "setup": "setup_fail",
    }
    alone = cache_conformance.classify(tests, results, honor_dependencies=False)
    assert alone["dep"] == "pass"


def test_only_keeps_canonical_order() -> None:
    assert common.parse_only("varnish,kalkan", peers.PEERS) == ["kalkan", "varnish"]
    with pytest.raises(common.BenchError):
        common.parse_only("squid", peers.PEERS)


@pytest.mark.parametrize("name", ["nginx", "varnish"])
def test_peer_caches_behind_stand_in_origin(name: str) -> None:
    binary = {"nginx": "nginx", "varnish": "varnishd"}[name]
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (scripts/install-debian-deps.sh)")
    with common.Stopper() as stopper, common.scratch_dir(f"smoke-{name}") as work:
        origin = peers.start_origin(work / "origin", stopper, stand_in=True, cpu=None)
        throughput.check_origin(origin)
        proxy = peers.start_proxy(name, origin.port, work / name, stopper, "throughput", None)
        client = common.HttpClient("127.0.0.1", proxy.port)
        for _ in range(3):
            status, _, length = client.get(throughput.BENCH_PATH)
            assert (status, length) == (200, throughput.BODY_SIZE)
        client.close()
        counters = throughput._settle_counters(proxy)
        if name == "nginx":  # nginx writes its counts (the access log) when it stops
            proxy.stop(stopper)
            counters = proxy.counters()
        assert counters["hits"] >= 2
        assert counters["misses"] == 1
        pids = common.process_tree(proxy.proc.pid)
    assert not proxy.proc.alive()
    assert not any(Path(f"/proc/{pid}").exists() and _is_ours(pid, binary) for pid in pids)


def _is_ours(pid: int, binary: str) -> bool:
    try:
        return binary.rstrip("d") in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_throughput_quick_run_writes_results(tmp_path: Path) -> None:
    """The whole script end to end, briefly, against nginx and the stand-in origin."""
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib (the bench extra) is not installed")
    if len(common._ALLOWED_CPUS) < 2:
        pytest.skip("needs two cores")
    done = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--quick", "--only", "nginx",
         "--stand-in-origin", "--duration", "1", "--warmup", "0", "--objects", "20",
         "--quiet-timeout", "0",
         "--miss-requests", "10", "--output-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stderr
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"throughput.{suffix}").stat().st_size > 0
    md = (tmp_path / "throughput.md").read_text()
    assert "Not a valid result" in md
    assert "--stand-in-origin" in md
