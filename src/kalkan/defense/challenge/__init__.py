"""Challenges: the page that asks a browser to prove itself, and the pass cookie it earns.

The facade the engine calls. A page carries one signed ticket that serves both methods: the
proof-of-work (answered at /.kalkan/pow) and the no-JS wait (answered at /.kalkan/nojs).

Why the challenge page is a 403 and not a 200: the request is refused until the browser
proves itself. A 200 would let link-preview fetchers, archivers and uptime monitors take the
challenge for the article (and a noindex on a 200 tells a crawler to drop that URL); a non-2xx
status keeps challenges visible in logs and dashboards. Not 429 or 503 with Retry-After: those
say "come back later", while a reader should act now. Browsers render a 403 body like any page
(the body is well over the 512 bytes below which old browsers substituted their own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl

from kalkan.defense.challenge.keys import KeyRing
from kalkan.defense.challenge.method import Method, Verdict
from kalkan.defense.challenge.nojs import NoJs, PrefixBucket, delay_for
from kalkan.defense.challenge.pages import (
    ChallengePages,
    redirect_body,
    return_url_for,
    safe_return,
)
from kalkan.defense.challenge.pow import DIFFICULTIES, ProofOfWork, difficulty_for
from kalkan.defense.challenge.tokens import (
    MAX_PASSES,
    Pass,
    ReplayGuard,
    TicketError,
    cookie_value,
    issue_pass,
    issue_ticket,
    merge_cookie,
    set_cookie_header,
    ua_digest,
    verify_pass,
    verify_ticket,
)
from kalkan.defense.facts import CHALLENGE_PREFIX, RequestFacts
from kalkan.memo import Memo
from kalkan.pages import LOGO_PATH, Pages

__all__ = ["ChallengeResponse", "Challenges", "KeyRing", "Pass", "difficulty_for",
           "return_url_for"]

# Every response here is about one reader at one moment: never stored, never indexed (the
# pages' own headers say so, with their language and a CSP pinning their inline script/style).
_MARKER = (b"X-Kalkan-Challenge", b"pow")
_LOGO_NAME = LOGO_PATH[len(CHALLENGE_PREFIX):]
_MAX_BODY = 4096           # an answer is a ticket, a nonce and a return URL
_LIMITED_RETRY = b"120"


@dataclass(slots=True)
class ChallengeResponse:
    """A complete answer for the edge to send (it adds Date, Server and Content-Length).

    `passed`: a pass was issued (Set-Cookie is in `headers`). `failed`: a wrong, forged or
    replayed answer, or a method's rate limit: count it as a challenge failure for escalation.
    `reason`: "issued", or "<method>:<outcome>" (e.g. "pow:pass", "nojs:early", "pow:signature")
    for the access log's decision field and metrics.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    passed: bool = False
    failed: bool = False
    reason: str = ""


class Challenges:
    """Issues challenge pages, answers /.kalkan/ endpoints and recognises pass cookies.

    Statuses: the challenge page is 403 (see the module docstring), a passed answer is a 303
    to the return URL with the cookie, an expired one a 303 back without it (a fresh page
    follows), a wrong one 403, the no-JS wait's "too early" 403, a method's rate limit 429.
    """

    def __init__(self, keys: KeyRing, *, pass_ttl: float = 86400.0,
                 challenge_ttl: float = 300.0, nojs_delay: float = 5.0,
                 difficulties: tuple[int, ...] = DIFFICULTIES, nojs_burst: int = 6,
                 nojs_every: float = 30.0, memo_size: int = 8192,
                 replay_size: int = 50_000, pages: Pages | None = None) -> None:
        if not 0 < nojs_delay < challenge_ttl:
            raise ValueError("nojs_delay must be > 0 and shorter than challenge_ttl")
        if pass_ttl <= 0 or any(not 0 < d <= 30 for d in difficulties) or not difficulties:
            raise ValueError("pass_ttl must be > 0 and difficulties within 1..30")
        # A key rotation must never cut a pass short: old keys verify at least a pass's life.
        keys.overlap = max(keys.overlap, pass_ttl)
        self.keys = keys
        self.pages = ChallengePages(pages or Pages())
        self.pass_ttl = pass_ttl
        self.challenge_ttl = challenge_ttl
        self.nojs_delay = nojs_delay
        self.difficulties = difficulties
        self.nojs = NoJs(PrefixBucket(nojs_burst, nojs_every))
        self.methods: dict[str, Method] = {m.name: m for m in (ProofOfWork(), self.nojs)}
        self.replays = ReplayGuard(replay_size)
        self._memo: Memo[tuple[bytes, str, str], Pass] = Memo(memo_size)
        self._memo_gen = keys.generation
        # Counters for metrics.
        self.issued = 0
        self.passed = 0
        self.failed = 0
        self.expired = 0  # genuine answers that came after their challenge expired

    # -- the hot path: does this request carry a pass? ----------------------------------------
    def has_valid_pass(self, facts: RequestFacts, now: float) -> bool:
        """True if the request's pass cookie is genuine, unexpired and bound to its prefix + UA.

        A verified pass is remembered per (cookie value, prefix, user agent) until it expires,
        so a reader's following requests cost one dict lookup, not an HMAC.
        """
        return self.valid_pass(facts, now) is not None

    def valid_pass(self, facts: RequestFacts, now: float) -> Pass | None:
        """The verified pass (id, method, expiry), e.g. for decisions about one token."""
        value = cookie_value(facts.cookie)
        if value is None:
            return None
        if self._memo_gen != self.keys.generation:
            self._memo.clear()  # a key may be gone: re-verify everything once
            self._memo_gen = self.keys.generation
        memo_key = (value, facts.prefix, facts.user_agent)
        hit = self._memo.table.get(memo_key)
        if hit is not None:
            if hit.expires > now:
                return hit
            self._memo.discard(memo_key)
            return None
        found = self._verify(value, facts.prefix, facts.user_agent, now)
        if found is not None:
            self._memo.put(memo_key, found)
        return found

    def _verify(self, value: bytes, prefix: str, user_agent: str, now: float) -> Pass | None:
        try:
            tokens = value.decode("ascii").split("~", MAX_PASSES)[:MAX_PASSES]
        except UnicodeDecodeError:
            return None
        ua = ua_digest(user_agent)
        for token in tokens:
            found = verify_pass(self.keys, token, prefix, ua, now)
            if found is not None:
                return found
        return None

    # -- the challenge page -------------------------------------------------------------------
    def page(self, facts: RequestFacts, now: float, threat_level: int, return_to: str,
             scheme: str) -> ChallengeResponse:
        """The proof-of-work page, with the no-JS fallback inside (status 403).

        `return_to` is where the reader goes after passing; anything but a same-site path
        becomes "/". Use `return_url_for(...)` to derive it (a POST returns to its form page).
        """
        self.keys.maintain(now)
        lang = self.pages.choose(facts.header(b"accept-language"))
        ret = safe_return(return_to) or "/"
        difficulty = difficulty_for(threat_level, self.difficulties)
        delay = max(1, round(delay_for(self.nojs_delay, threat_level)))
        ticket = issue_ticket(self.keys, facts.prefix, ua_digest(facts.user_agent), ret, now,
                              self.challenge_ttl, delay, difficulty)
        self.issued += 1
        body = self.pages.challenge(lang, ticket, difficulty, ret, delay)
        return ChallengeResponse(403, [*self.pages.headers("challenge", lang), _MARKER], body,
                                 reason="issued")

    # -- answers ------------------------------------------------------------------------------
    def endpoint(self, facts: RequestFacts, query: str, body: bytes, now: float,
                 scheme: str) -> ChallengeResponse:
        """Answer a request for a path under /.kalkan/ (GET or POST form fields)."""
        self.keys.maintain(now)
        lang = self.pages.choose(facts.header(b"accept-language"))
        name = facts.path[len(CHALLENGE_PREFIX):] if facts.path.startswith(
            CHALLENGE_PREFIX) else ""
        method = self.methods.get(name)
        if method is None:
            logo = self.pages.pages.logo
            if name == _LOGO_NAME and logo is not None:
                return ChallengeResponse(200, list(logo.headers), logo.data, reason="logo")
            return self._message(404, lang, "notfound", "/", "unknown", failed=False)
        try:
            params = _params(query, body if facts.method == "POST" else b"")
        except ValueError:
            return self._message(403, lang, "failed", "/", f"{name}:malformed")
        ret = safe_return(params.get("r", "/"))
        if ret is None:
            return self._message(403, lang, "failed", "/", f"{name}:bad-return")
        if not method.admit(facts.prefix, now):
            resp = self._message(429, lang, "limited", ret, f"{name}:limited")
            resp.headers.append((b"Retry-After", _LIMITED_RETRY))
            return resp
        ua = ua_digest(facts.user_agent)
        text = params.get("c") or params.get("t") or ""
        try:
            ticket = verify_ticket(self.keys, text, facts.prefix, ua, ret, now)
        except TicketError as exc:
            if str(exc) == "expired":
                # Genuine but stale (a tab left open): back to the page for a fresh challenge.
                self.expired += 1
                return ChallengeResponse(303, [*self.pages.headers("challenge-notfound", lang),
                                               (b"Location", ret.encode("ascii"))],
                                         redirect_body(lang, ret), reason=f"{name}:expired")
            return self._message(403, lang, "failed", ret, f"{name}:{exc}")
        verdict = method.verify(ticket, params, now)
        if verdict is Verdict.WAIT:
            seconds = max(1, math.ceil(ticket.not_before - now))
            return ChallengeResponse(403, list(self.pages.headers("nojs-wait", lang)),
                                     self.pages.wait(lang, text, ret, seconds),
                                     reason=f"{name}:early")
        if verdict is Verdict.FAIL:
            return self._message(403, lang, "failed", ret, f"{name}:wrong")
        if not self.replays.spend(ticket, now):
            return self._message(403, lang, "failed", ret, f"{name}:replay")
        token = issue_pass(self.keys, facts.prefix, ua, method.kind, now, self.pass_ttl)
        cookie = merge_cookie(token, cookie_value(facts.cookie), now)
        self.passed += 1
        headers = [*self.pages.headers("challenge-notfound", lang),
                   (b"Location", ret.encode("ascii")),
                   set_cookie_header(cookie, int(self.pass_ttl), scheme == "https")]
        return ChallengeResponse(303, headers, redirect_body(lang, ret), passed=True,
                                 reason=f"{name}:pass")

    def _message(self, status: int, lang: str, kind: str, ret: str, reason: str, *,
                 failed: bool = True) -> ChallengeResponse:
        if failed:
            self.failed += 1
        page = f"challenge-{kind}"
        return ChallengeResponse(status, list(self.pages.headers(page, lang)),
                                 self.pages.message(lang, page, ret), failed=failed,
                                 reason=reason)


def _params(query: str, body: bytes) -> dict[str, str]:
    """Form fields from the query and a urlencoded body; the first of a repeated name wins."""
    if len(body) > _MAX_BODY or len(query) > _MAX_BODY:
        raise ValueError("answer too long")
    out: dict[str, str] = {}
    for source in (query, body.decode("ascii")):  # UnicodeDecodeError is a ValueError
        if source:
            for k, v in parse_qsl(source, keep_blank_values=True, max_num_fields=8,
                                  errors="strict"):
                out.setdefault(k, v)
    return out
