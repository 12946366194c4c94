"""The defence over real sockets: clients from distinct loopback addresses, the shipped default
policy, standing decisions, reload, attack mode and the tarpit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from kalkan.defense.rules import default_policy_path
from support import Client, EdgeFactory, Origin, Response, access_log, port_of

UA = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) reader"}


async def get(port: int, target: str, source: str, headers: dict[str, str] | None = None,
              method: str = "GET", body: bytes = b"") -> Response:
    """One request from a chosen loopback source address (127.x.y.z is all ours)."""
    client = await Client.connect(port, local_addr=(source, 0))
    try:
        return await client.request(method, target, {**UA, **(headers or {})}, body)
    finally:
        await client.close()


async def admin(edge: object, method: str, path: str, body: object | None = None) -> Response:
    client = await Client.connect(edge.admin_address[1])  # type: ignore[attr-defined]
    data = json.dumps(body).encode() if body is not None else b""
    try:
        return await client.request(method, path, {
            "Authorization": f"Bearer {edge.admin_token}",  # type: ignore[attr-defined]
            "Content-Type": "application/json"}, data)
    finally:
        await client.close()


async def test_search_flood_is_blocked_while_another_reader_keeps_reading(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    port = port_of(edge)
    statuses = []
    for i in range(80):  # the default policy: >20 searches/min challenged, >60 blocked
        statuses.append((await get(port, f"/search?q=x{i}", "127.0.0.66")).status)
    assert statuses[0] == 200
    assert 403 in statuses
    assert statuses[-1] == 403
    # The flooding address now has a standing decision…
    blocked = await get(port, "/", "127.0.0.66")
    assert blocked.status == 403
    # …and a reader elsewhere never notices.
    for path in ("/", "/news/media-community-statement-ddos/", "/feed/", "/robots.txt"):
        resp = await get(port, path, "127.0.1.7")
        assert resp.status == 200, path
    listed = json.loads((await admin(edge, "GET", "/decisions")).body)["decisions"]
    assert any(d["target"] == "127.0.0.66" and d["origin"] == "rule" for d in listed)
    edge.pipeline.access_log.flush()
    log = Path(edge.config.access_log.path or "").read_text()
    assert '"decision":"block:' in log or '"decision":"challenge:' in log


async def test_a_reader_is_never_challenged_in_peace(origin: Origin,
                                                     make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    port = port_of(edge)
    pages = ["/", "/ru/", "/news/media-community-statement-ddos/", "/feed/",
             "/assets/style.css", "/search?q=kalkan", "/sitemap.xml", "/favicon.ico"]
    for _ in range(3):
        for path in pages:
            resp = await get(port, path, "127.0.2.9")
            assert resp.status == 200, (path, resp.status)
    assert edge.pipeline.defense.challenges.issued == 0  # type: ignore[union-attr]


async def test_manual_decisions_survive_a_restart(origin: Origin, make_edge: EdgeFactory,
                                                  tmp_path: Path) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    added = await admin(edge, "POST", "/decisions",
                        {"target": "127.0.3.0/24", "action": "block", "ttl": 3600,
                         "reason": "test"})
    assert added.status == 200
    assert (await get(port_of(edge), "/", "127.0.3.4")).status == 403
    bad = await admin(edge, "POST", "/decisions", {"target": "nonsense", "action": "block"})
    assert bad.status == 400 and b"not an IP address" in bad.body
    await edge.stop()
    again = await make_edge(origin.url, defense={"enabled": True})
    assert (await get(port_of(again), "/", "127.0.3.4")).status == 403
    deleted = await admin(again, "DELETE", "/decisions?target=127.0.3.0/24")
    assert deleted.status == 200
    assert (await get(port_of(again), "/", "127.0.3.4")).status == 200


async def test_bad_policy_reload_keeps_the_old_policy(origin: Origin, make_edge: EdgeFactory,
                                                      tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: no-robots\n    match: {path: /blocked}\n"
                      "    action: block\n")
    edge = await make_edge(origin.url, defense={"enabled": True, "policy": str(policy)})
    port = port_of(edge)
    assert (await get(port, "/blocked", "127.0.4.1")).status == 403
    policy.write_text("version: 1\nrules:\n  - name: broken\n    match: {pth: /x}\n"
                      "    action: block\n")
    resp = await admin(edge, "POST", "/reload")
    assert resp.status == 409
    message = json.loads(resp.body)["messages"][0]
    assert "policy.yaml:4" in message and "pth" in message
    assert (await get(port, "/blocked", "127.0.4.2")).status == 403  # old policy still on
    policy.write_text("version: 1\nrules: []\n")
    assert (await admin(edge, "POST", "/reload")).status == 200
    assert (await get(port, "/blocked", "127.0.4.3")).status == 404


async def test_attack_mode_challenges_unknown_clients_before_the_origin(
        origin: Origin, make_edge: EdgeFactory) -> None:
    # Behaviour scoring off: every client without a pass proves itself before a miss (with it,
    # only clients that score bad: tests/integration/test_behaviour.py).
    edge = await make_edge(origin.url, defense={"enabled": True, "behaviour": False})
    port = port_of(edge)
    assert (await get(port, "/", "127.0.5.1")).status == 200   # cached now
    resp = await admin(edge, "POST", "/attack-mode?mode=on")
    assert json.loads(resp.body)["level"] == 2
    # Cached pages are still served to everyone; uncached ones need a pass…
    assert (await get(port, "/", "127.0.5.2")).status == 200
    challenged = await get(port, "/news/zimnyaya-yarmarka-bishkek/", "127.0.5.2")
    assert challenged.status == 403 and challenged.header("X-Kalkan-Challenge") == "pow"
    # …except feeds, which are never challenged: an uncached one is refused cheaply instead.
    feed = await get(port, "/feed/", "127.0.5.2")
    assert feed.status == 503 and feed.header("Retry-After") == "120"
    assert feed.header("X-Kalkan-Challenge") is None
    await admin(edge, "POST", "/attack-mode?mode=auto")
    metrics = (await admin(edge, "GET", "/attack-mode")).body
    assert b'"mode": "auto"' in metrics


async def test_tarpit_holds_then_refuses(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True, "tarpit_delay": 1.0})
    began = time.monotonic()
    resp = await get(port_of(edge), "/.env", "127.0.6.1")  # a secrets probe: tarpit
    assert resp.status == 429
    assert time.monotonic() - began >= 0.9
    # The prober's address now has a standing tarpit decision.
    assert (await get(port_of(edge), "/", "127.0.6.1")).status == 429


async def test_pass_cookie_from_the_challenge_endpoint(origin: Origin,
                                                       make_edge: EdgeFactory,
                                                       tmp_path: Path) -> None:
    from kalkan.defense.challenge.pages import challenge_fields
    from kalkan.defense.challenge.pow import solve

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: all\n    match: {route: page}\n"
                      "    action: challenge\n")
    edge = await make_edge(origin.url, defense={"enabled": True, "policy": str(policy)})
    port = port_of(edge)
    page = await get(port, "/ru/", "127.0.7.1")
    assert page.status == 403
    challenge, difficulty, ret = challenge_fields(page.body)
    nonce = await asyncio.to_thread(solve, challenge, difficulty)
    answer = await get(port, f"/.kalkan/pow?c={challenge}&n={nonce}&r={ret}", "127.0.7.1")
    assert answer.status == 303 and answer.header("Location") == "/ru/"
    cookie = (answer.header("Set-Cookie") or "").split(";")[0]
    assert cookie.startswith("kalkan_pass=")
    assert (await get(port, "/ru/", "127.0.7.1", {"Cookie": cookie})).status == 200
    # Same prefix (dual-stack / mobile move) keeps the pass; another prefix does not.
    assert (await get(port, "/ru/", "127.0.7.200", {"Cookie": cookie})).status == 200
    assert (await get(port, "/ru/", "127.0.8.1", {"Cookie": cookie})).status == 403
    # A replayed answer is refused and counted.
    replay = await get(port, f"/.kalkan/pow?c={challenge}&n={nonce}&r={ret}", "127.0.7.1")
    assert replay.status == 403


async def test_a_pass_shared_by_a_network_is_challenged_again(origin: Origin,
                                                               make_edge: EdgeFactory) -> None:
    """pow-bots: a pass is bound to a /24 and a user agent, so bots in one network can share
    it. Past `pass_max_addresses` addresses its token meets a challenge, the decisions list
    says why, and the reader who earns a new pass reads on."""
    from kalkan.defense.challenge.pages import challenge_fields
    from kalkan.defense.challenge.pow import solve

    edge = await make_edge(origin.url, defense={"enabled": True, "pass_max_addresses": 3})
    port = port_of(edge)

    async def earn(source: str) -> str:
        await admin(edge, "POST", "/decisions", {"target": source, "action": "challenge",
                                                 "ttl": 600, "reason": "test"})
        page = await get(port, "/ru/", source)
        assert page.status == 403
        challenge, difficulty, ret = challenge_fields(page.body)
        nonce = await asyncio.to_thread(solve, challenge, difficulty)
        answer = await get(port, f"/.kalkan/pow?c={challenge}&n={nonce}&r={ret}", source)
        return (answer.header("Set-Cookie") or "").split(";")[0]

    cookie = await earn("127.0.15.1")
    for host in (1, 2, 3):  # the farmer and two more addresses in its /24: within the limit
        assert (await get(port, "/ru/", f"127.0.15.{host}", {"Cookie": cookie})).status == 200
    fourth = await get(port, "/ru/", "127.0.15.4", {"Cookie": cookie})
    assert fourth.status == 403 and fourth.header("X-Kalkan-Challenge") == "pow"
    # The token itself is challenged now, from the farmer's address too.
    assert (await get(port, "/ru/", "127.0.15.1", {"Cookie": cookie})).status == 403
    standing = json.loads((await admin(edge, "GET", "/decisions")).body)["decisions"]
    pass_id = cookie.split("=", 1)[1].split(".")[4]
    [row] = [d for d in standing if d["target"] == f"token:{pass_id}"]
    assert row["action"] == "challenge" and "more than 3 addresses" in row["reason"]
    # A reader there earns a new pass and reads on.
    fresh = await earn("127.0.15.9")
    assert fresh != cookie
    assert (await get(port, "/ru/", "127.0.15.9", {"Cookie": fresh})).status == 200
    decisions = [line["decision"] for line in access_log(edge)]
    assert "challenge:pass_limit" in decisions


async def test_defence_metrics(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True, "behaviour": False})
    port = port_of(edge)
    await admin(edge, "POST", "/decisions", {"target": "127.0.9.9", "action": "block",
                                             "ttl": 60, "reason": "metrics"})
    await get(port, "/", "127.0.9.9")
    await admin(edge, "POST", "/attack-mode?mode=on")
    await get(port, "/news/issyk-kul-village-library/", "127.0.9.10")
    text = (await get(edge.admin_address[1], "/metrics", "127.0.0.1")).body.decode()
    assert 'kalkan_decisions_total{action="block",reason="decision"} 1' in text
    assert 'kalkan_decisions_total{action="challenge",reason="attack_mode"} 1' in text
    assert "kalkan_challenges_issued_total 1" in text
    assert "kalkan_threat_level 2" in text
    assert "kalkan_decisions_standing 1" in text


async def test_a_challenge_decision_is_met_by_a_new_pass_and_tokens_can_be_refused(
        origin: Origin, make_edge: EdgeFactory) -> None:
    from kalkan.defense.challenge.pages import challenge_fields
    from kalkan.defense.challenge.pow import solve

    edge = await make_edge(origin.url, defense={"enabled": True})
    port = port_of(edge)
    await admin(edge, "POST", "/decisions", {"target": "127.0.10.0/24", "action": "challenge",
                                             "ttl": 600, "reason": "noisy network"})
    page = await get(port, "/ru/", "127.0.10.5")
    assert page.status == 403
    challenge, difficulty, ret = challenge_fields(page.body)
    nonce = await asyncio.to_thread(solve, challenge, difficulty)
    answer = await get(port, f"/.kalkan/pow?c={challenge}&n={nonce}&r={ret}", "127.0.10.5")
    cookie = (answer.header("Set-Cookie") or "").split(";")[0]
    assert (await get(port, "/ru/", "127.0.10.5", {"Cookie": cookie})).status == 200
    # The operator revokes that one pass: refused wherever it comes from.
    pass_id = cookie.split("=", 1)[1].split(".")[4]
    added = await admin(edge, "POST", "/decisions", {"target": f"token:{pass_id}",
                                                     "action": "block", "ttl": 600})
    assert added.status == 200
    assert (await get(port, "/ru/", "127.0.10.5", {"Cookie": cookie})).status == 403


async def test_limits_are_stricter_under_attack(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    port = port_of(edge)
    assert (await get(port, "/", "127.0.11.1")).status == 200  # the home page is cached now

    async def pages_until_refused(source: str) -> int:
        # A connection each: on one connection a run of identical requests is judged once
        # per 250 ms window (and counted afterwards), which would blur the count here.
        for i in range(400):
            if (await get(port, "/", source)).status != 200:
                return i
        return 400

    # The default policy challenges more than 180 pages a minute from one address; under
    # attack a client without a pass counts double, so half as many pages trip it.
    in_peace = await pages_until_refused("127.0.11.2")
    await admin(edge, "POST", "/attack-mode?mode=on")
    under_attack = await pages_until_refused("127.0.12.2")
    assert 170 <= in_peace <= 190
    assert 85 <= under_attack <= 95


async def test_identical_requests_on_one_connection_are_counted_after_the_window(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    port = port_of(edge)
    client = await Client.connect(port, local_addr=("127.0.14.2", 0))
    try:
        statuses = [(await client.request("GET", "/", UA)).status for _ in range(250)]
        await asyncio.sleep(0.6)  # past the 250 ms window: the next request is judged afresh
        statuses += [(await client.request("GET", "/", UA)).status for _ in range(2)]
    finally:
        await client.close()
    assert statuses[0] == 200
    assert statuses[-1] == 403  # the 250 pages were counted: more than 180 a minute


async def test_under_attack_an_expired_page_is_served_stale_not_challenged(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True},
                           cache={"query": {"paths": {"/_demo/*": ["*"]}}})
    port = port_of(edge)
    url = "/_demo/respond?cc=max-age%3D1&body=news"
    assert (await get(port, url, "127.0.15.1")).status == 200
    await admin(edge, "POST", "/attack-mode?mode=on")
    await asyncio.sleep(1.3)
    resp = await get(port, url, "127.0.15.2")
    assert resp.status == 200 and resp.header("X-Cache") == "STALE" and resp.body == b"news"


# --------------------------------------------------------------------------- hardening (issue 7)

RANDOM_NEVER_CHALLENGED = ("/r{i}/feed/", "/r{i}.rss", "/.well-known/r{i}", "/sitemap-r{i}.xml")


async def test_random_feed_and_wellknown_urls_are_limited_per_client_never_challenged(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True, "tarpit_delay": 0.01})
    port = port_of(edge)
    before = origin.site.stats.requests
    statuses: list[int] = []
    for i in range(800):  # one client, every URL new: each one a cache miss
        resp = await get(port, RANDOM_NEVER_CHALLENGED[i % 4].format(i=i), "127.0.20.1")
        assert resp.header("X-Kalkan-Challenge") is None, (i, resp.status)
        statuses.append(resp.status)
        if resp.status == 403:
            break
    reached = origin.site.stats.requests - before
    # 120 a minute pass (to the origin's 404), the excess is tarpitted (429), a flood blocked.
    assert statuses[:110] == [404] * 110
    assert 429 in statuses and statuses[-1] == 403
    assert set(statuses[statuses.index(429):-1]) == {429}
    assert reached == statuses.count(404) <= 130
    assert edge.pipeline.defense.challenges.issued == 0  # type: ignore[union-attr]
    # The block is a standing decision: the real feed is refused too, and so are pages.
    assert (await get(port, "/feed/", "127.0.20.1")).status == 403
    assert (await get(port, "/", "127.0.20.1")).status == 403
    # Another reader is not touched.
    assert (await get(port, "/feed/", "127.0.21.1")).status == 200


async def test_under_attack_real_feeds_come_from_the_cache_random_ones_never_reach_the_origin(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path) -> None:
    # The default policy, with the demo's programmable URL classified as a feed for the
    # stale case (an entry that expires in a second).
    policy = tmp_path / "policy.yaml"
    policy.write_text("routes:\n  - {path: '/_demo/respond*', route: feed}\n"
                      + default_policy_path().read_text())
    edge = await make_edge(origin.url, defense={"enabled": True, "policy": str(policy)},
                           cache={"query": {"paths": {"/_demo/*": ["*"]}}})
    port = port_of(edge)
    expiring = "/_demo/respond?cc=max-age%3D1&body=headlines"
    for url in ("/feed/", "/robots.txt", expiring):         # a reader in peace time
        assert (await get(port, url, "127.0.22.1")).status == 200
    await admin(edge, "POST", "/attack-mode?mode=on")
    await asyncio.sleep(1.3)
    before = dict(origin.site.stats.by_path)
    # A feed reader without a pass gets the cached copies, fresh or stale…
    for url in ("/feed/", "/robots.txt"):
        resp = await get(port, url, "127.0.22.2")
        assert resp.status == 200 and resp.header("X-Cache") == "HIT", url
    stale = await get(port, expiring, "127.0.22.2")
    assert stale.status == 200 and stale.header("X-Cache") == "STALE"
    assert stale.body == b"headlines"
    # …and random feed-shaped URLs (misses) are refused before the origin, not challenged.
    for i in range(20):
        resp = await get(port, RANDOM_NEVER_CHALLENGED[i % 4].format(i=i), "127.0.22.3")
        assert resp.status == 503 and resp.header("Retry-After") == "120", i
        assert resp.header("X-Kalkan-Challenge") is None
        assert resp.header("Cache-Control") == "no-store"
    await asyncio.sleep(0.2)  # the stale entry's background refresh may land meanwhile
    reached = {k: v - before.get(k, 0) for k, v in origin.site.stats.by_path.items()
               if v != before.get(k, 0)}
    # Only the edge's own refresh of the stale entry, nothing the feed reader asked for.
    assert all(k.startswith("/_demo/respond?") for k in reached), reached
    assert edge.pipeline.defense.challenges.issued == 0  # type: ignore[union-attr]
    decisions = [line["decision"] for line in access_log(edge)]
    assert decisions.count("refuse:attack_mode") == 20


async def test_a_challenge_decision_does_not_wave_feeds_through(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    port = port_of(edge)
    await admin(edge, "POST", "/decisions", {"target": "127.0.23.0/24", "action": "challenge",
                                             "ttl": 600, "reason": "noisy network"})
    # Pages meet the challenge; the feed reader on that network is not challenged…
    assert (await get(port, "/ru/", "127.0.23.5")).header("X-Kalkan-Challenge") == "pow"
    assert (await get(port, "/feed/", "127.0.23.5")).status == 200
    # …but it has no pass either: under attack a miss is refused, the cached feed served.
    await admin(edge, "POST", "/attack-mode?mode=on")
    assert (await get(port, "/feed/", "127.0.23.5")).status == 200
    assert (await get(port, "/r1/feed/", "127.0.23.5")).status == 503


EVASIONS = [  # (target, source): each a spelling of search or wp-login.php the origin honours
    ("/%73earch?q=k{i}", "127.0.24.1"), ("//search?q=k{i}", "127.0.24.2"),
    ("/./search?q=k{i}", "127.0.24.3"), ("/x/../search?q=k{i}", "127.0.24.4"),
    ("/?%73=k{i}", "127.0.24.5"), ("/x/..%2Fsearch?q=k{i}", "127.0.24.6"),
    ("/%77p-login.php?i={i}", "127.0.25.1"), ("//wp-login.php?i={i}", "127.0.25.2"),
    ("/./wp-login.php?i={i}", "127.0.25.3"), ("/x/../wp-login.php?i={i}", "127.0.25.4"),
]


async def test_spelling_a_route_differently_does_not_dodge_its_limits(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    port = port_of(edge)
    for target, source in EVASIONS:
        limit = 10 if "login" in target else 20   # the default policy's bursts a minute
        statuses = []
        for i in range(limit + 5):
            resp = await get(port, target.format(i=i), source)
            statuses.append((resp.status, resp.header("X-Kalkan-Challenge")))
        assert all(status != 403 for status, _ in statuses[:limit]), (target, statuses)
        assert statuses[-1] == (403, "pow"), (target, statuses)
    decisions = {line["decision"] for line in access_log(edge)}
    assert {"challenge:rule:search-burst", "challenge:rule:login-burst"} <= decisions


async def test_unsafe_methods_to_the_front_page_are_limited(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense={"enabled": True})
    port = port_of(edge)
    for n, method in enumerate(("PUT", "DELETE", "PATCH", "POST"), start=1):
        source = f"127.0.26.{n}"
        statuses = [(await get(port, "/", source, method=method, body=b"x")).status
                    for _ in range(8)]
        # More than 5 a minute is a form burst: challenged, and no longer at the origin.
        assert 403 not in statuses[:5] and statuses[5:] == [403] * 3, (method, statuses)
    assert (await get(port, "/", "127.0.27.1")).status == 200  # readers unaffected


async def test_a_challenge_rule_on_feeds_answers_429_not_a_challenge_page(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: busy-feeds\n    match: {route: [feed, "
                      "wellknown]}\n    action: challenge\n    ttl: 10m\n")
    edge = await make_edge(origin.url, defense={"enabled": True, "policy": str(policy)})
    port = port_of(edge)
    for path in ("/feed/", "/robots.txt"):
        resp = await get(port, path, "127.0.28.1")
        assert resp.status == 429 and resp.header("Retry-After") == "60", path
        assert resp.header("X-Kalkan-Challenge") is None and b"retry" in resp.body
    head = await get(port, "/feed/", "127.0.28.1", method="HEAD")
    assert head.status == 429 and head.body == b""
    # The rule's decision stands for the address: its pages meet the challenge.
    page = await get(port, "/ru/", "127.0.28.1")
    assert page.status == 403 and page.header("X-Kalkan-Challenge") == "pow"
    assert origin.site.stats.by_path.get("/feed/") is None
    assert edge.pipeline.defense.decided[("refuse", "rule")] == 3  # type: ignore[union-attr]
