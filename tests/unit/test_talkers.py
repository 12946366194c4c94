"""The top-talkers sketch: Space-Saving's guarantee under a flood of distinct keys, its bound on
memory, ageing, sampling without aliasing, and prefixes of either address family."""

from __future__ import annotations

import random

import pytest

from kalkan.observe.talkers import SpaceSaving, Talkers, prefix_of


def test_heavy_hitter_survives_a_flood_of_distinct_keys() -> None:
    sketch = SpaceSaving(capacity=32)
    rng = random.Random(7)
    for i in range(20_000):
        # One attacker sends 10% of the requests; the rest are all different (a botnet's
        # random paths): the table must still hold the attacker, with a bounded overestimate.
        sketch.add("attacker" if i % 10 == 0 else f"noise-{rng.getrandbits(48)}")
    assert len(sketch) == 32
    top = sketch.top(1)[0]
    assert top.key == "attacker"
    # Space-Saving: count - error <= true count <= count, and error <= total / capacity.
    assert top.count - top.error <= 2_000 <= top.count
    assert top.error <= 20_000 / 32


def test_ranking_and_shares_of_a_few_keys() -> None:
    sketch = SpaceSaving(capacity=8)
    for key, n in (("a", 50), ("b", 30), ("c", 20)):
        for _ in range(n):
            sketch.add(key)
    assert [(t.key, t.count, t.error) for t in sketch.top(3)] == [
        ("a", 50, 0), ("b", 30, 0), ("c", 20, 0)]
    assert sketch.top(1)[0].share == pytest.approx(0.5)


def test_evictions_match_the_plain_definition() -> None:
    # The sketch remembers which keys sit at the floor between scans; it must evict exactly
    # what a scan for the first smallest counter at every eviction would (the definition).
    rng = random.Random(11)
    sketch = SpaceSaving(capacity=16)
    counts: dict[str, float] = {}
    errors: dict[str, float] = {}
    for i in range(30_000):
        if i % 2_500 == 0:
            sketch.decay(0.5)
            counts = {k: c * 0.5 for k, c in counts.items()}
            errors = {k: errors[k] * 0.5 for k in counts if counts[k] >= 0.01}
            counts = {k: c for k, c in counts.items() if c >= 0.01}
        # A few heavy keys among many one-off ones, with weights that are not all 1.
        key = f"hot-{rng.randrange(8)}" if rng.random() < 0.3 else f"new-{i}"
        weight = rng.choice((1.0, 1.0, 2.0, 0.5))
        sketch.add(key, weight)
        if key in counts:
            counts[key] += weight
        elif len(counts) < 16:
            counts[key], errors[key] = weight, 0.0
        else:
            victim = min(counts, key=counts.__getitem__)
            floor = counts.pop(victim)
            del errors[victim]
            counts[key], errors[key] = floor + weight, floor
        assert sketch.counts == counts and sketch.errors == errors


def test_decay_forgets_old_talkers() -> None:
    sketch = SpaceSaving(capacity=4)
    sketch.add("old", 100)
    for _ in range(20):
        sketch.decay(0.5)
    assert len(sketch) == 0
    sketch.add("new")
    assert sketch.top(5)[0].key == "new"


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        SpaceSaving(0)
    with pytest.raises(ValueError, match="sampling interval"):
        Talkers(every=0)


def test_sampled_estimates_are_scaled_back_to_requests() -> None:
    talkers = Talkers(every=16)
    count = 0
    for i in range(16_000):
        # A strictly periodic mix: every other request from one client. Sampling at a fixed
        # interval of 16 would only ever see one of them; the jittered restart sees both.
        client = "198.51.100.7" if i % 2 else "2001:db8:1:2::9"
        count += 1
        if count >= talkers.every:
            count = talkers.restart()
            talkers.request(client, "/search?q=x" if i % 2 else "/")
    snap = talkers.snapshot(5)
    prefixes = {row["key"]: row["requests"] for row in snap["prefixes"]}
    assert set(prefixes) == {"198.51.100.0/24", "2001:db8:1:2::/64"}
    for n in prefixes.values():
        assert 6_000 <= n <= 10_000  # about 8,000 each
    assert {row["key"] for row in snap["paths"]} == {"/search?q=x", "/"}


def test_long_keys_are_cut_and_empty_agents_named() -> None:
    talkers = Talkers(every=1)
    talkers.request("192.0.2.1", "/" + "x" * 5000)
    talkers.agent("")
    snap = talkers.snapshot()
    assert len(snap["paths"][0]["key"]) == 200
    assert snap["agents"][0]["key"] == "(none)"


@pytest.mark.parametrize(("client", "prefix"), [
    ("203.0.113.77", "203.0.113.0/24"),
    ("::ffff:203.0.113.77", "203.0.113.0/24"),
    ("2001:db8:aa:bb:1:2:3:4", "2001:db8:aa:bb::/64"),
    ("not-an-address", "not-an-address"),
    ("1.2.3.300", "1.2.3.300"),
])
def test_prefix_of(client: str, prefix: str) -> None:
    assert prefix_of(client) == prefix


def test_other_prefix_lengths() -> None:
    assert prefix_of("203.0.113.77", 16, 48) == "203.0.0.0/16"
    assert prefix_of("2001:db8:aa:bb::1", 16, 48) == "2001:db8:aa::/48"


def test_a_full_table_evicts_the_first_smallest_counter() -> None:
    """Ties included, the key that gives up its place is the one min(counts, key=count) names:
    the first smallest in the table's order."""
    sketch = SpaceSaving(capacity=4)
    rng = random.Random(3)
    for i in range(3_000):
        key = f"k{rng.randrange(12)}" if i % 3 else f"new-{i}"
        before = dict(sketch.counts)
        sketch.add(key, float(rng.choice((1, 1, 2))))
        if key not in before and len(before) == 4:
            victim = min(before, key=before.__getitem__)
            assert victim not in sketch.counts and set(sketch.counts) == \
                (set(before) - {victim}) | {key}
            assert sketch.errors[key] == before[victim]
