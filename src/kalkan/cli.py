"""The `kalkan` command line: serve, check-config, purge, decisions, reload, upgrade, attack-mode,
maintenance, cert status, alerts test, top, analyze, demo-site and demo; which config a command
reads, and what a failed start prints (one line)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TypeVar

from kalkan import __version__
from kalkan.config import (
    SERVICE_CONFIG,
    Config,
    ConfigError,
    apply_service_paths,
    is_loopback_host,
    load_config,
    load_config_text,
    parse_hostport,
    parse_origin_url,
    validate,
)
from kalkan.privileges import PrivilegeError
from kalkan.startup import StartupError
from kalkan.units import parse_duration

log = logging.getLogger("kalkan")

T = TypeVar("T")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def config_path(args: argparse.Namespace) -> str | None:
    """The config file a command reads: --config, else $KALKAN_CONFIG, else (as a service)
    /etc/kalkan/kalkan.yaml if it exists; None means the built-in defaults."""
    path = getattr(args, "config", None) or os.environ.get("KALKAN_CONFIG") or None
    if path is None and args.service and Path(SERVICE_CONFIG).is_file():
        path = SERVICE_CONFIG
    return path


def _base_config(args: argparse.Namespace, *, files: bool = True) -> Config:
    path = config_path(args)
    if path is not None:
        return load_config(path, service=args.service, files=files)
    config = Config()
    if args.service:
        apply_service_paths(config, set())
    return config


def _config_from_args(args: argparse.Namespace) -> Config:
    config = _base_config(args)
    if args.origin:
        config.origin.url = args.origin
    if args.listen:
        config.listen = [args.listen]
    if args.admin:
        config.admin.listen = None if args.admin == "off" else args.admin
    if args.access_log:
        config.access_log.path = None if args.access_log == "off" else args.access_log
    if args.cache_dir:
        config.cache.dir = None if args.cache_dir == "off" else args.cache_dir
    if args.state_dir:
        config.state_dir = args.state_dir
    # --workers, else the file's `workers`, else $KALKAN_WORKERS, else the cores (config.py).
    workers = args.workers or (None if config.workers is not None
                               else os.environ.get("KALKAN_WORKERS") or None)
    if workers is not None:
        try:
            config.workers = int(workers)
        except ValueError:
            raise ConfigError(f"command line: workers: {workers!r} is not a number") from None
    validate(config, "command line")
    return config


async def _serve(config: Config, sockets: dict[str, socket.socket]) -> None:
    from kalkan.edge.app import Edge
    from kalkan.supervisor import adopt_decisions

    try:
        edge = Edge(config, sockets)
        adopt_decisions(edge, None)  # decisions saved by workers, if it ran with several
        await edge.start()
    except OSError as exc:  # a file the edge opens at start (the access log, say)
        where = f"{exc.filename}: " if exc.filename else ""
        raise StartupError(f"{where}{exc.strerror or exc}") from None
    for host, port in edge.addresses:
        scheme = "https" if config.tls else "http"
        print(f"kalkan {__version__}: serving {scheme}://{_fmt(host, port)}/ "
              f"for origin {config.origin.url}", flush=True)
    if edge.admin_address:
        print(f"admin: http://{_fmt(*edge.admin_address)}/metrics", flush=True)
    if os.geteuid() == 0:
        log.warning("running as root: set `user:` in the config to drop root after the "
                    "listeners are bound (or run the systemd unit, which never is root)")
    await edge.run_until_signalled()


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _become_user(config: Config) -> dict[str, socket.socket]:
    """With `user:` and started as root: make the directories the edge writes (owned by the
    user), bind the public listeners, then drop root. Returns the bound listeners."""
    from kalkan.edge.app import bind_public_listeners

    return _bind_then_drop(config, lambda: bind_public_listeners(config)) or {}


def _bind_then_drop(config: Config, bind: Callable[[], T]) -> T | None:
    """`bind` while root, when `user:` asks to drop root (None when it does not)."""
    from kalkan import privileges

    if config.user is None:
        return None
    acct = privileges.account(config.user, config.group)
    if not privileges.needs_drop(acct):
        return None
    dirs = [Path(config.state_dir)]
    if config.cache.enabled and config.cache.dir:
        dirs.append(Path(config.cache.dir))
    if config.access_log.path and config.access_log.path != "-":
        dirs.append(Path(config.access_log.path).parent)
    for d in dirs:
        privileges.prepare_dir(d.absolute(), acct)
    sockets = bind()
    # The edge's late imports done while root: nothing is read from the install after the
    # drop (a Python under a root-only directory, such as pyenv in /root, still cannot run as
    # the user: install Kalkan as docs/install.md does).
    import kalkan.defense.engine  # noqa: F401
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401
    privileges.drop(acct)
    log.info("listeners bound; now running as %s (uid %d, gid %d)", acct.name, acct.uid,
             acct.gid)
    return sockets


def cmd_serve(args: argparse.Namespace) -> int:
    from kalkan.startup import check_working_directory, check_writable
    from kalkan.supervisor import CHECK_ENV

    config = _config_from_args(args)
    if not args.service:
        check_working_directory(config)
    from kalkan.config import resolve_workers

    if os.environ.get(CHECK_ENV):
        return _upgrade_check(config)
    workers = resolve_workers(config)
    if workers > 1:
        return _serve_workers(config, workers)
    sockets = _become_user(config)
    check_writable(config)
    _install_uvloop()
    asyncio.run(_serve(config, sockets))
    return 0


def _serve_workers(config: Config, n: int) -> int:
    """`workers` > 1: the supervisor binds a socket per worker and listener, and worker 0's
    admin listener and relay (before any drop of root), then forks the workers and watches
    them (docs/workers.md). After an upgrade (SIGUSR2) it is this process executed again with
    the new code: it takes over the sockets and workers it was handed instead."""
    from kalkan.startup import check_writable
    from kalkan.supervisor import HANDOFF_ENV, Supervisor, bind_shared, bind_slots

    handoff = os.environ.pop(HANDOFF_ENV, None)  # (popped: the workers must not see it)
    if handoff is not None:
        return Supervisor.adopt(config, n, handoff).run()

    def bind() -> tuple[list[dict[str, socket.socket]], dict[str, socket.socket]]:
        slots = bind_slots(config, n)
        try:
            return slots, bind_shared(config, os.getpid())
        except BaseException:
            for bound in slots:
                for sock in bound.values():
                    sock.close()
            raise

    sockets = _bind_then_drop(config, bind) or bind()
    check_writable(config)
    return Supervisor(config, n, *sockets).run()


def _upgrade_check(config: Config) -> int:
    """`serve` run by a supervisor before an upgrade (docs/workers.md): the new code loads the
    config (done by now), imports what a worker imports, makes serve's checks and says what it
    would take over; the supervisor compares that with what it runs."""
    from kalkan.startup import check_writable
    from kalkan.supervisor import CHECK_MARK, upgrade_report

    check_writable(config)
    import kalkan.cluster.relay
    import kalkan.defense.engine
    import kalkan.edge.app  # noqa: F401
    print(CHECK_MARK + json.dumps(upgrade_report(config)), flush=True)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """The same checks serve makes before it starts (files included), every problem listed,
    and its start warning."""
    try:
        config = load_config(args.file, service=args.service)
    except ConfigError as exc:
        count = len(exc.problems)
        print(f"{args.file}: {count} problem{'s' if count != 1 else ''}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if config.admin.listen and not is_loopback_host(parse_hostport(config.admin.listen)[0]):
        print(f"{args.file}: warning: admin.listen {config.admin.listen} is not on loopback; "
              "every admin route, /metrics included, will require the token", file=sys.stderr)
    print(f"{args.file}: ok")
    return 0


def cmd_cert_status(args: argparse.Namespace) -> int:
    """The ACME certificate in STATE_DIR/acme/, read offline; exit 1 if it does not serve every
    configured name now (for monitoring)."""
    from kalkan.acme import status  # late: the ACME client libraries load only when needed

    config = load_config(args.config)
    if config.tls is None or config.tls.acme is None:
        print(f"{args.config}: no tls.acme section: certificates are your own files",
              file=sys.stderr)
        return 2
    ok, lines = status(config.tls.acme, config.state_dir)
    print("\n".join(lines))
    return 0 if ok else 1


def cmd_alerts_test(args: argparse.Namespace) -> int:
    """A test message on every configured alert channel, each result said; exit 1 if any
    failed or none is configured."""
    from kalkan.alerts.channels import channels, site_name  # late: only this command sends
    from kalkan.alerts.dispatch import Dispatcher

    config = _base_config(args, files=False)  # the policy and TLS files are not needed here
    try:
        made = channels(config.alerts)
    except ValueError as exc:  # a secret that cannot be read now
        raise ConfigError(str(exc)) from None
    if not made:
        print(f"{config_path(args) or 'the built-in config'}: no alert channel configured "
              "(alerts.telegram, alerts.webhook, alerts.email; see docs/alerts.md)",
              file=sys.stderr)
        return 1
    dispatcher = Dispatcher(config.alerts, site_name(config), made)
    results = asyncio.run(dispatcher.test())
    for name, problem in results:
        print(f"{name}: sent" if problem is None else f"{name}: FAILED: {problem}")
    return 0 if all(problem is None for _, problem in results) else 1


class AdminUnreachable(Exception):
    """The admin listener did not answer or refused; the message says what to check."""


def admin_target(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """The admin HOST:PORT and token of the edge a command talks to: --admin / --token /
    --state-dir, else the config's (--config, $KALKAN_CONFIG), else the defaults. The third
    item says why there is no token, if there is none."""
    config = _local_config(args)
    where = config_path(args) or "the default config"
    admin = args.admin or config.admin.listen
    if not admin:
        raise AdminUnreachable(f"admin.listen is off in {where}: the admin commands need it "
                               "(or pass --admin HOST:PORT)")
    token, missing = args.token or config.admin.token, None
    if token is None:
        token_file = Path(config.state_dir) / "admin.token"
        try:
            token = token_file.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            # Said only if the edge wants a token: unreachable is the likelier news.
            missing = (f"no admin token: {token_file} does not exist; point at the edge's "
                       "config with --config FILE or KALKAN_CONFIG (its state_dir holds "
                       "admin.token), or pass --state-dir or --token")
        except OSError as exc:
            missing = (f"cannot read the admin token {token_file} ({exc.strerror}); run as "
                       "the user the edge runs as (or with sudo), or pass --token")
    return admin, token, missing


def admin_call(args: argparse.Namespace, method: str, path: str,
               body: object | None = None) -> object:
    """One request to a running edge's admin listener, with its token (see admin_target)."""
    admin, token, missing = admin_target(args)
    host, port = parse_hostport(admin)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{_fmt(host, port)}{path}", data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        if exc.code == 401 and missing:
            detail += f"; {missing}"
        raise AdminUnreachable(f"the edge refused: {exc.code} {detail}") from None
    except OSError as exc:
        raise AdminUnreachable(
            f"cannot reach the admin listener at {admin} ({exc}); is `kalkan serve` "
            "running with that admin address?") from None


def cmd_purge(args: argparse.Namespace) -> int:
    query = "all=1" if args.all else "url=" + urllib.parse.quote(args.url, safe="")
    result = admin_call(args, "POST", f"/purge?{query}")
    print(f"purged {result['purged']} cached response(s)")  # type: ignore[index]
    return 0


def cmd_decisions(args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = admin_call(args, "GET", "/decisions")["decisions"]  # type: ignore[index]
        if not rows:
            print("no standing decisions")
        for d in rows:
            left = "forever" if d["expires_in"] is None else f"{d['expires_in']}s left"
            print(f"{d['target']:<40} {d['action']:<10} {left:<14} {d['origin']:<11} "
                  f"{d['reason']}")
    elif args.action == "add":
        ttl = None if args.ttl in ("forever", "0") else parse_duration(args.ttl)
        result = admin_call(args, "POST", "/decisions", {
            "target": args.target, "action": args.decision, "ttl": ttl, "reason": args.reason})
        print(f"added: {result['added']} → {result['action']}")  # type: ignore[index]
    elif args.action == "delete":
        target = urllib.parse.quote(args.target, safe="")
        admin_call(args, "DELETE", f"/decisions?target={target}")
        print(f"deleted: {args.target}")
    else:
        result = admin_call(args, "POST", "/decisions/clear")
        print(f"cleared {result['cleared']} decision(s)")  # type: ignore[index]
    return 0


def _local_config(args: argparse.Namespace) -> Config:
    """The config a local command reads (its state_dir, cache.dir): --config, $KALKAN_CONFIG,
    --state-dir."""
    config = _base_config(args, files=False)
    if getattr(args, "state_dir", None):
        config.state_dir = args.state_dir
    return config


def cmd_alliance(args: argparse.Namespace) -> int:
    from kalkan.alliance.feed import b64
    from kalkan.alliance.identity import Identity, IdentityError
    from kalkan.alliance.poller import AllyConfig, load_allies, save_allies
    from kalkan.alliance.service import FEED_PATH, alliance_dir, default_name

    config = _local_config(args)
    where = alliance_dir(config)
    try:
        if args.action == "init":
            identity = Identity.create(where / "identity.json", args.name or default_name(config))
            print(f"alliance identity of {identity.name}: {where / 'identity.json'}\n"
                  f"public key (give it to your allies): {identity.public_text}\n"
                  f"your feed, once the edge is (re)started: https://YOUR-SITE{FEED_PATH}")
        elif args.action == "key":
            identity = Identity.load(where / "identity.json")
            print(identity.public_text)
        elif args.action == "rotate":
            identity = Identity.load(where / "identity.json")
            # Announced long enough for every ally to see it: two feed lifetimes.
            new = identity.rotate(time.time(), 2 * config.alliance.feed_lifetime)
            print(f"next key {b64(new)}: announced in your feed from the next `kalkan reload`, "
                  f"used from {time.strftime('%Y-%m-%d %H:%M', time.localtime(identity.switch_at))}"
                  "; allies that poll meanwhile follow it by themselves")
        elif args.action in ("add", "remove", "list"):
            path = where / "allies.json"
            allies = load_allies(path)
            if args.action == "list":
                if not allies:
                    print("no allies")
                for a in allies:
                    print(f"{a.name:<24} {a.trust:<10} {a.url}")
                return 0
            if args.action == "add":
                ally = AllyConfig(args.ally, args.url, args.key, args.trust)
                ally.check()
                allies = [a for a in allies if a.name != ally.name] + [ally]
            else:
                if not any(a.name == args.ally for a in allies):
                    print(f"kalkan alliance: no ally named {args.ally!r}", file=sys.stderr)
                    return 1
                allies = [a for a in allies if a.name != args.ally]
            save_allies(path, allies)
            print(f"{path}: {len(allies)} ally(s); `kalkan reload` makes a running edge use it")
    except (IdentityError, ValueError) as exc:
        print(f"kalkan alliance: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    from kalkan.config import parse_hostport
    from kalkan.mirror.export import export
    from kalkan.mirror.serve import make_server

    out = Path(args.dir)
    if args.action == "export":
        config = _local_config(args)
        cache_dir = Path(args.cache_dir or config.cache.dir or "")
        if not (args.cache_dir or config.cache.dir) or not cache_dir.is_dir():
            print(f"kalkan mirror: no cache directory {cache_dir} (cache.dir in the config, "
                  "or --cache-dir)", file=sys.stderr)
            return 1
        result = export(cache_dir, out)
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items()))
        print(f"{out}: {result.written} file(s) written, {result.unchanged} unchanged"
              + (f"; not mirrored: {skipped}" if skipped else ""))
        return 0
    if not out.is_dir():
        print(f"kalkan mirror: {out} is not a directory", file=sys.stderr)
        return 1
    host, port = parse_hostport(args.listen)
    server = make_server(out, host, port)
    print(f"kalkan mirror: serving {out} on http://{_fmt(host, port)}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        result = admin_call(args, "POST", "/reload")
    except AdminUnreachable as exc:
        if "409" not in str(exc):
            raise
        print(f"reload refused, the old configuration keeps running: {exc}", file=sys.stderr)
        return 1
    for message in result["messages"]:  # type: ignore[index]
        print(message)
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Ask the supervisor to upgrade (its SIGUSR2, through worker 0's admin listener), then
    wait until it says how it went (docs/workers.md "Upgrade")."""
    try:
        asked = admin_call(args, "POST", "/upgrade")
    except AdminUnreachable as exc:
        if "404" not in str(exc):
            raise
        print("this edge runs without a supervisor (workers: 1): restart it to run the "
              "installed version", file=sys.stderr)
        return 1
    since = float(asked["asked"])  # type: ignore[index]
    print(asked["message"], flush=True)  # type: ignore[index]
    deadline = time.monotonic() + args.timeout
    said = ""
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            state: object = admin_call(args, "GET", "/upgrade")
        except AdminUnreachable:
            continue  # (worker 0 is being replaced: the next try reaches the new one)
        if not isinstance(state, dict) or float(state.get("at", 0)) < since:
            continue
        if state["message"] != said:
            said = str(state["message"])
            print(said, flush=True)
        if state["state"] in ("done", "refused", "stopped"):
            return 0 if state["state"] == "done" else 1
    print(f"no outcome after {args.timeout:.0f} s: see the service's log "
          "(journalctl -u kalkan)", file=sys.stderr)
    return 1


def cmd_attack_mode(args: argparse.Namespace) -> int:
    path = "/attack-mode" + (f"?mode={args.mode}" if args.mode else "")
    result = admin_call(args, "POST" if args.mode else "GET", path)
    print(f"attack mode {result['mode']}: threat level {result['level']} "  # type: ignore[index]
          f"({result['level_name']}) — {result['reason']}")  # type: ignore[index]
    return 0


def cmd_maintenance(args: argparse.Namespace) -> int:
    if args.state:
        result = admin_call(args, "POST", f"/maintenance?on={int(args.state == 'on')}")
    else:
        result = admin_call(args, "GET", "/maintenance")
    on = result["maintenance"]  # type: ignore[index]
    print("maintenance on: only cached pages are served, the origin is not asked" if on
          else "maintenance off")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    """The dashboard's live view in the terminal, redrawn every --interval seconds."""
    from kalkan.observe.top import frame

    if args.interval <= 0:
        raise SystemExit("kalkan top: --interval must be more than 0 seconds")
    colour = not args.no_color and sys.stdout.isatty()
    if args.once:
        snapshot = admin_call(args, "GET", "/api/live")
        sys.stdout.write(frame(snapshot, shutil.get_terminal_size().columns,  # type: ignore[arg-type]
                               colour=colour))
        return 0
    sys.stdout.write("\x1b[2J")
    try:
        while True:
            snapshot = admin_call(args, "GET", "/api/live")
            text = frame(snapshot, shutil.get_terminal_size().columns,  # type: ignore[arg-type]
                         colour=colour)
            # Home, draw, clear what the last frame left below: no flicker, no curses.
            sys.stdout.write("\x1b[H" + text.replace("\n", "\x1b[K\n") + "\x1b[J")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """A forensic report from access logs (docs/analyze.md); errors name the file and line."""
    try:
        from kalkan.analyze import load, run
    except ImportError as exc:
        print(f"kalkan analyze needs the analyze extra ({exc.name} is not installed): "
              "pip install 'kalkan[analyze]'", file=sys.stderr)
        return 2
    from kalkan.observe.pseudonym import PseudonymKeyError, load_key

    req = run.Request(inputs=args.logs, out=args.out, format=args.format, since=args.since,
                      until=args.until, bucket=args.bucket, top=args.top,
                      charts=not args.no_charts, threads=args.threads)
    try:
        if args.pseudonymize or args.pseudonymize_key_env:
            req.key = load_key(args.pseudonymize, args.pseudonymize_key_env)
        result = run.analyze(req)
        written = run.write(req, result)
    except (load.LogError, PseudonymKeyError) as exc:
        print(f"kalkan analyze: {exc}", file=sys.stderr)
        return 2
    if written:
        inputs = result["inputs"]
        print(f"{inputs['lines']:,} lines from {len(inputs['files'])} file(s) → "
              + ", ".join(written), file=sys.stderr)
    return 0


def _demo_site_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from kalkan.demo.site import DemoSiteConfig

    return DemoSiteConfig(workers=args.workers, page_cost=args.page_cost_ms / 1000.0,
                          search_cost=args.search_cost_ms / 1000.0,
                          cache_headers=not args.no_cache_headers)


def cmd_demo_site(args: argparse.Namespace) -> int:
    from kalkan.demo.site import run

    host, port = parse_hostport(args.listen)
    run(host, port, _demo_site_config(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo newsroom site and Kalkan in front of it, in one process, until Ctrl-C."""
    from kalkan.demo.site import DemoSite, DemoSiteConfig

    text = resources.files("kalkan").joinpath("data/demo.yaml").read_text(encoding="utf-8")
    config = load_config_text(text, "kalkan/data/demo.yaml")
    if args.listen:
        config.listen = [args.listen]
    if args.admin:
        config.admin.listen = args.admin
    if args.origin_listen:
        config.origin.url = f"http://{args.origin_listen}"
    validate(config, "command line")
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    if config.access_log.path and config.access_log.path != "-":
        Path(config.access_log.path).parent.mkdir(parents=True, exist_ok=True)
    _, origin_host, origin_port = parse_origin_url(config.origin.url)

    async def main() -> None:
        from kalkan.edge.app import Edge

        site = DemoSite(DemoSiteConfig())
        await site.start(origin_host, origin_port)
        edge = Edge(config)
        await edge.start()
        host, port = edge.addresses[0]
        print(f"""
Kalkan demo is running.
  the newsroom, through Kalkan:  http://{_fmt(host, port)}/
  the origin, unprotected:       {config.origin.url}/
  dashboard:                     http://{config.admin.listen}/
  metrics:                       http://{config.admin.listen}/metrics
  access log:                    {config.access_log.path}
Try: curl -sI http://{_fmt(host, port)}/ | grep -i x-cache   (MISS, then HIT)
Press Ctrl-C to stop both.
""", flush=True)
        try:
            await edge.run_until_signalled()
        finally:
            await site.stop()
        print("stopped.", flush=True)

    _install_uvloop()
    asyncio.run(main())
    return 0


def _admin_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="the edge's config file, for its admin address, token and "
                   "state_dir (default: $KALKAN_CONFIG)")
    p.add_argument("--admin", help="the edge's admin HOST:PORT (default: the config's "
                   "admin.listen, 127.0.0.1:9181)")
    p.add_argument("--token", help="admin token (default: the config's admin.token, else "
                   "STATE_DIR/admin.token)")
    p.add_argument("--state-dir", help="the edge's state_dir (default: the config's, var)")


class _KeysArePositional(argparse.ArgumentParser):
    """The alliance commands' parser: an Ed25519 public key in base64url (43 characters of
    A-Z a-z 0-9 - _) is an argument even when it begins with "-", as one key in 32 does;
    argparse would take it for an unknown option and refuse the command."""

    def _parse_optional(self, arg_string: str):  # type: ignore[no-untyped-def]
        if len(arg_string) == 43 and arg_string[0] == "-" and all(
                c.isascii() and (c.isalnum() or c in "-_") for c in arg_string):
            return None
        return super()._parse_optional(arg_string)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kalkan", description="A self-hosted shield that keeps a newsroom's site online.")
    parser.add_argument("--version", action="version", version=f"kalkan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="debug logging, and a failed start shows its traceback")
    parser.add_argument("--service", action="store_true",
                        default=os.environ.get("KALKAN_SERVICE", "") not in ("", "0"),
                        help="run as a system service: config /etc/kalkan/kalkan.yaml, state "
                        "/var/lib/kalkan, cache /var/cache/kalkan, log /var/log/kalkan "
                        "(also KALKAN_SERVICE=1; see docs/install.md)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the edge in front of an origin")
    p.add_argument("--origin", help="origin URL, http://HOST:PORT (overrides origin.url)")
    p.add_argument("--listen", help="public HOST:PORT (overrides listen)")
    p.add_argument("--config", help="YAML config file, see docs/config.md (default: "
                   "$KALKAN_CONFIG)")
    p.add_argument("--admin", help="admin HOST:PORT for metrics and purge, or 'off'")
    p.add_argument("--access-log", help="access log file, '-' for stdout, or 'off'")
    p.add_argument("--cache-dir", help="where the cache persists, or 'off' for memory only")
    p.add_argument("--state-dir", help="where decisions, keys and the admin token are kept")
    p.add_argument("--workers", help="worker processes (overrides workers; without either: "
                   "$KALKAN_WORKERS, else the cores this process may use; 1 = no supervisor)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate a config file and name any bad key")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("purge", help="remove a URL (or everything) from a running edge's cache")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("url", nargs="?", help="full URL, e.g. http://example.org/news/")
    g.add_argument("--all", action="store_true", help="purge every cached response")
    _admin_arguments(p)
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("decisions", help="list, add, delete or clear standing decisions")
    dsub = p.add_subparsers(dest="action", required=True)
    d = dsub.add_parser("list", help="the standing decisions")
    _admin_arguments(d)
    d = dsub.add_parser("add", help="add a decision for an address or CIDR")
    d.add_argument("target", help="address or CIDR, e.g. 203.0.113.7 or 2001:db8::/48")
    d.add_argument("--action", dest="decision", default="block",
                   choices=("allow", "challenge", "tarpit", "block", "drop"))
    d.add_argument("--ttl", default="1h", help="how long, e.g. 30m, 1h, 2d, or 'forever'")
    d.add_argument("--reason", default="added by hand", help="why (kept in the log)")
    _admin_arguments(d)
    d = dsub.add_parser("delete", help="remove the decision for an address or CIDR")
    d.add_argument("target")
    _admin_arguments(d)
    d = dsub.add_parser("clear", help="remove every decision")
    _admin_arguments(d)
    p.set_defaults(func=cmd_decisions)

    p = sub.add_parser("alliance", help="allied newsrooms: this edge's identity and its allies")
    alliance = p.add_subparsers(dest="action", required=True, parser_class=_KeysArePositional)
    a = alliance.add_parser("init", help="make this edge's alliance identity (an Ed25519 key)")
    a.add_argument("--name", help="this newsroom's name in its feed (default: alliance.name, "
                   "site.name, the host name)")
    a = alliance.add_parser("key", help="print this edge's public key (what allies add)")
    a = alliance.add_parser("rotate", help="start using a new key (announced to allies first)")
    a = alliance.add_parser("add", help="listen to an ally's feed")
    a.add_argument("ally", help="a name for the ally, e.g. kloop")
    a.add_argument("url", help="its feed, e.g. https://kloop.kg/.well-known/kalkan/feed")
    a.add_argument("key", help="its public key, as `kalkan alliance key` prints it there")
    a.add_argument("--trust", required=True, choices=("observe", "challenge", "block"),
                   help="observe: only count; challenge: challenge what it names; block: do "
                   "what it did")
    a = alliance.add_parser("remove", help="stop listening to an ally")
    a.add_argument("ally")
    a = alliance.add_parser("list", help="the allies this edge listens to")
    for a in alliance.choices.values():
        a.add_argument("--config", help="the edge's config file (default: $KALKAN_CONFIG)")
        a.add_argument("--state-dir", help="the edge's state_dir (default: the config's)")
    p.set_defaults(func=cmd_alliance)

    p = sub.add_parser("mirror", help="the cached site as a static mirror")
    msub = p.add_subparsers(dest="action", required=True)
    m = msub.add_parser("export", help="write the cached pages, assets and feeds to DIR")
    m.add_argument("dir")
    m.add_argument("--cache-dir", help="the edge's cache directory (default: cache.dir)")
    m.add_argument("--config", help="the edge's config file (default: $KALKAN_CONFIG)")
    m.add_argument("--state-dir", help=argparse.SUPPRESS)
    m = msub.add_parser("serve", help="serve an exported mirror")
    m.add_argument("dir")
    m.add_argument("--listen", default="127.0.0.1:8088", help="HOST:PORT (127.0.0.1:8088)")
    p.set_defaults(func=cmd_mirror)

    p = sub.add_parser("reload", help="reload the policy and certificates of a running edge")
    _admin_arguments(p)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("upgrade", help="run the installed version without dropping a "
                       "connection: the workers are replaced one by one (workers: 2 or more)")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds to wait for the outcome (default 180)")
    _admin_arguments(p)
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("attack-mode", help="show or pin the under-attack mode")
    p.add_argument("mode", nargs="?", choices=("on", "off", "auto"))
    _admin_arguments(p)
    p.set_defaults(func=cmd_attack_mode)

    p = sub.add_parser("alerts", help="alert channels (Telegram, webhook, e-mail)")
    asub = p.add_subparsers(dest="action", required=True)
    t = asub.add_parser("test", help="send a test message to every configured channel")
    t.add_argument("--config", help="YAML config file (default: $KALKAN_CONFIG)")
    t.set_defaults(func=cmd_alerts_test)

    p = sub.add_parser("maintenance", help="show or switch maintenance mode (cached pages only)")
    p.add_argument("state", nargs="?", choices=("on", "off"))
    _admin_arguments(p)
    p.set_defaults(func=cmd_maintenance)

    p = sub.add_parser("top", help="live requests, threat level, top talkers and decisions of "
                       "a running edge, in the terminal")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours")
    _admin_arguments(p)
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("cert", help="certificates obtained by ACME (tls.acme)")
    csub = p.add_subparsers(dest="action", required=True)
    c = csub.add_parser("status", help="names, expiry and renewal date of the ACME certificate")
    c.add_argument("--config", required=True, help="the edge's YAML config file")
    c.set_defaults(func=cmd_cert_status)

    p = sub.add_parser("analyze", help="a forensic report (Markdown, charts, HTML, JSON) "
                       "from access logs")
    p.add_argument("logs", nargs="+", metavar="LOG",
                   help="access-log files (JSON lines, .gz too) or glob patterns")
    p.add_argument("--out", metavar="DIR", help="write report.md, report.html, report.json and "
                   "the PNG charts here (default: the Markdown on stdout)")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown",
                   help="json: the report as data only")
    p.add_argument("--since", help="only requests at or after this time (ISO 8601, UTC)")
    p.add_argument("--until", help="only requests before this time (ISO 8601, UTC)")
    p.add_argument("--bucket", type=int, metavar="SECONDS",
                   help="timeline bucket (default: from the span, at most 720 buckets)")
    p.add_argument("--top", type=int, default=15, help="rows in each top list (default 15)")
    p.add_argument("--no-charts", action="store_true", help="no PNG charts (faster)")
    p.add_argument("--threads", type=int, help="engine threads (default: every core)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--pseudonymize", metavar="KEYFILE",
                     help="replace addresses by prefix + keyed hash, key read from KEYFILE")
    key.add_argument("--pseudonymize-key-env", metavar="VAR",
                     help="the same, key read from the environment variable VAR")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("demo-site", help="run the demo newsroom site (an origin to protect)")
    p.add_argument("--listen", default="127.0.0.1:8000")
    p.add_argument("--workers", type=int, default=4, help="concurrent page renders (default 4)")
    p.add_argument("--page-cost-ms", type=float, default=40.0, help="cost of a page (default 40)")
    p.add_argument("--search-cost-ms", type=float, default=200.0,
                   help="cost of a search (default 200)")
    p.add_argument("--no-cache-headers", action="store_true",
                   help="send no Cache-Control/Expires (like many CMS setups)")
    p.set_defaults(func=cmd_demo_site)

    p = sub.add_parser("demo", help="the demo site with Kalkan in front, on the embedded config")
    p.add_argument("--listen", help="Kalkan's HOST:PORT (default 127.0.0.1:8080)")
    p.add_argument("--admin", help="the admin HOST:PORT (default 127.0.0.1:9181)")
    p.add_argument("--origin-listen", help="the demo site's HOST:PORT (default 127.0.0.1:8000)")
    p.set_defaults(func=cmd_demo)
    return parser


def _one_line(exc: ConfigError, args: argparse.Namespace) -> str:
    """The first problem; how many more, and where to see them all."""
    first, more = exc.problems[0] if exc.problems else str(exc), len(exc.problems) - 1
    if more:
        path = config_path(args) if args.command == "serve" else None
        target = path or "FILE"
        first += (f" (and {more} more problem{'s' if more > 1 else ''}: "
                  f"`kalkan check-config {target}` lists them)")
    return first


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose or args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"config error: {_one_line(exc, args)}", file=sys.stderr)
        return 2
    except (StartupError, PrivilegeError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"kalkan: cannot start: {exc}", file=sys.stderr)
        return 1
    except AdminUnreachable as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback for a user, unless asked (--debug)
        if args.debug:
            raise
        print(f"kalkan: {args.command} failed: {type(exc).__name__}: {exc} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
