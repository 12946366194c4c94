"""The client table: GCRA meters per address / prefix / route class, eviction, ageing, keys."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalkan.defense import rows
from kalkan.defense.clients import _EMPTY, _FREE, ClientTable, Meter
from kalkan.defense.facts import RequestFacts, address_facts
from kalkan.defense.rows import PyHit


def facts(client: str = "203.0.113.7", route: str = "page") -> RequestFacts:
    ip, version, prefix = address_facts(client)
    return RequestFacts("GET", "news.example", "/", "", route, client, ip, version, prefix, "UA")


def send(table: ClientTable, f: RequestFacts, now: float, n: int = 1) -> None:
    for _ in range(n):
        table.hit(f, now)


PER_ADDRESS = Meter("address", 10, 10.0)
PER_PREFIX = Meter("prefix", 10, 10.0)
SEARCH_ONLY = Meter("address", 3, 60.0, frozenset({"search"}))


# --------------------------------------------------------------------------- meters


def test_meter_ids_are_stable_and_validated() -> None:
    assert Meter("address", 20, 60.0, frozenset({"search", "form"})).id == \
        "address:20/60s:form+search"
    assert Meter("prefix", 5, 0.5).id == "prefix:5/0.5s:all"
    for bad in [("host", 1, 1.0), ("address", 0, 1.0), ("address", 1, 0.0)]:
        with pytest.raises(ValueError):
            Meter(*bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="route class"):
        Meter("address", 1, 1.0, frozenset({"pages"}))


def test_burst_of_n_is_allowed_and_one_more_is_over() -> None:
    table = ClientTable(100, [PER_ADDRESS], seed=1)
    f = facts()
    send(table, f, 100.0, 10)
    assert not table.over(PER_ADDRESS.id, f, 100.0)
    send(table, f, 100.0)
    assert table.over(PER_ADDRESS.id, f, 100.0)


def test_window_edges_refill_at_n_per_t() -> None:
    table = ClientTable(100, [PER_ADDRESS], seed=1)   # 10 in 10 s: one slot back per second
    f = facts()
    send(table, f, 0.0, 10)
    send(table, f, 0.999)
    assert table.over(PER_ADDRESS.id, f, 0.999), "the 11th request inside the first second"
    g = facts("203.0.113.8")
    send(table, g, 0.0, 10)
    send(table, g, 1.0)
    assert not table.over(PER_ADDRESS.id, g, 1.0), "one request has drained after T/N"
    send(table, g, 1.0)
    assert table.over(PER_ADDRESS.id, g, 1.0)
    h = facts("203.0.113.9")
    send(table, h, 0.0, 10)
    send(table, h, 10.0, 10)
    assert not table.over(PER_ADDRESS.id, h, 10.0), "an idle period T refills the whole burst"


def test_steady_rate_at_the_limit_is_never_over_and_just_above_it_is() -> None:
    table = ClientTable(100, [PER_ADDRESS], seed=1)
    steady, fast = facts("198.51.100.1"), facts("198.51.100.2")
    now = 0.0
    for i in range(500):
        now = i * 1.0                               # exactly N per T
        send(table, steady, now)
        assert not table.over(PER_ADDRESS.id, steady, now)
    over_seen = False
    for i in range(500):
        now = 1000.0 + i * 0.9                      # 11 % faster
        send(table, fast, now)
        over_seen |= table.over(PER_ADDRESS.id, fast, now)
    assert over_seen


def test_a_flood_is_forgiven_soon_after_it_stops() -> None:
    # The counter caps at one request beyond the limit: standing punishment is a decision's job.
    table = ClientTable(100, [PER_ADDRESS], seed=1)
    f = facts()
    send(table, f, 50.0, 10_000)
    assert table.over(PER_ADDRESS.id, f, 50.0)
    assert table.level(PER_ADDRESS.id, f, 50.0) == pytest.approx(11.0)
    assert not table.over(PER_ADDRESS.id, f, 51.01)


def test_per_address_and_per_prefix_meters() -> None:
    table = ClientTable(100, [PER_ADDRESS, PER_PREFIX], seed=1)
    a, b, other = facts("192.0.2.1"), facts("192.0.2.200"), facts("192.0.3.1")
    send(table, a, 0.0, 6)
    send(table, b, 0.0, 5)
    assert not table.over(PER_ADDRESS.id, a, 0.0) and not table.over(PER_ADDRESS.id, b, 0.0)
    assert table.over(PER_PREFIX.id, a, 0.0) and table.over(PER_PREFIX.id, b, 0.0)
    send(table, other, 0.0)
    assert not table.over(PER_PREFIX.id, other, 0.0)
    assert table.prefixes == 2 and len(table) == 3


def test_meter_counts_only_its_route_classes() -> None:
    table = ClientTable(100, [SEARCH_ONLY, PER_ADDRESS], seed=1)
    page, search = facts(route="page"), facts(route="search")
    send(table, page, 0.0, 50)
    assert table.level(SEARCH_ONLY.id, page, 0.0) == 0.0
    send(table, search, 0.0, 3)
    assert not table.over(SEARCH_ONLY.id, search, 0.0)
    send(table, search, 0.0)
    assert table.over(SEARCH_ONLY.id, search, 0.0)


def test_prefix_meter_for_other_routes_is_looked_up_on_demand() -> None:
    search_prefix = Meter("prefix", 2, 60.0, frozenset({"search"}))
    table = ClientTable(100, [search_prefix], seed=1)
    send(table, facts("192.0.2.1", "search"), 0.0, 3)
    page = facts("192.0.2.2", "page")
    send(table, page, 0.0)                           # no prefix meter counts pages
    assert table.over(search_prefix.id, page, 0.0)  # but the prefix is over all the same


def test_unseen_client_is_never_over_and_unknown_meter_is_loud() -> None:
    table = ClientTable(100, [PER_ADDRESS], seed=1)
    assert not table.over(PER_ADDRESS.id, facts("192.0.2.9"), 0.0)
    assert table.level(PER_ADDRESS.id, facts("192.0.2.9"), 0.0) == 0.0
    with pytest.raises(KeyError, match="set_meters"):
        table.over("address:1/1s:all", facts(), 0.0)


def test_over_after_another_request_looks_the_client_up_again() -> None:
    table = ClientTable(100, [PER_ADDRESS], seed=1)
    a, b = facts("192.0.2.1"), facts("192.0.2.2")
    send(table, a, 0.0, 11)
    send(table, b, 0.0)
    assert table.over(PER_ADDRESS.id, a, 0.0) and not table.over(PER_ADDRESS.id, b, 0.0)
    # A reused, mutated facts object must not be mistaken for the cached one.
    b.ip = a.ip
    assert table.over(PER_ADDRESS.id, b, 0.0)


# --------------------------------------------------------------------------- keys


def test_ipv6_clients_group_by_64() -> None:
    table = ClientTable(100, [PER_ADDRESS, PER_PREFIX], seed=1)
    one, same64, other64 = (facts("2001:db8:1:2::1"), facts("2001:db8:1:2:ffff::9"),
                            facts("2001:db8:1:3::1"))
    send(table, one, 0.0, 6)
    send(table, same64, 0.0, 5)
    assert table.over(PER_PREFIX.id, same64, 0.0)
    assert not table.over(PER_ADDRESS.id, same64, 0.0)
    send(table, other64, 0.0)
    assert not table.over(PER_PREFIX.id, other64, 0.0)


def test_ipv4_mapped_ipv6_is_the_same_client_as_ipv4() -> None:
    table = ClientTable(100, [PER_ADDRESS, PER_PREFIX], seed=1)
    mapped, plain = facts("::ffff:203.0.113.5"), facts("203.0.113.5")
    assert mapped.version == 4
    send(table, mapped, 0.0, 6)
    send(table, plain, 0.0, 5)
    assert table.over(PER_ADDRESS.id, plain, 0.0)
    assert len(table) == 1 and table.prefixes == 1


def test_ipv4_and_ipv6_keys_never_collide() -> None:
    table = ClientTable(100, [PER_ADDRESS, PER_PREFIX], seed=1)
    v4 = facts("0.0.0.1")
    v6 = facts("::1")                                 # the same integer, another family
    assert v4.ip == v6.ip
    send(table, v4, 0.0, 11)
    assert not table.over(PER_ADDRESS.id, v6, 0.0)
    assert not table.over(PER_PREFIX.id, v6, 0.0)


def test_prefix_lengths_are_configurable() -> None:
    table = ClientTable(100, [PER_PREFIX], prefix_v4=16, prefix_v6=48, seed=1)
    send(table, facts("10.1.2.3"), 0.0, 6)
    send(table, facts("10.1.200.3"), 0.0, 5)
    # An address never seen itself is still over when its /16 is.
    assert table.over(PER_PREFIX.id, facts("10.1.99.99"), 0.0)
    assert not table.over(PER_PREFIX.id, facts("10.2.1.1"), 0.0)
    send(table, facts("2001:db8:5:1::1"), 0.0, 6)
    send(table, facts("2001:db8:5:ff::1"), 0.0, 5)
    assert table.over(PER_PREFIX.id, facts("2001:db8:5:ff::1"), 0.0)
    with pytest.raises(ValueError):
        ClientTable(10, prefix_v4=33)


def test_tables_are_salted_per_instance() -> None:
    # Fingerprints use a random salt: the same address lands elsewhere in another table.
    a, b = ClientTable(10), ClientTable(10)
    assert a._address_fp(facts()) != b._address_fp(facts())


# --------------------------------------------------------------------------- failures, history


def test_challenge_failures_count_and_age_out() -> None:
    table = ClientTable(100, [], failure_window=600, seed=1)
    f = facts()
    assert table.failures(f, 0.0) == 0
    assert [table.note_challenge_failure(f, t) for t in (10.0, 20.0, 30.0)] == [1, 2, 3]
    assert table.failures(f, 600.0) == 3
    assert table.failures(f, 631.0) == 0
    assert table.note_challenge_failure(f, 700.0) == 1, "a new failure after the window restarts"
    table.note_challenge_pass(f)
    assert table.failures(f, 700.0) == 0


def test_first_and_last_seen() -> None:
    table = ClientTable(100, [], seed=1)
    f = facts()
    assert table.seen(f) is None
    send(table, f, 100.4)
    send(table, f, 250.9)
    assert table.seen(f) == (100, 250)


# --------------------------------------------------------------------------- bounds


def test_capacity_is_a_hard_bound_and_eviction_keeps_lookups_right() -> None:
    table = ClientTable(100, [PER_ADDRESS], seed=3)
    clients = [facts(f"10.0.{i // 200}.{i % 200}") for i in range(1000)]
    for i, f in enumerate(clients):
        send(table, f, float(i))
    assert len(table) == 100
    assert table.evictions >= 900
    assert_consistent(table)
    assert table.seen(clients[-1]) == (999, 999)


def test_a_long_time_reader_survives_a_flood_of_new_addresses() -> None:
    table = ClientTable(200, [PER_ADDRESS], seed=4)
    reader = facts("198.51.100.77")
    for t in range(0, 1000, 10):
        send(table, reader, float(t))
    for i in range(5000):                            # one request each, at the same second
        send(table, facts(f"10.{i // 60000}.{(i // 250) % 240}.{i % 250}"), 1000.0)
        if i % 50 == 0:
            send(table, reader, 1000.0)
    assert table.seen(reader) is not None
    assert table.seen(reader)[0] == 0  # type: ignore[index]


def test_idle_clients_age_out_in_bounded_sweeps() -> None:
    table = ClientTable(1000, [PER_ADDRESS, PER_PREFIX], idle_ttl=300, seed=1)
    old = [facts(f"10.1.{i}.1") for i in range(100)]
    new = [facts(f"10.2.{i}.1") for i in range(100)]
    for f in old:
        send(table, f, 1000.0)
    for f in new:
        send(table, f, 1250.0)
    assert table.expire(1200.0) == 0
    removed = 0
    for _ in range(10):
        removed += table.expire(1301.0, budget=20)
    assert removed == 200                            # 100 addresses + their 100 prefixes
    assert len(table) == 100 and table.prefixes == 100
    assert all(table.seen(f) is None for f in old)
    assert all(table.seen(f) is not None for f in new)
    assert_consistent(table)
    send(table, old[0], 1400.0)
    assert table.seen(old[0]) == (1400, 1400)
    assert table.level(PER_ADDRESS.id, old[0], 1400.0) == pytest.approx(1.0)


def test_set_meters_keeps_clients_and_unchanged_meters() -> None:
    keep, drop, add = PER_ADDRESS, SEARCH_ONLY, Meter("address", 2, 60.0)
    table = ClientTable(100, [keep, drop], seed=1)
    f = facts(route="search")
    send(table, f, 0.0, 11)
    table.note_challenge_failure(f, 0.0)
    table.set_meters([keep, add])
    assert table.meter_ids == {keep.id, add.id}
    assert table.over(keep.id, f, 0.0)
    assert table.level(add.id, f, 0.0) == 0.0
    assert table.failures(f, 0.0) == 1 and table.seen(f) == (0, 0)
    with pytest.raises(KeyError):
        table.over(drop.id, f, 0.0)
    send(table, f, 0.0, 3)
    assert table.over(add.id, f, 0.0)


def test_memory_per_client_is_small() -> None:
    meters = [Meter("address", n, 60.0) for n in range(1, 11)]
    table = ClientTable(20_000, meters, seed=1)
    empty = table.memory_bytes()
    for i in range(20_000):
        send(table, facts(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"), 0.0)
    per_client = (table.memory_bytes() - empty) / len(table)
    assert per_client < 160, per_client
    assert table.stats()["addresses"] == 20_000


# --------------------------------------------------------------------------- properties


def assert_consistent(table: ClientTable) -> None:
    """Every tracked entry is findable from its fingerprint; the index holds nothing else."""
    for part in (table._addr, table._pre):
        live = [s for s in range(part.n) if part.last[s] != _FREE]
        assert len(live) == part.count
        for s in live:
            assert part.find(part.fps[s]) == s
        cells = [c for c in part.index if c != _EMPTY]
        assert sorted(c - 1 for c in cells) == sorted(live)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["hit", "hit", "hit", "expire", "fail"]),
                          st.integers(0, 40), st.integers(0, 30)), max_size=120))
def test_table_stays_consistent_under_any_sequence(ops: list[tuple[str, int, int]]) -> None:
    table = ClientTable(12, [PER_ADDRESS, PER_PREFIX], idle_ttl=20, prefix_capacity=6, seed=7)
    now = 100.0
    tracked_last: RequestFacts | None = None
    for op, who, dt in ops:
        now += dt
        f = facts(f"10.{who % 3}.{who % 7}.{who}")
        if op == "hit":
            table.hit(f, now)
            tracked_last = f
        elif op == "fail":
            table.note_challenge_failure(f, now)
            tracked_last = f
        else:
            table.expire(now, budget=5)
            tracked_last = None
        assert len(table) <= 12 and table.prefixes <= 6
        if tracked_last is not None:
            assert table.seen(tracked_last) is not None
    assert_consistent(table)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=60))
def test_gcra_matches_a_leaky_bucket(gaps: list[int]) -> None:
    # 4 requests in 2 s: a bucket of 4 draining 2 per second; times in 1/4 s are exact floats.
    meter = Meter("address", 4, 2.0)
    table = ClientTable(10, [meter], seed=1)
    f = facts()
    level, now, prev = 0.0, 10.0, 10.0
    for gap in gaps:
        now += gap / 4
        level = max(0.0, level - (now - prev) * 2.0) + 1
        level = min(level, 5.0)
        prev = now
        table.hit(f, now)
        assert table.over(meter.id, f, now) == (level > 4.0)
        assert table.level(meter.id, f, now) == pytest.approx(level)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["page", "search", "login"]), st.integers(0, 8)),
                min_size=1, max_size=80))
def test_address_quiet_is_exactly_no_address_meter_over(steps: list[tuple[str, int]]) -> None:
    # The policy skips per-address rate rules for a quiet client: that must never hide an
    # over meter, including one filled by another route class earlier.
    meters = [Meter("address", 3, 2.0), Meter("address", 2, 4.0, frozenset({"login"})),
              Meter("address", 4, 1.0, frozenset({"search", "page"})), Meter("prefix", 2, 1.0)]
    table = ClientTable(10, meters, seed=1)
    now = 0.0
    for route, gap in steps:
        now += gap / 8
        f = facts("192.0.2.1", route)
        table.hit(f, now)
        any_over = any(table.over(m.id, f, now) for m in meters if m.per == "address")
        assert table.address_quiet(f, now) == (not any_over)
        later = now + 0.3
        any_over = any(table.over(m.id, f, later) for m in meters if m.per == "address")
        assert table.address_quiet(f, later) == (not any_over)


def test_hit_with_a_count_equals_that_many_hits() -> None:
    from kalkan.defense.clients import ClientTable, Meter
    from kalkan.defense.facts import RequestFacts, address_facts

    meter = Meter("address", 10, 60.0)
    one, many = ClientTable(100, [meter]), ClientTable(100, [meter])
    ip, version, prefix = address_facts("192.0.2.7")
    facts = RequestFacts("GET", "h", "/", "", "page", "192.0.2.7", ip, version, prefix, "ua")
    for _ in range(7):
        one.hit(facts, 1000.0)
    many.hit(facts, 1000.0, 7)
    assert one.level(meter.id, facts, 1000.0) == many.level(meter.id, facts, 1000.0)
    assert not many.over(meter.id, facts, 1000.0)
    many.hit(facts, 1000.0, 5)
    assert many.over(meter.id, facts, 1000.0)


def test_recent_clients_and_their_slots_after_the_answer() -> None:
    table = ClientTable(1000, [PER_ADDRESS])
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.1", "2001:db8::5"]:
        send(table, facts(client), 1.0)
    # Each once, oldest first by the latest request: .2, then .1 (sent again), then the IPv6.
    assert table.recent() == ["203.0.113.2", "203.0.113.1", "2001:db8::5"]
    v6 = facts("2001:db8::5")
    assert table.recent_slot(v6.version, v6.ip) == table.slot_of(v6) >= 0
    other = facts("203.0.113.2")      # not the request just counted: looked up by address
    assert table.recent_slot(other.version, other.ip) == table.slot_of(other) >= 0
    unknown = facts("198.51.100.9")
    assert table.recent_slot(unknown.version, unknown.ip) == -1
    # An IPv4 reader on a dual-stack socket is the same client as its IPv4 form.
    assert table.slot_of(facts("::ffff:203.0.113.1")) == table.slot_of(facts("203.0.113.1"))
    # The ring holds the latest 16,384 requests: older clients leave it, not the table.
    send(table, facts("198.51.100.7"), 2.0, 16_384)
    assert table.recent() == ["198.51.100.7"]
    assert table.slot_of(facts("203.0.113.1")) >= 0


# --------------------------------------------------------------------------- a cluster's share


def test_counts_to_share_are_the_busiest_since_the_last_call() -> None:
    table = ClientTable(100, [PER_ADDRESS, SEARCH_ONLY], seed=1)
    send(table, facts("203.0.113.1", "search"), 1.0, 5)
    send(table, facts("203.0.113.2"), 1.0, 2)
    send(table, facts("203.0.113.3"), 1.0, 1)
    assert table.counts_to_share(2) == [("203.0.113.1", "search", 5), ("203.0.113.2", "page", 2)]
    assert table.counts_to_share(10) == []          # nothing new since
    send(table, facts("203.0.113.3"), 2.0)
    assert table.counts_to_share(10) == [("203.0.113.3", "page", 1)]


def test_counts_past_the_ring_are_scaled_up_from_it() -> None:
    table = ClientTable(100, [PER_ADDRESS], seed=1)
    send(table, facts("203.0.113.4"), 1.0, 3 * 16384)
    assert table.counts_to_share(10) == [("203.0.113.4", "page", 3 * 16384)]


def test_credited_requests_count_in_the_meters_but_are_not_shared_again() -> None:
    table = ClientTable(100, [SEARCH_ONLY], seed=1)
    f = facts("203.0.113.5", "search")
    send(table, f, 10.0, 2)
    table.counts_to_share(10)
    table.credit(f, 10.0, 2)                        # two more at another edge
    assert table.over(SEARCH_ONLY.id, f, 10.0)      # 4 in all: over "3 a minute"
    assert table.counts_to_share(10) == []


# --------------------------------------------------------------------------- the one-call path


def _columns(table: ClientTable) -> list[object]:
    addr, pre = table._addr, table._pre
    return [list(addr.meters), list(addr.over_until), list(addr.last), list(pre.meters),
            list(pre.last), list(addr.agent), table._last_a, table._last_p, table._last_flags]


def _sequence(tables: list[ClientTable], steps: int = 4000) -> None:
    rng = random.Random(3)
    clients = [f"198.51.{rng.randrange(4)}.{rng.randrange(256)}" for _ in range(80)]
    clients += ["2001:db8::1", "2001:db8::2", "2001:db8:0:1::5", "::ffff:192.0.2.9"]
    meters = [m for t in tables[:1] for m in t.meter_ids]
    now = 1000.0
    for _ in range(steps):
        now += rng.choice([0.0, 0.05, 0.5, 3.0])
        f = facts(rng.choice(clients), rng.choice(["page", "search", "asset", "feed", "nope"]))
        n = rng.choice([1, 1, 1, 4])
        key = rng.choice([0, 7, 7, 1 << 40, (1 << 62) - 1])  # (the policy's keys are never 0)
        note = key != 0 and rng.random() < 0.3
        for t in tables:
            t.hit(f, now, n, key)
            # What hit() answered on the way is what looking again says.
            a = t._last_a
            assert t.address_quiet(f, now) == (t._addr.over_until[a] <= now)
            if key:
                assert t.plain_agent(f, key) == (t._addr.agent[a] == key)
            if note:
                t.note_plain_agent(f, key)
                assert t.plain_agent(f, key)
        for m in meters:
            assert len({t.over(m, f, now) for t in tables}) == 1
        assert len({repr(_columns(t)) for t in tables}) == 1


METERS = [Meter("address", 5, 10.0), Meter("prefix", 20, 10.0), PER_ADDRESS,
          Meter("address", 3, 60.0, frozenset({"search"})),
          Meter("prefix", 4, 30.0, frozenset({"feed"}))]


def test_a_known_client_is_counted_in_one_call_as_the_long_way_counts_it() -> None:
    # hit() counts a client already in the table in one call (rows.Hit); a new one the long
    # way (_hit_new). A table made to take the long way every time must end up the same.
    fast, slow = ClientTable(1000, METERS, seed=1), ClientTable(1000, METERS, seed=1)
    slow._fast = lambda *_: -1
    _sequence([fast, slow])


def test_the_c_one_call_path_is_its_python_reference() -> None:
    c_table, py_table = ClientTable(1000, METERS, seed=2), ClientTable(1000, METERS, seed=2)
    addr, pre = py_table._addr, py_table._pre
    py_table._fast = PyHit(py_table._k0, py_table._k1, 24, 64, addr.index, addr.fps, addr.last,
                           addr.meters, addr.mask, addr.width, addr.over_until, pre.index,
                           pre.fps, pre.last, pre.meters, pre.mask, pre.width,
                           py_table._specs, addr.agent)
    _sequence([c_table, py_table])
    assert (type(c_table._fast) is PyHit) is not rows.NATIVE
