"""What a newsroom shares with its allies: attackers only, never its readers, its allowlist,
crawlers or pass tokens; addresses of one prefix gathered into it."""

from __future__ import annotations

from kalkan.addresses import AddressSet
from kalkan.alliance.share import MAX_UNTIL, shareable
from kalkan.defense.decisions import Decisions

NOW = 1_800_000_000.0


def table() -> Decisions:
    d = Decisions()
    d.add("203.0.113.1", "block", 600, "search flood", "rule", NOW - 60)
    d.add("203.0.113.2", "block", 600, "search flood", "rule", NOW - 50)
    d.add("203.0.113.3", "challenge", 600, "search flood", "escalation", NOW - 40)
    d.add("198.51.100.9", "drop", None, "login flood", "escalation", NOW - 30)
    d.add("192.0.2.0/24", "tarpit", 600, "probing", "manual", NOW - 20)
    d.add("192.0.2.77", "allow", 600, "our office", "manual", NOW)
    d.add("token:abcdef", "block", 600, "a shared pass", "rule", NOW)
    d.add("100.64.0.5", "block", 600, "from an ally", "ally", NOW)
    d.add("66.249.66.1", "block", 600, "looked like a bot", "rule", NOW)   # a crawler's range
    d.add("10.9.8.7", "block", 600, "our newsroom", "manual", NOW)        # allowlisted
    d.add("172.16.0.4", "block", 600, "was it a reader?", "rule", NOW)     # passed since
    d.add("198.51.100.50", "block", 10, "over", "rule", NOW - 600)         # ran out
    return d


def test_attackers_are_shared_and_nothing_else() -> None:
    crawlers = AddressSet.from_texts(["66.249.64.0/19"])
    allow = AddressSet.from_texts(["10.0.0.0/8"])
    entries = shareable(table().all(NOW), NOW, never=[allow, crawlers],
                        passed=lambda a: a == "172.16.0.4")
    by_target = {e.target: e for e in entries}
    # (192.0.2.0/24 is tarpitted here, but 192.0.2.77 in it is allowed: not shared)
    assert set(by_target) == {"203.0.113.0/24", "198.51.100.9"}
    gathered = by_target["203.0.113.0/24"]        # three addresses of one /24
    assert (gathered.action, gathered.hits, gathered.first_seen) == ("challenge", 3, NOW - 60)
    assert by_target["198.51.100.9"].action == "block"        # drop: blocked there
    assert by_target["198.51.100.9"].until == NOW + MAX_UNTIL  # "until removed": a day
    d = Decisions()
    d.add("192.0.2.0/24", "tarpit", 600, "probing", "manual", NOW)
    assert [(e.target, e.action) for e in shareable(d.all(NOW), NOW)] == \
        [("192.0.2.0/24", "challenge")]                       # tarpit: challenged there


def test_fewer_addresses_than_the_gathering_point_go_one_by_one_or_as_prefixes_only() -> None:
    d = Decisions()
    d.add("203.0.113.1", "block", 600, "x", "rule", NOW)
    d.add("203.0.113.2", "block", 600, "x", "rule", NOW)
    assert [e.target for e in shareable(d.all(NOW), NOW)] == ["203.0.113.1", "203.0.113.2"]
    only = shareable(d.all(NOW), NOW, prefixes_only=True)
    assert [(e.target, e.action, e.hits) for e in only] == [("203.0.113.0/24", "block", 2)]


def test_a_prefix_that_would_cover_the_allowlist_is_not_gathered() -> None:
    d = Decisions()
    for host in (1, 2, 3):
        d.add(f"203.0.113.{host}", "block", 600, "x", "rule", NOW)
    allow = AddressSet.from_texts(["203.0.113.200"])    # a friend in the same /24
    assert [e.target for e in shareable(d.all(NOW), NOW, never=[allow])] == \
        ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    assert shareable(d.all(NOW), NOW, never=[allow], prefixes_only=True) == []


def test_address_sets_tell_overlapping_networks() -> None:
    s = AddressSet.from_texts(["10.0.0.0/8", "2001:db8::/32"])
    assert s.overlaps(4, int.from_bytes(bytes([9, 255, 255, 0]), "big"),
                      int.from_bytes(bytes([10, 0, 0, 5]), "big"))
    assert not s.overlaps(4, 0x0B000000, 0x0B0000FF)
    assert s.overlaps(6, 0x20010DB8 << 96, (0x20010DB8 << 96) + 255)
