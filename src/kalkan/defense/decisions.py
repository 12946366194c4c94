"""Standing decisions: what to do with an address, a prefix or a network for a while, and why.

Each decision has an action, a reason, a TTL and an origin (rule, manual, attack mode, escalation,
later detector or ally). Lookups on the request path are two dict reads (exact address, client
prefix) plus a scan of the few wider networks. Repeated strikes against a client (challenge
failures, blocks) escalate to longer and harsher decisions, up to a kernel drop. The table is
saved atomically to a JSON file so a restart or a crash keeps it; a save that fails raises (the
admin API must tell the operator) and leaves no temp file behind. A damaged file never stops the
edge: it is moved aside as `decisions.json.damaged-<time>` with one log line, and whatever entries
in it are sound are still loaded.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kalkan.statefiles import remove_leftovers

log = logging.getLogger("kalkan.decisions")

ACTIONS = ("allow", "challenge", "tarpit", "block", "drop")
# Harshness order, for escalation and for choosing between an address and a prefix decision.
SEVERITY = {"allow": 0, "challenge": 1, "tarpit": 2, "block": 3, "drop": 4}
ORIGINS = ("rule", "manual", "attack_mode", "escalation", "detector", "ally")


class DecisionError(ValueError):
    """A decision that cannot be stored: bad address, action or TTL; the message says which."""


@dataclass(slots=True)
class Decision:
    target: str        # an address ("203.0.113.7") or a network ("203.0.113.0/24")
    action: str
    reason: str
    origin: str
    created: float
    expires: float     # wall-clock time; math.inf for "until removed"

    def remaining(self, now: float) -> float:
        return self.expires - now


@dataclass(frozen=True, slots=True)
class EscalationStep:
    strikes: int       # reached this many strikes within the window…
    action: str        # …gives this decision…
    ttl: float         # …for this long


DEFAULT_ESCALATION = (
    EscalationStep(5, "challenge", 600.0),
    EscalationStep(10, "block", 3600.0),
    EscalationStep(20, "drop", 86400.0),
)


TOKEN_PREFIX = "token:"  # a decision about one pass token, wherever its holder moves
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped IPv6: an IPv4 reader, really


def normalize_target(target: str) -> str:
    """An address, CIDR or `token:ID` in canonical form; raises DecisionError naming the
    problem."""
    text = target.strip()
    if text.startswith(TOKEN_PREFIX):
        token = text[len(TOKEN_PREFIX):]
        if not token or len(token) > 64 or not token.replace("-", "").replace("_", "").isalnum():
            raise DecisionError(f"{target!r} is not a pass token id")
        return text
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
                # Readers arrive as IPv4 (facts unmap ::ffff:a.b.c.d), so the decision must too.
                net = ipaddress.IPv4Network(
                    (int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
            if net.prefixlen == net.max_prefixlen:
                return str(net.network_address)
            return str(net)
        return str(_unmapped(ipaddress.ip_address(text)))
    except ValueError:
        raise DecisionError(f"{target!r} is not an IP address or CIDR network") from None


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address
              ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Decisions:
    """The decision table: add, look up, expire, escalate, list, persist."""

    def __init__(self, path: str | Path | None = None,
                 escalation: tuple[EscalationStep, ...] = DEFAULT_ESCALATION,
                 strike_window: float = 3600.0,
                 client_prefix_len: tuple[int, int] = (24, 64)) -> None:
        self.path = Path(path) if path else None
        # The defence's prefix lengths (IPv4, IPv6): a decision on a network of exactly that
        # size is found by the client's own prefix text; any other size is scanned for.
        self.client_prefix_len = client_prefix_len
        self.escalation = tuple(sorted(escalation, key=lambda s: s.strikes))
        self.strike_window = strike_window
        self.exact: dict[str, Decision] = {}       # single addresses and client-sized prefixes
        self.networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Decision]] = []
        self.strikes: dict[str, tuple[int, float]] = {}  # address → (count, window start)
        self.changes = 0
        # Called with (decision or None when removed, target): the firewall listens here.
        self.on_change: list[Callable[[Decision | None, str], None]] = []

    # -- changes --------------------------------------------------------------------------------
    def add(self, target: str, action: str, ttl: float | None, reason: str, origin: str,
            now: float) -> Decision:
        """Store a decision (replacing one for the same target); ttl None means until removed."""
        if action not in ACTIONS:
            raise DecisionError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        if origin not in ORIGINS:
            raise DecisionError(f"unknown origin {origin!r}")
        if ttl is not None and (ttl <= 0 or math.isnan(ttl)):
            raise DecisionError(f"a TTL must be positive, got {ttl!r}")
        key = normalize_target(target)
        decision = Decision(key, action, reason[:200], origin, now,
                            math.inf if ttl is None else now + ttl)
        self._remove(key)
        if "/" in key:
            net = ipaddress.ip_network(key)
            if net.prefixlen == self.client_prefix_len[0 if net.version == 4 else 1]:
                self.exact[key] = decision   # found by the client's own prefix string
            else:
                self.networks.append((net, decision))
        else:
            self.exact[key] = decision
        self._changed(decision, key)
        return decision

    def delete(self, target: str) -> bool:
        key = normalize_target(target)
        removed = self._remove(key)
        if removed:
            self._changed(None, key)
        return removed

    def clear(self) -> int:
        n = len(self.exact) + len(self.networks)
        targets = list(self.exact) + [d.target for _, d in self.networks]
        self.exact.clear()
        self.networks.clear()
        self.strikes.clear()
        for t in targets:
            self._changed(None, t)
        return n

    def _remove(self, key: str) -> bool:
        if self.exact.pop(key, None) is not None:
            return True
        before = len(self.networks)
        self.networks = [(n, d) for n, d in self.networks if d.target != key]
        return len(self.networks) != before

    def _changed(self, decision: Decision | None, target: str) -> None:
        self.changes += 1
        for callback in self.on_change:
            callback(decision, target)

    def get(self, target: str) -> Decision | None:
        """The decision on exactly `target` (canonical, as stored), expired or not."""
        found = self.exact.get(target)
        if found is None:
            found = next((d for _, d in self.networks if d.target == target), None)
        return found

    # -- the request path -----------------------------------------------------------------------
    def lookup(self, address: str, prefix: str, now: float,
               token: str | None = None) -> Decision | None:
        """The harshest live decision for this client (address, its prefix, wider networks,
        and its pass token when it has one)."""
        found = None
        if address.startswith("::ffff:"):  # a dual-stack socket's view of an IPv4 reader
            with contextlib.suppress(ValueError):
                address = str(_unmapped(ipaddress.ip_address(address)))
        if self.exact:
            # The token first: of two equally harsh decisions, the one about the token wins,
            # as that token cannot meet it (a challenge on an address is met by a pass).
            keys = (address, prefix) if token is None else (TOKEN_PREFIX + token, address, prefix)
            for key in keys:
                d = self.exact.get(key)
                if d is not None:
                    if d.expires <= now:
                        del self.exact[key]
                        self._changed(None, key)
                    elif found is None or SEVERITY[d.action] > SEVERITY[found.action]:
                        found = d
        if self.networks:
            addr = ipaddress.ip_address(address)
            for net, d in self.networks:
                if d.expires > now and addr in net and (
                        found is None or SEVERITY[d.action] > SEVERITY[found.action]):
                    found = d
        return found

    def strike(self, address: str, reason: str, now: float) -> Decision | None:
        """Count a strike (failed challenge, blocked request); escalate when a step is reached."""
        count, start = self.strikes.get(address, (0, now))
        if now - start > self.strike_window:
            count, start = 0, now
        count += 1
        if len(self.strikes) > 200_000:
            self.strikes.clear()  # bounded: under a huge botnet, start counting afresh
        self.strikes[address] = (count, start)
        for step in reversed(self.escalation):
            if count == step.strikes:
                current = self.exact.get(address)
                action = step.action
                if current is not None and SEVERITY[current.action] >= SEVERITY[action]:
                    if current.expires >= now + step.ttl:
                        return None
                    # Escalation lengthens what stands, never softens it: a rule's short block
                    # stays a block for the step's longer time, not a challenge.
                    action = current.action
                return self.add(address, action, step.ttl,
                                f"escalated after {count} strikes: {reason}", "escalation", now)
        return None

    def expire(self, now: float) -> int:
        gone = [k for k, d in self.exact.items() if d.expires <= now]
        for k in gone:
            del self.exact[k]
            self._changed(None, k)
        before = len(self.networks)
        self.networks = [(n, d) for n, d in self.networks if d.expires > now]
        return len(gone) + before - len(self.networks)

    def all(self, now: float) -> list[Decision]:
        live = [d for d in self.exact.values() if d.expires > now]
        live += [d for _, d in self.networks if d.expires > now]
        return sorted(live, key=lambda d: d.created)

    def __len__(self) -> int:
        return len(self.exact) + len(self.networks)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, now: float) -> None:
        """Write live decisions atomically (tmp file + fsync + rename): a crash leaves old or
        new. Raises OSError (disk full, read-only...) with no temp file left behind."""
        if self.path is None:
            return
        rows = [asdict(d) | {"expires": None if math.isinf(d.expires) else d.expires}
                for d in self.all(now)]
        data = json.dumps({"version": 1, "decisions": rows}).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self._tmp_prefix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # ENOSPC can surface only here on some file systems
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @property
    def _tmp_prefix(self) -> str:
        assert self.path is not None
        return f".{self.path.stem}-"

    def load(self, now: float) -> int:
        """Read saved decisions; never raises. A damaged file (not JSON, wrong types, a
        directory, unreadable) is moved aside with one log line and its sound entries kept."""
        if self.path is None:
            return 0
        self._remove_temp_files()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as exc:  # a directory in its place, unreadable, I/O error
            self._damaged(f"cannot be read ({exc.strerror or exc})", "no decisions")
            return 0
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("decisions"), list):
                raise ValueError('expected {"decisions": [...]}')
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError too
            self._damaged(f"is not a decisions file ({exc})", "no decisions")
            return 0
        rows = doc["decisions"]
        problems: list[str] = []
        n = 0
        for i, row in enumerate(rows):
            try:
                target, action, reason, origin, created, expires = _parse_row(row)
                if expires <= now:
                    continue
                d = self.add(target, action, None if math.isinf(expires) else expires - now,
                             reason, origin, now)
            except (DecisionError, ValueError, TypeError) as exc:
                problems.append(f"entry {i}: {exc}")
                continue
            d.created = now if created is None else created
            n += 1
        if problems:
            self._damaged(f"has {len(problems)} bad of {len(rows)} entries (first: "
                          f"{problems[0][:160]})", f"the {n} sound ones loaded")
        return n

    def _damaged(self, problem: str, outcome: str) -> None:
        """Move the damaged file aside (kept for the operator, never silently dropped) and
        say so in one line."""
        assert self.path is not None
        aside = move_aside(self.path)
        where = f"moved aside to {aside.name}" if aside is not None else "could not be moved aside"
        log.error("decisions file %s %s; %s; starting with %s",
                  self.path, problem.replace("\n", " "), where, outcome)

    def _remove_temp_files(self) -> None:
        """Temp files of a save cut short (SIGKILL, power loss) are never completed: remove."""
        assert self.path is not None
        remove_leftovers(self.path.parent, self._tmp_prefix + "*")


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value)


def _parse_row(row: object) -> tuple[str, str, str, str, float | None, float]:
    """(target, action, reason, origin, created, expires) of one saved entry, type-checked."""
    if not isinstance(row, dict):
        raise ValueError(f"{type(row).__name__} instead of an object")
    text = {}
    for what, default in (("target", None), ("action", None), ("reason", ""),
                          ("origin", "manual")):
        value = row.get(what, default)
        if not isinstance(value, str):
            raise ValueError(f"{what} is {value!r}, not a string")
        text[what] = value
    expires = math.inf if row.get("expires") is None else _number(row["expires"], "expires")
    created = None if row.get("created") is None else _number(row["created"], "created")
    return text["target"], text["action"], text["reason"], text["origin"], created, expires


def move_aside(path: Path) -> Path | None:
    """Rename a damaged state file (or directory) to `<name>.damaged-<time>`; None if the
    rename fails (read-only directory...)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for i in range(100):
        aside = path.with_name(f"{path.name}.damaged-{stamp}" + (f"-{i}" if i else ""))
        if aside.exists():
            continue
        try:
            os.replace(path, aside)
        except OSError:
            return None
        return aside
    return None
