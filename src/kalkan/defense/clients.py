"""Bounded per-client state: rate meters per address and per prefix, challenge failures, first and
last seen. The policy decides which meters exist; this module only counts, in flat arrays.
"""

# Design notes.
#
# Layout. Two tables, one keyed by address and one by prefix (IPv4 /24, IPv6 /64 by default).
# Each is an open-addressing hash index (array('I'), load <= 1/2, linear probing) over dense
# slots; every per-client value lives in an array indexed by slot, and a slot's meters are one
# row of a row-major array('d') (contiguous, cleared in one operation when the slot is reused).
# A client costs about 50 bytes plus 8 per meter, where a dict of Python objects costs hundreds.
#
# Keys. The index is keyed by a 64-bit fingerprint: SipHash (Python's hash of bytes, randomized
# per process) of the address XOR a random per-table salt. Raw integers are not used as keys
# because hash(int) is not keyed: anyone holding an IPv6 /48 could mint thousands of addresses
# with one hash value and turn every lookup into a long scan, or collide with a victim.
#
# Meters. Each meter is a GCRA (generic cell rate algorithm, the virtual-scheduling form of a
# leaky bucket): "more than N requests in T seconds" holds a burst of N and refills at N per T.
# It stores one float per client, the theoretical arrival time (TAT); each counted request
# pushes it T/N seconds later, and the client is over the limit when TAT - now > T. TAT is
# capped at one request beyond the limit, so a flood that stops is forgiven within T/N seconds:
# longer punishment is the job of the decision TTL a rule sets, not of the counter.

from __future__ import annotations

import os
import random
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from kalkan.defense.facts import ROUTE_CLASSES, RequestFacts
from kalkan.defense.rows import (
    MAX_SLOTS,
    NO_PREFIX,
    PLAIN,
    QUIET,
    V4_MAPPED,
    V4_PREFIX,
    Hit,
    HitCall,
    fingerprint,
    meter,
    probe,
)
from kalkan.memo import Memo

ADDRESS, PREFIX = "address", "prefix"
PER = (ADDRESS, PREFIX)

# (Final: compiled code reads them as constants, not from the module's dict at each use.)
_EMPTY: Final = 0           # index cell holding no slot (cells store slot + 1)
_FREE: Final = 0xFFFFFFFF   # `last` of a slot that holds no client
_V4_TAG: Final = V4_MAPPED         # IPv4 addresses are keyed as their IPv4-mapped IPv6 form
_PREFIX_V4_TAG: Final = V4_PREFIX  # keeps IPv4 and IPv6 prefix keys apart
_EVICT_WINDOW: Final = 6    # slots looked at to choose one to evict
_KNOWN_CREDIT: Final = 600  # seconds of history that count as recency when choosing a victim
_MAX_FAILURES: Final = 0xFFFF
_UNRESOLVED: Final = -2     # prefix slot not looked up yet
_PREFIX_FP_MEMO: Final = 16384  # prefixes whose fingerprint is remembered
_RECENT: Final = 16384      # latest requests' client addresses remembered (for `recent()`)
_AGENT_SHARE: Final = 4     # at most one agent row per this many addresses (shared ones are few)
# The arithmetic on the arrays (in C when built), bound as constants: no module-dict lookup.
_PROBE: Final = probe
_FINGERPRINT: Final = fingerprint
_METER: Final = meter


@dataclass(frozen=True, slots=True)
class Meter:
    """One rate condition: more than `limit` requests in `period` seconds, per address or prefix.

    `routes` limits the count to those route classes (empty = every request). Equal definitions
    share one meter, so `id` is derived from the definition and stays stable across reloads.
    """

    per: str
    limit: int
    period: float
    routes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.per not in PER:
            raise ValueError(f"per must be address or prefix, got {self.per!r}")
        if self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit!r}")
        if not self.period > 0:
            raise ValueError(f"period must be positive, got {self.period!r}")
        unknown = set(self.routes) - set(ROUTE_CLASSES)
        if unknown:
            raise ValueError(f"unknown route class {sorted(unknown)[0]!r}")

    @property
    def id(self) -> str:
        routes = "+".join(sorted(self.routes)) if self.routes else "all"
        return f"{self.per}:{self.limit}/{self.period:g}s:{routes}"


class _Slots:
    """A hash index of 64-bit fingerprints over dense slots, and the columns of those slots."""

    def __init__(self, capacity: int, with_history: bool, trait_width: int = 0) -> None:
        if not 1 <= capacity <= MAX_SLOTS:
            raise ValueError(f"capacity must be 1 to {MAX_SLOTS:,}, got {capacity:,}")
        self.capacity = capacity
        size = 8
        while size < 2 * capacity:
            size *= 2
        self.mask = size - 1
        self.index = array("I", bytes(4 * size))   # allocated once: never rehashed
        self.fps = array("q")                       # fingerprint per slot; 0 = none
        self.last = array("I")                      # last seen (whole seconds); _FREE = none
        self.with_history = with_history            # addresses keep these, prefixes do not:
        self.first = array("I")                     # first seen
        self.fail_count = array("H")                # recent challenge failures
        self.fail_at = array("I")                   # time of the latest failure
        self.over_until = array("d")                # no per-address meter is over after this
        self.agent = array("q")                     # a User-Agent that claims no crawler (key)
        self.width = 0                              # meters per slot
        self.meters = array("d")                    # row-major: slot * width + meter
        self.zero_row = array("d")
        self.trait_width = trait_width              # behaviour floats per slot (defense/behaviour)
        self.traits = array("d")                    # row-major like the meters
        self.zero_traits = array("d", bytes(8 * trait_width))
        self.n = 0                                  # slots handed out (the ones in use are < n)
        self.count = 0                              # slots holding a client
        self.inserted = 0                           # clients added since start
        self.free: list[int] = []
        self.evictions = 0
        self._evict_cursor = 0
        self._expire_cursor = 0

    # -- columns --------------------------------------------------------------------------

    def _columns(self) -> list[array[Any]]:
        cols: list[array[Any]] = [self.fps, self.last]
        if self.with_history:
            cols += [self.over_until, self.first, self.fail_count, self.fail_at, self.agent]
        return cols

    def _grow(self) -> None:
        """Extend every column by a chunk: one C-level copy now instead of one per new client."""
        have = len(self.fps)
        extra = min(max(1024, have // 4), self.capacity - have)
        for col in self._columns():
            col.frombytes(bytes(extra * col.itemsize))
        self.last[have:have + extra] = array("I", [_FREE]) * extra
        self.meters.frombytes(bytes(8 * extra * self.width))
        self.traits.frombytes(bytes(8 * extra * self.trait_width))

    def set_width(self, width: int, keep: list[tuple[int, int]]) -> None:
        """Re-lay the meter rows `width` wide; `keep` maps (old offset, new offset)."""
        rows = len(self.fps)
        meters = array("d", bytes(8 * rows * width))
        for old, new in keep:
            meters[new::width] = self.meters[old::self.width]
        self.meters, self.width = meters, width
        self.zero_row = array("d", bytes(8 * width))

    # -- index ----------------------------------------------------------------------------

    def find(self, fp: int) -> int:
        """The slot holding fingerprint `fp`, or -1."""
        index, fps, mask = self.index, self.fps, self.mask
        i = fp & mask
        while True:
            s = index[i]
            if s == _EMPTY:
                return -1
            if fps[s - 1] == fp:
                return s - 1
            i = (i + 1) & mask

    def get(self, fp: int, t: int) -> int:
        """The slot for `fp`, created (evicting if full) when missing; marks it seen at `t`."""
        slot = _PROBE(self.index, self.fps, self.last, self.mask, fp, t)
        return slot if slot >= 0 else self.insert(fp, -slot - 1, t)

    def insert(self, fp: int, i: int, t: int) -> int:
        """Add `fp`, whose probe ended at the empty cell `i`; returns its new slot."""
        if self.free:
            slot = self.free.pop()
        elif self.n < self.capacity:
            if self.n == len(self.fps):
                self._grow()
            slot = self.n
            self.n += 1
        else:
            slot = self._victim()
            self.remove(slot)
            self.free.pop()                  # remove() freed it; it is ours
            self.evictions += 1
            # The eviction's backward shift may have opened a cell earlier in this key's probe
            # chain: the key must sit at the first empty cell from its home or find() misses it.
            index, mask = self.index, self.mask
            i = fp & mask
            while index[i] != _EMPTY:
                i = (i + 1) & mask
        self.index[i] = slot + 1
        self.fps[slot] = fp
        self.last[slot] = t
        if self.with_history:
            self.over_until[slot] = 0.0
            self.first[slot] = t
            self.fail_count[slot] = 0
            self.fail_at[slot] = 0
            self.agent[slot] = 0
        width = self.width
        if width:
            self.meters[slot * width:slot * width + width] = self.zero_row
        tw = self.trait_width
        if tw:
            self.traits[slot * tw:slot * tw + tw] = self.zero_traits
        self.count += 1
        self.inserted += 1
        return slot

    def _victim(self) -> int:
        """The least valuable of the next few slots on a ring: idle longest, with credit for a
        long history.

        Walking the ring gives FIFO order with a second chance: a reader who has been around for
        minutes outranks fresh addresses that sent one request, so a flood of new addresses
        evicts its own kind first. A slot's score is its last-seen time plus its age, up to
        _KNOWN_CREDIT seconds.
        """
        n, last, first = self.n, self.last, self.first
        history = self.with_history
        s = self._evict_cursor
        best, best_score = s % n, 1 << 62
        for _ in range(_EVICT_WINDOW):
            if s >= n:
                s = 0
            seen = last[s]
            if seen != _FREE:
                score = seen
                if history:
                    age = seen - first[s]
                    score += age if age < _KNOWN_CREDIT else _KNOWN_CREDIT
                if score < best_score:
                    best, best_score = s, score
            s += 1
        self._evict_cursor = s
        return best

    def remove(self, slot: int) -> None:
        """Drop the client in `slot`: backward-shift deletion keeps probe chains intact."""
        index, fps, mask = self.index, self.fps, self.mask
        i = fps[slot] & mask
        while index[i] != slot + 1:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            s = index[j]
            if s == _EMPTY:
                break
            home = fps[s - 1] & mask
            # Move the entry at j into the hole at i unless its home lies cyclically in (i, j].
            if (i < j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                index[i] = s
                i = j
        index[i] = _EMPTY
        self.last[slot] = _FREE
        fps[slot] = 0                        # fingerprints are never 0: cached slots miss
        self.free.append(slot)
        self.count -= 1

    def expire(self, older_than: int, budget: int) -> int:
        """Remove clients last seen before `older_than`, scanning at most `budget` slots."""
        n = self.n
        if n == 0:
            return 0
        last, removed = self.last, 0
        cursor = self._expire_cursor % n
        for _ in range(min(budget, n)):
            seen = last[cursor]
            if seen != _FREE and seen < older_than:
                self.remove(cursor)
                removed += 1
            cursor += 1
            if cursor == n:
                cursor = 0
        self._expire_cursor = cursor
        return removed

    def memory_bytes(self) -> int:
        return (sys.getsizeof(self.index) + sum(sys.getsizeof(c) for c in self._columns())
                + sys.getsizeof(self.meters) + sys.getsizeof(self.traits)
                + sys.getsizeof(self.free) + sys.getsizeof(self))


class ClientTable:
    """Per-address and per-prefix state for up to `capacity` addresses, in flat arrays.

    Call `hit(facts, now)` once per request, before the policy looks at rates, then `over()` /
    `level()` for the meters a rule names. `now` is seconds on a clock that never goes back
    (the event loop's monotonic clock); first/last seen are kept in whole seconds.
    """

    def __init__(self, capacity: int = 1_000_000, meters: Iterable[Meter] = (),
                 prefix_v4: int = 24, prefix_v6: int = 64, *,
                 prefix_capacity: int | None = None, idle_ttl: float = 3600.0,
                 failure_window: float = 3600.0, seed: int | None = None,
                 trait_width: int = 0) -> None:
        if not 0 <= prefix_v4 <= 32:
            raise ValueError(f"prefix_v4 must be 0..32, got {prefix_v4}")
        if not 0 <= prefix_v6 <= 128:
            raise ValueError(f"prefix_v6 must be 0..128, got {prefix_v6}")
        self.prefix_v4, self.prefix_v6 = prefix_v4, prefix_v6
        self._shift4, self._shift6 = 32 - prefix_v4, 128 - prefix_v6
        self.idle_ttl, self.failure_window = idle_ttl, failure_window
        salt = random.Random(seed).randbytes(16) if seed is not None else os.urandom(16)
        # The fingerprints' SipHash key: secret, so no one can choose addresses that collide.
        self._k0 = int.from_bytes(salt[:8], "little")
        self._k1 = int.from_bytes(salt[8:], "little")
        self._addr = _Slots(capacity, True, trait_width)
        self._pre = _Slots(prefix_capacity or capacity, False)
        # Behaviour rows of one User-Agent on an address that several use (CGNAT, a bot on a
        # reader's address): keyed by the address's fingerprint and the agent's mark.
        self._agents = _Slots(max(1, capacity // _AGENT_SHARE), False, trait_width) \
            if trait_width else None
        # meter id -> (meter, counts per address?, offset in its table's rows, TAT - now
        # beyond which the client is over)
        self._meters: dict[str, tuple[Meter, bool, int, float]] = {}
        # route class -> (offset, T/N, cap, beyond) of each address meter that counts it, the
        # same of each prefix meter (rows.meter's spec; None when there is none)
        self._specs: dict[str, tuple[array[float] | None, array[float] | None]] = {}
        # The latest requests' client address texts, a ring (for `recent()`). No memo from the
        # text to the slot: at 100,000 clients any bounded one missed nearly always, and a miss
        # plus its insert cost more than the keyed hash and the probe it was to save.
        self._recent: list[str] = [""] * _RECENT
        self._recent_routes: list[str] = [""] * _RECENT   # their route classes
        self._recent_at = 0
        self.counted = 0          # requests counted since start (not those credited)
        self._shared_upto = 0     # `counted` when `counts_to_share` last looked
        self._crediting = False   # inside `credit`: counts that came from elsewhere
        self._prefix_fps: Memo[int, int] = Memo(_PREFIX_FP_MEMO)  # prefix number -> fingerprint
        # What the latest hit() found: its request, address, address slot and prefix slot (or
        # _UNRESOLVED). Fields, not a tuple: a tuple made per request cost more than reading it.
        self._last_facts: RequestFacts | None = None
        self._last_ip = -1
        self._last_a = -1
        self._last_p = -1
        # And what it answered of the policy's next questions (rows.PyHit): the agent key it was
        # given, the time, QUIET and PLAIN.
        self._last_key = 0
        self._last_now = -1.0
        self._last_flags = 0
        self.set_meters(meters)

    # -- configuration ----------------------------------------------------------------------

    @property
    def meter_ids(self) -> frozenset[str]:
        return frozenset(self._meters)

    def set_meters(self, meters: Iterable[Meter]) -> None:
        """Count exactly these meters from now on (call it after each policy load).

        Clients, first/last seen and failures are kept; meters whose definition did not change
        keep their state; new meters start empty.
        """
        wanted = list({m.id: m for m in meters}.values())
        old = self._meters
        new: dict[str, tuple[Meter, bool, int, float]] = {}
        for per, table in ((ADDRESS, self._addr), (PREFIX, self._pre)):
            mine = [m for m in wanted if m.per == per]
            keep = [(old[m.id][2], k) for k, m in enumerate(mine) if m.id in old]
            table.set_width(len(mine), keep)
            for k, m in enumerate(mine):
                # A hair of tolerance: N requests at one instant must land exactly on the limit.
                new[m.id] = (m, per == ADDRESS, k, m.period * (1 + 1e-9))
        self._meters = new
        specs: dict[str, tuple[array[float] | None, array[float] | None]] = {}
        for route in ROUTE_CLASSES:
            address_spec, prefix_spec = (
                array("d", [x for m, per_address, k, beyond in new.values()
                            if per_address is (per == ADDRESS)
                            and (not m.routes or route in m.routes)
                            for x in (k, m.period / m.limit, m.period + m.period / m.limit,
                                      beyond)])
                for per in PER)
            specs[route] = (address_spec or None, prefix_spec or None)
        self._specs = specs
        addr, pre = self._addr, self._pre
        # Holds the arrays themselves: made again here, where the meters' arrays are replaced.
        self._fast: HitCall = Hit(
            self._k0, self._k1, self.prefix_v4, self.prefix_v6,
            addr.index, addr.fps, addr.last, addr.meters, addr.mask, addr.width,
            addr.over_until, pre.index, pre.fps, pre.last, pre.meters, pre.mask, pre.width,
            specs, addr.agent)
        self._forget()

    # -- keys -------------------------------------------------------------------------------

    def _address_fp(self, facts: RequestFacts) -> int:
        return self._ip_fp(facts.version, facts.ip)

    def _ip_fp(self, version: int, ip: int) -> int:
        return self._keyed(ip | _V4_TAG if version == 4 else ip)

    def _keyed(self, key: int) -> int:
        """The fingerprint of an address or prefix key (rows.fingerprint: a keyed hash, 62
        bits, which compiled code keeps unboxed through the probe's masks; never 0)."""
        return _FINGERPRINT(key, self._k0, self._k1)

    def _prefix_fp(self, facts: RequestFacts) -> int:
        ip = facts.ip
        key = ((ip >> self._shift4) | _PREFIX_V4_TAG) if facts.version == 4 else ip >> self._shift6
        # Remembered by prefix number: a prefix holds many clients, and a lookup by int costs a
        # seventh of the keyed hash. (Bounded: a botnet from many prefixes only cycles it.)
        fp = self._prefix_fps.table.get(key, 0)
        if fp == 0:
            fp = self._prefix_fps.put(key, self._keyed(key))
        return fp

    def _forget(self) -> None:
        self._last_facts = None
        self._last_ip = self._last_a = self._last_p = -1

    def _slot(self, facts: RequestFacts, per_address: bool) -> int:
        """The address or prefix slot of this request's client, or -1; never inserts.

        Right after `hit()` for the same request the slots it found are reused, so the rate
        checks that follow cost no further lookups.
        """
        if facts is self._last_facts and facts.ip == self._last_ip:
            if per_address:
                return self._last_a
            p = self._last_p
            if p == _UNRESOLVED:
                p = self._last_p = self._pre.find(self._prefix_fp(facts))
            return p
        if per_address:
            return self._addr.find(self._address_fp(facts))
        return self._pre.find(self._prefix_fp(facts))

    # -- the hot path -----------------------------------------------------------------------

    def hit(self, facts: RequestFacts, now: float, n: int = 1, agent_key: int = 0) -> None:
        """Count this request (or `n` identical ones, counted late) in every meter that applies
        to its route class. `agent_key` is the policy's key of its User-Agent (`plain_agent`),
        0 when none is asked about."""
        # Written out flat: this runs for every request that is not a replayed cache hit.
        ip = facts.ip
        # A client already in the table (nearly every request): one call does it all, and
        # answers address_quiet and plain_agent for this request on the way.
        packed = self._fast(ip, facts.version, facts.route, now, n, agent_key)
        if packed >= 0:
            a = packed >> 33
            p = (packed >> 2) & NO_PREFIX
            if p == NO_PREFIX:
                p = _UNRESOLVED              # no prefix meter counts this route: look up later
            self._last_flags = packed & 3   # QUIET | PLAIN
        else:
            a, p = self._hit_new(facts, now, n)
            addr = self._addr
            flags = QUIET if addr.over_until[a] <= now else 0
            if agent_key and addr.agent[a] == agent_key:
                flags |= PLAIN
            self._last_flags = flags
        self._last_key = agent_key
        self._last_now = now
        if not self._crediting:
            at = self._recent_at
            self._recent[at] = facts.client
            self._recent_routes[at] = facts.route
            self._recent_at = (at + 1) & (_RECENT - 1)
            self.counted += 1
        self._last_facts = facts
        self._last_ip = ip
        self._last_a = a
        self._last_p = p

    def _hit_new(self, facts: RequestFacts, now: float, n: int) -> tuple[int, int]:
        """`hit` for a client whose address or prefix is not in the table yet: added, then
        counted. (address slot, prefix slot)."""
        ip = facts.ip
        t = int(now)                         # compiled: a native conversion
        a_spec, p_spec = self._specs.get(facts.route) or self._specs["page"]
        addr = self._addr
        a = addr.get(self._ip_fp(facts.version, ip), t)
        if a_spec is not None:
            until = _METER(addr.meters, a * addr.width, a_spec, now, n)
            # The meter is over until TAT - beyond, and TATs only move on a hit: the latest
            # end of "over" across meters is when the client is under them all again. Only
            # meters over now need recording, so a client under its limits costs no write.
            if until > now and until > addr.over_until[a]:
                addr.over_until[a] = until
        if p_spec is not None:
            pre = self._pre
            p = pre.get(self._prefix_fp(facts), t)
            _METER(pre.meters, p * pre.width, p_spec, now, n)
        else:
            p = _UNRESOLVED
        return a, p

    def credit(self, facts: RequestFacts, now: float, n: int) -> None:
        """Count `n` requests of this client that another edge served (kalkan.cluster), in the
        meters of its route class, without offering them to be shared again."""
        self._crediting = True
        try:
            self.hit(facts, now, n)
        finally:
            self._crediting = False

    def counts_to_share(self, limit: int) -> list[tuple[str, str, int]]:
        """(client, route class, requests) counted here since the last call, the busiest
        `limit` of them, for the other edges to credit. From the ring of the latest 16,384
        requests: past that many since the last call, the counts are scaled up from it."""
        new = self.counted - self._shared_upto
        self._shared_upto = self.counted
        seen = min(new, _RECENT)
        if seen <= 0:
            return []
        clients, routes, mask = self._recent, self._recent_routes, _RECENT - 1
        counts: dict[tuple[str, str], int] = {}
        end = self._recent_at + _RECENT
        for i in range(end - seen, end):
            key = (clients[i & mask], routes[i & mask])
            counts[key] = counts.get(key, 0) + 1
        scale = new / seen
        busiest = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
        return [(c, r, max(1, round(k * scale))) for (c, r), k in busiest if c]

    @property
    def traits(self) -> array[float]:
        """Every address's behaviour row (`trait_width` floats each, by slot: defense/behaviour)."""
        return self._addr.traits

    @property
    def agent_traits(self) -> array[float]:
        """The behaviour rows of agents on shared addresses (see `agent_slot`)."""
        return self._agents.traits if self._agents is not None else array("d")

    def agent_slot(self, slot: int, mark: float, now: float, create: bool) -> tuple[int, bool]:
        """(row, created) of the agent whose User-Agent mark is `mark` on the address in `slot`;
        (-1, False) when it has none and `create` is false (or behaviour is not kept)."""
        agents = self._agents
        if agents is None:
            return -1, False
        fp = hash((self._addr.fps[slot], mark)) or 1   # keyed: the address's is salted
        g = agents.find(fp)
        if g >= 0:
            agents.last[g] = int(now)
            return g, False
        if not create:
            return -1, False
        return agents.get(fp, int(now)), True

    @property
    def last_slot(self) -> int:
        """The address slot the latest `hit()` counted."""
        return self._last_a

    def slot_of(self, facts: RequestFacts) -> int:
        """The address slot of this request's client, or -1 (not tracked); never inserts."""
        return self._slot(facts, True)

    def recent_slot(self, version: int, ip: int) -> int:
        """The address slot of a client (its parsed address), or -1; never inserts: for what
        comes after the request was decided (its answer, its miss)."""
        last = self._last_facts
        if last is not None and self._last_ip == ip and last.version == version:
            return self._last_a              # the request just counted: no lookup
        return self._addr.find(self._ip_fp(version, ip))

    def over(self, meter_id: str, facts: RequestFacts, now: float) -> bool:
        """Whether this client has sent more than the meter's limit within its period.

        Call after `hit()` for the same request: the request being decided counts.
        """
        entry = self._meters.get(meter_id)
        if entry is None:
            raise KeyError(f"meter {meter_id!r} is not counted by this ClientTable; "
                           "call set_meters(policy.meters) after loading the policy")
        _, per_address, k, beyond = entry
        if per_address and facts is self._last_facts and facts.ip == self._last_ip:
            slot = self._last_a              # the common case: right after hit()
        else:
            slot = self._slot(facts, per_address)
        if slot < 0:
            return False
        table = self._addr if per_address else self._pre
        return table.meters[slot * table.width + k] - now > beyond

    def plain_agent(self, facts: RequestFacts, key: int) -> bool:
        """Is `key` (the policy's keyed hash of this request's User-Agent) the one kept by
        `note_plain_agent` for this client? Asked right after `hit()` for the same request;
        False otherwise."""
        if facts is self._last_facts and facts.ip == self._last_ip:
            if key == self._last_key and key:
                return self._last_flags & PLAIN != 0    # hit() looked already
            return self._addr.agent[self._last_a] == key
        return False

    def note_plain_agent(self, facts: RequestFacts, key: int) -> None:
        """Keep `key` for this client: its User-Agent claims no crawler (right after `hit()`)."""
        if facts is self._last_facts and facts.ip == self._last_ip:
            self._addr.agent[self._last_a] = key
            if key == self._last_key:
                self._last_flags |= PLAIN

    def address_quiet(self, facts: RequestFacts, now: float) -> bool:
        """True when no per-address meter of this client is over: the policy then skips every
        rule that needs one. One array read after `hit()`; False (look closer) otherwise."""
        if facts is self._last_facts and facts.ip == self._last_ip:
            if now == self._last_now:
                return self._last_flags & QUIET != 0    # hit() looked already
            a = self._last_a
        else:
            a = self._slot(facts, True)
            if a < 0:
                return True
        return self._addr.over_until[a] <= now

    def level(self, meter_id: str, facts: RequestFacts, now: float) -> float:
        """The meter's current fill in requests (0 .. limit + 1), for logs and scores."""
        meter, per_address, k, _ = self._meters[meter_id]
        slot = self._slot(facts, per_address)
        if slot < 0:
            return 0.0
        table = self._addr if per_address else self._pre
        tat = table.meters[slot * table.width + k]
        return max(0.0, tat - now) * meter.limit / meter.period

    # -- challenge failures and history -----------------------------------------------------

    def note_challenge_failure(self, facts: RequestFacts, now: float) -> int:
        """Count a failed (or abandoned) challenge; returns the recent failures after it.

        Failures are forgotten `failure_window` seconds after the latest one.
        """
        addr = self._addr
        evictions = addr.evictions
        t = int(now)
        a = addr.get(self._address_fp(facts), t)
        if addr.evictions != evictions:
            self._forget()                   # the slot cached for another request may be gone
        count = addr.fail_count[a]
        if count and t - addr.fail_at[a] > self.failure_window:
            count = 0
        count = min(count + 1, _MAX_FAILURES)
        addr.fail_count[a] = count
        addr.fail_at[a] = t
        return count

    def note_challenge_pass(self, facts: RequestFacts) -> None:
        """A solved challenge wipes the client's failures."""
        a = self._slot(facts, True)
        if a >= 0:
            self._addr.fail_count[a] = 0

    def failures(self, facts: RequestFacts, now: float) -> int:
        """Challenge failures of this address within the failure window."""
        a = self._slot(facts, True)
        if a < 0:
            return 0
        addr = self._addr
        count = addr.fail_count[a]
        if count and int(now) - addr.fail_at[a] > self.failure_window:
            return 0
        return count

    def first_seen(self, slot: int) -> int:
        """When the address in `slot` (from `slot_of`) was first seen, in whole seconds."""
        return self._addr.first[slot]

    def seen(self, facts: RequestFacts) -> tuple[int, int] | None:
        """(first seen, last seen) of this address in whole seconds, or None if not tracked."""
        a = self._slot(facts, True)
        if a < 0:
            return None
        return self._addr.first[a], self._addr.last[a]

    # -- housekeeping -----------------------------------------------------------------------

    def expire(self, now: float, budget: int = 4096) -> int:
        """Forget clients idle for `idle_ttl`; scans at most `budget` slots of each table.

        Call it about once a second: a sweep of a million clients is spread over four minutes of
        calls of a few milliseconds each instead of one long stall of the event loop (idle_ttl
        is an hour). Returns the number of entries removed.
        """
        older_than = int(now - self.idle_ttl)
        if older_than <= 0:
            return 0
        removed = self._addr.expire(older_than, budget) + self._pre.expire(older_than, budget)
        if self._agents is not None:
            self._agents.expire(older_than, budget)
        if removed:
            self._forget()
        return removed

    def recent(self) -> list[str]:
        """Addresses seen lately, each once, oldest first: the clients of the latest 16,384
        requests counted."""
        at = self._recent_at
        ring = self._recent[at:] + self._recent[:at]
        return [c for c in dict.fromkeys(reversed(ring)) if c][::-1]

    def __len__(self) -> int:
        """Addresses tracked."""
        return self._addr.count

    @property
    def arrivals(self) -> int:
        """Addresses added since start (new ones, and returning ones that had been dropped)."""
        return self._addr.inserted

    @property
    def prefixes(self) -> int:
        """Prefixes tracked."""
        return self._pre.count

    @property
    def evictions(self) -> int:
        """Entries (addresses and prefixes) dropped because a table was full."""
        return self._addr.evictions + self._pre.evictions

    def memory_bytes(self) -> int:
        """Bytes held by both tables' arrays plus the ring of recent clients."""
        # ~60 B per address text the ring keeps alive (its pointers are in getsizeof); the
        # route ring holds pointers to the few interned route names
        hot = sys.getsizeof(self._recent) + sys.getsizeof(self._recent_routes) + 60 * _RECENT
        agents = self._agents.memory_bytes() if self._agents is not None else 0
        return self._addr.memory_bytes() + self._pre.memory_bytes() + agents + hot \
            + sys.getsizeof(self)

    def stats(self) -> dict[str, int]:
        """Counts for metrics: addresses, prefixes, evictions, memory."""
        return {"addresses": len(self), "prefixes": self.prefixes,
                "evictions": self.evictions, "memory_bytes": self.memory_bytes()}
