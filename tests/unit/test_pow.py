"""Proof-of-work and the no-JS wait, through the facade's page and /.kalkan/ endpoints."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from urllib.parse import urlencode

import pytest

from kalkan.defense.challenge import ChallengeResponse, Challenges, KeyRing
from kalkan.defense.challenge import pow as P
from kalkan.defense.challenge import tokens as T
from kalkan.defense.challenge.pages import challenge_fields
from kalkan.defense.facts import RequestFacts

NOW = 1_700_000_000.0
PREFIX = "203.0.113.0/24"
UA = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36"
LOW = (8, 9, 10, 11)   # low difficulties keep the Python solver quick in tests


def facts(path: str = "/news/1", prefix: str = PREFIX, ua: str = UA, method: str = "GET",
          cookie: bytes | None = None) -> RequestFacts:
    return RequestFacts(method, "news.example", path, "", "page", "203.0.113.7", 0, 4, prefix,
                        ua, [(b"accept-language", b"en")], cookie)


@pytest.fixture
def ch() -> Challenges:
    return Challenges(KeyRing.generate(NOW), difficulties=LOW)


def issue(ch: Challenges, ret: str = "/news/1?page=2", level: int = 0,
          now: float = NOW) -> tuple[str, int, str]:
    page = ch.page(facts(), now, level, ret, "https")
    assert page.status == 403 and page.reason == "issued"
    fields = challenge_fields(page.body)
    assert fields is not None
    return fields


def answer(ch: Challenges, now: float, scheme: str = "https", **params: str) -> ChallengeResponse:
    kw = {k: v for k, v in params.items() if k not in ("prefix", "ua", "path")}
    f = facts(params.get("path", "/.kalkan/pow"), params.get("prefix", PREFIX),
              params.get("ua", UA))
    return ch.endpoint(f, urlencode(kw), b"", now, scheme)


def header(resp: ChallengeResponse, name: bytes) -> bytes | None:
    return next((v for k, v in resp.headers if k == name), None)


# -- difficulty -----------------------------------------------------------------------------------
def test_difficulty_table() -> None:
    assert [P.difficulty_for(level) for level in range(4)] == [14, 16, 18, 20]
    assert P.difficulty_for(-1) == 14 and P.difficulty_for(9) == 20


def test_leading_zero_bits() -> None:
    assert P.leading_zero_bits(bytes([0, 0, 0x80])) == 16
    assert P.leading_zero_bits(bytes([0x0F, 0xFF])) == 4
    assert P.leading_zero_bits(bytes(4)) == 32


# -- solving and checking -------------------------------------------------------------------------
def test_solver_answer_accepted_with_one_hash(ch: Challenges,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    challenge, difficulty, ret = issue(ch, level=1)
    assert difficulty == 9
    nonce = P.solve(challenge, difficulty)
    digest = hashlib.sha256((challenge + nonce).encode()).digest()
    assert P.leading_zero_bits(digest) >= difficulty

    hashes = []
    real = hashlib.sha256

    def counting(data: bytes = b"") -> object:
        hashes.append(data)
        return real(data)

    monkeypatch.setattr(P.hashlib, "sha256", counting)
    resp = answer(ch, NOW + 3, c=challenge, n=nonce, r=ret)
    monkeypatch.undo()
    # The proof costs the edge one SHA-256 (the other hash here is of the user agent).
    assert [h for h in hashes if h.startswith(b"c1.")] == [(challenge + nonce).encode()]
    assert resp.status == 303 and resp.passed and not resp.failed
    assert resp.reason == "pow:pass"
    assert header(resp, b"Location") == b"/news/1?page=2"
    assert header(resp, b"Cache-Control") == b"no-store"
    cookie = header(resp, b"Set-Cookie")
    assert cookie is not None and cookie.startswith(b"kalkan_pass=p1.")
    assert b"HttpOnly" in cookie and b"SameSite=Lax" in cookie and b"Secure" in cookie
    pass_cookie = cookie.split(b";")[0]
    assert ch.has_valid_pass(facts(cookie=pass_cookie), NOW + 4)
    found = ch.valid_pass(facts(cookie=pass_cookie), NOW + 4)
    assert found is not None and found.method == T.POW


def test_no_secure_flag_over_http(ch: Challenges) -> None:
    challenge, difficulty, ret = issue(ch)
    resp = answer(ch, NOW + 1, scheme="http", c=challenge, n=P.solve(challenge, difficulty),
                  r=ret)
    assert resp.passed
    assert b"Secure" not in (header(resp, b"Set-Cookie") or b"")


def test_wrong_nonce_fails(ch: Challenges) -> None:
    challenge, difficulty, ret = issue(ch)
    good = int(P.solve(challenge, difficulty))
    bad = next(n for n in range(good) if not P.check(
        T.Ticket(challenge, "", 0, 0, difficulty), str(n))) if good else good + 1
    for nonce in (str(bad), "", "12a", "9" * 40, "-1"):
        resp = answer(ch, NOW + 1, c=challenge, n=nonce, r=ret)
        assert resp.status == 403 and resp.failed and not resp.passed
        assert resp.reason == "pow:wrong"
        assert header(resp, b"Set-Cookie") is None


def test_expired_challenge_sends_reader_back_without_a_pass(ch: Challenges) -> None:
    challenge, difficulty, ret = issue(ch)
    nonce = P.solve(challenge, difficulty)
    resp = answer(ch, NOW + ch.challenge_ttl + 1, c=challenge, n=nonce, r=ret)
    assert resp.status == 303 and not resp.passed and not resp.failed
    assert resp.reason == "pow:expired"
    assert header(resp, b"Location") == ret.encode()
    assert header(resp, b"Set-Cookie") is None


def test_other_prefix_other_browser_other_return_rejected(ch: Challenges) -> None:
    challenge, difficulty, ret = issue(ch)
    nonce = P.solve(challenge, difficulty)
    for kw in ({"prefix": "198.51.100.0/24"}, {"ua": "curl/8.5"}, {"r": "/other"}):
        resp = answer(ch, NOW + 1, **{"c": challenge, "n": nonce, "r": ret, **kw})
        assert resp.failed and resp.reason == "pow:signature", kw
    # ...and the genuine answer still works afterwards: failures spend nothing.
    assert answer(ch, NOW + 1, c=challenge, n=nonce, r=ret).passed


def test_lowered_difficulty_breaks_the_signature(ch: Challenges) -> None:
    challenge, _, ret = issue(ch, level=3)
    parts = challenge.split(".")
    parts[4] = "1"
    easy = ".".join(parts)
    resp = answer(ch, NOW + 1, c=easy, n=P.solve(easy, 1), r=ret)
    assert resp.failed and resp.reason == "pow:signature"


def test_replay_of_a_solved_challenge_rejected(ch: Challenges) -> None:
    challenge, difficulty, ret = issue(ch)
    nonce = P.solve(challenge, difficulty)
    assert answer(ch, NOW + 1, c=challenge, n=nonce, r=ret).passed
    again = answer(ch, NOW + 2, c=challenge, n=nonce, r=ret)
    assert again.failed and again.reason == "pow:replay"
    other = str(int(P.solve(challenge, difficulty, start=int(nonce) + 1)))
    assert answer(ch, NOW + 3, c=challenge, n=other, r=ret).reason == "pow:replay"


def test_replay_guard_is_bounded() -> None:
    guard = T.ReplayGuard(limit=10)
    for i in range(100):
        assert guard.spend(T.Ticket("t", f"id{i}", NOW + 300, NOW, 8), NOW)
        assert len(guard) <= 10
    # Expired entries are the first to go.
    guard = T.ReplayGuard(limit=4)
    for i in range(4):
        guard.spend(T.Ticket("t", f"old{i}", NOW + 1, NOW, 8), NOW)
    guard.spend(T.Ticket("t", "new", NOW + 300, NOW, 8), NOW + 2)
    assert len(guard) == 1


def test_post_answer_in_the_body(ch: Challenges) -> None:
    challenge, difficulty, ret = issue(ch)
    body = urlencode({"c": challenge, "n": P.solve(challenge, difficulty), "r": ret}).encode()
    resp = ch.endpoint(facts("/.kalkan/pow", method="POST"), "", body, NOW + 1, "https")
    assert resp.passed


def test_malformed_answers_fail_cleanly(ch: Challenges) -> None:
    f = facts("/.kalkan/pow")
    for query in ("c=x&n=1&r=/", "c=c1.a.b.c.d.e.f&n=1&r=/", "a=1&" * 20, "r=%ff",
                  "c=" + "A" * 5000):
        resp = ch.endpoint(f, query, b"", NOW, "https")
        assert resp.status == 403 and resp.failed
    resp = ch.endpoint(facts("/.kalkan/elsewhere"), "", b"", NOW, "https")
    assert resp.status == 404 and not resp.failed


def test_python_solver_speed_is_reasonable() -> None:
    start = time.perf_counter()
    challenge = "c1.abcdef.1700000300.1700000005.12.AAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB"
    P.solve(challenge, 12)
    assert time.perf_counter() - start < 5


# -- the browser's half, in Node's V8 when it is installed ----------------------------------------
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_worker_js_agrees_with_python(ch: Challenges) -> None:
    challenges = [issue(ch, ret=r)[0] for r in ("/", "/a" * 30)] + ["x", "y" * 55, "z" * 64]
    script = (
        "var f=" + P.WORKER_JS + ";var o={};f(o);var out=[];"
        "var cs=" + json.dumps(challenges) + ";"
        "for(var i=0;i<cs.length;i++)for(var d=1;d<=12;d+=5)"
        "out.push([cs[i],d,o.search(cs[i],d,0,1,1e7)]);"
        "var t=Date.now(),n=300000;o.search(cs[0],30,0,1,n);"
        "console.log(JSON.stringify({out:out,rate:n/((Date.now()-t)/1000)}));"
    )
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60,
                          check=True)
    result = json.loads(done.stdout)
    for challenge, difficulty, nonce in result["out"]:
        # The same first nonce as the Python solver: the two implementations agree bit for bit.
        assert nonce == P.solve(challenge, difficulty)
    print(f"worker rate in node: {result['rate'] / 1e6:.2f} M hashes/s")


# -- the no-JS wait -------------------------------------------------------------------------------
def nojs(ch: Challenges, ticket: str, ret: str, now: float, prefix: str = PREFIX
         ) -> ChallengeResponse:
    return answer(ch, now, path="/.kalkan/nojs", t=ticket, r=ret, prefix=prefix)


def test_nojs_too_early_waits_then_passes(ch: Challenges) -> None:
    ticket, _, ret = issue(ch)
    early = nojs(ch, ticket, ret, NOW + 2)
    assert early.status == 403 and not early.passed and not early.failed
    assert early.reason == "nojs:early"
    assert b'http-equiv="refresh" content="3;url=/.kalkan/nojs?t=' in early.body
    assert b'id="kalkan-nojs-continue"' in early.body
    ok = nojs(ch, ticket, ret, NOW + ch.nojs_delay)
    assert ok.status == 303 and ok.passed and ok.reason == "nojs:pass"
    cookie = (header(ok, b"Set-Cookie") or b"").split(b";")[0]
    found = ch.valid_pass(facts(cookie=cookie), NOW + 10)
    assert found is not None and found.method == T.NOJS
    assert nojs(ch, ticket, ret, NOW + 10).reason == "nojs:replay"


def test_nojs_delay_grows_with_threat_level(ch: Challenges) -> None:
    ticket, _, ret = issue(ch, level=3)
    assert nojs(ch, ticket, ret, NOW + 14).reason == "nojs:early"
    assert nojs(ch, ticket, ret, NOW + 15).passed
    page = ch.page(facts(), NOW, 3, "/", "https")
    assert b'content="15;url=/.kalkan/nojs?t=' in page.body


def test_nojs_rate_limit_per_prefix(ch: Challenges) -> None:
    ticket, _, ret = issue(ch)
    results = [nojs(ch, ticket, ret, NOW + 1) for _ in range(10)]
    limited = [r for r in results if r.status == 429]
    assert len(limited) == 4                           # burst of 6, then refused
    assert all(r.failed and r.reason == "nojs:limited" for r in limited)
    assert header(limited[0], b"Retry-After") == b"120"
    # Another prefix is not affected; the bucket refills with time.
    assert nojs(ch, ticket, ret, NOW + 1, prefix="198.51.100.0/24").status != 429
    assert nojs(ch, ticket, ret, NOW + 31).passed


def test_prefix_bucket_is_bounded() -> None:
    from kalkan.defense.challenge.nojs import PrefixBucket

    bucket = PrefixBucket(burst=2, every=10.0, limit=100)
    for i in range(1000):
        bucket.take(f"10.{i // 256}.{i % 256}.0/24", NOW)
        assert len(bucket) <= 100
