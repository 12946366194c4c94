"""RFC 9111 / RFC 5861 rules of the shared cache, one rule per test, with the section it checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kalkan.edge import cache_policy as cp
from kalkan.edge.cache_policy import RequestRules, Reuse, StaleRules
from kalkan.edge.httpdate import MAX_TIMESTAMP, format_http_date, parse_http_date

T0 = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
T0_IMF = "Sun, 06 Nov 1994 08:49:37 GMT"


def h(**fields: str) -> dict[str, str]:
    """Header dict from keyword arguments: cache_control= → "cache-control"."""
    return {name.replace("_", "-"): value for name, value in fields.items()}


# ---------------------------------------------------------------------------------------------
# combine_headers (RFC 9110 §5.3)


def test_combine_headers_lowercases_and_joins_repeats_rfc9110_5_3() -> None:
    raw = [
        (b"Cache-Control", b"public"),
        (b"cache-control", b"max-age=60"),
        ("Vary", "Accept-Encoding"),
        (b"X-Empty", b""),
        (b"x-empty", b"later"),
        (b"X-Latin", "é".encode("latin-1")),
    ]
    assert cp.combine_headers(raw) == {
        "cache-control": "public, max-age=60",
        "vary": "Accept-Encoding",
        "x-empty": "later",
        "x-latin": "é",
    }


def test_combine_headers_set_cookie_presence_only() -> None:
    raw = [(b"Set-Cookie", b"a=1; Expires=Wed, 09 Jun 2021"), (b"Set-Cookie", b"b")]
    d = cp.combine_headers(raw)
    assert "set-cookie" in d


def test_combine_headers_empty_member_ignored_rfc9110_5_6_1() -> None:
    assert cp.combine_headers([(b"Vary", b"Accept"), (b"Vary", b"")]) == {"vary": "Accept"}


# ---------------------------------------------------------------------------------------------
# Cache-Control parsing (RFC 9111 §5.2, §1.2.2, §4.2.1)


def test_cc_parse_case_whitespace_and_quotes_rfc9111_5_2() -> None:
    cc = cp.parse_cache_control(' Max-Age = 60 ,PUBLIC,, no-cache="Set-Cookie, X-A" , x="a\\"b"')
    assert cc == {"max-age": "60", "public": None, "no-cache": "Set-Cookie, X-A", "x": 'a"b'}


def test_cc_parse_quoted_delta_seconds_accepted_rfc9111_5_2() -> None:
    assert cp.parse_cache_control('max-age="30"')["max-age"] == "30"


def test_cc_parse_duplicates_first_wins_rfc9111_4_2_1() -> None:
    assert cp.parse_cache_control("max-age=60, max-age=0")["max-age"] == "60"


def test_cc_parse_private_merges_most_restrictively() -> None:
    assert cp.parse_cache_control('private="a", private="b"')["private"] == "a, b"
    assert cp.parse_cache_control('private="a", private')["private"] is None
    assert cp.parse_cache_control('no-cache, no-cache="x"')["no-cache"] is None
    assert cp.parse_cache_control('private=""')["private"] is None


def test_cc_parse_unterminated_quote_and_empty() -> None:
    assert cp.parse_cache_control('no-cache="abc, max-age=5') == {"no-cache": "abc, max-age=5"}
    assert cp.parse_cache_control("") == {}
    assert cp.parse_cache_control(None) == {}
    assert cp.parse_cache_control(" , ,") == {}


@given(st.text())
def test_cc_parse_never_raises(text: str) -> None:
    result = cp.parse_cache_control(text)
    assert all(name == name.lower() for name in result)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("60", 60),
        (" 60 ", 60),
        ("-1", None),
        ("1.5", None),
        ("", None),
        ("abc", None),
        ("٣", None),  # a non-ASCII digit is not DIGIT
        ("99999999999999999999", 2**31),  # RFC 9111 §1.2.2: overflow reads as 2^31
        ("0000000000000000000001", 1),
        (None, None),
    ],
)
def test_delta_seconds_rfc9111_1_2_2(value: str | None, expected: int | None) -> None:
    assert cp.parse_delta_seconds(value) == expected


# ---------------------------------------------------------------------------------------------
# HTTP dates (RFC 9110 §5.6.7)


@pytest.mark.parametrize(
    "value",
    [
        T0_IMF,
        "Sunday, 06-Nov-94 08:49:37 GMT",  # rfc850-date
        "Sun Nov  6 08:49:37 1994",  # asctime-date
        "  sun, 06 nov 1994 08:49:37 gmt ",
        "Sun, 6 Nov 1994 08:49:37 GMT",
    ],
)
def test_http_date_three_forms_rfc9110_5_6_7(value: str) -> None:
    assert parse_http_date(value, now=T0) == T0


@pytest.mark.parametrize(
    "value",
    ["0", "-1", "", "Sun, 31 Feb 1994 08:49:37 GMT", "Sun, 06 Nov 1994 25:00:00 GMT",
     "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 PST", "tomorrow", None],
)
def test_http_date_invalid_is_none(value: str | None) -> None:
    assert parse_http_date(value) is None


def test_rfc850_two_digit_year_more_than_50_years_ahead_is_past_rfc9110_5_6_7() -> None:
    now = parse_http_date("Mon, 01 Jan 2024 00:00:00 GMT")
    assert parse_http_date("Monday, 01-Jan-74 00:00:00 GMT", now=now) == parse_http_date(
        "Tue, 01 Jan 2074 00:00:00 GMT"
    )
    assert parse_http_date("Friday, 01-Jan-99 00:00:00 GMT", now=now) == parse_http_date(
        "Fri, 01 Jan 1999 00:00:00 GMT"
    )


def test_format_http_date_imf_fixdate() -> None:
    assert format_http_date(T0) == T0_IMF
    assert format_http_date(T0 + 0.9) == T0_IMF
    assert format_http_date(-5) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert format_http_date(float("nan")) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert format_http_date(float("inf")) == "Fri, 31 Dec 9999 23:59:59 GMT"


@given(st.integers(min_value=0, max_value=int(MAX_TIMESTAMP)))
def test_http_date_round_trip(ts: int) -> None:
    assert parse_http_date(format_http_date(ts)) == ts


@given(st.text())
def test_http_date_never_raises(text: str) -> None:
    parse_http_date(text)


# ---------------------------------------------------------------------------------------------
# storable (RFC 9111 §3)

OK_RESP = h(cache_control="max-age=60")


def test_store_get_with_max_age() -> None:
    assert cp.storable("GET", 200, {}, OK_RESP) == (True, "explicit")


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "get"])
def test_store_only_get_rfc9111_3(method: str) -> None:
    assert cp.storable(method, 200, {}, OK_RESP) == (False, "method")


@pytest.mark.parametrize("status", [100, 101, 206, 304, 400, 403, 429, 500, 502, 503, 504, 999])
def test_store_status_not_understood_or_refused(status: int) -> None:
    # 206: whole representations only; 5xx: origin failure (stale-if-error/grace instead).
    assert cp.storable("GET", status, {}, OK_RESP) == (False, "status")


def test_store_no_store_response_and_request_rfc9111_5_2_1_5_and_5_2_2_5() -> None:
    assert cp.storable("GET", 200, {}, h(cache_control="no-store, max-age=60"))[0] is False
    assert cp.storable("GET", 200, h(cache_control="no-store"), OK_RESP) == (
        False,
        "request-no-store",
    )


def test_store_must_understand_overrides_no_store_rfc9111_5_2_2_3() -> None:
    resp = h(cache_control="must-understand, no-store, max-age=60")
    assert cp.storable("GET", 200, {}, resp) == (True, "explicit")
    assert cp.storable("GET", 206, {}, resp) == (False, "status")


def test_store_private_unqualified_refused_qualified_allowed_rfc9111_5_2_2_7() -> None:
    assert cp.storable("GET", 200, {}, h(cache_control="private, max-age=60")) == (False, "private")
    assert cp.storable("GET", 200, {}, h(cache_control='private="x-user", max-age=60'))[0]


@pytest.mark.parametrize(
    ("cc", "ok"),
    [
        ("max-age=60", False),
        ("public, max-age=60", True),
        ("s-maxage=60", True),
        # RFC 9111 §3.5 allows must-revalidate too; Kalkan does not: revalidated by an anonymous
        # reader, a 304 would hand it the authenticated copy.
        ("must-revalidate, max-age=60", False),
        ("", False),
    ],
)
def test_store_authorization_needs_public_or_smaxage(cc: str, ok: bool) -> None:
    resp = h(cache_control=cc) if cc else {}
    assert cp.storable("GET", 200, h(authorization="Basic eDp5"), resp)[0] is ok


def test_store_vary_star_refused_rfc9111_4_1() -> None:
    assert cp.storable("GET", 200, {}, h(cache_control="max-age=60", vary="Accept, *")) == (
        False,
        "vary-star",
    )


@pytest.mark.parametrize(
    ("cc", "ok"),
    [
        (None, False),  # heuristic 200 with a cookie: per reader, not stored
        ("max-age=60", False),  # max-age alone also applies to private caches
        ("public, max-age=60", True),
        ("s-maxage=60", True),
        ('no-cache="set-cookie", max-age=60', True),
        ('private="Set-Cookie", max-age=60', True),
        ("public, no-store", False),
    ],
)
def test_store_set_cookie_only_with_explicit_shared_permission_rfc9111_7_3(
    cc: str | None, ok: bool
) -> None:
    resp = {"set-cookie": "sid=1"}
    if cc is not None:
        resp["cache-control"] = cc
    assert cp.storable("GET", 200, {}, resp)[0] is ok


def test_store_freshness_sources_rfc9111_3() -> None:
    assert cp.storable("GET", 302, {}, h(expires=T0_IMF)) == (True, "explicit")
    assert cp.storable("GET", 302, {}, h(expires="0")) == (True, "explicit")  # stored, stale
    assert cp.storable("GET", 302, {}, h(cache_control="public")) == (True, "public")
    assert cp.storable("GET", 200, {}, {}) == (True, "heuristic")
    assert cp.storable("GET", 404, {}, {}) == (True, "heuristic")
    assert cp.storable("GET", 302, {}, {}) == (False, "no-freshness")
    assert cp.storable("GET", 302, {}, {}, microcache=True) == (True, "microcache")


def test_store_microcache_never_overrides_directives() -> None:
    for cc in ("no-store", "private"):
        assert cp.storable("GET", 200, {}, h(cache_control=cc), microcache=True)[0] is False
    assert cp.storable("GET", 200, {}, {"set-cookie": "a=1"}, microcache=True)[0] is False


def test_strip_on_store_set_cookie_hop_by_hop_and_qualified_fields() -> None:
    resp = h(
        cache_control='public, max-age=60, private="X-User", no-cache="X-Debug, x-trace"',
        connection="close, X-Conn-Only",
    )
    resp["set-cookie"] = "a=1"
    strip = cp.headers_to_strip_on_store(resp)
    assert {"set-cookie", "x-user", "x-debug", "x-trace", "x-conn-only", "transfer-encoding"} <= (
        strip
    )
    assert "cache-control" not in strip
    assert "content-type" not in strip
    # Set-Cookie is stripped even when the response does not carry one yet (merge_304 relies on it).
    assert "set-cookie" in cp.headers_to_strip_on_store({})


# ---------------------------------------------------------------------------------------------
# Freshness lifetime (RFC 9111 §4.2.1, §4.2.2)


def test_lifetime_s_maxage_over_max_age_over_expires_rfc9111_4_2_1() -> None:
    resp = h(cache_control="max-age=60, s-maxage=600", expires="Sun, 06 Nov 1994 09:49:37 GMT",
             date=T0_IMF)
    assert cp.freshness_lifetime(200, resp, response_time=T0) == 600.0
    resp["cache-control"] = "max-age=60"
    assert cp.freshness_lifetime(200, resp, response_time=T0) == 60.0
    del resp["cache-control"]
    assert cp.freshness_lifetime(200, resp, response_time=T0) == 3600.0


def test_lifetime_invalid_max_age_is_stale_not_heuristic_rfc9111_4_2_1() -> None:
    resp = h(cache_control="max-age=soon", last_modified="Sat, 05 Nov 1994 08:49:37 GMT",
             date=T0_IMF)
    assert cp.freshness_lifetime(200, resp, response_time=T0) == 0.0
    assert cp.freshness_lifetime(200, h(cache_control="s-maxage=-1, max-age=60"),
                                 response_time=T0) == 0.0


def test_lifetime_expires_bad_date_is_already_expired_rfc9111_5_3() -> None:
    for bad in ("0", "-1", "never", "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT"):
        assert cp.freshness_lifetime(200, h(expires=bad, date=T0_IMF), response_time=T0) == 0.0


def test_lifetime_expires_in_past_is_zero() -> None:
    resp = h(expires="Sat, 05 Nov 1994 08:49:37 GMT", date=T0_IMF)
    assert cp.freshness_lifetime(200, resp, response_time=T0) == 0.0


def test_lifetime_expires_without_date_uses_response_time_rfc9111_4_2_1() -> None:
    resp = h(expires="Sun, 06 Nov 1994 08:50:37 GMT")
    assert cp.freshness_lifetime(200, resp, response_time=T0) == 60.0
    resp["date"] = "garbage"
    assert cp.freshness_lifetime(200, resp, response_time=T0) == 60.0


def test_lifetime_heuristic_ten_percent_capped_rfc9111_4_2_2() -> None:
    resp = h(date=T0_IMF, last_modified=format_http_date(T0 - 1000))
    assert cp.freshness_lifetime(200, resp, response_time=T0) == pytest.approx(100.0)
    resp["last-modified"] = format_http_date(T0 - 10_000_000)
    assert cp.freshness_lifetime(200, resp, response_time=T0) == 86400.0
    assert cp.freshness_lifetime(
        200, resp, response_time=T0, heuristic_fraction=0.2, heuristic_max=10.0
    ) == 10.0
    resp["last-modified"] = format_http_date(T0 + 100)  # from the future: no freshness
    assert cp.freshness_lifetime(200, resp, response_time=T0) == 0.0


def test_lifetime_heuristic_only_for_allowed_statuses_or_public_rfc9110_15_1() -> None:
    resp = h(date=T0_IMF, last_modified=format_http_date(T0 - 1000))
    assert cp.freshness_lifetime(302, resp, response_time=T0) is None
    assert cp.freshness_lifetime(307, resp, response_time=T0) is None
    assert cp.freshness_lifetime(404, resp, response_time=T0) == pytest.approx(100.0)
    resp["cache-control"] = "public"
    assert cp.freshness_lifetime(302, resp, response_time=T0) == pytest.approx(100.0)


def test_lifetime_none_without_any_information() -> None:
    assert cp.freshness_lifetime(200, {}, response_time=T0) is None
    assert cp.freshness_lifetime(200, h(date=T0_IMF), response_time=T0) is None


# ---------------------------------------------------------------------------------------------
# Age (RFC 9111 §4.2.3, §5.1)


def test_initial_age_uses_age_header_plus_response_delay() -> None:
    resp = h(date=T0_IMF, age="100")
    assert cp.initial_age(resp, request_time=T0 - 2, response_time=T0) == 102.0


def test_initial_age_apparent_age_when_origin_clock_is_behind() -> None:
    # Date says the response is 50 s old by our clock; Age says 10: the larger wins.
    resp = h(date=format_http_date(T0 - 50), age="10")
    assert cp.initial_age(resp, request_time=T0, response_time=T0) == 50.0


def test_initial_age_origin_clock_ahead_does_not_go_negative() -> None:
    resp = h(date=format_http_date(T0 + 3600))
    assert cp.initial_age(resp, request_time=T0 - 1, response_time=T0) == 1.0


@pytest.mark.parametrize("age", ["abc", "-5", "10, 20", "0, 0", "1.5", "3600;a=b"])
def test_initial_age_invalid_age_makes_the_response_stale_rfc9111_5_1(age: str) -> None:
    age_seen = cp.initial_age(h(date=T0_IMF, age=age), request_time=T0, response_time=T0)
    assert age_seen >= cp.DELTA_SECONDS_MAX


def test_initial_age_without_date() -> None:
    assert cp.initial_age(h(age="7"), request_time=T0, response_time=T0 + 1) == 8.0


def test_current_age_adds_resident_time() -> None:
    assert cp.current_age(5.0, response_time=T0, now=T0 + 10) == 15.0
    assert cp.current_age(5.0, response_time=T0, now=T0 - 10) == 5.0  # clock stepped back


# ---------------------------------------------------------------------------------------------
# Stale directives (RFC 9111 §5.2.2, RFC 5861)


def test_stale_directives_windows_rfc5861() -> None:
    rules = cp.stale_directives(h(cache_control="max-age=60, stale-while-revalidate=30, "
                                                "stale-if-error=600"))
    assert rules == StaleRules(30.0, 600.0, False, False)


@pytest.mark.parametrize("cc", ["must-revalidate", "proxy-revalidate", "no-cache"])
def test_stale_directives_explicit_prohibition_zeroes_windows_rfc9111_4_2_1(cc: str) -> None:
    rules = cp.stale_directives(h(cache_control=f"max-age=60, {cc}, stale-while-revalidate=30, "
                                                "stale-if-error=60"))
    assert (rules.stale_while_revalidate, rules.stale_if_error) == (0.0, 0.0)
    assert rules.must_revalidate is (cc != "no-cache")
    assert rules.no_cache is (cc == "no-cache")


def test_stale_directives_s_maxage_implies_proxy_revalidate_rfc9111_5_2_2_10() -> None:
    rules = cp.stale_directives(h(cache_control="s-maxage=60, stale-while-revalidate=30"))
    assert rules.must_revalidate is True
    assert rules.stale_while_revalidate == 30.0  # the origin's explicit window still applies


def test_stale_directives_qualified_no_cache_is_not_no_cache() -> None:
    assert cp.stale_directives(h(cache_control='no-cache="set-cookie"')).no_cache is False


def test_stale_directives_invalid_windows_are_zero() -> None:
    rules = cp.stale_directives(h(cache_control="stale-while-revalidate=x, stale-if-error"))
    assert (rules.stale_while_revalidate, rules.stale_if_error) == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Request directives (RFC 9111 §5.2.1, §5.4)


def test_request_rules_all_directives_rfc9111_5_2_1() -> None:
    rules = cp.request_rules(
        h(cache_control="no-cache, no-store, max-age=5, max-stale=10, min-fresh=3, only-if-cached")
    )
    # no-store is not a reuse preference: storable() refuses it (request-no-store).
    assert rules == RequestRules(no_cache=True, max_age=5.0, max_stale=10.0, min_fresh=3.0,
                                 only_if_cached=True)


def test_request_rules_bare_max_stale_is_any() -> None:
    assert cp.request_rules(h(cache_control="max-stale")).max_stale == math.inf


def test_request_rules_invalid_values_ignored() -> None:
    rules = cp.request_rules(h(cache_control="max-age=x, max-stale=-1, min-fresh=1.5"))
    assert rules == RequestRules()


def test_request_pragma_no_cache_only_without_cache_control_rfc9111_5_4() -> None:
    assert cp.request_rules(h(pragma="No-Cache")).no_cache is True
    assert cp.request_rules(h(pragma="no-cache", cache_control="max-age=5")).no_cache is False
    assert cp.request_rules(h(pragma="x-other")) is cp.NO_PREFERENCES
    assert cp.request_rules({}) == RequestRules()


# ---------------------------------------------------------------------------------------------
# reuse_decision (RFC 9111 §4.2, §4.2.4, §5.2; RFC 5861)

NONE = StaleRules()
NO_PREFS = RequestRules()


def test_reuse_fresh_and_stale_boundary_rfc9111_4_2() -> None:
    assert cp.reuse_decision(59.9, 60, NONE, NO_PREFS) is Reuse.FRESH
    assert cp.reuse_decision(60, 60, NONE, NO_PREFS) is Reuse.REVALIDATE  # fresh iff lifetime > age


def test_reuse_stale_while_revalidate_window_rfc5861_3() -> None:
    swr = StaleRules(stale_while_revalidate=30)
    assert cp.reuse_decision(80, 60, swr, NO_PREFS) is Reuse.STALE_WHILE_REVALIDATE
    assert cp.reuse_decision(90, 60, swr, NO_PREFS) is Reuse.STALE_WHILE_REVALIDATE
    assert cp.reuse_decision(91, 60, swr, NO_PREFS) is Reuse.REVALIDATE


def test_reuse_s_maxage_swr_honoured_but_grace_refused() -> None:
    rules = cp.stale_directives(h(cache_control="s-maxage=60, stale-while-revalidate=30"))
    assert cp.reuse_decision(70, 60, rules, NO_PREFS) is Reuse.STALE_WHILE_REVALIDATE
    assert cp.reuse_decision(
        100, 60, rules, NO_PREFS, origin_failing=True, grace=3600
    ) is Reuse.UNSERVABLE


def test_reuse_stale_if_error_only_when_origin_failing_rfc5861_4() -> None:
    sie = StaleRules(stale_if_error=600)
    assert cp.reuse_decision(100, 60, sie, NO_PREFS) is Reuse.REVALIDATE
    assert cp.reuse_decision(100, 60, sie, NO_PREFS, origin_failing=True) is Reuse.STALE_IF_ERROR
    assert cp.reuse_decision(700, 60, sie, NO_PREFS, origin_failing=True) is Reuse.UNSERVABLE


def test_reuse_grace_when_response_allows_stale_rfc9111_4_2_4() -> None:
    assert cp.reuse_decision(100, 60, NONE, NO_PREFS, origin_failing=True, grace=3600) is (
        Reuse.GRACE
    )
    assert cp.reuse_decision(5000, 60, NONE, NO_PREFS, origin_failing=True, grace=3600) is (
        Reuse.UNSERVABLE
    )
    # Without a failing origin grace does nothing.
    assert cp.reuse_decision(100, 60, NONE, NO_PREFS, grace=3600) is Reuse.REVALIDATE
    # The response's own stale-if-error is preferred over grace while it lasts.
    sie = StaleRules(stale_if_error=100)
    assert cp.reuse_decision(100, 60, sie, NO_PREFS, origin_failing=True, grace=3600) is (
        Reuse.STALE_IF_ERROR
    )
    assert cp.reuse_decision(200, 60, sie, NO_PREFS, origin_failing=True, grace=3600) is (
        Reuse.GRACE
    )


def test_reuse_must_revalidate_forbids_all_stale_rfc9111_5_2_2_2() -> None:
    rules = cp.stale_directives(h(cache_control="max-age=60, must-revalidate, "
                                                "stale-while-revalidate=30, stale-if-error=60"))
    assert cp.reuse_decision(70, 60, rules, NO_PREFS) is Reuse.REVALIDATE
    assert cp.reuse_decision(
        70, 60, rules, RequestRules(max_stale=math.inf), origin_failing=True, grace=3600
    ) is Reuse.UNSERVABLE  # 504 per §5.2.2.2
    assert cp.reuse_decision(10, 60, rules, NO_PREFS) is Reuse.FRESH


def test_reuse_response_no_cache_always_revalidates_rfc9111_5_2_2_4() -> None:
    rules = StaleRules(no_cache=True)
    assert cp.reuse_decision(0, 3600, rules, NO_PREFS) is Reuse.REVALIDATE
    assert cp.reuse_decision(0, 3600, rules, NO_PREFS, origin_failing=True, grace=60) is (
        Reuse.UNSERVABLE
    )


def test_reuse_request_no_cache_revalidates_but_fresh_copy_survives_failure() -> None:
    req = RequestRules(no_cache=True)
    assert cp.reuse_decision(10, 60, NONE, req) is Reuse.REVALIDATE
    assert cp.reuse_decision(10, 60, StaleRules(stale_while_revalidate=60), req) is (
        Reuse.REVALIDATE
    )
    assert cp.reuse_decision(10, 60, NONE, req, origin_failing=True) is Reuse.FRESH
    assert cp.reuse_decision(100, 60, NONE, req, origin_failing=True, grace=60) is Reuse.GRACE


def test_reuse_request_max_age_rfc9111_5_2_1_1() -> None:
    assert cp.reuse_decision(10, 60, NONE, RequestRules(max_age=10)) is Reuse.FRESH
    assert cp.reuse_decision(11, 60, NONE, RequestRules(max_age=10)) is Reuse.REVALIDATE
    assert cp.reuse_decision(0.5, 60, NONE, RequestRules(max_age=0)) is Reuse.REVALIDATE


def test_reuse_request_min_fresh_rfc9111_5_2_1_3() -> None:
    assert cp.reuse_decision(40, 60, NONE, RequestRules(min_fresh=20)) is Reuse.FRESH
    assert cp.reuse_decision(41, 60, NONE, RequestRules(min_fresh=20)) is Reuse.REVALIDATE
    # A client asking for remaining freshness accepts no stale response, even within swr.
    swr = StaleRules(stale_while_revalidate=60)
    assert cp.reuse_decision(70, 60, swr, RequestRules(min_fresh=1)) is Reuse.REVALIDATE


def test_reuse_request_max_stale_rfc9111_5_2_1_2() -> None:
    assert cp.reuse_decision(70, 60, NONE, RequestRules(max_stale=10)) is (
        Reuse.STALE_WHILE_REVALIDATE
    )
    assert cp.reuse_decision(71, 60, NONE, RequestRules(max_stale=10)) is Reuse.REVALIDATE
    assert cp.reuse_decision(1e9, 60, NONE, RequestRules(max_stale=math.inf)) is (
        Reuse.STALE_WHILE_REVALIDATE
    )
    both = RequestRules(max_stale=math.inf, max_age=65)
    assert cp.reuse_decision(70, 60, NONE, both) is Reuse.REVALIDATE


def test_reuse_only_if_cached_rfc9111_5_2_1_7() -> None:
    req = RequestRules(only_if_cached=True)
    assert cp.reuse_decision(10, 60, NONE, req) is Reuse.FRESH
    assert cp.reuse_decision(70, 60, NONE, req) is Reuse.UNSERVABLE
    assert cp.reuse_decision(70, 60, StaleRules(stale_while_revalidate=30), req) is (
        Reuse.STALE_WHILE_REVALIDATE
    )


def test_reuse_serves_stored_property() -> None:
    served = {r for r in Reuse if r.serves_stored}
    assert served == {Reuse.FRESH, Reuse.STALE_WHILE_REVALIDATE, Reuse.STALE_IF_ERROR,
                      Reuse.GRACE}


@given(
    age=st.floats(0, 1e7),
    lifetime=st.floats(0, 1e7),
    swr=st.floats(0, 1e5),
    sie=st.floats(0, 1e5),
    grace=st.floats(0, 1e5),
    failing=st.booleans(),
)
def test_reuse_must_revalidate_never_serves_stale(
    age: float, lifetime: float, swr: float, sie: float, grace: float, failing: bool
) -> None:
    rules = cp.stale_directives(
        h(cache_control=f"must-revalidate, stale-while-revalidate={int(swr)}, "
                        f"stale-if-error={int(sie)}")
    )
    decision = cp.reuse_decision(age, lifetime, rules, RequestRules(max_stale=math.inf),
                                 origin_failing=failing, grace=grace)
    if age >= lifetime:
        assert not decision.serves_stored


# ---------------------------------------------------------------------------------------------
# Conditional requests answered by the cache (RFC 9110 §13.1, §13.2.2; RFC 9111 §4.3.2)

STORED = h(etag='"v1"', last_modified="Sat, 05 Nov 1994 08:49:37 GMT", date=T0_IMF)


@pytest.mark.parametrize(
    ("inm", "matches"),
    [
        ('"v1"', True),
        ('W/"v1"', True),  # weak comparison
        ('"v0", "v1"', True),
        ('"v0"', False),
        ("*", True),
        ('"V1"', False),  # opaque tags are case-sensitive
        ("v1", True),  # tolerated unquoted tag
    ],
)
def test_inm_weak_comparison_rfc9110_13_1_2(inm: str, matches: bool) -> None:
    assert cp.client_conditional_matches(h(if_none_match=inm), STORED) is matches


def test_inm_against_weak_stored_etag_and_commas_in_tag() -> None:
    stored = h(etag='W/"a,b"')
    assert cp.client_conditional_matches(h(if_none_match='"x", "a,b"'), stored)
    assert not cp.client_conditional_matches(h(if_none_match='"a"'), stored)


def test_inm_without_stored_etag_only_star_matches() -> None:
    assert cp.client_conditional_matches(h(if_none_match="*"), {})
    assert not cp.client_conditional_matches(h(if_none_match='"v1"'), {})


def test_ims_ignored_when_inm_present_rfc9110_13_2_2() -> None:
    req = h(if_none_match='"other"', if_modified_since=T0_IMF)
    assert cp.client_conditional_matches(req, STORED) is False


def test_ims_against_last_modified_then_date_rfc9111_4_3_2() -> None:
    assert cp.client_conditional_matches(h(if_modified_since=T0_IMF), STORED)
    early = "Fri, 04 Nov 1994 08:49:37 GMT"
    assert not cp.client_conditional_matches(h(if_modified_since=early), STORED)
    assert cp.client_conditional_matches(h(if_modified_since=T0_IMF), h(date=T0_IMF))
    assert not cp.client_conditional_matches(h(if_modified_since=T0_IMF), {})
    assert not cp.client_conditional_matches(h(if_modified_since="yesterday"), STORED)


def test_conditionals_only_for_get_and_head() -> None:
    req = h(if_none_match='"v1"')
    assert cp.client_conditional_matches(req, STORED, method="HEAD")
    assert not cp.client_conditional_matches(req, STORED, method="POST")
    assert not cp.client_conditional_matches({}, STORED)


# ---------------------------------------------------------------------------------------------
# Revalidation (RFC 9111 §4.3.1, §4.3.3, §4.3.4, §3.2)


def test_conditional_headers_for_origin_rfc9111_4_3_1() -> None:
    assert cp.conditional_headers_for_origin(STORED) == {
        "if-none-match": '"v1"',
        "if-modified-since": "Sat, 05 Nov 1994 08:49:37 GMT",
    }
    assert cp.conditional_headers_for_origin(h(last_modified="garbage")) == {}
    assert cp.conditional_headers_for_origin({}) == {}


def test_not_modified_selects_stored_by_validator_rfc9111_4_3_4() -> None:
    assert cp.not_modified_updates_stored(STORED, h(etag='"v1"'))
    assert not cp.not_modified_updates_stored(STORED, h(etag='"v2"'))
    assert cp.not_modified_updates_stored(h(etag='W/"v1"'), h(etag='W/"v1"'))
    assert not cp.not_modified_updates_stored(h(etag='W/"v1"'), h(etag='"v1"'))  # strong vs weak
    assert cp.not_modified_updates_stored(STORED, h(last_modified=STORED["last-modified"]))
    assert not cp.not_modified_updates_stored(STORED, h(last_modified=T0_IMF))
    assert cp.not_modified_updates_stored(STORED, {})  # we built the conditional from STORED
    assert not cp.not_modified_updates_stored({}, h(etag='"v1"'))


def test_merge_304_updates_in_place_keeps_order_rfc9111_3_2() -> None:
    stored = [
        ("Date", "Sat, 05 Nov 1994 08:49:37 GMT"),
        ("Content-Type", "text/html"),
        ("Cache-Control", "max-age=60"),
        ("X-A", "1"),
        ("x-a", "2"),
        ("Content-Length", "1234"),
        ("Content-Encoding", "gzip"),
        ("ETag", '"v1"'),
        ("Age", "500"),
    ]
    not_modified = [
        ("date", T0_IMF),
        ("cache-control", "max-age=600"),
        ("X-A", "3"),
        ("Content-Length", "0"),
        ("Content-Encoding", "br"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "h"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "sid=2"),
        ("X-New", "n"),
    ]
    assert cp.merge_304(stored, not_modified) == [
        ("date", T0_IMF),
        ("Content-Type", "text/html"),
        ("cache-control", "max-age=600"),
        ("X-A", "3"),
        ("Content-Length", "1234"),
        ("Content-Encoding", "gzip"),
        ("ETag", '"v1"'),
        ("X-New", "n"),
    ]  # the old Age went: it described the earlier exchange


def test_merge_304_age_from_304_and_new_private_field_stripped() -> None:
    stored = [("Cache-Control", "max-age=60"), ("X-User", "alice")]
    merged = cp.merge_304(stored, [("Cache-Control", 'max-age=60, private="X-User"'),
                                   ("Age", "3")])
    assert merged == [("Cache-Control", 'max-age=60, private="X-User"'), ("Age", "3")]


# ---------------------------------------------------------------------------------------------
# Vary (RFC 9111 §4.1)


def test_vary_fields_sorted_deduped_lowercase() -> None:
    assert cp.vary_fields(h(vary="Accept-Encoding, accept-language,ACCEPT-encoding")) == (
        "accept-encoding",
        "accept-language",
    )
    assert cp.vary_fields({}) == ()
    assert cp.vary_fields(h(vary=" , ")) == ()
    assert cp.vary_fields(h(vary="Accept, *")) is None


def test_vary_signature_normalizes_whitespace_and_keeps_missing_distinct() -> None:
    fields = ("accept-encoding", "accept-language", "x-missing")
    a = cp.vary_signature(fields, h(accept_encoding="gzip,  br", accept_language=" ru ; q=0.8 "))
    b = cp.vary_signature(fields, h(accept_encoding="gzip, br", accept_language="ru;q=0.8"))
    assert a == b == ("gzip,br", "ru;q=0.8", None)
    assert cp.vary_signature(("x",), {"x": ""}) != cp.vary_signature(("x",), {})
    assert cp.vary_signature(("x",), {"x": "GZIP"}) != cp.vary_signature(("x",), {"x": "gzip"})


def test_vary_signature_keeps_whitespace_inside_quotes() -> None:
    sig1 = cp.vary_signature(("x",), {"x": 'a="1 ; 2"'})
    sig2 = cp.vary_signature(("x",), {"x": 'a="1;2"'})
    assert sig1 != sig2


# ---------------------------------------------------------------------------------------------
# Invalidation (RFC 9111 §4.4)


def test_invalidate_target_after_unsafe_success() -> None:
    assert cp.invalidated_targets("POST", 200, "/a?x=1", {}, "example.com") == ["/a?x=1"]
    assert cp.invalidated_targets("DELETE", 204, "/a", {}, "example.com") == ["/a"]
    assert cp.invalidated_targets("PATCH", 302, "/a", {}, "example.com") == ["/a"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE"])
def test_invalidate_not_for_safe_methods(method: str) -> None:
    assert cp.invalidated_targets(method, 200, "/a", {}, "example.com") == []


@pytest.mark.parametrize("status", [400, 404, 500, 503, 100])
def test_invalidate_not_for_error_status(status: int) -> None:
    assert cp.invalidated_targets("POST", status, "/a", {}, "example.com") == []


def test_invalidate_location_same_host_only_rfc9111_4_4() -> None:
    resp = h(location="https://EXAMPLE.com:8443/b?y=2#frag",
             content_location="http://evil.example/c")
    assert cp.invalidated_targets("POST", 201, "/a", resp, "example.com:8080") == ["/a", "/b?y=2"]


def test_invalidate_relative_location_and_content_location() -> None:
    resp = h(location="../c", content_location="/a")
    assert cp.invalidated_targets("PUT", 200, "/x/y/z", resp, "example.com") == [
        "/x/y/z",
        "/x/c",
        "/a",
    ]


def test_invalidate_absolute_form_target_and_junk_location() -> None:
    resp = h(location="http://[bad", content_location="mailto:x@example.com")
    assert cp.invalidated_targets("POST", 200, "http://example.com/p?q", resp, "example.com") == [
        "/p?q"
    ]


# ---------------------------------------------------------------------------------------------
# Hop-by-hop (RFC 9110 §7.6.1)


def test_hop_by_hop_fixed_list_and_connection_tokens() -> None:
    fields = cp.hop_by_hop_fields(h(connection="Keep-Alive, X-Secret ,, close"))
    assert fields >= cp.HOP_BY_HOP
    assert {"x-secret", "keep-alive", "close"} <= fields
    assert cp.hop_by_hop_fields({}) == set(cp.HOP_BY_HOP)
    assert {"connection", "transfer-encoding", "upgrade", "te", "keep-alive"} <= cp.HOP_BY_HOP
    assert "cache-control" not in cp.HOP_BY_HOP


# ---------------------------------------------------------------------------------------------
# End to end through the public API, the way the pipeline strings it together.


def test_store_then_reuse_walkthrough() -> None:
    raw = [
        (b"Date", T0_IMF.encode()),
        (b"Cache-Control", b"public, max-age=60, stale-while-revalidate=30"),
        (b"Age", b"10"),
        (b"ETag", b'"v1"'),
    ]
    resp = cp.combine_headers(raw)
    assert cp.storable("GET", 200, {}, resp) == (True, "explicit")
    lifetime = cp.freshness_lifetime(200, resp, response_time=T0)
    initial = cp.initial_age(resp, request_time=T0, response_time=T0)
    stale = cp.stale_directives(resp)
    assert (lifetime, initial) == (60.0, 10.0)
    age = cp.current_age(initial, T0, T0 + 55)
    assert cp.reuse_decision(age, lifetime, stale, NO_PREFS) is Reuse.STALE_WHILE_REVALIDATE
    assert cp.reuse_decision(
        cp.current_age(initial, T0, T0 + 20), lifetime, stale, NO_PREFS
    ) is Reuse.FRESH


# ---------------------------------------------------------------------------------------------
# Robustness: origin and client headers are attacker-controlled text.

_FIELDS = ["cache-control", "expires", "date", "age", "last-modified", "etag", "vary", "location",
           "content-location", "connection", "pragma", "if-none-match", "if-modified-since",
           "set-cookie", "authorization"]
header_dicts = st.dictionaries(st.sampled_from(_FIELDS), st.text(max_size=60), max_size=8)


@given(header_dicts, header_dicts, st.integers(0, 999), st.text(max_size=30))
def test_no_function_raises_on_junk_headers(
    req: dict[str, str], resp: dict[str, str], status: int, target: str
) -> None:
    cp.storable("GET", status, req, resp, microcache=True)
    cp.headers_to_strip_on_store(resp)
    cp.freshness_lifetime(status, resp, response_time=T0)
    assert cp.initial_age(resp, T0, T0) >= 0.0
    cp.stale_directives(resp)
    cp.request_rules(req)
    cp.client_conditional_matches(req, resp)
    cp.conditional_headers_for_origin(resp)
    cp.not_modified_updates_stored(resp, req)
    cp.vary_signature(cp.vary_fields(resp) or (), req)
    cp.invalidated_targets("POST", 200, target, resp, req.get("location", "example.com"))
    cp.merge_304(list(resp.items()), list(req.items()))
