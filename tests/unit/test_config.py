"""Config loading: every bad key is named with its file and line; defaults are documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from kalkan.config import (
    Config,
    ConfigError,
    describe,
    load_config,
    load_config_text,
    parse_duration,
    parse_hostport,
    parse_size,
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
    for key, _default, doc in describe():
        assert doc, f"{key} has no description"
        assert f"`{key}`" in docs, f"docs/config.md does not document {key}"


def test_shipped_demo_config_is_valid() -> None:
    path = Path(__file__).parents[2] / "src" / "kalkan" / "data" / "demo.yaml"
    config = load_config(path)
    assert config.cache.microcache_ttl > 0
