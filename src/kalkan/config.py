"""One typed config tree for the edge: YAML in, dataclasses out, errors naming the bad key and line.

Every key, its type and its default live in the dataclasses below; `docs/config.md` documents them.
Durations accept `500ms`, `10s`, `5m`, `6h`, `1d` (or plain seconds); sizes accept `64KiB`,
`256MiB`, `1GiB`, `1GB` (or plain bytes).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from kalkan.query_config import parse_query_config
from kalkan.units import parse_duration


class ConfigError(ValueError):
    """Config problems, each with the file, line and dotted key in its message; `problems`
    holds every one found (check-config lists them all), the message is them one per line."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# The paths a service gets when nothing sets them (`kalkan --service`, KALKAN_SERVICE=1): a
# service's working directory is `/`, where the relative defaults would land in /var itself.
SERVICE_PATHS = {
    "state_dir": "/var/lib/kalkan",
    "cache.dir": "/var/cache/kalkan",
    "access_log.path": "/var/log/kalkan/access.log",
}
SERVICE_CONFIG = "/etc/kalkan/kalkan.yaml"


# Bounds a numeric key may carry in its field metadata (checked where the value is read, so the
# error names its line): `min` inclusive, `above` exclusive lower, `max` inclusive upper.
_BOUNDS = ("min", "above", "max")


def _size(doc: str, default: int, **bounds: float) -> Any:
    return field(default=default, metadata={"kind": "size", "doc": doc, **bounds})


def _duration(doc: str, default: float, **bounds: float) -> Any:
    return field(default=default, metadata={"kind": "duration", "doc": doc, **bounds})


def _opt(doc: str, default: Any, **bounds: float) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc, **bounds})


@dataclass
class AcmeConfig:
    """Certificates issued and renewed by an ACME CA (HTTP-01), kept in STATE_DIR/acme/."""

    directory: str | None = _opt(
        "The CA's ACME directory URL (https), e.g. Let's Encrypt's "
        "https://acme-v02.api.letsencrypt.org/directory; required.", None)
    email: str | None = _opt("Contact address given to the CA for expiry notices.", None)
    domains: list[str] = _opt(
        "Names the certificate is for (one certificate, all names); each must reach "
        "`tls.http_listen` on port 80 for HTTP-01. No wildcards.", [])
    renew_before_days: float = _opt(
        "Renew this many days before the certificate expires.", 30.0, above=0)
    retry_interval: float = _duration(
        "Shortest time between two orders: a failed one is retried after it (doubling, up to "
        "1d), and no certificate is ordered again sooner however early renewal is due.", 600.0,
        min=1)
    ca_bundle: str | None = _opt(
        "PEM file of CAs to trust for the ACME server's own HTTPS (a private CA such as "
        "pebble's); null trusts the system's.", None)


@dataclass
class TLSConfig:
    """TLS termination on a listener: one or more certificates chosen by SNI."""

    certificates: list[dict[str, str]] = _opt(
        "List of {cert: PATH, key: PATH}; the first is the default, others are picked by SNI "
        "from the names in each certificate (after the ACME one, if `acme` is set).", [])
    redirect_http: bool = _opt(
        "Also listen on `http_listen` and redirect plain HTTP to HTTPS with 308.", False)
    http_listen: str | None = _opt(
        "Plain-HTTP listener: it redirects when `redirect_http` is true; with `acme` it also "
        "answers HTTP-01 challenges and serves the site while it does not redirect.", None)
    acme: AcmeConfig | None = _opt(
        "Get and renew a certificate from an ACME CA (docs/https.md).", None)
    http2: bool = _opt("Offer HTTP/2 (ALPN h2) as well as HTTP/1.1 on the TLS listeners.", True)


@dataclass
class LimitsConfig:
    """Limits and timeouts that protect the edge itself from slow or oversized clients."""

    max_request_line: int = _size("Longest request line (method, target, version).", 8192, min=64)
    max_header_bytes: int = _size("Largest header block of one request.", 32768, min=1024)
    max_headers: int = _opt("Most header fields in one request.", 100, min=8)
    max_body_bytes: int = _size("Largest request body forwarded to the origin.", 100 * 2**20)
    header_timeout: float = _duration(
        "Time allowed to receive a request's headers from its first byte (slowloris).", 10.0,
        above=0)
    body_timeout: float = _duration("Longest pause between two pieces of a request body.", 15.0,
                                  above=0)
    body_min_rate: int = _size(
        "Slowest accepted average request-body rate in bytes/s after the first 5 s (slow POST); "
        "0 = off.", 1024)
    keepalive_timeout: float = _duration("Idle time before a keep-alive connection closes.", 15.0,
                                       above=0)
    send_timeout: float = _duration(
        "How long a client may take none of what we sent before it is cut off (slow reader).",
        30.0, above=0)
    max_connections: int = _opt(
        "Most open client connections on this edge (the open-files limit is raised to fit at "
        "start).", 20000, min=1)
    max_connections_per_client: int = _opt(
        "Most open connections from one client address (mobile carriers put many readers "
        "behind one address, so keep this generous).", 256, min=1)
    max_pipelined: int = _opt("Most requests queued behind one in progress on a connection.", 16,
                             min=1)


@dataclass
class ClientAddressConfig:
    """Where the real client address comes from."""

    proxy_protocol: bool = _opt(
        "Expect a PROXY protocol (v1 or v2) header on every connection (behind a TCP balancer).",
        False)
    trusted_proxies: list[str] = _opt(
        "Addresses/CIDRs whose X-Forwarded-For is believed (rightmost untrusted hop wins).", [])


@dataclass
class OriginConfig:
    """The upstream site and how hard the edge may lean on it."""

    url: str = _opt("Origin base URL, http://HOST:PORT.", "http://127.0.0.1:8000")
    max_concurrency: int = _opt("Most origin requests in flight at once, whatever clients do.", 16,
                              min=1)
    queue_size: int = _opt("Requests that may wait for an origin slot; more are shed.", 256)
    # 0.7: an origin kept below ~70% busy still answers in about its unloaded time (queueing
    # delay grows steeply past that), and the rest is left for what only the origin can answer.
    headroom: float = _opt(
        "The share of `max_concurrency` that clients not known to be good (new ones, and "
        "those whose behaviour scores bad) may hold together, at all times: the rest is kept "
        "for known readers. Under attack (threat level 1 or more) it is also the share cache "
        "misses and background refreshes may hold together, so the other slots stay free for "
        "logged-in readers, forms and admin; hottest stale pages are refreshed first.", 0.7,
        above=0, max=1)
    queue_timeout: float = _duration("Longest wait for an origin slot before shedding.", 5.0,
                                  above=0)
    connect_timeout: float = _duration("Time allowed to connect to the origin.", 3.0, above=0)
    timeout: float = _duration("Time allowed for the origin's response headers.", 30.0,
                              above=0)
    idle_connections: int = _opt("Idle keep-alive connections kept to the origin.", 32)
    idle_timeout: float = _duration(
        "Idle origin connections older than this are closed, not reused: keep it below the "
        "origin's keep-alive timeout (Apache: 5 s).", 4.0, above=0)
    breaker_failures: int = _opt(
        "Consecutive failures (no connection, timeout, broken response, 502/503/504) that open "
        "the circuit breaker.", 20, min=1)
    breaker_cooldown: float = _duration("How long the open breaker fails fast before a probe.",
                                        10.0, above=0)


@dataclass
class CacheConfig:
    """The shared cache (RFC 9111) and its store."""

    enabled: bool = _opt("Cache at all.", True)
    memory_bytes: int = _size("Byte budget of the in-memory store (LRU beyond it).", 256 * 2**20,
                         above=0)
    max_object_bytes: int = _size("Largest response body stored; larger ones are streamed.",
                                  8 * 2**20, above=0)
    # 64 MiB: the hot set of a newsroom (front page, the story of the day, their images) many
    # times over; a file is only made for a body of 16 KiB or more served 8 times from memory.
    sendfile_bytes: int = _size(
        "Hot bodies of 16 KiB or more are also kept in memory-backed files, up to this many bytes "
        "(oldest closed first), so that the kernel sends them without copying (sendfile): these "
        "bytes come on top of cache.memory_bytes, per worker as it is. 0 = off: every hit is "
        "copied into its socket.",
        64 * 2**20, min=0)
    dir: str | None = _opt(
        "Directory where stored responses persist across restarts; null keeps them in memory only.",
        "var/cache")
    grace: float = _duration(
        "How long past expiry a stale copy may be served when the origin errors, times out or is "
        "shed (never for must-revalidate / s-maxage responses).", 6 * 3600.0)
    # 10 s: a flood of one page costs the origin one request per 10 s (and stale copies cover
    # the rest of the grace period), while an edit shows within 10 s even without the purge
    # plugin (examples/wordpress-plugin); a 1 s TTL leaves most pages of a small site uncached.
    microcache_ttl: float = _duration(
        "Cache anonymous GETs of HTML for this long when the origin sends no freshness (WordPress"
        " sends none on pages); 0 = off. Logged-in readers never get or make these copies.",
        10.0)
    # On by default: with several workers the origin makes a page about once for all of them,
    # not once per worker (bench/results/worker_cache.md); a miss costs a hash and a set lookup,
    # not a disk read.
    share_directory: bool = _opt(
        "With several workers: a worker's memory miss (or stale copy) looks in cache.dir for the"
        " copy another worker stored before asking the origin (docs/workers.md). No effect with"
        " one worker or without cache.dir.", True)
    # Matched as substrings of the Cookie header (one regex search per request with a cookie):
    # keep the list short. `session` also covers wp_woocommerce_session_ and wp_edd_session_.
    session_cookies: list[str] = _opt(
        "Cookie names (matched anywhere in the Cookie header) that mark a reader's own session:"
        " such requests are passed to the origin, never served or stored a shared copy."
        " WordPress login, post password and comment author, WooCommerce and Easy Digital"
        " Downloads carts, PHP sessions (docs/wordpress.md).",
        ["wordpress_logged_in_", "wordpress_sec_", "wp-postpass_", "comment_author_",
         "woocommerce_", "edd_items_in_cart", "PHPSESSID", "session"])
    never_cache_paths: list[str] = _opt(
        "Path globs (`*` matches `/` too) never cached: passed to the origin exactly as sent."
        " The default covers WordPress's admin, login, cron, XML-RPC and comment endpoints.",
        ["/wp-admin", "/wp-admin/*", "/wp-login.php", "/wp-cron.php", "/xmlrpc.php",
         "/wp-comments-post.php", "/wp-signup.php", "/wp-activate.php", "/wp-trackback.php"])
    # Each is a GET that must reach WordPress with its parameters: a dropped parameter would
    # answer with the cached page instead (a comment awaiting moderation shown to its author,
    # a newsletter confirmation link, a payment gateway's return).
    never_cache_params: list[str] = _opt(
        "Query parameters that make a request never cached (previews, nonces, cart and plugin"
        " actions); they are also kept in the cache key, so such a request never matches a"
        " stored page.",
        ["preview", "preview_id", "preview_nonce", "_wpnonce", "doing_wp_cron", "unapproved",
         "moderation-hash", "add-to-cart", "wc-ajax", "wc-api", "mailpoet_router", "na"])
    never_cache_headers: list[str] = _opt(
        "Request header fields that make a request never cached (a WordPress REST nonce means a"
        " logged-in editor's request).", ["X-WP-Nonce"])
    honor_request_cache_control: bool = _opt(
        "Let clients' Cache-Control/Pragma (no-cache, max-age) force revalidation. Off by default,"
        " like Varnish and nginx: during a flood it would let every request reach the origin.",
        False)
    heuristic_fraction: float = _opt(
        "Heuristic freshness as a fraction of (Date - Last-Modified).", 0.1, max=1)
    heuristic_max: float = _duration("Cap on heuristic freshness.", 86400.0)
    query: dict[str, Any] = _opt(
        "Query-string normalization of the cache key: {default: [params], paths: {GLOB: [params]},"
        " keep_all: bool}. Parameters not allowed are dropped before lookup and fetch. Built in"
        " after your paths: only `ver` on *.css, *.js, *.mjs; every parameter under /wp-json/.",
        {})


@dataclass
class FirewallConfig:
    """Kernel drops for the worst decisions (Linux, root, nftables)."""

    enabled: bool = _opt("Push `drop` decisions into an nftables table (needs root and nft).",
                         False)
    table: str = _opt("Name of the nftables table (family inet) Kalkan owns.", "kalkan")


@dataclass
class DefenseConfig:
    """Who gets through: policy, client tracking, challenges, attack mode."""

    enabled: bool = _opt("Run the defence at all (rules, rates, decisions, challenges).", True)
    policy: str | None = _opt(
        "Policy file (docs/policy.md); null uses the shipped default for a news site.", None)
    prefix_v4: int = _opt("IPv4 prefix length that groups a client's neighbours.", 24,
                          min=8, max=32)
    prefix_v6: int = _opt("IPv6 prefix length that groups a client's neighbours.", 64,
                          min=16, max=128)
    clients: int = _opt("Most client addresses tracked at once (oldest idle ones go first).",
                        1_000_000, min=1, max=1 << 28)
    allow: list[str] = _opt("Addresses/CIDRs never challenged or blocked (your newsroom).", [])
    pass_ttl: float = _duration("How long a passed challenge lets a reader through.", 86400.0,
                                above=0)
    pass_max_addresses: int = _opt(
        "Most addresses one pass is used from (it is bound to a prefix and a user agent, so a "
        "botnet in one network could share it); beyond, its holder gets a new challenge.", 8,
        min=1)
    pass_max_per_minute: int = _opt(
        "Most requests a minute made with one pass (a burst of as many is allowed); beyond, "
        "its holder gets a new challenge.", 600, min=1)
    nojs_delay: float = _duration(
        "The wait of the no-JavaScript challenge (shorter than the 5 min a challenge lives).",
        5.0, above=0, max=299)
    key_file: str | None = _opt(
        "Signing keys for passes, shared by several edges; null = STATE_DIR/keys.json.", None)
    attack_mode: str = _opt("`auto` follows the signals; `on` / `off` pin the threat level.",
                            "auto")
    behaviour: bool = _opt(
        "Score each client by how it behaves (docs/policy.md, \"Behaviour\"): under attack only "
        "clients that score bad are challenged before a miss, and only bad behaviour, not "
        "volume, raises the threat level beyond elevated. Off: every client without a pass is "
        "challenged before a miss under attack, and volume alone may raise any level.", True)
    behaviour_model: str | None = _opt(
        "A behaviour model file (bench/lab/train_score.py writes one); null = the shipped one.",
        None)
    behaviour_threshold: float | None = _opt(
        "Score (0-1) at or above which a client counts as behaving like a bot; null = the "
        "model's own, chosen when it was trained.", None, min=0.01, max=0.99)
    tarpit_delay: float = _duration("How long a tarpitted request waits before its 429.", 10.0)
    max_tarpitted: int = _opt("Most requests held in the tarpit at once; more are refused.",
                              1000)
    firewall: FirewallConfig = field(default_factory=FirewallConfig,
                                     metadata={"doc": "Kernel drops."})


@dataclass
class AccessLogConfig:
    """One JSON line per request."""

    path: str | None = _opt(
        "File for the access log; `-` is stdout, null disables it. With `--service` the default "
        "is /var/log/kalkan/access.log (reopened on SIGUSR1, after logrotate).", "-")
    pseudonymize: bool = _opt(
        "Write client addresses as their network and a keyed hash (`203.0.113.x-1a2b3c4d`, "
        "IPv6 keeps the /48), for a log that leaves the newsroom; the same address gives the "
        "same name with the same key (docs/analyze.md).", False)
    pseudonym_key_file: str | None = _opt(
        "Key for `pseudonymize` (at least 16 bytes); null = STATE_DIR/log-pseudonym.key, made "
        "on first start. Keep it to link logs; lose it and no name can be undone.", None)


@dataclass
class AdminConfig:
    """The admin listener: metrics and purge; never the public listener."""

    listen: str | None = _opt(
        "Admin HOST:PORT; null disables it. Keep it on loopback: on any other address a warning "
        "is logged at start and every admin route, `/metrics` and `/healthz` included, needs "
        "the token.", "127.0.0.1:9181")
    token: str | None = _opt(
        "Bearer token (`Authorization: Bearer TOKEN`) for the admin routes, at least 16 "
        "characters; null uses STATE_DIR/admin.token, made on first start. Required when "
        "`admin.listen` is not on loopback. On loopback `/metrics` and `/healthz` stay open (a "
        "local Prometheus scrape); elsewhere they need it too.", None)


@dataclass
class TelegramAlertConfig:
    """Alerts as Telegram messages from a bot (docs/alerts.md says how to make one)."""

    chat_id: str | None = _opt(
        "The chat, group or channel the bot writes to (a number such as -1001234567890, or "
        "@channelname); required.", None)
    token: str | None = _opt("The bot's token from @BotFather; prefer token_file or token_env.",
                             None)
    token_file: str | None = _opt("File holding the bot's token (one line).", None)
    token_env: str | None = _opt("Environment variable holding the bot's token.", None)
    api_url: str = _opt(
        "Base URL of the Bot API; https, or http only to a loopback address (a local stand-in).",
        "https://api.telegram.org")


@dataclass
class WebhookAlertConfig:
    """Alerts POSTed as JSON to a URL (the schema is in docs/alerts.md)."""

    url: str | None = _opt("Where to POST, http(s)://...; required.", None)
    secret: str | None = _opt(
        "Shared secret: each POST carries X-Kalkan-Signature, an HMAC-SHA256 of the timestamp "
        "and body; null sends no signature.", None)
    secret_file: str | None = _opt("File holding the shared secret (one line).", None)
    secret_env: str | None = _opt("Environment variable holding the shared secret.", None)


@dataclass
class EmailAlertConfig:
    """Alerts as e-mail through an SMTP server."""

    host: str | None = _opt("SMTP server name or address; required.", None)
    port: int = _opt("SMTP port: 587 for starttls, 465 for tls, 25 for none.", 587, min=1,
                     max=65535)
    security: str = _opt("`starttls`, `tls` (implicit TLS) or `none`.", "starttls")
    username: str | None = _opt("Login name; null sends without logging in.", None)
    password: str | None = _opt("Login password; prefer password_file or password_env.", None)
    password_file: str | None = _opt("File holding the login password (one line).", None)
    password_env: str | None = _opt("Environment variable holding the login password.", None)
    sender: str | None = _opt("From: address; required.", None)
    to: list[str] = _opt("Recipients; at least one.", [])


@dataclass
class AlertsConfig:
    """Messages to the newsroom: attack start/end, origin down/up, certificate near expiry."""

    site_name: str | None = _opt(
        "The site's name in every message; null uses site.name, else the ACME domain, else the "
        "host name.", None)
    language: str = _opt("Language of the messages: en, ru or ky.", "en")
    interval: float = _duration(
        "At most one message per channel per interval; events inside it are summarised into "
        "the next message.", 60.0, min=1)
    cert_expiry_days: float = _opt(
        "Warn when a certificate expires within this many days.", 14.0, above=0)
    timeout: float = _duration("Time allowed for one delivery attempt.", 10.0, above=0)
    retries: int = _opt("Further attempts after a failed delivery (1 s, 2 s, 4 s... apart).", 3,
                        max=10)
    queue_size: int = _opt(
        "Events held per channel until the next message; beyond it the oldest are counted, "
        "not listed.", 100, min=1)
    ca_bundle: str | None = _opt(
        "PEM file of CAs to trust for the channels' TLS (a private CA); null trusts the "
        "system's.", None)
    telegram: TelegramAlertConfig | None = _opt("Telegram bot channel.", None)
    webhook: WebhookAlertConfig | None = _opt("Webhook channel.", None)
    email: EmailAlertConfig | None = _opt("E-mail (SMTP) channel.", None)


@dataclass
class SiteConfig:
    """The site as readers see it on Kalkan's own pages (docs/pages.md)."""

    name: str = _opt("The site's name, shown on every page Kalkan itself sends.", "")
    logo: str | None = _opt(
        "A local image file (png, svg, jpg, webp, gif, ico; at most 64 KiB) shown with the name;"
        " Kalkan serves it at /.kalkan/logo. Never a URL: the pages load nothing from elsewhere.",
        None)
    language: str = _opt(
        "The pages' language when a reader's Accept-Language names none of ky, ru, en.", "en")
    templates: str | None = _opt(
        "Directory of Jinja2 templates replacing the shipped ones by file name (docs/pages.md);"
        " checked at start: a broken one stops the start with its file and line.", None)
    maintenance: bool = _opt(
        "Maintenance mode at start: the origin is not asked; cached pages (fresh, or stale within"
        " the grace) are served, anything else gets the maintenance page (503). Switched at run"
        " time with the admin route POST /maintenance?on=1|0.", False)


@dataclass
class ClusterConfig:
    """Several edges of one site sharing their state through Redis (docs/cluster.md)."""

    redis: str | None = _opt(
        "Redis (or Valkey) URL: redis://HOST:PORT/DB, rediss://, unix:///PATH, "
        "redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER, or redis+cluster://HOST:PORT[,HOST:PORT]"
        " (a Redis Cluster's nodes); null = this edge alone.", None)
    namespace: str = _opt("Name shared by the edges of one site; other sites on the same Redis "
                          "use another.", "site")
    edge_id: str | None = _opt("This edge's name in the cluster (logs, threat reports); null = "
                               "host name and first listen port.", None)
    interval: float = _duration("A lone change is sent at once; under a flood of changes, one "
                                "batch (one round trip) per this interval.", 0.02,
                                min=0.005, max=1)


@dataclass
class AllianceConfig:
    """Newsrooms that defend together (docs/alliance.md): this edge's signed feed, its allies'."""

    name: str | None = _opt("This newsroom's name in its feed; null uses site.name, else the "
                            "host name.", None)
    publish: bool = _opt("Serve the signed feed at /.well-known/kalkan/feed once `kalkan "
                         "alliance init` has made an identity.", True)
    prefixes_only: bool = _opt("Share prefixes (IPv4 /24, IPv6 /64) only, never one address.",
                               False)
    poll_interval: float = _duration("How often the allies' feeds are fetched (and this edge's "
                                     "is remade when its decisions changed).", 10.0, min=1)
    feed_lifetime: float = _duration("How long an ally may act on this edge's feed without "
                                     "fetching it again.", 600.0, min=30)


@dataclass
class Config:
    """The whole edge configuration."""

    listen: list[str] = _opt("Public HOST:PORT listeners.", ["127.0.0.1:8080"])
    tls: TLSConfig | None = _opt("TLS termination for the listeners (see below).", None)
    origin: OriginConfig = field(default_factory=OriginConfig, metadata={"doc": "Origin."})
    cache: CacheConfig = field(default_factory=CacheConfig, metadata={"doc": "Cache."})
    limits: LimitsConfig = field(default_factory=LimitsConfig, metadata={"doc": "Limits."})
    client_address: ClientAddressConfig = field(
        default_factory=ClientAddressConfig, metadata={"doc": "Client address."})
    access_log: AccessLogConfig = field(
        default_factory=AccessLogConfig, metadata={"doc": "Access log."})
    admin: AdminConfig = field(default_factory=AdminConfig, metadata={"doc": "Admin listener."})
    defense: DefenseConfig = field(default_factory=DefenseConfig, metadata={"doc": "Defence."})
    alerts: AlertsConfig = field(default_factory=AlertsConfig, metadata={"doc": "Alerts."})
    site: SiteConfig = field(default_factory=SiteConfig, metadata={"doc": "Site (pages)."})
    cluster: ClusterConfig = field(default_factory=ClusterConfig,
                                   metadata={"doc": "Cluster (shared state)."})
    alliance: AllianceConfig = field(default_factory=AllianceConfig,
                                     metadata={"doc": "Alliance (allied newsrooms)."})
    state_dir: str = _opt(
        "Directory for state that must survive restarts (decisions, keys, the admin token); "
        "relative to the working directory, `/var/lib/kalkan` with `--service`.", "var")
    user: str | None = _opt(
        "Started as root: drop to this user after binding the listeners (ports 80/443), before "
        "any file is opened. null stays who started it (the systemd unit starts as `kalkan` "
        "with CAP_NET_BIND_SERVICE instead).", None)
    group: str | None = _opt("Group to drop to with `user`; null is the user's own group.",
                             None)
    workers: int | None = _opt(
        "Worker processes serving the listeners, each a whole edge, under one supervisor that "
        "restarts them (docs/workers.md). null = the cores this process may use (at most "
        "`origin.max_concurrency`, and 1 with `tls.acme`); 1 = one process, no supervisor. "
        "Each worker holds its share of `origin.max_concurrency`, `origin.queue_size`, "
        "`origin.idle_connections` and `limits.max_connections`, so the machine never exceeds "
        "them; `cache.memory_bytes` is per worker.", None, min=1, max=256)


_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 10**6,
               "mb": 10**6, "mib": 2**20, "mi": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30,
               "gi": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40, "ti": 2**40}


def parse_size(value: Any) -> int:
    """`256MiB`, `64KiB`, `1GB`, or a number of bytes → bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 256MiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value!r}")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a size like 64KiB, 256MiB or 1GiB, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


def parse_hostport(value: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`HOST:PORT`, `[::1]:PORT` or `:PORT` → (host, port)."""
    text = str(value).strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPV6]:PORT, got {value!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return host or default_host, int(port)


def is_loopback_host(host: str) -> bool:
    """True for a loopback listen address (127.0.0.0/8, ::1, localhost); a wildcard, another
    address or any other name counts as public."""
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def parse_origin_url(value: str) -> tuple[str, str, int]:
    """`http://HOST:PORT` → (scheme, host, port)."""
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an origin like http://HOST:PORT, got {value!r}")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"the origin URL must not have a path or query, got {value!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port


def _where(node: yaml.Node | None, source: str) -> str:
    if node is None:
        return source
    return f"{source}:{node.start_mark.line + 1}"


def _convert(tp: Any, node: yaml.Node, value: Any, key: str, source: str, kind: str | None) -> Any:
    """Check and convert one YAML value against a dataclass field type."""
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{_where(node, source)}: {key}: {msg}")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], node, value, key, source, kind)
    try:
        if kind == "duration":
            return parse_duration(value)
        if kind == "size":
            return parse_size(value)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(node, yaml.MappingNode):
            raise fail("expected a mapping")
        return _build(tp, node, source, key + ".")
    if origin is list:
        if not isinstance(value, list):
            if tp == list[str] and isinstance(value, str):
                return [value]
            raise fail(f"expected a list, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(f"expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected a whole number, got {value!r}")
        if value < 0:
            raise fail(f"must not be negative, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise fail(f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int):
            raise fail(f"expected text, got {value!r}")
        return str(value)
    return value


def _build(cls: Any, node: yaml.MappingNode, source: str, prefix: str = "") -> Any:
    """The dataclass from a mapping. Every bad key is reported, not just the first: a bad one
    keeps its default so the rest can still be built and checked."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    for key_node, value_node in node.value:
        name = str(key_node.value)
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            problems.append(f"{_where(key_node, source)}: unknown key {prefix}{name}{hint}")
            continue
        value = yaml.safe_load(yaml.serialize(value_node))
        f = fields[name]
        try:
            kwargs[name] = _convert(hints[name], value_node, value, prefix + name, source,
                                    f.metadata.get("kind"))
        except _Partial as partial:  # a section with bad keys: keep its good ones
            kwargs[name] = partial.value
            problems.extend(partial.problems)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise _Partial(cls(**kwargs), problems)
    return cls(**kwargs)


class _Partial(ConfigError):
    """What _build could make of a mapping with bad keys, and the problems."""

    def __init__(self, value: Any, problems: list[str]) -> None:
        super().__init__(*problems)
        self.value = value


def _key_lines(node: yaml.Node, source: str, path: str = "",
               lines: dict[str, int] | None = None) -> dict[str, int]:
    """Line of every dotted key (list items as `key[i]`); a key given twice in one mapping is an
    error naming both lines (YAML would silently keep the last one)."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value)
            dotted = f"{path}.{name}" if path else name
            line = key_node.start_mark.line + 1
            if name in seen:
                raise ConfigError(f"{source}:{line}: {dotted}: duplicate key, already given on "
                                  f"line {seen[name]}")
            seen[name] = line
            lines.setdefault(dotted, line)
            _key_lines(value_node, source, dotted, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            dotted = f"{path}[{i}]"
            lines.setdefault(dotted, item.start_mark.line + 1)
            _key_lines(item, source, dotted, lines)
    return lines


def load_config_text(text: str, source: str = "<config>", *, service: bool = False,
                     files: bool = True) -> Config:
    """Parse YAML text into a checked Config; raise ConfigError naming the file, line and key of
    every problem. `service`: paths the text leaves unset get SERVICE_PATHS; `files`: load the
    policy and certificates it names too (the admin commands only need addresses and paths)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}{line}: not valid YAML: {problem}") from None
    lines: dict[str, int] = {}
    problems: list[str] = []
    if node is None:
        config = Config()
    elif not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{_where(node, source)}: the config must be a mapping of keys")
    else:
        lines = _key_lines(node, source)
        try:
            config = _build(Config, node, source)
        except _Partial as partial:
            config, problems = partial.value, partial.problems
    if service:
        apply_service_paths(config, set(lines))
    try:
        validate(config, source, lines, files=files)
    except ConfigError as exc:
        problems.extend(p for p in exc.problems if p not in problems)
    if problems:
        raise ConfigError(*problems)
    return config


def apply_service_paths(config: Config, given: set[str]) -> None:
    """SERVICE_PATHS for each path key not in `given` (the dotted keys a file set)."""
    for key, path in SERVICE_PATHS.items():
        if key in given:
            continue
        section, _, name = key.rpartition(".")
        setattr(getattr(config, section) if section else config, name, path)


def load_config(path: str | Path, *, service: bool = False, files: bool = True) -> Config:
    """Read and check a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
    return load_config_text(text, str(p), service=service, files=files)


def _bound_text(meta: Any) -> str:
    """The bounds of a key in words, for errors and docs/config.md ('' if it has none)."""
    parts = []
    if "min" in meta:
        parts.append(f"at least {_number(meta['min'])}")
    if "above" in meta:
        parts.append(f"more than {_number(meta['above'])}")
    if "max" in meta:
        parts.append(f"at most {_number(meta['max'])}")
    return " and ".join(parts)


def _number(x: float) -> str:
    """A bound as people write it: whole numbers in full (268435456, not 2.68435e+08)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _check_bounds(obj: Any, where: Any, problems: list[str], prefix: str = "") -> None:
    """Every number finite and within its field's bounds, however it was set (file or flag)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_bounds(value, where, problems, key + ".")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            problems.append(f"{where(key)}: {key}: must be a finite number, got {value!r}")
            continue
        meta = f.metadata
        if (("min" in meta and value < meta["min"]) or ("above" in meta and value <= meta["above"])
                or ("max" in meta and value > meta["max"])):
            problems.append(f"{where(key)}: {key}: must be {_bound_text(meta)}, got {value!r}")


_DNS_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)"
                       r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _check_acme(tls: TLSConfig, where: Any, problems: list[str]) -> None:
    """The ACME section: a CA to ask, names it can validate over HTTP-01, a listener for it."""
    acme = tls.acme
    assert acme is not None
    if not acme.directory:
        problems.append(f"{where('tls.acme')}: tls.acme.directory: the CA's ACME directory "
                        "URL is needed, e.g. https://acme-v02.api.letsencrypt.org/directory")
    else:
        parts = urlsplit(acme.directory)
        if parts.scheme != "https" or not parts.hostname:
            problems.append(f"{where('tls.acme.directory')}: tls.acme.directory: expected an "
                            f"https:// URL, got {acme.directory!r}")
    if not acme.domains:
        problems.append(f"{where('tls.acme.domains')}: tls.acme.domains: at least one name "
                        "is needed")
    for i, name in enumerate(acme.domains):
        key = f"tls.acme.domains[{i}]"
        if not isinstance(name, str) or name.startswith("*."):
            problems.append(f"{where(key)}: {key}: {name!r}: HTTP-01 cannot prove a wildcard "
                            "name; list each name")
        elif not _DNS_NAME.match(name.lower().rstrip(".")) or _is_ip(name):
            problems.append(f"{where(key)}: {key}: {name!r} is not a DNS name")
    if acme.email is not None and "@" not in acme.email:
        problems.append(f"{where('tls.acme.email')}: tls.acme.email: expected an address, "
                        f"got {acme.email!r}")
    if not tls.http_listen:
        problems.append(f"{where('tls.acme')}: tls.http_listen: needed with tls.acme (the CA "
                        "checks /.well-known/acme-challenge/ over plain HTTP on port 80)")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_files(config: Config, where: Any, problems: list[str]) -> None:
    """Load what serve will load, the same way: the policy (compiled) and the TLS pairs."""
    from kalkan.defense.rules import Policy, PolicyError  # late: keeps config importable alone
    from kalkan.tls import CertificateSet, TLSConfigError

    if config.defense.enabled and config.defense.policy:
        try:
            Policy.from_file(config.defense.policy)
        except PolicyError as exc:
            problems.append(f"{where('defense.policy')}: defense.policy: {exc}")
    _check_site(config.site, where, problems)
    if config.access_log.pseudonymize and config.access_log.pseudonym_key_file:
        from kalkan.observe.pseudonym import PseudonymKeyError, load_key
        try:
            load_key(config.access_log.pseudonym_key_file)
        except PseudonymKeyError as exc:
            key = "access_log.pseudonym_key_file"
            problems.append(f"{where(key)}: {key}: {exc}")
    if config.tls is not None:
        for i, pair in enumerate(config.tls.certificates):
            key = f"tls.certificates[{i}]"
            if not isinstance(pair, dict) or set(pair) != {"cert", "key"}:
                continue  # said by validate
            try:
                CertificateSet([pair])
            except TLSConfigError as exc:
                problems.append(f"{where(key)}: {key}: {exc}")
        bundle = config.tls.acme.ca_bundle if config.tls.acme is not None else None
        if bundle and not Path(bundle).is_file():
            problems.append(f"{where('tls.acme.ca_bundle')}: tls.acme.ca_bundle: {bundle}: "
                            "no such file")


def _check_site(site: SiteConfig, where: Any, problems: list[str]) -> None:
    """Render the pages as serve will: a broken template is named with its file and line."""
    from kalkan.pages import LANGUAGES, Pages, PagesError  # late: jinja2 only when checking

    if site.language not in LANGUAGES:
        problems.append(f"{where('site.language')}: site.language: {site.language!r} is not one "
                        f"of {', '.join(LANGUAGES)}")
        return
    try:
        Pages.from_config(site)
    except PagesError as exc:
        key = "site.logo" if site.logo and str(exc).startswith(site.logo) else "site.templates"
        problems.append(f"{where(key)}: {key}: {exc}")


def _check_identity(config: Config, where: Any, problems: list[str]) -> None:
    """`user` and `group` name accounts this machine has."""
    import grp  # late: POSIX only, and only needed when they are set
    import pwd

    if config.user is not None:
        try:
            pwd.getpwnam(config.user)
        except KeyError:
            problems.append(f"{where('user')}: user: no user {config.user!r} on this machine "
                            f"(create it: useradd --system {config.user})")
    if config.group is not None:
        try:
            grp.getgrnam(config.group)
        except KeyError:
            problems.append(f"{where('group')}: group: no group {config.group!r} on this machine")
        if config.user is None:
            problems.append(f"{where('group')}: group: set only together with user")


def _check_workers(config: Config, where: Any, problems: list[str]) -> None:
    """Several workers share the origin's slots (each needs one) and cannot share an ACME
    account's HTTP-01 answers (the CA's request may reach any worker)."""
    n = config.workers
    if n is None or n == 1 or isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return
    if config.origin.max_concurrency < n:
        problems.append(f"{where('workers')}: workers: {n} workers need origin.max_concurrency "
                        f"of at least {n} (each worker holds at least one origin slot, and "
                        f"together they hold {config.origin.max_concurrency}); lower workers "
                        "or raise origin.max_concurrency")
    if config.tls is not None and config.tls.acme is not None:
        problems.append(f"{where('workers')}: workers: tls.acme needs workers: 1 (one process "
                        "answers the CA's HTTP-01 requests); use your own tls.certificates "
                        "with several workers")


def resolve_workers(config: Config) -> int:
    """How many workers `serve` runs: the configured number, else the cores this process may
    use, bounded so each worker keeps an origin slot (and 1 with tls.acme)."""
    if config.workers is not None:
        return config.workers
    if config.tls is not None and config.tls.acme is not None:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, config.origin.max_concurrency))


# A bearer token an attacker could guess is no protection for a listener off loopback.
MIN_TOKEN_LENGTH = 16


def validate(config: Config, source: str = "<config>",
             lines: dict[str, int] | None = None, *, files: bool = True) -> None:
    """Everything serve would refuse: bounds, cross-field checks and the files the config names
    (the policy compiles, each TLS pair loads). `lines` maps dotted keys to their line. Raises
    one ConfigError listing every problem."""
    problems: list[str] = []

    def where(key: str) -> str:
        line = (lines or {}).get(key)
        return f"{source}:{line}" if line else source

    def check(key: str, fn: Any, value: Any, item: str | None = None) -> bool:
        try:
            fn(value)
        except ValueError as exc:
            problems.append(f"{where(item or key)}: {key}: {exc}")
            return False
        return True

    if not config.listen:
        problems.append(f"{where('listen')}: listen: at least one HOST:PORT is needed")
    for i, item in enumerate(config.listen):
        check("listen", parse_hostport, item, f"listen[{i}]")
    check("origin.url", parse_origin_url, config.origin.url)
    admin = config.admin
    if (admin.listen and check("admin.listen", parse_hostport, admin.listen)
            and not is_loopback_host(parse_hostport(admin.listen)[0]) and not admin.token):
        problems.append(
            f"{where('admin.listen')}: admin.listen: {admin.listen} is not on loopback, so "
            "every admin route needs a token: set admin.token (at least "
            f"{MIN_TOKEN_LENGTH} characters) or listen on 127.0.0.1")
    if admin.token is not None and len(admin.token) < MIN_TOKEN_LENGTH:
        problems.append(f"{where('admin.token')}: admin.token: at least {MIN_TOKEN_LENGTH} "
                        "characters, so it cannot be guessed (e.g. `openssl rand -hex 24`)")
    for i, item in enumerate(config.client_address.trusted_proxies):
        check("client_address.trusted_proxies",
              lambda v: ipaddress.ip_network(v, strict=False), item,
              f"client_address.trusted_proxies[{i}]")
    if config.defense.attack_mode not in ("auto", "on", "off"):
        problems.append(f"{where('defense.attack_mode')}: defense.attack_mode: must be auto, "
                        f"on or off, not {config.defense.attack_mode!r}")
    for i, item in enumerate(config.defense.allow):
        check("defense.allow", lambda v: ipaddress.ip_network(v, strict=False), item,
              f"defense.allow[{i}]")
    _check_bounds(config, where, problems)
    if config.tls is not None:
        if not config.tls.certificates and config.tls.acme is None:
            problems.append(f"{where('tls.certificates')}: tls.certificates: at least one "
                            "{cert, key} is needed (or tls.acme)")
        for i, cert in enumerate(config.tls.certificates):
            if not isinstance(cert, dict) or set(cert) != {"cert", "key"}:
                problems.append(f"{where(f'tls.certificates[{i}]')}: tls.certificates[{i}]: "
                                "expected {cert: PATH, key: PATH}")
        if config.tls.redirect_http and not config.tls.http_listen:
            problems.append(f"{where('tls.redirect_http')}: tls.http_listen: needed when "
                            "tls.redirect_http is true")
        if config.tls.http_listen:
            check("tls.http_listen", parse_hostport, config.tls.http_listen)
        if config.tls.acme is not None:
            _check_acme(config.tls, where, problems)
    try:
        parse_query_config(config.cache.query)
    except ValueError as exc:
        problems.append(f"{where('cache.query')}: cache.query: {exc}")
    try:
        _check_never_cache(config.cache, where)
    except ConfigError as exc:
        problems.extend(exc.problems)
    _check_identity(config, where, problems)
    _check_workers(config, where, problems)
    if config.cluster.redis is not None:
        from kalkan.cluster.redis_link import check_url  # late: redis is imported only then

        check("cluster.redis", check_url, config.cluster.redis)
    if not config.cluster.namespace or not config.cluster.namespace.replace("-", "").replace(
            "_", "").replace(".", "").isalnum():
        problems.append(f"{where('cluster.namespace')}: cluster.namespace: letters, digits, "
                        f"'-', '_' and '.' only, got {config.cluster.namespace!r}")
    _check_alerts(config.alerts, where, problems, files)
    if files:
        _check_files(config, where, problems)
    if problems:
        raise ConfigError(*problems)


def read_secret(value: str | None, file: str | None, env: str | None, key: str, *,
                read: bool = True) -> str | None:
    """A secret given inline, in a file (first line) or in an environment variable; None when
    none is given. ValueError naming `key` when more than one is given or the source is
    unusable. `read=False` only checks that one is given (its text is then `key`)."""
    given = [name for name, v in (("", value), ("_file", file), ("_env", env)) if v]
    if len(given) > 1:
        raise ValueError(f"give only one of {', '.join(key + g for g in given)}")
    if given and not read:
        return key
    if value:
        return value
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{key}_file: cannot read {file}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        if not text:
            raise ValueError(f"{key}_file: {file} is empty")
        return text
    if env:
        import os  # late: only secrets read the environment

        text = os.environ.get(env, "").strip()
        if not text:
            raise ValueError(f"{key}_env: the environment variable {env} is not set or empty")
        return text
    return None


def _check_alerts(alerts: AlertsConfig, where: Any, problems: list[str], files: bool) -> None:
    """Each alert channel has what it needs to send, and (with `files`) its secrets can be
    read: the admin commands, run by another user, need not read them."""
    def bad(key: str, why: str) -> None:
        # A missing key has no line: name the line of the section that lacks it.
        near = key
        while "." in near and where(near) == where(""):
            near = near.rpartition(".")[0]
        problems.append(f"{where(near)}: {key}: {why}")

    def secret(value: str | None, file: str | None, env: str | None, key: str) -> str | None:
        try:
            return read_secret(value, file, env, key, read=files)
        except ValueError as exc:  # "KEY_file: why" names the key given; else the secret's
            text = str(exc)
            given, sep, why = text.partition(": ")
            if sep and given.startswith(key):
                bad(given, why)
            else:
                bad(key, text)
            return key

    if alerts.language not in ("en", "ru", "ky"):
        bad("alerts.language", f"must be en, ru or ky, not {alerts.language!r}")
    if alerts.ca_bundle and not Path(alerts.ca_bundle).is_file():
        bad("alerts.ca_bundle", f"{alerts.ca_bundle}: no such file")
    tg = alerts.telegram
    if tg is not None:
        if not tg.chat_id:
            bad("alerts.telegram.chat_id", "the chat to write to is needed (docs/alerts.md "
                "says how to find it)")
        if secret(tg.token, tg.token_file, tg.token_env, "alerts.telegram.token") is None:
            bad("alerts.telegram", "the bot's token is needed: token_file, token_env or token")
        parts = urlsplit(tg.api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            bad("alerts.telegram.api_url", f"expected an https:// URL, got {tg.api_url!r}")
        elif parts.scheme == "http" and not is_loopback_host(parts.hostname):
            bad("alerts.telegram.api_url", "plain http would send the bot's token in clear: "
                "use https (http is only for a stand-in on loopback)")
    hook = alerts.webhook
    if hook is not None:
        parts = urlsplit(hook.url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            bad("alerts.webhook.url", f"expected an http(s):// URL, got {hook.url!r}")
        secret(hook.secret, hook.secret_file, hook.secret_env, "alerts.webhook.secret")
    mail = alerts.email
    if mail is not None:
        if not mail.host:
            bad("alerts.email.host", "the SMTP server is needed")
        if mail.security not in ("starttls", "tls", "none"):
            bad("alerts.email.security", f"must be starttls, tls or none, not {mail.security!r}")
        if not mail.sender or "@" not in mail.sender:
            bad("alerts.email.sender", f"expected a From: address, got {mail.sender!r}")
        if not mail.to:
            bad("alerts.email.to", "at least one recipient is needed")
        for i, rcpt in enumerate(mail.to):
            if not isinstance(rcpt, str) or "@" not in rcpt:
                bad(f"alerts.email.to[{i}]", f"expected an address, got {rcpt!r}")
        password = secret(mail.password, mail.password_file, mail.password_env,
                          "alerts.email.password")
        if password is not None and not mail.username:
            bad("alerts.email.username", "needed with a password")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_never_cache(cache: CacheConfig, where: Any) -> None:
    """The never_cache lists: globs that can match a path, names a request can carry."""
    def bad(key: str, i: int, why: str) -> ConfigError:
        return ConfigError(f"{where(f'cache.{key}[{i}]')}: cache.{key}[{i}]: {why}")

    for i, glob in enumerate(cache.never_cache_paths):
        if not glob.startswith(("/", "*")):
            raise bad("never_cache_paths", i, f"{glob!r} is not a path glob (must start with / "
                      "or *)")
    for i, name in enumerate(cache.never_cache_params):
        if not name or "&" in name or "=" in name:
            raise bad("never_cache_params", i, f"{name!r} is not a parameter name")
    for i, name in enumerate(cache.never_cache_headers):
        if not _TOKEN.fullmatch(name):
            raise bad("never_cache_headers", i, f"{name!r} is not a header field name")
    for i, name in enumerate(cache.session_cookies):
        if not name:
            raise bad("session_cookies", i, "an empty name would match every Cookie header")


def describe(cls: Any = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every key; used to write and check docs/config.md."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        target = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        if target is not None:
            rows.extend(describe(target, prefix + f.name + "."))
            continue
        factory = f.default_factory
        if f.default is dataclasses.MISSING and factory is not dataclasses.MISSING:
            default = factory()
        else:
            default = f.default
        doc = f.metadata.get("doc", "")
        bounds = _bound_text(f.metadata)
        if bounds:
            doc += f" Must be {bounds}."
        rows.append((prefix + f.name, repr(default), doc))
    return rows
