"""HMAC signing keys for passes and challenges, rotated with an overlap window.

Keys live in memory or in a JSON key file that several edges may share; the file is written
atomically (temp file + rename) with mode 0600 and changed under an advisory lock. A damaged key
file never stops the edge: it is moved aside (`keys.json.damaged-<time>`) with one log line and
fresh keys are made; when the file cannot be written (read-only or full disk) the keys live in
memory and the log says so once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kalkan.defense.decisions import move_aside
from kalkan.statefiles import remove_leftovers

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux; the file is then changed without a lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("kalkan.challenge.keys")

FORMAT = "kalkan-keys/1"
SECRET_BYTES = 32
MAC_BYTES = 16  # HMAC-SHA256 truncated to 128 bits: plenty against forgery, shorter cookies
DEFAULT_ROTATE_EVERY = 7 * 86400.0
DEFAULT_OVERLAP = 2 * 86400.0   # >= the pass lifetime, so a rotation never logs readers out
_REFRESH_EVERY = 30.0           # seconds between looks at the shared file


class SigningKey:
    """One secret: signs while current, verifies until `retired + overlap`."""

    __slots__ = ("id", "secret", "created", "retired", "_inner", "_outer")

    def __init__(self, kid: str, secret: bytes, created: float, retired: float | None) -> None:
        if len(secret) < 16:
            raise ValueError(f"key {kid!r}: secret too short ({len(secret)} bytes)")
        self.id = kid
        self.secret = secret
        self.created = created
        self.retired = retired
        # HMAC (RFC 2104) with both padded-key states hashed once: copying a C hash object per
        # use is cheaper than hmac.HMAC.copy(), and this runs on every challenge and new pass.
        block = secret if len(secret) <= 64 else hashlib.sha256(secret).digest()
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(x ^ 0x36 for x in block))
        self._outer = hashlib.sha256(bytes(x ^ 0x5C for x in block))

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256(secret, data), truncated to MAC_BYTES."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:MAC_BYTES]

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "secret": _b64(self.secret), "created": self.created,
                "retired": self.retired}

    @classmethod
    def new(cls, now: float, taken: set[str] | None = None) -> SigningKey:
        while True:
            kid = secrets.token_hex(3)
            if not taken or kid not in taken:
                return cls(kid, secrets.token_bytes(SECRET_BYTES), now, None)


class KeyRing:
    """The current signing key plus retired keys still inside their overlap window.

    `generation` changes whenever the set of keys changes, so callers can drop memoized
    verifications that might rest on a key that is gone.
    """

    def __init__(self, keys: list[SigningKey], *, path: str | Path | None = None,
                 rotate_every: float = DEFAULT_ROTATE_EVERY,
                 overlap: float = DEFAULT_OVERLAP) -> None:
        if not keys or keys[0].retired is not None:
            raise ValueError("a key ring needs a current (not retired) key first")
        if overlap < 0 or rotate_every <= 0:
            raise ValueError("rotate_every must be > 0 and overlap >= 0")
        self.path = Path(path) if path is not None else None
        self.rotate_every = rotate_every
        self.overlap = overlap
        self.generation = 0
        self._mtime_ns = -1
        self._next_refresh = 0.0
        self._set(keys)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def generate(cls, now: float | None = None, *,
                 rotate_every: float = DEFAULT_ROTATE_EVERY,
                 overlap: float = DEFAULT_OVERLAP) -> KeyRing:
        """A fresh in-memory ring (one edge, or tests): passes die with the process."""
        return cls([SigningKey.new(time.time() if now is None else now)],
                   rotate_every=rotate_every, overlap=overlap)

    @classmethod
    def load_or_create(cls, path: str | Path, now: float | None = None, *,
                       rotate_every: float = DEFAULT_ROTATE_EVERY,
                       overlap: float = DEFAULT_OVERLAP) -> KeyRing:
        """Read the shared key file, creating it (0600, atomically) with one key if absent.

        Never raises for the file's sake: a damaged file is moved aside and replaced, and an
        unwritable one leaves an in-memory ring (passes then end with the process)."""
        path = Path(path)
        now = time.time() if now is None else now
        with contextlib.suppress(OSError):  # a read-only parent is reported below, once
            path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            # under the lock: no other edge is writing one now
            remove_leftovers(path.parent, f".{path.name}.*")
            try:
                keys = _read(path)
            except (OSError, ValueError) as exc:
                aside = move_aside(path)
                where = (f"moved aside to {aside.name}" if aside is not None
                         else "could not be moved aside")
                log.error("key file %s is damaged (%s); %s; starting with a fresh key "
                          "(passes signed before are no longer valid)", path,
                          _one_line(exc), where)
                keys = None
            if keys is None:
                keys = [SigningKey.new(now)]
                try:
                    _write(path, keys)
                except OSError as exc:
                    log.error("cannot write key file %s (%s); signing with a key kept in "
                              "memory: passes will not survive a restart", path,
                              exc.strerror or exc)
                    return cls(keys, rotate_every=rotate_every, overlap=overlap)
        ring = cls(keys, path=path, rotate_every=rotate_every, overlap=overlap)
        ring._mtime_ns = _mtime_ns(path)
        ring._next_refresh = now + _REFRESH_EVERY
        return ring

    # -- use ----------------------------------------------------------------------------------
    @property
    def current(self) -> SigningKey:
        return self._keys[0]

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return tuple(self._keys)

    def find(self, kid: str, now: float) -> SigningKey | None:
        """The key `kid` if it may still verify at `now` (current, or retired within overlap)."""
        key = self._by_id.get(kid)
        if key is None:
            # Another edge may have rotated the shared file: look again (rate-limited).
            if self.path is not None and now >= self._next_refresh:
                self.refresh(now)
                key = self._by_id.get(kid)
            if key is None:
                return None
        if key.retired is not None and now >= key.retired + self.overlap:
            return None
        return key

    # -- change -------------------------------------------------------------------------------
    def rotate(self, now: float) -> SigningKey:
        """Start signing with a new key; the old one verifies for `overlap` more seconds."""
        if self.path is None:
            self._set(self._rotated(self._keys, now))
            return self.current
        with _locked(self.path):
            on_disk = _read_or_none(self.path) or self._keys
            self._set(self._rotated(on_disk, now))
            self._save()
        return self.current

    def maintain(self, now: float) -> None:
        """Cheap periodic upkeep: pick up another edge's rotation, rotate when due."""
        if now < self._next_refresh:
            return
        self._next_refresh = now + _REFRESH_EVERY
        if self.path is not None:
            self.refresh(now)
        if now >= self.current.created + self.rotate_every:
            if self.path is None:
                self.rotate(now)
                return
            with _locked(self.path):  # re-check under the lock: another edge may have rotated
                on_disk = _read_or_none(self.path) or self._keys
                rotate = now >= on_disk[0].created + self.rotate_every
                self._set(self._rotated(on_disk, now) if rotate else on_disk)
                if rotate:
                    self._save()
                else:
                    self._mtime_ns = _mtime_ns(self.path)

    def refresh(self, now: float) -> bool:
        """Reload the key file if it changed on disk; True when it did."""
        self._next_refresh = now + _REFRESH_EVERY
        if self.path is None:
            return False
        mtime = _mtime_ns(self.path)
        if mtime == self._mtime_ns:
            return False
        try:
            keys = _read(self.path)
        except (OSError, ValueError) as exc:
            self._mtime_ns = mtime  # one line per change of the file, not one per look
            log.error("key file %s unreadable, keeping the keys in memory: %s", self.path,
                      _one_line(exc))
            return False
        if keys is None:
            return False
        self._mtime_ns = mtime
        self._set(keys)
        return True

    # -- internals ----------------------------------------------------------------------------
    def _save(self) -> None:
        """Write the ring to its file (under the caller's lock); a full or read-only disk keeps
        the rotation in memory and is logged, never raised into the request path."""
        assert self.path is not None
        try:
            _write(self.path, self._keys)
        except OSError as exc:
            log.error("cannot write key file %s (%s); the rotated keys live in memory only",
                      self.path, exc.strerror or exc)
        self._mtime_ns = _mtime_ns(self.path)

    def _rotated(self, keys: list[SigningKey], now: float) -> list[SigningKey]:
        new = SigningKey.new(now, {k.id for k in keys})
        kept = []
        for k in keys:
            retired = now if k.retired is None else k.retired
            if now < retired + self.overlap:
                kept.append(SigningKey(k.id, k.secret, k.created, retired))
        return [new, *kept]

    # -- sharing with other edges (kalkan.cluster) ---------------------------------------------
    def document(self) -> dict[str, object]:
        """The ring in the key file's format: what a cluster of edges shares."""
        return {"format": FORMAT, "keys": [k.to_json() for k in self._keys]}

    def merged(self, shared: list[SigningKey], now: float) -> list[SigningKey]:
        """`shared` (another edge's ring) with this ring's keys that it lacks kept as retired
        ones: the cluster signs with the shared current key, and passes this edge signed
        before it joined still verify within the overlap."""
        have = {k.id for k in shared}
        extra = [SigningKey(k.id, k.secret, k.created, now if k.retired is None else k.retired)
                 for k in self._keys if k.id not in have]
        return [*shared, *(k for k in extra if now < (k.retired or now) + self.overlap)]

    def adopt(self, keys: list[SigningKey]) -> bool:
        """Take the cluster's ring (current key first); False when nothing changed."""
        if [(k.id, k.retired) for k in keys] == [(k.id, k.retired) for k in self._keys]:
            return False
        self._set(keys)
        if self.path is not None:
            with _locked(self.path):
                self._save()  # a restart without the cluster keeps verifying its passes
        return True

    def _set(self, keys: list[SigningKey]) -> None:
        if not keys or keys[0].retired is not None:
            raise ValueError("a key ring needs a current (not retired) key first")
        self._keys = list(keys)
        self._by_id = {k.id: k for k in keys}
        self.generation += 1


# -- the key file ---------------------------------------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read_or_none(path: Path) -> list[SigningKey] | None:
    """`_read` for a rotation: a file damaged since start is overwritten by the ring in memory."""
    try:
        return _read(path)
    except (OSError, ValueError) as exc:
        log.error("key file %s unreadable, rewriting it from the keys in memory: %s", path,
                  _one_line(exc))
        return None


def _read(path: Path) -> list[SigningKey] | None:
    """The keys in the file, current first; None if there is no file. ValueError names it."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file %s is readable by others (mode %o); it should be 0600",
                    path, stat.S_IMODE(mode))
    try:
        return keys_from_document(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ValueError(f"key file {path}: malformed ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"key file {path}: {exc}") from exc


def keys_from_document(doc: object) -> list[SigningKey]:
    """The keys of a ring document (`KeyRing.document`), current first; ValueError names what
    is wrong with it."""
    try:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"format is {found!r}, expected {FORMAT!r}")
        keys = [SigningKey(str(k["id"]), _unb64(k["secret"]), float(k["created"]),
                           None if k.get("retired") is None else float(k["retired"]))
                for k in doc["keys"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed ({exc})") from exc
    current = [k for k in keys if k.retired is None]
    if len(current) != 1:
        raise ValueError(f"{len(current)} current keys, expected exactly one")
    return current + sorted((k for k in keys if k.retired is not None),
                            key=lambda k: -(k.retired or 0.0))


def _write(path: Path, keys: list[SigningKey]) -> None:
    doc = {"format": FORMAT, "keys": [k.to_json() for k in keys]}
    data = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize read-modify-write of the key file between edges on one host."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        # A read-only state directory: nothing here can be written, so there is nothing to
        # serialize; reading the file still works.
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
