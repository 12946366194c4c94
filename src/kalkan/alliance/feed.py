"""The alliance feed: a signed document of the decisions one newsroom shares, and the checks an
ally makes before believing it. No I/O here: `publish` turns entries into the bytes to serve,
`Subscription.accept` turns served bytes into entries or a `FeedError` that says why not.

What is served (`kalkan-feed/1`), one JSON object::

    {"format": "kalkan-feed/1", "key": KEY_ID, "document": B64, "signature": B64}

`document` is the base64url of the JSON bytes that were signed (so nobody has to agree on a
canonical JSON form); `signature` is Ed25519 over exactly those bytes; `key` names the signing
key (the first 16 hex digits of SHA-256 of its raw public key). The document::

    {"publisher": NAME, "key": PUBLIC_KEY_B64, "sequence": N, "issued": UNIX_TIME,
     "expires": UNIX_TIME, "entries": [ENTRY...], "next_key": PUBLIC_KEY_B64 | null,
     "revoked": false}

and each entry::

    {"target": "203.0.113.0/24", "action": "block" | "challenge", "reason": TEXT,
     "origin": "rule" | "escalation" | ..., "first_seen": UNIX_TIME, "hits": N,
     "until": UNIX_TIME}

An ally accepts a document only if it is signed by the key it trusts for that publisher (or the
`next_key` a document signed by that key announced: rotation), its sequence is higher than the
last one accepted (no replay, no going back), it was issued no later than a few minutes from now
and has not expired. A document with `revoked: true` ends the trust in its key: the ally drops
the publisher's entries until its operator adds the publisher's new key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kalkan.defense.decisions import DecisionError, normalize_target

FORMAT = "kalkan-feed/1"
SHARED_ACTIONS = ("block", "challenge")
MAX_ENTRIES = 100_000          # a feed larger than this is refused, not truncated
MAX_BYTES = 32 * 1024 * 1024   # what an ally downloads at most
CLOCK_SKEW = 300.0             # seconds a document may claim to be from the future


class FeedError(ValueError):
    """A feed that is not believed; the message says why (for the log)."""


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise FeedError(f"bad base64: {exc}") from None


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public: bytes) -> str:
    """A key's short name: the first 16 hex digits of SHA-256 of its 32 raw bytes."""
    return hashlib.sha256(public).hexdigest()[:16]


def public_key(text: str) -> bytes:
    """A public key as an operator writes it (base64url of its 32 raw bytes); FeedError if not."""
    try:
        raw = unb64(text.strip())
    except FeedError:
        raw = b""
    if len(raw) != 32:
        raise FeedError(f"not an Ed25519 public key ({text.strip()[:60]!r}): one is 32 bytes in "
                        "base64url, 43 characters, as `kalkan alliance key` prints it")
    return raw


@dataclass(frozen=True)
class Entry:
    """One shared decision."""

    target: str
    action: str
    reason: str
    first_seen: float
    hits: int
    until: float
    origin: str = "rule"   # what decided it there: rule, escalation, attack_mode, manual, ...

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "action": self.action, "reason": self.reason,
                "origin": self.origin, "first_seen": self.first_seen, "hits": self.hits,
                "until": self.until}


def publish(private: Ed25519PrivateKey, publisher: str, sequence: int, entries: list[Entry],
            now: float, lifetime: float, *, next_key: bytes | None = None,
            revoked: bool = False) -> bytes:
    """The bytes to serve: `entries` signed as document number `sequence`, valid `lifetime`
    seconds from `now`."""
    public = raw_public(private.public_key())
    document = json.dumps({
        "publisher": publisher, "key": b64(public), "sequence": sequence, "issued": now,
        "expires": now + lifetime, "entries": [e.to_json() for e in entries],
        "next_key": b64(next_key) if next_key is not None else None, "revoked": revoked,
    }, separators=(",", ":")).encode()
    return json.dumps({"format": FORMAT, "key": key_id(public), "document": b64(document),
                       "signature": b64(private.sign(document))},
                      separators=(",", ":")).encode()


@dataclass
class Subscription:
    """What an edge knows of one ally: the key it trusts, the last document it accepted."""

    name: str
    key: bytes                          # the trusted public key (32 raw bytes)
    sequence: int = -1                  # the last accepted document's number
    next_key: bytes | None = None       # announced by a document signed with `key`
    revoked: bool = False
    entries: list[Entry] = field(default_factory=list)
    expires: float = 0.0

    def accept(self, served: bytes, now: float | None = None) -> list[Entry]:
        """Check `served` (the ally's feed as fetched) and take its entries; raises FeedError
        naming the reason it is not believed (then nothing changes)."""
        now = time.time() if now is None else now
        if self.revoked:
            raise FeedError(f"{self.name}: its key was revoked; add the ally's new key")
        if len(served) > MAX_BYTES:
            raise FeedError(f"{self.name}: feed larger than {MAX_BYTES} bytes")
        try:
            envelope = json.loads(served)
        except ValueError as exc:
            raise FeedError(f"{self.name}: not JSON ({exc})") from None
        if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
            raise FeedError(f"{self.name}: not a {FORMAT} feed")
        if not isinstance(envelope.get("signature"), str) or not envelope["signature"]:
            raise FeedError(f"{self.name}: unsigned")
        document = unb64(str(envelope.get("document", "")))
        signer = self._signer(str(envelope.get("key", "")))
        try:
            Ed25519PublicKey.from_public_bytes(signer).verify(unb64(envelope["signature"]),
                                                              document)
        except InvalidSignature:
            raise FeedError(f"{self.name}: bad signature (forged or tampered)") from None
        doc = _document(document, self.name)
        if unb64(str(doc.get("key", ""))) != signer:
            raise FeedError(f"{self.name}: the document names another key than its signer")
        sequence = doc["sequence"]
        if sequence <= self.sequence:
            raise FeedError(f"{self.name}: document {sequence} is not newer than {self.sequence}"
                            " (replayed or out of order)")
        if doc["issued"] > now + CLOCK_SKEW:
            raise FeedError(f"{self.name}: issued in the future")
        if doc["expires"] <= now:
            raise FeedError(f"{self.name}: expired")
        entries = _entries(doc["entries"], self.name)
        # Believed: from here on, state changes.
        if signer != self.key:          # the announced next key took over
            self.key, self.next_key = signer, None
        self.sequence = sequence
        self.expires = float(doc["expires"])
        if doc.get("next_key"):
            self.next_key = public_key(str(doc["next_key"]))
        if doc.get("revoked") is True:
            self.revoked, self.entries = True, []
            return []
        self.entries = entries
        return entries

    def _signer(self, kid: str) -> bytes:
        for candidate in (self.key, self.next_key):
            if candidate is not None and key_id(candidate) == kid:
                return candidate
        raise FeedError(f"{self.name}: signed by an unknown key {kid[:16]!r}")

    def live(self, now: float) -> list[Entry]:
        """The entries in force: none once the feed itself has expired (an ally that stops
        publishing stops counting)."""
        if now >= self.expires:
            return []
        return [e for e in self.entries if e.until > now]


def _document(raw: bytes, name: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise FeedError(f"{name}: the document is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise FeedError(f"{name}: the document is not an object")
    for key, kind in (("sequence", int), ("issued", (int, float)), ("expires", (int, float)),
                      ("entries", list)):
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise FeedError(f"{name}: the document's {key} is missing or not a {kind}")
    if len(doc["entries"]) > MAX_ENTRIES:
        raise FeedError(f"{name}: more than {MAX_ENTRIES} entries")
    return doc


def _entries(rows: list[Any], name: str) -> list[Entry]:
    out = []
    for i, row in enumerate(rows):
        try:
            action = str(row["action"])
            if action not in SHARED_ACTIONS:
                raise ValueError(f"action {action!r} is not one an ally may share")
            if str(row["target"]).strip().startswith("token:"):
                raise ValueError("a pass token is nothing to share")
            until = float(row["until"])
            if not math.isfinite(until):
                raise ValueError("until must be a time")
            out.append(Entry(normalize_target(str(row["target"])), action,
                             str(row.get("reason", ""))[:200], float(row.get("first_seen", 0)),
                             int(row.get("hits", 0)), until,
                             str(row.get("origin", "rule"))[:20]))
        except (KeyError, TypeError, ValueError, DecisionError) as exc:
            raise FeedError(f"{name}: entry {i}: {exc}") from None
    return out
