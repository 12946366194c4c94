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

from array import array
from math import exp, log, log1p, sqrt

from kalkan.defense.facts import ASSET, FEED, FORM, LOGIN, PAGE, SEARCH, WELLKNOWN

# The row: offsets of each value in a client's 16 floats (128 bytes).
T_LAST, T_REF, N, PAGES, ASSETS, COSTLY, NEW_QUERY, NEW_PATH, ERRORS, ORIGIN, UA_CHANGES, \
    REFERRED, GAP_MEAN, GAP_VAR, SKETCHES, UA_MARK = range(16)
WIDTH = 16
_SUMS = (N, PAGES, ASSETS, COSTLY, NEW_QUERY, NEW_PATH, ERRORS, ORIGIN, UA_CHANGES, REFERRED)

FEATURES = ("volume", "page_share", "asset_share", "costly_share", "new_queries", "new_paths",
            "error_share", "origin_share", "ua_changes", "referred", "gap_mean", "gap_spread")
"""The feature vector's names, in order (the model file names them too: a mismatch is refused)."""

HALF_LIFE = 60.0             # seconds: how fast a client's past fades
_RESCALE_AFTER = 5.0         # half-lives of growth before a row's sums are brought back
_GAP_ALPHA = 0.25            # weight of the latest gap in the running mean and variance
_NO_GAP = -10.0              # gap features of a client with one request (no gap yet)
_BUCKETS = 26                # per sketch: two of them fit a float's 53-bit mantissa
_SKETCH_FULL = 13            # buckets set before a sketch is emptied (half)
_PATHS_MASK = (1 << _BUCKETS) - 1
_COSTLY_ROUTES = frozenset({SEARCH, FORM, LOGIN})
_SAFE = frozenset({"GET", "HEAD"})


def _popcount(bits: int) -> int:
    return bin(bits).count("1")


def _ua_mark(user_agent: str) -> float:
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

    def _weight(self, rows: array[float], base: int, now: float) -> float:
        """This instant's weight for the row at `base`, rescaling its sums when it grows."""
        ref = rows[base + T_REF]
        if ref == 0.0:
            rows[base + T_REF] = now
            return 1.0
        w = exp(self._rate * (now - ref))
        if w > 32.0:
            # Bring the sums back to scale: as if the reference were now.
            for i in _SUMS:
                rows[base + i] /= w
            rows[base + T_REF] = now
            w = 1.0
        return w

    def observe(self, rows: array[float], slot: int, now: float, route: str, method: str,
                path: str, query: str, user_agent: str, referred: bool, n: int = 1) -> None:
        """Count one request (or `n` identical ones) of the client in `slot`."""
        base = slot * WIDTH
        last = rows[base + T_LAST]
        if last > 0.0:
            # The rhythm: running mean and variance of log(gap), a burst's gaps near -7.
            gap = now - last if now > last else 0.0
            g = log(gap + 0.001)
            mean = rows[base + GAP_MEAN]
            if mean != 0.0:
                d = g - mean
                rows[base + GAP_MEAN] = mean + _GAP_ALPHA * d
                rows[base + GAP_VAR] = (1.0 - _GAP_ALPHA) * (rows[base + GAP_VAR]
                                                             + _GAP_ALPHA * d * d)
            else:
                rows[base + GAP_MEAN] = g if g != 0.0 else 1e-9
        rows[base + T_LAST] = now
        w = self._weight(rows, base, now) * n
        rows[base + N] += w
        if route == PAGE:
            rows[base + PAGES] += w
            if referred:
                rows[base + REFERRED] += w
        elif route == ASSET:
            rows[base + ASSETS] += w
        if route in _COSTLY_ROUTES or method not in _SAFE:
            rows[base + COSTLY] += w
        if query or (route != FEED and route != WELLKNOWN):
            sketches = int(rows[base + SKETCHES])
            paths, queries = sketches & _PATHS_MASK, sketches >> _BUCKETS
            if query:
                bit = 1 << (hash(query) % _BUCKETS)
                if not queries & bit:
                    rows[base + NEW_QUERY] += w
                    queries = bit if _popcount(queries) >= _SKETCH_FULL else queries | bit
            if route != FEED and route != WELLKNOWN:
                bit = 1 << (hash(path) % _BUCKETS)
                if not paths & bit:
                    rows[base + NEW_PATH] += w
                    paths = bit if _popcount(paths) >= _SKETCH_FULL else paths | bit
            rows[base + SKETCHES] = float(paths | (queries << _BUCKETS))
        mark = _ua_mark(user_agent)
        seen = rows[base + UA_MARK]
        if seen != mark:
            if seen != 0.0:
                rows[base + UA_CHANGES] += w
            rows[base + UA_MARK] = mark

    def outcome(self, rows: array[float], slot: int, status: int, origin: bool) -> None:
        """What its latest request cost: a 4xx answer, a trip to the origin."""
        base = slot * WIDTH
        if not origin and not 400 <= status < 500:
            return
        w = self._weight(rows, base, rows[base + T_LAST])
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
