"""Prometheus metrics for the edge: plain counters bumped on the hot path, text rendered on scrape.

Counters are ints in dicts keyed by label tuples so the hot path pays one dict update; gauges are
callables read only when `/metrics` is scraped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

from kalkan.observe.talkers import Talkers

# Origin latency histogram buckets, in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    __slots__ = ("buckets", "counts", "total", "count")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = 0
        for bound in self.buckets:
            if value <= bound:
                break
            i += 1
        self.counts[i] += 1
        self.total += value
        self.count += 1


class Metrics:
    """Everything the edge counts; rendered in the Prometheus text format."""

    def __init__(self) -> None:
        # A defaultdict, not a Counter: counted on every answer, and a subclass written in
        # Python (Counter) reaches dict's item methods through slot wrappers, ~1,500 CPU
        # instructions more per `+= 1` (bench/hit_instructions.py).
        self.requests: defaultdict[tuple[int, str], int] = defaultdict(int)
        # Counts kept elsewhere until read (the recorder's 200 HITs: a native int, ~1,000 CPU
        # instructions less per hit than the dictionary): called by `request_counts`.
        self.fold_requests: Callable[[], None] = lambda: None
        self.origin_latency = Histogram()
        self.origin_requests: Counter[str] = Counter()
        self.timeouts: defaultdict[str, int] = defaultdict(int)
        self.bad_requests = 0
        self.connections_refused = 0
        self.coalesced = 0
        self.gate_shed = 0
        self.stale_served: Counter[str] = Counter()
        self.not_stored: Counter[str] = Counter()  # origin responses not stored, by reason
        self.decisions: Counter[tuple[str, str]] = Counter()
        # Refusals and challenges by the policy rule that made them: (action, rule name). Rule
        # names come from the policy file, so the label set is as bounded as the policy.
        self.rule_decisions: Counter[tuple[str, str]] = Counter()
        self.talkers = Talkers()  # top prefixes, paths, user agents, from a sample
        # Families with one label whose values another part keeps: name → (help, label, read).
        self.labeled: dict[str, tuple[str, str, Callable[[], dict[str, float]]]] = {}
        self.labeled_gauges: dict[str, tuple[str, str, Callable[[], dict[str, float]]]] = {}
        self.open_connections: Callable[[], int] = lambda: 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, Callable[[], float]]] = {}

    def request_counts(self) -> defaultdict[tuple[int, str], int]:
        """Answers by (status, cache status), all of them: read this, not `requests`."""
        self.fold_requests()
        return self.requests

    def gauge(self, name: str, help_text: str, fn: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, fn)

    def counter(self, name: str, help_text: str, fn: Callable[[], float]) -> None:
        """A counter kept by another part (read at scrape time); `name` ends in _total."""
        self.counters[name] = (help_text, fn)

    def labeled_counter(self, name: str, help_text: str, label: str,
                        fn: Callable[[], dict[str, float]]) -> None:
        """A counter family with one label, kept by another part (read at scrape time)."""
        self.labeled[name] = (help_text, label, fn)

    def labeled_gauge(self, name: str, help_text: str, label: str,
                      fn: Callable[[], dict[str, float]]) -> None:
        """A gauge family with one label, kept by another part (read at scrape time)."""
        self.labeled_gauges[name] = (help_text, label, fn)

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("kalkan_requests_total", "counter", "Client requests by status and cache status.")
        for (status, cache), n in sorted(self.request_counts().items()):
            out.append(f'kalkan_requests_total{{status="{status}",cache="{cache}"}} {n}')
        family("kalkan_origin_requests_total", "counter", "Origin requests by outcome.")
        for outcome, n in sorted(self.origin_requests.items()):
            out.append(f'kalkan_origin_requests_total{{outcome="{outcome}"}} {n}')
        family("kalkan_origin_latency_seconds", "histogram",
               "Time to the origin's response headers.")
        h = self.origin_latency
        cumulative = 0
        for bound, n in zip(h.buckets, h.counts, strict=False):
            cumulative += n
            out.append(f'kalkan_origin_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        out.append(f'kalkan_origin_latency_seconds_bucket{{le="+Inf"}} {h.count}')
        out.append(f"kalkan_origin_latency_seconds_sum {h.total:.6f}")
        out.append(f"kalkan_origin_latency_seconds_count {h.count}")
        family("kalkan_timeouts_total", "counter", "Client connections cut off, by timeout kind.")
        for kind, n in sorted(self.timeouts.items()):
            out.append(f'kalkan_timeouts_total{{kind="{kind}"}} {n}')
        family("kalkan_cache_not_stored_total", "counter",
               "Responses fetched from the origin and not stored, by reason.")
        for why, n in sorted(self.not_stored.items()):
            out.append(f'kalkan_cache_not_stored_total{{reason="{why}"}} {n}')
        family("kalkan_stale_served_total", "counter", "Stale responses served, by reason.")
        for why, n in sorted(self.stale_served.items()):
            out.append(f'kalkan_stale_served_total{{reason="{why}"}} {n}')
        family("kalkan_decisions_total", "counter", "Defence decisions by action and reason.")
        for (action, why), n in sorted(self.decisions.items()):
            out.append(f'kalkan_decisions_total{{action="{action}",reason="{why}"}} {n}')
        family("kalkan_rule_decisions_total", "counter",
               "Policy rule decisions by action and rule name.")
        for (action, rule), n in sorted(self.rule_decisions.items()):
            out.append(f'kalkan_rule_decisions_total{{action="{action}",'
                       f'rule="{_label(rule)}"}} {n}')
        for kind, families in (("counter", self.labeled), ("gauge", self.labeled_gauges)):
            for fam, (fam_help, label, read) in sorted(families.items()):
                family(fam, kind, fam_help)
                for label_value, count in sorted(read().items()):
                    out.append(f'{fam}{{{label}="{_label(label_value)}"}} {count}')
        for name, help_text, value in (
            ("kalkan_bad_requests_total", "Requests refused as malformed or over limits.",
             self.bad_requests),
            ("kalkan_connections_refused_total", "Connections refused by connection limits.",
             self.connections_refused),
            ("kalkan_coalesced_total", "Requests that waited for another's origin fetch.",
             self.coalesced),
            ("kalkan_gate_shed_total", "Requests shed by the origin gate.", self.gate_shed),
        ):
            family(name, "counter", help_text)
            out.append(f"{name} {value}")
        family("kalkan_open_connections", "gauge", "Open client connections.")
        out.append(f"kalkan_open_connections {self.open_connections()}")
        for kind, table in (("gauge", self.gauges), ("counter", self.counters)):
            for name, (help_text, fn) in sorted(table.items()):
                family(name, kind, help_text)
                out.append(f"{name} {fn()}")
        return "\n".join(out) + "\n"


def _label(value: str) -> str:
    """A label value in the text format: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
