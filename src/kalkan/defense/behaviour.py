"""How each client behaves, online and in bounded memory: a row of 16 floats per address
(decayed counts, two small sketches, the User-Agent seen last, the rhythm of its requests),
updated per request, and the feature vector the learned score (defense/score.py) reads.

The same code runs online (a row in the client table) and offline, when the training script
(bench/lab/train_score.py) replays the lab's labelled access logs: one definition of every
feature, so what the model was trained on is what the edge computes.
"""

# The features, and why each tells readers from bots (docs/policy.md, "Behaviour"):
#
#   volume        log(1 + requests in the window): a reader reads, a flood floods.
#   page_share    pages among its requests, and
#   asset_share   assets among them: a browser fetches a page's styles, scripts and images;
#                 a bot that asks for pages only, or for one asset over and over, does not.
#   costly_share  requests the cache cannot answer by design: searches, forms, logins,
#                 unsafe methods. (Not pages with a query string: the cache key drops
#                 tracking and unknown parameters, so `?utm_source=` costs nothing, and a
#                 variant the origin must render shows in new_queries and origin_share.)
#   new_queries   requests whose query string it had not sent before: random queries
#                 (cache-busting, search floods) are all new; a reader's few are not.
#   new_paths     paths it had not asked for before, from a 32-bit sketch per client.
#   error_share   4xx answers: guessed URLs, probes.
#   origin_share  requests that reached the origin (misses, passes): what it costs.
#   ua_changes    requests whose User-Agent differs from its previous one: one browser keeps
#                 one; a bot rotating agents on one address does not.
#   referred      pages it asked for with a Referer from this site: a reader follows links.
#   gap_mean      mean of log(seconds between its requests), and
#   gap_spread    their spread: a page and its assets come in a burst, then a reader pauses
#                 to read; a bot on a timer is regular.
#
# Counts decay with a half-life of one minute, so a client's row describes its last few
# minutes, and a reader who once searched is not marked for ever. They decay forward: each
# request adds a weight that grows with time (exp(rate * (t - reference))) instead of every
# count being multiplied down at every request; the shares divide the growth away, and the
# sums are brought back to scale (the reference moved) once the weights pass 2^5. The two
# sketches (paths, queries) are 26-bit sets of hash buckets packed in one float, each emptied
# when half full: "new" is approximate (a collision makes a new path look seen), which only
# errs towards reader-like.

from __future__ import annotations

import struct
from array import array
from math import exp, log, log1p, sqrt
from typing import Final

from kalkan.defense.facts import ASSET, FEED, FORM, LOGIN, PAGE, SEARCH, WELLKNOWN

# The row: offsets of each value in a client's 16 floats (128 bytes).
# (Final: compiled code reads them as constants, not from the module's dict at each use.)
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
_ROW: Final = struct.Struct("16d")   # a row, as the array holds it (native byte order)
_ROW_BYTES: Final = WIDTH * 8
# Its two methods, bound once: called through a name, compiled code skips looking each up on
# the Struct per request.
_UNPACK_ROW: Final = _ROW.unpack_from
_PACK_ROW: Final = _ROW.pack_into

FEATURES = ("volume", "page_share", "asset_share", "costly_share", "new_queries", "new_paths",
            "error_share", "origin_share", "ua_changes", "referred", "gap_mean", "gap_spread")
"""The feature vector's names, in order (the model file names them too: a mismatch is refused)."""

HALF_LIFE: Final = 60.0             # seconds: how fast a client's past fades
# An address is shared (CGNAT, a bot on a reader's address) when more than this share of its
# recent requests changed User-Agent (defense/engine.py then keeps a row per agent on it too).
SHARED: Final = 0.02
_GAP_ALPHA: Final = 0.25            # weight of the latest gap in the running mean and variance
_NO_GAP: Final = -10.0              # gap features of a client with one request (no gap yet)
_BUCKETS: Final = 26                # per sketch: two of them fit a float's 53-bit mantissa
_SKETCH_FULL: Final = 13            # buckets set before a sketch is emptied (half)
_PATHS_MASK: Final = (1 << _BUCKETS) - 1


def _popcount(bits: int) -> int:
    return bits.bit_count()


def _bucket(text: str) -> int:
    """The sketch bucket of a path or query: from hash()'s high 32 bits, which fit a machine
    word, where the whole 64-bit hash is a boxed integer whose modulo costs ten times more."""
    return (hash(text) >> 32) % _BUCKETS


def agent_mark(user_agent: str) -> float:
    """A cheap fingerprint of a User-Agent (length and two characters): rotating agents
    differ in it; a collision only hides a change."""
    n = len(user_agent)
    if n == 0:
        return 1.0
    return float(n * 65536 + ord(user_agent[n // 2]) * 256 + ord(user_agent[-1]) % 256 + 1)


class Behaviour:
    """The feature arithmetic over rows of an array('d') WIDTH floats wide (one per client)."""

    __slots__ = ("half_life", "_rate")

    def __init__(self, half_life: float = HALF_LIFE) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be positive, got {half_life!r}")
        self.half_life = half_life
        self._rate = log(2.0) / half_life

    def observe(self, rows: array[float], slot: int, now: float, route: str, method: str,
                path: str, query: str, user_agent: str, referred: bool, n: int = 1,
                before: array[float] | None = None) -> float:
        """Count one request (or `n` identical ones) of the client in `slot`.

        Returns what it tells of the address: the previous agent's User-Agent mark when this
        request's agent is another (and then, if `before` is given, the row as it was before
        this request is written to it), -1.0 when several agents share it lately (more than
        SHARED of its requests changed agent), else 0.0."""
        # The row is read and written whole (struct, two C calls): element by element, each
        # array access is a generic item lookup plus a float box in compiled code, and those
        # were 12,000 instructions a request (callgrind), against about 3,000 this way. (Writing
        # back only the values that changed, one by one, cost more than the one pack_into.)
        offset = slot * _ROW_BYTES
        # Typed, so the arithmetic below is on native floats, not generic objects.
        row: tuple[float, ...] = _UNPACK_ROW(rows, offset)
        (t_last, t_ref, total, pages, assets, costly, new_query, new_path, errors, origin,
         ua_changes, refs, gap_mean, gap_var, sketches_f, ua_mark) = row
        if t_last > 0.0:
            # The rhythm: running mean and variance of log(gap), a burst's gaps near -7.
            g = log((now - t_last if now > t_last else 0.0) + 0.001)
            if gap_mean != 0.0:
                d = g - gap_mean
                gap_mean += _GAP_ALPHA * d
                gap_var = (1.0 - _GAP_ALPHA) * (gap_var + _GAP_ALPHA * d * d)
            else:
                gap_mean = g if g != 0.0 else 1e-9
        t_last = now
        # Forward decay: this instant's weight; the sums are rescaled once it passes 2^5.
        if t_ref == 0.0:
            t_ref, w = now, 1.0
        else:
            w = exp(self._rate * (now - t_ref))
            if w > 32.0:
                total, pages, assets, costly = total / w, pages / w, assets / w, costly / w
                new_query, new_path, errors, origin = (new_query / w, new_path / w,
                                                       errors / w, origin / w)
                ua_changes, refs = ua_changes / w, refs / w
                t_ref, w = now, 1.0
        w *= n
        total += w
        if route == PAGE:
            pages += w
            if referred:
                refs += w
        elif route == ASSET:
            assets += w
        # (A tuple display, not a set: compiled, `in` it is a few comparisons, identity first.)
        if route in (SEARCH, FORM, LOGIN) or method not in ("GET", "HEAD"):
            costly += w
        if query or (route != FEED and route != WELLKNOWN):
            sketches = int(sketches_f)
            paths, queries = sketches & _PATHS_MASK, sketches >> _BUCKETS
            if query:
                bit = 1 << _bucket(query)
                if not queries & bit:
                    new_query += w
                    queries = bit if _popcount(queries) >= _SKETCH_FULL else queries | bit
            if route != FEED and route != WELLKNOWN:
                bit = 1 << _bucket(path)
                if not paths & bit:
                    new_path += w
                    paths = bit if _popcount(paths) >= _SKETCH_FULL else paths | bit
            sketches_f = float(paths | (queries << _BUCKETS))
        mark = agent_mark(user_agent)
        said = 0.0
        if ua_mark != mark:
            if ua_mark != 0.0:
                ua_changes += w
                said = ua_mark
                if before is not None:
                    _PACK_ROW(before, 0, *row)
            ua_mark = mark
        _PACK_ROW(rows, offset, t_last, t_ref, total, pages, assets, costly, new_query,
                  new_path, errors, origin, ua_changes, refs, gap_mean, gap_var, sketches_f,
                  ua_mark)
        if said == 0.0 and ua_changes > SHARED * total:
            said = -1.0
        return said

    def outcome(self, rows: array[float], slot: int, status: int, origin: bool) -> None:
        """What its latest request cost: a 4xx answer, a trip to the origin."""
        base = slot * WIDTH
        if not origin and not 400 <= status < 500:
            return
        # Its request's weight: observe() has just run at T_LAST and kept it below 2^5 (an
        # untouched row has both times 0: weight 1).
        w = exp(self._rate * (rows[base + T_LAST] - rows[base + T_REF]))
        if 400 <= status < 500:
            rows[base + ERRORS] += w
        if origin:
            rows[base + ORIGIN] += w

    def features(self, rows: array[float], slot: int) -> list[float]:
        """The feature vector of the client in `slot` (names: FEATURES), as of its latest
        request."""
        base = slot * WIDTH
        n = rows[base + N]
        if n <= 0.0:
            return [0.0] * len(FEATURES)
        pages = rows[base + PAGES]
        gap_mean = rows[base + GAP_MEAN]
        if gap_mean == 0.0:
            gap_mean = spread = _NO_GAP
        else:
            spread = sqrt(rows[base + GAP_VAR])
        volume = n * exp(-self._rate * (rows[base + T_LAST] - rows[base + T_REF]))
        return [log1p(volume), pages / n, rows[base + ASSETS] / n, rows[base + COSTLY] / n,
                min(rows[base + NEW_QUERY] / n, 1.0), min(rows[base + NEW_PATH] / n, 1.0),
                min(rows[base + ERRORS] / n, 1.0), min(rows[base + ORIGIN] / n, 1.0),
                min(rows[base + UA_CHANGES] / n, 1.0),
                rows[base + REFERRED] / pages if pages > 0.0 else 0.0, gap_mean, spread]


def new_rows(clients: int) -> array[float]:
    """Zeroed rows for `clients` clients (the offline replay's table)."""
    return array("d", bytes(8 * WIDTH * clients))
