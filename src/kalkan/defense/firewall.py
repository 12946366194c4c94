"""Kernel drops: the worst offenders' addresses and prefixes in nftables sets, applied in batches.

A refusal in the edge still costs an accept, a parse and a reply. For the worst offenders, Kalkan
puts the address (or prefix) into an nftables table of its own (family ``inet``, default name
``kalkan``) so the kernel drops their packets before any socket sees them. Linux only, needs root
(CAP_NET_ADMIN) and the ``nft`` command (Debian package ``nftables``).

The table::

    table inet kalkan {
        set drop4    { type ipv4_addr; flags timeout; size N; }   # IPv4 addresses
        set drop4_24 { type ipv4_addr; flags timeout; size N; }   # IPv4 /24 prefixes
        set drop6    { type ipv6_addr; flags timeout; size N; }   # IPv6 addresses
        set drop6_64 { type ipv6_addr; flags timeout; size N; }   # IPv6 /64 prefixes
        chain prerouting {
            type filter hook prerouting priority raw; policy accept;
            ip saddr @drop4 counter drop
            ip saddr & 255.255.255.0 @drop4_24 counter drop
            ip6 saddr @drop6 counter drop
            ip6 saddr & ffff:ffff:ffff:ffff:: @drop6_64 counter drop
        }
    }

Why this shape:

- **One hash set per prefix length, not one interval set.** With nft 1.0.6 (Debian 12), adding to
  an ``interval`` set makes nft load the whole set first, so a batch costs O(set size). Measured on
  this project's machine, one batch of 5,000 into a 700,000-entry interval set took 210 s. Hash
  sets take 30,000 to 80,000 entries/s, and that rate does not fall as they fill up to a
  million (``bench/results/firewall.md``). A prefix becomes the masked network address in the
  set for its length, and the rule masks the source address the same way. This also means that
  nested prefixes (a /16 and a /24 inside it) never conflict, and each keeps its own timeout,
  where an interval set refuses overlaps. Sets for /24 and /64 (configurable) are made at
  start; other lengths get their set and rule when first used.
- **Priority raw (-300) in prerouting**: before connection tracking (-200), so a flood of dropped
  packets creates no conntrack entries.
- **Timeouts are per element.** A set element with ``timeout 0`` would never expire, so TTLs are
  clamped to between 1 ms and :data:`MAX_TTL`.
- **Refreshing a timeout.** Linux 6.10 and later update an existing element's timeout on
  ``add element``. Older kernels (Debian 12 ships 6.1) keep the old timeout and report success. The
  :meth:`Firewall.start` method probes which behaviour the kernel has. On an older kernel every
  batch is written as ``add``, ``delete``, ``add`` of the same elements in one transaction: the
  first ``add`` makes sure the element exists, so the ``delete`` cannot fail. Either way, the
  last :meth:`Firewall.drop` wins.
- **Removal** is ``add`` (1 s) and then ``delete`` in one transaction, so it succeeds whether or
  not the element is still there (a bare ``delete`` of a missing element aborts the transaction).
- **If the table vanishes** (``systemctl restart nftables`` runs ``flush ruleset``), the next
  flush makes it again, empty, and counts that in ``stats().recreated``. The caller then pushes
  its standing kernel drops again.
- **Never list a big set.** In nft 1.0.6 every listing (even ``list counter``) fetches all set
  elements, and the kernel's dump of a hash set is quadratic: about 2 minutes at 1 million
  entries. So :meth:`Firewall.sizes` is kept in memory, not asked of the kernel.

Threads: :meth:`Firewall.drop` and :meth:`Firewall.remove` only validate and queue, and can be
called from the event loop. :meth:`Firewall.flush` runs ``nft`` (blocking, tens of milliseconds per
batch) and belongs in a worker thread. A lock guards the queue swap, and a second lock makes
concurrent flushes take turns.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_TTL = 365 * 86400.0
"""Longest timeout put on an element (seconds). Longer TTLs are clamped to this."""
MIN_PREFIX = {4: 8, 6: 16}
"""Widest prefix accepted per IP version: a slip of the pen must not drop a continent."""
DEFAULT_PROTECTED: tuple[str, ...] = (
    "127.0.0.0/8", "::1/128",          # loopback: the edge talks to a local origin over it
    "0.0.0.0/32", "::/128",            # unspecified: DHCP and duplicate address detection
    "169.254.0.0/16", "fe80::/10",     # link-local: neighbour discovery, the router
)
"""Networks that are never dropped. Callers add their allowlist, trusted proxies and origin."""
DEFAULT_PREFIX_LENGTHS = (24, 64)
"""IPv4 and IPv6 prefix lengths whose sets exist from the start (the client tracker's)."""

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,30}\Z")
_NETNS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_SET_FULL = "Too many open files"  # ENFILE: the set holds `size` elements
_MISSING = "No such file or directory"  # ENOENT: the table or set is gone
_RETRY_BUDGET = 64  # extra nft runs per flush spent on splitting failed batches
_CAP_NET_ADMIN = 12

RefreshMode = Literal["auto", "native", "readd"]


class FirewallError(RuntimeError):
    """nft failed in a way the caller must know about (start, stop, or flush before start)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A validated drop target: the network address text, IP version and prefix length."""

    address: str
    version: int
    prefixlen: int

    @property
    def set_name(self) -> str:
        return set_name(self.version, self.prefixlen)

    def __str__(self) -> str:
        full = 32 if self.version == 4 else 128
        return self.address if self.prefixlen == full else f"{self.address}/{self.prefixlen}"


def set_name(version: int, prefixlen: int) -> str:
    """The set that holds targets of this version and prefix length (``drop4``, ``drop6_64``)."""
    full = 32 if version == 4 else 128
    return f"drop{version}" if prefixlen == full else f"drop{version}_{prefixlen}"


class Protected:
    """Networks that must never be dropped, as integer ranges so a check costs little."""

    def __init__(self, networks: Iterable[str | IPNetwork]) -> None:
        nets = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.networks = tuple(nets)
        self._ranges = [(n.version, int(n.network_address), int(n.broadcast_address), n)
                        for n in nets]

    def overlap(self, version: int, first: int, last: int) -> IPNetwork | None:
        """The protected network that overlaps ``first``..``last``, if any."""
        for v, lo, hi, net in self._ranges:
            if v == version and first <= hi and lo <= last:
                return net
        return None


_NO_GUARD = Protected(())


def parse_target(network: str, protected: Protected = _NO_GUARD) -> Target:
    """Validate an address or CIDR (v4 or v6) and return its canonical :class:`Target`.

    Host bits of a CIDR are cleared (``10.1.2.3/24`` is ``10.1.2.0/24``). IPv4-mapped IPv6
    (``::ffff:10.1.2.3``, how a dual-stack socket reports an IPv4 reader) becomes IPv4, because
    that is what the packets carry. Raises :class:`ValueError` for anything that is not an
    address, is wider than :data:`MIN_PREFIX`, or overlaps a *protected* network.
    """
    address = None
    try:
        text = network.strip()
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            version, prefixlen, value = net.version, net.prefixlen, int(net.network_address)
        else:  # the common case: inet_pton parses in C, ipaddress in Python (5x slower)
            try:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET, text))
                version, prefixlen, address = 4, 32, text  # inet_pton refuses non-canonical
            except OSError:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text))
                version, prefixlen = 6, 128
    except (OSError, ValueError, TypeError, AttributeError):
        raise ValueError(f"not an IP address or CIDR: {network!r}") from None
    if version == 6 and prefixlen >= 96 and value >> 32 == 0xFFFF:  # ::ffff:0:0/96
        version, prefixlen, value = 4, prefixlen - 96, value & 0xFFFFFFFF
    bits = 32 if version == 4 else 128
    if address is None:
        address = str(ipaddress.IPv4Address(value) if version == 4
                      else ipaddress.IPv6Address(value))
    if prefixlen < MIN_PREFIX[version]:
        raise ValueError(f"refusing to drop {address}/{prefixlen}: "
                         f"wider than /{MIN_PREFIX[version]}")
    guard = protected.overlap(version, value, value | ((1 << (bits - prefixlen)) - 1))
    if guard is not None:
        raise ValueError(f"refusing to drop {address}/{prefixlen}: overlaps protected {guard}")
    return Target(address, version, prefixlen)


def format_timeout(ms: int) -> str:
    """An nft timeout: ``1d2h3m4s5ms``.

    nft 1.0.6 refuses plain millisecond counts of 9 digits or more, but it accepts the units.
    """
    if ms <= 0:
        raise ValueError("an element timeout must be positive (0 would never expire)")
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts)


Op = tuple[Target, int | None]
"""One queued change: a target and its timeout in ms (``None`` removes it)."""


def batch_script(table: str, ops: Sequence[Op], readd: bool = False) -> str:
    """The nft script (one transaction) that applies *ops*, grouped into one statement per set.

    Adds come first: ``add element`` with per-element timeouts. With *readd* (kernels that do
    not refresh timeouts on ``add``) they are followed by a ``delete`` and the same ``add``
    again. Removals are written as an ``add`` with a 1 s timeout, then a ``delete``. A target
    appears at most once in *ops*: :class:`Firewall` merges duplicates before building batches.
    """
    adds: dict[str, list[tuple[str, int]]] = {}
    removes: dict[str, list[str]] = {}
    for target, ms in ops:
        if ms is None:
            removes.setdefault(target.set_name, []).append(target.address)
        else:
            adds.setdefault(target.set_name, []).append((target.address, ms))
    lines = []
    for name, elements in adds.items():
        timed = ", ".join(f"{key} timeout {format_timeout(ms)}" for key, ms in elements)
        add = f"add element inet {table} {name} {{ {timed} }}"
        lines.append(add)
        if readd:
            listed = ", ".join(key for key, _ in elements)
            lines += [f"delete element inet {table} {name} {{ {listed} }}", add]
    for name, keys in removes.items():
        lines.append(f"add element inet {table} {name} "
                     f"{{ {', '.join(k + ' timeout 1s' for k in keys)} }}")
        lines.append(f"delete element inet {table} {name} {{ {', '.join(keys)} }}")
    return "\n".join(lines) + "\n"


def _mask(version: int, prefixlen: int) -> str:
    net = ipaddress.ip_network(("0.0.0.0" if version == 4 else "::", prefixlen))
    return str(net.netmask)


def _rule(version: int, prefixlen: int) -> str:
    field_ = "ip saddr" if version == 4 else "ip6 saddr"
    full = 32 if version == 4 else 128
    match = field_ if prefixlen == full else f"{field_} & {_mask(version, prefixlen)}"
    return f"{match} @{set_name(version, prefixlen)} counter drop"


def _set_body(version: int, size: int) -> str:
    return f"{{ type ipv{version}_addr; flags timeout; size {size}; }}"


@dataclass
class FirewallStats:
    """Counters for metrics and logs; read them with :meth:`Firewall.stats`."""

    applied: int = 0
    """Drops applied (added or refreshed in the kernel)."""
    removed: int = 0
    """Removals applied."""
    failed: int = 0
    """Queued changes that nft refused (see ``last_error``); they are not retried."""
    invalid: int = 0
    """``drop``/``remove`` calls refused by validation (they raised ValueError)."""
    expired_in_queue: int = 0
    """Drops whose TTL ran out before a flush got to them (not sent)."""
    batches: int = 0
    """nft transactions run by flush (including retries of split batches)."""
    flushes: int = 0
    last_flush_seconds: float = 0.0
    last_error: str = ""
    recreated: int = 0
    """Times flush found the table gone (e.g. ``flush ruleset``) and made it again, empty."""
    set_full: bool = False
    """The last failure was a full set (``size`` reached): raise ``max_entries`` or shorten TTLs."""


@dataclass
class _Live:
    """An estimate of one IP version's element count: how many expire in each second."""

    buckets: dict[int, int] = field(default_factory=dict)
    heap: list[int] = field(default_factory=list)
    total: int = 0

    def add(self, expires: int) -> None:
        if expires not in self.buckets:
            self.buckets[expires] = 0
            heapq.heappush(self.heap, expires)
        self.buckets[expires] += 1
        self.total += 1

    def discard_one(self, now: float) -> None:
        self.prune(now)
        if self.heap:  # which bucket the removed element was in is unknown: take the soonest
            first = self.heap[0]
            self.buckets[first] -= 1
            self.total -= 1
            if not self.buckets[first]:
                heapq.heappop(self.heap)
                del self.buckets[first]

    def prune(self, now: float) -> int:
        while self.heap and self.heap[0] <= now:
            self.total -= self.buckets.pop(heapq.heappop(self.heap))
        return self.total


class Firewall:
    """An nftables table that drops queued addresses and prefixes until their TTLs run out.

    ``table``: the nftables table name (family ``inet``). ``netns``: run ``nft`` inside this
    network namespace (``ip netns exec``), for tests and benchmarks. ``nft``: the nft command.
    ``batch_size``: elements per nft transaction. ``max_entries``: the size of each set. When a
    set is full, the kernel refuses the whole batch, and the failure is counted in
    :meth:`stats`. ``prefix_lengths``: the IPv4 and IPv6 prefix lengths whose sets are created
    at start (other lengths get a set when first used). ``protected``: extra networks that must
    never be dropped, on top of :data:`DEFAULT_PROTECTED`. ``refresh``: how existing elements
    get a new timeout: ``"auto"`` probes the kernel, ``"native"`` is plain ``add`` (Linux >=
    6.10), ``"readd"`` is add+delete+add. ``timeout``: the time limit for one nft run, in
    seconds.
    """

    def __init__(
        self,
        table: str = "kalkan",
        *,
        netns: str | None = None,
        nft: str = "nft",
        batch_size: int = 5000,
        max_entries: int = 1 << 20,
        prefix_lengths: tuple[int, int] = DEFAULT_PREFIX_LENGTHS,
        protected: Iterable[str] = (),
        refresh: RefreshMode = "auto",
        timeout: float = 60.0,
    ) -> None:
        if not _NAME_RE.match(table):
            raise ValueError(f"bad nftables table name {table!r}")
        if netns is not None and not _NETNS_RE.match(netns):
            raise ValueError(f"bad network namespace name {netns!r}")
        if batch_size < 1 or max_entries < 1:
            raise ValueError("batch_size and max_entries must be positive")
        if refresh not in ("auto", "native", "readd"):
            raise ValueError(f"refresh must be auto, native or readd, not {refresh!r}")
        self.table = table
        self.netns = netns
        self.nft = nft
        self.batch_size = batch_size
        self.max_entries = max_entries
        self.timeout = timeout
        self.refresh: RefreshMode = refresh
        self.protected = Protected((*DEFAULT_PROTECTED, *protected))
        plen4, plen6 = prefix_lengths
        if not (MIN_PREFIX[4] <= plen4 <= 32 and MIN_PREFIX[6] <= plen6 <= 128):
            raise ValueError(f"bad prefix lengths {prefix_lengths!r}: IPv4 /{MIN_PREFIX[4]}-/32,"
                             f" IPv6 /{MIN_PREFIX[6]}-/128")
        self._initial_lengths = {(4, 32), (6, 128), (4, plen4), (6, plen6)}
        self._lengths: set[tuple[int, int]] = set()  # sets that exist in the kernel
        self._pending: dict[Target, float | None] = {}  # target -> deadline (monotonic) or None
        self._lock = threading.Lock()  # guards _pending, _live and _stats
        self._flush_lock = threading.Lock()  # one flush (or start/stop) at a time
        self._live = {4: _Live(), 6: _Live()}
        self._stats = FirewallStats()
        self._started = False

    # ------------------------------------------------------------------ availability

    @staticmethod
    def available(nft: str = "nft", netns: str | None = None) -> tuple[bool, str]:
        """Can this process use kernel drops? ``(True, "")`` or ``(False, why not)``.

        Checks Linux, root or CAP_NET_ADMIN, the nft command, and kernel support. For the
        kernel check it runs a dry run of a small table with a timeout set and a raw-priority
        prerouting chain (``nft --check``). A dry run changes nothing.
        """
        if not sys.platform.startswith("linux"):
            return False, "kernel drops need Linux (nftables)"
        if os.geteuid() != 0 and not _has_cap_net_admin():
            return False, "kernel drops need root (CAP_NET_ADMIN)"
        if shutil.which(nft) is None:
            return False, f"{nft!r} not found: install the Debian package nftables"
        script = ("table inet kalkan_probe {\n  set s " + _set_body(4, 16) + "\n"
                  "  chain c { type filter hook prerouting priority raw; policy accept;\n"
                  "    ip saddr & 255.255.255.0 @s counter drop\n  }\n}\n")
        argv = [nft, "--check", "-f", "-"]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        try:
            done = subprocess.run(argv, input=script, capture_output=True, text=True,
                                  timeout=15, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"nft did not run: {exc}"
        if done.returncode != 0:
            return False, f"no kernel support for nftables timeout sets: {_first(done.stderr)}"
        return True, ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create the table, its sets and its chain. A leftover table from a crash is replaced.

        Under ``refresh="auto"`` this also probes whether the kernel refreshes the timeouts of
        existing elements (see the module docstring).
        """
        with self._flush_lock:
            self._create()
            if self.refresh == "auto":
                try:
                    native = self._probe_native_refresh()
                except FirewallError:
                    with contextlib.suppress(FirewallError):
                        self._delete()
                    raise
                self.refresh = "native" if native else "readd"
                log.info("nftables table %s: timeout refresh by %s", self.table, self.refresh)
            self._started = True

    def _create(self) -> None:
        lengths = sorted(self._initial_lengths, key=lambda vp: (vp[0], -vp[1]))
        sets = "".join(f"  set {set_name(v, p)} {_set_body(v, self.max_entries)}\n"
                       for v, p in lengths)
        rules = "".join(f"    {_rule(v, p)}\n" for v, p in lengths)
        # "add" then "delete" clears a leftover whether or not there is one, atomically with
        # the new definition: once the table exists, there is no moment without it.
        script = (f"add table inet {self.table}\ndelete table inet {self.table}\n"
                  f"table inet {self.table} {{\n{sets}"
                  f"  chain prerouting {{\n"
                  f"    type filter hook prerouting priority raw; policy accept;\n"
                  f"{rules}  }}\n}}\n")
        self._run_or_raise(script, "create the table")
        self._lengths = set(lengths)
        with self._lock:
            self._live = {4: _Live(), 6: _Live()}

    def _delete(self) -> None:
        self._run_or_raise(f"add table inet {self.table}\ndelete table inet {self.table}\n",
                           "delete the table")

    def stop(self) -> None:
        """Delete the table (and with it every drop). Safe to call when there is no table."""
        with self._flush_lock:
            self._delete()
            self._started = False
            self._lengths = set()
            with self._lock:
                self._pending.clear()
                self._live = {4: _Live(), 6: _Live()}

    def __enter__(self) -> Firewall:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def started(self) -> bool:
        return self._started

    # ------------------------------------------------------------------ queueing

    def drop(self, network: str, ttl: float) -> None:
        """Queue an address or CIDR (v4 or v6) to be dropped for *ttl* seconds from now.

        Cheap, with no I/O: the next :meth:`flush` applies it. A target queued several times
        before a flush is sent once, and the last call wins. A target already in the kernel
        gets the new timeout. Raises :class:`ValueError` for an invalid, too wide or protected
        target, or a TTL that is not positive.
        """
        if not ttl > 0:  # also refuses NaN
            self._count_invalid()
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        target = self._parse(network)
        deadline = time.monotonic() + min(ttl, MAX_TTL)
        with self._lock:
            self._pending[target] = deadline

    def remove(self, network: str) -> None:
        """Queue the removal of an address or CIDR. It is cancelled by a later :meth:`drop`.

        Removing a target that is not in the kernel is fine.
        """
        target = self._parse(network)
        with self._lock:
            self._pending[target] = None

    def pending(self) -> int:
        """How many changes are waiting for the next flush."""
        with self._lock:
            return len(self._pending)

    # ------------------------------------------------------------------ applying

    def flush(self) -> int:
        """Apply the queued changes in batches of ``batch_size``. Returns how many were applied.

        Blocking: run it in a worker thread. Safe to call concurrently with :meth:`drop`,
        :meth:`remove` and other flushes. When nft refuses a batch, the batch is split in two
        and each half is tried again. This is bounded: after ``_RETRY_BUDGET`` extra runs, or
        when the set is full, the failure is counted in :meth:`stats` and logged instead. So
        one bad element does not sink its neighbours, and nothing fails silently.
        """
        with self._flush_lock:
            if not self._started:
                raise FirewallError("flush before start")
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return 0
            began = time.monotonic()
            removes: list[Op] = []
            adds: list[Op] = []
            skipped = 0
            for target, deadline in pending.items():
                if deadline is None:
                    removes.append((target, None))
                    continue
                ms = math.ceil((deadline - began) * 1000)
                if ms <= 0:
                    skipped += 1
                else:
                    adds.append((target, ms))
            if removes:  # a missing set means nothing to remove
                removes = [op for op in removes
                           if (op[0].version, op[0].prefixlen) in self._lengths]
            self._ensure_sets({(t.version, t.prefixlen) for t, _ in adds})
            budget = [_RETRY_BUDGET, 1]  # split runs left, table re-creations left
            done = 0
            # Removals first: they make room in a full set and are rare (manual deletes).
            for ops in (removes, adds):
                for i in range(0, len(ops), self.batch_size):
                    done += self._apply(ops[i:i + self.batch_size], budget)
            with self._lock:
                self._stats.expired_in_queue += skipped
                self._stats.flushes += 1
                self._stats.last_flush_seconds = time.monotonic() - began
            return done

    def clear(self) -> None:
        """Empty every set now (and forget what is queued). The table and chain stay."""
        with self._flush_lock:
            if not self._started:
                raise FirewallError("clear before start")
            with self._lock:
                self._pending.clear()
            script = "".join(f"flush set inet {self.table} {set_name(v, p)}\n"
                             for v, p in sorted(self._lengths))
            self._run_or_raise(script, "flush the sets")
            with self._lock:
                self._live = {4: _Live(), 6: _Live()}

    # ------------------------------------------------------------------ reading

    def sizes(self) -> tuple[int, int]:
        """Entries in the IPv4 and IPv6 sets (all prefix lengths), kept in memory: O(1).

        This is exact while every target is dropped once and left to expire. A refreshed target
        is counted twice until its first timeout passes. A removal is taken off the soonest
        expiring second, so for a while the count can be off by one per removal. Asking the
        kernel instead costs minutes at a million entries (see the module docstring);
        :meth:`kernel_sizes` does that for tests.
        """
        now = time.monotonic()
        with self._lock:
            return self._live[4].prune(now), self._live[6].prune(now)

    def kernel_sizes(self) -> tuple[int, int]:
        """Entries in the IPv4 and IPv6 sets as the kernel lists them.

        The kernel's set dump is quadratic, so use this only with small sets (tests).
        """
        counts = {4: 0, 6: 0}
        for version, plen in sorted(self._lengths):
            out = self._run_or_raise(
                f"list set inet {self.table} {set_name(version, plen)}\n", "list a set")
            match = re.search(r"elements = \{(.*?)\}", out, re.S)
            if match:
                counts[version] += sum(1 for e in match.group(1).split(",") if e.strip())
        return counts[4], counts[6]

    def stats(self) -> FirewallStats:
        """A copy of the counters (applied, removed, failed, invalid, batches, last error)."""
        with self._lock:
            return FirewallStats(**vars(self._stats))

    # ------------------------------------------------------------------ internals

    def _parse(self, network: str) -> Target:
        try:
            return parse_target(network, self.protected)
        except ValueError:
            self._count_invalid()
            raise

    def _count_invalid(self) -> None:
        with self._lock:
            self._stats.invalid += 1

    def _ensure_sets(self, wanted: set[tuple[int, int]]) -> None:
        """Create the set and rule for prefix lengths first seen in this flush."""
        new = sorted(wanted - self._lengths)
        if not new:
            return
        script = "".join(
            f"add set inet {self.table} {set_name(v, p)} {_set_body(v, self.max_entries)}\n"
            f"add rule inet {self.table} prerouting {_rule(v, p)}\n" for v, p in new)
        error = self._run(script)
        if error is None:
            self._lengths.update(new)
        else:  # the batches for these lengths will fail and be counted; say why once
            log.warning("nftables: could not add sets for %s: %s", new, error)

    def _apply(self, ops: list[Op], budget: list[int]) -> int:
        """Run one batch; on failure, split it while the retry budget lasts."""
        if not ops:
            return 0
        error = self._run(batch_script(self.table, ops, readd=self.refresh == "readd"))
        if error is not None and _MISSING in error and budget[1]:
            # Someone deleted the table: `systemctl restart nftables` runs `flush ruleset`.
            # Make it again and retry once. What it held is gone: the engine sees `recreated`
            # go up and pushes its standing kernel drops again.
            budget[1] -= 1
            log.warning("nftables table %s vanished (%s): re-creating it", self.table, error)
            had = set(self._lengths)
            try:
                self._create()
            except FirewallError as exc:
                error = str(exc)
            else:
                with self._lock:
                    self._stats.recreated += 1
                self._ensure_sets(had | {(t.version, t.prefixlen) for t, _ in ops})
                error = self._run(batch_script(self.table, ops, readd=self.refresh == "readd"))
        if error is None:
            self._account(ops)
            return len(ops)
        is_remove = ops[0][1] is None
        if is_remove and len(ops) == 1 and _SET_FULL in error:
            return 0  # a full set refuses the add in add+delete: the element was not there
        if len(ops) == 1 or budget[0] < 2 or (_SET_FULL in error and not is_remove):
            with self._lock:
                self._stats.failed += len(ops)
                self._stats.last_error = error
                self._stats.set_full = _SET_FULL in error
            log.warning("nftables refused %d change(s) to table %s: %s",
                        len(ops), self.table, error)
            return 0
        budget[0] -= 2
        mid = len(ops) // 2
        return self._apply(ops[:mid], budget) + self._apply(ops[mid:], budget)

    def _account(self, ops: list[Op]) -> None:
        now = time.monotonic()
        with self._lock:
            for target, ms in ops:
                live = self._live[target.version]
                if ms is None:
                    live.discard_one(now)
                    self._stats.removed += 1
                else:
                    live.add(math.ceil(now + ms / 1000))
                    self._stats.applied += 1
            self._stats.set_full = False

    def _probe_native_refresh(self) -> bool:
        """Does ``add element`` on an existing element set its new timeout? (Linux >= 6.10)"""
        probe = f"inet {self.table} refresh_probe"
        self._run_or_raise(f"add set {probe} {_set_body(4, 4)}\n"
                           f"add element {probe} {{ 192.0.2.1 timeout 1h }}\n", "probe")
        try:
            self._run_or_raise(f"add element {probe} {{ 192.0.2.1 timeout 2h }}\n", "probe")
            listing = self._run_or_raise(f"list set {probe}\n", "probe")
            return "timeout 2h" in listing
        finally:
            self._run_or_raise(f"delete set {probe}\n", "probe")

    def _argv(self, *args: str) -> list[str]:
        argv = [self.nft, *args]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def _run(self, script: str) -> str | None:
        """Run *script* as one nft transaction; ``None`` on success, else nft's error text."""
        with self._lock:
            self._stats.batches += 1
        try:
            done = subprocess.run(self._argv("-f", "-"), input=script, capture_output=True,
                                  text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"nft took longer than {self.timeout:g} s"
        except OSError as exc:
            return f"nft did not run: {exc}"
        return None if done.returncode == 0 else _first(done.stderr) or f"exit {done.returncode}"

    def _run_or_raise(self, script: str, what: str) -> str:
        try:
            done = subprocess.run(self._argv("-f", "-"), input=script, capture_output=True,
                                  text=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FirewallError(f"nftables: could not {what}: {exc}") from exc
        if done.returncode != 0:
            raise FirewallError(f"nftables: could not {what}: {_first(done.stderr)}")
        return done.stdout


def _first(stderr: str) -> str:
    """nft's error line (it follows with the offending input and a caret line)."""
    for line in stderr.splitlines():
        if "Error" in line:
            return line.strip()[:500]
    return stderr.strip()[:500]


def _has_cap_net_admin() -> bool:
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    return False
