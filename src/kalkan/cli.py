"""The `kalkan` command line: serve, check-config, purge, decisions, reload, attack-mode,
cert status, demo-site and demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources
from pathlib import Path

from kalkan import __version__
from kalkan.config import (
    Config,
    ConfigError,
    is_loopback_host,
    load_config,
    load_config_text,
    parse_hostport,
    parse_origin_url,
    validate,
)
from kalkan.units import parse_duration


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _config_from_args(args: argparse.Namespace) -> Config:
    config = load_config(args.config) if args.config else Config()
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
    validate(config, "command line")
    return config


async def _serve(config: Config) -> None:
    from kalkan.edge.app import Edge

    edge = Edge(config)
    await edge.start()
    for host, port in edge.addresses:
        scheme = "https" if config.tls else "http"
        print(f"kalkan {__version__}: serving {scheme}://{_fmt(host, port)}/ "
              f"for origin {config.origin.url}", flush=True)
    if edge.admin_address:
        print(f"admin: http://{_fmt(*edge.admin_address)}/metrics", flush=True)
    await edge.run_until_signalled()


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    _install_uvloop()
    asyncio.run(_serve(config))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """The same checks serve makes before it starts (files included), and its start warning."""
    config = load_config(args.file)
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


class AdminUnreachable(Exception):
    """The admin listener did not answer or refused; the message says what to check."""


def admin_call(args: argparse.Namespace, method: str, path: str,
               body: object | None = None) -> object:
    """One request to a running edge's admin listener, with the token from --token or the
    state directory's admin.token."""
    host, port = parse_hostport(args.admin)
    token = args.token
    if token is None:
        token_file = Path(args.state_dir) / "admin.token"
        token = token_file.read_text().strip() if token_file.exists() else None
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
        raise AdminUnreachable(f"the edge refused: {exc.code} {detail}") from None
    except OSError as exc:
        raise AdminUnreachable(
            f"cannot reach the admin listener at {args.admin} ({exc}); is `kalkan serve` "
            "running with that --admin address?") from None


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


def cmd_attack_mode(args: argparse.Namespace) -> int:
    path = "/attack-mode" + (f"?mode={args.mode}" if args.mode else "")
    result = admin_call(args, "POST" if args.mode else "GET", path)
    print(f"attack mode {result['mode']}: threat level {result['level']} "  # type: ignore[index]
          f"({result['level_name']}) — {result['reason']}")  # type: ignore[index]
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
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
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
    p.add_argument("--admin", default="127.0.0.1:9181", help="the edge's admin HOST:PORT")
    p.add_argument("--token", help="admin token (default: STATE_DIR/admin.token)")
    p.add_argument("--state-dir", default="var", help="the edge's state_dir (default var)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kalkan", description="A self-hosted shield that keeps a newsroom's site online.")
    parser.add_argument("--version", action="version", version=f"kalkan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the edge in front of an origin")
    p.add_argument("--origin", help="origin URL, http://HOST:PORT (overrides origin.url)")
    p.add_argument("--listen", help="public HOST:PORT (overrides listen)")
    p.add_argument("--config", help="YAML config file (see docs/config.md)")
    p.add_argument("--admin", help="admin HOST:PORT for metrics and purge, or 'off'")
    p.add_argument("--access-log", help="access log file, '-' for stdout, or 'off'")
    p.add_argument("--cache-dir", help="where the cache persists, or 'off' for memory only")
    p.add_argument("--state-dir", help="where decisions, keys and the admin token are kept")
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

    p = sub.add_parser("reload", help="reload the policy and certificates of a running edge")
    _admin_arguments(p)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("attack-mode", help="show or pin the under-attack mode")
    p.add_argument("mode", nargs="?", choices=("on", "off", "auto"))
    _admin_arguments(p)
    p.set_defaults(func=cmd_attack_mode)

    p = sub.add_parser("cert", help="certificates obtained by ACME (tls.acme)")
    csub = p.add_subparsers(dest="action", required=True)
    c = csub.add_parser("status", help="names, expiry and renewal date of the ACME certificate")
    c.add_argument("--config", required=True, help="the edge's YAML config file")
    c.set_defaults(func=cmd_cert_status)

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
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except AdminUnreachable as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
