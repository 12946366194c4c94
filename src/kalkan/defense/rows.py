"""The client table's per-request arithmetic on its arrays: probe the index, advance a slot's
GCRA meters, update a behaviour row. In C (`_rows.c`) when Kalkan was built with a compiler;
otherwise these Python definitions, which are also the reference the C is tested against
(tests/unit/test_rows.py).

What the values mean is documented where the arrays are: defense/clients.py (index, meters)
and defense/behaviour.py (the row).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from math import exp, log
from typing import Final

# A behaviour row: offsets of each value in a client's 16 floats (128 bytes); what each means
# is in behaviour.py. (Final: compiled code reads them as constants.) _rows.c has the same.
T_LAST: Final = 0
T_REF: Final = 1
N: Final = 2
PAGES: Final = 3
ASSETS: Final = 4
COSTLY: Final = 5
NEW_QUERY: Final = 6
NEW_PATH: Final = 7
ERRORS: Final = 8
ORIGIN: Final = 9
UA_CHANGES: Final = 10
REFERRED: Final = 11
GAP_MEAN: Final = 12
GAP_VAR: Final = 13
SKETCHES: Final = 14
UA_MARK: Final = 15
WIDTH: Final = 16
# An address is shared (CGNAT, a bot on a reader's address) when more than this share of its
# recent requests changed User-Agent (defense/engine.py then keeps a row per agent on it too).
SHARED: Final = 0.02
GAP_ALPHA: Final = 0.25      # weight of the latest gap in the running mean and variance
BUCKETS: Final = 26          # per sketch: two of them fit a float's 53-bit mantissa
SKETCH_FULL: Final = 13      # buckets set before a sketch is emptied (half)
PATHS_MASK: Final = (1 << BUCKETS) - 1

# observe_row's `kind`: what the request counts as (flags).
KIND_PAGE: Final = 1
KIND_ASSET: Final = 2
KIND_COSTLY: Final = 4


def py_probe(index: array[int], fps: array[int], last: array[int], mask: int, fp: int,
             t: int) -> int:
    """The slot holding `fp` (its `last` set to `t`), or -(cell + 1) for the empty cell of the
    index where `fp` belongs."""
    i = fp & mask
    while True:
        s = index[i]
        if s == 0:
            return -(i + 1)
        if fps[s - 1] == fp:
            last[s - 1] = t
            return s - 1
        i = (i + 1) & mask


_M64: Final = (1 << 64) - 1
KEY_BYTES: Final = 17   # a table key: an address or prefix number with its family's tag bit


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _M64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _M64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = _rotl(v1, 17) ^ v2
    return v0, v1, _rotl(v2, 32), v3


def py_siphash13(k0: int, k1: int, data: bytes) -> int:
    """SipHash-1-3 (the variant CPython hashes its strings with) of `data` under (k0, k1)."""
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573
    whole = len(data) - len(data) % 8
    words = [int.from_bytes(data[at:at + 8], "little") for at in range(0, whole, 8)]
    words.append((len(data) & 0xFF) << 56 | int.from_bytes(data[whole:], "little"))
    for m in words:
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def py_fingerprint(key: int, k0: int, k1: int) -> int:
    """A table key's fingerprint: a keyed hash (an attacker who cannot learn the key cannot
    choose addresses that collide in the index), 62 bits (compiled code keeps such an int
    unboxed), never 0 (0 marks a free slot)."""
    return (py_siphash13(k0 & _M64, k1 & _M64, key.to_bytes(KEY_BYTES, "little")) >> 2) or 1


def py_contains(haystack: bytes, needle: bytes) -> bool:
    """`needle in haystack`, which on 3.11 first tries the needle as an int (raising and
    clearing a TypeError); the C version also skips the argument tuple bytes.find builds."""
    return haystack.find(needle) >= 0


def py_meter(rows: array[float], base: int, spec: array[float], now: float, n: int) -> float:
    """Advance the meters of the slot whose row starts at `base` by `n` requests: `spec` holds
    (offset, T/N, cap, beyond) per meter. The latest time until which one of them is over
    (`now` when none is)."""
    until = now
    for m in range(0, len(spec), 4):
        j = base + int(spec[m])
        tat = rows[j]
        if tat < now:
            tat = now
        tat += spec[m + 1] * n
        limit = now + spec[m + 2]
        if tat > limit:
            tat = limit
        rows[j] = tat
        if tat - spec[m + 3] > until:
            until = tat - spec[m + 3]
    return until


def bucket(text: str) -> int:
    """The sketch bucket of a path or query: hash()'s high 32 bits modulo BUCKETS."""
    return (hash(text) >> 32) % BUCKETS


def py_observe_row(rows: array[float], slot: int, now: float, rate: float, kind: int,
                   referred: bool, query_bucket: int | str, path_bucket: int | str,
                   mark: float, n: int, before: array[float] | None) -> float:
    """Count `n` requests in the behaviour row of `slot` (Behaviour.observe, which works out
    `kind`, the sketch buckets (-1: not counted; a text: its `bucket`) and the User-Agent
    mark). Returns the previous agent's mark when the agent changed (then the row as it was is
    copied to `before`), -1.0 when its agents change often lately, else 0.0."""
    if isinstance(query_bucket, str):
        query_bucket = bucket(query_bucket)
    if isinstance(path_bucket, str):
        path_bucket = bucket(path_bucket)
    o = slot * WIDTH
    old = rows[o:o + WIDTH]
    r = rows
    if r[o + T_LAST] > 0.0:
        g = log((now - r[o + T_LAST] if now > r[o + T_LAST] else 0.0) + 0.001)
        if r[o + GAP_MEAN] != 0.0:
            d = g - r[o + GAP_MEAN]
            r[o + GAP_MEAN] += GAP_ALPHA * d
            r[o + GAP_VAR] = (1.0 - GAP_ALPHA) * (r[o + GAP_VAR] + GAP_ALPHA * d * d)
        else:
            r[o + GAP_MEAN] = g if g != 0.0 else 1e-9
    r[o + T_LAST] = now
    if r[o + T_REF] == 0.0:
        r[o + T_REF], w = now, 1.0
    else:
        w = exp(rate * (now - r[o + T_REF]))
        if w > 32.0:   # forward decay: bring the sums back to scale
            for k in range(N, REFERRED + 1):
                r[o + k] = r[o + k] / w
            r[o + T_REF], w = now, 1.0
    w *= n
    r[o + N] += w
    if kind & KIND_PAGE:
        r[o + PAGES] += w
        if referred:
            r[o + REFERRED] += w
    elif kind & KIND_ASSET:
        r[o + ASSETS] += w
    if kind & KIND_COSTLY:
        r[o + COSTLY] += w
    if query_bucket >= 0 or path_bucket >= 0:
        sketches = int(r[o + SKETCHES])
        paths, queries = sketches & PATHS_MASK, sketches >> BUCKETS
        if query_bucket >= 0:
            bit = 1 << query_bucket
            if not queries & bit:
                r[o + NEW_QUERY] += w
                queries = bit if queries.bit_count() >= SKETCH_FULL else queries | bit
        if path_bucket >= 0:
            bit = 1 << path_bucket
            if not paths & bit:
                r[o + NEW_PATH] += w
                paths = bit if paths.bit_count() >= SKETCH_FULL else paths | bit
        r[o + SKETCHES] = float(paths | (queries << BUCKETS))
    said = 0.0
    if r[o + UA_MARK] != mark:
        if r[o + UA_MARK] != 0.0:
            r[o + UA_CHANGES] += w
            said = r[o + UA_MARK]
            if before is not None:
                before[0:WIDTH] = old
        r[o + UA_MARK] = mark
    if said == 0.0 and r[o + UA_CHANGES] > SHARED * r[o + N]:
        said = -1.0
    return said


NO_PREFIX: Final = 0x7FFFFFFF   # Hit's result: no prefix meter counts the request's route
QUIET: Final = 1                # Hit's result: no meter of the address is over after this request
PLAIN: Final = 2                # Hit's result: the agent key given is the one kept for the address
MAX_SLOTS: Final = 1 << 28      # Hit's result keeps slots in 29 and 31 bits, below 2^62 in all
V4_MAPPED: Final = 0xFFFF << 32  # IPv4 addresses are keyed as their IPv4-mapped IPv6 form
V4_PREFIX: Final = 1 << 130     # keeps IPv4 and IPv6 prefix keys apart


class PyHit:
    """Counts one request of a client already in the table, in one call: the fingerprints of
    its address and prefix, both probes, the meters of both and the address's "over until".
    Returns (address slot << 33) | (prefix slot << 2) (NO_PREFIX when no prefix meter counts
    the route), with QUIET when no meter of the address is over after it and PLAIN when
    `agent_key` (non-zero) is the key kept for the address (what the policy asks next), or -1
    when the address or its prefix is not in the table yet (then nothing was counted, and the
    caller adds it the long way: defense/clients.py).

    Made again whenever the meters' arrays are replaced (set_meters): it holds the arrays, not
    copies. The C module's Hit is this, in one call from compiled code instead of six."""

    def __init__(self, k0: int, k1: int, prefix_v4: int, prefix_v6: int,
                 a_index: array[int], a_fps: array[int], a_last: array[int],
                 a_meters: array[float], a_mask: int, a_width: int, over_until: array[float],
                 p_index: array[int], p_fps: array[int], p_last: array[int],
                 p_meters: array[float], p_mask: int, p_width: int,
                 specs: dict[str, tuple[array[float] | None, array[float] | None]],
                 agent: array[int]) -> None:
        if not (0 <= prefix_v4 <= 32 and 0 <= prefix_v6 <= 128):
            raise ValueError("prefix lengths must be 0..32 and 0..128")
        self.k0, self.k1 = k0, k1
        self.shift4, self.shift6 = 32 - prefix_v4, 128 - prefix_v6
        self.addr = (a_index, a_fps, a_last, a_meters, a_mask, a_width)
        self.pre = (p_index, p_fps, p_last, p_meters, p_mask, p_width)
        self.over_until, self.agent = over_until, agent
        self.specs, self.page = specs, specs["page"]

    def __call__(self, ip: int, version: int, route: str, now: float, n: int,
                 agent_key: int) -> int:
        t = int(now)
        if version == 4:
            if ip >> 32:
                raise ValueError("an IPv4 address above 32 bits")
            key, pkey = ip | V4_MAPPED, (ip >> self.shift4) | V4_PREFIX
        else:
            key, pkey = ip, ip >> self.shift6
        a_spec, p_spec = self.specs.get(route) or self.page
        index, fps, last, meters, mask, width = self.addr
        a = py_probe(index, fps, last, mask, py_fingerprint(key, self.k0, self.k1), t)
        if a < 0:
            return -1
        p = NO_PREFIX
        if p_spec is not None:
            p_index, p_fps, p_last, _, p_mask, _ = self.pre
            p = py_probe(p_index, p_fps, p_last, p_mask, py_fingerprint(pkey, self.k0, self.k1),
                         t)
            if p < 0:
                return -1
        if a_spec is not None:
            until = py_meter(meters, a * width, a_spec, now, n)
            if until > now and until > self.over_until[a]:
                self.over_until[a] = until
        flags = QUIET if self.over_until[a] <= now else 0
        if agent_key and self.agent[a] == agent_key:
            flags |= PLAIN
        if p_spec is not None:
            py_meter(self.pre[3], p * self.pre[5], p_spec, now, n)
        return a << 33 | p << 2 | flags


probe: Callable[[array[int], array[int], array[int], int, int, int], int] = py_probe
fingerprint: Callable[[int, int, int], int] = py_fingerprint
contains: Callable[[bytes, bytes], bool] = py_contains
# Hit(...) -> hit(ip, version, route, now, n, agent_key) -> packed slots and flags (PyHit)
HitCall = Callable[[int, int, str, float, int, int], int]
Hit: Callable[..., HitCall] = PyHit
meter: Callable[[array[float], int, array[float], float, int], float] = py_meter
observe_row: Callable[[array[float], int, float, float, int, bool, int | str, int | str, float,
                       int, array[float] | None], float] = py_observe_row
NATIVE = False
try:
    from kalkan.defense import _rows
except ImportError:   # built without a C compiler (KALKAN_PURE_PYTHON=1)
    pass
else:
    probe, meter, observe_row, NATIVE = _rows.probe, _rows.meter, _rows.observe_row, True
    fingerprint, contains = _rows.fingerprint, _rows.contains
    Hit = _rows.Hit
