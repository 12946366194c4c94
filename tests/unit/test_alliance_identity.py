"""The alliance identity on disk, and the feed it publishes: created once (never replaced
silently), private (0600), sequence numbers that only grow, the same bytes while nothing changed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kalkan.alliance.feed import Entry, Subscription, public_key
from kalkan.alliance.identity import Identity, IdentityError, Publisher

NOW = 1_800_000_000.0
ENTRY = Entry("203.0.113.0/24", "block", "search flood", NOW - 60, 3, NOW + 3600)


def test_an_identity_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "alliance" / "identity.json"
    made = Identity.create(path, "newsroom-a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Identity.load(path)
    assert loaded.public == made.public and loaded.name == "newsroom-a"
    assert public_key(loaded.public_text) == made.public
    with pytest.raises(IdentityError, match="exists already"):
        Identity.create(path, "newsroom-a")


def test_unusable_identity_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="kalkan alliance init"):
        Identity.load(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "kalkan-identity/1", "name": "a", "private": "AAAA"}')
    with pytest.raises(IdentityError, match=r"bad\.json: unusable"):
        Identity.load(bad)


def test_the_feed_is_remade_only_when_needed_and_allies_believe_it(tmp_path: Path) -> None:
    identity = Identity.create(tmp_path / "identity.json", "newsroom-a")
    publisher = Publisher(identity, lifetime=600)
    body, etag = publisher.current([ENTRY], NOW)
    assert publisher.current([ENTRY], NOW + 100) == (body, etag)       # unchanged: same bytes
    changed, etag2 = publisher.current([], NOW + 101)
    assert etag2 != etag
    ally = Subscription("newsroom-a", identity.public)
    assert ally.accept(body, NOW) == [ENTRY]
    assert ally.accept(changed, NOW + 101) == []
    renewed, _ = publisher.current([], NOW + 402)                       # past half its life
    assert renewed != changed
    # A restart continues above the last number signed, even with the clock set back.
    again = Publisher(Identity.load(tmp_path / "identity.json"))
    ally.accept(renewed, NOW + 402)
    assert ally.accept(again.current([ENTRY], NOW + 300)[0], NOW + 300) == [ENTRY]


def test_a_key_rotation_is_announced_then_used_and_allies_follow(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    identity = Identity.create(path, "newsroom-a")
    ally = Subscription("newsroom-a", identity.public)
    publisher = Publisher(identity, lifetime=600)
    ally.accept(publisher.current([ENTRY], NOW)[0], NOW)
    new = Identity.load(path).rotate(NOW + 10, 1200)     # `kalkan alliance rotate`
    publisher.identity = Identity.load(path)              # `kalkan reload`
    publisher.forget()
    ally.accept(publisher.current([ENTRY], NOW + 20)[0], NOW + 20)
    assert ally.next_key == new                           # announced, not yet used
    after = publisher.current([ENTRY], NOW + 1300)[0]     # the announcement has run
    assert Identity.load(path).public == new              # the switch is saved
    assert ally.accept(after, NOW + 1300) == [ENTRY] and ally.key == new
