"""This newsroom's alliance identity: an Ed25519 key pair kept in STATE_DIR/alliance/identity.json
(mode 0600, written atomically), and the feed it publishes: the shareable decisions signed into
a document, made again only when the decisions changed or the document nears its expiry."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from kalkan.alliance.feed import Entry, b64, key_id, publish, raw_public, unb64
from kalkan.statefiles import write_atomically

FORMAT = "kalkan-identity/1"


class IdentityError(ValueError):
    """An identity file that cannot be used; the message names the file and the problem."""


class Identity:
    """The key pair, and the last document number signed with it."""

    def __init__(self, private: Ed25519PrivateKey, name: str, path: Path | None = None,
                 sequence: int = 0, next_private: Ed25519PrivateKey | None = None,
                 switch_at: float = 0.0) -> None:
        self.private = private
        self.public = raw_public(private.public_key())
        self.name = name
        self.path = path
        self.sequence = sequence
        # A rotation under way: the next key, announced in every document signed with the
        # current one until `switch_at`, then signing (allies follow the announcement).
        self.next_private = next_private
        self.switch_at = switch_at

    def rotate(self, now: float, announce_for: float) -> bytes:
        """Start a key rotation: a new key, announced for `announce_for` seconds (at least two
        of the allies' polls and a feed's lifetime), then used. Returns its public key."""
        self.next_private = Ed25519PrivateKey.generate()
        self.switch_at = now + announce_for
        self.save()
        return raw_public(self.next_private.public_key())

    def switch_if_due(self, now: float) -> bool:
        """The announced key takes over once its announcement has run."""
        if self.next_private is None or now < self.switch_at:
            return False
        self.private, self.next_private = self.next_private, None
        self.public = raw_public(self.private.public_key())
        self.save()
        return True

    @property
    def next_public(self) -> bytes | None:
        return raw_public(self.next_private.public_key()) if self.next_private else None

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    @property
    def public_text(self) -> str:
        """What an ally types in `kalkan alliance add`: base64url of the 32 raw bytes."""
        return b64(self.public)

    @classmethod
    def create(cls, path: Path, name: str) -> Identity:
        """A new identity, saved; refuses to replace one (allies trust the old key)."""
        if path.exists():
            raise IdentityError(f"{path}: an identity exists already (its public key is what "
                                "your allies trust); remove it first to start a new one")
        identity = cls(Ed25519PrivateKey.generate(), name, path)
        identity.save()
        return identity

    @classmethod
    def load(cls, path: Path) -> Identity:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
            private = Ed25519PrivateKey.from_private_bytes(unb64(doc["private"]))
            following = doc.get("next_private")
            next_private = Ed25519PrivateKey.from_private_bytes(unb64(following)) \
                if following else None
            sequence = int(doc.get("sequence", 0))
            with contextlib.suppress(OSError, ValueError):
                sequence = max(sequence, int(_sequence_file(path).read_text()))
            return cls(private, str(doc["name"]), path, sequence, next_private,
                       float(doc.get("switch_at", 0.0)))
        except FileNotFoundError:
            raise IdentityError(f"{path}: no alliance identity (run `kalkan alliance init`)"
                                ) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IdentityError(f"{path}: unusable identity file ({exc})") from None

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        def raw(key: Ed25519PrivateKey) -> str:
            return b64(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

        doc: dict[str, object] = {"format": FORMAT, "name": self.name,
                                  "private": raw(self.private), "public": self.public_text,
                                  "sequence": self.sequence}
        if self.next_private is not None:
            doc.update(next_private=raw(self.next_private), switch_at=self.switch_at)
        write_atomically(self.path, (json.dumps(doc, indent=1) + "\n").encode())
        os.chmod(self.path, 0o600)

    def next_sequence(self, now: float) -> int:
        """A number above every earlier one, even after a crash lost the last save: the
        milliseconds of the clock, or one more than the last, whichever is higher. Kept in a
        file of its own (the edge writes it; only `kalkan alliance` commands and a key switch
        write the keys)."""
        self.sequence = max(self.sequence + 1, int(now * 1000))
        if self.path is not None:
            write_atomically(_sequence_file(self.path), str(self.sequence).encode())
        return self.sequence


def _sequence_file(identity: Path) -> Path:
    return identity.with_name("sequence")


class Publisher:
    """The signed feed of this newsroom, remade only when needed; its ETag for cheap polls."""

    def __init__(self, identity: Identity, lifetime: float = 600.0) -> None:
        self.identity = identity
        self.lifetime = lifetime
        self.body = b""
        self.etag = ""
        self._entries: list[Entry] | None = None
        self._expires = 0.0
        self._announced: bytes | None = None   # the next key the served document announces

    def forget(self) -> None:
        """Make the next `current` sign a new document (the identity changed)."""
        self._entries, self._announced = None, None

    @property
    def expires_soon(self) -> float:
        """When the document served now should be remade though nothing changed."""
        return self._expires - self.lifetime / 2

    def current(self, entries: list[Entry], now: float | None = None) -> tuple[bytes, str]:
        """The document to serve for `entries`: the same bytes while they are unchanged and
        the document is far from its expiry (an ally polling gets 304), else a new one."""
        now = time.time() if now is None else now
        identity = self.identity
        switched = identity.switch_if_due(now)
        if switched or entries != self._entries or now > self.expires_soon or (
                identity.next_private is not None and self._announced is None):
            sequence = identity.next_sequence(now)
            self._announced = identity.next_public
            self.body = publish(identity.private, identity.name, sequence, entries, now,
                                self.lifetime, next_key=self._announced)
            self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'
            self._entries, self._expires = list(entries), now + self.lifetime
        return self.body, self.etag
