"""The caches under test (Kalkan, nginx, Varnish) and the origins behind them.

Each ``start_*`` function renders the peer's config from ``bench/configs/`` into a scratch
directory, starts the peer pinned to one core, waits until it listens and returns a
:class:`Proxy` that knows how to read the peer's cache counters. Both benchmarks use these, with
a *profile*: ``"throughput"`` (production settings, logs and metrics on) or ``"conformance"``
(RFC 9111 behaviour; Kalkan with its defaults).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench.common import (
    CONFIG_DIR,
    ROOT,
    VENV_BIN,
    BenchError,
    Managed,
    Stopper,
    free_port,
    require_loopback,
    start_process,
    taskset,
    tree_memory_kib,
    wait_for_port,
)

Profile = Literal["throughput", "conformance"]
PEERS = ("kalkan", "nginx", "varnish")
HOST = "127.0.0.1"
KALKAN = VENV_BIN / "kalkan"


@dataclass
class Proxy:
    """A running cache in front of an origin."""

    name: str
    proc: Managed
    port: int
    workdir: Path
    argv_note: str
    """The command that started it, for the report."""
    counters: Callable[[], dict[str, float]] = field(repr=False)
    """A snapshot of the peer's own request/cache counters (may read files or endpoints)."""
    stop_signal: int = signal.SIGTERM
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{HOST}:{self.port}"

    def memory_kib(self) -> dict[str, int]:
        """RSS and PSS of the peer's whole process tree."""
        return tree_memory_kib(self.proc.pid)

    @contextlib.contextmanager
    def blame(self, doing: str) -> Iterator[None]:
        """Turn a network error while *doing* something with this peer into a
        :class:`BenchError` that names the peer and shows the end of its output."""
        try:
            yield
        except (OSError, http.client.HTTPException) as err:
            raise BenchError(
                f"{self.name} failed while {doing}: {err!r}; its output:\n"
                f"{self.proc.output_tail()}"
            ) from err

    def stop(self, stopper: Stopper) -> None:
        """Stop the peer (gracefully: buffered logs get flushed) and unregister it."""
        self.proc.stop(sig=self.stop_signal)
        stopper.stop(self.proc)


_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def _render(template: str, target: Path, **values: object) -> Path:
    """Fill the ``{{name}}`` placeholders of ``bench/configs/TEMPLATE`` into *target*."""

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise BenchError(f"{template}: no value for placeholder {match.group(0)}")
        return str(values[match.group(1)])

    target.write_text(_PLACEHOLDER.sub(fill, (CONFIG_DIR / template).read_text()))
    return target


# --------------------------------------------------------------------------- nginx


def nginx_log_counts(log_path: Path) -> dict[str, float]:
    """Requests in an nginx access log (``bench`` format) by ``$upstream_cache_status``."""
    counts: Counter[str] = Counter()
    if log_path.exists():
        with log_path.open(errors="replace") as log:
            for line in log:
                counts[line.rsplit(" ", 1)[-1].strip() or "-"] += 1
    total = float(sum(counts.values()))
    return {
        "requests": total,
        "hits": float(counts.get("HIT", 0)),
        "misses": float(counts.get("MISS", 0) + counts.get("EXPIRED", 0)),
        **{f"status_{k}": float(v) for k, v in counts.items()},
    }


def start_nginx(
    origin_port: int, workdir: Path, stopper: Stopper, profile: Profile, cpu: int | None,
    workers: int = 1, cpus: str | None = None,
) -> Proxy:
    """nginx ``proxy_cache`` with *workers* worker processes (one unless a benchmark says),
    logs and state inside *workdir*; pinned to *cpu*, or to the list *cpus* ("0,1")."""
    if shutil.which("nginx") is None:
        raise BenchError("nginx is not installed (bash scripts/install-debian-deps.sh)")
    port = free_port()
    for sub in ("tmp", "cache"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    conf = _render(
        "nginx.conf.tmpl",
        workdir / "nginx.conf",
        workdir=workdir,
        listen=f"{HOST}:{port}",
        origin=f"{HOST}:{origin_port}",
        policy=CONFIG_DIR / f"nginx-{profile}.inc",
        workers=workers,
    )
    pin = taskset(cpus or cpu)
    argv = [*pin, "nginx", "-p", str(workdir), "-c", str(conf), "-e",
            str(workdir / "error.log")]
    proc = stopper.add(start_process("nginx", argv, workdir))
    wait_for_port(HOST, port, proc=proc)
    log_path = workdir / "access.log"
    return Proxy(
        name="nginx", proc=proc, port=port, workdir=workdir, argv_note=" ".join(argv),
        counters=lambda: nginx_log_counts(log_path), stop_signal=signal.SIGQUIT,
        extra={"config": str(conf), "policy": f"bench/configs/nginx-{profile}.inc"},
    )


# --------------------------------------------------------------------------- Varnish

VARNISH_PARAMS: dict[Profile, list[str]] = {
    "throughput": ["-p", "thread_pools=1"],
    "conformance": ["-p", "thread_pools=1", "-p", "default_ttl=0", "-p", "default_grace=0",
                    "-p", "default_keep=3600"],
}


VARNISH_VCL: dict[Profile, str] = {
    # Throughput: the VCL a real site runs (cookies dropped where pages do not read them);
    # conformance: the built-in VCL alone, as the suite's authors run Varnish.
    "throughput": "throughput.vcl.tmpl",
    "conformance": "default.vcl.tmpl",
}


def varnish_counters(instance: Path) -> dict[str, float]:
    """Varnish's own request and cache counters, read with ``varnishstat -1 -j``."""
    done = subprocess.run(
        ["varnishstat", "-n", str(instance), "-1", "-j"],
        capture_output=True, text=True, timeout=20, check=False,
    )
    if done.returncode != 0:
        return {}
    data = json.loads(done.stdout)
    counters = data.get("counters", data)
    wanted = {
        "MAIN.client_req": "requests",
        "MAIN.cache_hit": "hits",
        "MAIN.cache_miss": "misses",
        "MAIN.cache_hitpass": "hitpass",
        "MAIN.s_pass": "passes",
        "MAIN.backend_req": "backend_requests",
    }
    return {
        short: float(counters[name]["value"])
        for name, short in wanted.items()
        if isinstance(counters.get(name), dict)
    }


def start_varnish(
    origin_port: int, workdir: Path, stopper: Stopper, profile: Profile, cpu: int | None
) -> Proxy:
    """varnishd with ``-s malloc,256m`` and a minimal VCL, its instance directory in *workdir*."""
    if shutil.which("varnishd") is None:
        raise BenchError("varnishd is not installed (bash scripts/install-debian-deps.sh)")
    port = free_port()
    template = VARNISH_VCL[profile]
    vcl = _render(template, workdir / "default.vcl", origin_host=HOST, origin_port=origin_port)
    instance = workdir / "varnish"
    argv = [
        *taskset(cpu), "varnishd", "-F", "-n", str(instance), "-a", f"{HOST}:{port}",
        "-T", "none", "-f", str(vcl), "-s", "malloc,256m", *VARNISH_PARAMS[profile],
    ]
    proc = stopper.add(start_process("varnish", argv, workdir))
    wait_for_port(HOST, port, timeout=60, proc=proc)
    return Proxy(
        name="varnish", proc=proc, port=port, workdir=workdir, argv_note=" ".join(argv),
        counters=lambda: varnish_counters(instance),
        extra={"vcl": str(vcl), "vcl_template": f"bench/configs/{template}"},
    )


# --------------------------------------------------------------------------- Kalkan

_METRIC_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition → ``{'name{labels}': value}`` (comments skipped)."""
    series: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match:
            try:
                series[match.group(1)] = float(match.group(2))
            except ValueError:
                continue
    return series


def fetch_text(url: str, timeout: float = 5.0) -> str:
    """GET a loopback URL and return the body as text."""
    require_loopback(url)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8", "replace")


def kalkan_counters(metrics_url: str) -> dict[str, float]:
    """Kalkan's series from ``GET ADMIN/metrics``, plus ``requests``/``hits``/``misses`` summed
    from ``kalkan_requests_total`` by its ``cache`` label (HIT, MISS, ...)."""
    try:
        series = parse_prometheus(fetch_text(metrics_url))
    except OSError:
        return {}
    summary = {k: v for k, v in series.items() if not k.startswith(("process_", "python_"))}
    requests = {k: v for k, v in summary.items() if k.startswith("kalkan_requests_total")}
    summary["requests"] = sum(requests.values())
    summary["hits"] = sum(v for k, v in requests.items() if _label(k, "cache") == "hit")
    summary["misses"] = sum(v for k, v in requests.items() if _label(k, "cache") == "miss")
    return summary


def _label(series: str, label: str) -> str | None:
    """The (lower-cased) value of *label* in a ``name{a="b",...}`` series key."""
    match = re.search(rf'[{{,]{label}="([^"]*)"', series)
    return match.group(1).lower() if match else None


def kalkan_installed() -> bool:
    """Whether ``.venv/bin/kalkan serve --help`` works."""
    if not KALKAN.exists():
        return False
    done = subprocess.run(
        [str(KALKAN), "serve", "--help"], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0


def start_kalkan(
    origin_port: int, workdir: Path, stopper: Stopper, profile: Profile, cpu: int | None,
    config: str = "defense:\n  enabled: false\n", extra_args: list[str] | None = None,
    cpus: str | None = None,
) -> Proxy:
    """``kalkan serve`` in front of the origin, with its working directory in *workdir* (its
    default ``var/`` state and cache land there).

    The throughput profile adds an access log file (the admin listener, with the metrics, is on
    in both). The conformance profile keeps Kalkan's default configuration; only the admin port
    is a free one instead of the default 127.0.0.1:9181, so a Kalkan running elsewhere on the
    machine cannot collide with this one (the admin listener plays no part in caching).
    """
    if not kalkan_installed():
        raise BenchError("`.venv/bin/kalkan serve --help` does not work: Kalkan is not installed")
    port, admin = free_port(), free_port()
    metrics_url = f"http://{HOST}:{admin}/metrics"
    # These benches measure the cache against caches: one wrk or test client on 127.0.0.1
    # sending thousands of requests a second IS a flood to the defence, which would (rightly)
    # challenge it. The defence's own costs are measured by bench/defense_cost.py.
    # (*config* is the YAML; a bench that needs other settings passes its own.)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "kalkan-bench.yaml"
    config_path.write_text(config)
    pin = taskset(cpus or cpu)
    argv = [*pin, str(KALKAN), "serve", "--origin", f"http://{HOST}:{origin_port}",
            "--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}", "--config",
            str(config_path), *(extra_args or [])]
    extra: dict[str, object] = {"metrics_url": metrics_url}
    if profile == "throughput":
        access_log = workdir / "access.log"
        argv += ["--access-log", str(access_log)]
        extra["access_log"] = str(access_log)
    proc = stopper.add(start_process("kalkan", argv, workdir, cwd=workdir))
    wait_for_port(HOST, port, timeout=30, proc=proc)
    wait_for_port(HOST, admin, timeout=30, proc=proc)
    return Proxy(
        name="kalkan", proc=proc, port=port, workdir=workdir, argv_note=" ".join(argv),
        counters=lambda: kalkan_counters(metrics_url), extra=extra,
    )


STARTERS: dict[str, Callable[[int, Path, Stopper, Profile, int | None], Proxy]] = {
    "kalkan": start_kalkan,
    "nginx": start_nginx,
    "varnish": start_varnish,
}


def start_proxy(
    name: str, origin_port: int, workdir: Path, stopper: Stopper, profile: Profile,
    cpu: int | None,
) -> Proxy:
    """Start peer *name* in front of ``127.0.0.1:origin_port`` with state in *workdir*."""
    workdir.mkdir(parents=True, exist_ok=True)
    return STARTERS[name](origin_port, workdir, stopper, profile, cpu)


# --------------------------------------------------------------------------- the demo origin


@dataclass
class Origin:
    """The origin all peers proxy to."""

    proc: Managed
    port: int
    kind: str
    """``"kalkan demo-site"``, ``"kalkan.demo.site.run"`` or ``"stand-in"``."""


def origin_command(port: int, stand_in: bool) -> tuple[list[str], str]:
    """The command that runs the demo site (or the stand-in) on ``127.0.0.1:port``."""
    listen = f"{HOST}:{port}"
    if stand_in:
        return [sys.executable, "-m", "bench.stand_in_origin", HOST, str(port)], "stand-in"
    if KALKAN.exists() and subprocess.run(
        [str(KALKAN), "demo-site", "--help"], capture_output=True, timeout=30, check=False
    ).returncode == 0:
        return [str(KALKAN), "demo-site", "--listen", listen], "kalkan demo-site"
    probe = subprocess.run(
        [sys.executable, "-c", "import kalkan.demo.site"], capture_output=True, check=False,
        cwd=ROOT, env=_origin_env(),
    )
    if probe.returncode == 0:
        code = f"from kalkan.demo.site import run, DemoSiteConfig; run({HOST!r}, {port}, " \
               "DemoSiteConfig())"
        return [sys.executable, "-c", code], "kalkan.demo.site.run"
    raise BenchError(
        "the demo site is not available (`kalkan demo-site` and kalkan.demo.site both missing); "
        "pass --stand-in-origin to develop against bench/stand_in_origin.py"
    )


def _origin_env() -> dict[str, str]:
    """The environment for origins: the project's ``src`` and root importable, installed or not."""
    env = dict(os.environ)
    paths = [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def start_origin(workdir: Path, stopper: Stopper, stand_in: bool, cpu: int | None) -> Origin:
    """Start the origin pinned to *cpu* and wait until it listens."""
    port = free_port()
    argv, kind = origin_command(port, stand_in)
    proc = stopper.add(
        start_process("origin", [*taskset(cpu), *argv], workdir, cwd=ROOT, env=_origin_env())
    )
    wait_for_port(HOST, port, timeout=30, proc=proc)
    return Origin(proc=proc, port=port, kind=kind)
