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
    """A config problem, with the file, line and dotted key in its message."""


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
class TLSConfig:
    """TLS termination on a listener: one or more certificates chosen by SNI."""

    certificates: list[dict[str, str]] = _opt(
        "List of {cert: PATH, key: PATH}; the first is the default, others are picked by SNI "
        "from the names in each certificate.", [])
    redirect_http: bool = _opt(
        "Also listen on `http_listen` and redirect plain HTTP to HTTPS with 308.", False)
    http_listen: str | None = _opt("Plain-HTTP listener used for the redirect.", None)
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
    dir: str | None = _opt(
        "Directory where stored responses persist across restarts; null keeps them in memory only.",
        "var/cache")
    grace: float = _duration(
        "How long past expiry a stale copy may be served when the origin errors, times out or is "
        "shed (never for must-revalidate / s-maxage responses).", 6 * 3600.0)
    microcache_ttl: float = _duration(
        "Cache anonymous GETs of HTML for this long when the origin sends no freshness; 0 = off.",
        0.0)
    session_cookies: list[str] = _opt(
        "Cookie-name prefixes that mark a logged-in user (bypass microcaching).",
        ["wordpress_logged_in", "wp-postpass", "comment_author", "PHPSESSID", "session"])
    honor_request_cache_control: bool = _opt(
        "Let clients' Cache-Control/Pragma (no-cache, max-age) force revalidation. Off by default,"
        " like Varnish and nginx: during a flood it would let every request reach the origin.",
        False)
    heuristic_fraction: float = _opt(
        "Heuristic freshness as a fraction of (Date - Last-Modified).", 0.1, max=1)
    heuristic_max: float = _duration("Cap on heuristic freshness.", 86400.0)
    query: dict[str, Any] = _opt(
        "Query-string normalization of the cache key: {default: [params], paths: {GLOB: [params]},"
        " keep_all: bool}. Parameters not allowed are dropped before lookup and fetch.", {})


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
                        1_000_000, min=1)
    allow: list[str] = _opt("Addresses/CIDRs never challenged or blocked (your newsroom).", [])
    pass_ttl: float = _duration("How long a passed challenge lets a reader through.", 86400.0,
                                above=0)
    nojs_delay: float = _duration(
        "The wait of the no-JavaScript challenge (shorter than the 5 min a challenge lives).",
        5.0, above=0, max=299)
    key_file: str | None = _opt(
        "Signing keys for passes, shared by several edges; null = STATE_DIR/keys.json.", None)
    attack_mode: str = _opt("`auto` follows the signals; `on` / `off` pin the threat level.",
                            "auto")
    tarpit_delay: float = _duration("How long a tarpitted request waits before its 429.", 10.0)
    max_tarpitted: int = _opt("Most requests held in the tarpit at once; more are refused.",
                              1000)
    firewall: FirewallConfig = field(default_factory=FirewallConfig,
                                     metadata={"doc": "Kernel drops."})


@dataclass
class AccessLogConfig:
    """One JSON line per request."""

    path: str | None = _opt("File for the access log; `-` is stdout, null disables it.", "-")


@dataclass
class AdminConfig:
    """The admin listener: metrics and purge; never the public listener."""

    listen: str | None = _opt(
        "Admin HOST:PORT; null disables it. Keep it on loopback: on any other address a warning "
        "is logged at start and every admin route, `/metrics` and `/healthz` included, needs "
        "the token.", "127.0.0.1:9181")
    token: str | None = _opt(
        "Bearer token (`Authorization: Bearer TOKEN`) for the admin routes; null uses "
        "STATE_DIR/admin.token, made on first start. On loopback `/metrics` and `/healthz` "
        "stay open (a local Prometheus scrape); elsewhere they need it too.", None)


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
    state_dir: str = _opt("Directory for state that must survive restarts (pid, decisions).",
                          "var")


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
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key_node, value_node in node.value:
        name = str(key_node.value)
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{_where(key_node, source)}: unknown key {prefix}{name}{hint}")
        value = yaml.safe_load(yaml.serialize(value_node))
        f = fields[name]
        kwargs[name] = _convert(hints[name], value_node, value, prefix + name, source,
                                f.metadata.get("kind"))
    return cls(**kwargs)


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


def load_config_text(text: str, source: str = "<config>") -> Config:
    """Parse YAML text into a checked Config; raise ConfigError naming the file, line and key."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}{line}: not valid YAML: {problem}") from None
    lines: dict[str, int] = {}
    if node is None:
        config = Config()
    elif not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{_where(node, source)}: the config must be a mapping of keys")
    else:
        lines = _key_lines(node, source)
        config = _build(Config, node, source)
    validate(config, source, lines)
    return config


def load_config(path: str | Path) -> Config:
    """Read and check a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
    return load_config_text(text, str(p))


def _bound_text(meta: Any) -> str:
    """The bounds of a key in words, for errors and docs/config.md ('' if it has none)."""
    parts = []
    if "min" in meta:
        parts.append(f"at least {meta['min']:g}")
    if "above" in meta:
        parts.append(f"more than {meta['above']:g}")
    if "max" in meta:
        parts.append(f"at most {meta['max']:g}")
    return " and ".join(parts)


def _check_bounds(obj: Any, where: Any, prefix: str = "") -> None:
    """Every number finite and within its field's bounds, however it was set (file or flag)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_bounds(value, where, key + ".")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            raise ConfigError(f"{where(key)}: {key}: must be a finite number, got {value!r}")
        meta = f.metadata
        if (("min" in meta and value < meta["min"]) or ("above" in meta and value <= meta["above"])
                or ("max" in meta and value > meta["max"])):
            raise ConfigError(f"{where(key)}: {key}: must be {_bound_text(meta)}, got {value!r}")


def _check_files(config: Config, where: Any) -> None:
    """Load what serve will load, the same way: the policy (compiled) and the TLS pairs."""
    from kalkan.defense.rules import Policy, PolicyError  # late: keeps config importable alone
    from kalkan.tls import CertificateSet, TLSConfigError

    if config.defense.enabled and config.defense.policy:
        try:
            Policy.from_file(config.defense.policy)
        except PolicyError as exc:
            raise ConfigError(f"{where('defense.policy')}: defense.policy: {exc}") from None
    if config.tls is not None:
        for i, pair in enumerate(config.tls.certificates):
            key = f"tls.certificates[{i}]"
            try:
                CertificateSet([pair])
            except TLSConfigError as exc:
                raise ConfigError(f"{where(key)}: {key}: {exc}") from None


def validate(config: Config, source: str = "<config>",
             lines: dict[str, int] | None = None) -> None:
    """Everything serve would refuse: bounds, cross-field checks and the files the config names
    (the policy compiles, each TLS pair loads). `lines` maps dotted keys to their line."""
    def where(key: str) -> str:
        line = (lines or {}).get(key)
        return f"{source}:{line}" if line else source

    def check(key: str, fn: Any, value: Any, item: str | None = None) -> None:
        try:
            fn(value)
        except ValueError as exc:
            raise ConfigError(f"{where(item or key)}: {key}: {exc}") from None

    if not config.listen:
        raise ConfigError(f"{where('listen')}: listen: at least one HOST:PORT is needed")
    for i, item in enumerate(config.listen):
        check("listen", parse_hostport, item, f"listen[{i}]")
    check("origin.url", parse_origin_url, config.origin.url)
    if config.admin.listen:
        check("admin.listen", parse_hostport, config.admin.listen)
    for i, item in enumerate(config.client_address.trusted_proxies):
        check("client_address.trusted_proxies",
              lambda v: ipaddress.ip_network(v, strict=False), item,
              f"client_address.trusted_proxies[{i}]")
    if config.defense.attack_mode not in ("auto", "on", "off"):
        raise ConfigError(f"{where('defense.attack_mode')}: defense.attack_mode: must be auto, "
                          f"on or off, not {config.defense.attack_mode!r}")
    for i, item in enumerate(config.defense.allow):
        check("defense.allow", lambda v: ipaddress.ip_network(v, strict=False), item,
              f"defense.allow[{i}]")
    _check_bounds(config, where)
    if config.tls is not None:
        if not config.tls.certificates:
            raise ConfigError(f"{where('tls.certificates')}: tls.certificates: at least one "
                              "{cert, key} is needed")
        for i, cert in enumerate(config.tls.certificates):
            if not isinstance(cert, dict) or set(cert) != {"cert", "key"}:
                raise ConfigError(f"{where(f'tls.certificates[{i}]')}: tls.certificates[{i}]: "
                                  "expected {cert: PATH, key: PATH}")
        if config.tls.redirect_http and not config.tls.http_listen:
            raise ConfigError(f"{where('tls.redirect_http')}: tls.http_listen: needed when "
                              "tls.redirect_http is true")
        if config.tls.http_listen:
            check("tls.http_listen", parse_hostport, config.tls.http_listen)
    try:
        parse_query_config(config.cache.query)
    except ValueError as exc:
        raise ConfigError(f"{where('cache.query')}: cache.query: {exc}") from None
    _check_files(config, where)


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
