"""The cluster's transport: Redis (or Valkey), never on a request's path. A change is sent at
once, and under a flood of changes at most once per `interval`, each time in one pipelined round
trip (the shared table keeps each target's latest change, a channel tells the other edges at
once); once a second it reports this edge's threat level and its busiest clients' request
counts, and looks after the pass-signing keys. When Redis goes away the edge goes on with its
local state (logged once, shown by `kalkan_cluster_up`), keeps every change in its outbox, and
at reconnection merges both ways (a resync), so nothing decided meanwhile is lost.

Redis keys, all with one hash tag so a Redis Cluster keeps them on one node:
`kalkan:{NS}:decisions` (hash: target -> latest record), `kalkan:{NS}:threat` (hash: edge ->
record), `kalkan:{NS}:keys` (hash: current key id, ring document) and the channel
`kalkan:{NS}:events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from kalkan.cluster.state import ClusterState, Record
from kalkan.defense.challenge.keys import KeyRing, keys_from_document

log = logging.getLogger("kalkan.cluster")

# Store a record only when it is newer than the one the table holds (last writer wins there as
# everywhere): ARGV = target, at, record, target, at, record, ...
_SET_NEWER = """
local n = 0
for i = 1, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if (not cur) or cjson.decode(cur).at < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    n = n + 1
  end
end
return n
"""
# Replace the shared key ring only if its current key is still the one this edge saw (or there
# is none yet): two edges rotating at once must not lose each other's key silently.
_SWAP_RING = """
local cur = redis.call('HGET', KEYS[1], 'current')
if (not cur and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('HSET', KEYS[1], 'current', ARGV[2], 'ring', ARGV[3])
  return 1
end
return 0
"""
_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


class Connection:
    """The commands the link sends: hashes and scripts on `data`, the channel on `bus`. One
    client for a single server or Sentinel's master; for a Redis Cluster, the cluster client
    (every key has one hash tag, so one node answers) and a plain client to one of its nodes
    for the channel (a cluster relays PUBLISH to every node)."""

    def __init__(self, data: Any, bus: Any) -> None:
        self.data, self.bus = data, bus
        self.one = data is bus   # then a batch goes in one pipelined round trip

    async def aclose(self) -> None:
        await self.data.aclose()
        if not self.one:
            await self.bus.aclose()


def connect(url: str, attempt: int = 0) -> Connection:
    """A connection for `url`: redis://, rediss://, unix://,
    redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB] (the master Sentinel names), or
    redis+cluster://HOST:PORT[,HOST:PORT...] (a Redis Cluster's nodes; `attempt` picks the
    node that carries the channel, so a reconnection tries the next one)."""
    import redis.asyncio as aioredis

    parts = urlsplit(url)
    if parts.scheme in ("redis+sentinel", "redis+cluster"):
        nodes = []
        for item in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = item.rpartition(":")
            default = 26379 if parts.scheme == "redis+sentinel" else 6379
            nodes.append((host or item, int(port) if port else default))
        path = [p for p in parts.path.split("/") if p]
        if parts.scheme == "redis+cluster":
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            data = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes],
                                password=parts.password, socket_timeout=1.0,
                                socket_connect_timeout=1.0)
            bus_host, bus_port = nodes[attempt % len(nodes)]
            bus = aioredis.Redis(host=bus_host, port=bus_port, password=parts.password,
                                 socket_timeout=1.0, socket_connect_timeout=1.0)
            return Connection(data, bus)
        from redis.asyncio.sentinel import Sentinel

        if not path:
            raise ValueError("a redis+sentinel URL names the master: "
                             "redis+sentinel://HOST:PORT/MASTER")
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(nodes, socket_timeout=1.0, password=parts.password,  # type: ignore[no-untyped-call]
                            db=db)
        master = sentinel.master_for(path[0], socket_timeout=1.0)
        return Connection(master, master)
    client = aioredis.from_url(url, socket_timeout=1.0,  # type: ignore[no-untyped-call]
                               socket_connect_timeout=1.0)
    return Connection(client, client)


def check_url(url: str) -> None:
    """ValueError naming what is wrong with a `cluster.redis` URL (config validation)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"):
        raise ValueError(f"expected redis://HOST:PORT, rediss://, unix://, "
                         f"redis+sentinel://HOST:PORT/MASTER or redis+cluster://HOST:PORT, "
                         f"got {url!r}")
    if parts.scheme == "redis+sentinel" and not parts.path.strip("/"):
        raise ValueError(f"a redis+sentinel URL names the master after the hosts: {url!r}")
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    if parts.scheme == "redis+cluster" and not parts.netloc.rsplit("@", 1)[-1]:
        raise ValueError(f"no node in {url!r}")


class RedisLink:
    """Runs the cluster's traffic for one edge (`start` / `close`)."""

    def __init__(self, url: str, namespace: str, state: ClusterState, keys: KeyRing, *,
                 interval: float = 0.02) -> None:
        self.url = url
        self.state = state
        self.keys = keys
        self.interval = interval
        base = f"kalkan:{{{namespace}}}"
        self.decisions_key, self.threat_key = f"{base}:decisions", f"{base}:threat"
        self.keys_key, self.channel = f"{base}:keys", f"{base}:events"
        self.up = False
        self.ops = 0              # Redis commands sent (a pipeline counts each)
        self.sent = 0             # records sent
        self.outages = 0
        self._shared_key = ""     # the cluster's current key id as last seen
        self._reload_keys = False
        self._task: asyncio.Task[None] | None = None
        self._pending = asyncio.Event()
        state.wake = self._pending.set

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Send what is left (best effort, bounded), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if self.state.outbox or self.state.events:
            conn = connect(self.url)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(conn), 1.0)
            with contextlib.suppress(Exception):
                await conn.aclose()

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        failures = attempts = 0
        while True:
            attempts += 1
            try:
                conn = connect(self.url, attempts)
                await self._session(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redis errors, OSError, timeouts: all mean "away"
                if self.up or failures == 0:
                    self.outages += 1
                    log.error("cluster: Redis at %s unreachable (%s); this edge goes on with "
                              "its own state and resyncs when it is back", _safe(self.url),
                              " ".join(str(exc).split()) or type(exc).__name__)
                self.up = False
                failures += 1
            else:
                failures = 0
            finally:
                with contextlib.suppress(Exception):
                    await conn.aclose()
            await asyncio.sleep(_BACKOFF[min(failures, len(_BACKOFF) - 1)])

    async def _session(self, conn: Connection) -> None:
        pubsub = conn.bus.pubsub()
        await pubsub.subscribe(self.channel)   # first: nothing published during the resync
        self.ops += 1                          # is missed
        try:
            await self._resync(conn)
            if not self.up:
                log.warning("cluster: connected to Redis at %s (%d decisions standing here)",
                            _safe(self.url), len(self.state.decisions))
            self.up = True
            reader = asyncio.get_running_loop().create_task(self._read(pubsub))
            try:
                next_second = 0.0
                while not reader.done():
                    # A change goes out at once; under a flood of them, one batch per interval.
                    self._pending.clear()
                    await self._flush(conn)
                    now = time.time()
                    if now >= next_second:
                        next_second = now + 1.0
                        await self._every_second(conn, now)
                    await asyncio.sleep(self.interval)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._pending.wait(),
                                               max(0.0, next_second - time.time()))
                reader.result()   # raises what ended the reader
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _read(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            try:
                records = json.loads(message["data"])["records"]
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("cluster: ignored an unreadable message: %s", exc)
                continue
            self.state.apply(records, time.time())
            if any(r.get("t") == "keys" and r.get("edge") != self.state.edge_id
                   for r in records):
                self._reload_keys = True

    # -- what goes out ----------------------------------------------------------------------
    async def _flush(self, conn: Connection) -> None:
        records, events = self.state.take()
        if not records and not events:
            return
        message = json.dumps({"records": records + events})
        try:
            if conn.one:
                pipe = conn.data.pipeline(transaction=False)
                if records:
                    pipe.eval(_SET_NEWER, 1, self.decisions_key, *_flat(records))
                pipe.publish(self.channel, message)
                await pipe.execute()
            else:
                if records:
                    await conn.data.eval(_SET_NEWER, 1, self.decisions_key, *_flat(records))
                await conn.bus.publish(self.channel, message)
        except BaseException:
            self.state.requeue(records, events)
            raise
        self.ops += 2 if records else 1
        self.sent += len(records) + len(events)

    async def _every_second(self, conn: Connection, now: float) -> None:
        self.state.tick(now)
        record = self.state.threat_record(now)
        hits = self.state.hits_record(now)
        message = json.dumps({"records": [record] if hits is None else [record, hits]})
        if conn.one:
            pipe = conn.data.pipeline(transaction=False)
            pipe.hset(self.threat_key, self.state.edge_id, json.dumps(record))
            pipe.publish(self.channel, message)
            await pipe.execute()
        else:
            await conn.data.hset(self.threat_key, self.state.edge_id, json.dumps(record))
            await conn.bus.publish(self.channel, message)
        self.ops += 2
        if self._reload_keys or self.keys.current.id != self._shared_key:
            self._reload_keys = False
            await self._sync_keys(conn.data, now)

    # -- resync -----------------------------------------------------------------------------
    async def _resync(self, conn: Connection) -> None:
        """Both ways: what the table holds that is newer applies here, and what this edge
        decided (while away, or before the others started) goes to the table."""
        now = time.time()
        client = conn.data
        table = await client.hgetall(self.decisions_key)
        threats = await client.hgetall(self.threat_key)
        self.ops += 2
        records = [_loads(v) for v in table.values()] + [_loads(v) for v in threats.values()]
        self.state.apply([r for r in records if r is not None], now, own=True)
        mine = self.state.all_records(now)
        for i in range(0, len(mine), 500):
            await client.eval(_SET_NEWER, 1, self.decisions_key, *_flat(mine[i:i + 500]))
            self.ops += 1
        await self._sync_keys(client, now)

    async def _sync_keys(self, client: Any, now: float) -> None:
        """The cluster signs passes with one ring: the first edge's, then whoever rotates it
        first; an edge whose own ring differs merges it in (its keys verify as retired)."""
        shared = await client.hgetall(self.keys_key)
        self.ops += 1
        current = shared.get(b"current", b"").decode()
        mine = self.keys.current.id
        if current == mine:
            self._shared_key = current
            return
        if current and current == self._shared_key:
            # The cluster's key is the one this edge last saw: this edge rotated since.
            doc = json.dumps(self.keys.document())
            swapped = await client.eval(_SWAP_RING, 1, self.keys_key, current, mine, doc)
            self.ops += 1
            if swapped:
                self._shared_key = mine
                self.state.keys_rotated()
                return
            shared = await client.hgetall(self.keys_key)
            self.ops += 1
            current = shared.get(b"current", b"").decode()
        if not current:
            swapped = await client.eval(_SWAP_RING, 1, self.keys_key, "", mine,
                                        json.dumps(self.keys.document()))
            self.ops += 1
            if swapped:
                self._shared_key = mine
                return
            shared = await client.hgetall(self.keys_key)
            self.ops += 1
        try:
            theirs = keys_from_document(json.loads(shared[b"ring"]))
        except (KeyError, ValueError) as exc:
            log.error("cluster: the shared key ring is unreadable (%s); signing with this "
                      "edge's own keys", exc)
            return
        merged = self.keys.merged(theirs, now)
        if self.keys.adopt(merged):
            log.warning("cluster: signing passes with the cluster's key %s", theirs[0].id)
        self._shared_key = theirs[0].id
        if len(merged) > len(theirs):
            # Passes this edge signed before it joined verify everywhere, not only here.
            swapped = await client.eval(_SWAP_RING, 1, self.keys_key, self._shared_key,
                                        self._shared_key, json.dumps(self.keys.document()))
            self.ops += 1
            if swapped:
                self.state.keys_rotated()


def _flat(records: list[Record]) -> list[Any]:
    out: list[Any] = []
    for r in records:
        out += [r["target"], repr(float(r["at"])), json.dumps(r)]
    return out


def _loads(raw: bytes) -> Record | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _safe(url: str) -> str:
    """The URL without its password, for the log."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
