"""Stored responses: the `Entry` with its precomputed wire bytes, and the LRU that persists them.

The store keeps a byte budget in memory (least recently used out first) and mirrors every entry to
one file in the cache directory, written by a single background thread (tmp file + rename, so a
crash leaves either the old or the new file, never half of one). On start it loads the newest
files back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kalkan.edge.cache_policy import StaleRules
from kalkan.edge.responses import serialize_head

log = logging.getLogger("kalkan.store")

_MAGIC = b"KLKN1\n"
MAX_VARIANTS = 32  # stored variants (Vary) of one URL
_ENTRY_OVERHEAD = 600  # bytes of Python objects per entry beyond headers and body, measured roughly


class Entry:
    """One stored response variant and everything needed to serve it without re-parsing."""

    __slots__ = ("key", "vary", "vary_sig", "status", "headers", "body", "response_time",
                 "initial_age", "lifetime", "fresh_until", "stale", "micro", "etag",
                 "last_modified", "size", "file", "_wire_age", "_wire", "_wire_head",
                 "_head_prefix")

    def __init__(self, key: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                 *, response_time: float, initial_age: float, lifetime: float,
                 stale: StaleRules | None = None, vary: tuple[str, ...] = (),
                 vary_sig: tuple[str | None, ...] = (), micro: bool = False) -> None:
        self.key = key
        self.micro = micro  # stored only by microcaching: the anonymous view of a page
        self.vary = vary
        self.vary_sig = vary_sig
        self.status = status
        self.headers = headers
        self.body = body
        self.stale = stale or StaleRules()
        self.etag: bytes | None = None
        self.last_modified: bytes | None = None
        for k, v in headers:
            lk = k.lower()
            if lk == b"etag":
                self.etag = v
            elif lk == b"last-modified":
                self.last_modified = v
        self.size = len(body) + sum(len(k) + len(v) for k, v in headers) + _ENTRY_OVERHEAD
        sig = "\x00".join("\x01" if v is None else v for v in vary_sig)
        self.file = hashlib.sha256(
            (key + "\x00" + sig).encode("utf-8", "surrogateescape")).hexdigest()
        self.refresh(response_time, initial_age, lifetime)

    def refresh(self, response_time: float, initial_age: float, lifetime: float) -> None:
        """Set (or, after a 304, reset) the clock of this response."""
        self.response_time = response_time
        self.initial_age = initial_age
        self.lifetime = lifetime
        # The hot path checks only this: a no-cache response is never fresh without revalidation.
        self.fresh_until = -1.0 if self.stale.no_cache else response_time - initial_age + lifetime
        self._wire_age = -1
        self._wire: tuple[bytes, ...] = ()
        self._wire_head: tuple[bytes, ...] = ()
        # Everything but Age and X-Cache, serialized once: the hit path only glues.
        self._head_prefix = serialize_head(self.status, self.headers)[:-2]

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.response_time)

    def wire(self, now: float, head_only: bool = False) -> tuple[bytes, ...]:
        """The keep-alive HTTP/1.1 response as a HIT, as buffers for one vectored write
        (head, body): the body is never copied, so a hot page costs its size once in RAM.
        Memoized per whole second of Age."""
        age = int(self.initial_age + now - self.response_time)
        if age != self._wire_age:
            head = b"%sAge: %d\r\nX-Cache: HIT\r\n\r\n" % (self._head_prefix, max(age, 0))
            self._wire_head = (head,)
            self._wire = (head, self.body)
            self._wire_age = age
        return self._wire_head if head_only else self._wire

    def render(self, now: float, cache_status: bytes, *, head_only: bool = False,
               connection: bytes | None = None, status: int | None = None,
               extra: bytes = b"") -> bytes:
        """A response from this entry with any cache status and Connection header (slow path);
        `extra` is serialized fields for this answer only (say, the fetching reader's cookie)."""
        if connection:
            extra += b"Connection: %s\r\n" % connection
        age = max(int(self.age(now)), 0)
        if status == 304:
            head = _not_modified_head(self.headers)
            return b"%sAge: %d\r\nX-Cache: %s\r\n%s\r\n" % (head, age, cache_status, extra)
        head = b"%sAge: %d\r\nX-Cache: %s\r\n%s\r\n" % (self._head_prefix, age, cache_status, extra)
        return head if head_only else head + self.body

    # -- persistence ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = json.dumps({
            "key": self.key, "status": self.status,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
            "response_time": self.response_time, "initial_age": self.initial_age,
            "lifetime": self.lifetime,
            "stale": [self.stale.stale_while_revalidate, self.stale.stale_if_error,
                      self.stale.must_revalidate, self.stale.no_cache],
            "vary": list(self.vary), "vary_sig": list(self.vary_sig), "micro": self.micro,
        }).encode("utf-8")
        return _MAGIC + struct.pack("!I", len(meta)) + meta + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        if not data.startswith(_MAGIC):
            raise ValueError("not a Kalkan cache file")
        (n,) = struct.unpack("!I", data[len(_MAGIC):len(_MAGIC) + 4])
        start = len(_MAGIC) + 4
        meta = json.loads(data[start:start + n])
        body = data[start + n:]
        return cls(
            meta["key"], meta["status"],
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]], body,
            response_time=meta["response_time"], initial_age=meta["initial_age"],
            lifetime=meta["lifetime"], stale=StaleRules(*meta["stale"]),
            vary=tuple(meta["vary"]), vary_sig=tuple(meta["vary_sig"]), micro=meta["micro"])


_NOT_MODIFIED_KEEP = (b"cache-control", b"content-location", b"date", b"etag", b"expires",
                      b"vary", b"last-modified", b"server", b"via")


def _not_modified_head(headers: list[tuple[bytes, bytes]]) -> bytes:
    """304 head for a client's conditional request (RFC 9110 §15.4.5: the validator fields)."""
    kept = [(k, v) for k, v in headers if k.lower() in _NOT_MODIFIED_KEEP]
    return serialize_head(304, kept)[:-2]


class Store:
    """Variants by cache key, in LRU order within a byte budget, mirrored to disk."""

    def __init__(self, budget: int, directory: str | None = None) -> None:
        self.budget = budget
        self.bytes = 0
        self.entries: OrderedDict[str, list[Entry]] = OrderedDict()
        self.objects = 0
        self.evictions = 0
        self.dir = Path(directory) if directory else None
        self._writer: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kalkan-store")

    def get(self, key: str) -> list[Entry] | None:
        variants = self.entries.get(key)
        if variants is not None:
            self.entries.move_to_end(key)
        return variants

    def put(self, entry: Entry) -> None:
        variants = self.entries.get(entry.key)
        if variants is None:
            variants = self.entries[entry.key] = []
        else:
            self.entries.move_to_end(entry.key)
            for old in variants:
                if old.vary_sig == entry.vary_sig:
                    variants.remove(old)
                    self._forget(old, delete_file=False)
                    break
            else:
                if len(variants) >= MAX_VARIANTS:
                    # Every lookup scans the variants: a client inventing header values must
                    # not make one URL cost more for everyone. The oldest variant goes.
                    self._forget(variants.pop(0))
        variants.append(entry)
        self.bytes += entry.size
        self.objects += 1
        self._persist(entry)
        self._evict()

    def touch(self, entry: Entry) -> None:
        """An entry's headers or clock changed in place (a 304): write it again."""
        self._persist(entry)

    def remove(self, key: str) -> int:
        variants = self.entries.pop(key, None)
        if not variants:
            return 0
        for entry in variants:
            self._forget(entry)
        return len(variants)

    def clear(self) -> int:
        n = self.objects
        for key in list(self.entries):
            self.remove(key)
        return n

    def _forget(self, entry: Entry, delete_file: bool = True) -> None:
        self.bytes -= entry.size
        self.objects -= 1
        if delete_file and self._writer is not None:
            self._writer.submit(self._unlink, entry.file)

    def _evict(self) -> None:
        while self.bytes > self.budget and self.entries:
            _key, variants = self.entries.popitem(last=False)
            for entry in variants:
                self._forget(entry)
                self.evictions += 1

    # -- disk -----------------------------------------------------------------------------------
    def _persist(self, entry: Entry) -> None:
        if self._writer is not None:
            self._writer.submit(self._write, entry.file, entry.to_bytes())

    def _path(self, name: str) -> Path:
        assert self.dir is not None
        return self.dir / name[:2] / name

    def _write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot persist cache entry %s: %s", name, exc)

    def _unlink(self, name: str) -> None:
        try:
            self._path(name).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot delete cache file %s: %s", name, exc)

    def load(self) -> int:
        """Load persisted entries, newest first, up to the budget; returns how many."""
        if self.dir is None:
            return 0
        files = []
        for sub in self.dir.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                if path.suffix == ".tmp":
                    path.unlink(missing_ok=True)  # a write cut short by a crash
                    continue
                try:
                    files.append((path.stat().st_mtime, path))
                except OSError:
                    continue
        files.sort(reverse=True)
        loaded: list[Entry] = []
        used = 0
        for _, path in files:
            try:
                entry = Entry.from_bytes(path.read_bytes())
            except (OSError, ValueError, KeyError, struct.error) as exc:
                log.warning("dropping unreadable cache file %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            if used + entry.size > self.budget:
                path.unlink(missing_ok=True)
                continue
            used += entry.size
            loaded.append(entry)
        for entry in reversed(loaded):  # oldest first, so the newest end up most recent
            variants = self.entries.setdefault(entry.key, [])
            variants.append(entry)
            self.bytes += entry.size
            self.objects += 1
        return len(loaded)

    def flush(self) -> None:
        """Wait for pending disk writes (on shutdown and in tests)."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
