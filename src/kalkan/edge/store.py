"""Stored responses: the `Entry` with its precomputed wire bytes, and the LRU that persists them.

The store keeps a byte budget in memory (least recently used out first) and mirrors every entry to
one file in the cache directory, written by a single background thread (tmp file + rename, so a
crash leaves either the old or the new file, never half of one). On start it loads the newest
files back.

The mirror is disposable and never trusted: each file carries a BLAKE2b checksum, the key inside
must hash to the file's own name, header fields must be clean (a valid name, no CR, LF, NUL or
other control bytes) and Content-Length is recomputed from the body actually read. Anything else
(an older format, a short or corrupted file, a directory in a file's place) is deleted, and a
cache directory that cannot be read or written never stops the edge: one log line, and the cache
runs in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kalkan.edge.body_files import HOT_HITS, BodyFile, BodyFiles
from kalkan.edge.cache_policy import StaleRules
from kalkan.edge.responses import serialize_head, status_line
from kalkan.memo import Memo

log = logging.getLogger("kalkan.store")

MAX_VARIANTS = 32  # stored variants (Vary) of one URL
_MAGIC = b"KLKN2\n"     # KLKN1 files (no checksum) are simply discarded: the cache is disposable
_DIGEST = 32             # BLAKE2b-256 over everything after it
_HEAD = len(_MAGIC) + _DIGEST + 4
_FILE_NAME = re.compile(r"[0-9a-f]{64}")
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")   # RFC 9110 token
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")       # CTLs but HTAB: CR, LF, NUL...
_ENTRY_OVERHEAD = 600  # bytes of Python objects per entry beyond headers and body, measured roughly


# Distinct StaleRules in use → the one object every entry with those rules shares (nearly all
# entries have the same few); bounded, the values come from origins' headers.
_STALE_RULES: Memo[StaleRules, StaleRules] = Memo(256)


def _shared_stale_rules(rules: StaleRules | None) -> StaleRules:
    rules = rules or StaleRules()
    shared = _STALE_RULES.table.get(rules)
    if shared is None:
        shared = _STALE_RULES.put(rules, rules)
    return shared


class Entry:
    """One stored response variant and everything needed to serve it without re-parsing."""

    __slots__ = ("key", "vary", "vary_sig", "status", "body", "response_time", "initial_age",
                 "lifetime", "fresh_until", "stale", "micro", "size", "_prefix", "_wire_age",
                 "_wire", "body_file", "hits")

    def __init__(self, key: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                 *, response_time: float, initial_age: float, lifetime: float,
                 stale: StaleRules | None = None, vary: tuple[str, ...] = (),
                 vary_sig: tuple[str | None, ...] = (), micro: bool = False) -> None:
        self.key = key
        self.micro = micro  # stored only by microcaching: the anonymous view of a page
        self.vary = vary
        self.vary_sig = vary_sig
        self.status = status
        fields = b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers)
        n = len(headers)
        if fields.count(b"\n") != n or fields.count(b"\r") != n or fields.find(b"\0") >= 0:
            # Never from the origin (its parser refuses these): a bug must not split answers.
            raise ValueError("a header field with CR, LF or NUL cannot be stored")
        self.body = body
        # The body's memfd once it is hot (edge/body_files.py), and the hits counted toward it.
        self.body_file: BodyFile | None = None
        self.hits = 0
        self.stale = _shared_stale_rules(stale)
        self.size = len(body) + len(fields) + _ENTRY_OVERHEAD
        self.response_time = response_time
        self.initial_age = initial_age
        self.lifetime = lifetime
        # The hot path checks only this: a no-cache response is never fresh without revalidation.
        self.fresh_until = -1.0 if self.stale.no_cache else response_time - initial_age + lifetime
        # The response as sent for a keep-alive HIT, kept as the one copy of the head: status
        # line and fields (the first `_prefix` bytes), then Age and X-Cache, remade when the Age
        # changes (once a second for a hot entry). Fields, validators and the (name, value)
        # pairs are read back from it on the slow paths, so an entry holds its head only once.
        prefix = status_line(status) + fields
        self._prefix = len(prefix)
        self._wire_age = max(int(initial_age), 0)
        self._wire = (b"%sAge: %d\r\nX-Cache: HIT\r\n\r\n" % (prefix, self._wire_age), body)

    @property
    def _head_prefix(self) -> bytes:
        """The status line and the fields: everything of the head but Age and X-Cache."""
        return self._wire[0][:self._prefix]

    @property
    def fields(self) -> bytes:
        """The stored header fields, serialized ("Name: value\r\n"...)."""
        head = self._wire[0]
        return head[head.index(b"\r\n") + 2:self._prefix]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The stored fields as (name, value) pairs, in order (for the slow paths: 304s,
        revalidation, the cache file). Names never contain ":", so the first ": " splits."""
        out: list[tuple[bytes, bytes]] = []
        for line in self.fields.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b": ")
                out.append((name, value))
        return out

    def validators(self) -> tuple[bytes | None, bytes | None]:
        """(ETag, Last-Modified), the first of each, read back from the stored fields at once."""
        etag = last_modified = None
        for k, v in self.headers:
            name = k.lower()
            if name == b"etag" and etag is None:
                etag = v
            elif name == b"last-modified" and last_modified is None:
                last_modified = v
        return etag, last_modified

    @property
    def etag(self) -> bytes | None:
        return self.validators()[0]

    @property
    def file(self) -> str:
        """The name of this entry's file in the cache directory (made when it is written, not
        kept: thousands of entries would each hold it for nothing)."""
        return file_name(self.key, self.vary_sig)

    def hot_file(self, shelf: BodyFiles) -> BodyFile | None:
        """The file to send the body from, once it has earned one (edge/body_files.py): made
        at the HOT_HITS-th hit, made again after HOT_HITS more if the shelf has closed it; never
        for a body below the shelf's `min_size` (all of them when the shelf is off)."""
        if len(self.body) < shelf.min_size:
            return None
        file = self.body_file
        if file is not None and file.fd >= 0:
            return file
        self.hits += 1
        if self.hits < HOT_HITS:
            return None
        self.hits = 0
        self.body_file = file = shelf.make(self.body)
        return file

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.response_time)

    def wire(self, now: float, head_only: bool = False) -> tuple[bytes, ...]:
        """The keep-alive HTTP/1.1 response as a HIT, as buffers for one vectored write
        (head, body): the body is never copied, so a hot page costs its size once in RAM.
        Memoized per whole second of Age."""
        age = int(self.initial_age + now - self.response_time)
        if age != self._wire_age:
            head = b"%sAge: %d\r\nX-Cache: HIT\r\n\r\n" % (self._wire[0][:self._prefix],
                                                              max(age, 0))
            self._wire = (head, self.body)
            self._wire_age = age
        return (self._wire[0],) if head_only else self._wire

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
        """The whole cache file: magic, checksum, metadata, body."""
        return _seal(self._unsealed())

    def _unsealed(self) -> bytes:
        """The file without magic and checksum (taken on the event loop: the entry may change
        later; the writer thread hashes it)."""
        meta = json.dumps({
            "key": self.key, "status": self.status,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
            "response_time": self.response_time, "initial_age": self.initial_age,
            "lifetime": self.lifetime,
            "stale": [self.stale.stale_while_revalidate, self.stale.stale_if_error,
                      self.stale.must_revalidate, self.stale.no_cache],
            "vary": list(self.vary), "vary_sig": list(self.vary_sig), "micro": self.micro,
            "body_length": len(self.body),
        }).encode("utf-8")
        return struct.pack("!I", len(meta)) + meta + self.body

    @classmethod
    def from_bytes(cls, data: bytes, name: str | None = None) -> Entry:
        """An entry from a cache file; ValueError says why the file cannot be trusted. With
        `name`, the key inside must hash to it (a file cannot stand in for another URL)."""
        if not data.startswith(_MAGIC):
            raise ValueError("not a current Kalkan cache file")
        if len(data) < _HEAD:
            raise ValueError("truncated")
        rest = data[len(_MAGIC) + _DIGEST:]
        if hashlib.blake2b(rest, digest_size=_DIGEST).digest() != data[len(_MAGIC):_HEAD - 4]:
            raise ValueError("checksum mismatch")
        (n,) = struct.unpack("!I", rest[:4])
        meta = json.loads(rest[4:4 + n])
        body = rest[4 + n:]
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
        if meta.get("body_length") != len(body):
            raise ValueError(f"body is {len(body)} bytes, expected {meta.get('body_length')!r}")
        key, status = meta["key"], meta["status"]
        if not isinstance(key, str) or type(status) is not int or not 100 <= status <= 599:
            raise ValueError("bad key or status")
        stale = meta["stale"]
        if not isinstance(stale, list) or len(stale) != 4:
            raise ValueError("bad stale rules")
        vary, vary_sig = meta["vary"], meta["vary_sig"]
        if not isinstance(vary, list) or not all(isinstance(v, str) for v in vary) \
                or not isinstance(vary_sig, list) \
                or not all(v is None or isinstance(v, str) for v in vary_sig):
            raise ValueError("bad vary")
        entry = cls(
            key, status, _checked_headers(meta["headers"], len(body)), body,
            response_time=_finite(meta["response_time"]),
            initial_age=_finite(meta["initial_age"]), lifetime=_finite(meta["lifetime"]),
            stale=StaleRules(_finite(stale[0]), _finite(stale[1]), stale[2] is True,
                             stale[3] is True),
            vary=tuple(vary), vary_sig=tuple(vary_sig), micro=meta["micro"] is True)
        if name is not None and entry.file != name:
            raise ValueError("the key inside does not match the file name")
        return entry


def file_name(key: str, vary_sig: tuple[str | None, ...]) -> str:
    """The cache file of the variant of `key` with this Vary signature (its name is all a
    worker needs to find what a sibling stored for the same request)."""
    sig = "\x00".join("\x01" if v is None else v for v in vary_sig)
    return hashlib.sha256((key + "\x00" + sig).encode("utf-8", "surrogateescape")).hexdigest()


def _seal(rest: bytes) -> bytes:
    return _MAGIC + hashlib.blake2b(rest, digest_size=_DIGEST).digest() + rest


def _finite(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _checked_headers(raw: object, body_length: int) -> list[tuple[bytes, bytes]]:
    """Stored header fields, refused if any could split or smuggle a response; the framing is
    recomputed from the body actually loaded, whatever the file says."""
    if not isinstance(raw, list):
        raise ValueError("headers are not a list")
    headers: list[tuple[bytes, bytes]] = []
    length = str(body_length).encode()
    framed = False
    for field in raw:
        if not isinstance(field, list) or len(field) != 2 \
                or not all(isinstance(x, str) for x in field):
            raise ValueError("a header is not a [name, value] pair")
        name, value = field[0].encode("latin-1"), field[1].encode("latin-1")
        if not _FIELD_NAME.fullmatch(name) or _BAD_VALUE.search(value):
            raise ValueError(f"unsafe header field {name[:40]!r}")
        lname = name.lower()
        if lname == b"transfer-encoding":
            raise ValueError("a stored Transfer-Encoding")
        if lname == b"content-length":
            if framed:
                continue  # one Content-Length only
            framed, value = True, length
        headers.append((name, value))
    if not framed:
        headers.append((b"Content-Length", length))
    return headers


_NOT_MODIFIED_KEEP = (b"cache-control", b"content-location", b"date", b"etag", b"expires",
                      b"vary", b"last-modified", b"server", b"via")


def _not_modified_head(headers: list[tuple[bytes, bytes]]) -> bytes:
    """304 head for a client's conditional request (RFC 9110 §15.4.5: the validator fields)."""
    kept = [(k, v) for k, v in headers if k.lower() in _NOT_MODIFIED_KEEP]
    return serialize_head(304, kept)[:-2]


class Store:
    """Variants by cache key within a byte budget, evicted least recently used first (with a
    second chance, see `_evict`), mirrored to disk."""

    def __init__(self, budget: int, directory: str | None = None) -> None:
        self.budget = budget
        self.bytes = 0
        self.entries: OrderedDict[str, list[Entry]] = OrderedDict()  # oldest first
        # Keys hit since they last came to the end of `entries`: a hit adds its key to a set
        # (~70 CPU instructions) instead of moving it in the OrderedDict (~450).
        self._used: set[str] = set()
        self.objects = 0
        self.evictions = 0
        self.dir = Path(directory) if directory else None
        self._writer: ThreadPoolExecutor | None = None
        self._disk_problem: str | None = None  # the last write failure, logged once
        # The Vary field lists stored entries use (a few per site): a worker looking in the
        # shared directory for a key it does not hold tries the file name of each.
        self.vary_shapes: set[tuple[str, ...]] = set()
        # Told of every removal (a key; None: all), so a sibling's copy on disk fetched before
        # it is never taken back in (edge/shared_dir.py).
        self.on_remove: Callable[[str | None], None] | None = None
        if self.dir is not None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.error("cache dir %s unusable (%s); caching in memory only", self.dir,
                          exc.strerror or exc)
                self.dir = None
                return
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kalkan-store")

    def get(self, key: str) -> list[Entry] | None:
        variants = self.entries.get(key)
        if variants is not None:
            self._used.add(key)
        return variants

    def put(self, entry: Entry, persist: bool = True) -> None:
        """Store `entry`; `persist` False: it came from the directory (a sibling's file)."""
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
        if entry.vary and len(self.vary_shapes) < 16:
            self.vary_shapes.add(entry.vary)
        if persist:
            self._persist(entry)
        # The page just stored does not make room for itself (it is the newest): marked used
        # while others are evicted for it, and only then if it was read before.
        used, key = self._used, entry.key
        read = key in used
        used.add(key)
        self._evict()
        if not read:
            used.discard(key)

    def remove(self, key: str) -> int:
        if self.on_remove is not None:
            self.on_remove(key)
        variants = self.entries.pop(key, None)
        self._used.discard(key)
        if not variants:
            return 0
        for entry in variants:
            self._forget(entry)
        return len(variants)

    def clear(self) -> int:
        n = self.objects
        if self.on_remove is not None:
            self.on_remove(None)
        for key in list(self.entries):
            self.remove(key)
        return n

    def _forget(self, entry: Entry, delete_file: bool = True) -> None:
        self.bytes -= entry.size
        self.objects -= 1
        if delete_file and self._writer is not None:
            self._writer.submit(self._unlink, entry.file)

    def _evict(self) -> None:
        """Drop the least recently used keys until within budget. A key hit since it last came
        to the end gets a second chance: it goes to the end, unmarked (the CLOCK approximation
        of LRU; each key is moved at most once per pass, so this ends)."""
        used = self._used
        while self.bytes > self.budget and self.entries:
            key, variants = self.entries.popitem(last=False)
            if key in used:
                used.discard(key)
                self.entries[key] = variants
                continue
            for entry in variants:
                self._forget(entry)
                self.evictions += 1

    # -- disk -----------------------------------------------------------------------------------
    def _persist(self, entry: Entry) -> None:
        if self._writer is not None:
            self._writer.submit(self._write, entry.file, entry._unsealed())

    def _path(self, name: str) -> Path:
        assert self.dir is not None
        return self.dir / name[:2] / name

    def _write(self, name: str, unsealed: bytes) -> None:
        path = self._path(name)
        # The writer's pid in the temp name: workers mirror into one directory, and two writing
        # the same entry must not write into one temp file.
        tmp = path.with_name(f"{name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            data = _seal(unsealed)  # here, off the event loop
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()  # a full disk must not keep the half-written file
            # One line per kind of failure (a read-only or full disk fails every write).
            problem = exc.strerror or str(exc)
            if problem != self._disk_problem:
                self._disk_problem = problem
                log.error("cannot persist cache entries in %s (%s); they are served from "
                          "memory and will not survive a restart", self.dir, problem)
            return
        if self._disk_problem is not None:
            self._disk_problem = None
            log.info("cache entries are persisted in %s again", self.dir)

    def _unlink(self, name: str) -> None:
        try:
            self._path(name).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot delete cache file %s: %s", name, exc)

    def load(self) -> int:
        """Load persisted entries, newest first, up to the budget; returns how many. Never
        raises: untrustworthy files and leftovers are deleted, and summed up in one line."""
        if self.dir is None:
            return 0
        dropped: list[tuple[Path, str]] = []
        files = []
        try:
            subs = sorted(self.dir.iterdir())
        except OSError as exc:
            log.error("cache dir %s unreadable (%s); starting with an empty cache", self.dir,
                      exc.strerror or exc)
            return 0
        for sub in subs:
            if len(sub.name) != 2:
                continue  # not ours
            if not sub.is_dir():
                dropped.append((sub, "a file where a directory belongs"))
                continue
            try:
                names = list(sub.iterdir())
            except OSError as exc:
                dropped.append((sub, f"unreadable ({exc.strerror or exc})"))
                continue
            for path in names:
                if path.suffix == ".tmp":
                    if not _written_now(path):
                        _delete(path)  # a write cut short by a crash or a full disk
                    continue
                if not _FILE_NAME.fullmatch(path.name) or path.name[:2] != sub.name:
                    dropped.append((path, "not a cache file name"))
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue
                if not path.is_file():
                    dropped.append((path, "not a regular file"))
                    continue
                files.append((st.st_mtime, path))
        files.sort(reverse=True)
        loaded: list[Entry] = []
        used = 0
        for _, path in files:
            try:
                entry = Entry.from_bytes(path.read_bytes(), path.name)
            except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
                dropped.append((path, str(exc) or type(exc).__name__))
                continue
            if used + entry.size > self.budget:
                _delete(path)
                continue
            used += entry.size
            loaded.append(entry)
        for path, _why in dropped:
            _delete(path)
        if dropped:
            path, why = dropped[0]
            log.warning("cache dir %s: dropped %d untrustworthy file(s) (e.g. %s: %s); "
                        "kept %d entries", self.dir, len(dropped), path.name,
                        " ".join(why.split())[:120], len(loaded))
        for entry in reversed(loaded):  # oldest first, so the newest end up most recent
            if entry.vary and len(self.vary_shapes) < 16:
                self.vary_shapes.add(entry.vary)
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


def _written_now(tmp: Path) -> bool:
    """A temp file another live worker is writing (NAME.PID.tmp): not a leftover."""
    pid = tmp.stem.rpartition(".")[2]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, someone else's
    return True


def _delete(path: Path) -> None:
    """Remove a cache file, or a directory standing where one should be; best effort."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only cache dir: it is skipped again at the next start
