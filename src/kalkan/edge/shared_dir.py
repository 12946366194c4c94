"""The workers' shared cache directory as a second level behind each worker's memory.

Every worker mirrors what it stores into one directory (edge/store.py). Without this module a
worker's memory miss went to the origin even when a sibling had stored that page a second
earlier: with N workers a page was fetched up to N times per lifetime. Here a worker's miss (or
its stale copy) first looks for the sibling's file, by name, and takes it in if it is valid and
newer than what the worker holds (bench/results/worker_cache.md measures both ways).

A flood of URLs never cached must not cost a disk read each: the worker keeps an index of the
names the directory holds (a set, ~150 bytes per file), kept current by inotify (one watch per
subdirectory; a rename into place or a deletion is one event). A miss costs a SHA-256 of its key
per Vary shape the site uses and a set lookup; the disk is read only for a name the index holds,
at most once per write of that file by a sibling. The index knows who wrote a file from the temp
file's name (`NAME.PID.tmp`, renamed into place), so a worker's own writes never make it read.

A file is trusted exactly as `Store.load` trusts it (`Entry.from_bytes` with its name: checksum,
key, clean fields, length); anything else is a miss, deleted, never an error served. A purge or
an invalidation on this worker (`Store.on_remove`) refuses any file holding a response fetched
before it, so a sibling's copy not yet deleted cannot bring a purged page back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kalkan.config import CacheConfig
from kalkan.edge import cache_policy as policy
from kalkan.edge.clock import Clock
from kalkan.edge.store import Entry, Store, file_name
from kalkan.observe.metrics import Metrics

log = logging.getLogger("kalkan.store")

_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_Q_OVERFLOW = 0x4000
_IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_FILES = _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE
_TOP = _IN_CREATE | _IN_MOVED_TO          # new subdirectories
_EVENT = struct.Struct("iIII")             # wd, mask, cookie, len; then the name
_TOMBSTONES = 10_000                       # purged keys remembered one by one
_TOMBSTONE_S = 300.0                       # ... for this long (the holder deletes at once)


def share(store: Store, cache: CacheConfig, clock: Clock,
          metrics: Metrics) -> SharedDirectory | None:
    """For a worker with siblings, before its edge starts (in its event loop), the pipeline's
    `shared`: with `cache.share_directory` and a cache directory, its misses look there."""
    if not cache.enabled or not cache.share_directory or store.dir is None:
        return None
    shared = SharedDirectory(store, clock)
    if not shared.start(asyncio.get_running_loop()):
        return None
    metrics.labeled_counter(
        "kalkan_cache_shared_reads_total", "Sibling workers' cache files read on a miss, by "
        "outcome (adopted; refused: purged here; damaged; not_newer).", "outcome",
        lambda: {k: float(v) for k, v in shared.reads.items()})
    metrics.gauge("kalkan_cache_shared_files", "Files the shared cache directory holds (this "
                  "worker's index of it).", lambda: len(shared.present))
    return shared


def _is_name(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class SharedDirectory:
    """The index of a shared cache directory and the look-up a worker's miss makes in it."""

    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        assert store.dir is not None
        self.store = store
        self.clock = clock or Clock()
        self.dir: Path = store.dir
        self.present: set[str] = set()     # names of files the directory holds
        self.fresher: set[str] = set()     # ... whose last write was a sibling's, not yet read
        self._tomb: dict[str, float] = {}  # key -> removed at (wall time)
        self._cleared = 0.0                # everything fetched before this was purged
        self._fd = -1
        self._add_watch: Any = None        # libc's inotify_add_watch, once started
        self._wds: dict[int, str] = {}     # watch -> subdirectory name ("" for the top)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = str(os.getpid())
        self.reads = {"adopted": 0, "refused": 0, "damaged": 0, "not_newer": 0}
        store.on_remove = self.removed

    # -- the index ------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Watch the directory and index it; False (logged) when inotify is not available, and
        the worker caches as before (its own memory, misses to the origin)."""
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            log.warning("cache dir %s: no inotify (%s); workers do not read each other's "
                        "cache files", self.dir, os.strerror(ctypes.get_errno()))
            return False
        self._fd = fd
        self._add_watch = libc.inotify_add_watch
        if not self._watch("", _TOP):
            os.close(fd)
            self._fd = -1
            return False
        with contextlib.suppress(OSError):
            for sub in self.dir.iterdir():
                if len(sub.name) == 2 and sub.is_dir():
                    self._watch_sub(sub.name)
        self._loop = loop
        loop.add_reader(fd, self._events)
        return True

    def _watch(self, sub: str, mask: int) -> bool:
        path = str(self.dir / sub) if sub else str(self.dir)
        wd = self._add_watch(self._fd, path.encode(), mask)
        if wd < 0:
            log.warning("cache dir %s: cannot watch %s (%s); workers do not read each other's "
                        "cache files", self.dir, path, os.strerror(ctypes.get_errno()))
            return False
        self._wds[wd] = sub
        return True

    def _watch_sub(self, sub: str, new: bool = False) -> None:
        """Watch a subdirectory, then list it (a file renamed in before the watch counts; in a
        `new` one, made while this worker ran, it may be a sibling's: read it once)."""
        if sub in self._wds.values() or not self._watch(sub, _FILES):
            return
        with contextlib.suppress(OSError):
            for name in os.listdir(self.dir / sub):
                if _is_name(name):
                    self.present.add(name)
                    if new:
                        self.fresher.add(name)

    def _events(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size:offset + _EVENT.size + length]
                offset += _EVENT.size + length
                self._event(wd, mask, raw.rstrip(b"\0").decode("ascii", "replace"))

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & _IN_Q_OVERFLOW:
            # Events were lost: list everything again; any file may be a sibling's newer one.
            self.present.clear()
            for watched in list(self._wds.values()):
                if watched:
                    with contextlib.suppress(OSError):
                        self.present.update(n for n in os.listdir(self.dir / watched)
                                            if _is_name(n))
            self.fresher = set(self.present)
            return
        sub = self._wds.get(wd)
        if sub is None:
            return
        if sub == "":
            if mask & _IN_ISDIR and len(name) == 2:
                self._watch_sub(name, new=True)
            return
        if mask & _IN_MOVED_FROM and name.endswith(".tmp"):
            # NAME.PID.tmp renamed into place as NAME: written by PID.
            final, _, pid = name[:-4].rpartition(".")
            if _is_name(final):
                self.present.add(final)
                if pid == self._pid:
                    self.fresher.discard(final)
                else:
                    self.fresher.add(final)
        elif not _is_name(name):
            return
        elif mask & _IN_MOVED_TO:
            self.present.add(name)   # (its writer was named by the MOVED_FROM just before)
        elif mask & _IN_CLOSE_WRITE:
            self.present.add(name)   # written in place, not by a worker: read it once
            self.fresher.add(name)
        elif mask & (_IN_DELETE | _IN_MOVED_FROM):
            self.present.discard(name)
            self.fresher.discard(name)

    def close(self) -> None:
        if self._fd >= 0:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    # -- purges ---------------------------------------------------------------------------------
    def removed(self, key: str | None) -> None:
        """`key` (None: everything) was purged or invalidated here: refuse files of it fetched
        before now. Wall time, not the coarse clock: a response's time is never later than the
        real time it was fetched at."""
        now = time.time()
        if key is None or len(self._tomb) >= _TOMBSTONES:
            if len(self._tomb) >= _TOMBSTONES:
                self._tomb = {k: t for k, t in self._tomb.items() if now - t < _TOMBSTONE_S}
            if key is None or len(self._tomb) >= _TOMBSTONES:
                self._cleared = now   # too many to name: refuse every older file (safe side)
                self._tomb.clear()
                return
        self._tomb[key] = now

    def _purged(self, entry: Entry) -> bool:
        t = self._tomb.get(entry.key, 0.0)
        return entry.response_time <= max(t, self._cleared)

    # -- the miss path --------------------------------------------------------------------------
    def find(self, key: str, headers: Mapping[str, str], held: Entry | None) -> Entry | None:
        """The entry to go on with: `held` (the variant this worker has, or None) when it is
        fresh or the directory has nothing better, else a sibling's valid, newer copy of this
        request's variant, taken into the store."""
        present = self.present
        if not present or (held is not None and held.fresh_until > self.clock.now):
            return held
        for name in self._names(key, headers):
            if name not in present:
                continue
            if held is not None and name not in self.fresher:
                return held   # the file is this worker's own copy, or one it read already
            return self._read(name, held) or held
        return held

    def _names(self, key: str, headers: Mapping[str, str]) -> list[str]:
        names = [file_name(key, ())]
        for shape in self.store.vary_shapes:
            names.append(file_name(key, policy.vary_signature(shape, headers)))
        return names

    def _read(self, name: str, held: Entry | None) -> Entry | None:
        self.fresher.discard(name)
        path = self.dir / name[:2] / name
        try:
            entry = Entry.from_bytes(path.read_bytes(), name)
        except FileNotFoundError:
            self.present.discard(name)   # deleted since (its event is on its way)
            return None
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            # Damaged: a miss, and gone for everyone (as Store.load deletes it).
            self.reads["damaged"] += 1
            self.present.discard(name)
            log.warning("cache dir %s: dropped untrustworthy file %s (%s)", self.dir, name,
                        " ".join((str(exc) or type(exc).__name__).split())[:120])
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        if self._purged(entry):
            self.reads["refused"] += 1
            self.present.discard(name)   # its holder deletes it; never read it again here
            return None
        if held is not None and entry.response_time <= held.response_time:
            self.reads["not_newer"] += 1
            return None
        self.reads["adopted"] += 1
        self.store.put(entry, persist=False)
        return entry
