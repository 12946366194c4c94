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
from typing import Final

from kalkan.defense.facts import ASSET, FEED, FORM, LOGIN, PAGE, SEARCH, WELLKNOWN
from kalkan.defense.rows import (
    ASSETS,
    COSTLY,
    ERRORS,
    GAP_MEAN,
    GAP_VAR,
    KIND_ASSET,
    KIND_COSTLY,
    KIND_PAGE,
    NEW_PATH,
    NEW_QUERY,
    ORIGIN,
    PAGES,
    REFERRED,
    T_LAST,
    T_REF,
    UA_CHANGES,
    WIDTH,
    N,
    observe_row,
)

# The row's layout (T_LAST ... UA_MARK, WIDTH) and the arithmetic of a request on it live in
# defense/rows.py (in C when built): this module reads the rows and makes the features.

# Bound once as a constant: compiled code calls it without a lookup in the module's dict.
_OBSERVE_ROW: Final = observe_row

FEATURES = ("volume", "page_share", "asset_share", "costly_share", "new_queries", "new_paths",
            "error_share", "origin_share", "ua_changes", "referred", "gap_mean", "gap_spread")
"""The feature vector's names, in order (the model file names them too: a mismatch is refused)."""

HALF_LIFE: Final = 60.0             # seconds: how fast a client's past fades
_NO_GAP: Final = -10.0              # gap features of a client with one request (no gap yet)


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
        # (Compiled, each comparison is an identity test first: a page GET makes two.)
        if route == PAGE:
            kind = KIND_PAGE
        elif route == ASSET:
            kind = KIND_ASSET
        else:
            kind = KIND_COSTLY if route in (SEARCH, FORM, LOGIN) else 0
        if method != "GET" and method != "HEAD":
            kind |= KIND_COSTLY
        # The sketches' buckets are hashed from the texts inside observe_row (rows.bucket).
        return _OBSERVE_ROW(rows, slot, now, self._rate, kind, referred, query or -1,
                            path if route != FEED and route != WELLKNOWN else -1,
                            agent_mark(user_agent), n, before)

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
