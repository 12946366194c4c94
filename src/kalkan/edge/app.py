"""Assembles a running edge from a Config: pipeline, listeners (TLS), admin listener, signals,
and the process's open-files limit."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import secrets
import signal
from pathlib import Path

from kalkan.config import Config, is_loopback_host, parse_hostport
from kalkan.edge.connection import HttpConnection
from kalkan.edge.pipeline import Pipeline
from kalkan.edge.request import Request
from kalkan.edge.server import EdgeServer
from kalkan.observe.admin import AdminError, AdminServer
from kalkan.tls import CertificateSet, TLSConfigError

log = logging.getLogger("kalkan")


class RedirectToHttps:
    """Stands in for the pipeline on the plain-HTTP listener when TLS redirect is on."""

    def __init__(self, pipeline: Pipeline, https_port: int) -> None:
        self.pipeline = pipeline
        self.metrics = pipeline.metrics
        self.clock = pipeline.clock
        self.log_refusal = pipeline.log_refusal
        self.log_error = pipeline.log_error
        self.port_suffix = "" if https_port == 443 else f":{https_port}"

    def respond_now(self, req: Request) -> tuple[bytes]:
        host = req.host.rsplit(":", 1)[0] if not req.host.endswith("]") else req.host
        location = f"https://{host}{self.port_suffix}{req.target.decode('latin-1')}"
        if any(c in location for c in "\r\n\x00"):
            location = f"https://{host}{self.port_suffix}/"
        self.metrics.requests[(308, "BYPASS")] += 1
        return (b"HTTP/1.1 308 Permanent Redirect\r\nLocation: %s\r\nContent-Length: 0\r\n"
                b"Connection: %s\r\n\r\n" % (location.encode("latin-1"),
                                             b"keep-alive" if req.keep_alive else b"close"),)

    async def respond(self, req: Request, conn: HttpConnection) -> None:
        if req.body is not None:
            await req.body.drain()
        conn.write(self.respond_now(req)[0])

    def tick(self) -> None:
        pass

    def replay(self, _data: bytes, _conn: HttpConnection) -> bool:
        return False  # every request is parsed: a redirect is cheap anyway

    def remember(self, _data: bytes, _req: Request) -> None:
        pass


class Edge:
    """One edge process: start() binds everything, stop() drains and persists."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pipeline = Pipeline(config)
        self.server = EdgeServer(config, self.pipeline)
        self.redirect_server: EdgeServer | None = None
        self.admin: AdminServer | None = None
        self.certificates: CertificateSet | None = None
        self.addresses: list[tuple[str, int]] = []
        self.admin_token = config.admin.token or load_or_create_token(
            Path(config.state_dir) / "admin.token")
        self.admin_address: tuple[str, int] | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        raise_open_files_limit(self.config)
        self.pipeline.defense.start()
        loaded = self.pipeline.load()
        if loaded:
            log.info("loaded %d cached responses from %s", loaded, self.config.cache.dir)
        tls = self.config.tls
        ssl_context = None
        if tls is not None:
            self.certificates = CertificateSet(tls.certificates, http2=tls.http2)
            ssl_context = self.certificates.listener
        for item in self.config.listen:
            host, port = parse_hostport(item)
            self.addresses.append(await self.server.listen(host, port, ssl_context))
        if tls is not None and tls.redirect_http and tls.http_listen:
            host, port = parse_hostport(tls.http_listen)
            self.redirect_server = EdgeServer(
                self.config, RedirectToHttps(self.pipeline, self.addresses[0][1]))
            await self.redirect_server.listen(host, port)
        if self.config.admin.listen:
            host, port = parse_hostport(self.config.admin.listen)
            public = not is_loopback_host(host)
            if public:
                log.warning("admin listener %s is not on loopback: anyone who reaches it can try "
                            "the admin routes, so every one (/metrics included) requires the "
                            "bearer token; prefer 127.0.0.1", self.config.admin.listen)
            self.admin = AdminServer(self.pipeline.metrics, self.admin_token, public=public)
            self.admin.route("POST", "/purge", self._purge)
            self.admin.route("POST", "/reload", lambda q, b: self._reload_result())
            for method, path, handler in self.pipeline.defense.admin_routes():
                self.admin.route(method, path, handler)
            self.admin_address = await self.admin.start(host, port)

    # -- admin actions --------------------------------------------------------------------------
    def _reload_result(self) -> tuple[int, object]:
        ok, messages = self.reload()
        return (200 if ok else 409), {"ok": ok, "messages": messages}

    def _purge(self, query: dict[str, str], _body: object) -> tuple[int, object]:
        if query.get("all") == "1":
            return 200, {"purged": self.pipeline.purge(None)}
        if "url" in query:
            return 200, {"purged": self.pipeline.purge(query["url"])}
        raise AdminError(400, "purge needs ?url=URL or ?all=1")

    def reload(self) -> tuple[bool, list[str]]:
        """SIGHUP or `kalkan reload`: certificates and the policy. A bad file keeps the old
        one running and says why."""
        ok, messages = True, []
        if self.certificates is not None:
            try:
                self.certificates.reload()
                messages.append("TLS certificates reloaded")
            except TLSConfigError as exc:
                ok = False
                messages.append(f"keeping the old certificates: {exc}")
                log.error("reload failed, keeping the old certificates: %s", exc)
        policy_ok, message = self.pipeline.defense.reload()
        ok = ok and policy_ok
        if message:  # an edge without a defence has no policy to speak of
            messages.append(message if policy_ok else f"keeping the old policy: {message}")
        self.pipeline.forget_replays()
        return ok, messages

    async def stop(self) -> None:
        await self.server.close()
        if self.redirect_server is not None:
            await self.redirect_server.close()
        if self.admin is not None:
            await self.admin.close()
        await self.pipeline.close()
        self._stopped.set()

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.reload() and None)
        await stop.wait()
        log.info("stopping: finishing requests in progress")
        await self.stop()


# Descriptors besides client connections: origin connections, cache files being written, the log,
# listeners, the admin listener and the odd state file.
_SPARE_FDS = 256


def raise_open_files_limit(config: Config) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one so limits.max_connections can be held;
    warn once, saying how many connections fit, when the hard limit is too low. Returns the soft
    limit now in force."""
    spare = _SPARE_FDS + config.origin.max_concurrency + config.origin.idle_connections
    need = config.limits.max_connections + spare
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                log.info("open-files limit raised from %d to %d", soft, target)
                soft = target
            except (ValueError, OSError) as exc:
                log.warning("cannot raise the open-files limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("the open-files limit is %d (hard limit %s): about %d client connections "
                    "can be held, not limits.max_connections=%d; raise the hard limit "
                    "(LimitNOFILE= in systemd, ulimit -Hn) or lower max_connections",
                    soft, "unlimited" if hard == resource.RLIM_INFINITY else hard,
                    max(soft - spare, 0), config.limits.max_connections)
    return soft


def load_or_create_token(path: Path) -> str:
    """The admin token kept in the state directory (0600), made on first start. A damaged or
    unwritable state directory gives a token for this run only, said in one line."""
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.error("admin token file %s unreadable (%s); using a new token", path,
                  getattr(exc, "strerror", None) or exc)
    token = secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(token + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.error("cannot write admin token file %s (%s); the admin token lives in memory only "
                  "(set admin.token in the config to use the admin API)", path, exc.strerror or exc)
    return token
