"""Smoke tests for bench/: parsers and guards, and real nginx/Varnish behind a stand-in origin.

These do not measure anything; they check that the benchmark scripts still work, so a broken
benchmark is caught by `make test` rather than on the day numbers are needed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench import (  # noqa: E402
    cache_conformance,
    common,
    fixed_rate,
    peers,
    readers_pool,
    tail_latency,
    throughput,
)

READERS_LUA = ROOT / "bench" / "wrk" / "readers.lua"

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


async def test_readers_script_sends_no_two_identical_requests() -> None:
    """wrk with bench/wrk/readers.lua against a server that keeps every request head: each is a
    browser's, with its own cookie, and xff=N cycles through N distinct forwarded addresses,
    each keeping one browser."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    wrk = await asyncio.create_subprocess_exec(
        "wrk", "-t1", "-c4", "-d1s", "-s", str(READERS_LUA), f"http://127.0.0.1:{port}/bench/20k",
        "--", "xff=500", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(wrk.communicate(), 30)
    server.close()
    await server.wait_closed()
    assert wrk.returncode == 0, err.decode()
    assert "Requests/sec" in out.decode()
    assert len(heads) > 1000
    assert len(set(heads)) == len(heads), "two requests were byte-identical"
    fields = [dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line)
              for head in heads]
    assert all(head.startswith(b"GET /bench/20k HTTP/1.1\r\nHost: 127.0.0.1:") for head in heads)
    assert all(f["User-Agent"].startswith("Mozilla/5.0 (") for f in fields)
    # With xff each forwarded client keeps its browser, as a reader does; clients differ.
    agents: dict[str, set[str]] = {}
    for f in fields:
        agents.setdefault(f["X-Forwarded-For"], set()).add(f["User-Agent"])
    assert all(len(uas) == 1 for uas in agents.values())
    assert len({f["User-Agent"] for f in fields}) > len(agents) // 2
    assert len({f["Accept-Language"] for f in fields}) > 5
    assert all(f["Accept-Encoding"] == "gzip, deflate, br" for f in fields)
    assert all(f["Sec-Fetch-Mode"] == "navigate" and f["Accept"].startswith("text/html")
               for f in fields)
    assert all(f["Cookie"].startswith("_ga=GA1.2.") and "; theme=" in f["Cookie"]
               for f in fields)
    assert len({f["Cookie"] for f in fields}) == len(fields)
    forwarded = {f["X-Forwarded-For"] for f in fields}
    assert len(forwarded) == 500
    cgnat = ipaddress.ip_network("100.64.0.0/10")
    assert all(ipaddress.ip_address(a) in cgnat for a in forwarded)
    assert len({a.rsplit(".", 1)[0] for a in forwarded}) > 100  # spread over many /24s


def test_request_pool_heads_are_distinct_readers_heads() -> None:
    """The fixed-rate client's pool: readers.lua's browsers, headers and cookies, every head
    distinct, and every head as the client sends it (its number in the placeholder) parses."""
    httptools = pytest.importorskip("httptools")
    tables = readers_pool.readers_tables()
    assert len(tables.templates) >= 45
    assert len(tables.languages) == 10 and len(tables.themes) == 3
    lua = READERS_LUA.read_text()
    for lines in readers_pool.EXTRA_HEADERS.values():  # still what readers.lua's `request` sends
        assert all(f"{line}\\r\\n" in lua for line in lines)
    heads = readers_pool.request_pool("/bench/20k", "127.0.0.1:8080", 3000)
    assert len(set(heads)) == len(heads) == 3000
    assert heads == readers_pool.request_pool("/bench/20k", "127.0.0.1:8080", 3000)  # seeded
    sent = [readers_pool.fill(head, i) for i, head in enumerate(heads)]
    assert all(head.count(readers_pool.PLACEHOLDER.encode()) == 1 for head in heads)
    assert len(set(sent)) == len(sent)

    class Fields:
        def __init__(self) -> None:
            self.fields: dict[str, str] = {}
            self.names: list[str] = []
            self.url = b""
            self.complete = False

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.names.append(name.decode())
            self.fields[name.decode()] = value.decode()

        def on_message_complete(self) -> None:
            self.complete = True

    parsed = []
    for head in sent:
        got = Fields()
        parser = httptools.HttpRequestParser(got)
        parser.feed_data(head)
        assert got.complete and got.url == b"/bench/20k"
        assert parser.get_method() == b"GET" and parser.should_keep_alive()
        parsed.append(got)
    for got in parsed:
        f = got.fields
        assert got.names[:5] == ["Host", "User-Agent", "Accept", "Accept-Language",
                                 "Accept-Encoding"]
        assert got.names[-2:] == ["Cookie", "Connection"]
        assert f["Host"] == "127.0.0.1:8080"
        assert f["User-Agent"].startswith("Mozilla/5.0 (")
        assert f["Accept"].startswith("text/html") and f["Sec-Fetch-Mode"] == "navigate"
        assert f["Accept-Encoding"] == "gzip, deflate, br"
        assert f["Cookie"].startswith("_ga=GA1.2.") and "; theme=" in f["Cookie"]
    # Chromium versions carry a random build and patch; Firefox's and Safari's only a major
    # (and minor) version, so those repeat, as with readers.lua.
    assert len({got.fields["User-Agent"] for got in parsed}) > 2000
    assert len({got.fields["Accept-Language"] for got in parsed}) == 10
    assert sum("Referer" in got.fields for got in parsed) > 1500  # 4 of 6 choices


def _fixed_rate_binary() -> Path:
    if shutil.which("gcc") is None and not list(fixed_rate.BIN_DIR.glob("fixed_rate-*")):
        pytest.skip("gcc is not installed")
    return fixed_rate.binary()


def _ordered(latency: dict[str, float]) -> bool:
    values = [latency[k] for k in ("p50", "p90", "p99", "p99.9", "max")]
    return values[0] > 0 and values == sorted(values)


def test_fixed_rate_client_against_a_real_server() -> None:
    """The compiled client, offered 400 req/s for one second after half a second of warm-up,
    to the stand-in origin (a real HTTP server): every request answered, no errors."""
    _fixed_rate_binary()
    with common.Stopper() as stopper, common.scratch_dir("smoke-fixed-rate") as work:
        origin = peers.start_origin(work / "origin", stopper, stand_in=True, cpu=None)
        result = fixed_rate.run_fixed_rate(
            f"http://127.0.0.1:{origin.port}{throughput.BENCH_PATH}", 400, 1, 4,
            warmup_s=0.5, cpus=None, pool_size=500, latencies_file=work / "latencies.bin")
        numbers, latencies = fixed_rate.read_latencies(work / "latencies.bin")
    # Every measured answer as a record: its request number (from the first measured one) and
    # its latency, the same values the percentiles were taken from.
    assert sorted(numbers.tolist()) == list(range(400))
    assert abs(latencies.max() - result["latency_ms"]["max"]) < 1e-3
    assert result["scheduled"] == 400 and result["warmup_scheduled"] == 200
    assert result["responses"] == result["sent"] == result["scheduled"]
    assert result["warmup_responses"] == result["warmup_sent"] == 200
    assert result["errors_total"] == 0 and result["non_2xx"] == 0
    assert result["status"]["2xx"] == 600
    assert fixed_rate.clean(result)
    assert result["bytes_received"] > 600 * throughput.BODY_SIZE
    assert _ordered(result["latency_ms"])
    assert result["send_lag_ms"]["p50"] >= 0
    assert 350 < result["achieved_rate"] < 450
    assert sum(result["per_second"]["sent"]) == 400 and len(result["per_second"]["max_ms"]) == 1
    assert max(result["per_second"]["max_ms"]) == result["latency_ms"]["max"]
    assert result["cpu_busy_pct"]["client_own"] > 0
    assert "--rate 400" in result["command"]


def test_closed_loop_client_against_a_real_server() -> None:
    """``--closed``: every connection sends again as soon as its answer is in, for the warm-up
    plus the duration; every request sent is answered, the rate counts the answers completed in
    the measured second, and the schedule's fields stay empty."""
    _fixed_rate_binary()
    with common.Stopper() as stopper, common.scratch_dir("smoke-closed-loop") as work:
        origin = peers.start_origin(work / "origin", stopper, stand_in=True, cpu=None)
        result = fixed_rate.run_fixed_rate(
            f"http://127.0.0.1:{origin.port}{throughput.BENCH_PATH}", None, 1, 4,
            warmup_s=0.3, cpus=None, pool_size=500)
    assert "--closed" in result["command"] and "--rate" not in result["command"]
    assert result["offered_rate"] is None and result["schedule"].startswith("closed loop")
    assert fixed_rate.clean(result)
    assert result["responses"] == result["sent"] > 100
    assert result["warmup_responses"] == result["warmup_sent"] > 0
    assert result["status"]["2xx"] == result["responses"] + result["warmup_responses"]
    # The measured second's answers: at most those sent in it plus the 4 in flight at its start.
    assert 0.5 * result["responses"] < result["achieved_rate"] <= result["responses"] + 4
    assert _ordered(result["latency_ms"])
    assert result["late_sends"] == 0 and result["send_lag_ms"]["p50"] is None
    assert sum(result["per_second"]["sent"]) == result["sent"]


def test_closed_loop_client_refuses_a_rate_and_latency_records(tmp_path: Path) -> None:
    exe = _fixed_rate_binary()
    heads = tmp_path / "heads.http"
    heads.write_bytes(b"GET /?n=######### HTTP/1.1\r\nHost: x\r\n\r\n")
    base = [str(exe), "--host", "127.0.0.1", "--port", "9", "--requests", str(heads),
            "--duration", "1", "--connections", "1", "--closed"]
    both = subprocess.run([*base, "--rate", "10"], capture_output=True, text=True, check=False)
    assert both.returncode == 2 and "usage" in both.stderr
    records = subprocess.run([*base, "--latencies", str(tmp_path / "x")], capture_output=True,
                             text=True, check=False)
    assert records.returncode == 2 and "not with --closed" in records.stderr


async def test_fixed_rate_client_reads_every_framing_and_sends_distinct_heads(
        tmp_path: Path) -> None:
    """Answers with a length, chunked (extensions, trailers), after a 100 Continue, with
    `Connection: close` and up to the close: all read, the connection reopened when the server
    closes it; every request the server sees is a distinct head with its number filled in."""
    exe = _fixed_rate_binary()
    heads: list[bytes] = []
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        b"a;ext=1\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\n\r\nup to the close",
    ]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                answer = answers[len(heads) % len(answers)]
                writer.write(answer)
                await writer.drain()
                if b"close" in answer or answer.startswith(b"HTTP/1.0"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = readers_pool.write_pool(tmp_path / "requests.http", "/x", f"127.0.0.1:{port}", 50)
    client = await asyncio.create_subprocess_exec(
        str(exe), "--host", "127.0.0.1", "--port", str(port), "--requests", str(pool),
        "--rate", "500", "--duration", "1", "--connections", "4", "--warmup", "0.2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(client.communicate(), 30)
    server.close()
    await server.wait_closed()
    assert client.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["errors_total"] == 0, result["errors"]
    assert result["responses"] == result["sent"] == result["scheduled"] == 500
    assert result["status"]["2xx"] == 600
    assert result["reconnects"] >= 200  # two answers in five close the connection
    assert _ordered(result["latency_ms"])
    assert len(heads) == 600 and len(set(heads)) == 600
    assert not any(readers_pool.PLACEHOLDER.encode() in head for head in heads)
    numbers = sorted(int(head.split(b"_ga=GA1.2.")[1].split(b";")[0].split(b".")[1][1:])
                     for head in heads)
    assert numbers == list(range(600))


def test_fixed_rate_client_refuses_other_hosts(tmp_path: Path) -> None:
    exe = _fixed_rate_binary()
    pool = readers_pool.write_pool(tmp_path / "requests.http", "/", "127.0.0.1:9", 5)
    for host in ("10.0.0.1", "192.168.1.1", "2001:db8::1", "::2", "example.org"):
        done = subprocess.run(
            [str(exe), "--host", host, "--port", "80", "--requests", str(pool), "--rate", "10",
             "--duration", "1", "--connections", "1"],
            capture_output=True, text=True, timeout=10, check=False)
        assert done.returncode == 2
        assert "refusing" in done.stderr and "127.0.0.0/8 and ::1" in done.stderr
        assert done.stdout == ""
    with pytest.raises(common.BenchError, match="non-loopback"):
        fixed_rate.run_fixed_rate("http://10.0.0.1/bench/20k", 10, 1, 1, cpus=None)
    with pytest.raises(common.BenchError, match="120"):
        fixed_rate.run_fixed_rate("http://127.0.0.1:9/", 10, 121, 1, cpus=None)


def test_tail_latency_offers_shares_of_the_slowest_server() -> None:
    assert tail_latency.round_rate(27_528.4) == 27_000
    assert tail_latency.round_rate(40_691) == 40_000
    assert tail_latency.round_rate(1_234) == 1_200
    rates, basis = tail_latency.plan_rates({"kalkan": 72_000, "nginx": 58_000,
                                            "varnish": 39_325})
    assert rates == [15_000, 27_000]  # 0.4 and 0.7 x varnish's 39,325, rounded down
    assert basis["basis_peer"] == "varnish"
    with pytest.raises(common.BenchError, match="--rates"):
        tail_latency.plan_rates({})


def test_tail_latency_pools_runs_and_bounds_the_ratio() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    fast = [rng.exponential(0.05, 20_000) for _ in range(3)]
    slow = [2 * run for run in fast]
    assert abs(tail_latency.quantiles(np.concatenate(slow))["p99"]
               - 2 * tail_latency.quantiles(np.concatenate(fast))["p99"]) < 1e-9
    ratio = tail_latency.bootstrap_ratio(fast, slow, rounds=200)
    assert 0.45 < ratio["low"] <= ratio["median"] <= ratio["high"] < 0.55
    assert ratio["share_at_most_1"] == 1.0


def test_load_args() -> None:
    assert throughput.load_args("identical") == ([], [])
    assert throughput.load_args("readers") == (["-s", str(READERS_LUA)], [])
    assert throughput.load_args("readers", 100_000)[1] == ["--", "xff=100000"]
    with pytest.raises(common.BenchError):
        throughput.load_args("identical", 10)
    settings = throughput.Settings(peers=["kalkan"], pages=["200k", "20k"])
    assert [c.key for c in throughput.cells(settings)] == [
        "readers/20k", "readers/200k", "identical/20k"]


def _tools_for_quick_runs() -> None:
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib (the bench extra) is not installed")
    if len(common._ALLOWED_CPUS) < 2:
        pytest.skip("needs two cores")
    if not peers.kalkan_installed():
        pytest.skip("Kalkan is not installed in the venv")


def _run(module: str, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick modes of bench.throughput, bench.tail_latency, bench.defense_scale and
    bench.connection_memory, shortened further, all writing into one directory (about a
    minute together)."""
    _tools_for_quick_runs()
    out = tmp_path_factory.mktemp("quick-results")
    _run("bench.throughput", "--quick", "--only", "kalkan,nginx", "--stand-in-origin",
         "--pages", "20k,200k", "--duration", "1", "--warmup", "0", "--objects", "20",
         "--quiet-timeout", "0", "--miss-requests", "5", "--output-dir", str(out))
    _run("bench.tail_latency", "--quick", "--duration", "1", "--quiet-timeout", "0",
         "--output-dir", str(out))
    _run("bench.defense_scale", "--quick", "--duration", "1", "--warmup", "0",
         "--quiet-timeout", "0", "--clients", "2000", "--output-dir", str(out))
    _run("bench.connection_memory", "--quick", "--connections", "200", "--pages", "60",
         "--output-dir", str(out))
    _run("bench.sendfile_ab", "--quick", "--output-dir", str(out))
    return out


@pytest.mark.slow
def test_sendfile_ab_quick_run_pairs_both_variants_on_both_pages(quick_results: Path) -> None:
    data = json.loads((quick_results / "sendfile_ab.json").read_text())
    assert {(r["page"], r["variant"]) for r in data["runs"]} == {
        (page, variant) for page in ("20k", "200k") for variant in ("copy", "sendfile")}
    for page in ("20k", "200k"):
        summary = data["summary"][page]
        assert len(summary["pair_ratios"]) == 1 and summary["median_pair_ratio"] > 0
        assert summary["sendfile"]["cpu_us_per_request"] > 0
    assert "sendfile / copy" in (quick_results / "sendfile_ab.md").read_text()


@pytest.mark.slow
def test_throughput_quick_run_writes_results(quick_results: Path) -> None:
    """Both loads, readers first, against Kalkan and nginx and the stand-in origin."""
    for suffix in ("json", "md", "png"):
        assert (quick_results / f"throughput.{suffix}").stat().st_size > 0
    md = (quick_results / "throughput.md").read_text()
    assert "Not a valid result" in md
    assert "--stand-in-origin" in md
    assert md.index("## Readers") < md.index("## Identical")
    data = json.loads((quick_results / "throughput.json").read_text())
    assert list(data["results"]) == ["readers/20k", "readers/200k", "identical/20k"]
    for cell in data["results"].values():
        assert set(cell["peers"]) == {"kalkan", "nginx"}
        assert all(p["all_runs_clean"] and p["all_hits"] for p in cell["peers"].values())
    assert set(data["targets"]) == {"kalkan_vs_nginx", "p99_vs_nginx"}
    assert data["targets"]["kalkan_vs_nginx"]["target"] == 1.2
    assert data["targets"]["kalkan_vs_nginx"]["first_step"] == 1.0
    readers = [r for r in data["runs"] if r["load"] == "readers"]
    assert all("-s" in r["command"] and "readers.lua" in r["command"] for r in readers)
    assert "bench/tail_latency.py measures the servers below saturation" in md
    # The headline's capacity runs with the closed-loop client: the targets are judged on them,
    # wrk's ratio reported beside.
    capacity = data["capacity"]
    assert capacity["cell"] == "readers/20k" and set(capacity["peers"]) == {"kalkan", "nginx"}
    assert all(p["all_runs_clean"] and p["all_hits"] for p in capacity["peers"].values())
    assert all("--closed" in r["command"] for r in data["capacity_runs"])
    target = data["targets"]["kalkan_vs_nginx"]
    assert target["measured_by"] == throughput.LEAN_CLIENT
    assert target["ratio"] == capacity["ratios"]["kalkan_vs_nginx"]["ratio"]
    assert target["wrk_ratio"] == data["results"]["readers/20k"]["ratios"]["kalkan_vs_nginx"][
        "ratio"]
    assert md.index("## Capacity") < md.index("## Readers")


@pytest.mark.slow
def test_tail_latency_quick_run_pools_both_servers(quick_results: Path) -> None:
    """The same rate offered to Kalkan and nginx, every request answered and pooled."""
    for suffix in ("json", "md", "png"):
        assert (quick_results / f"tail_latency.{suffix}").stat().st_size > 0
    data = json.loads((quick_results / "tail_latency.json").read_text())
    assert data["rates"] == [2000.0] and data["settings"]["quick"] is True
    (entry,) = data["by_rate"]
    assert set(entry["servers"]) == {"kalkan", "nginx"}
    for server in entry["servers"].values():
        assert server["requests"] == 2000 and server["errors"] == 0 and server["all_hits"]
        assert _ordered({k: v for k, v in server["pooled_ms"].items() if k != "mean"})
    assert {r["offered_rate"] for r in data["runs"]} == {2000.0}
    kn = entry["kalkan_vs_nginx"]
    assert kn["met"] == (kn["kalkan_p99_ms"] <= kn["nginx_p99_ms"]
                         and kn["kalkan_run_p99_median_ms"] <= kn["nginx_run_p99_median_ms"])
    assert kn["bootstrap"]["low"] <= kn["bootstrap"]["high"]
    assert "## Verdict" in (quick_results / "tail_latency.md").read_text()


@pytest.mark.slow
def test_defense_scale_quick_run_sees_distinct_clients(quick_results: Path) -> None:
    data = json.loads((quick_results / "defense_scale.json").read_text())
    on = [r for r in data["runs"] if r["variant"] == "defence-on"]
    off = [r for r in data["runs"] if r["variant"] == "defence-off"]
    assert on and off
    # The forwarded addresses were believed: the defence tracked many clients, and the access
    # log names many client addresses in both variants.
    assert on[0]["clients_tracked"] > 1000
    assert all(r["distinct_clients_in_log"] > 1000 for r in on + off)
    assert data["target"]["target"] == 0.8
    assert "Defence on / defence off" in (quick_results / "defense_scale.md").read_text()


@pytest.mark.slow
def test_connection_memory_quick_run(quick_results: Path) -> None:
    data = json.loads((quick_results / "connection_memory.json").read_text())
    assert set(data["connections"]) == {"kalkan", "nginx"}
    for c in data["connections"].values():
        assert c["still_open_at_measurement"] == 200
        assert c["rss_kib"]["full"] > 0
    assert data["pages"]["stored_during_fill"] >= 60
    assert data["pages"]["hits_after_fill"] >= 120
    assert data["targets"]["bytes_per_idle_connection"]["target"] == 1536
    assert data["targets"]["page_ram_ratio"]["valid"]


@pytest.mark.slow
def test_readme_block_quotes_readers_first(quick_results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Kalkan\n")
    done = subprocess.run(
        [sys.executable, "scripts/readme_results.py", "--results", str(quick_results),
         "--readme", str(readme)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    text = readme.read_text()
    assert "unexpected shape" not in text
    assert text.index("Cache hits for readers") < text.index("identical requests")
    assert text.index("Cache hits for readers") < text.index("Defence at scale")
    assert "Memory" in text
    assert text.index("Cache hits for readers") < text.index("Latency below saturation")
    assert "Kalkan's pooled p99 is" in text


@pytest.mark.slow
def test_headroom_quick_run_keeps_the_cache_within_its_budget() -> None:
    """bench.headroom's two variants, two seconds each: at headroom 0.7 the origin never works
    on more than 7 of the cache's requests at once; at 1.0 it may on all 10."""
    done = subprocess.run([sys.executable, "-m", "bench.headroom", "--quick", "--duration", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines()
            if line.startswith("| 1.0 ") or line.startswith("| 0.7 ")]
    assert [cells[0].strip() for cells in rows] == ["1.0", "0.7"]
    most = [int(cells[4]) for cells in rows]
    assert most[1] <= 7 < most[0]


@pytest.mark.slow
def test_cluster_quick_run_measures_propagation_and_redis_load(tmp_path: Path) -> None:
    _tools_for_quick_runs()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    _run("bench.cluster", "--quick", "--output-dir", str(tmp_path))
    data = json.loads((tmp_path / "cluster.json").read_text())
    assert data["propagation_ms"]["samples"] == 40          # 20 decisions, seen on b and c
    assert 0 < data["propagation_ms"]["p50"] < 1000
    assert data["ops"]["requests"] > 0 and data["ops"]["non_2xx"] == 0
    assert "Redis operations per request" in (tmp_path / "cluster.md").read_text()
    readme = tmp_path / "README.md"
    readme.write_text("# Kalkan\n")
    done = subprocess.run([sys.executable, "scripts/readme_results.py", "--results",
                           str(tmp_path), "--readme", str(readme)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    text = readme.read_text()
    assert "**Several edges**" in text and "unexpected shape" not in text


@pytest.mark.slow
def test_alliance_hop_quick_run_counts_what_reaches_the_next_newsroom(tmp_path: Path) -> None:
    _tools_for_quick_runs()
    _run("bench.alliance_hop", "--quick", "--output-dir", str(tmp_path))
    data = json.loads((tmp_path / "alliance_hop.json").read_text())
    alone, allied = data["runs"]
    assert not alone["allied"] and allied["allied"]
    assert allied["sent_to_b"] > 100 and allied["reached_b_origin"] <= alone["reached_b_origin"]
    assert "hops" in (tmp_path / "alliance_hop.md").read_text()


@pytest.mark.slow
def test_worker_cache_quick_run_measures_the_three_arrangements(tmp_path: Path) -> None:
    _tools_for_quick_runs()
    _run("bench.worker_cache", "--quick", "--output-dir", str(tmp_path))
    data = json.loads((tmp_path / "worker_cache.json").read_text())
    cells = data["cells"]
    assert list(cells) == ["1 worker", "2 workers, own memory", "2 workers, shared dir"]
    assert all(c["clean"] for c in cells.values())
    # Every connection was traced to the worker that accepted it.
    assert all(r["connections_unattributed"] == 0 and r["requests"] == 1500
               for r in data["runs"])
    assert cells["2 workers, shared dir"]["origin_fetches"] < \
        cells["2 workers, own memory"]["origin_fetches"]
    assert data["miss_path_costs"]["absent_lookup_us"] > 0
    assert "fewer origin fetches" in (tmp_path / "worker_cache.md").read_text()
