"""The normalized request target and cache key: unit tests plus Hypothesis properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kalkan.edge.cache_key import (
    DEFAULT_ALLOW,
    QueryPolicy,
    cache_key,
    has_dot_segments,
    normalize_target,
)

POLICY = QueryPolicy.from_mapping(
    {"default": ["p", "page", "s"], "paths": {"/search*": ["q", "page"], "/api/*": ["*"]}}
)


# ---------------------------------------------------------------------------------------------
# Path normalization (RFC 3986 §6.2.2)


def test_path_decodes_unreserved_and_uppercases_other_escapes() -> None:
    assert normalize_target("/%7euser/%41b%2f%c3%a9", "", POLICY) == "/~user/Ab%2F%C3%A9"


def test_path_leaves_dot_segments_slashes_and_case_alone() -> None:
    for path in ("/a/../b", "//a//b", "/A/./b", "/a;x=1/b", "/a+b"):
        assert normalize_target(path, "", POLICY) == path


def test_path_escaped_dots_are_decoded_but_not_resolved() -> None:
    assert normalize_target("/a/%2E%2e/b", "", POLICY) == "/a/../b"


def test_path_lone_percent_becomes_escape() -> None:
    assert normalize_target("/100%", "", POLICY) == "/100%25"
    assert normalize_target("/%zz", "", POLICY) == "/%25zz"
    # A decode must not create a new escape out of a stray "%": idempotence depends on it.
    assert normalize_target("/%%34%31", "", POLICY) == "/%2541"


def test_path_without_percent_and_empty_query_is_unchanged() -> None:
    for path in ("/", "/news/2020/12/story", "", "*", "/é"):
        assert normalize_target(path, "", POLICY) is path


def test_has_dot_segments() -> None:
    assert has_dot_segments("/a/../wp-login.php")
    assert has_dot_segments("/a/%2e%2E/x")
    assert has_dot_segments("/./")
    assert not has_dot_segments("/a/..b/c.d/...")


# ---------------------------------------------------------------------------------------------
# Query normalization


def test_query_drops_unknown_params_and_sorts() -> None:
    target = normalize_target("/", "utm_source=x&s=b&p=2&fbclid=123&p=1&_=9", POLICY)
    assert target == "/?p=1&p=2&s=b"


def test_query_empty_after_filtering_has_no_question_mark() -> None:
    assert normalize_target("/a", "utm_source=x&&", POLICY) == "/a"
    assert normalize_target("/a", "&", POLICY) == "/a"


def test_query_param_without_equals_keeps_its_form() -> None:
    policy = QueryPolicy.from_mapping({"default": ["feed"]})
    assert normalize_target("/", "feed=&feed&feed=rss", policy) == "/?feed&feed=&feed=rss"


def test_query_escapes_normalized_and_plus_untouched() -> None:
    assert normalize_target("/", "%73=a%2bb+c%7E", POLICY) == "/?s=a%2Bb+c~"


def test_query_value_may_contain_equals() -> None:
    assert normalize_target("/", "s=a=b", POLICY) == "/?s=a=b"


def test_per_path_list_replaces_default_first_match_wins() -> None:
    assert normalize_target("/search/", "q=x&p=1&page=2", POLICY) == "/search/?page=2&q=x"
    assert normalize_target("/searching", "s=1&q=x", POLICY) == "/searching?q=x"
    assert normalize_target("/api/v1", "b=2&a=1", POLICY) == "/api/v1?a=1&b=2"  # "*" keeps all
    assert normalize_target("/other", "q=x&p=1", POLICY) == "/other?p=1"


def test_per_path_matches_the_normalized_path() -> None:
    assert normalize_target("/%73earch", "q=x", POLICY) == "/search?q=x"


def test_keep_all_keeps_query_verbatim() -> None:
    policy = QueryPolicy(keep_all=True)
    assert normalize_target("/%7ea", "z=1&a=%2f", policy) == "/~a?z=1&a=%2f"


def test_default_policy_is_news_site_list() -> None:
    assert {"p", "page_id", "paged", "page", "cat", "tag", "s", "q", "lang", "author", "year",
            "monthnum", "day", "name", "feed"} <= DEFAULT_ALLOW
    assert normalize_target("/", "utm_campaign=x&paged=2&cat=3") == "/?cat=3&paged=2"
    assert QueryPolicy.from_mapping(None) == QueryPolicy()
    assert QueryPolicy.from_mapping({}).default_allow == DEFAULT_ALLOW


# ---------------------------------------------------------------------------------------------
# Config errors name the key


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"defaults": ["p"]}, "'defaults'"),
        ({"default": "p"}, "default"),
        ({"default": ["p", 3]}, "default"),
        ({"default": [""]}, "default"),
        ({"default": ["a=b"]}, "default"),
        ({"paths": ["/search*"]}, "paths"),
        ({"paths": {"search*": ["q"]}}, "search*"),
        ({"paths": {"/search*": "q"}}, "/search*"),
        ({"paths": {"/search*": None}}, "/search*"),
        ({"keep_all": "yes"}, "keep_all"),
        (["p"], "mapping"),
    ],
)
def test_from_mapping_errors_name_the_key(config: object, needle: str) -> None:
    with pytest.raises(ValueError, match=None) as excinfo:
        QueryPolicy.from_mapping(config)  # type: ignore[arg-type]
    assert needle in str(excinfo.value)


def test_from_mapping_normalizes_configured_names() -> None:
    policy = QueryPolicy.from_mapping({"default": ["%7euser"]})
    assert normalize_target("/", "~user=1", policy) == "/?~user=1"


def test_policy_is_hashable_and_comparable() -> None:
    again = QueryPolicy.from_mapping(
        {"default": ["s", "page", "p"], "paths": {"/search*": ["page", "q"], "/api/*": ["*"]}}
    )
    assert again == POLICY
    assert hash(again) == hash(POLICY)


# ---------------------------------------------------------------------------------------------
# The key


def test_key_lowercases_host_and_drops_default_port() -> None:
    assert cache_key("GET", "Example.COM:80", "/a") == "GET http://example.com/a"
    assert cache_key("GET", "example.com:443", "/a", scheme="https") == "GET https://example.com/a"
    assert cache_key("GET", "example.com:443", "/a") == "GET http://example.com:443/a"
    assert cache_key("GET", "example.com.", "/a") == "GET http://example.com/a"
    assert cache_key("GET", "example.com:", "/a") == "GET http://example.com/a"
    assert cache_key("GET", "[::1]:80", "/a") == "GET http://[::1]/a"


def test_key_separates_schemes() -> None:
    assert cache_key("GET", "a", "/", scheme="http") != cache_key("GET", "a", "/", scheme="https")


def test_key_junk_host_cannot_impersonate_another_key() -> None:
    # Host "a/b" with target "/c" must not collide with host "a" and target "/b/c".
    assert cache_key("GET", "a/b", "/c") != cache_key("GET", "a", "/b/c")
    assert cache_key("GET", "a b", "/c") == "GET http://a%20b/c"
    # A target without a leading "/" cannot merge with the host either.
    assert cache_key("GET", "ab", "c") != cache_key("GET", "a", "bc")
    assert cache_key("GET", "a", "b/c") != cache_key("GET", "ab", "/c")


# ---------------------------------------------------------------------------------------------
# Properties

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz_"
junk = st.text(alphabet=st.characters(codec="latin-1"), max_size=40)
pct_ish = st.text(alphabet="%aAfF09/.-_~=&?+;é ", max_size=30)
names = st.text(alphabet=_NAME_CHARS, min_size=1, max_size=6)
values = st.text(alphabet="abcXYZ019%2F+~-.", max_size=8)
params = st.lists(st.tuples(names, values), max_size=8)
ALLOWED = sorted(POLICY.default_allow)


def _query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in pairs)


@given(st.one_of(junk, pct_ish), st.one_of(junk, pct_ish))
def test_property_never_raises_and_is_idempotent(path: str, query: str) -> None:
    for policy in (POLICY, QueryPolicy(), QueryPolicy(keep_all=True)):
        once = normalize_target(path, query, policy)
        assert isinstance(once, str)
        p, _, q = once.partition("?")
        if "?" not in path:  # a well-formed split (the caller never passes "?" in the path)
            assert normalize_target(p, q, policy) == once
        assert isinstance(cache_key("GET", path, once), str)


@given(params, st.randoms(use_true_random=False))
def test_property_query_order_does_not_matter(
    pairs: list[tuple[str, str]], rnd: random.Random
) -> None:
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    assert normalize_target("/", _query(pairs), POLICY) == normalize_target(
        "/", _query(shuffled), POLICY
    )


@given(params, st.lists(st.tuples(names, values), max_size=5), st.randoms(use_true_random=False))
def test_property_dropped_params_never_affect_the_key(
    pairs: list[tuple[str, str]], extra: list[tuple[str, str]], rnd: random.Random
) -> None:
    dropped = [(k, v) for k, v in extra if k not in POLICY.default_allow]
    mixed = pairs + dropped
    rnd.shuffle(mixed)
    assert normalize_target("/x", _query(mixed), POLICY) == normalize_target(
        "/x", _query(pairs), POLICY
    )


@given(params, st.sampled_from(ALLOWED), values)
def test_property_allowed_params_always_affect_the_key(
    pairs: list[tuple[str, str]], name: str, value: str
) -> None:
    before = normalize_target("/x", _query(pairs), POLICY)
    after = normalize_target("/x", _query([*pairs, (name, value)]), POLICY)
    assert before != after
    assert cache_key("GET", "h", before) != cache_key("GET", "h", after)


# ---------------------------------------------------------------------------------------------
# WordPress: versioned assets, the REST API, never-cached parameters


def test_ver_names_a_stylesheet_or_script_but_not_a_page() -> None:
    css = "/wp-content/themes/twentytwentyfour/style.css"
    assert normalize_target(css, "ver=6.4.2&utm_source=x") == f"{css}?ver=6.4.2"
    assert normalize_target("/wp-includes/js/jquery/jquery.min.js", "ver=3.7.1&s=x") == \
        "/wp-includes/js/jquery/jquery.min.js?ver=3.7.1"  # a static file ignores ?s=
    assert normalize_target("/2020/12/statement/", "ver=1&p=2") == "/2020/12/statement/?p=2"


def test_every_rest_parameter_is_kept_and_plain_permalink_routes_are_known() -> None:
    assert normalize_target("/wp-json/wp/v2/posts", "per_page=5&_fields=id") == \
        "/wp-json/wp/v2/posts?_fields=id&per_page=5"  # all kept, sorted like any query
    assert normalize_target("/", "rest_route=/wp/v2/posts&x=1") == "/?rest_route=/wp/v2/posts"
    assert normalize_target("/", "sitemap=posts&sitemap-subtype=post&paged=2&r=1") == \
        "/?paged=2&sitemap=posts&sitemap-subtype=post"


def test_configured_paths_come_before_the_built_in_ones() -> None:
    policy = QueryPolicy.from_mapping({"paths": {"*.css": []}})
    assert normalize_target("/style.css", "ver=1") == "/style.css?ver=1"
    assert normalize_target("/style.css", "ver=1", policy) == "/style.css"
    assert normalize_target("/app.js", "ver=1", policy) == "/app.js?ver=1"


def test_always_kept_parameters_key_a_request_apart_on_every_path() -> None:
    policy = QueryPolicy.from_mapping({"default": ["page"], "paths": {"/shop/*": ["orderby"]}},
                                      always=["preview", "add-to-cart"])
    assert normalize_target("/", "p=1&preview=true", policy) == "/?preview=true"
    assert normalize_target("/shop/x/", "add-to-cart=7&orderby=price&z=1", policy) == \
        "/shop/x/?add-to-cart=7&orderby=price"
    assert normalize_target("/a.css", "ver=2&preview=1", policy) == "/a.css?preview=1&ver=2"
