"""The workers' relay: how the workers of one machine share their state without Redis. One
worker runs the relay (a Unix socket, newline-delimited JSON); every worker, that one too,
connects to it with a RelayLink. The relay keeps what Redis's hashes keep (the newest record
per decision target, each worker's threat report) and passes every batch on to the other
workers. If the relay's worker dies, the others go on with their own state and resync when it
is back (the same as Redis going away); it starts empty and the workers' resyncs refill it.
The pass-signing keys need no relay: the workers share the key file in the state directory.

The socket is a file (mode 0600) or a Linux abstract name (`@NAME`, no path length limit); either
way the relay serves only peers running as its own user (SO_PEERCRED). The protocol, one JSON
object per line. Worker to relay: `{"put": [records], "pub": [records]}`
(`put` records are kept, newest per target, and passed on; `pub` only passed on). Relay to
worker: first `{"snapshot": [records]}`, then `{"records": [records]}` per batch of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kalkan.cluster.link import Link
from kalkan.cluster.state import TOMBSTONE_KEEP, ClusterState, Record

log = logging.getLogger("kalkan.cluster")

LINE_LIMIT = 32 * 1024 * 1024   # one batch (a resync of many decisions fits)


@dataclass(frozen=True)
class RelayPlan:
    """A worker's part in the relay: where it is, this worker's name, whether it runs it."""

    address: str   # "@NAME" (abstract socket) or a file path
    name: str      # "w0", "w1", ...
    serve: bool
    # The relay's listening socket when the supervisor bound it (kept across a replacement
    # of the worker that serves it); None: the relay binds `address` itself.
    sock: socket.socket | None = None


class Relay:
    """The relay server (in one worker's event loop)."""

    def __init__(self, path: str | Path, sock: socket.socket | None = None) -> None:
        # A file path, or "@NAME" for a Linux abstract socket (no file, no path length limit:
        # only a peer running as this process's user is served).
        self.path = path if isinstance(path, str) and path.startswith("@") else Path(path)
        self.decisions: dict[str, Record] = {}
        self.threats: dict[str, Record] = {}
        self.relayed = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._sock = sock

    async def start(self) -> None:
        if self._sock is not None:  # bound and listening already (the supervisor's)
            self._sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._client, sock=self._sock,
                                                           limit=LINE_LIMIT)
            return
        if isinstance(self.path, str):
            # The socket made here: uvloop takes no abstract name as a path, only as a socket.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind("\0" + self.path[1:])
                sock.listen(64)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            self._server = await asyncio.start_unix_server(self._client, sock=sock,
                                                           limit=LINE_LIMIT)
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()      # a dead relay's socket file
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                       limit=LINE_LIMIT)
        os.chmod(self.path, 0o600)  # only the edge's own user may join

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None
        if isinstance(self.path, Path):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def keep(self, records: list[Record], now: float) -> None:
        """What a worker `put`: the newest record per target, each worker's latest report."""
        for r in records:
            kind = r.get("t")
            if kind == "threat":
                self.threats[str(r.get("edge"))] = r
            elif kind in ("decision", "removed"):
                target = str(r.get("target"))
                old = self.decisions.get(target)
                if old is None or float(old["at"]) < float(r["at"]):
                    self.decisions[target] = r
        if len(self.decisions) > 1000 and self.relayed % 1000 == 0:
            self._forget(now)

    def _forget(self, now: float) -> None:
        """Decisions that ran out and old removals: a worker's resync does not need them."""
        gone = [t for t, r in self.decisions.items()
                if (r["t"] == "decision" and r.get("expires") is not None
                    and float(r["expires"]) <= now)
                or (r["t"] == "removed" and now - float(r["at"]) > TOMBSTONE_KEEP)]
        for t in gone:
            del self.decisions[t]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not _same_user(writer):
            log.warning("relay: refused a connection from another user")
            writer.close()
            return
        snapshot = [*self.decisions.values(), *self.threats.values()]
        writer.write(json.dumps({"snapshot": snapshot}).encode() + b"\n")
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    batch = json.loads(line)
                    put, pub = list(batch.get("put", [])), list(batch.get("pub", []))
                    self.keep(put, time.time())
                except (ValueError, TypeError, AttributeError, KeyError) as exc:
                    log.warning("relay: ignored an unreadable batch: %s", exc)
                    continue
                self.relayed += 1
                out = json.dumps({"records": put + pub}).encode() + b"\n"
                for w in list(self._writers):
                    if w is not writer and not w.is_closing():
                        w.write(out)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return   # a worker that went away (or sent a line past the limit)
        finally:
            self._writers.discard(writer)
            writer.close()


def _same_user(writer: asyncio.StreamWriter) -> bool:
    """Whether the peer runs as this process's user (SO_PEERCRED): an abstract socket has no
    file mode to keep others out, and a file socket's mode is checked twice this way."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


class RelayLink(Link):
    """A worker's link to the relay."""

    def __init__(self, path: str | Path, state: ClusterState, *,
                 interval: float = 0.02) -> None:
        super().__init__(state, f"the workers' relay at {path}", interval=interval)
        # "@NAME": an abstract socket (see Relay)
        self.address = "\0" + path[1:] if isinstance(path, str) and path.startswith("@") \
            else str(path)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self, attempt: int) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:   # (a socket of our own: uvloop takes no abstract name as a path)
            await asyncio.get_running_loop().sock_connect(sock, self.address)
        except OSError:
            sock.close()
            raise
        self._reader, self._writer = await asyncio.open_unix_connection(sock=sock,
                                                                        limit=LINE_LIMIT)

    async def _shut(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _line(self) -> Any:
        if self._reader is None:
            raise ConnectionError("not connected")
        line = await self._reader.readline()
        if not line:
            raise ConnectionError("the relay closed the connection")
        return json.loads(line)

    async def _write(self, put: list[Record], pub: list[Record]) -> None:
        if self._writer is None:
            raise ConnectionError("not connected")
        self._writer.write(json.dumps({"put": put, "pub": pub}).encode() + b"\n")
        await self._writer.drain()
        self.ops += 1

    async def _resync(self, now: float) -> None:
        first = await self._line()
        snapshot = first.get("snapshot") if isinstance(first, dict) else None
        if not isinstance(snapshot, list):
            raise ConnectionError("the relay sent no snapshot")
        self.state.apply(snapshot, now, own=True)
        await self._write(self.state.all_records(now), [])

    async def _send(self, records: list[Record], events: list[Record]) -> None:
        await self._write(records, events)

    async def _report(self, now: float, threat: Record, hits: Record | None) -> None:
        await self._write([threat], [] if hits is None else [hits])

    async def _receive(self) -> list[Record] | None:
        batch = await self._line()
        records = batch.get("records") if isinstance(batch, dict) else None
        return records if isinstance(records, list) else None
