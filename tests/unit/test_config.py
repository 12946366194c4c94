"""Config loading: every bad key is named with its file and line; defaults are documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kalkan.config import (
    Config,
    ConfigError,
    describe,
    is_loopback_host,
    load_config,
    load_config_text,
    parse_duration,
    parse_hostport,
    parse_size,
    validate,
)


def test_empty_file_gives_defaults() -> None:
    assert load_config_text("", "x.yaml") == Config()


def test_values_are_converted() -> None:
    config = load_config_text(
        "listen: ['0.0.0.0:80']\n"
        "origin:\n  url: http://10.0.0.5:8080\n  queue_timeout: 500ms\n"
        "cache:\n  memory_bytes: 64MiB\n  grace: 2h\n  microcache_ttl: 1s\n",
        "k.yaml")
    assert config.listen == ["0.0.0.0:80"]
    assert config.origin.queue_timeout == 0.5
    assert config.cache.memory_bytes == 64 * 2**20
    assert config.cache.grace == 7200.0
    assert config.cache.microcache_ttl == 1.0


def test_unknown_key_is_named_with_line_and_suggestion() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text("cache:\n  memory_bytes: 1MiB\n  memroy: 5\n", "site.yaml")
    msg = str(exc.value)
    assert "site.yaml:3" in msg
    assert "cache.memroy" in msg


def test_suggestion_for_a_typo() -> None:
    with pytest.raises(ConfigError, match=r"did you mean origin\.max_concurrency"):
        load_config_text("origin:\n  max_concurency: 4\n", "site.yaml")


@pytest.mark.parametrize(("text", "needle"), [
    ("cache:\n  memory_bytes: lots\n", "site.yaml:2: cache.memory_bytes: expected a size"),
    ("origin:\n  timeout: soon\n", "site.yaml:2: origin.timeout: expected a duration"),
    ("origin:\n  max_concurrency: -3\n", "origin.max_concurrency: must not be negative"),
    ("origin:\n  max_concurrency: 0\n", "origin.max_concurrency: must be at least 1"),
    ("origin:\n  url: ftp://x\n", "origin.url"),
    ("listen: ['nowhere']\n", "listen: expected HOST:PORT"),
    ("cache:\n  enabled: maybe\n", "cache.enabled: expected true or false"),
    ("origin: 5\n", "site.yaml:1: origin: expected a mapping"),
    ("- a\n- b\n", "the config must be a mapping"),
    ("cache: [\n", "not valid YAML"),
    ("client_address:\n  trusted_proxies: ['10.0.0.0/33']\n", "client_address.trusted_proxies"),
    ("tls:\n  certificates: []\n", "tls.certificates"),
])
def test_bad_values_are_named(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "site.yaml")
    assert needle in str(exc.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_units() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1d") == 86400
    assert parse_duration(3) == 3.0
    assert parse_size("1GiB") == 2**30
    assert parse_size("10kb") == 10_000
    assert parse_hostport("[::1]:8080") == ("::1", 8080)
    assert parse_hostport(":9000") == ("127.0.0.1", 9000)
    for bad in ("-1s", "ten"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_every_key_is_documented() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    for key, default, doc in describe():
        assert doc, f"{key} has no description"
        assert f"`{key}`" in docs, f"docs/config.md does not document {key}"
        # The whole row, bounds included: run scripts/write_config_doc.py after a change.
        assert f"| `{key}` | `{default}` | {doc} |" in docs, f"docs/config.md is stale: {key}"


def test_shipped_demo_config_is_valid() -> None:
    path = Path(__file__).parents[2] / "src" / "kalkan" / "data" / "demo.yaml"
    config = load_config(path)
    assert config.cache.microcache_ttl > 0


@pytest.mark.parametrize(("text", "needle"), [
    ("limits:\n  max_request_line: 1\n",
     "site.yaml:2: limits.max_request_line: must be at least 64, got 1"),
    ("limits:\n  max_headers: 0\n", "site.yaml:2: limits.max_headers: must be at least 8"),
    ("defense:\n  pass_ttl: 0\n", "site.yaml:2: defense.pass_ttl: must be more than 0"),
    ("defense:\n  nojs_delay: 10m\n", "site.yaml:2: defense.nojs_delay: must be more than 0 and "
                                      "at most 299"),
    ("origin:\n  timeout: .nan\n", "site.yaml:2: origin.timeout: a duration must be a finite"),
    ("limits:\n  header_timeout: .inf\n", "site.yaml:2: limits.header_timeout: a duration must"),
    ("cache:\n  heuristic_fraction: .nan\n", "site.yaml:2: cache.heuristic_fraction: expected a "
                                             "finite number"),
    ("cache:\n  heuristic_fraction: 2\n", "cache.heuristic_fraction: must be at most 1"),
    ("defense:\n  prefix_v4: 40\n", "site.yaml:2: defense.prefix_v4: must be at least 8 and at "
                                    "most 32"),
    ("cache:\n  grace: 1h\n  enabled: true\n  grace: 2h\n",
     "site.yaml:4: cache.grace: duplicate key, already given on line 2"),
    ("origin:\n  url: http://127.0.0.1:1\norigin:\n  url: http://127.0.0.1:2\n",
     "site.yaml:3: origin: duplicate key, already given on line 1"),
    ("cache:\n  query:\n    default: [id]\n    default: [p]\n",
     "site.yaml:4: cache.query.default: duplicate key, already given on line 3"),
    ("listen: ['127.0.0.1:80', 'nowhere']\n", "site.yaml:1: listen: expected HOST:PORT"),
    ("tls:\n  certificates:\n    - {cert: /nonexistent/c.pem, key: /nonexistent/k.pem}\n",
     "site.yaml:3: tls.certificates[0]: /nonexistent/c.pem: no such file"),
    ("defense:\n  policy: /nonexistent/policy.yaml\n",
     "site.yaml:2: defense.policy: /nonexistent/policy.yaml: cannot read the policy"),
])
def test_bounds_duplicates_and_files_are_named(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "site.yaml")
    assert needle in str(exc.value)


def test_a_policy_that_does_not_compile_is_named_with_both_files(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: x\n    action: explode\n")
    with pytest.raises(ConfigError) as exc:
        load_config_text(f"cache:\n  grace: 1h\ndefense:\n  policy: {policy}\n", "site.yaml")
    msg = str(exc.value)
    assert msg.startswith(f"site.yaml:4: defense.policy: {policy}:4")
    # With the defence off, serve never reads the policy, so neither does the check.
    load_config_text(f"defense:\n  enabled: false\n  policy: {policy}\n", "site.yaml")


def test_bounds_hold_for_values_set_after_loading() -> None:
    config = Config()
    config.limits.max_connections = 0
    with pytest.raises(ConfigError, match=r"command line: limits\.max_connections: must be at "):
        validate(config, "command line")
    config.limits.max_connections = 10
    config.cache.grace = float("inf")
    with pytest.raises(ConfigError, match=r"cache\.grace: must be a finite number"):
        validate(config, "command line")


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.8.0.1", "::1", "localhost", "::ffff:127.0.0.1"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "192.0.2.1", "2001:db8::1", "admin.example"):
        assert not is_loopback_host(host), host


@pytest.mark.parametrize(("text", "needle"), [
    ("cache:\n  never_cache_paths: [wp-admin]\n",
     "site.yaml:2: cache.never_cache_paths[0]: 'wp-admin' is not a path glob"),
    ("cache:\n  never_cache_params: ['a=b']\n", "cache.never_cache_params[0]: 'a=b' is not"),
    ("cache:\n  never_cache_headers: ['X WP Nonce']\n",
     "cache.never_cache_headers[0]: 'X WP Nonce' is not a header field name"),
    ("cache:\n  session_cookies: [wordpress_logged_in_, '']\n",
     "cache.session_cookies[1]: an empty name would match every Cookie header"),
])
def test_bad_never_cache_and_session_entries_are_named(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "site.yaml")
    assert needle in str(exc.value)


def test_defaults_cache_wordpress() -> None:
    cache = Config().cache
    assert cache.microcache_ttl == 10.0 and cache.grace == 6 * 3600
    for cookie in ("wordpress_logged_in_0123", "wordpress_sec_0123", "wp-postpass_0123",
                   "comment_author_0123", "woocommerce_items_in_cart", "woocommerce_cart_hash",
                   "wp_woocommerce_session_0123", "edd_items_in_cart", "wp_edd_session_0123"):
        # The edge searches the Cookie header for any of these names.
        assert any(name in cookie for name in cache.session_cookies), cookie
    # Not sessions: the login page's test cookie (set for every visitor of wp-login.php) and
    # the settings cookies an editor keeps after logging out.
    for cookie in ("wordpress_test_cookie", "wp-settings-1", "wp-settings-time-1"):
        assert not any(name in cookie for name in cache.session_cookies), cookie


def test_the_wordpress_example_is_a_valid_config() -> None:
    example = Path(__file__).parents[2] / "examples" / "wordpress.yaml"
    config = load_config(str(example))
    validate(config, str(example))
    assert config.origin.url == "http://127.0.0.1:8080"
    assert config.origin.idle_timeout < 5  # below Apache's KeepAliveTimeout
    assert config.cache.session_cookies == Config().cache.session_cookies  # defaults kept
    # Its commented-out blocks are valid too, once uncommented.
    text = example.read_text()
    yaml_line = re.compile(r"  # (session_cookies|never_cache_paths|query):|  #\s{3,}\S")
    lines = [line.replace("# ", "", 1) if yaml_line.match(line) else line
             for line in text.splitlines()]
    uncommented = load_config_text("\n".join(lines), "wordpress.yaml")
    assert "/cart/*" in uncommented.cache.never_cache_paths
    assert "mysite_member_" in uncommented.cache.session_cookies
    assert uncommented.cache.query["paths"]["/shop/*"][0] == "orderby"


@pytest.mark.parametrize(("text", "message"), [
    ("cluster:\n  redis: http://127.0.0.1:6379\n", "cluster.redis: expected redis://"),
    ("cluster:\n  redis: redis+sentinel://10.0.0.1:26379\n", "names the master"),
    ("cluster:\n  redis: redis://\n", "cluster.redis: no host"),
    ("cluster:\n  namespace: 'a b'\n", "cluster.namespace: letters, digits"),
    ("cluster:\n  interval: 5s\n", "cluster.interval"),
])
def test_cluster_settings_are_checked(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "site.yaml")
    assert message in str(err.value)
    assert "site.yaml:2" in str(err.value)


def test_a_cluster_url_is_accepted_as_written() -> None:
    for url in ("redis://10.0.0.5:6379/2", "rediss://:secret@redis.example:6380/0",
                "unix:///run/redis/redis.sock", "redis+sentinel://10.0.0.1:26379,10.0.0.2/main",
                "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"):
        assert load_config_text(f"cluster:\n  redis: {url}\n").cluster.redis == url
