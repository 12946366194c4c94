"""The lab's ground truth and the edge's decisions judged against it: who each source address
was (and each user agent, where readers and bots share an address), the edge's access log read
back and labelled, precision and recall of "challenge or block" per client, and the labelled
export (access-log lines with their true label, the behaviour model's training data).

Kalkan's decisions come from its access log's `decision` field (src/kalkan/defense/engine.py
writes it); nginx's from its status (429 is its `limit_req` / `limit_conn` refusal).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

BOT_ANY_UA = "*"
"""The user agent key of a bot address: the lab does not keep every user agent a bot sent
(a cache-busting wave rotates 512 of them), only that the address was a bot's."""
SHARED = "shared"
"""The label of a line from an address that readers and bots share, when the log does not say
which user agent sent it: it is left out of precision and recall."""
UNKNOWN = "unknown"
FLAGGING = frozenset({"challenge", "block", "refuse"})
"""Decision classes that count as "challenge or block"."""
PHASES = ("peace", "attack", "after")


def decision_class(decision: str) -> str:
    """The class of an access-log `decision`: challenge (any challenge page), block (block,
    tarpit, drop), refuse (the 429/503 given instead of a challenge on routes that are never
    challenged, such as feeds), limit (the connection refused the request: framing, size,
    timeouts; no judgement of the client), endpoint (the client answering a challenge), pass
    (a valid pass), allow (anything else let through)."""
    if not decision:
        return "allow"
    if decision.startswith("refused"):
        return "limit"
    head = decision.split(":", 1)[0]
    if head in ("block", "tarpit", "drop"):
        return "block"
    if head == "challenge-endpoint":
        return "endpoint"
    if head in ("challenge", "refuse", "pass", "allow"):
        return head
    return "allow"


def is_bot(label: str) -> bool | None:
    """True for bots, False for legitimate clients, None where the truth is not known."""
    if label in (SHARED, UNKNOWN):
        return None
    return label.startswith("bot:")


@dataclass
class GroundTruth:
    """Who the lab's clients were: per address, the label of each user agent seen from it
    (bots under BOT_ANY_UA)."""

    table: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def build(cls, identities: Iterable[Iterable[str]],
              bot_addresses: dict[str, Iterable[str]]) -> GroundTruth:
        """From the readers' (address, user agent, label) triples and the attack's addresses
        by label (what the agents report: bench/lab/agent.py)."""
        truth = cls()
        for address, ua, label in (tuple(i) for i in identities):
            truth.table.setdefault(address, {})[ua] = label
        for label, addresses in bot_addresses.items():
            for address in addresses:
                by_ua = truth.table.setdefault(address, {})
                known = by_ua.get(BOT_ANY_UA)
                # Waves that share addresses (slowloris and slow POST): both labels.
                by_ua[BOT_ANY_UA] = label if known is None or known == label else \
                    "|".join(sorted({*known.split("|"), label}))
        return truth

    def shared(self) -> set[str]:
        """Addresses used by readers and by bots (CGNAT)."""
        return {a for a, by_ua in self.table.items()
                if BOT_ANY_UA in by_ua and len(by_ua) > 1}

    def label(self, address: str, ua: str | None) -> str:
        """The true label of a request from *address* with user agent *ua* (None: the log does
        not say)."""
        by_ua = self.table.get(address)
        if by_ua is None:
            return UNKNOWN
        if ua is not None and ua in by_ua:
            return by_ua[ua]
        bot = by_ua.get(BOT_ANY_UA)
        if bot is not None:
            if len(by_ua) == 1:
                return bot
            # Readers here send the user agents listed; any other one is the bot's.
            return SHARED if ua is None else bot
        labels = sorted(set(by_ua.values()))
        return labels[0] if len(labels) == 1 else "|".join(labels)   # all legitimate

    def client_key(self, address: str, ua: str | None) -> str:
        """Whom a decision is about. The address, as Kalkan's decisions are (per address, per
        prefix, per pass); where readers and bots share an address, the address and the user
        agent, the finest the access log can tell apart."""
        if ua is not None and address in self.table and BOT_ANY_UA in self.table[address] \
                and len(self.table[address]) > 1:
            return f"{address} {ua}"
        return address


# --------------------------------------------------------------------------- reading the logs


def log_seconds(value: object) -> float | None:
    """A log line's time as Unix seconds: ISO 8601 text (whole seconds or with a fraction) or
    a number (seconds, or milliseconds if it is that large)."""
    if isinstance(value, (int, float)):
        return float(value) / (1000.0 if value > 1e11 else 1.0)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def line_seconds(row: dict[str, Any]) -> float | None:
    """When a log line was written: its `time`, or a numeric `ts` if the log has one."""
    when = log_seconds(row.get("time"))
    return when if when is not None else log_seconds(row.get("ts"))


def read_kalkan_log(path: Path) -> Iterator[dict[str, Any]]:
    """Kalkan's access-log lines as dicts (a torn last line is skipped)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


_NGINX = re.compile(r'^(\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) ')


def read_nginx_log(path: Path) -> Iterator[dict[str, Any]]:
    """nginx's lab log (bench/configs/nginx-lab.conf.tmpl) in Kalkan's field names; a 429 is
    nginx's refusal (limit_req, limit_conn), recorded as decision `block:limit`."""
    if not path.exists():
        return
    with path.open(errors="replace") as f:
        for line in f:
            m = _NGINX.match(line)
            if m is None:
                continue
            status = int(m.group(4))
            when = datetime.strptime(m.group(2), "%d/%b/%Y:%H:%M:%S %z").timestamp()
            method, _, rest = m.group(3).partition(" ")
            yield {"time": when, "client": m.group(1), "method": method,
                   "path": rest.rsplit(" ", 1)[0], "status": status,
                   "decision": "block:limit" if status == 429 else ""}


# --------------------------------------------------------------------------- judging


def ratio(a: int, b: int) -> float | None:
    """a / b to four places, or None when b is 0 (precision with nothing flagged)."""
    return round(a / b, 4) if b else None


def _confusion(bot: dict[str, bool], flagged: set[str]) -> dict[str, Any]:
    tp = sum(1 for k, b in bot.items() if b and k in flagged)
    fp = sum(1 for k, b in bot.items() if not b and k in flagged)
    fn = sum(1 for k, b in bot.items() if b and k not in flagged)
    tn = len(bot) - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn)}


def phase_of(t: float, attack_start: float, attack_end: float) -> str:
    return "peace" if t < attack_start else "attack" if t < attack_end else "after"


def judge(lines: Iterable[dict[str, Any]], truth: GroundTruth, wall_t0: float,
          attack_start: float, attack_end: float) -> dict[str, Any]:
    """Precision and recall of "challenge or block" against the ground truth.

    Per client (see GroundTruth.client_key): flagged if at least one of its requests was
    challenged, blocked or refused (FLAGGING); a bot client is a positive. Per request too:
    each line is a positive if its client is a bot, flagged by its own decision. Lines whose
    label is shared or unknown are counted and left out.
    """
    client_bot: dict[str, bool] = {}
    flagged: set[str] = set()
    req = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    by_label: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    label_clients: dict[str, set[str]] = defaultdict(set)
    label_flagged: dict[str, set[str]] = defaultdict(set)
    legit_flagged: dict[str, set[str]] = {p: set() for p in PHASES}
    left_out: dict[str, int] = defaultdict(int)
    for row in lines:
        address = str(row.get("client", ""))
        ua = row.get("ua")
        ua = ua if isinstance(ua, str) else None
        label = truth.label(address, ua)
        bot = is_bot(label)
        if bot is None:
            left_out[label] += 1
            continue
        key = truth.client_key(address, ua)
        cls = decision_class(str(row.get("decision", "")))
        hit = cls in FLAGGING
        client_bot[key] = bot
        stats = by_label[label]
        stats["requests"] += 1
        stats[cls] += 1
        label_clients[label].add(key)
        if hit:
            flagged.add(key)
            label_flagged[label].add(key)
            if not bot:
                when = line_seconds(row)
                phase = "attack" if when is None else phase_of(when - wall_t0, attack_start,
                                                               attack_end)
                legit_flagged[phase].add(key)
        req[("t" if hit == bot else "f") + ("p" if hit else "n")] += 1
    labels = {}
    for label in sorted(by_label):
        stats = dict(by_label[label])
        stats["clients"] = len(label_clients[label])
        stats["clients_flagged"] = len(label_flagged[label])
        labels[label] = stats
    return {
        "clients": {"bots": sum(client_bot.values()),
                    "legitimate": sum(1 for b in client_bot.values() if not b)},
        "per_client": _confusion(client_bot, flagged),
        "per_request": {**req, "precision": ratio(req["tp"], req["tp"] + req["fp"]),
                        "recall": ratio(req["tp"], req["tp"] + req["fn"])},
        "legitimate_flagged_by_phase": {p: len(v) for p, v in legit_flagged.items()},
        "by_label": labels,
        "lines_left_out": dict(left_out),
    }


def export_labelled(lines: Iterable[dict[str, Any]], truth: GroundTruth, path: Path,
                    scenario: str, wall_t0: float, attack_start: float,
                    attack_end: float) -> int:
    """Write each access-log line with its truth as JSON lines; returns the number written.

    Added fields: `label` (reader, reader-nojs, feed, app, preview, crawler, bot:TACTIC,
    bot:farmer, shared, unknown), `bot` (true, false or null where unknown), `phase`
    (peace / attack / after), `t` (seconds since the lab's t0; whole seconds while the log has
    them) and `scenario`. Every field of the log line is kept as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for row in lines:
            address = str(row.get("client", ""))
            ua = row.get("ua")
            label = truth.label(address, ua if isinstance(ua, str) else None)
            when = line_seconds(row)
            t = None if when is None else round(when - wall_t0, 3)
            out.write(json.dumps({
                **row, "label": label, "bot": is_bot(label),
                "phase": None if t is None else phase_of(t, attack_start, attack_end),
                "t": t, "scenario": scenario}, ensure_ascii=False) + "\n")
            n += 1
    return n
