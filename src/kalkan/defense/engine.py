"""The decide step of the request path: allowlist → standing decision → challenge pass → policy
rules and rates → attack mode, answered as immutable `Verdict`s (defense/verdict.py) that the
edge renders: the defence reads the request and never writes to it, nor renders HTTP.

The pipeline calls `check` before the cache (a refusal never touches the cache or the origin),
`before_origin` on a miss (under attack, clients whose behaviour scores bad prove themselves
before they may cost the origin anything; cached pages are served to them all the same) and
`answered` with what an answer cost (a 4xx, a trip to the origin: behaviour features). Feeds,
robots.txt, sitemaps, /.well-known/ and icons are never challenged, since feed readers and
crawlers cannot solve one, but they are not free either: rates and standing decisions apply to
them, and where a challenge would be due they are refused with a cheap 429 or 503 and a
Retry-After instead. `tick` runs once a second:
attack-mode signals, decision expiry and persistence, the firewall, client ageing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from math import trunc
from pathlib import Path
from typing import TYPE_CHECKING, Final

from kalkan.addresses import AddressSet
from kalkan.config import ConfigError, DefenseConfig
from kalkan.defense.admin import DefenseAdmin, Route
from kalkan.defense.attack_mode import ATTACK, AttackMode, Signals
from kalkan.defense.behaviour import FEATURES, Behaviour, agent_mark, new_rows
from kalkan.defense.bucket import Bucket
from kalkan.defense.challenge import ChallengeResponse, Challenges, return_url_for
from kalkan.defense.challenge.keys import KeyRing
from kalkan.defense.challenge.tokens import COOKIE_KEY
from kalkan.defense.clients import ClientTable
from kalkan.defense.decisions import SEVERITY, Decision, Decisions
from kalkan.defense.facts import (
    ASSET,
    CHALLENGE,
    FEED,
    PAGE,
    ROUTE_CLASSES,
    WELLKNOWN,
    AddressFacts,
    RequestFacts,
    link_preview,
)
from kalkan.defense.loudest import loudest
from kalkan.defense.newcomers import NewcomerWave
from kalkan.defense.passes import PassUsage
from kalkan.defense.rows import SHARED, UA_CHANGES, WIDTH, N, contains
from kalkan.defense.rules import Policy, PolicyError
from kalkan.defense.score import BehaviourModel, ModelError
from kalkan.defense.verdict import ALLOWED, KNOWN, SUSPECT, UNKNOWN, Action, RequestView, Verdict
from kalkan.memo import Memo
from kalkan.pages import Pages

if TYPE_CHECKING:
    from kalkan.defense.firewall import Firewall
    from kalkan.observe.metrics import Metrics

log = logging.getLogger("kalkan.defense")

# (Final, as the names below: compiled code reads them as constants, not from the module's
# dict at each use.)
# Feed readers and crawlers cannot solve a challenge.
_NEVER_CHALLENGED: Final = frozenset({FEED, WELLKNOWN})
_COOKIE_KEY: Final = COOKIE_KEY  # (tokens.py is not compiled: a copy held in a static)
_CONTAINS: Final = contains
_now: Final = time.time  # called from a C static, compiled: no module lookup per request
_ACTIONS = {"block": Action.BLOCK, "drop": Action.BLOCK, "tarpit": Action.TARPIT,
            "challenge": Action.CHALLENGE}
_MEMO_LIMIT: Final = 4096  # distinct decision strings remembered (rule names, operators' reasons)
_RECENT: Final = 4096  # slots of the latest requests, sampled once a second for the threat level
_SCORED_PER_TICK: Final = 512  # distinct clients scored per tick at most (the loop must not stall)
# Shared with the other edges of a cluster each second: the busiest clients (crediting one costs
# the receiver about as much as a request's meters), and at most this many requests per row.
_SHARED_CLIENTS: Final = 1000
_PASSED_KEPT: Final = 65536   # addresses remembered as having passed a challenge lately
_MAX_CREDIT: Final = 1_000_000
# On a shared address (behaviour.SHARED) each agent gets its own behaviour row, and is judged
# by it once it holds this many (decayed) requests.
_AGENT_HISTORY: Final = 3.0
_YOUNG_AGENT: Final = -2
# The features that say a client reads like a browser: it fetched a page's assets, or followed
# the site's own links.
_ASSET_SHARE: Final = FEATURES.index("asset_share")
_REFERRED: Final = FEATURES.index("referred")
# Misses under attack that link previews may cost the origin, all previews together: real
# ones are a few a second at most (a person shares a link, the platform reads it once).
_PREVIEW_MISSES_PER_S, _PREVIEW_MISSES_BURST = 5.0, 20.0
# Misses under attack a pass still buys its holder when its behaviour scores bad: a reader whose
# searches brought on a challenge and who solved it gets the page it asked for (not the same
# challenge again, in a loop), and a few more; a bot flooding on a farmed or shared pass gets
# no more than that per pass, then the challenge (a new proof of work) again.
_PASS_MISSES_PER_S, _PASS_MISSES_BURST = 6.0 / 60.0, 3.0
# Misses under attack for bad-scored clients that read like a browser and ask from one of the
# site's pages (a search right after landing), all such clients together.
_REFERRED_MISSES_PER_S, _REFERRED_MISSES_BURST = 1.0, 10.0
_REFERRED_EVERY: Final = 60.0   # seconds between two such misses of one client
_PASS_BUDGETS: Final = 8192  # passes whose budget is kept; past it the oldest go (start full)


def _static_refusal(status: int, retry_after: bytes, text: bytes) -> ChallengeResponse:
    return ChallengeResponse(status, [(b"Content-Type", b"text/plain; charset=utf-8"),
                                      (b"Cache-Control", b"no-store"),
                                      (b"Retry-After", retry_after)], text)


# What a feed reader or crawler gets instead of a challenge it could not solve: statuses and a
# Retry-After that feed readers and search engines read as "later", never as "gone".
_SLOW_DOWN = _static_refusal(429, b"60", b"Too many requests from this address. Please retry "
                                         b"in a minute.\n")
_BUSY = _static_refusal(503, b"120", b"The site is under heavy load and serves only what it "
                                     b"has cached. Please retry in a few minutes.\n")


def _reads(x: list[float]) -> bool:
    """A feature vector of a client that reads like a browser: it fetched a page's assets, or
    followed the site's links."""
    return x[_ASSET_SHARE] > 0.0 or x[_REFERRED] > 0.0


def same_site(referer: bytes | None, host: str) -> bool:
    """Whether the Referer names a page of this host (scheme://host[:port]/...)."""
    if not referer:
        return False
    rest = referer[8:] if referer.startswith(b"https://") else \
        referer[7:] if referer.startswith(b"http://") else None
    if rest is None:
        return False
    name = host.encode("latin-1")
    if not rest.startswith(name):
        return False
    end = rest[len(name):len(name) + 1]
    return end in (b"", b"/", b":", b"?", b"#")


class Defense:
    """Who gets through: owns the client table, policy, decisions, challenges, attack mode."""

    def __init__(self, config: DefenseConfig, state_dir: str | Path, metrics: Metrics,
                 pages: Pages | None = None) -> None:
        self.config = config
        self.pages = pages or Pages()
        self.metrics = metrics
        state = Path(state_dir)
        self.policy = self._load_policy()
        self.model = self._load_model() if config.behaviour else None
        self.threshold = (config.behaviour_threshold or self.model.threshold) \
            if self.model is not None else 1.0
        self.behaviour = Behaviour()
        self.clients = ClientTable(config.clients, self.policy.meters, config.prefix_v4,
                                   config.prefix_v6, trait_width=WIDTH if self.model else 0)
        # Slots of the latest requests (a ring): the tick scores who sent them.
        # (A list, not an array: compiled, a list item is written without a generic call.)
        self._recent: list[int] = [-1] * _RECENT
        self._recent_at = 0
        self._before = new_rows(1)   # a row as it was before its agent changed (see _observe)
        self._observed = 0        # requests whose behaviour was counted since the last tick
        self.bad_requests = 0.0   # the last tick's estimate, for the dashboard
        self._preview_misses = Bucket(_PREVIEW_MISSES_PER_S, _PREVIEW_MISSES_BURST)
        self._pass_misses: Memo[str, Bucket] = Memo(_PASS_BUDGETS)
        self._referred_misses = Bucket(_REFERRED_MISSES_PER_S, _REFERRED_MISSES_BURST)
        # client + agent -> its last referred miss
        self._referred_last: Memo[str, float] = Memo(_PASS_BUDGETS)
        self.newcomers = NewcomerWave()
        self._arrivals = 0        # the client table's arrivals at the last tick
        self.decisions = Decisions(state / "decisions.json",
                                   client_prefix_len=(config.prefix_v4, config.prefix_v6))
        self.decisions_loaded = self.decisions.load(time.time())
        self.keys = KeyRing.load_or_create(Path(config.key_file) if config.key_file
                                           else state / "keys.json")
        self.challenges = Challenges(self.keys, pass_ttl=config.pass_ttl,
                                     nojs_delay=config.nojs_delay, pages=self.pages)
        self.attack = AttackMode()
        self.attack.set_mode(config.attack_mode, time.time())
        self.allow = AddressSet.from_texts(config.allow)
        self.firewall = self._make_firewall() if config.firewall.enabled else None
        firewall = self.firewall
        self._fw_thread: threading.Thread | None = None
        self.addresses = AddressFacts(config.prefix_v4, config.prefix_v6)
        self.passes = PassUsage(config.pass_max_addresses, config.pass_max_per_minute)
        # Documents served at a path under /.well-known/ (the alliance feed): path -> its
        # current body and ETag. And who passed a challenge lately (never shared with allies).
        self.published: dict[str, Callable[[], tuple[bytes, str]]] = {}
        self.passed_recently: Memo[str, float] = Memo(_PASSED_KEPT)  # the oldest go first
        self.admin = DefenseAdmin(self.decisions, self.attack, self.save)
        self._verdicts: Memo[tuple[Action, str, int, str], Verdict] = Memo(_MEMO_LIMIT)
        self._dirty = self.decisions_loaded > 0
        self._last_save = 0.0
        self._save_problem: str | None = None
        self._last_counts: tuple[int, float, int] = (0, 0.0, 0)
        self.requests = 0   # requests decided since the last tick (attack mode's rate signal)
        self.decided: Counter[tuple[str, str]] = metrics.decisions
        self.decisions.on_change.append(self._decision_changed)
        m = metrics
        m.gauge("kalkan_threat_level", "Threat level: 0 peace, 1 elevated, 2 attack, 3 severe.",
                lambda: self.attack.level)
        m.counter("kalkan_threat_changes_total", "Threat level changes since start.",
                  lambda: self.attack.changes)
        m.counter("kalkan_challenges_issued_total", "Challenge pages sent.",
                  lambda: self.challenges.issued)
        m.counter("kalkan_challenges_passed_total", "Challenges passed.",
                  lambda: self.challenges.passed)
        m.counter("kalkan_challenges_failed_total", "Challenge answers that failed.",
                  lambda: self.challenges.failed)
        m.labeled_counter("kalkan_challenges_total", "Challenges by outcome: issued (pages "
                          "sent), passed, failed, expired (a genuine answer that came too late).",
                          "outcome", self._challenge_outcomes)
        # Requests judged, by route class: pages counted in a native field (most requests are
        # pages; a dictionary increment cost ~570 instructions), the rest in the dictionary.
        self._pages_judged = 0
        self._routes_judged: dict[str, int] = {}
        m.labeled_counter("kalkan_route_requests_total", "Requests judged by the defence, by "
                          "route class (page, asset, feed, search, ...).", "route",
                          self._route_counts)
        self.talkers = m.talkers
        self._unsampled = 0  # requests since a user agent was last fed to the talkers sketch
        self._talkers_every = self.talkers.every  # kept here: a native int for the check
        m.gauge("kalkan_bad_behaviour_requests", "Requests in the last second from clients whose "
                "behaviour scores bad (estimated from a sample; 0 when behaviour scoring is off).",
                lambda: self.bad_requests)
        m.counter("kalkan_newcomer_waves_total", "Waves of new clients costing the origin under "
                  "attack (each made newcomers prove themselves before a miss).",
                  lambda: self.newcomers.waves)
        m.counter("kalkan_newcomers_challenged_total", "Misses of new clients challenged during "
                  "a newcomer wave.", lambda: self.newcomers.refused)
        m.gauge("kalkan_decisions_standing", "Standing decisions.", lambda: len(self.decisions))
        m.gauge("kalkan_clients_tracked", "Client addresses tracked.", lambda: len(self.clients))
        if firewall is not None:
            m.gauge("kalkan_nftables_v4_entries", "Entries in the nftables IPv4 drop set.",
                    lambda: firewall.sizes()[0])
            m.gauge("kalkan_nftables_v6_entries", "Entries in the nftables IPv6 drop set.",
                    lambda: firewall.sizes()[1])

    def _make_firewall(self) -> Firewall:
        from kalkan.defense.firewall import Firewall

        ok, why = Firewall.available()
        if not ok:
            raise ConfigError(f"defense.firewall.enabled: kernel drops are not available here: "
                              f"{why}")
        return Firewall(self.config.firewall.table,
                        prefix_lengths=(self.config.prefix_v4, self.config.prefix_v6),
                        protected=self.config.allow)

    def start(self) -> None:
        """Create the nftables table (replacing a leftover) and load standing drops into it."""
        if self.firewall is not None:
            self.firewall.start()
            now = time.time()
            for d in self.decisions.all(now):
                self._decision_changed(d, d.target)

    def _count_route(self, route: str, n: int) -> None:
        if route == PAGE:
            self._pages_judged += n
        else:
            self._routes_judged[route] = self._routes_judged.get(route, 0) + n

    def _route_counts(self) -> dict[str, float]:
        counts: dict[str, float] = dict(self._routes_judged)
        if self._pages_judged:
            counts[PAGE] = self._pages_judged
        return counts

    def _challenge_outcomes(self) -> dict[str, float]:
        c = self.challenges
        return {"issued": c.issued, "passed": c.passed, "failed": c.failed, "expired": c.expired}

    def _load_model(self) -> BehaviourModel:
        try:
            return BehaviourModel.load(self.config.behaviour_model)
        except ModelError as exc:
            raise ConfigError(f"defense.behaviour_model: {exc}") from exc

    def _load_policy(self) -> Policy:
        return Policy.from_file(self.config.policy) if self.config.policy else Policy.default()

    # -- facts ----------------------------------------------------------------------------------
    def facts(self, view: RequestView) -> RequestFacts:
        return self.facts_of(view.method, view.host, view.path, view.query, view.client,
                             view.client_ip, view.user_agent, view.headers, view.cookie,
                             view.referer)

    def facts_of(self, method: str, host: str, path: str, query: str, client: str,
                 client_ip: tuple[int, int] | None, user_agent: bytes | None,
                 headers: list[tuple[bytes, bytes]], cookie: bytes | None,
                 referer: bytes | None) -> RequestFacts:
        """The facts of a request from its fields (`check_request` says why fields)."""
        ip, version, prefix = self.addresses.of_parsed(client_ip[0], client_ip[1]) \
            if client_ip is not None else self.addresses(client)
        route, npath = self.policy.classifier.classify_target(method, path, query)
        return RequestFacts(method, host, npath, query, route, client, ip, version, prefix,
                            user_agent.decode("latin-1") if user_agent else "", headers,
                            cookie, referer)

    # -- what the edges of a cluster share (kalkan.cluster) ------------------------------------
    def counts_to_share(self, limit: int = _SHARED_CLIENTS) -> list[tuple[str, str, int]]:
        """The busiest clients since the last call: (address, route class, requests)."""
        return self.clients.counts_to_share(limit)

    def credit(self, rows: list[tuple[str, str, int]], now: float) -> int:
        """Count requests other edges served (`counts_to_share` there) in this edge's meters,
        so a client's limits hold over all the edges together; returns the rows counted."""
        counted = 0
        for client, route, n in rows:
            if route not in ROUTE_CLASSES or not 0 < n <= _MAX_CREDIT:
                continue
            ip, version, prefix = self.addresses(client)
            if prefix == "invalid":
                continue
            self.clients.credit(RequestFacts("GET", "", "", "", route, client, ip, version,
                                             prefix, ""), now, n)
            counted += 1
        return counted

    # -- what the dashboard and the alerts read (NullDefense answers the same) ----------------
    def threat_report(self) -> dict[str, object]:
        """The threat level, how it is set, and what each signal scored in the last second."""
        return self.admin.threat()

    def standing(self) -> list[dict[str, object]]:
        """The decisions in force, as JSON-able rows."""
        return self.admin.standing()

    def loudest(self, now: float, n: int = 5) -> list[dict[str, str]]:
        """Who is attacking right now, with why (defense/loudest.py)."""
        return loudest(self.decisions, self.clients, self.policy.meters, self.addresses, now, n)

    # -- the request path -----------------------------------------------------------------------
    @property
    def threat_level(self) -> int:
        """0 peace, 1 elevated, 2 attack, 3 severe: the cache stretches its grace with it."""
        return self.attack.level

    def check(self, view: RequestView) -> Verdict:
        """Decide before the cache; an ALLOW verdict lets the request go on to the cache."""
        return self.check_request(view, view.method, view.host, view.path, view.query,
                                  view.client, view.client_ip, view.user_agent, view.headers,
                                  view.cookie, view.referer)

    def check_request(self, view: RequestView, method: str, host: str, path: str, query: str,
                      client: str, client_ip: tuple[int, int] | None,
                      user_agent: bytes | None, headers: list[tuple[bytes, bytes]],
                      cookie: bytes | None, referer: bytes | None) -> Verdict:
        """`check`, with the fields the defence reads handed over as values: compiled, reading
        them from `view` is a generic attribute lookup each (the defence knows the request
        only as a RequestView), ~1,400 instructions a request; the edge reads its own request
        natively. `view` is still what challenge pages and the tarpit are made from."""
        now = _now()
        facts = self.facts_of(method, host, path, query, client, client_ip, user_agent,
                              headers, cookie, referer)
        self.requests += 1
        self._count_route(facts.route, 1)
        self._unsampled += 1
        if self._unsampled >= self._talkers_every:
            self._unsampled = self.talkers.restart()
            self.talkers.agent(facts.user_agent)
        if facts.route == CHALLENGE:
            return self._endpoint(view, facts, now)
        if facts.route == WELLKNOWN and self.published:
            document = self.published.get(facts.path)
            if document is not None:
                # Judged as any request first (standing decisions, rates): the document may be
                # large, and must not become a way to make this edge send it over and over.
                verdict = self._judge(view, facts, now)
                return self._publish(document, facts) if verdict.action is Action.ALLOW \
                    else verdict
        return self._judge(view, facts, now)

    def _judge(self, view: RequestView, facts: RequestFacts, now: float) -> Verdict:
        """`check` past the endpoints it answers itself: allowlist, standing decisions, the
        pass, rates and rules."""
        if self.allow and self._allowlisted(facts):
            return self._allowed("allow:allowlist", False)
        # Most readers hold no pass: told by one substring search here (in C: bytes `in` tries
        # the argument as an int first, raising and clearing a TypeError, and bytes.find
        # builds an argument tuple; ~1,000 instructions either way), without a call into the
        # interpreted challenge code.
        cookie = facts.cookie
        pass_ = self.challenges.valid_pass(facts, now) \
            if cookie is not None and _CONTAINS(cookie, _COOKIE_KEY) else None
        standing = self.decisions.lookup(facts.client, facts.prefix, now,
                                         pass_.id if pass_ is not None else None)
        if standing is not None and standing.action != "allow" and not (
                standing.action == "challenge" and pass_ is not None
                and pass_.expires - self.config.pass_ttl >= standing.created - 1.0
                and standing.target != "token:" + pass_.id):
            # (A challenge decision is met by a pass earned after it was made; passes carry
            # whole-second expiry times, hence the second of slack.)
            if standing.action == "challenge" and facts.route in _NEVER_CHALLENGED:
                # No challenge page for a feed reader, and no free pass either: it is judged by
                # the rates below as a client without a pass (so refused on a miss under attack).
                pass_ = None
            else:
                return self._apply(standing.action, f"decision:{standing.reason}", view, facts,
                                   now, strike=standing.action in ("block", "drop"))
        has_pass = pass_ is not None
        if pass_ is not None:
            over = self.passes.note(pass_.id, facts.ip, now)
            if over:
                # The token, wherever it comes from, meets a challenge until the pass would
                # have expired: whoever shares it must earn a new one.
                self.passes.forget(pass_.id)
                self.decisions.add("token:" + pass_.id, "challenge",
                                   max(pass_.expires - now, 60.0), over, "detector", now)
                return self._apply("challenge", "pass_limit", view, facts, now)
        # Stricter limits under attack: a client that has not proven itself counts double in
        # every rate meter, so each limit in the policy is halved for it.
        policy = self.policy
        key = policy.agent_key(facts.user_agent)
        self.clients.hit(facts, now, 2 if not has_pass and self.attack.level >= ATTACK else 1,
                         key)
        if self.model is not None:
            self._observe(view, facts, now, 1)
        verdict = policy.evaluate(facts, self.clients, now, key)
        if verdict is not None and verdict.action not in ("log", "allow"):
            if verdict.action == "challenge" and has_pass:
                return self._allowed(f"pass:{verdict.rule}", True)
            if verdict.action == "challenge" and verdict.rule in self.policy.prefix_rated \
                    and self._known_reader(facts):
                # A loud prefix (CGNAT: readers share it with bots) is no reason to challenge
                # a client who reads like a browser and scores good.
                return self._allowed(f"known:{verdict.rule}", False)
            if verdict.ttl:
                target = facts.client if verdict.scope == "address" else facts.prefix
                why = f"rule {verdict.rule}: {verdict.reason}"
                self.decisions.add(target, verdict.action, verdict.ttl, why, "rule", now)
                if pass_ is not None:
                    # A bot that solved the proof-of-work loses its pass too, not only its
                    # address: the token is refused from anywhere until the decision ends.
                    self.decisions.add("token:" + pass_.id, verdict.action, verdict.ttl, why,
                                       "rule", now)
            return self._apply(verdict.action, f"rule:{verdict.rule}", view, facts, now,
                               strike=verdict.action == "block")
        if has_pass:
            return self._allowed("pass", True)
        return self._allowed(f"allow:{verdict.rule}", False) if verdict else ALLOWED

    def count(self, view: RequestView, n: int) -> None:
        """Requests let through by a per-connection standing verdict, counted afterwards."""
        now = _now()
        self.requests += n
        facts = self.facts(view)
        self._count_route(facts.route, n)
        self.clients.hit(facts, now, n)
        if self.model is not None:
            self._observe(view, facts, now, n)

    def _observe(self, view: RequestView, facts: RequestFacts, now: float, n: int) -> None:
        """Behaviour features of the request just counted (its client's slot is the last)."""
        slot = self.clients.last_slot
        referred = False
        if facts.route == PAGE:
            ref = facts.referer
            referred = ref is not None and _CONTAINS(ref, facts.host.encode("latin-1"))
        ua = facts.user_agent
        said = self.behaviour.observe(self.clients.traits, slot, now, facts.route,
                                      facts.method, facts.path, facts.query, ua, referred, n,
                                      self._before)
        if said != 0.0:
            # A shared address: each agent on it also has its own row, judged on its own.
            clients = self.clients
            if said > 0.0:
                # Another agent: the address's row so far is the previous agent's history
                # (all of it, the first time), so that agent starts its own row from it: a
                # reader whose address a bot starts using keeps its past.
                g, created = clients.agent_slot(slot, said, now, True)
                if created:
                    clients.agent_traits[g * WIDTH:(g + 1) * WIDTH] = self._before
            g, _ = clients.agent_slot(slot, agent_mark(ua), now, True)
            if g >= 0:
                self.behaviour.observe(clients.agent_traits, g, now, facts.route,
                                       facts.method, facts.path, facts.query, ua, referred, n)
        self._observed += n
        at = self._recent_at
        self._recent[at] = slot
        self._recent_at = at + 1 if at + 1 < _RECENT else 0

    def _agent_of(self, slot: int, user_agent: str) -> int:
        """The agent row of this User-Agent when the address in `slot` is shared and the agent
        has a row with some history; -1 when the address is not shared (its row speaks for
        it); _YOUNG_AGENT when it is and this agent is new on it (too young to judge alone: a
        bot rotating agents is judged by the address's row, and counts as a newcomer)."""
        traits = self.clients.traits
        base = slot * WIDTH
        if not traits[base + UA_CHANGES] > SHARED * traits[base + N]:
            return -1
        g, _ = self.clients.agent_slot(slot, agent_mark(user_agent), 0.0, False)
        if g < 0 or self.clients.agent_traits[g * WIDTH + N] < _AGENT_HISTORY:
            return _YOUNG_AGENT
        return g

    def answered(self, view: RequestView, status: int, origin: bool) -> None:
        """What the answer to an allowed request cost: a 4xx, a trip to the origin."""
        if self.model is None:
            return
        parsed = view.client_ip
        if parsed is None:
            return
        slot = self.clients.recent_slot(parsed[0], parsed[1])
        if slot >= 0:
            self.behaviour.outcome(self.clients.traits, slot, status, origin)
            if origin or 400 <= status < 500:
                ua = view.user_agent
                g = self._agent_of(slot, ua.decode("latin-1") if ua is not None else "")
                if g >= 0:
                    self.behaviour.outcome(self.clients.agent_traits, g, status, origin)

    def behaviour_of(self, facts: RequestFacts) -> tuple[float, str] | None:
        """(score, top reasons when bad) of this client, or None (not tracked, or scoring
        off)."""
        judged = self._judged(facts)
        if judged is None:
            return None
        model, x, score = judged
        return score, (model.reasons(x) if score >= self.threshold else "")

    def _judged(self, facts: RequestFacts) -> tuple[BehaviourModel, list[float], float] | None:
        """The model, this client's feature vector and its score; None when scoring is off or
        the client is not tracked."""
        model = self.model
        if model is None:
            return None
        slot = self.clients.slot_of(facts)
        if slot < 0:
            return None
        g = self._agent_of(slot, facts.user_agent)
        x = self.behaviour.features(self.clients.agent_traits, g) if g >= 0 else \
            self.behaviour.features(self.clients.traits, slot)
        return model, x, model.score(x)

    def origin_standing(self, view: RequestView, checked: Verdict) -> int:
        """Who asks the origin, for its gate (asked only when the gate is contended): KNOWN
        for the allowlist, verified crawlers and policy allow rules, and for clients whose
        behaviour scores good and who read like a browser (fetch a page's assets or follow the
        site's links); SUSPECT when the behaviour scores bad; UNKNOWN for the rest (new
        clients, pass holders that do not read). Without behaviour scoring, pass holders are
        known."""
        if checked.action is not Action.ALLOW:
            return SUSPECT
        if checked.decision.startswith("allow:"):
            return KNOWN
        if self.model is None:
            return KNOWN if checked.has_pass else UNKNOWN
        judged = self._judged(self.facts(view))
        if judged is None:
            return UNKNOWN
        if judged[2] >= self.threshold:
            return SUSPECT
        # (Not a pass alone: bots farm them. A reader with one reads like one anyway.)
        return KNOWN if _reads(judged[1]) else UNKNOWN

    def _known_reader(self, facts: RequestFacts) -> bool:
        """Does this client score good and read like a browser (see origin_standing)?"""
        judged = self._judged(facts)
        return judged is not None and judged[2] < self.threshold and _reads(judged[1])

    def _bad_share(self) -> float:
        """Of the latest requests (up to _RECENT), the share sent by clients scoring bad; each
        distinct client scored once (at most _SCORED_PER_TICK of them)."""
        model = self.model
        if model is None:
            return 0.0
        counts: dict[int, int] = {}
        for slot in self._recent:
            if slot >= 0:
                counts[slot] = counts.get(slot, 0) + 1
        if not counts:
            return 0.0
        traits, features = self.clients.traits, self.behaviour.features
        bad = total = 0
        for k, (slot, n) in enumerate(counts.items()):
            if k >= _SCORED_PER_TICK:
                break
            total += n
            if model.score(features(traits, slot)) >= self.threshold:
                bad += n
        return bad / total if total else 0.0

    def before_origin(self, view: RequestView, checked: Verdict) -> Verdict:
        """On a cache miss under attack: clients whose behaviour scores bad (with behaviour
        scoring off: all clients without a pass) pass a challenge before the origin, and so do
        clients first seen during a wave of newcomers that cost the origin (defense/newcomers.py).

        `checked` is what `check` said about this request. Feeds, robots.txt, sitemaps and the
        like are refused instead (503, Retry-After): a real one is served from the cache, fresh
        or stale, before this is asked; a miss there is a URL nobody has fetched lately, which
        is what a random-URL flood is made of.
        """
        if (self.attack.level == 0 or checked.action is not Action.ALLOW
                or checked.decision.startswith("allow:")
                or (checked.has_pass and self.model is None)):
            return ALLOWED
        if self.model is not None and self.attack.level < ATTACK:
            # `elevated` (volume, a struggling origin: no bad behaviour) stretches the
            # cache's grace and challenges nobody.
            return ALLOWED
        facts = self.facts(view)  # only under attack, on a miss: not worth keeping per request
        if facts.route in _NEVER_CHALLENGED:
            return ALLOWED if checked.has_pass else self._refuse(_BUSY, "attack_mode")
        if self.model is None:
            return self._apply("challenge", "attack_mode", view, facts, time.time())
        # A pass proves a browser solved a challenge once, not how it behaves since: a bot
        # that farms passes (or shares one) and floods misses scores bad like any other.
        # Only a client behaving like a bot proves itself first; readers read on.
        judged = self._judged(facts)
        now = time.time()
        referred = same_site(view.referer, facts.host)
        if judged is None or judged[2] < self.threshold:
            if checked.has_pass or referred or facts.route == ASSET or \
                    self.newcomers.admit(self._first_seen(facts, now), now):
                # (A request sent from one of the site's pages, a form or a link, is a
                # reader's: a newcomer's burst of misses is not, and neither are bots so far.
                # An asset is cheap for the origin, and a query string cannot bust it.)
                return ALLOWED
            # A newcomer during a wave of them (defense/newcomers.py): it proves itself once.
            why = "newcomer"
        else:
            model, x, _ = judged
            why = f"behaviour:{model.reasons(x)}"
            if referred and x[_ASSET_SHARE] > 0.0 and self._referred_miss(facts, now):
                # A browser that fetched a page's assets and searches from that page at once
                # can score like an imitating bot: one such miss a minute per client, a few
                # for all together, spare it the challenge (a bot forging the Referer gets
                # one, then drains the rest).
                return self._allowed("referred:behaviour_budget", False)
        if facts.route == PAGE and link_preview(facts.user_agent):
            # A shared link's preview cannot solve a challenge: it gets the page (cached or
            # stale copies were served before this is asked). Anyone can claim to be one, so
            # all previews together have a small budget of misses; beyond it, a 503.
            if self._preview_misses.take(now):
                return self._allowed("allow:link_preview", False)
            return self._refuse(_BUSY, "link_preview")
        if checked.has_pass and self._pass_buys_miss(facts, now):
            return self._allowed("pass:behaviour_budget", True)
        return self._apply("challenge", why, view, facts, now)

    def _referred_miss(self, facts: RequestFacts, now: float) -> bool:
        """Does this bad-scored client still have its referred miss (_REFERRED_*)?"""
        last = self._referred_last
        key = f"{facts.client} {facts.user_agent}"
        if now - last.table.get(key, 0.0) < _REFERRED_EVERY or not self._referred_misses.take(now):
            return False
        last.put(key, now)
        return True

    def _first_seen(self, facts: RequestFacts, now: float) -> int:
        """When this client was first seen (whole seconds): its address's, or now for an agent
        new on a shared address (a bot starting on a reader's address is a newcomer there)."""
        slot = self.clients.slot_of(facts)
        if slot < 0 or self._agent_of(slot, facts.user_agent) == _YOUNG_AGENT:
            return trunc(now)
        return self.clients.first_seen(slot)

    def _pass_buys_miss(self, facts: RequestFacts, now: float) -> bool:
        """Does this request's pass still have a miss in its budget (_PASS_MISSES_*)?"""
        pass_ = self.challenges.valid_pass(facts, now)
        if pass_ is None:
            return False
        budgets = self._pass_misses
        bucket = budgets.table.get(pass_.id)
        if bucket is None:
            bucket = budgets.put(pass_.id, Bucket(_PASS_MISSES_PER_S, _PASS_MISSES_BURST))
        return bucket.take(now)

    def _allowlisted(self, facts: RequestFacts) -> bool:
        return facts.ip != 0 and self.allow.contains(facts.version, facts.ip)

    def _shared(self, action: Action, decision: str, has_pass: bool = False, status: int = 0,
                headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes = b"",
                lang: str = "") -> Verdict:
        """The one verdict object for a decision that carries nothing per request (but its
        page's language): a flood's hot path builds no verdict, and the edge's memo of rendered
        bytes keys on it."""
        key = (action, decision, status, lang)
        verdict = self._verdicts.table.get(key)
        if verdict is None:  # bounded: operators' reasons are free text
            verdict = self._verdicts.put(
                key, Verdict(action, decision, has_pass, status, headers, body))
        return verdict

    def _allowed(self, decision: str, has_pass: bool) -> Verdict:
        # The decision string says whether the client holds a pass ("pass", "pass:<rule>").
        return self._shared(Action.ALLOW, decision, has_pass)

    def _apply(self, action: str, reason: str, view: RequestView, facts: RequestFacts,
               now: float, strike: bool = False) -> Verdict:
        if action == "challenge" and facts.route in _NEVER_CHALLENGED:
            return self._refuse(_SLOW_DOWN, reason)
        source, _, name = reason.partition(":")
        self.decided[(action, source)] += 1
        if source == "rule":
            self.metrics.rule_decisions[(action, name)] += 1
        decision = f"{action}:{reason}"
        if strike:
            self.decisions.strike(facts.client, action, now)
        kind = _ACTIONS.get(action, Action.BLOCK)
        if kind is Action.CHALLENGE:
            ret = return_url_for(view.method, view.path, view.query, view.host,
                                 view.header(b"referer"))
            page = self.challenges.page(facts, now, self.attack.level, ret, view.scheme)
            return Verdict(Action.CHALLENGE, decision, False, page.status, tuple(page.headers),
                           page.body)
        lang = self.pages.choose(view.header(b"accept-language"))
        refusal = self.pages.page("tarpit" if kind is Action.TARPIT else "block", lang)
        return self._shared(kind, decision, False, refusal.status, refusal.headers,
                            refusal.body, lang)

    def _refuse(self, response: ChallengeResponse, reason: str) -> Verdict:
        """A quick 429/503 where a never-challenged route would have met a challenge."""
        self.decided[("refuse", reason.split(":", 1)[0])] += 1
        return self._shared(Action.REFUSE, f"refuse:{reason}", False, response.status,
                            tuple(response.headers), response.body)

    def _endpoint(self, view: RequestView, facts: RequestFacts, now: float) -> Verdict:
        body = view.prefetched_body or b""
        resp = self.challenges.endpoint(facts, view.query, body, now, view.scheme)
        if resp.failed:
            self.clients.note_challenge_failure(facts, now)
            self.decisions.strike(facts.client, "failed challenge", now)
            self.decided[("challenge_failed", resp.reason.split(":", 1)[0])] += 1
        elif resp.passed:
            self.clients.note_challenge_pass(facts)
            self.passed_recently.put(facts.client, now)
        return Verdict(Action.RESPOND, f"challenge-endpoint:{resp.reason}", False, resp.status,
                       tuple(resp.headers), resp.body)

    def _publish(self, document: Callable[[], tuple[bytes, str]],
                 facts: RequestFacts) -> Verdict:
        """A document this edge publishes (the alliance feed), with its ETag: an unchanged one
        costs its poller a 304. Made elsewhere, now and then; here only handed out."""
        body, etag = document()
        headers: tuple[tuple[bytes, bytes], ...] = (
            (b"Content-Type", b"application/json"), (b"ETag", etag.encode()),
            (b"Cache-Control", b"no-cache"))
        if etag and facts.header(b"if-none-match") == etag.encode():
            return Verdict(Action.RESPOND, "published:not-modified", False, 304, headers, b"")
        return Verdict(Action.RESPOND, "published", False, 200 if body else 404, headers, body)

    # -- housekeeping ---------------------------------------------------------------------------
    def tick(self, now: float, gate_active: int, gate_queue: int, gate_limit: int,
             origin_count: int, origin_seconds: float, origin_errors: int) -> None:
        """Once a second: attack-mode signals, expiry, persistence, firewall, client ageing."""
        requests, self.requests = self.requests, 0
        # Of the requests the rules let through (those refused already cost nothing more).
        observed, self._observed = self._observed, 0
        bad = observed * self._bad_share() if self.model is not None else 0.0
        self.bad_requests = bad
        self._recent[:] = [-1] * _RECENT  # next second's requests only
        last_n, last_s, last_e = self._last_counts
        n, secs, errs = origin_count - last_n, origin_seconds - last_s, origin_errors - last_e
        self._last_counts = (origin_count, origin_seconds, origin_errors)
        self.attack.update(Signals(
            requests=requests, gate_queue=gate_queue, gate_active=gate_active,
            gate_limit=gate_limit, origin_latency=secs / n if n > 0 else 0.0,
            origin_errors=errs / (n + errs) if n + errs > 0 else 0.0, bad_requests=bad,
            behaviour=self.model is not None), now)
        arrivals = self.clients.arrivals
        self.newcomers.tick(now, arrivals - self._arrivals)
        self._arrivals = arrivals
        self.decisions.expire(now)
        self.clients.expire(now)
        if self._dirty and now - self._last_save >= 2.0:
            self.save(now)
        if self.firewall is not None and self.firewall.pending() and (
                self._fw_thread is None or not self._fw_thread.is_alive()):
            # nft runs as a subprocess: never on the event loop.
            self._fw_thread = threading.Thread(target=self.firewall.flush, daemon=True,
                                               name="kalkan-nft")
            self._fw_thread.start()

    def save(self, now: float) -> str | None:
        """Persist the decisions; None when saved, else the problem, logged once until it
        changes (a read-only or full disk would otherwise log every tick)."""
        try:
            self.decisions.save(now)
        except OSError as exc:
            problem = f"cannot save decisions to {self.decisions.path}: {exc.strerror or exc}"
            if problem != self._save_problem:
                self._save_problem = problem
                log.error("%s; the decisions in memory stay in force, but changes since the "
                          "last save will be lost at restart", problem)
            self._last_save = now  # retry every couple of seconds, not every tick
            return problem
        if self._save_problem is not None:
            self._save_problem = None
            log.info("decisions saved to %s again", self.decisions.path)
        self._dirty = False
        self._last_save = now
        return None

    def _decision_changed(self, decision: Decision | None, target: str) -> None:
        self._dirty = True
        if self.firewall is None:
            return
        try:
            if decision is None:
                self.firewall.remove(target)
            elif SEVERITY[decision.action] >= SEVERITY["drop"]:
                ttl = max(1.0, decision.remaining(time.time()))
                self.firewall.drop(target, min(ttl, 7 * 86400.0))
        except ValueError as exc:  # e.g. a protected network (loopback, the admin's own)
            log.warning("not dropping %s in the kernel: %s", target, exc)

    def reload(self) -> tuple[bool, str]:
        """Reload the policy; a bad file keeps the old one running and says why."""
        self._verdicts.clear()  # the pages may have been reloaded too: no old block pages
        try:
            policy = self._load_policy()
        except PolicyError as exc:
            log.error("policy reload failed, keeping the old policy: %s", exc)
            return False, str(exc)
        self.policy = policy
        self.clients.set_meters(policy.meters)
        log.info("policy reloaded from %s", policy.source)
        return True, f"policy reloaded from {policy.source}"

    def admin_routes(self) -> list[Route]:
        """The operator's routes (decisions, attack mode) for the admin listener."""
        return self.admin.routes()

    def close(self) -> None:
        self.save(time.time())
        if self.firewall is not None:
            if self._fw_thread is not None:
                self._fw_thread.join(timeout=30)
            self.firewall.stop()  # the table goes with the edge; decisions stay on disk
