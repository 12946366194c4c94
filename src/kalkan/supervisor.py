"""The supervisor of `workers: N` (N > 1): the one process that owns the worker processes.

It binds every public listener once per worker slot (SO_REUSEPORT, before any privilege drop),
and worker 0's admin listener and relay socket once, forks one worker per slot, each running
today's Edge on its slot's sockets, and then only watches: a worker that dies is restarted on
the same sockets (backoff, logged, counted); SIGHUP and SIGUSR1 are passed on to every worker
(each reloads in place, as one edge does); SIGUSR2 upgrades: the installed code is checked, then
executed in this process (same pid) with the sockets and running workers handed over, and it
replaces the workers one slot at a time, a new one first, the old one draining once the new one
serves; SIGTERM and SIGINT stop the workers (they stop accepting, drain and persist) and it exits
0. It is the one voice to systemd (READY, RELOADING, STOPPING, WATCHDOG). It never serves a
request.

What the workers must not share blindly is settled here too (docs/workers.md): each gets its
share of the origin's slots and of the connection limit, only worker 0 binds the admin listener
(its /metrics shows every worker's, labelled `worker`) and sends alerts, and each keeps its
standing decisions in its own file (all of them are loaded at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from kalkan.cluster.relay import RelayPlan
from kalkan.config import AlertsConfig, Config, parse_hostport
from kalkan.notify import notify, watchdog_interval
from kalkan.startup import StartupError, bind_listener
from kalkan.statefiles import load_or_create_secret

if TYPE_CHECKING:
    from kalkan.edge.app import Edge
    from kalkan.observe.admin import Handler

log = logging.getLogger("kalkan.supervisor")

# What the supervisor waits for with sigtimedwait (blocked, so none is lost between two waits).
_SIGNALS = {signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
            signal.SIGUSR2}
# A worker that lived this long before dying is restarted at once; quicker deaths back off.
_STEADY_AFTER = 10.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 10.0
# How long the workers get to drain and persist on SIGTERM (the edge's own grace is 5 s, plus
# saving the cache index and decisions) before they are killed.
_STOP_GRACE = 20.0
# A worker beats once a second from its event loop; one silent this long is stuck and killed
# (then restarted). Under systemd it is the unit's WatchdogSec, which one edge was held to.
_STUCK_AFTER = 30.0
_BEAT_EVERY = 1.0
# How often a worker other than 0 writes its metrics for worker 0's /metrics.
METRICS_INTERVAL = 1.0
# An upgrade (SIGUSR2, docs/workers.md "Upgrade"): the new code is checked by a child run with
# CHECK_ENV set; the supervisor then executes itself again with what it hands over (its
# sockets, its workers) described in HANDOFF_ENV, in the format HANDOFF_VERSION.
CHECK_ENV = "KALKAN_UPGRADE_CHECK"
CHECK_MARK = "kalkan-upgrade-check "
HANDOFF_ENV = "KALKAN_UPGRADE_HANDOFF"
HANDOFF_VERSION = 1
_CHECK_TIMEOUT = 60.0
# How long a new worker may take to say it serves (it loads the cache directory first).
_NEW_WORKER_TIMEOUT = 60.0
# Worker 0's sockets besides its slot's public listeners, bound once by the supervisor so they
# keep listening while worker 0 is replaced: the admin listener and the workers' relay.
RELAY_SOCKET = "@relay"


def share(total: int, slot: int, n: int) -> int:
    """Slot `slot`'s part of `total` split over `n` workers (the parts add up to `total`)."""
    return total // n + (1 if slot < total % n else 0)


def worker_config(config: Config, slot: int, n: int) -> Config:
    """The config worker `slot` of `n` runs: its share of every machine-wide limit, the admin
    listener and the alerts only on worker 0."""
    c = copy.deepcopy(config)
    c.workers = 1
    c.origin.max_concurrency = max(1, share(config.origin.max_concurrency, slot, n))
    if config.origin.queue_size:
        c.origin.queue_size = max(1, share(config.origin.queue_size, slot, n))
    c.origin.idle_connections = share(config.origin.idle_connections, slot, n)
    c.limits.max_connections = max(1, share(config.limits.max_connections, slot, n))
    if config.cluster.redis is not None:
        # Each worker is an edge of the cluster with a name of its own: an edge skips records
        # with its own name, so workers sharing one would never hear each other through Redis.
        from kalkan.cluster.assemble import edge_name

        c.cluster.edge_id = f"{edge_name(config)}/w{slot}"
    if slot:
        # A private admin listener (loopback, a port of its own): worker 0 passes the operator's
        # changes (purge, decisions, attack mode, maintenance) on to it.
        c.admin.listen = "127.0.0.1:0" if config.admin.listen else None
        c.alerts = AlertsConfig()  # one sender, not N
    return c


def workers_dir(config: Config) -> Path:
    """Where workers leave what their siblings read (metrics)."""
    return Path(config.state_dir) / "workers"


# -- sockets ------------------------------------------------------------------------------------
def bind_slots(config: Config, n: int) -> list[dict[str, socket.socket]]:
    """Every public listener bound `n` times on one port with SO_REUSEPORT (the kernel spreads
    connections over them), listening already: connections that reach a slot whose worker is
    being replaced wait in its queue. Port 0 is resolved by the first slot."""
    from kalkan.edge.app import public_listeners

    slots: list[dict[str, socket.socket]] = []
    try:
        for i in range(n):
            bound: dict[str, socket.socket] = {}
            slots.append(bound)
            for key, item in public_listeners(config):
                host, port = parse_hostport(item)
                if i:
                    port = slots[0][item].getsockname()[1]
                sock = bound[item] = bind_listener(key, host, port, reuse_port=True)
                sock.listen(socket.SOMAXCONN)
    except BaseException:
        for bound in slots:
            for sock in bound.values():
                sock.close()
        raise
    return slots


UPGRADE_FILE = "upgrade.json"  # in workers_dir: how the last upgrade went (GET /upgrade)


def relay_address(supervisor: int) -> str:
    """The workers' relay: an abstract socket named after the supervisor (no file to leave
    behind; the name stays the same across an upgrade, which keeps the pid)."""
    return f"@kalkan-relay-{supervisor}"


def bind_shared(config: Config, supervisor: int) -> dict[str, socket.socket]:
    """Worker 0's admin listener and the workers' relay socket (without cluster.redis), bound
    and listening: whichever worker 0 runs (the first, a restarted one, the one replacing it
    in an upgrade) serves on them, and a connection queued meanwhile waits for it."""
    from kalkan.edge.app import ADMIN_SOCKET

    shared: dict[str, socket.socket] = {}
    try:
        if config.admin.listen:
            host, port = parse_hostport(config.admin.listen)
            sock = shared[ADMIN_SOCKET] = bind_listener("admin.listen", host, port)
            sock.listen(socket.SOMAXCONN)
        if config.cluster.redis is None:
            sock = shared[RELAY_SOCKET] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind("\0" + relay_address(supervisor)[1:])
            except OSError as exc:
                raise StartupError(f"cannot make the workers' relay socket "
                                   f"{relay_address(supervisor)}: {exc.strerror or exc}") from None
            sock.listen(64)
    except BaseException:
        for sock in shared.values():
            sock.close()
        raise
    return shared


# -- metrics of every worker --------------------------------------------------------------------
def _labelled(line: str, label: str) -> str:
    """A sample line with `label` (`worker="1"`) first among its labels."""
    space = line.find(" ")
    brace = line.find("{")
    if 0 <= brace < space:
        rest = line[brace + 1:]
        return f"{line[:brace + 1]}{label}{'' if rest.startswith('}') else ','}{rest}"
    return f"{line[:space]}{{{label}}}{line[space:]}"


def merge_metrics(texts: dict[int, str]) -> str:
    """Several workers' Prometheus texts as one: each family once (HELP, TYPE), its samples
    from every worker with a `worker` label; `sum without (worker)` aggregates them."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for slot, text in sorted(texts.items()):
        label = f'worker="{slot}"'
        current: tuple[list[str], list[str]] | None = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                current = families.setdefault(name, ([], []))
                if line not in current[0]:
                    current[0].append(line)
                continue
            if line.startswith("#"):
                continue
            if current is None:
                current = families.setdefault(line.split("{", 1)[0].split(" ", 1)[0], ([], []))
            current[1].append(_labelled(line, label))
    out: list[str] = []
    for head, samples in families.values():
        out.extend(head)
        out.extend(samples)
    return "\n".join(out) + "\n"


def _write_atomically(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


# -- inside a worker ----------------------------------------------------------------------------
@dataclass
class WorkerPlace:
    """Who a worker is: its slot, how many there are, how often its slot was restarted."""

    slot: int
    count: int
    restarts: int
    ready_fd: int
    supervisor: int  # its pid: a worker orphaned by its death must not signal whoever adopted it


def adopt_decisions(edge: Edge, slot: int | None) -> None:
    """Standing decisions: each worker saves its own file (`decisions.json` for worker 0,
    `decisions.wK.json` for worker K), so two never overwrite each other's, and every worker
    loads them all at start. One process (`slot` None) folds the workers' files into
    `decisions.json` and removes them, so going back to one worker loses nothing."""
    from kalkan.defense.decisions import Decisions

    defense = edge.pipeline.defense
    decisions = getattr(defense, "decisions", None)
    if not isinstance(decisions, Decisions) or decisions.path is None:
        return
    base = decisions.path
    own = base if not slot else base.with_name(f"{base.stem}.w{slot}{base.suffix}")
    others = sorted(base.parent.glob(f"{base.stem}.w*{base.suffix}"))
    now = time.time()
    for path in others:
        decisions.path = path
        decisions.load(now)
    decisions.path = own
    if slot is None and others:
        try:
            decisions.save(now)
        except OSError as exc:  # the workers' files stay, and are read again next start
            log.error("cannot fold the workers' decision files into %s (%s); they are kept",
                      base, exc.strerror or exc)
            return
        for path in others:
            path.unlink(missing_ok=True)
        log.info("folded %d worker decision files into %s", len(others), base)


def _attach(edge: Edge, place: WorkerPlace, config: Config) -> None:
    """What makes an Edge one worker among several: counted, its metrics shared, its admin
    reload passed on to the siblings."""
    metrics = edge.pipeline.metrics
    metrics.gauge("kalkan_worker_restarts", "Times this worker slot was restarted after its "
                  "worker died.", lambda: place.restarts)
    pid = os.getpid()
    metrics.gauge("kalkan_worker_pid", "Process id of this worker.", lambda: pid)
    from kalkan import __version__

    # Which code a worker runs: during an upgrade the old and the new version serve together.
    metrics.labeled_gauge("kalkan_worker_version", "1, labelled with the Kalkan version this "
                          "worker runs.", "version", lambda: {__version__: 1.0})
    adopt_decisions(edge, place.slot)


# The admin routes that change a worker's own state: worker 0 does it, then every other worker.
FANNED_OUT = (("POST", "/purge"), ("POST", "/maintenance"), ("POST", "/decisions"),
              ("DELETE", "/decisions"), ("POST", "/decisions/clear"), ("POST", "/attack-mode"))
# How long worker 0 waits for one sibling to apply an admin change (loopback: milliseconds).
_FAN_OUT_TIMEOUT = 2.0


def _sibling_ports(directory: Path, place: WorkerPlace) -> dict[int, int]:
    ports = {}
    for slot in range(1, place.count):
        with contextlib.suppress(OSError, ValueError):
            ports[slot] = int((directory / f"admin-{slot}.port").read_text(encoding="ascii"))
    return ports


def _fan_out(handler: Handler, method: str, path: str, token: str, directory: Path,
             place: WorkerPlace) -> Handler:
    """`handler` on worker 0, then the same request to every other worker's private admin
    listener, so a purge or a decision holds on every worker when the operator gets the answer.
    (Blocking, on loopback, and rare: an operator's command, not a request path.)"""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    def everywhere(query: dict[str, str], body: Any) -> tuple[int, Any]:
        status, result = handler(query, body)
        if status >= 400:
            return status, result
        told: dict[str, str] = {}
        data = None if body is None else json.dumps(body).encode()
        ports = _sibling_ports(directory, place)
        for slot in range(1, place.count):
            if slot not in ports:
                told[str(slot)] = "not running (restarting)"
                continue
            target = f"http://127.0.0.1:{ports[slot]}{path}"
            if query:
                target += "?" + urllib.parse.urlencode(query)
            request = urllib.request.Request(target, data=data, method=method, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=_FAN_OUT_TIMEOUT) as reply:
                    told[str(slot)] = f"ok ({reply.status})"
            except urllib.error.HTTPError as exc:
                told[str(slot)] = f"answered {exc.code}"
            except OSError as exc:
                told[str(slot)] = f"unreachable ({exc})"
        if any(not t.startswith("ok") for t in told.values()):
            log.error("%s %s did not reach every worker: %s", method, path, told)
        if isinstance(result, dict):
            result = {**result, "workers": told}
        return status, result

    return everywhere


async def _share_metrics(edge: Edge, place: WorkerPlace, directory: Path) -> None:
    """Workers other than 0 write their metrics every second; worker 0 serves them all."""
    path = directory / f"metrics-{place.slot}.prom"
    render = edge.pipeline.metrics.render
    servers = edge.server.servers
    while servers and any(s.is_serving() for s in servers):
        # (A worker draining, replaced in an upgrade, leaves the file to its successor.)
        await asyncio.to_thread(_write_atomically, path, render())
        await asyncio.sleep(METRICS_INTERVAL)


def _all_metrics(own: Edge, place: WorkerPlace, directory: Path) -> str:
    texts = {0: own.pipeline.metrics.render()}
    for slot in range(1, place.count):
        with contextlib.suppress(OSError):
            texts[slot] = (directory / f"metrics-{slot}.prom").read_text(encoding="utf-8")
    return merge_metrics(texts)


async def _run_worker(config: Config, sockets: dict[str, socket.socket],
                      place: WorkerPlace) -> None:
    from kalkan.edge.app import Edge
    from kalkan.edge.shared_dir import share as share_cache_directory

    relay_sock = sockets.pop(RELAY_SOCKET, None)
    try:
        edge = Edge(config, sockets)
    except OSError as exc:  # a file the edge opens as it is made (the access log, say)
        where = f"{exc.filename}: " if exc.filename else ""
        raise StartupError(f"{where}{exc.strerror or exc}") from None
    _attach(edge, place, config)
    if place.count > 1:   # siblings mirror into one cache directory: a miss reads theirs
        p = edge.pipeline
        p.shared = share_cache_directory(p.store, config.cache, p.clock, p.metrics)
    if place.count > 1 and config.cluster.redis is None:
        # Without Redis the workers share their state through a relay worker 0 runs (an
        # abstract socket named after the supervisor: no file, only this user's processes).
        edge.together.relay_plan = RelayPlan(relay_address(place.supervisor),
                                             f"w{place.slot}", serve=place.slot == 0,
                                             sock=relay_sock)
    # The supervisor passes a reload to every worker; only worker 0 tells the cluster's other
    # edges (each worker telling them would reload them once per worker).
    edge.together.shares_reloads = config.cluster.redis is not None and place.slot == 0
    try:
        await edge.start()
    except OSError as exc:  # a file the edge opens at start (the access log, say)
        where = f"{exc.filename}: " if exc.filename else ""
        raise StartupError(f"{where}{exc.strerror or exc}") from None
    directory = workers_dir(config)
    sharing: asyncio.Task[None] | None = None
    if edge.admin is not None and place.slot:
        _write_atomically(directory / f"admin-{place.slot}.port", str(edge.admin_address[1])
                          if edge.admin_address else "")
    if edge.admin is not None and not place.slot:
        admin = edge.admin
        for method, path in FANNED_OUT:
            if (method, path) in admin.routes:
                admin.routes[(method, path)] = _fan_out(admin.routes[(method, path)], method,
                                                        path, edge.admin_token, directory, place)
        admin.render_metrics = lambda: _all_metrics(edge, place, directory)

        def reload_all(_q: dict[str, str], _b: object) -> tuple[int, object]:
            ok, messages = edge.reload()
            if os.getppid() == place.supervisor:  # it passes the signal to the others
                os.kill(place.supervisor, signal.SIGHUP)
                messages.append(f"reload passed to the other {place.count - 1} worker(s)")
            return (200 if ok else 409), {"ok": ok, "messages": messages}

        admin.route("POST", "/reload", reload_all)

        def upgrade(_q: dict[str, str], _b: object) -> tuple[int, object]:
            if os.getppid() != place.supervisor:
                return 409, {"error": "this worker's supervisor is gone"}
            asked = time.time()
            os.kill(place.supervisor, signal.SIGUSR2)
            return 202, {"asked": asked, "supervisor": place.supervisor, "message":
                         "upgrade asked: the supervisor checks the installed code, then "
                         "replaces the workers one by one (GET /upgrade says how it went)"}

        def upgrade_state(_q: dict[str, str], _b: object) -> tuple[int, object]:
            import json

            try:
                return 200, json.loads((directory / UPGRADE_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return 200, {"state": "none", "at": 0}

        admin.route("POST", "/upgrade", upgrade)
        admin.route("GET", "/upgrade", upgrade_state)
    elif edge.admin is not None:
        sharing = asyncio.create_task(_share_metrics(edge, place, directory))
    admin_at = edge.admin_address if not place.slot else None
    os.write(place.ready_fd, (f"{admin_at[0]} {admin_at[1]}\n" if admin_at else "-\n").encode())
    os.set_blocking(place.ready_fd, False)
    loop = asyncio.get_running_loop()

    def beat() -> None:  # the supervisor's watchdog: this event loop still runs
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(place.ready_fd, b".")
        loop.call_later(_BEAT_EVERY, beat)

    beat()
    try:
        await edge.run_until_signalled()
    finally:
        if sharing is not None:
            sharing.cancel()


def _stop_with_parent(supervisor: int) -> None:
    """SIGTERM when the supervisor dies (even by SIGKILL): a worker left alone would hold the
    port with nobody to restart or stop it. Linux's PR_SET_PDEATHSIG."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before the prctl: stop now
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(config: Config, sockets: dict[str, socket.socket], place: WorkerPlace) -> NoReturn:
    """The forked child: serve until told to stop; never returns into the supervisor's code."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        _stop_with_parent(place.supervisor)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)  # systemd hears the supervisor only
        with contextlib.suppress(ImportError):
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(_run_worker(config, sockets, place))
        code = 0
    except StartupError as exc:
        print(f"kalkan: worker {place.slot} cannot start: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# -- the supervisor -----------------------------------------------------------------------------
@dataclass
class Slot:
    index: int
    sockets: dict[str, socket.socket]
    pid: int = 0
    started: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0   # deaths in a row soon after start: the backoff grows with them
    due: float = 0.0        # when to start it again (monotonic), 0 when running
    ready_fd: int = -1
    ready: bool = False
    said: str = field(default="")   # what it said when ready: its admin address, or "-"
    heard: float = 0.0              # its last heartbeat (monotonic)


@dataclass
class Retired:
    """An old worker replaced in an upgrade: it stops accepting, drains and exits."""

    index: int
    pid: int
    since: float        # when it was told to stop (monotonic)
    killed: bool = False


def upgrade_report(config: Config) -> dict[str, Any]:
    """What an upgrade's check says of the code and config it runs, for the running supervisor
    to compare with its own: what it can take over (the sockets and the handoff's format)."""
    from kalkan import __version__
    from kalkan.config import resolve_workers
    from kalkan.edge.app import public_listeners

    return {"version": __version__, "handoff": [HANDOFF_VERSION],
            "workers": resolve_workers(config),
            "listeners": [item for _key, item in public_listeners(config)],
            "admin": config.admin.listen, "relay": config.cluster.redis is None}


def self_command() -> list[str]:
    """The command that started this process (the `kalkan` script, with its arguments), run
    again by the interpreter: it then loads the code installed now."""
    script = sys.argv[0] if sys.argv else ""
    if script and not script.endswith(".py") and os.path.isfile(script):
        return [sys.executable, script, *sys.argv[1:]]
    return [sys.executable, "-c", "import sys; from kalkan.cli import main; sys.exit(main())",
            *sys.argv[1:]]


class Supervisor:
    """Forks, watches, replaces and stops the workers (see the module's docstring)."""

    def __init__(self, config: Config, n: int, slots: list[dict[str, socket.socket]],
                 shared: dict[str, socket.socket] | None = None, *,
                 upgraded_from: str | None = None) -> None:
        self.config = config
        self.n = n
        self.slots = [Slot(i, s) for i, s in enumerate(slots)]
        self.shared = shared if shared is not None else {}  # worker 0's: admin, relay
        self.stopping = False
        # An upgrade: the version this process was executed from (it adopted that one's
        # workers and replaces them), the slots still to replace, the new worker starting for
        # the next one, and the old workers draining.
        self.upgraded_from = upgraded_from
        self.rolling: list[int] | None = None
        self.candidate: Slot | None = None
        self.retired: list[Retired] = []
        self.replaced: list[tuple[int, int]] = []  # (old pid, new pid)

    # -- processes --------------------------------------------------------------------------
    def _fork(self, slot: Slot) -> None:
        read_fd, write_fd = os.pipe()
        place = WorkerPlace(slot.index, self.n, slot.restarts, write_fd, os.getpid())
        config = worker_config(self.config, slot.index, self.n)
        own = dict(slot.sockets)
        if slot.index == 0:
            own.update(self.shared)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            mine = {id(sock) for sock in own.values()}
            for other in [*self.slots, *([self.candidate] if self.candidate else [])]:
                for sock in other.sockets.values():  # only its own slot's sockets
                    if id(sock) not in mine:
                        sock.close()
                if other.ready_fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(other.ready_fd)
            for sock in self.shared.values():
                if id(sock) not in mine:
                    sock.close()
            _worker_main(config, own, place)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        slot.pid, slot.started, slot.due, slot.ready, slot.said = pid, time.monotonic(), 0.0, \
            False, ""
        slot.heard = slot.started
        slot.ready_fd = read_fd
        log.debug("worker %d started (pid %d)", slot.index, pid)

    def _watched(self) -> list[Slot]:
        """The slots' workers and the new worker starting in an upgrade."""
        return [*self.slots, *([self.candidate] if self.candidate is not None else [])]

    def _live(self) -> list[int]:
        return [s.pid for s in self._watched() if s.pid] + [r.pid for r in self.retired]

    def _check_ready(self, slot: Slot) -> None:
        """What a worker wrote on its pipe: a line when it serves, then a byte a second."""
        if slot.ready_fd < 0:
            return
        try:
            data = os.read(slot.ready_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # it closed the pipe: it is exiting
            os.close(slot.ready_fd)
            slot.ready_fd = -1
            return
        slot.heard = time.monotonic()
        if not slot.ready:
            slot.said += data.decode(errors="replace")
            if "\n" in slot.said:
                slot.ready, slot.said = True, slot.said.split("\n", 1)[0]

    def _kill_stuck(self, stuck_after: float) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid and slot.ready and now - slot.heard > stuck_after:
                log.error("worker %d (pid %d) has not beaten for %.0f s: its event loop is "
                          "stuck; killing it", slot.index, slot.pid, now - slot.heard)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
                slot.heard = now  # once; the reaper restarts it
        for old in self.retired:
            if not old.killed and now - old.since > _STOP_GRACE:
                log.error("old worker %d (pid %d) still draining after %.0f s: killing it",
                          old.index, old.pid, _STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(old.pid, signal.SIGKILL)
                old.killed = True

    def _reap(self) -> list[tuple[Slot, int, int]]:
        """The slots' workers that exited since the last look, with their pid and wait status
        (an old worker that drained, and a new one that failed to start, are dealt with
        here)."""
        dead: list[tuple[Slot, int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            candidate = self.candidate
            if candidate is not None and candidate.pid == pid:
                self._check_ready(candidate)
                self._close_pipe(candidate)
                candidate.pid = 0
                self._candidate_failed(pid, f"{_exit_words(status)} before it served")
                continue
            for old in self.retired:
                if old.pid == pid:
                    self.retired.remove(old)
                    lived = time.monotonic() - old.since
                    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                        log.info("old worker %d (pid %d) finished its requests and exited in "
                                 "%.1f s", old.index, pid, lived)
                    else:
                        log.error("old worker %d (pid %d) %s %.1f s after it was told to stop",
                                  old.index, pid, _exit_words(status), lived)
                    break
            for slot in self.slots:
                if slot.pid == pid:
                    self._check_ready(slot)
                    slot.pid = 0
                    self._close_pipe(slot)
                    dead.append((slot, pid, status))
        return dead

    @staticmethod
    def _close_pipe(slot: Slot) -> None:
        if slot.ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(slot.ready_fd)
            slot.ready_fd = -1

    def _schedule_restart(self, slot: Slot, pid: int, status: int) -> None:
        now = time.monotonic()
        lived = now - slot.started
        slot.quick_deaths = 0 if lived >= _STEADY_AFTER else slot.quick_deaths + 1
        delay = 0.0 if not slot.quick_deaths else min(
            _BACKOFF_FIRST * 2 ** (slot.quick_deaths - 1), _BACKOFF_MAX)
        slot.restarts += 1
        for name in (f"metrics-{slot.index}.prom", f"admin-{slot.index}.port"):
            with contextlib.suppress(OSError):
                (workers_dir(self.config) / name).unlink(missing_ok=True)
        if self.candidate is not None and self.candidate.index == slot.index:
            # Its replacement is starting already: it takes the slot once it serves.
            log.error("worker %d (pid %d) %s after %.1f s; the new worker starting for its slot "
                      "takes over", slot.index, pid, _exit_words(status), lived)
            return
        slot.due = now + delay
        log.error("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s (restart %d "
                  "of this slot)", slot.index, pid, _exit_words(status), lived, delay,
                  slot.restarts)

    def _signal_all(self, sig: int, but: int = 0) -> None:
        for slot in self.slots:
            if slot.pid and slot.pid != but:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, sig)

    def _prepare_state(self, *, fresh: bool = True) -> None:
        """The secrets every worker reads, made once here: N workers making them at the same
        moment would each write their own. `fresh`: no worker runs yet, so what workers leave
        for each other (metrics, admin ports) is from an earlier run."""
        state = Path(self.config.state_dir)
        if not self.config.admin.token:
            load_or_create_secret(state / "admin.token", "admin token",
                                  "set admin.token in the config to use the admin API")
        logged = self.config.access_log
        if logged.pseudonymize and logged.path:
            from kalkan.observe.pseudonym import log_key
            log_key(logged.pseudonym_key_file, self.config.state_dir)
        directory = workers_dir(self.config)
        directory.mkdir(parents=True, exist_ok=True)
        if fresh:
            for pattern in ("metrics-*.prom", "admin-*.port"):
                for old in directory.glob(pattern):
                    old.unlink(missing_ok=True)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the workers (or, after an upgrade, replace the adopted ones), watch them until
        SIGTERM/SIGINT; the exit status."""
        adopted = self.upgraded_from is not None
        self._prepare_state(fresh=not adopted)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # delivered (not discarded) while blocked
        signal.signal(signal.SIGUSR2, lambda *_: None)
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        if adopted:
            self._begin_rolling()
        else:
            for slot in self.slots:
                self._fork(slot)
        all_ready = adopted
        interval = watchdog_interval()
        stuck_after = 2 * interval if interval is not None else _STUCK_AFTER
        next_beat = time.monotonic()
        while True:
            now = time.monotonic()
            if interval is not None and now >= next_beat:
                notify("WATCHDOG=1")
                next_beat = now + interval
            due = [s.due for s in self.slots if s.due]
            wait = 0.05 if not all_ready or self.rolling is not None else 1.0
            if due:
                wait = max(0.0, min(wait, min(due) - now))
            if interval is not None:
                wait = max(0.0, min(wait, next_beat - now))
            info = signal.sigtimedwait(_SIGNALS, wait)
            for slot in self._watched():
                self._check_ready(slot)
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    return self._stop()
                if info.si_signo == signal.SIGHUP:
                    self._reload(info.si_pid)
                elif info.si_signo == signal.SIGUSR1:
                    self._signal_all(signal.SIGUSR1)
                elif info.si_signo == signal.SIGUSR2:
                    self._upgrade()  # returns only if the upgrade was refused
            self._kill_stuck(stuck_after)
            for slot, pid, status in self._reap():
                if not all_ready and not slot.ready:
                    log.error("worker %d %s before it could serve; stopping", slot.index,
                              _exit_words(status))
                    self._stop()
                    return 1
                self._schedule_restart(slot, pid, status)
            now = time.monotonic()
            for slot in self.slots:
                if slot.due and slot.due <= now and not slot.pid:
                    self._fork(slot)
            self._step_rolling()
            if not all_ready and all(s.ready for s in self.slots):
                all_ready = True
                self._announce()

    def _announce(self) -> None:
        from kalkan import __version__

        scheme = "https" if self.config.tls else "http"
        for item, sock in self.slots[0].sockets.items():
            host, port = sock.getsockname()[:2]
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if self.config.tls and self.config.tls.http_listen == item:
                scheme = "http"
            pids = " ".join(str(s.pid) for s in self.slots)
            print(f"kalkan {__version__}: serving {scheme}://{where}/ for origin "
                  f"{self.config.origin.url} with {self.n} workers (pids {pids})", flush=True)
        admin = self.slots[0].said
        if admin and admin != "-":
            host, port = admin.split(" ")
            print(f"admin: http://{f'[{host}]' if ':' in host else host}:{port}/metrics "
                  "(every worker's)", flush=True)
        notify("READY=1", f"STATUS=serving with {self.n} workers")

    def _reload(self, sender: int) -> None:
        """SIGHUP: every worker reloads in place (a worker's admin POST /reload has already
        reloaded itself, so it is not told twice)."""
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
               "STATUS=reloading the policy and certificates")
        ours = any(s.pid == sender for s in self.slots)
        self._signal_all(signal.SIGHUP, but=sender if ours else 0)
        log.info("reload passed to %d workers", self.n - (1 if ours else 0))
        notify("READY=1", f"STATUS=serving with {self.n} workers")

    # -- upgrade: check, execute the new code, replace the workers one by one ----------------
    def _say_upgrade(self, state: str, message: str) -> None:
        """How the upgrade goes, for `kalkan upgrade` (worker 0's GET /upgrade reads it)."""
        import json

        record = {"state": state, "message": message, "at": time.time(),
                  "pids": [slot.pid for slot in self.slots]}
        _write_atomically(workers_dir(self.config) / UPGRADE_FILE, json.dumps(record))

    def _upgrade(self) -> None:
        """SIGUSR2: check that the code installed now can take over; if so, execute it in this
        process (same pid: systemd's MainPID, the workers' parent), handing it the sockets and
        the running workers, which it then replaces one by one (`_step_rolling`). Returns only
        if the upgrade was refused: nothing changed then."""
        if self.rolling is not None:
            log.warning("SIGUSR2 ignored: an upgrade is replacing the workers already")
            return
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
               "STATUS=upgrading: checking the new code", "WATCHDOG=1")
        log.info("upgrade asked (SIGUSR2): checking that the installed code can take over")
        self._say_upgrade("checking", "checking that the installed code can take over")
        problem, version = self._check_new_code()
        if problem is not None:
            log.error("upgrade refused, the workers keep running: %s", problem)
            self._say_upgrade("refused", f"upgrade refused, the workers keep running: {problem}")
            print(f"kalkan: upgrade refused: {problem}", file=sys.stderr, flush=True)
            notify("READY=1", f"STATUS=serving with {self.n} workers (upgrade refused)")
            return
        self._execute(version)

    def _check_new_code(self) -> tuple[str | None, str]:
        """Run the installed code as this process would run (same command, same config) in
        check mode: it loads the config, imports what a worker imports, makes the checks serve
        makes, and says what it would take over. (A problem, or None) and its version."""
        import json
        import subprocess

        command = self_command()
        env = {**os.environ, CHECK_ENV: "1"}
        env.pop(HANDOFF_ENV, None)
        try:
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=_CHECK_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"the new code's check did not finish within {_CHECK_TIMEOUT:.0f} s", ""
        except OSError as exc:
            return f"cannot run {command[0]}: {exc.strerror or exc}", ""
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        if done.returncode != 0:
            why = lines[-1].strip() if lines else "(it said nothing)"
            how = (f"was killed by signal {-done.returncode}" if done.returncode < 0
                   else f"exited with status {done.returncode}")
            return f"the new code cannot start (its check {how}): {why}", ""
        said = [line[len(CHECK_MARK):] for line in done.stdout.splitlines()
                if line.startswith(CHECK_MARK)]
        try:
            report = json.loads(said[-1])
            version = str(report["version"])
        except (IndexError, ValueError, KeyError, TypeError):
            return "the new code's check did not say what it can take over", ""
        if HANDOFF_VERSION not in report.get("handoff", []):
            return (f"kalkan {version} cannot take over from this version (handoff format "
                    f"{HANDOFF_VERSION}); restart the service instead"), version
        ours = upgrade_report(self.config)
        changed = [f"{key}: {ours[key]!r} -> {report.get(key)!r}"
                   for key in ("listeners", "admin", "relay") if report.get(key) != ours[key]]
        if report.get("workers") != self.n:
            changed.append(f"workers: {self.n} -> {report.get('workers')!r}")
        if changed:
            return ("the config changes what the workers listen on or how many there are ("
                    + "; ".join(changed) + "), which needs a restart"), version
        return None, version

    def _execute(self, version: str) -> None:
        """Become the new code: exec this process again, the sockets and workers' pipes kept
        open across it and described in HANDOFF_ENV."""
        import json

        from kalkan import __version__

        keep: list[int] = []
        slots = []
        for slot in self.slots:
            fds = {item: sock.fileno() for item, sock in slot.sockets.items()}
            keep += fds.values()
            if slot.ready_fd >= 0:
                keep.append(slot.ready_fd)
            slots.append({"sockets": fds, "pid": slot.pid, "ready_fd": slot.ready_fd,
                          "ready": slot.ready, "said": slot.said, "restarts": slot.restarts})
        shared = {key: sock.fileno() for key, sock in self.shared.items()}
        keep += shared.values()
        handoff = {"version": HANDOFF_VERSION, "from": __version__, "slots": slots,
                   "shared": shared, "draining": [[r.index, r.pid] for r in self.retired]}
        command = self_command()
        env = {**os.environ, HANDOFF_ENV: json.dumps(handoff)}
        for fd in keep:
            os.set_inheritable(fd, True)
        notify("WATCHDOG=1")  # (the new code's loop feeds it again within a second or two)
        log.info("upgrade: kalkan %s checked; executing it in this process (pid %d), which "
                 "then replaces the %d workers one by one", version, os.getpid(), self.n)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(command[0], command, env)
        except OSError as exc:
            for fd in keep:
                os.set_inheritable(fd, False)
            log.error("upgrade refused, the workers keep running: cannot execute %s: %s",
                      command[0], exc.strerror or exc)
            self._say_upgrade("refused", f"upgrade refused, the workers keep running: cannot "
                              f"execute {command[0]}: {exc.strerror or exc}")
            notify("READY=1", f"STATUS=serving with {self.n} workers (upgrade refused)")

    @classmethod
    def adopt(cls, config: Config, n: int, text: str) -> Supervisor:
        """The supervisor of an upgrade, in the new code: the sockets and running workers its
        predecessor handed over (HANDOFF_ENV), to be replaced one by one."""
        import json

        data = json.loads(text)
        if data.get("version") != HANDOFF_VERSION:
            raise StartupError(f"{HANDOFF_ENV}: handoff format {data.get('version')!r}, this "
                               f"version takes {HANDOFF_VERSION}")

        def own(fd: int) -> socket.socket:
            os.set_inheritable(fd, False)
            return socket.socket(fileno=fd)

        given = data["slots"]
        if len(given) != n:
            log.error("upgrade: the config asks for %d workers, the running ones are %d: "
                      "keeping %d (a restart changes their number)", n, len(given), len(given))
            n = len(given)
        slots = [{item: own(fd) for item, fd in s["sockets"].items()} for s in given]
        shared = {key: own(fd) for key, fd in data["shared"].items()}
        self = cls(config, n, slots, shared, upgraded_from=str(data["from"]))
        now = time.monotonic()
        for slot, s in zip(self.slots, given, strict=True):
            slot.pid, slot.restarts = int(s["pid"]), int(s["restarts"])
            slot.ready, slot.said = bool(s["ready"]), str(s["said"])
            slot.started = slot.heard = now
            slot.ready_fd = int(s["ready_fd"])
            if slot.ready_fd >= 0:
                os.set_inheritable(slot.ready_fd, False)
                os.set_blocking(slot.ready_fd, False)
            if not slot.pid:
                slot.due = now  # it was waiting for a restart: started now, with the new code
        self.retired = [Retired(int(i), int(pid), now) for i, pid in data["draining"]]
        return self

    def _begin_rolling(self) -> None:
        from kalkan import __version__

        self.rolling = list(range(self.n))
        self.replaced = []
        print(f"kalkan {__version__}: upgrading from {self.upgraded_from}: replacing the "
              f"{self.n} workers one by one (pids {' '.join(str(s.pid) for s in self.slots)})",
              flush=True)
        notify("STATUS=upgrading: replacing the workers one by one")
        self._say_upgrade("replacing", f"kalkan {__version__} (was {self.upgraded_from}) "
                          "replaces the workers one by one")

    def _step_rolling(self) -> None:
        """One step of the replacement: the next slot gets a new worker on its own sockets;
        once the new worker serves, the old one is told to stop (it drains); the slot after
        starts when the old one has exited (at most one process more than `workers`)."""
        if self.rolling is None or self.stopping:
            return
        now = time.monotonic()
        new = self.candidate
        if new is not None:
            if new.ready:
                slot = self.slots[new.index]
                old = slot.pid
                if old:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(old, signal.SIGTERM)
                    self.retired.append(Retired(slot.index, old, now))
                    self._close_pipe(slot)
                slot.pid, slot.started, slot.heard = new.pid, new.started, new.heard
                slot.ready, slot.said, slot.ready_fd, slot.due = True, new.said, new.ready_fd, 0.0
                self.candidate = None
                self.replaced.append((old, new.pid))
                log.info("upgrade: worker %d serves as pid %d; the old one (pid %d) stops "
                         "accepting and finishes its requests", slot.index, new.pid, old)
            elif now - new.started > _NEW_WORKER_TIMEOUT:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(new.pid, signal.SIGKILL)
                self._close_pipe(new)
                pid, new.pid = new.pid, 0
                self._candidate_failed(pid, f"did not serve within {_NEW_WORKER_TIMEOUT:.0f} s "
                                       "(killed)")
            return
        if self.retired:
            return  # the previous slot's old worker is still draining
        while self.rolling:
            index = self.rolling.pop(0)
            slot = self.slots[index]
            if not slot.pid:
                continue  # waiting for a restart: the restart runs the new code
            new = self.candidate = Slot(index, slot.sockets, restarts=slot.restarts)
            self._fork(new)
            return
        self.rolling = None
        self._upgrade_done()

    def _candidate_failed(self, pid: int, why: str) -> None:
        """The new worker of an upgrade died or hung before it served: the slot keeps its old
        worker, and the replacement stops there (a bad new version must not take the site
        down)."""
        new = self.candidate
        assert new is not None
        self.candidate = None
        left = [new.index, *(self.rolling or [])]
        self.rolling = None
        slot = self.slots[new.index]
        if self.stopping:
            return
        if not slot.pid and not slot.due:
            slot.due = time.monotonic()  # its old worker died meanwhile: restart it
        pids = " ".join(str(self.slots[i].pid) for i in left)
        message = (f"upgrade stopped: the new worker {new.index} (pid {pid}) {why}; worker(s) "
                   f"{', '.join(str(i) for i in left)} keep running as before (pids {pids}); "
                   "upgrade again once the cause is fixed")
        log.error("%s", message)
        self._say_upgrade("stopped", message)
        notify("READY=1", f"STATUS=serving with {self.n} workers (upgrade stopped)")

    def _upgrade_done(self) -> None:
        from kalkan import __version__

        pairs = ", ".join(f"{old} -> {new}" for old, new in self.replaced)
        message = (f"kalkan {__version__}: upgrade done: {len(self.replaced)} workers replaced "
                   f"({pairs})")
        print(message, flush=True)
        self._say_upgrade("done", message)
        notify("READY=1", f"STATUS=serving with {self.n} workers")

    # -- stop -----------------------------------------------------------------------------------
    def _stop(self) -> int:
        """Each worker stops accepting, drains and persists; killed after the grace."""
        notify("STOPPING=1", "STATUS=finishing requests in progress")
        log.info("stopping %d workers: finishing requests in progress", self.n)
        self.stopping = True
        for pid in self._live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for slot in self.slots:  # the listeners close as soon as the workers close theirs
            for sock in slot.sockets.values():
                sock.close()
        for sock in self.shared.values():
            sock.close()
        deadline = time.monotonic() + _STOP_GRACE
        code = 0
        while self._live():
            for slot, _pid, status in self._reap():
                if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                    log.error("worker %d %s while stopping", slot.index, _exit_words(status))
                    code = 1
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("workers still running after %.0f s: killing them", _STOP_GRACE)
                for pid in self._live():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                code = 1
                continue
            if self._live():
                signal.sigtimedwait({signal.SIGCHLD}, min(left, 0.5))
        return code


def _exit_words(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
