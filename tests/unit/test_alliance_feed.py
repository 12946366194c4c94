"""The alliance feed's format and checks: what an ally believes and what it refuses (forged,
tampered, replayed, out of order, unknown key, expired), key rotation and revocation."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kalkan.alliance.feed import (
    Entry,
    FeedError,
    Subscription,
    b64,
    public_key,
    publish,
    raw_public,
    unb64,
)

NOW = 1_800_000_000.0
BOTNET = [Entry("203.0.113.0/24", "block", "search flood", NOW - 600, 48_211, NOW + 3600),
          Entry("198.51.100.7", "challenge", "bot-like rhythm", NOW - 60, 912, NOW + 600)]


def ally(key: Ed25519PrivateKey) -> Subscription:
    return Subscription("newsroom-a", raw_public(key.public_key()))


def test_a_signed_feed_is_believed_and_its_entries_taken() -> None:
    key = Ed25519PrivateKey.generate()
    sub = ally(key)
    entries = sub.accept(publish(key, "newsroom-a", 1, BOTNET, NOW, 600), NOW)
    assert entries == BOTNET
    assert sub.sequence == 1 and sub.live(NOW) == BOTNET
    assert sub.live(NOW + 601) == []           # the feed expired: its entries no longer count


@pytest.mark.parametrize("spoil", ["forged", "tampered", "unsigned", "other key"])
def test_a_feed_not_signed_by_the_trusted_key_is_refused(spoil: str) -> None:
    key, mallory = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sub = ally(key)
    served = json.loads(publish(key, "newsroom-a", 1, BOTNET, NOW, 600))
    if spoil == "forged":       # right key id, someone else's signature
        forged = json.loads(publish(mallory, "newsroom-a", 1, BOTNET, NOW, 600))
        served["document"], served["signature"] = forged["document"], forged["signature"]
    elif spoil == "tampered":   # one entry changed after signing
        doc = json.loads(unb64(served["document"]))
        doc["entries"][0]["target"] = "192.0.2.0/24"
        served["document"] = b64(json.dumps(doc).encode())
    elif spoil == "unsigned":
        served["signature"] = ""
    else:
        served = json.loads(publish(mallory, "newsroom-a", 1, BOTNET, NOW, 600))
    with pytest.raises(FeedError, match=r"signature|unsigned|unknown key"):
        sub.accept(json.dumps(served).encode(), NOW)
    assert sub.sequence == -1 and sub.entries == []


def test_replayed_and_older_documents_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    sub = ally(key)
    first = publish(key, "newsroom-a", 1, BOTNET, NOW, 600)
    second = publish(key, "newsroom-a", 2, BOTNET[:1], NOW + 10, 600)
    sub.accept(second, NOW + 10)
    for old in (second, first):
        with pytest.raises(FeedError, match="not newer"):
            sub.accept(old, NOW + 20)
    assert sub.entries == BOTNET[:1]


def test_expired_and_future_documents_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(FeedError, match="expired"):
        ally(key).accept(publish(key, "a", 1, BOTNET, NOW - 700, 600), NOW)
    with pytest.raises(FeedError, match="future"):
        ally(key).accept(publish(key, "a", 1, BOTNET, NOW + 3600, 600), NOW)


def test_entries_an_ally_may_not_share_spoil_the_feed() -> None:
    key = Ed25519PrivateKey.generate()
    for bad in (Entry("203.0.113.9", "drop", "", NOW, 1, NOW + 60),
                Entry("token:abc", "block", "", NOW, 1, NOW + 60),
                Entry("not an address", "block", "", NOW, 1, NOW + 60)):
        with pytest.raises(FeedError, match="entry 0"):
            ally(key).accept(publish(key, "a", 1, [bad], NOW, 600), NOW)


def test_a_key_rotation_announced_by_the_old_key_is_followed() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sub = ally(old)
    sub.accept(publish(old, "a", 1, BOTNET, NOW, 600, next_key=raw_public(new.public_key())),
               NOW)
    sub.accept(publish(new, "a", 2, BOTNET[:1], NOW + 5, 600), NOW + 5)
    assert sub.key == raw_public(new.public_key()) and sub.next_key is None
    with pytest.raises(FeedError, match="unknown key"):   # the old key is done
        sub.accept(publish(old, "a", 3, BOTNET, NOW + 9, 600), NOW + 9)


def test_a_revoked_key_ends_the_trust() -> None:
    key = Ed25519PrivateKey.generate()
    sub = ally(key)
    sub.accept(publish(key, "a", 1, BOTNET, NOW, 600), NOW)
    assert sub.accept(publish(key, "a", 2, [], NOW + 1, 600, revoked=True), NOW + 1) == []
    assert sub.revoked and sub.live(NOW + 2) == []
    with pytest.raises(FeedError, match="revoked"):
        sub.accept(publish(key, "a", 3, BOTNET, NOW + 3, 600), NOW + 3)


def test_public_keys_are_checked_as_written() -> None:
    key = Ed25519PrivateKey.generate()
    assert public_key(b64(raw_public(key.public_key()))) == raw_public(key.public_key())
    for bad in (b64(b"short"), "not-a-key!"):
        with pytest.raises(FeedError, match="32 bytes in base64url"):
            public_key(bad)
