"""observe/pseudonym.py: addresses become prefix + keyed tag; the key decides the tag; keys
that are missing or too short are refused with a message naming where they came from."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from kalkan.observe.pseudonym import PseudonymKeyError, load_key, pseudonymize

KEY = b"a newsroom's secret key, 32 byte"


def test_ipv4_keeps_its_24_and_hides_the_host() -> None:
    out = pseudonymize("203.0.113.7", KEY)
    assert re.fullmatch(r"203\.0\.113\.x-[0-9a-f]{8}", out)
    assert "7" not in out.split("-", 1)[0].rsplit(".", 1)[1]


def test_the_tag_is_hmac_sha256_of_the_canonical_address_truncated() -> None:
    expected = hmac.new(KEY, b"2001:db8:1:2::7", hashlib.sha256).hexdigest()[:8]
    assert pseudonymize("2001:0DB8:0001:0002:0000:0000:0000:0007", KEY) == \
        f"2001:db8:1::x-{expected}"


def test_same_address_same_tag_other_address_or_key_another() -> None:
    a = pseudonymize("203.0.113.7", KEY)
    assert pseudonymize("203.0.113.7", KEY) == a
    assert pseudonymize("203.0.113.8", KEY) != a
    assert pseudonymize("203.0.113.7", b"another key of enough length!!") != a
    assert pseudonymize("203.0.113.8", KEY).startswith("203.0.113.x-")


def test_ipv6_keeps_its_48() -> None:
    assert pseudonymize("2001:db8:aa:bb:cc::1", KEY).startswith("2001:db8:aa::x-")
    assert pseudonymize("2001:db8::1", KEY).startswith("2001:db8::x-")  # the /48 2001:db8:0::


def test_ipv4_mapped_ipv6_is_the_ipv4_reader() -> None:
    assert pseudonymize("::ffff:203.0.113.7", KEY) == pseudonymize("203.0.113.7", KEY)


def test_something_that_is_not_an_address_keeps_nothing_but_a_tag() -> None:
    out = pseudonymize("unix:/run/kalkan.sock", KEY)
    assert re.fullmatch(r"x-[0-9a-f]{8}", out)
    assert "run" not in out


def test_key_from_a_file_and_from_the_environment(tmp_path, monkeypatch) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    assert load_key(str(path)) == KEY
    monkeypatch.setenv("KALKAN_PSEUDONYM_KEY", KEY.decode())
    assert load_key(env="KALKAN_PSEUDONYM_KEY") == KEY


def test_bad_keys_are_refused_with_their_source_named(tmp_path, monkeypatch) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"tiny\n")
    with pytest.raises(PseudonymKeyError, match=r"short holds 4 bytes; at least 16"):
        load_key(str(short))
    with pytest.raises(PseudonymKeyError, match=r"missing"):
        load_key(str(tmp_path / "missing"))
    monkeypatch.delenv("NO_SUCH_KALKAN_KEY", raising=False)
    with pytest.raises(PseudonymKeyError, match="NO_SUCH_KALKAN_KEY is not set"):
        load_key(env="NO_SUCH_KALKAN_KEY")
