"""Pass cookies and signing keys: forgery, expiry, binding, rotation, the shared key file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalkan.defense.challenge import Challenges, KeyRing
from kalkan.defense.challenge import tokens as T
from kalkan.defense.challenge.keys import SigningKey
from kalkan.defense.facts import RequestFacts

NOW = 1_700_000_000.0
PREFIX = "203.0.113.0/24"
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
DAY = 86400.0


def facts(cookie: bytes | None = None, prefix: str = PREFIX, ua: str = UA,
          path: str = "/news/1") -> RequestFacts:
    return RequestFacts("GET", "news.example", path, "", "page", "203.0.113.7", 0, 4, prefix, ua,
                        [], cookie)


def issue(keys: KeyRing, now: float = NOW, prefix: str = PREFIX, ua: str = UA,
          ttl: float = DAY) -> str:
    return T.issue_pass(keys, prefix, T.ua_digest(ua), T.POW, now, ttl)


def check(keys: KeyRing, token: str, now: float = NOW + 1, prefix: str = PREFIX,
          ua: str = UA) -> T.Pass | None:
    return T.verify_pass(keys, token, prefix, T.ua_digest(ua), now)


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing.generate(NOW)


# -- the pass token -------------------------------------------------------------------------------
def test_genuine_pass_verifies(keys: KeyRing) -> None:
    token = issue(keys)
    found = check(keys, token)
    assert found is not None
    assert found.method == T.POW and found.expires == int(NOW + DAY)


def test_forged_signature_rejected(keys: KeyRing) -> None:
    token = issue(keys)
    body, mac = token.rsplit(".", 1)
    assert check(keys, body + "." + "A" * len(mac)) is None
    other = KeyRing.generate(NOW)  # a key the edge never had
    assert check(keys, issue(other)) is None


@pytest.mark.parametrize("field,value", [(2, str(int(NOW + 365 * DAY))), (3, T.NOJS),
                                         (4, "AAAAAAAAAAA"), (0, "p2")])
def test_tampered_fields_rejected(keys: KeyRing, field: int, value: str) -> None:
    parts = issue(keys).split(".")
    parts[field] = value
    assert check(keys, ".".join(parts)) is None


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_any_single_change_is_rejected(data: st.DataObject) -> None:
    keys = KeyRing.generate(NOW)
    token = issue(keys)
    i = data.draw(st.integers(0, len(token) - 1))
    c = data.draw(st.sampled_from("AZaz09-_.~"))
    changed = token[:i] + c + token[i + 1:]
    if changed != token:
        assert check(keys, changed) is None


def test_expired_pass_rejected(keys: KeyRing) -> None:
    token = issue(keys, ttl=60)
    assert check(keys, token, now=NOW + 59) is not None
    assert check(keys, token, now=NOW + 60) is None


def test_wrong_prefix_and_wrong_user_agent_rejected(keys: KeyRing) -> None:
    token = issue(keys)
    assert check(keys, token, prefix="203.0.114.0/24") is None
    assert check(keys, token, prefix="2001:db8:1:2::/64") is None
    assert check(keys, token, ua=UA.replace("128.0", "129.0")) is None


def test_rotation_overlap(keys: KeyRing) -> None:
    keys = KeyRing.generate(NOW, overlap=DAY)
    token = issue(keys, ttl=10 * DAY)            # outlives the overlap on purpose
    old_id = keys.current.id
    keys.rotate(NOW + 100)
    assert keys.current.id != old_id
    assert check(keys, token, now=NOW + 100 + DAY - 1) is not None   # within overlap
    assert check(keys, token, now=NOW + 100 + DAY + 1) is None       # beyond overlap
    # New passes are signed with the new key; the old key is dropped at the next rotation.
    assert check(keys, issue(keys, now=NOW + 200), now=NOW + 300) is not None
    keys.rotate(NOW + 100 + DAY + 2)
    assert old_id not in {k.id for k in keys.keys}


def test_replay_after_rotation_beyond_overlap_rejected_even_when_memoized() -> None:
    keys = KeyRing.generate(NOW, overlap=DAY)
    ch = Challenges(keys, pass_ttl=DAY)
    cookie = b"kalkan_pass=" + issue(keys, ttl=10 * DAY).encode()   # longer than the overlap
    assert ch.has_valid_pass(facts(cookie), NOW + 1)
    keys.rotate(NOW + 2)
    assert ch.has_valid_pass(facts(cookie), NOW + 3)               # overlap: still fine
    keys.rotate(NOW + 2 * DAY)                                     # the first key is gone
    assert not ch.has_valid_pass(facts(cookie), NOW + 2 * DAY + 1)


# -- the facade's view: cookies, memo -------------------------------------------------------------
def test_overlap_never_shorter_than_a_pass() -> None:
    keys = KeyRing.generate(NOW, overlap=3600.0)
    Challenges(keys, pass_ttl=DAY)
    assert keys.overlap == DAY


def test_cookie_value_parsing() -> None:
    assert T.cookie_value(b"kalkan_pass=abc") == b"abc"
    assert T.cookie_value(b"a=1; kalkan_pass=abc; b=2") == b"abc"
    assert T.cookie_value(b"a=1;kalkan_pass= abc ") == b"abc"
    assert T.cookie_value(b"xkalkan_pass=evil") is None
    assert T.cookie_value(b"xkalkan_pass=evil; kalkan_pass=good") == b"good"
    assert T.cookie_value(b"kalkan_pass=") is None
    assert T.cookie_value(b"kalkan_pass=" + b"a" * 1000) is None
    assert T.cookie_value(None) is None


def test_valid_pass_is_memoized_until_it_expires(keys: KeyRing,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ch = Challenges(keys)
    cookie = b"theme=dark; kalkan_pass=" + issue(keys, ttl=100).encode()
    calls = []
    real = T.verify_pass

    def counting(*args: object) -> T.Pass | None:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr("kalkan.defense.challenge.verify_pass", counting)
    for i in range(5):
        assert ch.has_valid_pass(facts(cookie), NOW + i)
    assert len(calls) == 1
    assert not ch.has_valid_pass(facts(cookie), NOW + 100)
    # The memo never lets a pass through from another prefix or browser.
    assert not ch.has_valid_pass(facts(cookie, prefix="198.51.100.0/24"), NOW + 1)
    assert not ch.has_valid_pass(facts(cookie, ua="curl/8.0"), NOW + 1)


def test_memo_is_bounded(keys: KeyRing) -> None:
    ch = Challenges(keys, memo_size=16)
    for i in range(100):
        cookie = b"kalkan_pass=" + issue(keys, now=NOW + i).encode()
        assert ch.has_valid_pass(facts(cookie), NOW + i)
        assert len(ch._memo) <= 16


def test_no_cookie_or_garbage(keys: KeyRing) -> None:
    ch = Challenges(keys)
    assert not ch.has_valid_pass(facts(None), NOW)
    assert not ch.has_valid_pass(facts(b"other=1"), NOW)
    assert not ch.has_valid_pass(facts(b"kalkan_pass=\xff\xfe"), NOW)
    assert not ch.has_valid_pass(facts(b"kalkan_pass=p1.a.b.c.d.e~~~~"), NOW)


def test_cookie_keeps_passes_for_other_prefixes(keys: KeyRing) -> None:
    """A dual-stack reader holds a pass per prefix, so moving between them is no new challenge."""
    ch = Challenges(keys)
    v6 = "2001:db8:1:2::/64"
    t4 = issue(keys)
    t6 = issue(keys, prefix=v6)
    value = T.merge_cookie(t6, t4.encode(), NOW + 1)
    assert value == f"{t6}~{t4}"
    cookie = b"kalkan_pass=" + value.encode()
    assert ch.has_valid_pass(facts(cookie), NOW + 2)
    assert ch.has_valid_pass(facts(cookie, prefix=v6), NOW + 2)
    assert not ch.has_valid_pass(facts(cookie, prefix="198.51.100.0/24"), NOW + 2)


def test_merge_cookie_is_bounded_and_drops_expired(keys: KeyRing) -> None:
    old = [issue(keys, now=NOW + i, prefix=f"10.0.{i}.0/24") for i in range(5)]
    expired = issue(keys, ttl=1)
    value = T.merge_cookie("NEW", "~".join([expired, *old, "junk"]).encode(), NOW + 10)
    parts = value.split("~")
    assert parts[0] == "NEW" and len(parts) == T.MAX_PASSES
    assert expired not in parts and "junk" not in parts


def test_set_cookie_attributes() -> None:
    name, value = T.set_cookie_header("tok", 86400, secure=False)
    assert name == b"Set-Cookie"
    assert value == b"kalkan_pass=tok; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax"
    assert T.set_cookie_header("tok", 60, secure=True)[1].endswith(b"; Secure")


# -- the key file ---------------------------------------------------------------------------------
def test_key_file_created_0600_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys.json"
    a = KeyRing.load_or_create(path, NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == "kalkan-keys/1" and len(doc["keys"]) == 1
    assert set(doc["keys"][0]) == {"id", "secret", "created", "retired"}
    b = KeyRing.load_or_create(path, NOW + 1)           # a second edge on the same file
    assert b.current.id == a.current.id and b.current.secret == a.current.secret
    token = issue(a)
    assert check(b, token) is not None                  # passes from one edge work on the other
    leftovers = [p.name for p in path.parent.iterdir() if p.name not in ("keys.json",
                                                                          "keys.json.lock")]
    assert leftovers == []


def test_rotation_by_one_edge_reaches_the_other(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    a = KeyRing.load_or_create(path, NOW, overlap=DAY)
    b = KeyRing.load_or_create(path, NOW, overlap=DAY)
    old = issue(a)
    a.rotate(NOW + 10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    new = issue(a, now=NOW + 11)
    # b has not looked at the file yet; an unknown key id makes it look (rate-limited).
    assert check(b, new, now=NOW + 12) is None           # looked at the file less than 30 s ago
    assert check(b, new, now=NOW + 60) is not None
    assert b.current.id == a.current.id
    assert check(b, old, now=NOW + 61) is not None       # the old key is still in its overlap


def test_maintain_rotates_once_for_all_edges(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    a = KeyRing.load_or_create(path, NOW, rotate_every=DAY, overlap=DAY)
    b = KeyRing.load_or_create(path, NOW, rotate_every=DAY, overlap=DAY)
    first = a.current.id
    a.maintain(NOW + DAY + 1)
    b.maintain(NOW + DAY + 2)                             # sees a's rotation, does not rotate again
    assert a.current.id == b.current.id != first
    assert [k.id for k in b.keys][1] == first
    assert len(json.loads(path.read_text())["keys"]) == 2


def test_in_memory_ring_rotates_when_due() -> None:
    ring = KeyRing.generate(NOW, rotate_every=100.0, overlap=50.0)
    first = ring.current.id
    ring.maintain(NOW + 50)
    assert ring.current.id == first
    ring.maintain(NOW + 101)
    assert ring.current.id != first


@pytest.mark.parametrize("text", [
    '{"format": "kalkan-keys/1", "keys": [{"id": "x"}]}', '{"format": "something-else"}',
    '{"format": "kalkan-keys/1", "keys": [{"id": 1, "secret": 5, "created": 0}]}',
    '{"format": "kalkan-keys/1", "keys": "k"}', "[]", "{not json", "\u00ff",
])
def test_malformed_key_file_is_moved_aside_named_in_one_line(
        tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.json"
    path.write_text(text, encoding="latin-1")
    os.chmod(path, 0o600)
    ring = KeyRing.load_or_create(path, NOW)
    [aside] = tmp_path.glob("keys.json.damaged-*")
    assert aside.read_text(encoding="latin-1") == text
    assert json.loads(path.read_text())["keys"][0]["id"] == ring.current.id   # fresh and saved
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "keys.json" in line and "moved aside" in line and "\n" not in line


def test_key_file_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    a = KeyRing.load_or_create(path, NOW)
    (tmp_path / ".keys.json.x1y2z3ab").write_text('{"format": "kal')     # SIGKILL mid-write
    b = KeyRing.load_or_create(path, NOW)
    assert b.current.id == a.current.id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json", "keys.json.lock"]


def test_signing_key_mac_is_hmac_sha256() -> None:
    import hashlib
    import hmac

    key = SigningKey("abc123", b"k" * 32, NOW, None)
    assert key.mac(b"data") == hmac.new(b"k" * 32, b"data", hashlib.sha256).digest()[:16]
    with pytest.raises(ValueError):
        SigningKey("short", b"k", NOW, None)
