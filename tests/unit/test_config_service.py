"""The config as a service reads it (absolute default paths, user/group), and every problem of
a file reported at once."""

from __future__ import annotations

import pytest

from kalkan.config import SERVICE_PATHS, ConfigError, load_config_text


def test_service_paths_fill_only_what_the_file_leaves_unset() -> None:
    config = load_config_text("state_dir: /srv/kalkan\n", "k.yaml", service=True)
    assert config.state_dir == "/srv/kalkan"
    assert config.cache.dir == SERVICE_PATHS["cache.dir"] == "/var/cache/kalkan"
    assert config.access_log.path == "/var/log/kalkan/access.log"
    plain = load_config_text("", "k.yaml")
    assert (plain.state_dir, plain.cache.dir, plain.access_log.path) == ("var", "var/cache", "-")


def test_service_keeps_an_explicit_null_and_stdout() -> None:
    config = load_config_text("cache:\n  dir: null\naccess_log:\n  path: '-'\n", "k.yaml",
                              service=True)
    assert config.cache.dir is None and config.access_log.path == "-"
    assert config.state_dir == "/var/lib/kalkan"


def test_every_problem_is_reported_with_its_line() -> None:
    text = ("listen: ['nowhere']\n"
            "origin:\n  timout: 5s\n  max_concurrency: 0\n"
            "defense:\n  attack_mode: sometimes\n  clients: many\n")
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "k.yaml", files=False)
    assert exc.value.problems == [
        "k.yaml:3: unknown key origin.timout (did you mean origin.timeout?)",
        "k.yaml:7: defense.clients: expected a whole number, got 'many'",
        "k.yaml:1: listen: expected HOST:PORT, got 'nowhere'",
        "k.yaml:6: defense.attack_mode: must be auto, on or off, not 'sometimes'",
        "k.yaml:4: origin.max_concurrency: must be at least 1, got 0",
    ]
    assert str(exc.value) == "\n".join(exc.value.problems)


def test_a_public_admin_listener_needs_a_token_that_cannot_be_guessed() -> None:
    with pytest.raises(ConfigError, match=r"k.yaml:2: admin.listen: 0.0.0.0:9181 is not on "
                                          r"loopback, so every admin route needs a token"):
        load_config_text("admin:\n  listen: 0.0.0.0:9181\n", "k.yaml")
    with pytest.raises(ConfigError, match=r"k.yaml:3: admin.token: at least 16 characters"):
        load_config_text("admin:\n  listen: 0.0.0.0:9181\n  token: secret\n", "k.yaml")
    config = load_config_text("admin:\n  listen: '[::]:9181'\n  token: 0123456789abcdefXYZ\n",
                              "k.yaml")
    assert config.admin.token == "0123456789abcdefXYZ"
    assert load_config_text("admin:\n  listen: 127.0.0.1:9181\n").admin.token is None


def test_user_and_group_must_exist() -> None:
    assert load_config_text("user: nobody\n").user == "nobody"
    with pytest.raises(ConfigError) as exc:
        load_config_text("user: no-such-user-here\ngroup: no-such-group-here\n", "k.yaml")
    assert exc.value.problems == [
        "k.yaml:1: user: no user 'no-such-user-here' on this machine (create it: useradd "
        "--system no-such-user-here)",
        "k.yaml:2: group: no group 'no-such-group-here' on this machine",
    ]
    with pytest.raises(ConfigError, match="group: set only together with user"):
        load_config_text("group: nogroup\n", "k.yaml")
