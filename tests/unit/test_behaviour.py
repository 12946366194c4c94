"""Behaviour features (defense/behaviour.py), the learned score (defense/score.py), and how the
defence uses them: reader-like sequences never score bad, each kind of bot does, under attack
only bad-scored clients meet a challenge before a miss, and volume alone is not an attack."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from tests.unit.test_verdict import View

from kalkan.config import ConfigError, DefenseConfig
from kalkan.defense.attack_mode import ATTACK, ELEVATED, PEACE, AttackMode, Signals
from kalkan.defense.behaviour import FEATURES, Behaviour, new_rows
from kalkan.defense.bucket import Bucket
from kalkan.defense.challenge.tokens import COOKIE_KEY, POW, issue_pass, ua_digest
from kalkan.defense.clients import ClientTable
from kalkan.defense.engine import Defense, same_site
from kalkan.defense.facts import RequestFacts, RouteClassifier, address_facts
from kalkan.defense.null import NullDefense
from kalkan.defense.rows import WIDTH
from kalkan.defense.score import BehaviourModel, ModelError
from kalkan.defense.verdict import ALLOWED, KNOWN, SUSPECT, UNKNOWN, Action
from kalkan.observe.metrics import Metrics

MODEL = BehaviourModel.load()
CLASSIFY = RouteClassifier()
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0"
ASSETS = ("/assets/style.css", "/assets/site.js", "/assets/logo.svg", "/assets/photo.jpg")
ARTICLES = tuple(f"/news/story-{i}/" for i in range(40))

# (time, method, path, query, referred, status, reached the origin)
Step = tuple[float, str, str, str, bool, int, bool]


def scores(steps: list[Step], ua: str = UA) -> list[float]:
    """Replay one client's requests through the features and the shipped model."""
    behaviour, rows = Behaviour(), new_rows(1)
    out = []
    for t, method, path, query, referred, status, origin in steps:
        route, npath = CLASSIFY.classify_target(method, path, query)
        behaviour.observe(rows, 0, t, route, method, npath, query, ua, referred)
        out.append(MODEL.score(Behaviour().features(rows, 0)))
        behaviour.outcome(rows, 0, status, origin)
    return out


def reader(rng: random.Random, visits: int = 12, search_at: int = 5) -> list[Step]:
    """A browser: a page, its assets in a burst, a pause to read, a link followed; one search."""
    t, steps = 1000.0, []
    for k in range(visits):
        path, query = ("/", "") if k == 0 else (rng.choice(ARTICLES), "")
        if k == search_at:
            path, query = "/search", "s=election+results"
        steps.append((t, "GET", path, query, k > 0, 200, k in (0, search_at)))
        for asset in ASSETS if k == 0 else ASSETS[:2]:
            t += rng.uniform(0.01, 0.05)
            steps.append((t, "GET", asset, "", False, 200, False))
        t += rng.uniform(10.0, 60.0)
    return steps


def bot(kind: str, rng: random.Random) -> list[Step]:
    if kind == "search":
        return [(1000.0 + 2 * i, "GET", "/search", f"s={rng.random()}", False, 200, True)
                for i in range(10)]
    if kind == "cache-bust":
        return [(1000.0 + 0.5 * i, "GET", rng.choice(ARTICLES), f"p={rng.randrange(10**6)}",
                 False, 200, True) for i in range(20)]
    if kind == "post":
        return [(1000.0 + i, "POST", "/wp-login.php", "", False, 200, True) for i in range(10)]
    if kind == "hot-url":
        return [(1000.0 + 0.01 * i, "GET", "/", "", False, 200, False) for i in range(200)]
    raise AssertionError(kind)


# -- features -----------------------------------------------------------------------------------

def test_a_row_is_128_bytes_and_the_vector_is_named() -> None:
    assert WIDTH * 8 == 128  # the issue's budget for behaviour, per client
    behaviour, rows = Behaviour(), new_rows(1)
    assert Behaviour().features(rows, 0) == [0.0] * len(FEATURES)
    behaviour.observe(rows, 0, 10.0, "page", "GET", "/", "", UA, False)
    x = dict(zip(FEATURES, Behaviour().features(rows, 0), strict=True))
    assert x["page_share"] == 1.0 and x["asset_share"] == 0.0 and x["new_paths"] == 1.0
    assert x["gap_mean"] == x["gap_spread"] == -10.0   # one request: no rhythm yet


def test_counts_fade_with_a_one_minute_half_life() -> None:
    behaviour, rows = Behaviour(), new_rows(1)
    behaviour.observe(rows, 0, 1000.0, "search", "GET", "/search", "s=a", UA, False)
    behaviour.observe(rows, 0, 1060.0, "page", "GET", "/a/", "", UA, True)
    x = dict(zip(FEATURES, Behaviour().features(rows, 0), strict=True))
    # The search, a minute old, weighs half of the page just asked for.
    assert x["costly_share"] == pytest.approx(0.5 / 1.5)
    assert x["referred"] == pytest.approx(1.0)


def test_a_repeated_query_or_path_is_not_new_and_a_new_user_agent_is_a_change() -> None:
    behaviour, rows = Behaviour(), new_rows(1)
    for t in (1.0, 2.0, 3.0):
        behaviour.observe(rows, 0, t, "page", "GET", "/a/", "page=2", UA, False)
    behaviour.observe(rows, 0, 4.0, "page", "GET", "/a/", "page=2", "curl/8.0", False)
    x = dict(zip(FEATURES, Behaviour().features(rows, 0), strict=True))
    n = sum(0.5 ** ((4.0 - t) / 60.0) for t in (1.0, 2.0, 3.0, 4.0))
    assert x["new_paths"] == pytest.approx(0.5 ** (3 / 60) / n)
    assert x["new_queries"] == pytest.approx(0.5 ** (3 / 60) / n)
    assert x["ua_changes"] == pytest.approx(1 / n)


def test_slots_of_the_client_table_start_with_a_clean_row() -> None:
    table = ClientTable(capacity=1, trait_width=WIDTH, seed=1)
    behaviour = Behaviour()
    for i, client in enumerate(("192.0.2.1", "192.0.2.2")):
        ip, version, prefix = address_facts(client)
        facts = RequestFacts("GET", "h", "/", "", "page", client, ip, version, prefix, UA)
        table.hit(facts, 100.0 + i)
        slot = table.last_slot
        assert slot == 0   # one slot: the second client evicted the first
        if i == 0:
            behaviour.observe(table.traits, slot, 100.0, "search", "GET", "/s", "s=x", UA, False)
            assert Behaviour().features(table.traits, slot)[FEATURES.index("costly_share")] == 1
        else:
            assert Behaviour().features(table.traits, slot) == [0.0] * len(FEATURES)


# -- the score ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_a_reader_never_scores_bad(seed: int) -> None:
    rng = random.Random(seed)
    worst = max(scores(reader(rng, search_at=rng.randrange(1, 12))))
    assert worst < MODEL.threshold


@pytest.mark.parametrize("kind", ["search", "cache-bust", "post", "hot-url"])
def test_each_kind_of_bot_scores_bad_and_says_why(kind: str) -> None:
    steps = bot(kind, random.Random(1))
    assert scores(steps)[-1] >= MODEL.threshold
    behaviour, rows = Behaviour(), new_rows(1)
    for t, method, path, query, referred, status, origin in steps:
        route, npath = CLASSIFY.classify_target(method, path, query)
        behaviour.observe(rows, 0, t, route, method, npath, query, UA, referred)
        behaviour.outcome(rows, 0, status, origin)
    x = Behaviour().features(rows, 0)
    reasons = MODEL.explain(x)
    assert reasons and all(name in FEATURES and credit > 0 for name, credit in reasons)
    assert MODEL.reasons(x).startswith(reasons[0][0] + "=")


def test_the_explanation_adds_up_to_the_score() -> None:
    rng = random.Random(5)
    roots = sum(tree.value[0] for tree in MODEL.trees)
    for steps in (reader(rng), bot("search", rng)):
        behaviour, rows = Behaviour(), new_rows(1)
        for t, method, path, query, referred, _, _ in steps:
            route, npath = CLASSIFY.classify_target(method, path, query)
            behaviour.observe(rows, 0, t, route, method, npath, query, UA, referred)
        x = Behaviour().features(rows, 0)
        total = MODEL.base + roots + sum(MODEL.credits(x))
        assert total == pytest.approx(MODEL.log_odds(x), abs=1e-9)


def test_a_bad_model_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    shipped = json.loads(json.dumps(MODEL.meta))  # the shipped file loads and names its data
    assert "trained_on" in shipped and "held_out" in shipped
    bad = tmp_path / "model.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match="cannot read the behaviour model"):
        BehaviourModel.load(bad)
    bad.write_text(json.dumps({"format": "kalkan-behaviour-gbt/1", "features": ["volume"],
                               "base": 0, "threshold": 0.5, "trees": []}), encoding="utf-8")
    with pytest.raises(ModelError, match="retrain it"):
        BehaviourModel.load(bad)
    with pytest.raises(ConfigError, match=r"defense\.behaviour_model"):
        Defense(DefenseConfig(behaviour_model=str(bad)), tmp_path, Metrics())


# -- the defence --------------------------------------------------------------------------------

@pytest.fixture
def defense(tmp_path: Path) -> Defense:
    return Defense(DefenseConfig(), tmp_path, Metrics())


def test_under_attack_only_a_bad_scored_client_is_challenged_before_a_miss(
        defense: Defense) -> None:
    defense.attack.set_mode("on", 1000.0)
    rng = random.Random(2)
    # A reader: home page, assets, an article.
    for path in ("/", *ASSETS, ARTICLES[3]):
        view = View(path, client="198.51.100.20", referer=b"https://news.example/")
        checked = defense.check(view)
        assert checked.action is Action.ALLOW
    assert defense.before_origin(view, checked) is ALLOWED
    # A search bot beside it, at the same time.
    for _ in range(5):
        view = View("/search", client="198.51.100.21", query=f"s={rng.random()}")
        checked = defense.check(view)
    challenge = defense.before_origin(view, checked)
    assert challenge.action is Action.CHALLENGE
    assert challenge.decision.startswith("challenge:behaviour:")
    assert any(f"{name}=" in challenge.decision for name in FEATURES)
    # Its feed requests meet a 503, never a challenge page.
    feed = View("/feed/", client="198.51.100.21")
    assert defense.before_origin(feed, defense.check(feed)).action is Action.REFUSE


def test_a_bad_score_from_a_page_of_the_site_has_a_small_shared_budget(
        defense: Defense) -> None:
    # A reader who lands, fetches the assets and searches from that page at once can score
    # like a bot; with the site's page as Referer it gets one miss a minute from a budget all
    # such clients share, then the challenge as before.
    defense.attack.set_mode("on", 1000.0)
    rng = random.Random(11)
    client = "198.51.100.70"
    for path in ("/", *ASSETS):
        defense.check(View(path, client=client))
    verdicts = []
    for _ in range(16):
        view = View("/search", client=client, query=f"s={rng.random()}",
                    referer=b"https://news.example/")
        checked = defense.check(view)   # (the policy's search rate has its say first)
        verdicts.append(checked if checked.action is not Action.ALLOW
                        else defense.before_origin(view, checked))
    budget = [v.decision for v in verdicts if v.decision == "referred:behaviour_budget"]
    assert len(budget) == 1   # one a minute per client (the first searches score good)
    assert verdicts[-1].action is Action.CHALLENGE
    defense._referred_misses = Bucket(0.0, 0.0)   # spent (say, by bots forging the Referer)
    view = View("/search", client="198.51.100.71", query="s=1", referer=b"https://news.example/")
    for path in ("/", *ASSETS, "/search"):
        defense.check(View(path, client="198.51.100.71", query="s=2" if path == "/search" else ""))
    for _ in range(8):
        defense.check(View("/search", client="198.51.100.71", query=f"s={rng.random()}"))
    verdict = defense.before_origin(view, ALLOWED)
    assert verdict.action is Action.CHALLENGE


def test_a_loud_prefix_challenges_its_bots_and_not_a_reader_known_in_it(
        defense: Defense) -> None:
    # CGNAT: a botnet's searches push a /24 over the policy's per-prefix search rate. A reader
    # in the same /24 who reads like a browser and scores good searches on; the bots do not.
    rng = random.Random(12)
    reader = "198.51.100.200"
    for path in ("/", *ASSETS, ARTICLES[2]):
        defense.check(View(path, client=reader, referer=b"https://news.example/"))
    for i in range(210):
        defense.check(View("/search", client=f"198.51.100.{i % 40 + 1}",
                           query=f"s={rng.random()}"))
    bot = defense.check(View("/search", client="198.51.100.41", query="s=x"))
    assert bot.action is Action.CHALLENGE and bot.decision == "challenge:rule:search-prefix"
    verdict = defense.check(View("/search", client=reader, query="s=election",
                                 referer=b"https://news.example/"))
    assert verdict.action is Action.ALLOW and verdict.decision == "known:search-prefix"


def test_a_bot_on_a_readers_address_is_judged_apart_from_the_reader(defense: Defense) -> None:
    # CGNAT: a reader and a bot share one address. Each agent on a shared address has its own
    # row (the reader's starts from the address's history), so the bot's searches bring it the
    # challenge and the reader's next page does not.
    defense.attack.set_mode("on", 1000.0)
    rng = random.Random(9)
    client, reader_ua, bot_ua = "198.51.100.60", b"Mozilla/5.0 (Reader)", b"Mozilla/5.0 (Bot 1)"
    for path in ("/", *ASSETS, ARTICLES[3], *ASSETS[:2]):
        defense.check(View(path, client=client, user_agent=reader_ua,
                           referer=b"https://news.example/"))
    for _ in range(6):
        bot_view = View("/search", client=client, query=f"s={rng.random()}", user_agent=bot_ua)
        checked = defense.check(bot_view)
    slot = defense.clients.slot_of(defense.facts(bot_view))
    assert defense._agent_of(slot, bot_ua.decode()) >= 0      # judged by its own row
    assert defense._agent_of(slot, reader_ua.decode()) >= 0   # (the reader's: its history)
    verdict = defense.before_origin(bot_view, checked)
    assert verdict.action is Action.CHALLENGE and verdict.decision.startswith(
        "challenge:behaviour:")
    view = View(ARTICLES[5], client=client, user_agent=reader_ua,
                referer=b"https://news.example/")
    assert defense.before_origin(view, defense.check(view)) is ALLOWED


def test_a_wave_of_newcomers_costing_the_origin_proves_itself(defense: Defense) -> None:
    # Bots imitating readers: each new identity reads a page and its assets, then searches once.
    # One by one they look like readers; together they are a wave: beyond a small budget,
    # newcomers meet the challenge before their first miss (a pass lets them through).
    defense.attack.set_mode("on", 1000.0)
    verdicts = []
    for i in range(12):
        client = f"203.0.113.{i + 1}"
        for path in ("/", *ASSETS):
            defense.check(View(path, client=client, referer=b"https://news.example/"))
        view = View("/search", client=client, query="s=som")
        verdicts.append(defense.before_origin(view, defense.check(view)))
    assert verdicts[:5] == [ALLOWED] * 5
    assert all(v.action is Action.CHALLENGE and v.decision == "challenge:newcomer"
               for v in verdicts[5:])
    assert defense.newcomers.waves == 1 and defense.newcomers.refused == 7
    # A newcomer's search sent from the site's own page (its search form) reads on.
    for path in ("/", *ASSETS):
        defense.check(View(path, client="203.0.113.40", referer=b"https://news.example/"))
    view = View("/search", client="203.0.113.40", query="s=som",
                referer=b"https://news.example/news/story-1/")
    assert defense.before_origin(view, defense.check(view)) is ALLOWED
    facts = defense.facts(view)
    token = issue_pass(defense.challenges.keys, facts.prefix, ua_digest("Mozilla/5.0"), POW,
                       time.time(), 3600)
    view = View("/search", client="203.0.113.12", query="s=som",
                cookie=COOKIE_KEY + token.encode())
    assert defense.before_origin(view, defense.check(view)) is ALLOWED


def test_a_pass_buys_a_few_misses_when_behaviour_scores_bad_then_the_challenge_again(
        defense: Defense) -> None:
    # A reader whose searches brought on the challenge solves it: the page it asked for comes,
    # not the same challenge in a loop; a bot flooding on one pass gets no more than that.
    defense.attack.set_mode("on", 1000.0)
    rng = random.Random(8)
    client, ua = "198.51.100.50", b"Mozilla/5.0"
    for _ in range(5):
        view = View("/search", client=client, query=f"s={rng.random()}")
        checked = defense.check(view)
    assert defense.before_origin(view, checked).action is Action.CHALLENGE
    facts = defense.facts(view)
    token = issue_pass(defense.challenges.keys, facts.prefix, ua_digest(ua.decode()), POW,
                       time.time(), 3600)
    verdicts = []
    for _ in range(6):
        view = View("/search", client=client, query=f"s={rng.random()}",
                    cookie=COOKIE_KEY + token.encode(), user_agent=ua)
        checked = defense.check(view)
        assert checked.has_pass
        verdicts.append(defense.before_origin(view, checked))
    assert [v.decision for v in verdicts[:3]] == ["pass:behaviour_budget"] * 3
    assert all(v.action is Action.CHALLENGE for v in verdicts[3:])


def test_with_behaviour_off_every_client_without_a_pass_is_challenged(tmp_path: Path) -> None:
    defense = Defense(DefenseConfig(behaviour=False), tmp_path, Metrics())
    defense.attack.set_mode("on", 1000.0)
    view = View("/news/today", client="203.0.113.9")
    verdict = defense.before_origin(view, defense.check(view))
    assert verdict.action is Action.CHALLENGE and verdict.decision == "challenge:attack_mode"


def test_the_origin_gate_hears_who_asks_known_unknown_or_suspect(defense: Defense) -> None:
    rng = random.Random(6)
    newcomer = View(ARTICLES[1], client="198.51.100.40")
    assert defense.origin_standing(newcomer, defense.check(newcomer)) == UNKNOWN
    for path in ("/", *ASSETS, ARTICLES[2]):   # a reader: a page, its assets, a link followed
        view = View(path, client="198.51.100.41", referer=b"https://news.example/")
        checked = defense.check(view)
    assert defense.origin_standing(view, checked) == KNOWN
    for _ in range(5):                         # a search bot, in peace as under attack
        view = View("/search", client="198.51.100.42", query=f"s={rng.random()}")
        checked = defense.check(view)
    assert defense.origin_standing(view, checked) == SUSPECT
    assert NullDefense().origin_standing(view, checked) == KNOWN   # nobody judged


def test_the_tick_counts_requests_from_bad_scored_clients(defense: Defense) -> None:
    rng = random.Random(4)
    for i in range(15):   # (fewer than the default policy's 20 searches a minute)
        defense.check(View("/search", client="198.51.100.30", query=f"s={rng.random()}"))
        defense.check(View(ASSETS[i % 4] if i % 3 else ARTICLES[i % 5], client="198.51.100.31",
                           referer=b"https://news.example/"))
    defense.tick(2000.0, 0, 0, 10, 0, 0.0, 0)
    assert defense.bad_requests == pytest.approx(15)
    signals = defense.attack.signals
    assert signals is not None and signals.behaviour and signals.requests == 30


# -- the threat level ---------------------------------------------------------------------------

def _second(requests: float, bad: float, saturated: bool) -> Signals:
    return Signals(requests=requests, gate_queue=40 if saturated else 0,
                   gate_active=10 if saturated else 1, gate_limit=10,
                   origin_latency=2.0 if saturated else 0.05, origin_errors=0.0,
                   bad_requests=bad, behaviour=True)


def test_a_flash_crowd_raises_the_level_to_elevated_at_most() -> None:
    mode = AttackMode()
    for t in range(300):   # a calm baseline of 20 req/s
        mode.update(_second(20, 0, False), float(t))
    for t in range(300, 400):   # 50x the readers, the origin saturated, nobody behaving badly
        mode.update(_second(1000, 3, True), float(t))
    assert mode.level == ELEVATED


def test_bad_behaviour_raises_it_and_then_the_origin_strain_counts() -> None:
    mode = AttackMode()
    for t in range(10):
        mode.update(_second(20, 0, False), float(t))
    assert mode.level == PEACE
    for t in range(10, 20):
        mode.update(_second(400, 150, False), float(t))
    assert mode.level == ATTACK   # 150 bad req/s, 37% of the traffic
    mode2 = AttackMode()
    for t in range(10):
        mode2.update(_second(1000, 8, True), float(t))
    assert mode2.level == ATTACK  # a few bad clients, and the origin is drowning


@pytest.mark.parametrize(("referer", "same"), [
    (b"https://news.example/news/story-1/", True), (b"http://news.example", True),
    (b"https://news.example:8443/x", True), (b"https://news.example.evil.test/", False),
    (b"https://evil.test/?news.example", False), (b"news.example/", False), (None, False),
])
def test_same_site_reads_the_referers_host(referer: bytes | None, same: bool) -> None:
    assert same_site(referer, "news.example") is same
