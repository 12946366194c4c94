"""The policy file: every match condition, order and weights, TTLs, crawler verification, bad
files (file:line:key), and the promises of the shipped default policy."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalkan.defense.clients import ClientTable
from kalkan.defense.facts import RequestFacts, address_facts, normalize_path
from kalkan.defense.rules import (
    AddressSet,
    Crawlers,
    Policy,
    PolicyError,
    Verdict,
    default_policy_path,
    load_crawlers,
)

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BROWSER_HEADERS = [(b"Accept", b"text/html"), (b"Accept-Language", b"ky,ru;q=0.8,en;q=0.5")]


Headers = list[tuple[bytes, bytes]]


def req(path: str = "/", *, method: str = "GET", client: str = "203.0.113.7", ua: str = FIREFOX,
        query: str = "", host: str = "news.example", headers: Headers | None = None,
        cookie: bytes | None = None, policy: Policy | None = None) -> RequestFacts:
    ip, version, prefix = address_facts(client)
    # As the engine does: the route and the path the rules see are the normalized ones.
    route, path = (policy or DEFAULT).classifier.classify_target(method, path, query)
    return RequestFacts(method, host, path, query, route, client, ip, version, prefix, ua,
                        list(BROWSER_HEADERS if headers is None else headers), cookie)


def compile_rules(rules: str, extra: str = "", **kw: object) -> Policy:
    return Policy.from_text(f"{extra}rules:\n{rules}", "test.yaml", **kw)  # type: ignore[arg-type]


class Site:
    """A policy plus a client table: send requests, collect verdicts."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.clients = ClientTable(10_000, policy.meters, seed=1)

    def send(self, f: RequestFacts, now: float) -> Verdict | None:
        self.clients.hit(f, now)
        return self.policy.evaluate(f, self.clients, now)

    def action(self, f: RequestFacts, now: float = 100.0) -> str | None:
        verdict = self.send(f, now)
        return verdict.action if verdict else None


def one_rule(match: str, **kw: object) -> Site:
    return Site(compile_rules(f"  - name: r\n    match: {match}\n    action: block\n", **kw))


DEFAULT = Policy.default()


# --------------------------------------------------------------------------- conditions


def test_method() -> None:
    site = one_rule("{method: [post, PUT]}")
    assert site.action(req(method="POST")) == "block"
    assert site.action(req(method="PUT")) == "block"
    assert site.action(req(method="GET")) is None


def test_host_glob_ignores_case_and_port() -> None:
    site = one_rule("{host: ['*.example', 'kloop.kg']}")
    assert site.action(req(host="News.Example:8443")) == "block"
    assert site.action(req(host="kloop.kg")) == "block"
    assert site.action(req(host="kloop.kg.evil")) is None
    assert one_rule("{host: '::1'}").action(req(host="[::1]:8080")) == "block"


def test_path_glob_and_regex() -> None:
    site = one_rule("{path: ['/wp-login.php', '/tag/*/page/*', '*.php']}")
    assert site.action(req("/wp-login.php")) == "block"
    assert site.action(req("/tag/kg/page/2")) == "block"
    assert site.action(req("/x/y.php")) == "block"
    assert site.action(req("/wp-login.phpx")) is None
    assert site.action(req("/tag/kg")) is None
    regex = one_rule(r"{path_regex: '^/20\d\d/\d\d/'}")
    assert regex.action(req("/2020/12/investigation")) == "block"
    assert regex.action(req("/about/2020/12/")) is None


def test_query_regex() -> None:
    site = one_rule(r"{query_regex: '(^|&)(nocache|rnd)='}")
    assert site.action(req("/", query="a=1&rnd=7")) == "block"
    assert site.action(req("/", query="page=2")) is None


def test_route_class() -> None:
    site = one_rule("{route: [search, login]}")
    assert site.action(req("/", query="s=akaev")) == "block"
    assert site.action(req("/wp-login.php")) == "block"
    assert site.action(req("/article")) is None


def test_user_agent_regex_is_searched() -> None:
    site = one_rule(r"{user_agent: '(?i)python-requests|^$'}")
    assert site.action(req(ua="python-requests/2.31")) == "block"
    assert site.action(req(ua="")) == "block"
    assert site.action(req(ua=FIREFOX)) is None


def test_headers_presence_absence_and_value() -> None:
    present = one_rule("{headers: {Accept-Language: true}}")
    assert present.action(req()) == "block"
    assert present.action(req(headers=[])) is None
    absent = one_rule("{headers: {accept-language: false, X-Requested-With: false}}")
    assert absent.action(req(headers=[])) == "block"
    assert absent.action(req()) is None
    value = one_rule("{headers: {Accept: 'text/html'}}")
    assert value.action(req()) == "block"
    assert value.action(req(headers=[(b"accept", b"*/*")])) is None


def test_cookies_presence_absence_and_globs() -> None:
    logged_in = one_rule("{cookies: {'wordpress_logged_in_*': true}}")
    assert logged_in.action(req(cookie=b"a=1; wordpress_logged_in_5f3a=editor%7C1")) == "block"
    assert logged_in.action(req(cookie=b"wordpress_test_cookie=1")) is None
    assert logged_in.action(req(cookie=None)) is None
    anonymous = one_rule("{cookies: {session: false}}")
    assert anonymous.action(req(cookie=b"theme=dark")) == "block"
    assert anonymous.action(req(cookie=b"theme=dark;session=abc")) is None


def test_address_inline_cidr_and_named_lists(tmp_path: Path) -> None:
    (tmp_path / "tor.txt").write_text("# exits\n198.51.100.9\n2001:db8:dead::/48  # v6\n")
    policy = Policy.from_text(
        "lists:\n"
        "  office: ['192.0.2.10', '2001:db8:1:2::/64']\n"
        "  tor: {file: tor.txt}\n"
        "rules:\n"
        "  - {name: office, match: {address: '@office'}, action: allow}\n"
        "  - {name: tor, match: {address: ['@tor', 10.0.0.0/8]}, action: challenge}\n",
        str(tmp_path / "p.yaml"), tmp_path)
    site = Site(policy)
    assert site.action(req(client="192.0.2.10")) == "allow"
    assert site.action(req(client="192.0.2.11")) is None
    assert site.action(req(client="2001:db8:1:2::99")) == "allow"
    assert site.action(req(client="::ffff:192.0.2.10")) == "allow"
    assert site.action(req(client="198.51.100.9")) == "challenge"
    assert site.action(req(client="2001:db8:dead:1::1")) == "challenge"
    assert site.action(req(client="10.200.0.1")) == "challenge"


def test_not() -> None:
    site = one_rule("{path: '/wp-admin/*', not: {address: 192.0.2.0/24}}")
    assert site.action(req("/wp-admin/index.php", client="203.0.113.1")) == "block"
    assert site.action(req("/wp-admin/index.php", client="192.0.2.44")) is None


def test_rate_per_address_per_prefix_and_per_route_class() -> None:
    policy = compile_rules(
        "  - name: addr\n"
        "    match: {rate: {more_than: 3, in: 1m, routes: [search]}}\n"
        "    action: block\n"
        "  - name: net\n"
        "    match: {rate: {more_than: 5, in: 1m, per: prefix}}\n"
        "    action: challenge\n"
        "    scope: prefix\n")
    assert {m.id for m in policy.meters} == {"address:3/60s:search", "prefix:5/60s:all"}
    site = Site(policy)
    search = req("/", query="s=x", client="192.0.2.1")
    assert [site.action(search) for _ in range(4)] == [None, None, None, "block"]
    neighbour = req("/article", client="192.0.2.2")
    assert site.action(neighbour) is None                 # the /24 has sent 5
    verdict = site.send(neighbour, 100.0)
    assert verdict is not None and (verdict.action, verdict.scope) == ("challenge", "prefix")
    assert site.action(req("/article", client="192.0.3.1")) is None


def test_several_rates_must_all_hold() -> None:
    policy = compile_rules(
        "  - name: both\n"
        "    match:\n"
        "      rate: [{more_than: 2, in: 10s}, {more_than: 4, in: 1m, per: prefix}]\n"
        "    action: block\n")
    site = Site(policy)
    a, b = req(client="192.0.2.1"), req(client="192.0.2.2")
    assert [site.action(a) for _ in range(3)] == [None, None, None]  # address over, prefix not
    assert site.action(b) is None and site.action(b) is None       # prefix now at 5
    assert site.action(a) == "block"


def test_a_meter_filled_on_another_route_is_seen_on_this_one() -> None:
    site = Site(compile_rules(
        "  - name: login-abuser\n"
        "    match: {rate: {more_than: 3, in: 1m, routes: [login]}}\n"
        "    action: block\n"))
    for _ in range(4):
        site.send(req("/wp-login.php", method="POST"), 1.0)
    assert site.action(req("/article"), 2.0) == "block"
    assert site.action(req("/article", client="192.0.2.99"), 2.0) is None


def test_challenge_failures() -> None:
    site = one_rule("{challenge_failures: {more_than: 2}}")
    f = req()
    for now in (1.0, 2.0):
        site.clients.note_challenge_failure(f, now)
    assert site.action(f, 3.0) is None
    site.clients.note_challenge_failure(f, 3.0)
    assert site.action(f, 4.0) == "block"


def test_empty_match_matches_everything() -> None:
    site = Site(compile_rules("  - {name: all, action: tarpit, ttl: 90s}\n"))
    verdict = site.send(req(), 1.0)
    assert verdict == Verdict("tarpit", "all", "all", 90.0, "address")


# --------------------------------------------------------------------------- crawlers


def crawler_file(tmp_path: Path) -> Path:
    (tmp_path / "google.json").write_text(json.dumps({"creationTime": "x", "prefixes": [
        {"ipv4Prefix": "66.249.64.0/27"}, {"ipv6Prefix": "2001:4860:4801:10::/64"}]}))
    (tmp_path / "ddg.txt").write_text("# DuckDuckBot\n20.191.45.212\n")
    path = tmp_path / "crawlers.yaml"
    path.write_text(
        "crawlers:\n"
        "  googlebot: {user_agent: Googlebot, ranges_file: google.json, ranges: [192.178.5.0/27]}\n"
        "  duckduckbot: {user_agent: DuckDuckBot, ranges_file: ddg.txt}\n")
    return path


def test_crawler_lists_load_from_yaml_and_vendor_files(tmp_path: Path) -> None:
    crawlers = load_crawlers(crawler_file(tmp_path))
    assert crawlers.names == ("googlebot", "duckduckbot")
    for client, ua, expected in [
        ("66.249.64.5", GOOGLEBOT, "googlebot"),
        ("192.178.5.1", GOOGLEBOT, "googlebot"),
        ("2001:4860:4801:10::9", GOOGLEBOT, "googlebot"),
        ("::ffff:66.249.64.5", GOOGLEBOT, "googlebot"),
        ("66.249.64.200", GOOGLEBOT, None),                   # outside the /27
        ("20.191.45.212", "DuckDuckBot/1.1", "duckduckbot"),
        ("20.191.45.212", GOOGLEBOT, None),                   # DuckDuckGo's address, Google's UA
        ("66.249.64.5", FIREFOX, None),
    ]:
        f = req(client=client, ua=ua)
        assert crawlers.verified(f.user_agent, f.version, f.ip) == expected, (client, ua)


def test_shipped_crawler_snapshot() -> None:
    crawlers = load_crawlers()
    assert set(crawlers.names) == {"googlebot", "bingbot", "yandex", "duckduckbot", "applebot"}
    samples = [
        ("66.249.66.1", GOOGLEBOT, "googlebot"),
        ("2001:4860:4801:2a::7", GOOGLEBOT, "googlebot"),
        ("157.55.39.10", "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
         "bingbot"),
        ("95.108.213.4", "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
         "yandex"),
        ("2a02:6b8:c0e::1", "Mozilla/5.0 (compatible; YandexImages/3.0; +http://yandex.com/bots)",
         "yandex"),
        ("40.88.21.235", "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
         "duckduckbot"),
        ("17.241.208.170", "Mozilla/5.0 (Macintosh) Safari/605.1.15 (Applebot/0.1)", "applebot"),
    ]
    for client, ua, name in samples:
        f = req(client=client, ua=ua)
        assert crawlers.verified(ua, f.version, f.ip) == name, client
        other = req(client="203.0.113.50", ua=ua)
        assert crawlers.verified(ua, other.version, other.ip) is None
        assert crawlers.claimed(ua) == name
    # Yandex's browser is a reader, not a crawler.
    assert crawlers.claimed("Mozilla/5.0 (Linux) YaBrowser/24.1 Mobile Safari/537.36") is None


def test_verified_and_claimed_crawler_conditions(tmp_path: Path) -> None:
    policy = Policy.from_text(
        f"crawlers: {crawler_file(tmp_path)}\n"
        "rules:\n"
        "  - {name: real, match: {verified_crawler: [googlebot]}, action: allow}\n"
        "  - {name: fake, match: {claims_crawler: true, verified_crawler: false}, action: block}\n"
        "  - {name: ddg, match: {claims_crawler: duckduckbot}, action: challenge}\n",
        "p.yaml")
    site = Site(policy)
    assert site.action(req(client="66.249.64.1", ua=GOOGLEBOT, policy=policy)) == "allow"
    assert site.action(req(client="203.0.113.1", ua=GOOGLEBOT, policy=policy)) == "block"
    assert site.action(req(client="20.191.45.212", ua="DuckDuckBot/1.1", policy=policy)) \
        == "challenge"
    assert site.action(req(client="203.0.113.1", policy=policy)) is None


def test_claimed_crawler_memo_is_bounded() -> None:
    crawlers = load_crawlers()
    for i in range(10_000):
        crawlers.claimed(f"flood-{i}")
    assert len(crawlers.memo) <= 4096


# --------------------------------------------------------------------------- order, weights


ORDERED = """\
  - {name: note-api, match: {path: '/api/*'}, action: log, reason: api use}
  - {name: curl, match: {user_agent: '^curl/'}, weight: 4}
  - {name: no-lang, match: {headers: {Accept-Language: false}}, weight: 3}
  - {name: office, match: {address: 192.0.2.0/24}, action: allow}
  - {name: api-block, match: {path: '/api/private/*'}, action: block, ttl: 1h,
     reason: private API}
  - {name: api-block-2, match: {path: '/api/private/*'}, action: challenge}
  - {name: trusted-bonus, match: {cookies: {member: true}}, weight: -5}
thresholds:
  - {score: 9, action: block, ttl: 10m}
  - {score: 5, action: challenge, ttl: 5m, reason: looks scripted, name: scripted}
"""


def test_first_terminal_rule_wins_top_to_bottom() -> None:
    site = Site(compile_rules(ORDERED))
    verdict = site.send(req("/api/private/x"), 1.0)
    assert verdict == Verdict("block", "api-block", "private API", 3600.0, "address", 0,
                              ("note-api",))
    # The office allow comes before the block: order decides, not severity.
    assert site.action(req("/api/private/x", client="192.0.2.5")) == "allow"


def test_weights_add_up_and_the_highest_threshold_reached_decides() -> None:
    site = Site(compile_rules(ORDERED))
    curl = site.send(req(ua="curl/8.5"), 1.0)
    assert curl is None                                             # 4 < 5
    scripted = site.send(req(ua="curl/8.5", headers=[]), 1.0)
    assert scripted == Verdict("challenge", "scripted", "looks scripted", 300.0, "address", 7,
                               ("curl", "no-lang"))
    bonus = site.send(req(ua="curl/8.5", headers=[], cookie=b"member=1"), 1.0)
    assert bonus is None                                            # 4 + 3 - 5
    many = compile_rules(ORDERED.replace("weight: 3", "weight: 5"))
    verdict = Site(many).send(req(ua="curl/8.5", headers=[]), 1.0)
    assert verdict is not None and (verdict.action, verdict.rule, verdict.score) == \
        ("block", "score>=9", 9)


def test_a_terminal_rule_beats_the_score() -> None:
    site = Site(compile_rules(ORDERED))
    verdict = site.send(req(ua="curl/8.5", headers=[], client="192.0.2.9"), 1.0)
    assert verdict is not None and verdict.action == "allow" and verdict.score == 7
    assert verdict.matched == ("curl", "no-lang")


def test_log_only_match_returns_a_log_verdict() -> None:
    site = Site(compile_rules(ORDERED))
    verdict = site.send(req("/api/public"), 1.0)
    assert verdict == Verdict("log", "note-api", "api use", None, "address", 0, ("note-api",))
    assert site.send(req("/article"), 1.0) is None


def test_rules_with_a_route_condition_are_skipped_for_other_routes() -> None:
    policy = compile_rules(
        "  - {name: s, match: {route: search, rate: {more_than: 1, in: 1m}}, action: block}\n"
        "  - {name: any, match: {path: '/x'}, action: log}\n")
    assert [r.name for r in policy.rules_for("page")] == ["any"]
    assert [r.name for r in policy.rules_for("search")] == ["s", "any"]
    assert [r.name for r in policy.rules_for("no-such-class")] == ["any"]


def test_ttl_scope_and_reason_defaults() -> None:
    policy = compile_rules(
        "  - {name: a, match: {path: /a}, action: challenge, ttl: 90m, scope: prefix}\n"
        "  - {name: b, match: {path: /b}, action: block}\n")
    site = Site(policy)
    assert site.send(req("/a"), 1.0) == Verdict("challenge", "a", "a", 5400.0, "prefix")
    assert site.send(req("/b"), 1.0) == Verdict("block", "b", "b", None, "address")


def test_policy_routes_extend_the_classifier() -> None:
    policy = Policy.from_text(
        "routes:\n  - {path: '/api/search*', route: search}\n"
        "rules:\n  - {name: s, match: {route: search}, action: challenge}\n", "p.yaml")
    assert policy.classifier.classify("GET", "/api/search", "q=x") == "search"
    assert policy.classifier.classify("GET", "/robots.txt", "") == "wellknown"
    site = Site(policy)
    assert site.action(req("/api/search", policy=policy)) == "challenge"


def test_empty_policy_has_no_opinion() -> None:
    policy = Policy.from_text("", "empty.yaml")
    assert policy.rules == () and policy.meters == ()
    assert Site(policy).send(req(), 1.0) is None


# --------------------------------------------------------------------------- bad files


BAD = [
    ("rules: [\n", 2, "not valid YAML"),
    ("rule:\n  - {name: a, action: block}\n", 1, "rule: unknown key (did you mean rules?)"),
    ("version: 2\n", 1, "version: expected one of 1"),
    ("rules:\n  name: a\n", 2, "rules: expected a list"),
    ("rules:\n  - {action: block}\n", 2, "rules[0].name: missing"),
    ("rules:\n  - name: a\n    action: blok\n", 3,
     "rules[0] (a).action: expected one of allow, challenge, block, tarpit, log, got 'blok'"),
    ("rules:\n  - {name: a, action: block, weight: 3}\n", 2,
     "rules[0] (a).action: a rule has either an action or a weight"),
    ("rules:\n  - {name: a}\n", 2, "rules[0] (a).action: a rule has either"),
    ("rules:\n  - name: a\n    acton: block\n", 3, "rules[0].acton: unknown key (did you mean "
                                                   "action?)"),
    ("rules:\n  - {name: a, action: block}\n  - {name: a, action: allow}\n", 3,
     "rules[1].name: 'a' is already the name of the rule on line 2"),
    ("rules:\n  - name: a\n    action: log\n    ttl: 1h\n", 4,
     "rules[0] (a).ttl: only rules with allow, challenge, block or tarpit"),
    ("rules:\n  - name: a\n    action: block\n    ttl: soon\n", 4,
     "rules[0] (a).ttl: expected a duration"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      paths: /x\n", 5,
     "rules[0] (a).match.paths: unknown key (did you mean path?)"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      path: x\n", 5,
     "rules[0] (a).match.path: path glob 'x' must start with / or *"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      user_agent: '(curl'\n", 5,
     "rules[0] (a).match.user_agent: bad regular expression"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      route: pages\n", 5,
     "rules[0] (a).match.route: expected one of page, asset"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      address: [1.2.3.4, 300.1.1.1]\n",
     5, "rules[0] (a).match.address[1]: '300.1.1.1' does not appear to be"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      address: '@nope'\n", 5,
     "rules[0] (a).match.address[0]: no list named 'nope'"),
    ("lists:\n  office: [1.2.3.4, nonsense]\n", 2, "lists.office[1]:"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      rate: {in: 1m}\n", 5,
     "rules[0] (a).match.rate.more_than: missing"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      rate: {more_than: 0, in: 1m}\n",
     5, "rules[0] (a).match.rate.more_than: must be 1..1000000, got 0"),
    ("rules:\n  - name: a\n    action: block\n    match:\n"
     "      rate: {more_than: 5, in: 1m, per: ip}\n", 5,
     "rules[0] (a).match.rate.per: expected one of address, prefix, got 'ip'"),
    ("rules:\n  - name: a\n    action: block\n    match:\n"
     "      rate: {more_than: 5, in: 0s}\n", 5, "rules[0] (a).match.rate.in: must be longer"),
    ("rules:\n  - name: a\n    action: block\n    match:\n"
     "      rate: {more_than: 5, in: 1m, routes: [serch]}\n", 5,
     "rules[0] (a).match.rate.routes[0]: expected one of"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      path: /a\n      path: /b\n", 6,
     "rules[0] (a).match.path: appears twice"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      verified_crawler: [gogglebot]\n",
     5, "rules[0] (a).match.verified_crawler: unknown crawler 'gogglebot'"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      cookies: {session: maybe}\n", 5,
     "rules[0] (a).match.cookies.session: expected true or false"),
    ("rules:\n  - name: a\n    action: block\n    match:\n      not: {route: [page, x]}\n", 5,
     "rules[0] (a).match.not.route[1]: expected one of"),
    ("thresholds:\n  - {score: 5, action: allow}\n", 2,
     "thresholds[0].action: expected one of challenge, block, tarpit"),
    ("thresholds:\n  - {action: block}\n", 2, "thresholds[0].score: missing"),
    ("thresholds:\n  - {score: 5, action: block}\n  - {score: 5, action: challenge}\n", 2,
     "thresholds: two thresholds share a score"),
    ("routes:\n  - {path: /api/*, route: api}\n", 2, "routes[0].route: expected one of"),
    ("crawlers: /nonexistent/crawlers.yaml\n", 1, "crawlers: /nonexistent/crawlers.yaml: "
                                                  "cannot read the crawler list"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_bad_policy_errors_name_file_line_and_key(text: str, line: int, message: str) -> None:
    with pytest.raises(PolicyError) as exc:
        Policy.from_text(text, "/etc/kalkan/policy.yaml")
    assert str(exc.value).startswith(f"/etc/kalkan/policy.yaml:{line}: "), str(exc.value)
    assert message in str(exc.value), str(exc.value)


def test_from_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - name: a\n    action: block\n    match: {method: 5}\n"
                    "  - name: b\n    action: nuke\n")
    with pytest.raises(PolicyError, match=re.escape(f"{path}:6: rules[1] (b).action")):
        Policy.from_file(path)
    with pytest.raises(PolicyError, match="cannot read the policy"):
        Policy.from_file(tmp_path / "missing.yaml")


def test_bad_crawler_files_are_refused(tmp_path: Path) -> None:
    cases = [
        ("crawlers:\n  g: {ranges: [1.2.3.0/24]}\n", "c.yaml:2: crawlers.g.user_agent: missing"),
        ("crawlers:\n  g: {user_agent: G}\n", "c.yaml:2: crawlers.g: no ranges"),
        ("crawlers:\n  g: {user_agent: G, ranges: [1.2.3.0/33]}\n",
         "c.yaml:2: crawlers.g.ranges[0]"),
        ("crawlers:\n  g: {user_agent: G, ranges_file: none.json}\n",
         "c.yaml:2: crawlers.g.ranges_file: "),
        ("crawler: {}\n", "c.yaml:1: crawler: unknown key"),
    ]
    for text, message in cases:
        with pytest.raises(PolicyError) as exc:
            Crawlers.from_text(text, "c.yaml", tmp_path)
        assert str(exc.value).startswith(message), str(exc.value)


def test_yaml_scalars_are_read_as_written() -> None:
    # YAML 1.1 would turn 1:20 into 80 and `on` into true; names and addresses stay text.
    policy = compile_rules("  - {name: 1:20, match: {address: '::1', method: on}, action: log}\n")
    assert policy.rules[0].name == "1:20"
    assert Site(policy).action(req(client="::1", method="ON")) == "log"


# --------------------------------------------------------------------------- address sets


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), min_size=1,
                max_size=8),
       st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20))
def test_address_set_agrees_with_ipaddress(nets: list[tuple[int, int]], probes: list[int]) -> None:
    networks = [ipaddress.ip_network((addr, bits), strict=False) for addr, bits in nets]
    # Probe around the networks' edges too, where off-by-one errors live.
    edges = [int(n.network_address) + d for n in networks for d in (-1, 0)] + \
            [int(n.broadcast_address) + d for n in networks for d in (0, 1)]
    s = AddressSet(networks)
    for probe in probes + [e for e in edges if 0 <= e < 2**32]:
        address = ipaddress.IPv4Address(probe)
        assert s.contains(4, probe) == any(address in n for n in networks)
        assert not s.contains(6, probe)


# --------------------------------------------------------------------------- default policy


def test_default_policy_loads_and_is_the_shipped_file() -> None:
    assert default_policy_path().name == "policy.yaml"
    assert Policy.from_file(default_policy_path()).meters == DEFAULT.meters
    assert {r.name for r in DEFAULT.rules} >= {"feed-flood", "feed-busy", "verified-crawler",
                                              "login-flood", "login-burst", "search-burst",
                                              "unsafe-page"}
    # No allow rule for feeds and the like: an allow would skip the under-attack gate.
    assert not [r.name for r in DEFAULT.rules if r.action == "allow" and r.routes
                and r.routes & {"feed", "wellknown"}]


NEVER_CHALLENGED = ["/robots.txt", "/sitemap.xml", "/sitemap_index.xml", "/sitemap-posts-1.xml",
                    "/.well-known/security.txt", "/.well-known/acme-challenge/x", "/favicon.ico",
                    "/favicon.png", "/apple-touch-icon.png", "/feed", "/feed/",
                    "/category/politics/feed/", "/news.rss", "/atom.xml", "/rss"]


@pytest.mark.parametrize("path", NEVER_CHALLENGED)
def test_default_limits_but_never_challenges_feeds_robots_sitemaps_wellknown(path: str) -> None:
    site = Site(DEFAULT)
    # Even a flooding, script-looking client that failed challenges is never challenged here
    # (feed readers and crawlers cannot solve one), but it is not unlimited: tarpit, then block.
    for client in ("203.0.113.7", "2001:db8::7"):
        f = req(path, client=client, ua="", headers=[])
        assert f.route in ("feed", "wellknown"), path
        site.clients.note_challenge_failure(f, 100.0)
        verdicts = [site.send(f, 100.0 + i / 100) for i in range(1000)]  # 100 a second
        actions = [v.action if v else None for v in verdicts]
        assert "challenge" not in actions and "allow" not in actions, path
        assert actions[:110] == [None] * 110, path             # 120 a minute pass
        first_tarpit, first_block = actions.index("tarpit"), actions.index("block")
        assert 110 <= first_tarpit < first_block, (path, first_tarpit, first_block)
        assert set(actions[first_block:]) == {"block"}
        last = verdicts[-1]
        assert last is not None and (last.rule, last.ttl) == ("feed-flood", 600.0)


def test_default_lets_feed_readers_and_icon_fetching_browsers_poll_for_hours() -> None:
    site = Site(DEFAULT)
    events = []
    for minute in range(120):                         # two hours behind one address:
        start = 10_000.0 + minute * 60
        for k in range(6):                            # six feed readers, each every 10 s,
            for reader in range(6):
                events.append((start + k * 10 + reader, req(f"/category/{reader}/feed/")))
        for k in range(40):                           # and browsers asking for icons
            events.append((start + k * 1.5, req("/favicon.ico" if k % 2 else
                                                 "/apple-touch-icon.png")))
    assert play(site, events) == []


def test_default_challenges_then_blocks_a_wp_login_flood() -> None:
    site = Site(DEFAULT)
    f = req("/wp-login.php", method="POST")
    actions = [site.action(f, 100.0 + i * 0.5) for i in range(60)]
    assert actions[:10] == [None] * 10
    first_challenge = actions.index("challenge")
    first_block = actions.index("block")
    assert 10 <= first_challenge < first_block
    assert set(actions[first_challenge:first_block]) == {"challenge"}
    assert set(actions[first_block:]) == {"block"}
    verdict = site.send(f, 130.0)
    assert verdict is not None and verdict.rule == "login-flood" and verdict.ttl == 3600.0


@pytest.mark.parametrize(("path", "method", "query"), [
    ("/", "GET", "s=akaev+family"),
    ("/search", "GET", "q=kumtor"),
    ("/wp-comments-post.php", "POST", ""),
    ("/comments", "POST", ""),
    ("/xmlrpc.php", "POST", ""),
])
def test_default_is_strict_on_routes_that_reach_the_origin(path: str, method: str,
                                                           query: str) -> None:
    site = Site(DEFAULT)
    actions = [site.action(req(path, method=method, query=query), 100.0 + i * 0.2)
               for i in range(200)]
    assert actions[0] is None
    assert "challenge" in actions and actions[-1] == "block", actions


def test_default_challenges_scripts_on_dynamic_routes_only() -> None:
    site = Site(DEFAULT)
    curl = dict(ua="curl/8.5.0", headers=[(b"accept", b"*/*")])
    verdict = site.send(req("/", query="s=x", **curl), 1.0)  # type: ignore[arg-type]
    assert verdict is not None and verdict.action == "challenge" and verdict.score == 6
    assert site.action(req("/2020/12/article", **curl)) is None  # type: ignore[arg-type]
    assert site.action(req("/feed/", **curl)) is None  # type: ignore[arg-type]
    assert site.action(req("/", query="s=x", client="198.51.100.3")) is None


def test_default_allows_verified_crawlers_and_treats_impostors_like_anyone() -> None:
    site = Site(DEFAULT)
    google = req("/", query="s=x", client="66.249.66.1", ua=GOOGLEBOT)
    assert {site.action(google, 100.0 + i * 0.01) for i in range(500)} == {"allow"}
    impostor = Site(DEFAULT)
    reader = Site(DEFAULT)
    fake = req("/", query="s=x", client="203.0.113.66", ua=GOOGLEBOT)
    same = req("/", query="s=x", client="203.0.113.66")
    for i in range(200):
        v_fake, v_same = impostor.send(fake, 100.0 + i), reader.send(same, 100.0 + i)
        fake_action = None if v_fake is None or v_fake.action == "log" else v_fake.action
        same_action = None if v_same is None or v_same.action == "log" else v_same.action
        assert fake_action == same_action, i
    v = Site(DEFAULT).send(req("/article", client="203.0.113.66", ua=GOOGLEBOT), 1.0)
    assert v is not None and (v.action, v.rule) == ("log", "unverified-crawler")


def test_a_clients_plain_user_agent_is_remembered_but_never_hides_a_crawler_claim() -> None:
    # The policy keeps, per client, a keyed hash of a User-Agent that claims no crawler, so a
    # browser's agent is not scanned again at every request. A switch to a crawler's agent on
    # the same address (or the same agent under a reloaded policy) must be seen at once.
    site = Site(DEFAULT)
    browser = req("/article", client="203.0.113.66")
    assert site.send(browser, 1.0) is None
    assert site.clients.plain_agent(browser, 0) is False   # what is kept is a keyed hash
    assert site.send(req("/article", client="203.0.113.66"), 2.0) is None
    claim = site.send(req("/article", client="203.0.113.66", ua=GOOGLEBOT), 3.0)
    assert claim is not None and (claim.action, claim.rule) == ("log", "unverified-crawler")
    assert site.send(req("/article", client="203.0.113.66"), 4.0) is None
    google = req("/article", client="66.249.66.1", ua=GOOGLEBOT)
    assert Site(DEFAULT).action(google) == "allow"
    # Another policy over the same client table does not believe the first one's keys.
    other = Policy.default()
    f = req("/article", client="203.0.113.67", ua=GOOGLEBOT)
    site.clients.hit(f, 5.0)
    site.clients.note_plain_agent(f, 12345)     # whatever the first policy kept
    v = other.evaluate(f, site.clients, 5.0)
    assert v is not None and v.rule == "unverified-crawler"


def test_default_tarpits_secret_scanners() -> None:
    verdict = Site(DEFAULT).send(req("/.env"), 1.0)
    assert verdict is not None and (verdict.action, verdict.ttl) == ("tarpit", 3600.0)


def human_minute(client: str, start: float, *, pages: int, assets: int,
                 ua: str = FIREFOX) -> list[tuple[float, RequestFacts]]:
    """A reader's minute: each page followed at once by its assets, pages spread evenly."""
    events = []
    for p in range(pages):
        t = start + p * 60.0 / pages
        events.append((t, req(f"/2024/0{p % 9 + 1}/story-{p}", client=client, ua=ua)))
        for a in range(assets):
            asset = req(f"/wp-content/uploads/img-{p}-{a}.jpg", client=client, ua=ua)
            events.append((t + 0.05 + a * 0.01, asset))
    return events


def play(site: Site, events: list[tuple[float, RequestFacts]]) -> list[Verdict]:
    """Send the requests in time order; the verdicts that said something."""
    verdicts = [site.send(f, t) for t, f in sorted(events, key=lambda e: e[0])]
    return [v for v in verdicts if v is not None]


def test_default_never_challenges_a_heavy_human_reader() -> None:
    client = "198.51.100.20"
    events = []
    for minute in range(10):                          # ten minutes, 30 pages + 20 assets each
        start = 1000.0 + minute * 60
        events += human_minute(client, start, pages=30, assets=20)
        for k in range(3):                            # and some feeds, searches, a comment
            events.append((start + k, req("/feed/", client=client)))
            events.append((start + 10 + k * 5, req("/", query=f"s=word{k}", client=client)))
        events.append((start + 30, req("/wp-comments-post.php", method="POST", client=client)))
    assert play(Site(DEFAULT), events) == []


def test_default_never_challenges_a_household_sharing_one_address() -> None:
    events = []
    for minute in range(5):
        for member in range(3):                        # three busy readers behind one NAT
            events += human_minute("198.51.100.21", 2000.0 + minute * 60 + member * 7,
                                   pages=10, assets=20)
    assert play(Site(DEFAULT), events) == []


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.integers(0, 30), st.sampled_from(["203.0.113.9", "2001:db8::9"]))
def test_default_never_challenges_any_reader_within_human_rates(pages: int, assets: int,
                                                                client: str) -> None:
    events = []
    for minute in range(3):
        events += human_minute(client, 500.0 + minute * 60, pages=pages, assets=assets)
    assert play(Site(DEFAULT), events) == []


def test_default_policy_fits_the_memory_target_per_client() -> None:
    # Search requests fill both tables (address + its own prefix): the worst case per address.
    clients = ClientTable(20_000, DEFAULT.meters, seed=1)
    empty = clients.memory_bytes()
    for i in range(20_000):
        f = req("/", query="s=x", client=f"10.{i // 256 % 256}.{i % 256}.{i // 65536 + 1}")
        clients.hit(f, 1.0)
    assert clients.prefixes == 20_000
    assert (clients.memory_bytes() - empty) / len(clients) < 256


def test_the_documented_examples_compile() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
    blocks = re.findall(r"```yaml\n(.*?)```", docs.read_text(), re.S)
    compiled = 0
    for block in blocks:
        if "file:" in block or "crawlers:" in block or not re.search(r"^(rules|thresholds):",
                                                                      block, re.M):
            continue
        policy = Policy.from_text(block, "docs/policy.md")
        compiled += 1
        assert policy.rules or policy.thresholds
    assert compiled >= 3


# --------------------------------------------------------------------------- normalized routes


EVASIONS = [  # (path, query, the class the origin will treat it as)
    ("/%73earch", "q=x", "search"), ("/%73%65arch", "q=x", "search"),
    ("//search", "q=x", "search"), ("/./search", "q=x", "search"),
    ("/x/../search", "q=x", "search"), ("/x/%2e%2e/search", "q=x", "search"),
    ("/x/..%2Fsearch", "q=x", "search"), ("///./x//..//search", "q=x", "search"),
    ("/", "%73=x", "search"), ("/", "%73=", "search"), ("/", "p=1&%73=x", "search"),
    ("/", "+s=x", "search"), ("/", "s[]=x", "search"), ("/", "s%5B%5D=x", "search"),
    ("/%77p-login.php", "", "login"), ("//wp-login.php", "", "login"),
    ("/./wp-login.php", "", "login"), ("/x/../wp-login.php", "", "login"),
    ("/wp-admin/../wp-login.php", "", "login"), ("/wp-login%2Ephp", "", "login"),
    ("/..", "", "page"),
]


@pytest.mark.parametrize(("path", "query", "route"), EVASIONS)
def test_routes_are_classified_on_the_path_the_origin_routes(path: str, query: str,
                                                             route: str) -> None:
    classifier = Policy.default().classifier
    assert classifier.classify("GET", path, query) == route
    assert classifier.classify("HEAD", path, query) == route
    # The rules' path globs see the same normalized path.
    _, normalized = classifier.classify_target("GET", path, query)
    assert "%" not in normalized and "//" not in normalized and "/./" not in normalized
    assert "/../" not in normalized


@pytest.mark.parametrize(("path", "query", "route"), [
    ("/%2573earch", "", "page"),        # one decoding, as at the origin: the text "%73earch"
    ("/", "%2573=x", "page"),
    ("/", "s%3Dx", "page"),             # a parameter named "s=x", not s
    ("/", "s", "page"),                 # no value: not a WordPress search
    ("/Search", "", "page"),            # case is the origin's business: a different URL
    ("/WP-LOGIN.PHP", "", "page"),
    ("/.well-known/security.txt", "", "wellknown"),
    ("/news/a.b/..c/", "", "page"),
])
def test_normalizing_does_not_invent_routes(path: str, query: str, route: str) -> None:
    assert DEFAULT.classifier.classify("GET", path, query) == route


@pytest.mark.parametrize(("raw", "normalized"), [
    ("/a/b/c/./../../g", "/a/g"),            # RFC 3986 §5.2.4's examples
    ("/mid/content=5/../6", "/mid/6"),
    ("/a/b/..", "/a/"), ("/a/b/.", "/a/b/"), ("/..", "/"), ("/../../x", "/x"),
    ("//a///b//", "/a/b/"), ("/a//../b", "/b"),   # slashes merged first, as nginx does
    ("/%7Euser/%41", "/~user/A"), ("/a%2Fb", "/a/b"), ("/%zz%", "/%zz%"),
    ("/caf%C3%A9", "/caf\u00c3\u00a9"),      # bytes as latin-1: globs are ASCII anyway
    ("*", "*"),
])
def test_normalize_path(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized
    assert normalize_path(normalized) == normalized or "%" in raw


@pytest.mark.parametrize("path", ["/", "/news/2024/06/story/", "/.well-known/acme-challenge/t",
                                  "/assets/app.min.js", "/feed/", "/a.b/c.d"])
def test_plain_paths_take_the_memo_without_normalizing(path: str) -> None:
    classifier = Policy.default().classifier
    route, normalized = classifier.classify_target("GET", path, "")
    assert normalized is path                      # not rebuilt: the fast path
    assert classifier._memo.table[path] == (path, route)


@pytest.mark.parametrize(("path", "query", "limit", "first_block"), [
    (path, query, 20, 60) for path, query, route in EVASIONS if route == "search"
] + [(path, "", 10, 30) for path, _, route in EVASIONS if route == "login"])
def test_default_limits_evasions_like_the_route_they_hide(path: str, query: str, limit: int,
                                                          first_block: int) -> None:
    site = Site(DEFAULT)
    actions = [site.action(req(path, query=query), 100.0 + i * 0.2) for i in range(100)]
    assert actions[:limit] == [None] * limit, path
    assert "challenge" in actions and actions[-1] == "block", (path, actions)
    assert actions.index("block") >= first_block


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "PROPFIND"])
@pytest.mark.parametrize("path", ["/", "/assets/style.css", "/feed/", "/news/x/"])
def test_unsafe_methods_to_pages_are_forms_and_are_blocked_before_they_can_keep_evicting(
        method: str, path: str) -> None:
    assert DEFAULT.classifier.classify(method, path, "") == "form"
    # Three a minute stays under form-burst (5 a minute), but a reader never sends them to
    # pages: past 10 in 10 minutes the address is blocked for an hour.
    site = Site(DEFAULT)
    verdicts = [site.send(req(path, method=method), 100.0 + i * 20) for i in range(30)]
    actions = [v.action if v else None for v in verdicts]
    assert actions[:10] == [None] * 10
    assert "block" in actions, actions
    block = verdicts[actions.index("block")]
    assert block is not None and (block.rule, block.ttl) == ("unsafe-page", 3600.0)


def test_comments_at_the_same_pace_are_not_blocked_and_safe_methods_stay_pages() -> None:
    site = Site(DEFAULT)
    comments = [site.action(req("/wp-comments-post.php", method="POST"), 100.0 + i * 20)
                for i in range(30)]
    assert comments == [None] * 30
    for method in ("GET", "HEAD", "OPTIONS", "TRACE"):
        assert DEFAULT.classifier.classify(method, "/", "") == "page"
    assert DEFAULT.classifier.classify("POST", "/wp-login.php", "") == "login"
    assert DEFAULT.classifier.classify("PUT", "/wp-admin/post.php", "") == "admin"


def test_crawler_hint_words_sharing_a_start_are_checked_as_it() -> None:
    from kalkan.defense.rules import _fewer_words, load_crawlers

    assert _fewer_words({"GoogleOther", "Google-InspectionTool", "Yandex", "bot", "Duck"}) == (
        "Duck", "Google", "Yandex", "bot")
    assert _fewer_words({"Googlebot", "GoogleOther", "Googl"}) == ("Googl", "Google")
    # Every crawler's user agent still holds one of the words: none is told apart as a browser.
    crawlers = load_crawlers()
    hints = crawlers._hints
    assert hints is not None and len(hints) < 6
    for ua in ("Mozilla/5.0 (compatible; Google-InspectionTool/1.0)", "GoogleOther",
               "Mozilla/5.0 (compatible; YandexBot/3.0)", "DuckDuckBot/1.1",
               "Mozilla/5.0 (compatible; BingPreview/1.0b)"):
        assert any(h in ua for h in hints), ua


def test_a_path_condition_answers_the_same_past_its_memo() -> None:
    # Each path condition remembers its answer per path, bounded: a flood of distinct paths
    # (more than the memo holds) clears it, and every answer stays the glob's.
    site = one_rule('{path: ["/.env", "/wp-admin/*", "*.sql"]}')
    for i in range(10_000):
        client = f"198.51.{i // 250 % 200}.{i % 250 + 1}"
        path = ("/.env", f"/wp-admin/{i}", f"/dump{i}.sql", f"/story/{i}", f"/{i}.sqlx")[i % 5]
        assert site.action(req(path, client=client)) == ("block" if i % 5 < 3 else None), path
