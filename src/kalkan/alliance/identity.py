"""This newsroom's alliance identity: an Ed25519 key pair kept in STATE_DIR/alliance/identity.json
(mode 0600, written atomically), and the feed it publishes: the shareable decisions signed into
a document, made again only when the decisions changed or the document nears its expiry."""

from __future__ import annotations

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
                 sequence: int = 0) -> None:
        self.private = private
        self.public = raw_public(private.public_key())
        self.name = name
        self.path = path
        self.sequence = sequence

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
            return cls(private, str(doc["name"]), path, int(doc.get("sequence", 0)))
        except FileNotFoundError:
            raise IdentityError(f"{path}: no alliance identity (run `kalkan alliance init`)"
                                ) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IdentityError(f"{path}: unusable identity file ({exc})") from None

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        raw = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        write_atomically(self.path, (json.dumps({
            "format": FORMAT, "name": self.name, "private": b64(raw),
            "public": self.public_text, "sequence": self.sequence}, indent=1) + "\n").encode())
        os.chmod(self.path, 0o600)

    def next_sequence(self, now: float) -> int:
        """A number above every earlier one, even after a crash lost the last save: the
        milliseconds of the clock, or one more than the last, whichever is higher."""
        self.sequence = max(self.sequence + 1, int(now * 1000))
        return self.sequence


class Publisher:
    """The signed feed of this newsroom, remade only when needed; its ETag for cheap polls."""

    def __init__(self, identity: Identity, lifetime: float = 600.0) -> None:
        self.identity = identity
        self.lifetime = lifetime
        self.body = b""
        self.etag = ""
        self._entries: list[Entry] | None = None
        self._expires = 0.0

    @property
    def expires_soon(self) -> float:
        """When the document served now should be remade though nothing changed."""
        return self._expires - self.lifetime / 2

    def current(self, entries: list[Entry], now: float | None = None) -> tuple[bytes, str]:
        """The document to serve for `entries`: the same bytes while they are unchanged and
        the document is far from its expiry (an ally polling gets 304), else a new one."""
        now = time.time() if now is None else now
        if entries != self._entries or now > self.expires_soon:
            sequence = self.identity.next_sequence(now)
            self.body = publish(self.identity.private, self.identity.name, sequence, entries,
                                now, self.lifetime)
            self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'
            self._entries, self._expires = list(entries), now + self.lifetime
            self.identity.save()   # the number signed last survives a restart
        return self.body, self.etag
