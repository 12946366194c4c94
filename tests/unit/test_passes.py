"""PassUsage: a pass used from too many addresses or too fast is over; a reader's use is not."""

from __future__ import annotations

from kalkan.defense.passes import _CAPACITY, PassUsage

T = 1_000_000.0


def test_a_readers_pass_is_never_over() -> None:
    usage = PassUsage(max_addresses=8, per_minute=600)
    # A reader: a page and 40 assets every 20 s for an hour, from home and from the phone.
    for minute in range(60):
        for visit in range(3):
            now = T + minute * 60 + visit * 20
            for asset in range(41):
                ip = 0x7F000001 if minute % 2 else 0x7F000002
                assert usage.note("reader", ip, now + asset * 0.01) == ""


def test_the_ninth_address_is_over() -> None:
    usage = PassUsage(max_addresses=8, per_minute=600)
    for host in range(8):
        assert usage.note("shared", 0x7F000100 + host, T) == ""
    assert "more than 8 addresses" in usage.note("shared", 0x7F000109, T)
    assert usage.note("shared", 0x7F000100, T) == ""  # the first eight stay usable
    assert len(usage._usage.table["shared"].addresses) == 8  # never grows past the limit


def test_a_flood_with_one_pass_is_over_within_a_burst() -> None:
    usage = PassUsage(max_addresses=8, per_minute=600)
    reasons = [usage.note("flood", 1, T + i * 0.001) for i in range(1000)]
    first = next(i for i, r in enumerate(reasons) if r)
    assert 590 <= first <= 610  # a minute's worth at once, then refused
    assert "600 requests a minute" in reasons[first]
    # Capped at a minute beyond now: a pass that stops is usable again a minute later.
    assert usage.note("flood", 1, T + 62.0) == ""


def test_forget_and_capacity() -> None:
    usage = PassUsage(max_addresses=1, per_minute=600)
    usage.note("p", 1, T)
    assert usage.note("p", 2, T) != ""
    usage.forget("p")
    assert usage.note("p", 2, T) == ""
    for i in range(_CAPACITY + 10):
        usage.note(f"pass-{i}", 1, T)
    assert len(usage) == _CAPACITY
