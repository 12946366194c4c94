"""The cache flow state by state, without sockets: lookup, the origin's answer, failure, and the
entries it builds (a 304 makes a new one)."""

from __future__ import annotations

import pytest

from kalkan.config import CacheConfig
from kalkan.edge import cache_flow as flow
from kalkan.edge import cache_policy as policy
from kalkan.edge.cache_flow import RequestView, Step
from kalkan.edge.store import Entry

NOW = 1_800_000_000.0
CONFIG = CacheConfig()
ANON = RequestView(credentialed=False, session=False, headers={})
SESSION = RequestView(credentialed=True, session=True, headers={"cookie": "wordpress_logged_in=1"})
PASS = RequestView(credentialed=False, session=False, headers={}, has_pass=True)


def entry(age: float = 0.0, lifetime: float = 60.0, cc: str = "public, max-age=60",
          micro: bool = False, etag: bytes | None = None) -> Entry:
    headers = [(b"Cache-Control", cc.encode()), (b"Content-Type", b"text/html")]
    if etag is not None:
        headers.append((b"ETag", etag))
    resp = policy.combine_headers(headers)
    return Entry("http://news.example/", 200, headers, b"page", response_time=NOW - age,
                 initial_age=0.0, lifetime=lifetime, stale=policy.stale_directives(resp),
                 micro=micro)


# -- lookup -----------------------------------------------------------------------------------

def test_fresh_entry_is_served() -> None:
    d = flow.lookup(entry(age=10), ANON, NOW, CONFIG, threat=0)
    assert d.step is Step.SERVE and d.entry is not None


def test_nothing_stored_is_fetched() -> None:
    d = flow.lookup(None, ANON, NOW, CONFIG, threat=0)
    assert d.step is Step.FETCH and d.entry is None and d.reason == "miss"


def test_expired_entry_is_fetched_with_its_validators() -> None:
    stale = entry(age=100, etag=b'"v1"')
    d = flow.lookup(stale, ANON, NOW, CONFIG, threat=0)
    assert d.step is Step.FETCH and d.entry is stale and d.reason == "expired"


def test_stale_while_revalidate_is_served_and_refreshed() -> None:
    d = flow.lookup(entry(age=70, cc="max-age=60, stale-while-revalidate=30"), ANON, NOW,
                    CONFIG, threat=0)
    assert d.step is Step.SERVE_STALE and d.reason == "while_revalidate"


def test_only_if_cached_without_a_usable_copy_is_unservable() -> None:
    view = RequestView(credentialed=False, session=False, headers={},
                       rules=policy.request_rules({"cache-control": "only-if-cached"}))
    assert flow.lookup(entry(age=100), view, NOW, CONFIG, threat=0).step is Step.UNSERVABLE


def test_under_attack_an_unproven_reader_gets_the_stale_copy() -> None:
    d = flow.lookup(entry(age=100), ANON, NOW, CONFIG, threat=2)
    assert d.step is Step.SERVE_STALE and d.reason == "attack_mode"


def test_under_attack_an_unproven_client_is_challenged_before_a_miss() -> None:
    assert flow.lookup(None, ANON, NOW, CONFIG, threat=1).step is Step.CHALLENGE_FIRST


def test_under_attack_a_pass_holders_miss_is_the_defences_to_judge() -> None:
    # The defence lets it through unless it behaves like a bot (defense/engine.before_origin);
    # the log's reason stays the miss's own.
    miss = flow.lookup(None, PASS, NOW, CONFIG, threat=2)
    assert miss.step is Step.CHALLENGE_FIRST and miss.reason == "miss"
    expired = flow.lookup(entry(age=100), PASS, NOW, CONFIG, threat=2)
    assert expired.step is Step.CHALLENGE_FIRST and expired.reason == "expired"


def test_near_the_origin_budget_a_pass_holder_gets_the_stale_copy_too() -> None:
    # Under attack with the cache's origin load near its headroom budget, the stale copy
    # stands in for a fetch for everyone who may share it; the refresh waits for a slot.
    d = flow.lookup(entry(age=100), PASS, NOW, CONFIG, threat=1, strained=True)
    assert d.step is Step.SERVE_STALE and d.reason == "origin_busy"
    unproven = flow.lookup(entry(age=100), ANON, NOW, CONFIG, threat=1, strained=True)
    assert unproven.step is Step.SERVE_STALE and unproven.reason == "attack_mode"
    # Nothing stored: nothing to stand in, the miss waits for its slot (once the defence
    # has let it through).
    assert flow.lookup(None, PASS, NOW, CONFIG, threat=1, strained=True).step \
        is Step.CHALLENGE_FIRST


def test_strain_stretches_nothing_in_peace_nor_for_forbidden_or_private_copies() -> None:
    assert flow.lookup(entry(age=100), PASS, NOW, CONFIG, threat=0, strained=True).step \
        is Step.FETCH
    must = entry(age=100, cc="max-age=60, must-revalidate")
    assert flow.lookup(must, PASS, NOW, CONFIG, threat=2, strained=True).step \
        is Step.CHALLENGE_FIRST
    assert flow.lookup(entry(age=100), SESSION, NOW, CONFIG, threat=2, strained=True).step \
        is Step.PASS


def test_grace_grows_with_the_threat_and_doubles_near_the_budget() -> None:
    config = CacheConfig(grace=3600.0)
    assert flow.grace(config, 0) == 3600.0
    assert flow.grace(config, 2) == 3 * 3600.0
    assert flow.grace(config, 2, strained=True) == 6 * 3600.0
    # Stale for 2.5 h: past level 1's grace (2 h), within it doubled (4 h) near the budget.
    old = entry(age=60 + 2 * 3600.0 + 1800.0)
    assert flow.lookup(old, ANON, NOW, config, threat=1).step is Step.CHALLENGE_FIRST
    d = flow.lookup(old, ANON, NOW, config, threat=1, strained=True)
    assert d.step is Step.SERVE_STALE and d.reason == "attack_mode"


def test_must_revalidate_is_never_stale_under_attack() -> None:
    d = flow.lookup(entry(age=100, cc="max-age=60, must-revalidate"), ANON, NOW, CONFIG, threat=2)
    assert d.step is Step.CHALLENGE_FIRST


def test_credentialed_reader_gets_fresh_shared_copies_only() -> None:
    assert flow.lookup(entry(age=10), SESSION, NOW, CONFIG, threat=0).step is Step.SERVE
    for stored in (None, entry(age=100), entry(age=1, micro=True)):
        d = flow.lookup(stored, SESSION, NOW, CONFIG, threat=2)
        assert d.step is Step.PASS and d.entry is None


def test_authorization_alone_is_fetched_on_its_own_and_never_served_stale() -> None:
    auth = RequestView(credentialed=True, session=False, headers={"authorization": "Basic eA=="})
    for stored in (None, entry(age=100)):
        d = flow.lookup(stored, auth, NOW, CONFIG, threat=0)
        assert d.step is Step.FETCH and d.entry is None  # no validators: not ours to refresh
    assert flow.lookup(None, auth, NOW, CONFIG, threat=1).step is Step.CHALLENGE_FIRST
    # Stored only when the origin marks it for shared caches (RFC 9111 §3.5, stricter).
    assert flow.plan_store(200, {"cache-control": "public, max-age=60"}, auth, NOW, CONFIG).ok
    assert not flow.plan_store(200, {"cache-control": "must-revalidate, max-age=60"}, auth,
                               NOW, CONFIG).ok
    assert not flow.plan_store(200, {}, auth, NOW, CONFIG).ok


# -- the origin's answer ----------------------------------------------------------------------

def test_5xx_with_a_usable_stale_copy_serves_it() -> None:
    stale = entry(age=100)
    d = flow.on_response(503, {}, stale, ANON, NOW, CONFIG, threat=0)
    assert d.step is Step.SERVE_STALE and d.entry is stale


def test_5xx_without_grace_is_relayed() -> None:
    d = flow.on_response(503, {}, entry(age=100, cc="max-age=60, must-revalidate"), ANON, NOW,
                         CONFIG, threat=0)
    assert d.step is Step.RELAY


def test_304_refreshes_the_stored_entry_or_names_another() -> None:
    stale = entry(age=100, etag=b'"v1"')
    assert flow.on_response(304, {"etag": '"v1"'}, stale, ANON, NOW, CONFIG, 0).step \
        is Step.REFRESH
    assert flow.on_response(304, {"etag": '"v2"'}, stale, ANON, NOW, CONFIG, 0).step \
        is Step.REFETCH


@pytest.mark.parametrize(("resp", "view", "step", "reason"), [
    ({"cache-control": "public, max-age=60"}, ANON, Step.STORE, "explicit"),
    ({"cache-control": "no-store"}, ANON, Step.RELAY, "no-store"),
    ({"cache-control": "private"}, ANON, Step.RELAY, "private"),
    ({"content-type": "text/html"}, SESSION, Step.RELAY, "session"),
    ({"cache-control": "max-age=60", "set-cookie": "a=b"}, ANON, Step.RELAY, "set-cookie"),
    ({"cache-control": "public, max-age=60"}, SESSION, Step.STORE, "explicit"),
])
def test_what_is_stored_and_why_not(resp: dict[str, str], view: RequestView, step: Step,
                                    reason: str) -> None:
    d = flow.on_response(200, resp, None, view, NOW, CONFIG, threat=0)
    assert (d.step, d.reason) == (step, reason)


def test_microcache_stores_anonymous_html_without_freshness() -> None:
    config = CacheConfig(microcache_ttl=5.0)
    plan = flow.plan_store(200, {"content-type": "text/html"}, ANON, NOW, config)
    assert plan.ok and plan.micro and plan.lifetime == 5.0
    assert not flow.plan_store(200, {"content-type": "text/html"}, SESSION, NOW, config).ok


def test_too_large_is_not_stored() -> None:
    plan = flow.plan_store(200, {"cache-control": "max-age=60"}, ANON, NOW, CONFIG,
                           content_length=CONFIG.max_object_bytes + 1)
    assert not plan.ok and plan.reason == "too_large"


# -- failure ----------------------------------------------------------------------------------

def test_stale_on_failure_follows_grace_and_never_serves_credentialed() -> None:
    stale = entry(age=100)
    assert flow.stale_usable(stale, ANON, NOW, CONFIG, threat=0)
    assert not flow.stale_usable(stale, SESSION, NOW, CONFIG, threat=0)
    old = entry(age=CONFIG.grace * 2 + 100)
    assert not flow.stale_usable(old, ANON, NOW, CONFIG, threat=0)
    assert flow.stale_usable(old, ANON, NOW, CONFIG, threat=3)  # grace x4 under attack


# -- entries ----------------------------------------------------------------------------------

def test_build_entry_strips_what_a_shared_cache_must_not_keep() -> None:
    raw = [(b"Cache-Control", b"public, max-age=60"), (b"Set-Cookie", b"a=b"),
           (b"Connection", b"x-private"), (b"X-Private", b"1"), (b"Content-Length", b"99"),
           (b"Transfer-Encoding", b"chunked"), (b"Vary", b"Accept-Language")]
    resp = policy.combine_headers(raw)
    view = RequestView(credentialed=False, session=False, headers={"accept-language": "ru"})
    plan = flow.plan_store(200, resp, view, NOW, CONFIG)
    e = flow.build_entry("k", 200, raw, resp, b"body", view, plan, NOW)
    names = [k.lower() for k, _ in e.headers]
    for gone in (b"set-cookie", b"connection", b"x-private", b"transfer-encoding"):
        assert gone not in names
    assert (b"Content-Length", b"4") in e.headers and names.count(b"content-length") == 1
    assert e.vary == ("accept-language",) and e.vary_sig == ("ru",)
    assert e.lifetime == 60.0


def test_a_304_builds_a_new_entry_and_leaves_the_old_one() -> None:
    old = entry(age=100, etag=b'"v1"')
    new = flow.revalidated(old, [(b"ETag", b'"v1"'), (b"Cache-Control", b"max-age=120")], NOW,
                           CONFIG)
    assert new is not old and new.body is old.body
    assert new.lifetime == 120.0 and new.age(NOW) == 0.0
    assert old.lifetime == 60.0 and old.age(NOW) == 100.0
    assert dict(new.headers)[b"Cache-Control"] == b"max-age=120"
    assert new.etag == b'"v1"' and new.size >= old.size - 20


def test_pick_variant_matches_the_vary_signature() -> None:
    ru = Entry("k", 200, [], b"ru", response_time=NOW, initial_age=0, lifetime=60,
               vary=("accept-language",), vary_sig=("ru",))
    en = Entry("k", 200, [], b"en", response_time=NOW, initial_age=0, lifetime=60,
               vary=("accept-language",), vary_sig=("en",))
    assert flow.pick_variant([ru, en], {"accept-language": "en"}) is en
    assert flow.pick_variant([ru, en], {}) is None


# -- never cached (cache.never_cache_*) -------------------------------------------------------

NEVER = flow.NeverCache(CONFIG)


@pytest.mark.parametrize(("path", "query", "reason"), [
    ("/wp-admin", "", "never_cache:path=/wp-admin"),
    ("/wp-admin/admin-ajax.php", "action=x", "never_cache:path=/wp-admin/*"),
    ("/x/../wp-admin/", "", "never_cache:path=/wp-admin/*"),
    ("//wp-admin/post.php", "", "never_cache:path=/wp-admin/*"),
    ("/%77p-login.php", "", "never_cache:path=/wp-login.php"),
    ("/wp-cron.php", "doing_wp_cron=1", "never_cache:path=/wp-cron.php"),
    ("/xmlrpc.php", "", "never_cache:path=/xmlrpc.php"),
    ("/", "p=3&preview=true", "never_cache:param=preview"),
    ("/2020/12/x/", "%5Fwpnonce=abc", "never_cache:param=_wpnonce"),
    ("/", "add-to-cart=12", "never_cache:param=add-to-cart"),
    ("/", "doing_wp_cron=1733270400", "never_cache:param=doing_wp_cron"),
    ("/2020/12/x/", "unapproved=7&moderation-hash=ab12", "never_cache:param=unapproved"),
    ("/", "mailpoet_page=subscriptions&mailpoet_router&endpoint=subscription",
     "never_cache:param=mailpoet_router"),
    ("/2020/12/statement/", "s=preview", ""),
    ("/wp-content/uploads/wp-admin.jpg", "", ""),
    ("/wp-adminx/", "", ""),
])
def test_never_cache_reasons(path: str, query: str, reason: str) -> None:
    assert NEVER.reason(path, query, {}) == reason


def test_a_rest_nonce_header_is_never_cached_and_lookup_passes_with_the_reason() -> None:
    why = NEVER.reason("/wp-json/wp/v2/posts", "", {"x-wp-nonce": "abc"})
    assert why == "never_cache:header=x-wp-nonce"
    view = RequestView(credentialed=False, session=False, headers={}, never_cache=why)
    # Even with a fresh copy stored, and before the attack-mode challenge: the origin answers.
    d = flow.lookup(entry(age=1), view, NOW, CONFIG, threat=2)
    assert d.step is Step.PASS and d.entry is None and d.reason == why


def test_an_empty_never_cache_config_passes_nothing() -> None:
    none = flow.NeverCache(CacheConfig(never_cache_paths=[], never_cache_params=[],
                                       never_cache_headers=[]))
    assert none.reason("/wp-admin/", "preview=1", {"x-wp-nonce": "1"}) == ""


def test_wordpress_pages_are_microcached_by_default() -> None:
    wp = {"content-type": "text/html; charset=UTF-8",
          "link": '<http://news.example/wp-json/>; rel="https://api.w.org/"'}
    plan = flow.plan_store(200, wp, ANON, NOW, CONFIG)
    assert plan.ok and plan.micro and plan.lifetime == 10.0
    assert not flow.plan_store(200, wp, SESSION, NOW, CONFIG).ok
    logged_in = {**wp, "cache-control": "no-cache, must-revalidate, max-age=0, no-store, private",
                 "expires": "Wed, 11 Jan 1984 05:00:00 GMT"}
    assert flow.plan_store(200, logged_in, ANON, NOW, CONFIG).reason == "no-store"
