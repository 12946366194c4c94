"""What the edges of a cluster share, without any I/O: local changes become records in an
outbox; records from other edges (a batch from the channel, or the shared table at a resync)
change the local defence. Decisions merge last-writer-wins by the time of the change, with
tombstones for removals, so an edge that was cut off converges when it is back and nothing it
decided meanwhile is lost.

A record is a JSON object; `t` names its kind:
- `decision`: target, action, reason, origin, created, expires (null = until removed), at, edge
- `removed`: target, at, edge (a decision taken away by the operator or the admin API)
- `threat`: level, reason, at, edge (sent every second; stale after THREAT_FRESH seconds)
- `purge`: url (null = everything), edge
- `reload`: edge (the operator reloaded the policy, pages and certificates there: reload here)
- `hits`: rows of [client, route class, requests] the edge served in the last second, its
  busiest clients: the others count them in their meters, so a client's limits hold over all
  the edges together (within a second's requests per edge, for the busiest 1,000 per edge)
- `keys`: the edge rotated the pass-signing keys (the ring itself is in the shared table)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from kalkan.defense.attack_mode import AttackMode
from kalkan.defense.decisions import ACTIONS, ORIGINS, Decision, DecisionError, Decisions

log = logging.getLogger("kalkan.cluster")

THREAT_FRESH = 5.0          # seconds an edge's threat report counts
TOMBSTONE_KEEP = 86400.0    # seconds a removal is remembered (an edge away longer resurrects)
_EXPIRY_SLACK = 1.0         # a removal this close to a decision's expiry is its expiry

Record = dict[str, Any]


class ClusterState:
    """The local side of the shared state: the outbox, and how a remote record applies."""

    def __init__(self, edge_id: str, decisions: Decisions, attack: AttackMode,
                 purge: Callable[[str | None], object] | None = None,
                 reload: Callable[[], object] | None = None,
                 counts: Callable[[], list[tuple[str, str, int]]] | None = None,
                 credit: Callable[[list[tuple[str, str, int]], float], int] | None = None
                 ) -> None:
        self.edge_id = edge_id
        self.counts = counts
        self.credit = credit
        self.credited = 0       # rows of other edges' requests counted in this edge's meters
        self.decisions = decisions
        self.attack = attack
        self.purge = purge
        self.reload = reload
        # Per target: the newest change this edge knows of (local or remote), by its time.
        self._at: dict[str, float] = {}
        self._expires: dict[str, float] = {}
        self.tombstones: dict[str, float] = {}
        self.outbox: dict[str, Record] = {}     # target -> its latest unsent change
        self.events: list[Record] = []          # purges and key rotations, in order
        self.peers: dict[str, tuple[int, str, float]] = {}  # edge -> (level, why, at)
        self.applied = 0
        self.wake: Callable[[], object] = lambda: None   # the link: something to send
        self._applying = False
        decisions.on_change.append(self._changed)

    # -- local changes -> outbox ------------------------------------------------------------
    def _changed(self, decision: Decision | None, target: str) -> None:
        if self._applying:
            return
        if decision is not None:
            self._at[target] = decision.created
            self._expires[target] = decision.expires
            self.tombstones.pop(target, None)
            self.outbox[target] = decision_record(decision, self.edge_id)
            self.wake()
            return
        expires = self._expires.pop(target, math.inf)
        at = self._at.pop(target, 0.0)
        now = max(at, time.time())
        if expires <= now + _EXPIRY_SLACK:
            self.outbox.pop(target, None)   # ran out: every edge sees that by itself
            return
        self.tombstones[target] = now
        self.outbox[target] = {"t": "removed", "target": target, "at": now, "edge": self.edge_id}
        self.wake()

    def purged(self, url: str | None) -> None:
        """The operator purged `url` (None: everything) here: the other edges purge it too."""
        self.events.append({"t": "purge", "url": url, "edge": self.edge_id})
        self.wake()

    def reloaded(self) -> None:
        """The operator reloaded this edge (SIGHUP, `kalkan reload`): the others reload too,
        each from its own files (keep the policy the same on every edge)."""
        self.events.append({"t": "reload", "edge": self.edge_id})
        self.wake()

    def keys_rotated(self) -> None:
        self.events.append({"t": "keys", "edge": self.edge_id})

    def take(self) -> tuple[list[Record], list[Record]]:
        """The decision records and the events to send now (the outbox is emptied; give them
        back with `requeue` when the send failed)."""
        records, self.outbox = list(self.outbox.values()), {}
        events, self.events = self.events, []
        return records, events

    def requeue(self, records: list[Record], events: list[Record]) -> None:
        for r in records:
            self.outbox.setdefault(r["target"], r)   # a newer change made since wins
        self.events[:0] = events

    def threat_record(self, now: float) -> Record:
        """This edge's word on the threat: its own signals', or its operator's pinned mode
        (never what it took from the others, or two edges would hold each other up)."""
        a = self.attack
        if a.override is not None:
            return {"t": "threat", "level": a.override, "reason": a.reason, "at": now,
                    "edge": self.edge_id}
        return {"t": "threat", "level": a.own_level, "reason": a.own_reason, "at": now,
                "edge": self.edge_id}

    def hits_record(self, now: float) -> Record | None:
        """This edge's busiest clients since the last call (None when there were none)."""
        rows = self.counts() if self.counts is not None else []
        if not rows:
            return None
        return {"t": "hits", "rows": [list(r) for r in rows], "at": now, "edge": self.edge_id}

    def all_records(self, now: float) -> list[Record]:
        """Every live decision and remembered removal: what this edge tells a resync."""
        out = [decision_record(d, self.edge_id) for d in self.decisions.all(now)]
        out += [{"t": "removed", "target": t, "at": at, "edge": self.edge_id}
                for t, at in self.tombstones.items()]
        return out

    # -- remote records -> local state ------------------------------------------------------
    def apply(self, records: list[Record], now: float, *, own: bool = False) -> None:
        """Records from other edges (this edge's own are skipped unless `own`: a resync reads
        the shared table, where this edge's latest word may be newer than what it kept); a bad
        record is logged, never raised: one edge's bug must not stop another's defence."""
        for r in records:
            if r.get("edge") == self.edge_id and not own:
                continue
            try:
                self._apply(r, now)
            except (DecisionError, KeyError, TypeError, ValueError) as exc:
                log.warning("cluster: ignored a bad record from edge %r: %s (%.200r)",
                            r.get("edge"), exc, r)
        self._settle_threat(now)

    def _apply(self, r: Record, now: float) -> None:
        kind = r["t"]
        if kind == "decision" or kind == "removed":
            self._apply_decision(r, now)
        elif kind == "threat":
            if r["edge"] == self.edge_id:
                return
            self.peers[str(r["edge"])] = (int(r["level"]), str(r.get("reason", "")),
                                          float(r["at"]))
        elif kind == "purge":
            if self.purge is not None:
                self.purge(r["url"])
            self.applied += 1
        elif kind == "hits":
            if self.credit is not None:
                rows = [(str(c), str(route), int(n)) for c, route, n in r["rows"]]
                self.credited += self.credit(rows, now)
        elif kind == "reload":
            if self.reload is not None:
                self.reload()
            self.applied += 1
        elif kind != "keys":   # keys: the link reloads the ring from the table
            raise ValueError(f"unknown record kind {kind!r}")

    def _apply_decision(self, r: Record, now: float) -> None:
        target, at = str(r["target"]), float(r["at"])
        if at <= self._at.get(target, -1.0) or at <= self.tombstones.get(target, -1.0):
            return   # this edge knows of a newer change (last writer wins)
        self._applying = True
        try:
            if r["t"] == "removed":
                self.decisions.delete(target)
                self._at.pop(target, None)
                self._expires.pop(target, None)
                self.tombstones[target] = at
            else:
                expires = math.inf if r["expires"] is None else float(r["expires"])
                if expires <= now:
                    return
                action, origin = str(r["action"]), str(r["origin"])
                if action not in ACTIONS or origin not in ORIGINS:
                    raise ValueError(f"unknown action {action!r} or origin {origin!r}")
                ttl = None if expires == math.inf else expires - now
                d = self.decisions.add(target, action, ttl, str(r["reason"]), origin, now)
                d.created, d.expires = float(r["created"]), expires
                self._at[target], self._expires[target] = at, expires
                self.tombstones.pop(target, None)
        finally:
            self._applying = False
        self.applied += 1

    def _settle_threat(self, now: float) -> None:
        live = [(level, edge, why) for edge, (level, why, at) in self.peers.items()
                if now - at <= THREAT_FRESH]
        level, edge, why = max(live, default=(0, "", ""))
        self.attack.set_peer_level(level, f"{edge}: {why}" if level else "")

    def tick(self, now: float) -> None:
        """Once a second: peers that stopped reporting no longer raise the level; old
        tombstones are forgotten."""
        self._settle_threat(now)
        old = [t for t, at in self.tombstones.items() if now - at > TOMBSTONE_KEEP]
        for t in old:
            del self.tombstones[t]


def decision_record(d: Decision, edge: str) -> Record:
    return {"t": "decision", "target": d.target, "action": d.action, "reason": d.reason,
            "origin": d.origin, "created": d.created,
            "expires": None if d.expires == math.inf else d.expires, "at": d.created,
            "edge": edge}
