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


def py_observe_row(rows: array[float], slot: int, now: float, rate: float, kind: int,
                   referred: bool, query_bucket: int, path_bucket: int, mark: float, n: int,
                   before: array[float] | None) -> float:
    """Count `n` requests in the behaviour row of `slot` (Behaviour.observe, which works out
    `kind`, the sketch buckets (-1: not counted) and the User-Agent mark). Returns the previous
    agent's mark when the agent changed (then the row as it was is copied to `before`), -1.0
    when its agents change often lately, else 0.0."""
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


probe: Callable[[array[int], array[int], array[int], int, int, int], int] = py_probe
meter: Callable[[array[float], int, array[float], float, int], float] = py_meter
observe_row: Callable[[array[float], int, float, float, int, bool, int, int, float, int,
                       array[float] | None], float] = py_observe_row
NATIVE = False
try:
    from kalkan.defense import _rows
except ImportError:   # built without a C compiler (KALKAN_PURE_PYTHON=1)
    pass
else:
    probe, meter, observe_row, NATIVE = _rows.probe, _rows.meter, _rows.observe_row, True
