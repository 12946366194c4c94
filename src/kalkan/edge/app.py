"""Assembles a running edge from a Config: pipeline, listeners (TLS), admin listener, signals
(SIGHUP reload, SIGUSR1 reopen the log), systemd notifications, and the open-files limit."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import socket
import ssl
import time
from pathlib import Path

from kalkan.acme import AcmeManager
from kalkan.alerts.dispatch import Dispatcher
from kalkan.alerts.watch import Watcher
from kalkan.config import Config, is_loopback_host, parse_hostport
from kalkan.edge.acme_challenge import AcmeFront
from kalkan.edge.alerting import start_alerts
from kalkan.edge.connection import HttpConnection
from kalkan.edge.pipeline import Pipeline
from kalkan.edge.request import Request
from kalkan.edge.server import EdgeServer
from kalkan.edge.together import Together
from kalkan.notify import notify, watchdog_interval
from kalkan.observe.admin import AdminError, AdminServer
from kalkan.observe.live import LiveView
from kalkan.pages import PagesError
from kalkan.startup import bind_listener, bind_problem
from kalkan.statefiles import load_or_create_secret
from kalkan.tls import CertificateSet, TLSConfigError, pending_listener

log = logging.getLogger("kalkan")

# The key of a bound admin listener among the sockets an Edge is given (a supervisor binds it
# once, so it keeps listening while the worker serving it is replaced); public listeners are
# keyed by their HOST:PORT text.
ADMIN_SOCKET = "admin.listen"


def settle_garbage_collector() -> None:
    """What start-up made (config, policy, the cache loaded from disk) lives as long as the
    process: frozen, the cycle collector stops walking it over and over. A request leaves a dozen
    short-lived containers that reference counting frees, so the youngest generation is walked
    every 10,000 allocations rather than every 700 (about 5% of a cache hit's CPU, measured)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


class RedirectToHttps:
    """Stands in for the pipeline on the plain-HTTP listener when TLS redirect is on."""

    def __init__(self, pipeline: Pipeline, https_port: int) -> None:
        self.pipeline = pipeline
        self.metrics = pipeline.metrics
        self.clock = pipeline.clock
        self.log_refusal = pipeline.log_refusal
        self.log_error = pipeline.log_error
        self.port_suffix = "" if https_port == 443 else f":{https_port}"

    def respond_now(self, req: Request, _read: bytes | None = None) -> tuple[bytes]:
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


def public_listeners(config: Config) -> list[tuple[str, str]]:
    """(config key, HOST:PORT) of every public listener: `listen` and the plain-HTTP one (the
    redirect, or ACME's HTTP-01 answers)."""
    items = [(f"listen[{i}]", item) for i, item in enumerate(config.listen)]
    tls = config.tls
    if tls is not None and tls.http_listen and (tls.redirect_http or tls.acme is not None):
        items.append(("tls.http_listen", tls.http_listen))
    return items


def bind_public_listeners(config: Config) -> dict[str, socket.socket]:
    """The public listeners bound now, while the process may still bind ports 80/443 (before
    `user:` drops root); Edge.start serves on them. Keyed by their HOST:PORT text."""
    bound: dict[str, socket.socket] = {}
    try:
        for key, item in public_listeners(config):
            host, port = parse_hostport(item)
            bound[item] = bind_listener(key, host, port)
    except BaseException:
        for sock in bound.values():
            sock.close()
        raise
    return bound


class Edge:
    """One edge process: start() binds everything, stop() drains and persists."""

    def __init__(self, config: Config, sockets: dict[str, socket.socket] | None = None) -> None:
        self.config = config
        self._sockets = dict(sockets or {})
        self.pipeline = Pipeline(config)
        self.pipeline.upstream.maintenance = config.site.maintenance
        self.server = EdgeServer(config, self.pipeline)
        self.redirect_server: EdgeServer | None = None
        self.admin: AdminServer | None = None
        self.certificates: CertificateSet | None = None
        self.acme: AcmeManager | None = None
        self.acme_front: AcmeFront | None = None
        self._redirect: RedirectToHttps | None = None
        self._pending_tls: ssl.SSLContext | None = None  # bound, waiting for ACME's first cert
        self.addresses: list[tuple[str, int]] = []
        self.admin_token = config.admin.token or load_or_create_secret(
            Path(config.state_dir) / "admin.token", "admin token",
            "set admin.token in the config to use the admin API")
        self.admin_address: tuple[str, int] | None = None
        self.alerts: Dispatcher | None = None
        self.alert_watch: Watcher | None = None
        self.live: LiveView | None = None
        self._live_timer: asyncio.TimerHandle | None = None
        self.together = Together()   # the cluster link, the workers' relay, the alliance
        self._stopped = asyncio.Event()
        gate, m = self.pipeline.upstream.gate, self.pipeline.metrics
        m.gauge("kalkan_origin_gate_limit", "Origin requests allowed in flight at once "
                "(origin.max_concurrency).", lambda: gate.limit)
        m.gauge("kalkan_origin_busy_share", "Share of the origin's slots in use now (0..1).",
                lambda: gate.active / gate.limit if gate.limit else 0.0)

    async def start(self) -> None:
        raise_open_files_limit(self.config)
        self.pipeline.defense.start()
        loaded = self.pipeline.load()
        if loaded:
            log.info("loaded %d cached responses from %s", loaded, self.config.cache.dir)
        settle_garbage_collector()
        # A full batch of log lines is written once this turn's answers are out (access_log.py)
        self.pipeline.access_log.defer = asyncio.get_running_loop().call_soon
        tls = self.config.tls
        ssl_context = None
        plain_at: tuple[str, int] | None = None
        if tls is not None:
            pairs = list(tls.certificates)
            if tls.acme is not None:
                self.acme = AcmeManager(tls.acme, self.config.state_dir, self._acme_certificate,
                                        alone=not tls.certificates)
                if self.acme.usable() is not None:
                    pairs.insert(0, self.acme.pair)
            if pairs:
                self.certificates = CertificateSet(pairs, http2=tls.http2)
                ssl_context = self.certificates.listener
            else:  # bind now (before any privilege drop), accept once a certificate exists
                ssl_context = self._pending_tls = pending_listener()
        for i, item in enumerate(self.config.listen):
            self.addresses.append(await self._listen(self.server, f"listen[{i}]", item,
                                                     ssl_context,
                                                     start_serving=self._pending_tls is None))
        if tls is not None and tls.http_listen and (tls.redirect_http or tls.acme is not None):
            plain: RedirectToHttps | Pipeline | AcmeFront = self.pipeline
            if tls.redirect_http:
                plain = self._redirect = RedirectToHttps(self.pipeline, self.addresses[0][1])
            if self.acme is not None:
                # Until HTTPS serves, plain HTTP serves the site rather than redirecting to
                # nothing.
                plain = self.acme_front = AcmeFront(
                    self.acme.tokens, self.pipeline if self._pending_tls else plain,
                    self.pipeline.recorder)
                if parse_hostport(tls.http_listen)[1] != 80:
                    log.warning("tls.http_listen %s is not port 80: the CA checks HTTP-01 "
                                "challenges on port 80, so forward port 80 of %s to it",
                                tls.http_listen, ", ".join(self.acme.domains))
            self.redirect_server = EdgeServer(self.config, plain)
            plain_at = await self._listen(self.redirect_server, "tls.http_listen", tls.http_listen)
        if self.acme is not None:
            if self._pending_tls is not None:
                log.warning("no certificate yet for %s: HTTPS on %s starts once the CA has "
                            "issued one; until then only plain HTTP on %s is served",
                            ", ".join(self.acme.domains),
                            ", ".join(f"{host}:{port}" for host, port in self.addresses),
                            f"{plain_at[0]}:{plain_at[1]}" if plain_at else "no listener")
            self.acme.start()
        if self.config.admin.listen:
            host, port = parse_hostport(self.config.admin.listen)
            public = not is_loopback_host(host)
            if public:
                log.warning("admin listener %s is not on loopback: anyone who reaches it can try "
                            "the admin routes, so every one (/metrics included) requires the "
                            "bearer token; prefer 127.0.0.1", self.config.admin.listen)
            self.live = self._live_view()
            self.admin = AdminServer(self.pipeline.metrics, self.admin_token, public=public,
                                     live=self.live.snapshot)
            self._live_timer = asyncio.get_running_loop().call_later(1.0, self._sample_live)
            self.admin.route("POST", "/purge", self._purge)
            self.admin.route("POST", "/reload", lambda q, b: self._reload_result())
            self.admin.route("POST", "/maintenance", self._maintenance)
            self.admin.route("GET", "/maintenance", lambda q, b: (
                200, {"maintenance": self.pipeline.upstream.maintenance}))
            for method, path, handler in self.pipeline.defense.admin_routes():
                self.admin.route(method, path, handler)
            try:
                self.admin_address = await self.admin.start(
                    host, port, self._sockets.pop(ADMIN_SOCKET, None))
            except OSError as exc:
                raise bind_problem("admin.listen", host, port, exc) from None
        self._start_alerts()
        await self.together.start(self.config, self.pipeline, self._reload_from_cluster)

    def _start_alerts(self) -> None:
        acme = self.acme
        started = start_alerts(self.config, self.pipeline,
                               lambda: acme.pair["cert"] if acme is not None else None)
        if started is not None:
            self.alerts, self.alert_watch = started

    def _live_view(self) -> LiveView:
        """The dashboard's view over the metrics, the origin gate and the defence."""
        gate = self.pipeline.upstream.gate
        defense = self.pipeline.defense
        return LiveView(self.pipeline.metrics, gate=lambda: (gate.active, gate.limit, gate.queued),
                        threat=defense.threat_report, decisions=defense.standing)

    def _sample_live(self) -> None:
        if self.live is not None:
            self.live.sample()
            self._live_timer = asyncio.get_running_loop().call_later(1.0, self._sample_live)

    async def _listen(self, server: EdgeServer, key: str, item: str,
                      ssl_context: ssl.SSLContext | None = None, *,
                      start_serving: bool = True) -> tuple[str, int]:
        """One public listener, on its socket bound beforehand if there is one; a bind that
        fails is a StartupError naming the key, the address and the fix."""
        host, port = parse_hostport(item)
        try:
            return await server.listen(host, port, ssl_context, sock=self._sockets.pop(item, None),
                                       start_serving=start_serving)
        except OSError as exc:
            raise bind_problem(key, host, port, exc) from None

    async def _acme_certificate(self) -> None:
        """A new ACME certificate is in place: the first one starts HTTPS; later ones are
        swapped in for new handshakes (open connections keep theirs)."""
        assert self.acme is not None and self.config.tls is not None
        pair = self.acme.pair
        if self.certificates is None:
            try:
                self.certificates = CertificateSet([pair, *self.config.tls.certificates],
                                                   listener=self._pending_tls,
                                                   http2=self.config.tls.http2)
            except TLSConfigError as exc:
                log.error("cannot use the new certificate, HTTPS stays off: %s", exc)
                return
            await self.server.start_serving()
            self._pending_tls = None
            if self.acme_front is not None and self._redirect is not None:
                self.acme_front.serve_behind(self._redirect)
            log.info("HTTPS now serving on %s",
                     ", ".join(f"{host}:{port}" for host, port in self.addresses))
            return
        if pair not in self.certificates.certificates:
            self.certificates.certificates.insert(0, pair)
        try:
            self.certificates.reload()
        except TLSConfigError as exc:
            log.error("keeping the old certificates: %s", exc)
            return
        log.info("new certificate in use for new connections")

    # -- admin actions --------------------------------------------------------------------------
    def _reload_result(self) -> tuple[int, object]:
        ok, messages = self.reload()
        return (200 if ok else 409), {"ok": ok, "messages": messages}

    def _maintenance(self, query: dict[str, str], _body: object) -> tuple[int, object]:
        """POST ?on=1 or ?on=0 switches maintenance mode (cached pages only); GET says which."""
        upstream = self.pipeline.upstream
        if "on" in query:
            if query["on"] not in ("0", "1"):
                raise AdminError(400, "maintenance needs ?on=1 or ?on=0")
            upstream.maintenance = query["on"] == "1"
            log.warning("maintenance mode %s", "on: the origin is not asked"
                        if upstream.maintenance else "off")
        return 200, {"maintenance": upstream.maintenance}

    def _purge(self, query: dict[str, str], _body: object) -> tuple[int, object]:
        if query.get("all") == "1":
            url = None
        elif "url" in query:
            url = query["url"]
        else:
            raise AdminError(400, "purge needs ?url=URL or ?all=1")
        purged = self.pipeline.purge(url)
        self.together.purged(url)
        return 200, {"purged": purged}

    def _reload_from_cluster(self) -> None:
        _, messages = self.reload(share=False)
        log.warning("reloaded as another edge of the cluster did: %s", "; ".join(messages))

    def reload(self, *, share: bool = True) -> tuple[bool, list[str]]:
        """SIGHUP or `kalkan reload`: certificates, the pages' templates and logo, and the
        policy. A bad file keeps the old one running and says why. In a cluster, the other
        edges reload too (`share`)."""
        self.together.reloaded(share)
        ok, messages = True, []
        if self.certificates is not None:
            try:
                self.certificates.reload()
                messages.append("TLS certificates reloaded")
            except TLSConfigError as exc:
                ok = False
                messages.append(f"keeping the old certificates: {exc}")
                log.error("reload failed, keeping the old certificates: %s", exc)
        pages_message = "pages reloaded"
        try:
            self.pipeline.pages.load()  # before the defence's reload forgets its block pages
        except PagesError as exc:
            ok = False
            pages_message = f"keeping the old pages: {exc}"
            log.error("pages reload failed, keeping the old pages: %s", exc)
        policy_ok, message = self.pipeline.defense.reload()
        ok = ok and policy_ok
        if message:  # an edge without a defence has no policy to speak of
            messages.append(message if policy_ok else f"keeping the old policy: {message}")
        messages.append(pages_message)
        self.pipeline.forget_replays()
        return ok, messages

    async def stop(self) -> None:
        if self.alert_watch is not None:
            await self.alert_watch.close()
        if self.alerts is not None:
            await self.alerts.close()
        if self.acme is not None:
            await self.acme.stop()
        self.pipeline.fill.close()  # requests finishing below start no deferred refresh
        await self.server.close()
        if self.redirect_server is not None:
            await self.redirect_server.close()
        if self._live_timer is not None:
            self._live_timer.cancel()
        self.live = None
        if self.admin is not None:
            await self.admin.close()
        await self.together.close()
        await self.pipeline.close()
        self._stopped.set()

    def reopen_log(self) -> None:
        """SIGUSR1 (logrotate's postrotate): the access log starts a new file at its path."""
        try:
            self.pipeline.access_log.reopen()
            log.info("access log reopened")
        except OSError as exc:
            log.error("cannot reopen the access log %s: %s; lines are dropped until the next "
                      "SIGUSR1", self.config.access_log.path, exc.strerror or exc)

    def _reload_signalled(self) -> None:
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
               "STATUS=reloading the policy and certificates")
        _, messages = self.reload()
        notify("READY=1", f"STATUS={'; '.join(messages) or 'reloaded'}")

    async def run_until_signalled(self) -> None:
        """Serve until SIGINT/SIGTERM; tells systemd READY=1 first (Type=notify) and feeds its
        watchdog from the event loop, so a stuck loop is restarted."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_signalled)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_log)
        # SIGUSR2 (upgrade) is the supervisor's (docs/workers.md); its default would kill.
        loop.add_signal_handler(signal.SIGUSR2, lambda: log.warning(
            "SIGUSR2 (upgrade) ignored: only a supervisor (workers: 2 or more) upgrades "
            "without a restart; restart this edge to run a new version"))
        listening = ", ".join(f"{h}:{p}" for h, p in self.addresses)
        notify("READY=1", f"STATUS=serving on {listening}")
        interval = watchdog_interval()
        beat: asyncio.TimerHandle | None = None

        def feed() -> None:
            nonlocal beat
            notify("WATCHDOG=1")
            beat = loop.call_later(interval or 1.0, feed)

        if interval is not None:
            feed()
        await stop.wait()
        if beat is not None:
            beat.cancel()
        notify("STOPPING=1", "STATUS=finishing requests in progress")
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
