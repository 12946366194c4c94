"""An ally's believed entries turned into decisions by trust: observe, challenge, block; never
the allowlist or a crawler's range; a local decision wins; the ally's decisions end with its
feed and go when the ally stops naming them."""

from __future__ import annotations

import pytest

from kalkan.addresses import AddressSet
from kalkan.alliance.allies import apply_feed
from kalkan.alliance.feed import Entry
from kalkan.defense.decisions import Decisions

NOW = 1_800_000_000.0
FEED_EXPIRES = NOW + 600
ENTRIES = [Entry("203.0.113.0/24", "block", "search flood", NOW - 60, 3, NOW + 3600),
           Entry("198.51.100.7", "challenge", "bot rhythm", NOW - 60, 1, NOW + 300)]


def standing(d: Decisions, target: str) -> tuple[str, str, float] | None:
    found = d.exact.get(target) or next((x for _, x in d.networks if x.target == target), None)
    return None if found is None else (found.action, found.origin, found.expires)


def test_trust_decides_what_an_ally_can_make_this_edge_do() -> None:
    for trust, expected in (("block", "block"), ("challenge", "challenge")):
        d = Decisions()
        result = apply_feed("newsroom-a", trust, ENTRIES, FEED_EXPIRES, d, NOW)
        assert result.added == 2
        assert standing(d, "203.0.113.0/24") == (expected, "ally", FEED_EXPIRES)  # with the feed
        assert standing(d, "198.51.100.7") == ("challenge", "ally", NOW + 300)
        assert d.exact["203.0.113.0/24"].reason.startswith("ally newsroom-a:")
    d = Decisions()
    d.add("198.51.100.7", "block", 600, "seen here too", "rule", NOW)
    observed = apply_feed("newsroom-c", "observe", ENTRIES, FEED_EXPIRES, d, NOW)
    assert (observed.observed, observed.agreed) == (2, 1) and len(d) == 1


def test_an_ally_never_reaches_the_allowlist_or_a_crawler() -> None:
    d = Decisions()
    allow = AddressSet.from_texts(["203.0.113.50"])
    crawlers = AddressSet.from_texts(["198.51.100.0/28"])
    result = apply_feed("newsroom-a", "block", ENTRIES, FEED_EXPIRES, d, NOW,
                        never=[allow, crawlers])
    assert len(d) == 0 and len(result.refused) == 2


def test_a_local_decision_wins_and_the_allys_go_when_it_stops_naming_them() -> None:
    d = Decisions()
    d.add("198.51.100.7", "allow", 600, "a reader we know", "manual", NOW)
    apply_feed("newsroom-a", "block", ENTRIES, FEED_EXPIRES, d, NOW)
    assert standing(d, "198.51.100.7")[0] == "allow"
    assert standing(d, "203.0.113.0/24")[0] == "block"
    later = apply_feed("newsroom-a", "block", [], FEED_EXPIRES + 10, d, NOW + 10)
    assert later.removed == 1 and standing(d, "203.0.113.0/24") is None
    assert standing(d, "198.51.100.7")[0] == "allow"


def test_unknown_trust_is_refused() -> None:
    with pytest.raises(ValueError, match="trust must be"):
        apply_feed("a", "obey", ENTRIES, FEED_EXPIRES, Decisions(), NOW)
