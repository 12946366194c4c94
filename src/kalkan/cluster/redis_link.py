"""The cluster's Redis (or Valkey) transport (the loop is kalkan.cluster.link's): a batch of
changes goes in one pipelined round trip, where a Lua script keeps each target's newest record
in a hash and a channel tells the other edges at once; the threat reports go to a hash; the
pass-signing key ring is shared with a compare-and-swap on its current key id.

Redis keys, all with one hash tag so a Redis Cluster keeps them on one node:
`kalkan:{NS}:decisions` (hash: target -> latest record), `kalkan:{NS}:threat` (hash: edge ->
record), `kalkan:{NS}:keys` (hash: current key id, ring document) and the channel
`kalkan:{NS}:events`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from kalkan.cluster.link import Link
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


class RedisLink(Link):
    """The cluster's traffic through Redis for one edge."""

    def __init__(self, url: str, namespace: str, state: ClusterState, keys: KeyRing, *,
                 interval: float = 0.02) -> None:
        super().__init__(state, f"Redis at {_safe(url)}", interval=interval)
        self.url = url
        self.keys = keys
        base = f"kalkan:{{{namespace}}}"
        self.decisions_key, self.threat_key = f"{base}:decisions", f"{base}:threat"
        self.keys_key, self.channel = f"{base}:keys", f"{base}:events"
        self._shared_key = ""     # the cluster's current key id as last seen
        self._reload_keys = False
        self._conn: Connection | None = None
        self._pubsub: Any = None

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            raise ConnectionError("not connected")
        return self._conn

    async def _open(self, attempt: int) -> None:
        self._conn = connect(self.url, attempt)

    async def _shut(self) -> None:
        conn, pubsub, self._conn, self._pubsub = self._conn, self._pubsub, None, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.aclose()

    async def _resync(self, now: float) -> None:
        """Subscribe first (nothing published meanwhile is missed), then both ways: what the
        table holds that is newer applies here, and what this edge decided (while away, or
        before the others started) goes to the table."""
        self._pubsub = self.conn.bus.pubsub()
        await self._pubsub.subscribe(self.channel)
        client = self.conn.data
        table = await client.hgetall(self.decisions_key)
        threats = await client.hgetall(self.threat_key)
        self.ops += 3
        records = [_loads(v) for v in table.values()] + [_loads(v) for v in threats.values()]
        self.state.apply([r for r in records if r is not None], now, own=True)
        mine = self.state.all_records(now)
        for i in range(0, len(mine), 500):
            await client.eval(_SET_NEWER, 1, self.decisions_key, *_flat(mine[i:i + 500]))
            self.ops += 1
        await self._sync_keys(client, now)

    async def _receive(self) -> list[Record] | None:
        message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is None or message.get("type") != "message":
            return None
        try:
            records = json.loads(message["data"])["records"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("cluster: ignored an unreadable message: %s", exc)
            return None
        return records if isinstance(records, list) else None

    def _received(self, records: list[Record]) -> None:
        if any(r.get("t") == "keys" and r.get("edge") != self.state.edge_id for r in records):
            self._reload_keys = True

    async def _send(self, records: list[Record], events: list[Record]) -> None:
        table = (lambda c: c.eval(_SET_NEWER, 1, self.decisions_key, *_flat(records))) \
            if records else None
        await self._write(table, json.dumps({"records": records + events}))

    async def _report(self, now: float, threat: Record, hits: Record | None) -> None:
        await self._write(
            lambda c: c.hset(self.threat_key, self.state.edge_id, json.dumps(threat)),
            json.dumps({"records": [threat] if hits is None else [threat, hits]}))
        if self._reload_keys or self.keys.current.id != self._shared_key:
            self._reload_keys = False
            await self._sync_keys(self.conn.data, now)

    async def _write(self, table: Callable[[Any], Any] | None, message: str) -> None:
        """`table(client)` (a command on the shared hashes), then `message` on the channel: in
        one pipelined round trip when one client carries both (a pipeline takes the same
        commands as a client)."""
        conn = self.conn
        if conn.one:
            pipe = conn.data.pipeline(transaction=False)
            if table is not None:
                table(pipe)
            pipe.publish(self.channel, message)
            await pipe.execute()
        else:
            if table is not None:
                await table(conn.data)
            await conn.bus.publish(self.channel, message)
        self.ops += 2 if table is not None else 1

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
