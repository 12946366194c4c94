"""Kernel drops: the nftables firewall against a real kernel, inside throwaway network namespaces.

The first part needs nothing special: it checks validation, the nft batch text, merging and
splitting of batches, and the size estimate, with nft replaced by a recorder. The second part
runs as root: each module run creates two namespaces (``kalkan-test-<random>-s`` holds the
firewall and a tiny TCP server, ``-c`` the clients; a veth pair joins them; see
``bench.firewall.NetnsLab``) and deletes them afterwards, so nothing outside them is touched.
It drops a client address, its /24, an IPv6 address and its /64, and shows that a TCP
connection times out until the element's 2 s TTL runs out.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kalkan.defense.firewall import (
    DEFAULT_PROTECTED,
    Firewall,
    FirewallError,
    Protected,
    Target,
    batch_script,
    format_timeout,
    parse_target,
)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench.firewall import (  # noqa: E402
    CLIENT4,
    CLIENT6,
    NEIGHBOUR4,
    NEIGHBOUR6,
    OTHER4,
    NetnsLab,
    lab_unavailable,
)

GUARD = Protected(DEFAULT_PROTECTED)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("given", "address", "version", "prefixlen"), [
    ("203.0.113.7", "203.0.113.7", 4, 32),
    (" 203.0.113.7\n", "203.0.113.7", 4, 32),
    ("203.0.113.7/32", "203.0.113.7", 4, 32),
    ("203.0.113.77/24", "203.0.113.0", 4, 24),  # host bits cleared
    ("2001:DB8:0::1", "2001:db8::1", 6, 128),
    ("2001:db8:1:2:3::/64", "2001:db8:1:2::", 6, 64),
    ("::ffff:198.51.100.9", "198.51.100.9", 4, 32),  # IPv4-mapped: the packets are IPv4
    ("::ffff:198.51.100.0/120", "198.51.100.0", 4, 24),
])
def test_targets_are_canonical(given: str, address: str, version: int, prefixlen: int) -> None:
    target = parse_target(given, GUARD)
    assert target == Target(address, version, prefixlen)


@pytest.mark.parametrize(("given", "why"), [
    ("", "not an IP"), ("example.org", "not an IP"), ("203.0.113.256", "not an IP"),
    ("203.0.113.7/33", "not an IP"), ("2001:db8::/129", "not an IP"), ("1.2.3.04", "not an IP"),
    ("0.0.0.0/0", "wider than /8"), ("10.0.0.0/7", "wider than /8"), ("2001::/15", "wider"),
    ("127.0.0.1", "protected 127.0.0.0/8"), ("127.1.0.0/16", "protected"), ("::1", "protected"),
    ("::ffff:127.0.0.1", "protected 127.0.0.0/8"), ("fe80::1", "protected fe80::/10"),
    ("169.254.10.0/24", "protected"), ("0.0.0.0", "protected"), ("126.0.0.0/7", "wider"),
])
def test_bad_targets_are_refused_with_a_reason(given: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_target(given, GUARD)


def test_a_prefix_around_a_protected_network_is_refused() -> None:
    guard = Protected([*DEFAULT_PROTECTED, "198.51.100.10/32", "2001:db8:aa::/48"])
    with pytest.raises(ValueError, match=re.escape("198.51.100.10/32")):
        parse_target("198.51.100.0/24", guard)
    with pytest.raises(ValueError, match="2001:db8:aa::/48"):
        parse_target("2001:db8:aa:1::/64", guard)  # inside the protected one
    assert parse_target("198.51.100.11", guard).address == "198.51.100.11"


def test_timeouts_use_units_nft_accepts() -> None:
    assert format_timeout(1) == "1ms"
    assert format_timeout(2000) == "2s"
    assert format_timeout(1500) == "1s500ms"
    assert format_timeout(3_600_000) == "1h"
    assert format_timeout(90_061_001) == "1d1h1m1s1ms"
    assert format_timeout(365 * 86_400_000) == "365d"  # "31536000000ms" would be refused
    with pytest.raises(ValueError):
        format_timeout(0)  # an element with timeout 0 would never expire


# --------------------------------------------------------------------------- batch text


def _t(text: str) -> Target:
    return parse_target(text, GUARD)


def test_batch_script_groups_elements_per_set() -> None:
    script = batch_script("kalkan", [
        (_t("203.0.113.7"), 2000), (_t("203.0.113.8"), 3_600_000), (_t("198.51.100.0/24"), 1000),
        (_t("2001:db8::1"), 60_000), (_t("2001:db8:1::/48"), 1000), (_t("192.0.2.9"), None),
    ])
    assert script.splitlines() == [
        "add element inet kalkan drop4 { 203.0.113.7 timeout 2s, 203.0.113.8 timeout 1h }",
        "add element inet kalkan drop4_24 { 198.51.100.0 timeout 1s }",
        "add element inet kalkan drop6 { 2001:db8::1 timeout 1m }",
        "add element inet kalkan drop6_48 { 2001:db8:1:: timeout 1s }",
        # removal: add first, so the delete cannot fail on a missing element
        "add element inet kalkan drop4 { 192.0.2.9 timeout 1s }",
        "delete element inet kalkan drop4 { 192.0.2.9 }",
    ]


def test_batch_script_readd_refreshes_on_old_kernels() -> None:
    script = batch_script("t", [(_t("203.0.113.7"), 2000), (_t("203.0.113.8"), 1000)], readd=True)
    add = "add element inet t drop4 { 203.0.113.7 timeout 2s, 203.0.113.8 timeout 1s }"
    assert script.splitlines() == [add, "delete element inet t drop4 { 203.0.113.7, 203.0.113.8 }",
                                   add]


# --------------------------------------------------------------------------- queue and flush


class Recorder(Firewall):
    """A Firewall whose nft is a recorder: it keeps each script and fails on request."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(refresh="native", **kwargs)  # type: ignore[arg-type]
        self.scripts: list[str] = []  # every run
        self.ok: list[str] = []  # the runs that succeeded
        self.fail_when: str | None = None  # fail any batch containing this text
        self.fail_with = "Error: Could not process rule: Invalid argument"

    def _run(self, script: str) -> str | None:
        self.scripts.append(script)
        if self.fail_when is not None and self.fail_when in script:
            return self.fail_with
        self.ok.append(script)
        return None

    def _run_or_raise(self, script: str, what: str) -> str:
        self.scripts.append(script)
        return ""

    def applied(self) -> list[str]:
        """Every element added by a batch that succeeded, in order."""
        return re.findall(r"([0-9a-f.:]+) timeout",
                          "".join(s for s in self.ok if s.startswith("add element")))


def test_start_creates_sets_and_a_raw_priority_chain() -> None:
    fw = Recorder(table="edge1", max_entries=1000, prefix_lengths=(22, 56))
    fw.start()
    script = fw.scripts[0]
    assert script.startswith("add table inet edge1\ndelete table inet edge1\n")  # leftover gone
    assert "set drop4_22 { type ipv4_addr; flags timeout; size 1000; }" in script
    assert "type filter hook prerouting priority raw; policy accept;" in script
    assert "ip saddr & 255.255.252.0 @drop4_22 counter drop" in script
    assert "ip6 saddr & ffff:ffff:ffff:ff00:: @drop6_56 counter drop" in script
    assert script.index("ip saddr @drop4 ") < script.index("@drop4_22")  # addresses first


def test_drops_merge_and_the_last_call_wins() -> None:
    fw = Recorder()
    fw.start()
    fw.drop("203.0.113.7", 10)
    fw.drop("203.0.113.7", 3600)  # same target: one element, the last TTL
    fw.drop("::ffff:203.0.113.7", 3600)  # the same address, as a dual-stack socket reports it
    fw.drop("198.51.100.5", 10)
    fw.remove("198.51.100.5")  # a later remove cancels the queued drop
    assert fw.pending() == 2
    assert fw.flush() == 2
    removal, batch = fw.scripts[-2:]  # removals go first, in their own batches
    assert "203.0.113.7 timeout 59m59s" in batch or "203.0.113.7 timeout 1h" in batch
    assert "delete element inet kalkan drop4 { 198.51.100.5 }" in removal
    assert fw.flush() == 0 and fw.pending() == 0


def test_invalid_input_raises_and_is_counted() -> None:
    fw = Recorder()
    for bad, ttl in (("nonsense", 10.0), ("127.0.0.1", 10.0), ("203.0.113.7", 0.0),
                     ("203.0.113.7", float("nan")), ("203.0.113.7", -1.0)):
        with pytest.raises(ValueError):
            fw.drop(bad, ttl)
    with pytest.raises(ValueError):
        fw.remove("::1")
    assert fw.stats().invalid == 6
    assert fw.pending() == 0


def test_bad_names_and_settings_are_refused() -> None:
    for table in ("", "1abc", "a b", "x;flush ruleset", "a" * 40):
        with pytest.raises(ValueError):
            Firewall(table)
    with pytest.raises(ValueError):
        Firewall(netns="ns; rm -rf /")
    with pytest.raises(ValueError):
        Firewall(batch_size=0)
    with pytest.raises(ValueError):
        Firewall(prefix_lengths=(4, 64))
    with pytest.raises(ValueError):
        Firewall(refresh="sometimes")  # type: ignore[arg-type]


def test_flush_before_start_is_an_error() -> None:
    fw = Recorder()
    fw.drop("203.0.113.7", 10)
    with pytest.raises(FirewallError):
        fw.flush()


def test_flush_applies_in_batches_and_creates_sets_for_new_lengths() -> None:
    fw = Recorder(batch_size=100)
    fw.start()
    for i in range(250):
        fw.drop(f"198.51.{i // 200}.{i % 200}", 60)
    fw.drop("203.0.0.0/16", 60)  # no /16 set yet
    assert fw.flush() == 251
    new_set = [s for s in fw.scripts if "add set inet kalkan drop4_16" in s]
    assert new_set and "add rule inet kalkan prerouting ip saddr & 255.255.0.0 @drop4_16" \
        in new_set[0]
    batches = [s for s in fw.scripts if s.startswith("add element")]
    assert len(batches) == 3  # 251 elements, 100 a batch
    assert len(fw.applied()) == 251
    fw.drop("203.1.0.0/16", 60)
    fw.flush()
    assert sum("add set" in s for s in fw.scripts) == 1  # the /16 set is made once


def test_one_bad_element_does_not_sink_its_batch() -> None:
    fw = Recorder(batch_size=64)
    fw.start()
    for i in range(64):
        fw.drop(f"198.51.100.{i}", 60)
    fw.fail_when = "198.51.100.37 "
    assert fw.flush() == 63  # the batch is split until the bad one stands alone
    stats = fw.stats()
    assert stats.failed == 1 and "Invalid argument" in stats.last_error
    assert len(fw.applied()) == 63 and "198.51.100.37" not in fw.applied()


def test_a_full_set_fails_the_batch_without_retrying_each_element() -> None:
    fw = Recorder(batch_size=1000)
    fw.start()
    for i in range(1000):
        fw.drop(f"198.51.{i // 250}.{i % 250}", 60)
    fw.fail_when = "add element"
    fw.fail_with = "Error: Could not process rule: Too many open files in system"
    runs = len(fw.scripts)
    assert fw.flush() == 0
    assert len(fw.scripts) - runs == 1
    stats = fw.stats()
    assert stats.set_full and stats.failed == 1000


def test_sizes_count_live_entries_and_forget_expired_ones() -> None:
    fw = Recorder()
    fw.start()
    fw.drop("203.0.113.7", 0.5)
    fw.drop("203.0.113.0/24", 60)
    fw.drop("2001:db8::1", 60)
    fw.flush()
    assert fw.sizes() == (2, 1)
    time.sleep(1.6)  # expiry is counted in whole seconds, rounded up
    assert fw.sizes() == (1, 1)
    fw.remove("2001:db8::1")
    fw.flush()
    assert fw.sizes() == (1, 0)
    fw.clear()
    assert fw.sizes() == (0, 0)


def test_drops_from_many_threads_while_flushing() -> None:
    fw = Recorder(batch_size=97)
    fw.start()
    stop = threading.Event()
    flushed: list[int] = []

    def flusher() -> None:
        while not stop.is_set():
            flushed.append(fw.flush())

    def dropper(n: int) -> None:
        for i in range(2000):
            fw.drop(f"198.{n}.{i // 250}.{i % 250}", 60)

    flush_thread = threading.Thread(target=flusher)
    flush_thread.start()
    droppers = [threading.Thread(target=dropper, args=(n,)) for n in range(4)]
    for t in droppers:
        t.start()
    for t in droppers:
        t.join()
    stop.set()
    flush_thread.join()
    flushed.append(fw.flush())
    assert sum(flushed) == 8000
    assert sorted(set(fw.applied())) == sorted(fw.applied())  # each exactly once
    assert fw.sizes() == (8000, 0)


def test_available_says_why_not() -> None:
    ok, why = Firewall.available(nft="/nonexistent/nft")
    assert not ok and why


# --------------------------------------------------------------------------- in a namespace

needs_lab = pytest.mark.skipif(lab_unavailable() is not None,
                               reason=f"kernel drops: {lab_unavailable()}")


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    if lab_unavailable() is not None:
        pytest.skip(f"kernel drops: {lab_unavailable()}")
    with NetnsLab("kalkan-test") as made:
        yield made


@pytest.fixture
def firewall(lab: NetnsLab) -> Iterator[Firewall]:
    fw = Firewall(netns=lab.server)
    fw.start()
    try:
        yield fw
    finally:
        fw.stop()
        assert "kalkan" not in lab.nft("list", "tables")


def _wait_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


@needs_lab
def test_available_inside_a_namespace(lab: NetnsLab) -> None:
    assert Firewall.available(netns=lab.server) == (True, "")


@needs_lab
def test_a_dropped_address_times_out_until_its_ttl_runs_out(
        lab: NetnsLab, firewall: Firewall) -> None:
    assert lab.connect(CLIENT4) == "ok"
    firewall.drop(CLIENT4, 2.0)
    applied = time.monotonic()
    assert firewall.flush() == 1
    assert lab.connect(CLIENT4) == "timeout"
    assert lab.connect(NEIGHBOUR4) == "ok"  # same /24, not dropped
    _wait_until(applied + 2.3)
    assert lab.connect(CLIENT4) == "ok"


@needs_lab
def test_a_dropped_prefix_covers_its_addresses_only(lab: NetnsLab, firewall: Firewall) -> None:
    firewall.drop("10.233.0.77/24", 2.0)  # host bits are cleared
    applied = time.monotonic()
    assert firewall.flush() == 1
    assert lab.connect(CLIENT4) == "timeout"
    assert lab.connect(NEIGHBOUR4) == "timeout"
    assert lab.connect(OTHER4) == "ok"  # 10.234.0.2: outside the /24
    _wait_until(applied + 2.3)
    assert lab.connect(CLIENT4) == "ok"
    assert lab.connect(NEIGHBOUR4) == "ok"


@needs_lab
def test_ipv6_address_and_prefix(lab: NetnsLab, firewall: Firewall) -> None:
    assert lab.connect(CLIENT6) == "ok"
    firewall.drop(CLIENT6, 2.0)
    applied = time.monotonic()
    firewall.flush()
    assert lab.connect(CLIENT6) == "timeout"
    assert lab.connect(NEIGHBOUR6) == "ok"
    _wait_until(applied + 2.3)
    assert lab.connect(CLIENT6) == "ok"

    firewall.drop("2001:db8:233::/64", 2.0)
    applied = time.monotonic()
    firewall.flush()
    assert lab.connect(NEIGHBOUR6) == "timeout"
    assert lab.connect(CLIENT6) == "timeout"
    _wait_until(applied + 2.3)
    assert lab.connect(NEIGHBOUR6) == "ok"


@needs_lab
@pytest.mark.parametrize("mode", ["native", "readd"])
def test_dropping_again_refreshes_the_timeout_and_remove_lifts_it(
        lab: NetnsLab, mode: str) -> None:
    fw = Firewall(netns=lab.server, refresh=mode)  # type: ignore[arg-type]
    fw.start()
    try:
        fw.drop(CLIENT4, 1.0)
        applied = time.monotonic()
        fw.flush()
        fw.drop(CLIENT4, 30.0)  # already in the set: gets the new timeout
        fw.flush()
        listing = lab.nft("list", "set", "inet", "kalkan", "drop4")
        fresh = r"10\.233\.0\.2 timeout (30s|29s\d+ms) expires (30s|2\ds)"
        assert re.search(fresh, listing), listing
        _wait_until(applied + 1.5)
        assert lab.connect(CLIENT4) == "timeout"  # the first timeout has passed
        fw.remove(CLIENT4)
        fw.remove(NEIGHBOUR4)  # never dropped: removing it is harmless
        assert fw.flush() == 2
        assert lab.connect(CLIENT4) == "ok"
        fw.drop(CLIENT4, 30.0)
        fw.flush()
        fw.drop(CLIENT4, 0.5)  # shorter wins too: the last drop() decides
        fw.flush()
        listing = lab.nft("list", "set", "inet", "kalkan", "drop4")
        assert re.search(r"10\.233\.0\.2 timeout (500|4\d\d)ms", listing), listing
    finally:
        fw.stop()


@needs_lab
def test_auto_refresh_mode_is_probed(lab: NetnsLab, firewall: Firewall) -> None:
    assert firewall.refresh in ("native", "readd")
    assert "refresh_probe" not in lab.nft("list", "table", "inet", "kalkan")


@needs_lab
def test_many_entries_and_new_prefix_lengths(lab: NetnsLab) -> None:
    fw = Firewall(netns=lab.server, batch_size=500)
    fw.start()
    try:
        for i in range(3000):
            fw.drop(f"198.51.{i // 250}.{i % 250}", 60)
        for i in range(300):
            fw.drop(f"2001:db8:9::{i:x}", 60)
        for i in range(50):
            fw.drop(f"203.0.{i}.0/24", 60)
        for i in range(20):
            fw.drop(f"2001:db8:7:{i:x}::/64", 60)
        fw.drop("192.0.0.0/16", 60)
        fw.drop("2001:db8:5::/48", 60)
        assert fw.flush() == 3372
        assert fw.sizes() == (3051, 321)
        assert fw.kernel_sizes() == (3051, 321)
        assert fw.stats().failed == 0 and fw.stats().batches >= 7
        fw.clear()
        assert fw.kernel_sizes() == (0, 0) and fw.sizes() == (0, 0)
    finally:
        fw.stop()


@needs_lab
def test_a_full_set_is_reported(lab: NetnsLab) -> None:
    fw = Firewall("kalkan_small", netns=lab.server, max_entries=8)
    fw.start()
    try:
        for i in range(8):
            fw.drop(f"198.51.100.{i}", 60)
        assert fw.flush() == 8
        for i in range(8, 18):
            fw.drop(f"198.51.100.{i}", 60)
        assert fw.flush() == 0
        stats = fw.stats()
        assert stats.set_full and stats.failed == 10 and "Too many open files" in stats.last_error
        fw.remove("198.51.100.99")  # absent from a full set: its add+delete fails, harmlessly
        fw.remove("198.51.100.0")
        assert fw.flush() == 1
        assert fw.kernel_sizes() == (7, 0)
        fw.drop("198.51.100.99", 60)  # room again
        assert fw.flush() == 1
    finally:
        fw.stop()


@needs_lab
def test_start_replaces_a_leftover_and_touches_no_other_table(lab: NetnsLab) -> None:
    lab.nft("-f", "-", stdin="table inet kalkan { set leftover { type ipv4_addr; }; }\n"
                             "table inet other { set keep { type ipv4_addr; }; }\n")
    fw = Firewall(netns=lab.server)
    try:
        fw.start()
        assert "leftover" not in lab.nft("list", "table", "inet", "kalkan")
        fw.drop(CLIENT4, 30)
        fw.flush()
        fw.start()  # a second start (a restart) empties the sets
        assert lab.connect(CLIENT4) == "ok"
        fw.stop()
        tables = lab.nft("list", "tables")
        assert "table inet other" in tables and "kalkan" not in tables
        fw.stop()  # stopping twice is fine
    finally:
        fw.stop()
        lab.nft("-f", "-", stdin="add table inet other\ndelete table inet other\n")


@needs_lab
def test_a_vanished_table_is_made_again(lab: NetnsLab, firewall: Firewall) -> None:
    firewall.drop("203.0.0.0/16", 60)  # a lazily made set, which must come back too
    firewall.flush()
    lab.nft("flush", "ruleset")  # what `systemctl restart nftables` does (in this namespace)
    firewall.drop(CLIENT4, 30)
    firewall.drop("198.51.0.0/16", 30)
    assert firewall.flush() == 2
    assert firewall.stats().recreated == 1 and firewall.stats().failed == 0
    assert lab.connect(CLIENT4) == "timeout"
    assert "@drop4_16" in lab.nft("list", "chain", "inet", "kalkan", "prerouting")


@needs_lab
def test_a_failed_start_raises(lab: NetnsLab) -> None:
    fw = Firewall(netns=lab.server, nft="/nonexistent/nft")
    with pytest.raises(FirewallError):
        fw.start()


@needs_lab
@pytest.mark.slow
def test_bench_runs(lab: NetnsLab, tmp_path: Path) -> None:
    """The benchmark itself (small): a broken bench is caught here, not on the day."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.firewall", "--addresses", "3000", "--round-size", "1000",
         "--output-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    # 3,000 entries cannot meet the 1 million target: exit 1 is expected, crashes are not
    assert done.returncode in (0, 1), done.stderr[-2000:]
    text = (tmp_path / "firewall.md").read_text()
    assert "target >= 10,000/s" in text and "listed client address: `timeout`" in text
    assert shutil.which("ip") and "kalkan-bench" not in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
