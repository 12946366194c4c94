"""Cache-poisoning matrix: an attacker's request never decides what an ordinary reader gets.

Each row starts an edge (cache on) in front of an echo origin (a ByteOrigin whose answers
reveal exactly what request it got: Host, every header, a per-request serial), lets an
"attacker" send the poisoning request, then an ordinary "victim" ask for the same URL, and
asserts the victim gets nothing fetched for the attacker. The origin can be switched to send no
Cache-Control (like WordPress), Vary: Accept-Language, a redirect for non-canonical hosts, or go
down (its listener closed). Expected behaviour, per issue 7:

- unkeyed override headers (X-Original-URL, X-Real-IP, ...) are dropped before the origin;
- Host variants are forwarded as the canonical host the key is built from;
- a header listed in `Connection:` does not enter the Vary signature;
- a response fetched for a session cookie or Authorization is never served to anyone else,
  neither fresh nor stale (origin down, attack mode).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from byte_origin import ORIGIN_SERIAL, ORIGIN_TARGET, ByteOrigin, OriginRequest, Reply
from kalkan.edge.app import Edge
from support import EdgeFactory, Response, fetch, port_of

CANONICAL = "news.test"


class EchoSite:
    """The origin's responder: a page that echoes its request; modes set per row."""

    def __init__(self) -> None:
        self.cache_control: str | None = "public, max-age=60"
        self.vary: str | None = None
        self.redirect_other_hosts = False  # 301 to CANONICAL, like WordPress' canonical redirect

    def __call__(self, req: OriginRequest) -> Reply:
        host = req.header("host") or ""
        if self.redirect_other_hosts and host != CANONICAL:
            return Reply(301, [("Location", f"http://{CANONICAL}{req.target}"),
                               ("Cache-Control", "public, max-age=300"),
                               (ORIGIN_SERIAL, str(req.serial))], b"moved\n")
        page = {"serial": req.serial, "method": req.method, "target": req.target, "host": host,
                "headers": req.headers}
        headers = [("Content-Type", "text/html; charset=utf-8"), (ORIGIN_SERIAL, str(req.serial)),
                   (ORIGIN_TARGET, req.target)]
        if self.cache_control is not None:
            headers.append(("Cache-Control", self.cache_control))
        if self.vary is not None:
            headers.append(("Vary", self.vary))
        return Reply(200, headers, json.dumps(page).encode())


@dataclass
class Stand:
    edge: Edge
    origin: ByteOrigin
    site: EchoSite

    @property
    def port(self) -> int:
        return port_of(self.edge)

    def seen(self, serial: int) -> OriginRequest:
        """The request the origin answered with `serial`."""
        return next(r for r in self.origin.requests if r.serial == serial)


StandFactory = Callable[..., Awaitable[Stand]]


@pytest.fixture
async def stand(make_edge: EdgeFactory) -> AsyncIterator[StandFactory]:
    """Start an echo origin and an edge before it; `defence=True` turns the defence on."""
    origins: list[ByteOrigin] = []

    async def factory(*, defence: bool = False, **site: Any) -> Stand:
        echo = EchoSite()
        for key, value in site.items():
            setattr(echo, key, value)
        origin = await ByteOrigin(echo, idle_timeout=5.0).start()
        origins.append(origin)
        edge = await make_edge(origin.url, defense={"enabled": defence},
                               origin={"breaker_failures": 10**6})
        return Stand(edge, origin, echo)

    yield factory
    for origin in origins:
        await origin.stop()


def serial(resp: Response) -> int | None:
    value = resp.header(ORIGIN_SERIAL)
    return int(value) if value is not None else None


def echoed(resp: Response) -> dict[str, Any]:
    """The origin's echo in a page (empty for anything else: redirects, errors, challenges)."""
    try:
        page: dict[str, Any] = json.loads(resp.body)
    except ValueError:
        return {}
    return page if isinstance(page, dict) else {}


def echoed_header(resp: Response, name: str) -> list[str]:
    return [v for k, v in echoed(resp).get("headers", []) if k.lower() == name.lower()]


# -- unkeyed headers -----------------------------------------------------------------------------
UNKEYED = ["X-Forwarded-Host", "X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override",
           "X-Real-IP", "True-Client-IP"]
EVIL = {"x-forwarded-host": "evil.example", "x-original-url": "/wp-admin/",
        "x-rewrite-url": "/wp-admin/", "x-http-method-override": "DELETE",
        "x-real-ip": "203.0.113.66", "true-client-ip": "203.0.113.66"}


@pytest.mark.parametrize("name", UNKEYED)
async def test_unkeyed_override_header(stand: StandFactory, name: str) -> None:
    s = await stand()
    evil = EVIL[name.lower()]
    attacker = await fetch(s.port, "/article/1", headers={name: evil}, host=CANONICAL)
    victim = await fetch(s.port, "/article/1", host=CANONICAL)
    assert attacker.status == victim.status == 200
    # The origin never saw the client's value, so the copy the victim shares could not depend
    # on it. (X-Real-IP is the edge's own field: the address it decided the client has.)
    own = "127.0.0.1" if name == "X-Real-IP" else None
    assert s.seen(serial(attacker) or 0).header(name) == own
    assert echoed_header(victim, name) == ([own] if own else [])
    assert evil not in victim.body.decode()


# -- Host variants --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["news.test:80", "NEWS.TEST", "news.test."])
async def test_host_variant_is_forwarded_canonical(stand: StandFactory, variant: str) -> None:
    s = await stand(redirect_other_hosts=True)
    attacker = await fetch(s.port, "/", host=variant)
    victim = await fetch(s.port, "/", host=CANONICAL)
    # Forward what you key on: the origin sees the canonical host, and nobody gets a redirect
    # to the very page they asked for (a loop).
    assert [r.header("host") for r in s.origin.requests] == [CANONICAL] * len(s.origin.requests)
    assert attacker.status == 200, attacker.header("location")
    assert victim.status == 200, victim.header("location")


async def test_canonical_host_redirect_is_keyed_apart(stand: StandFactory) -> None:
    """A different site name (not a variant of the canonical one) is its own key: its
    redirect never reaches readers of the canonical host."""
    s = await stand(redirect_other_hosts=True)
    attacker = await fetch(s.port, "/", host="www.news.test")
    victim = await fetch(s.port, "/", host=CANONICAL)
    assert attacker.status == 301
    assert victim.status == 200 and echoed(victim)["host"] == CANONICAL


# -- Vary and Connection ---------------------------------------------------------------------------
async def test_connection_listed_header_stays_out_of_vary(stand: StandFactory) -> None:
    s = await stand(vary="Accept-Language")
    attacker = await fetch(s.port, "/", host=CANONICAL,
                           headers={"Connection": "accept-language", "Accept-Language": "ru"})
    assert echoed_header(attacker, "accept-language") == []  # hop-by-hop: stripped, as it must be
    victim = await fetch(s.port, "/", host=CANONICAL, headers={"Accept-Language": "ru"})
    # The Russian reader gets a page made for Russian readers, not the attacker's default one.
    assert echoed_header(victim, "accept-language") == ["ru"]
    assert serial(victim) != serial(attacker)


async def test_vary_variants_are_kept_apart(stand: StandFactory) -> None:
    """Control row: without the Connection trick, each language gets its own copy."""
    s = await stand(vary="Accept-Language")
    ru = await fetch(s.port, "/", host=CANONICAL, headers={"Accept-Language": "ru"})
    en = await fetch(s.port, "/", host=CANONICAL, headers={"Accept-Language": "en"})
    again = await fetch(s.port, "/", host=CANONICAL, headers={"Accept-Language": "ru"})
    assert echoed_header(ru, "accept-language") == ["ru"]
    assert echoed_header(en, "accept-language") == ["en"]
    assert serial(again) == serial(ru) and again.header("X-Cache") == "HIT"


# -- personal pages --------------------------------------------------------------------------------
PERSONAL = {"session-cookie": {"Cookie": "wordpress_logged_in_x=1"},
            "authorization": {"Authorization": "Basic ZWRpdG9yOnNlY3JldA=="}}


PERSONAL_ROWS = [(who, situation) for who in ("session-cookie", "authorization")
                 for situation in ("origin-up", "origin-down", "attack-mode")]


async def _down(s: Stand) -> None:
    await s.origin.stop()


async def _attack(s: Stand) -> None:
    assert s.edge.pipeline.defense is not None
    s.edge.pipeline.defense.attack.set_mode("on", time.time())


@pytest.mark.parametrize(("who", "situation"), PERSONAL_ROWS)
async def test_personal_page_never_reaches_another_reader(stand: StandFactory, who: str,
                                                         situation: str) -> None:
    # No Cache-Control, like WordPress: the edge must decide on its own that this is private.
    s = await stand(cache_control=None, defence=situation == "attack-mode")
    personal = await fetch(s.port, "/account/", headers=PERSONAL[who], host=CANONICAL)
    assert personal.status == 200
    mine = serial(personal)
    if situation == "origin-down":
        await _down(s)
    elif situation == "attack-mode":
        await _attack(s)
    victim = await fetch(s.port, "/account/", host=CANONICAL)
    # Whatever the victim gets (its own page, an error, a challenge), never the personal one.
    assert serial(victim) != mine
    assert echoed_header(victim, "cookie") == [] and echoed_header(victim, "authorization") == []
    if situation == "origin-up":
        assert serial(victim) is not None and echoed(victim)["host"] == CANONICAL


async def test_stale_public_page_under_attack_and_origin_down(stand: StandFactory) -> None:
    """Control row: a public page expired in the cache is served stale under attack and when
    the origin is down, and it is the anonymous copy."""
    s = await stand(cache_control="public, max-age=1", defence=True)
    first = await fetch(s.port, "/news/", host=CANONICAL)
    assert first.status == 200
    await asyncio.sleep(1.3)  # expire it (the edge clock follows wall time, swept 4x a second)
    await _attack(s)
    under_attack = await fetch(s.port, "/news/", host=CANONICAL)
    assert under_attack.header("X-Cache") == "STALE" and serial(under_attack) == serial(first)
    await _down(s)
    s.edge.pipeline.defense.attack.set_mode("off", time.time())  # type: ignore[union-attr]
    down = await fetch(s.port, "/news/", host=CANONICAL)
    assert down.status == 200 and echoed_header(down, "cookie") == []
