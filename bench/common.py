"""Helpers shared by the benchmarks: processes, ports, pinning, the loopback guard and results.

Every process a benchmark starts is a :class:`Managed` child in its own session; it is stopped by
its PID (and, for leftovers, by the process group that PID leads), never by name. Every network
target goes through :func:`require_loopback` first.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import ipaddress
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""The project root (the directory holding ``pyproject.toml``)."""
BENCH_DIR = ROOT / "bench"
CONFIG_DIR = BENCH_DIR / "configs"
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / ".work"
"""Scratch space (gitignored): npm packages and per-run state directories."""
VENV_BIN = ROOT / ".venv" / "bin"

# Every Kalkan a benchmark starts is one process (one worker), as each peer is: `kalkan serve`
# would otherwise start one worker per core it may use. bench.workers asks for its count with
# --workers, which beats this.
os.environ.setdefault("KALKAN_WORKERS", "1")

LOAD_CPU = 0
"""The core that load generators, clients and the origin run on."""
SERVER_CPU = 1
"""The core that the proxy under test runs on, one proxy at a time."""


class BenchError(RuntimeError):
    """A benchmark cannot go on; the message says why."""


# --------------------------------------------------------------------------- loopback guard


def require_loopback(target: str) -> str:
    """Return *target* (a host, ``host:port`` or URL) if it names a loopback address, else raise.

    Only literal addresses in 127.0.0.0/8 and ``::1`` and the name ``localhost`` pass; any
    other name or address is refused, so no load can leave this machine.
    """
    host = target
    if "://" in target:
        parsed = urllib.parse.urlsplit(target)
        host = parsed.hostname or ""
    elif target.startswith("["):
        host = target[1 : target.index("]")]
    elif target.count(":") == 1:
        host = target.rsplit(":", 1)[0]
    if host == "localhost":
        return target
    require_loopback_ip(host, f"target {target!r}")
    return target


def require_loopback_ip(host: str, what: str) -> None:
    """Raise unless *host* is an IP literal in 127.0.0.0/8 or ``::1``; *what* names it."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise BenchError(f"refusing non-loopback {what}: not an IP literal") from None
    if not address.is_loopback:
        raise BenchError(f"refusing non-loopback {what}")


# --------------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on loopback *host*."""
    require_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float = 15.0, proc: Managed | None = None
) -> None:
    """Wait until ``host:port`` accepts TCP connections; fail early if *proc* has exited."""
    require_loopback(host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise BenchError(
                f"{proc.name} exited with status {proc.popen.returncode} before listening on "
                f"{host}:{port}; its output:\n{proc.output_tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    tail = f"; its output:\n{proc.output_tail()}" if proc is not None else ""
    raise BenchError(f"nothing listens on {host}:{port} after {timeout:.0f}s{tail}")


# --------------------------------------------------------------------------- CPU pinning


_ALLOWED_CPUS = frozenset(os.sched_getaffinity(0))
"""The cores this process could use when it started (before :func:`pin_self`)."""


def cpu_count() -> int:
    """The number of cores this benchmark may use."""
    return len(_ALLOWED_CPUS)


def taskset(cpu: int | str | None) -> list[str]:
    """The ``taskset -c CPU`` prefix for a command (CPU one core, or a list such as "0,1"), or
    nothing if pinning is off or impossible."""
    if cpu is None or shutil.which("taskset") is None:
        return []
    cpus = [int(c) for c in cpu.split(",")] if isinstance(cpu, str) else [cpu]
    if any(c not in _ALLOWED_CPUS for c in cpus):
        return []
    return ["taskset", "-c", str(cpu)]


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per-core (total, idle) jiffies from /proc/stat, for :func:`cpu_busy_pct`."""
    times: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *fields = line.split()
            values = [int(v) for v in fields]
            times[int(name[3:])] = (sum(values), values[3] + values[4])
    return times


def cpu_busy_pct(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
                 ) -> dict[int, float]:
    """How busy each core was between two :func:`cpu_times` snapshots, in percent."""
    busy: dict[int, float] = {}
    for cpu, (total, idle) in after.items():
        d_total = total - before[cpu][0]
        d_idle = idle - before[cpu][1]
        busy[cpu] = 100.0 * (d_total - d_idle) / d_total if d_total else 0.0
    return busy


def wait_until_quiet(cpus: Sequence[int], threshold_pct: float = 15.0, window_s: float = 1.0,
                     timeout_s: float = 60.0) -> tuple[float, bool]:
    """Wait until each of *cpus* was less than *threshold_pct* busy over one *window_s*.

    The machine may be shared; this keeps other people's work from landing in a measurement.
    Dirty pages are written out first: the access logs of earlier runs (hundreds of megabytes
    in a throughput run) are otherwise flushed by the kernel's writeback threads while a later
    run measures, on its cores (seen: a peer's third repetition at 60% of its first).
    Gives up after *timeout_s*. Returns (seconds waited, whether it got quiet).
    """
    started = time.monotonic()
    os.sync()
    while True:
        before = cpu_times()
        time.sleep(window_s)
        busy = cpu_busy_pct(before, cpu_times())
        waited = time.monotonic() - started
        if all(busy.get(cpu, 0.0) < threshold_pct for cpu in cpus):
            return waited, True
        if waited >= timeout_s:
            return waited, False


def pin_self(cpu: int) -> None:
    """Pin this Python process (the orchestrator and its measuring clients) to *cpu*."""
    if cpu in _ALLOWED_CPUS:
        os.sched_setaffinity(0, {cpu})


# --------------------------------------------------------------------------- processes


@dataclass
class Managed:
    """A child process this benchmark started, with its output captured to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str]

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def output_tail(self, limit: int = 3000) -> str:
        """The last *limit* characters the process wrote to stdout/stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Stop the process by its PID (*sig*, then SIGKILL after *timeout*) and reap it.

        Leftover children in the process group this child leads (it was started in a new
        session, so the group id is its PID) are killed too: they are ours and nobody else's.
        """
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.popen.returncode


def start_process(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Managed:
    """Start *argv* in a new session with stdout and stderr going to ``log_dir/NAME.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    return Managed(name=name, popen=popen, log_path=log_path, argv=list(argv))


class Stopper:
    """Stops every registered process when the ``with`` block ends, however it ends.

    SIGTERM and SIGHUP to the benchmark become :class:`KeyboardInterrupt`, so the block still
    runs its cleanup and nothing is left behind.
    """

    def __init__(self) -> None:
        self._procs: list[Managed] = []
        self._old: dict[int, Any] = {}

    def add(self, proc: Managed) -> Managed:
        """Register *proc* to be stopped at exit; returns it."""
        self._procs.append(proc)
        return proc

    def stop(self, proc: Managed) -> None:
        """Stop *proc* now and forget it."""
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def __enter__(self) -> Stopper:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self._procs.clear()
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def scratch_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A unique directory under ``bench/.work/runs`` for one run's state, removed afterwards."""
    base = WORK_DIR / "runs"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- HTTP client


class HttpClient:
    """A keep-alive HTTP/1.1 client to one loopback ``host:port``, for sequential requests."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        require_loopback(host)
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, dict[str, str], int]:
        """GET *path*; returns status, headers (lower-cased names) and body length.

        A connection the server closed is reopened once (keep-alive may legitimately end).
        """
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request("GET", path)
                response = self._conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
                continue
            headers = {k.lower(): v for k, v in response.getheaders()}
            if response.will_close:
                self.close()
            return response.status, headers, len(body)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection (a later :meth:`get` reopens it)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100) of *values*, linear between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum, maximum and (max-min)/median of repeated measurements."""
    med = percentile(values, 50)
    low, high = min(values), max(values)
    return {
        "median": med,
        "min": low,
        "max": high,
        "spread_pct": (high - low) / med * 100.0 if med else float("nan"),
        "n": len(values),
    }


# --------------------------------------------------------------------------- memory


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """*pid* and all its descendants."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by *pid*'s process tree."""
    ticks = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{member}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's reaped children (for one child's share,
    take the difference around running it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_memory_kib(pid: int) -> dict[str, int]:
    """Summed RSS and PSS (KiB) of *pid*'s process tree; PSS counts shared pages once."""
    rss = pss = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return {"rss_kib": rss, "pss_kib": pss}


# --------------------------------------------------------------------------- versions


def _first_line(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else None


def kalkan_version() -> str | None:
    """The installed Kalkan version, if Kalkan is installed in the project's venv."""
    try:
        return importlib.metadata.version("kalkan")
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision() -> str:
    """The work tree's commit (or "no commits") and whether it has uncommitted changes."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    rev = head.stdout.strip() if head.returncode == 0 else "no commits"
    return rev + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(extra_versions: dict[str, str | None] | None = None) -> dict[str, Any]:
    """What the numbers were measured on: cores, CPU, kernel, load and tool versions."""
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "kalkan": kalkan_version(),
        "nginx": _first_line(["nginx", "-v"]),
        "varnish": _first_line(["varnishd", "-V"]),
    }
    versions.update(extra_versions or {})
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "loadavg_at_start": list(os.getloadavg()),
        "memory_total_mib": _mem_total_mib(),
        "versions": versions,
        "git": git_revision(),
    }


def _mem_total_mib() -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return None


# --------------------------------------------------------------------------- results


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run, e.g. ``.venv/bin/python -m bench.throughput``."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([str(exe), "-m", module, *args])


@dataclass
class Report:
    """A benchmark's results: JSON data plus Markdown sections, written side by side."""

    name: str
    command: str
    machine: dict[str, Any]
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    data: dict[str, Any] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)

    def machine_markdown(self) -> str:
        """A Markdown block naming the command and the machine."""
        m = self.machine
        versions = ", ".join(f"{k} `{v}`" for k, v in m["versions"].items())
        return "\n".join(
            [
                f"- Command: `{self.command}` (from the project root)",
                f"- Started: {self.started}; git: {m['git']}",
                f"- Machine: {m['nproc']} cores ({m['cpu_model']}), "
                f"{m['memory_total_mib']} MiB, Linux {m['kernel']}, "
                f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
                f"- Versions: {versions}",
            ]
        )

    def write(self, title: str, directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
        """Write ``NAME.json`` and ``NAME.md`` into *directory*; returns both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": self.name,
            "command": self.command,
            "started": self.started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_at_end": list(os.getloadavg()),
            "machine": self.machine,
            **self.data,
        }
        json_path = directory / f"{self.name}.json"
        json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        md_path = directory / f"{self.name}.md"
        end_load = ", ".join(f"{x:.2f}" for x in payload["loadavg_at_end"])
        body = [f"# {title}", "", self.machine_markdown(),
                f"- Load average at the end: {end_load} (the machine is shared: a load well "
                f"above the benchmark's own means other work ran at the same time)",
                "", *self.sections]
        md_path.write_text("\n".join(body).rstrip() + "\n")
        return json_path, md_path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_only(value: str, known: Sequence[str]) -> list[str]:
    """Parse a ``--only a,b`` value against *known* names, keeping the canonical order."""
    wanted = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise BenchError(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [name for name in known if name in wanted]


def log(message: str) -> None:
    """Progress output on stderr (results go to files)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def quick_or_full_main(module: str, doc: str | None, argv: list[str] | None, quick_help: str,
                       settings: Callable[[bool], Any],
                       run: Callable[[Any, Path], object]) -> int:
    """The `main` of a benchmark whose only options are --quick (a smoke run into
    bench/.work/quick-results) and --output-dir: `settings(quick)` then `run(settings, dir)`."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    output = args.output_dir or (WORK_DIR / "quick-results" if args.quick else RESULTS_DIR)
    return guarded(module, lambda: run(settings(args.quick), output))


def guarded(module: str, body: Callable[[], object]) -> int:
    """Run a benchmark's `main` body: a BenchError is one line and exit 2, Ctrl-C exit 130
    (every process the benchmark started is stopped by its Stopper either way)."""
    try:
        body()
    except BenchError as err:
        print(f"{module}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{module}: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    return 0
