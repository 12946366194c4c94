"""The words the report groups requests by, as DuckDB macros run inside the scan: a request's
outcome, its route class, the shape of its query, its User-Agent's family, and its client's
network prefix (IPv4 /24, IPv6 /48). docs/analyze.md lists them.

They are SQL, not Python, because they run on every line (millions): the engine evaluates them
in its own threads without a call into Python per row.
"""

from __future__ import annotations

# What became of a request, named as the dashboard names it (observe/live.py), derived from the
# line's `decision`, `cache` and `status`: the defence's decisions first (a challenge, a
# block/drop/tarpit, a quick refusal), then the cache's answer; a 4xx/5xx answered without the
# cache or the origin (a malformed request, a challenge answer that failed) is "refused".
OUTCOMES = ("hit", "stale", "miss", "pass", "challenge", "block", "refused", "error")
STOPPED = ("challenge", "block", "refused")  # answered by the edge instead of the content

_OUTCOME = """
CREATE OR REPLACE MACRO outcome(cache, decision, status) AS CASE
  WHEN starts_with(decision, 'challenge:') THEN 'challenge'
  WHEN starts_with(decision, 'block:') OR starts_with(decision, 'drop:')
       OR starts_with(decision, 'tarpit:') THEN 'block'
  WHEN starts_with(decision, 'refuse') THEN 'refused'
  WHEN cache = 'HIT' THEN 'hit'
  WHEN cache = 'STALE' THEN 'stale'
  WHEN cache = 'MISS' OR cache = 'REVALIDATED' THEN 'miss'
  WHEN cache = 'ERROR' THEN 'error'
  WHEN status < 400 THEN 'pass'
  ELSE 'refused' END
"""

# One query value (or a bare key) → its shape: random tokens become the same word, so a
# cache-busting flood's million queries are one row ("<hex8>", "s=<word>"). Tested in the order
# that takes the fewest tests for a flood's values (a value reaching the hex test has a digit
# and a letter: "<hexN>" from 6 characters on, "<id>" below).
_VALUE_SHAPE = r"""
CREATE OR REPLACE MACRO value_shape(v) AS CASE
  WHEN v = '' THEN '<empty>'
  WHEN regexp_full_match(v, '[0-9]+') THEN '<num>'
  WHEN regexp_full_match(v, '[A-Za-z]+') THEN '<word>'
  WHEN regexp_full_match(v, '[0-9a-fA-F]+') THEN
    CASE WHEN length(v) >= 6 THEN '<hex' || length(v) || '>' ELSE '<id>' END
  WHEN regexp_full_match(v, '[A-Za-z0-9_-]{16,}') THEN '<token>'
  WHEN regexp_full_match(v, '[A-Za-z0-9._~-]+') THEN '<id>'
  WHEN regexp_full_match(v, '([A-Za-z0-9._~-]|\+|%[0-9A-Fa-f]{2})+') THEN '<text>'
  ELSE '<other>' END
"""

# A key is kept as it is ("s", "utm_source") unless it looks random itself ("?8f3a2c1d=1").
_KEY_SHAPE = r"""
CREATE OR REPLACE MACRO key_shape(k) AS CASE
  WHEN length(k) < 6 AND regexp_full_match(k, '[A-Za-z_][A-Za-z0-9_]*') THEN k
  WHEN regexp_full_match(k, '[A-Za-z_][A-Za-z0-9_.\[\]-]{0,30}')
       AND NOT (length(k) >= 6 AND regexp_full_match(k, '[0-9a-fA-F]+')
                AND regexp_matches(k, '[0-9]'))
       THEN k
  ELSE value_shape(k) END
"""

# Each pair is cut into key and value once (a struct), then shaped: a macro's argument is pasted
# wherever the macro uses it, so shaping `split_part(kv, '=', 1)` would cut it again for every
# test of the key.
_QUERY_SHAPE = """
CREATE OR REPLACE MACRO query_shape(q) AS CASE
  WHEN q IS NULL THEN NULL
  ELSE array_to_string(list_transform(
         list_transform(string_split(q, '&'),
                        lambda kv: {'eq': strpos(kv, '=') > 0, 'k': split_part(kv, '=', 1),
                                    'v': substr(kv, strpos(kv, '=') + 1)}),
         lambda p: CASE WHEN p.eq THEN key_shape(p.k) || '=' || value_shape(p.v)
                        ELSE value_shape(p.k) END), '&')
  END
"""

# The same for a whole column, fastest: a query of one pair (the common case in a flood) is cut
# at its '=' (found once, in a projection of its own) and skips the list functions (measured: a
# fifth of the CPU of query_shape for such a query). TABLE is a relation with a `query` column.
def shaped(table: str, keep: str) -> str:
    """SQL: `keep` columns of `table` and `qshape`, the shape of its `query`."""
    return f"""
      SELECT {keep}, CASE WHEN query IS NULL THEN NULL
                          WHEN amp > 0 THEN query_shape(query)
                          WHEN eq = 0 THEN value_shape(query)
                          ELSE key_shape(left(query, eq - 1)) || '='
                               || value_shape(substr(query, eq + 1)) END AS qshape
      FROM (SELECT {keep}, query, strpos(query, '&') AS amp, strpos(query, '=') AS eq
            FROM {table})"""


# What kind of thing was asked for: the defence's route classes, told from the log's fields.
_ROUTE = r"""
CREATE OR REPLACE MACRO route_class(method, path, query) AS CASE
  WHEN starts_with(path, '/.kalkan/') THEN 'challenge'
  WHEN regexp_matches(lower(path),
       '(wp-login|xmlrpc|wp-admin|/login|/comment|wp-comments-post)') THEN 'form'
  WHEN method <> '' AND method <> 'GET' AND method <> 'HEAD' THEN 'form'
  WHEN regexp_matches(coalesce(query, ''), '(^|&)(s|q|search|query)=')
       OR regexp_matches(lower(path), '/search') THEN 'search'
  WHEN regexp_matches(lower(path),
       '\.(css|js|mjs|png|jpe?g|gif|webp|avif|svg|ico|woff2?|ttf|otf|mp4|webm|mp3)$')
       THEN 'asset'
  WHEN regexp_matches(lower(path), '(^|/)(feed|rss|atom)(/|$)|\.xml$|\.rss$') THEN 'feed'
  ELSE 'page' END
"""

# A User-Agent → its family: readers' browsers differ in version, a botnet's rotating UAs
# still fall in a few families; tools and self-declared bots are named as such.
_UA_FAMILY = r"""
CREATE OR REPLACE MACRO ua_family(ua) AS CASE
  WHEN ua IS NULL OR ua = '' THEN '(none)'
  WHEN regexp_matches(ua, '(?i)(bot|crawl|spider|slurp|preview|facebookexternalhit)')
       THEN 'bot'
  WHEN regexp_matches(ua, '(?i)(curl|wget|python|go-http|java/|okhttp|libwww|httpclient|axios|'
                          || 'node-fetch|aiohttp|scrapy|httpie|powershell)') THEN 'tool'
  WHEN regexp_matches(ua, '(Firefox|FxiOS)/') THEN 'Firefox'
  WHEN regexp_matches(ua, 'Edg(e|A|iOS)?/') THEN 'Edge'
  WHEN regexp_matches(ua, '(OPR|Opera)/') THEN 'Opera'
  WHEN regexp_matches(ua, 'YaBrowser/') THEN 'Yandex'
  WHEN regexp_matches(ua, '(Chrome|CriOS|Chromium)/') THEN 'Chrome'
  WHEN regexp_matches(ua, 'Safari/') THEN 'Safari'
  WHEN starts_with(ua, 'Mozilla/') THEN 'other browser'
  ELSE 'other' END
"""

# An address's network: IPv4 /24 ("203.0.113.0/24"), IPv6 /48 ("2001:db8:1::/48"; the "::" is
# expanded to find the first three groups), an IPv4-mapped IPv6 address as its IPv4 /24.
# (v6_48 is created before prefix_of, which uses it.)
_V6_GROUPS = """
CREATE OR REPLACE MACRO v6_groups(a) AS CASE WHEN strpos(a, '::') > 0 THEN
  list_concat(
    list_filter(string_split(split_part(a, '::', 1), ':'), lambda g: g <> ''),
    list_transform(range(8 - len(list_filter(string_split(split_part(a, '::', 1), ':'),
                                               lambda g: g <> ''))
                         - len(list_filter(string_split(split_part(a, '::', 2), ':'),
                                           lambda g: g <> ''))), lambda i: '0'),
    list_filter(string_split(split_part(a, '::', 2), ':'), lambda g: g <> ''))
  ELSE string_split(a, ':') END
"""

_PREFIX = r"""
CREATE OR REPLACE MACRO prefix_of(a) AS CASE
  WHEN starts_with(lower(a), '::ffff:') AND strpos(a, '.') > 0
       THEN regexp_replace(substr(a, 8), '\.[0-9]+$', '.0/24')
  WHEN strpos(a, ':') = 0 AND regexp_full_match(a, '[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+')
       THEN regexp_replace(a, '\.[0-9]+$', '.0/24')
  WHEN strpos(a, ':') > 0 THEN v6_48(list_transform(v6_groups(lower(split_part(a, '%', 1)))[1:3],
                                                   lambda g: coalesce(nullif(ltrim(g, '0'), ''),
                                                                      '0')))
  ELSE a END
"""

# The first three groups as Python's ipaddress writes the /48: trailing zero groups fold into
# the "::" (2001:db8:0:: is 2001:db8::), so prefixes read as the pseudonyms' do.
_V6_48 = """
CREATE OR REPLACE MACRO v6_48(g) AS CASE
  WHEN g[3] <> '0' THEN g[1] || ':' || g[2] || ':' || g[3]
  WHEN g[2] <> '0' THEN g[1] || ':' || g[2]
  WHEN g[1] <> '0' THEN g[1]
  ELSE '' END || '::/48'
"""

MACROS = (_OUTCOME, _VALUE_SHAPE, _KEY_SHAPE, _QUERY_SHAPE, _ROUTE, _UA_FAMILY,
          _V6_GROUPS, _V6_48, _PREFIX)
