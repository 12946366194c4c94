"""Joins a running edge to its cluster when `cluster.redis` is set: the shared state over the
edge's defence and cache, the Redis link, and the link's metrics."""

from __future__ import annotations

import socket
from collections.abc import Callable

from kalkan.cluster.redis_link import RedisLink
from kalkan.cluster.state import ClusterState
from kalkan.config import Config, parse_hostport
from kalkan.defense.attack_mode import AttackMode
from kalkan.defense.challenge.keys import KeyRing
from kalkan.defense.decisions import Decisions
from kalkan.edge.pipeline import Pipeline


def edge_name(config: Config) -> str:
    """`cluster.edge_id`, else the host name and the first listen port (stable over restarts,
    distinct for two edges on one host)."""
    if config.cluster.edge_id:
        return config.cluster.edge_id
    return f"{socket.gethostname()}:{parse_hostport(config.listen[0])[1]}"


def start_cluster(config: Config, pipeline: Pipeline,
                  reload: Callable[[], object] | None = None) -> RedisLink | None:
    """The started link, or None when this edge runs alone; `reload` reloads this edge when
    another edge's operator reloaded theirs."""
    url = config.cluster.redis
    if url is None:
        return None
    defense = pipeline.defense
    # An edge without a defence still shares purges (and keeps the others' decisions, unused).
    # (`is None`, not `or`: an empty decision table is falsy.)
    decisions = getattr(defense, "decisions", None)
    decisions = Decisions() if decisions is None else decisions
    attack = getattr(defense, "attack", None)
    attack = AttackMode() if attack is None else attack
    keys = getattr(defense, "keys", None)
    keys = KeyRing.generate() if keys is None else keys
    state = ClusterState(edge_name(config), decisions, attack, purge=pipeline.purge,
                         reload=reload, counts=getattr(defense, "counts_to_share", None),
                         credit=getattr(defense, "credit", None))
    link = RedisLink(url, config.cluster.namespace, state, keys,
                     interval=config.cluster.interval)
    m = pipeline.metrics
    m.gauge("kalkan_cluster_up", "1 while the cluster's Redis is reachable, else 0 (the edge "
            "then runs on its own state and resyncs when it is back).", lambda: float(link.up))
    m.counter("kalkan_cluster_redis_ops_total", "Redis commands sent (pipelined in batches).",
              lambda: link.ops)
    m.counter("kalkan_cluster_records_sent_total", "Changes sent to the other edges.",
              lambda: link.sent)
    m.counter("kalkan_cluster_records_applied_total", "Changes from other edges applied here.",
              lambda: state.applied)
    m.counter("kalkan_cluster_outages_total", "Times Redis became unreachable.",
              lambda: link.outages)
    m.counter("kalkan_cluster_clients_credited_total", "Busy clients' requests at other edges "
              "counted in this edge's meters (rows, one per client and route class).",
              lambda: state.credited)
    m.gauge("kalkan_cluster_outbox", "Changes waiting to be sent (grows while Redis is away).",
            lambda: len(state.outbox) + len(state.events))
    link.start()
    return link
