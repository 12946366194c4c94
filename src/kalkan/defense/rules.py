"""The policy file: YAML rules compiled into cheap matchers (Policy, Verdict) and the list of
search-engine crawlers that verifies their addresses (Crawlers). Format: docs/policy.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from kalkan.addresses import AddressSet, parse_network
from kalkan.defense.clients import ADDRESS, PER, ClientTable, Meter
from kalkan.defense.facts import DEFAULT_ROUTES, ROUTE_CLASSES, RequestFacts, RouteClassifier
from kalkan.memo import Memo
from kalkan.units import parse_duration

ALLOW, CHALLENGE, BLOCK, TARPIT, LOG = "allow", "challenge", "block", "tarpit", "log"
ACTIONS = (ALLOW, CHALLENGE, BLOCK, TARPIT, LOG)
_PATH_MEMO: Final = 4096   # paths whose answer each path condition remembers
TERMINAL = (ALLOW, CHALLENGE, BLOCK, TARPIT)
THRESHOLD_ACTIONS = (CHALLENGE, BLOCK, TARPIT)
MAX_LIMIT = 1_000_000

DEFAULT_POLICY = "data/policy.yaml"      # inside the kalkan package
DEFAULT_CRAWLERS = "data/crawlers.yaml"

# A check looks at one request; all of a rule's checks must pass for the rule to match.
Check = Callable[[RequestFacts, ClientTable, float], bool]


class PolicyError(ValueError):
    """A policy or crawler-list problem, with the file, line and key in its message."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy says about one request.

    `action` is allow / challenge / block / tarpit, or `log` when only log rules matched. `ttl`
    (seconds) asks for a standing decision of that length covering the client's `scope`
    (address or prefix); None means this request only. `score` and `matched` say which weight
    and log rules matched on the way (for the access log).
    """

    action: str
    rule: str
    reason: str
    ttl: float | None = None
    scope: str = ADDRESS
    score: int = 0
    matched: tuple[str, ...] = ()


# --------------------------------------------------------------------------- address sets


def read_ranges_file(path: Path) -> list[str]:
    """Networks from a vendor's published file: Google-style JSON or one address per line.

    The JSON shape is the one Google, Bing and Apple publish: {"prefixes": [{"ipv4Prefix": ...},
    {"ipv6Prefix": ...}]}. Text files may have `#` comments.
    """
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
        out = []
        for item in doc.get("prefixes", []):
            value = item.get("ipv4Prefix") or item.get("ipv6Prefix")
            if value:
                out.append(value)
        return out
    return [line.split("#", 1)[0].strip() for line in text.splitlines()
            if line.split("#", 1)[0].strip()]


# --------------------------------------------------------------------------- YAML helpers


class _Doc:
    """One YAML source being checked: turns nodes into values, with file:line:key errors."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._constructor = yaml.constructor.SafeConstructor()

    def error(self, node: yaml.Node | None, key: str, msg: str) -> PolicyError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return PolicyError(f"{self.source}{line}: {key}: {msg}")

    def compose(self, text: str) -> yaml.Node | None:
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise PolicyError(f"{self.source}{line}: not valid YAML: {problem}") from None

    def value(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node, key: str, allowed: Iterable[str] | None = None
                ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """{key: (key node, value node)}; refuses duplicates and (if given) unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, "expected a mapping of keys")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        known = list(allowed) if allowed is not None else None
        for knode, vnode in node.value:
            name = str(self.value(knode))
            where = f"{key}.{name}" if key else name
            if name in out:
                raise self.error(knode, where, "appears twice")
            if known is not None and name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise self.error(knode, where, f"unknown key{hint}; known: {', '.join(known)}")
            out[name] = (knode, vnode)
        return out

    def seq(self, node: yaml.Node, key: str, single_ok: bool = True) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if single_ok and isinstance(node, yaml.ScalarNode):
            return [node]
        raise self.error(node, key, "expected a list")

    def text(self, node: yaml.Node, key: str) -> str:
        """A scalar as written: YAML 1.1 would read `1:20` as 80 and `on` as true."""
        if not isinstance(node, yaml.ScalarNode) or self.value(node) is None or not node.value:
            raise self.error(node, key, f"expected text, got {self._show(node)}")
        return str(node.value)

    def texts(self, node: yaml.Node, key: str) -> list[str]:
        items = self.seq(node, key)
        if not items:
            raise self.error(node, key, "the list is empty")
        return [self.text(item, f"{key}[{i}]") for i, item in enumerate(items)]

    def integer(self, node: yaml.Node, key: str, minimum: int = 0,
                maximum: int | None = None) -> int:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(node, key, f"expected a whole number, got {self._show(node)}")
        if value < minimum or (maximum is not None and value > maximum):
            top = f"..{maximum}" if maximum is not None else " or more"
            raise self.error(node, key, f"must be {minimum}{top}, got {value}")
        return value

    def boolean(self, node: yaml.Node, key: str) -> bool:
        value = self.value(node)
        if not isinstance(value, bool):
            raise self.error(node, key, f"expected true or false, got {self._show(node)}")
        return value

    def duration(self, node: yaml.Node, key: str) -> float:
        try:
            seconds = parse_duration(self.value(node))
        except ValueError as exc:
            raise self.error(node, key, str(exc)) from None
        if seconds <= 0:
            raise self.error(node, key, "must be longer than 0")
        return seconds

    def choice(self, node: yaml.Node, key: str, choices: Iterable[str]) -> str:
        options = tuple(choices)
        value = self.text(node, key)
        if value not in options:
            raise self.error(node, key, f"expected one of {', '.join(options)}, got {value!r}")
        return value

    def regex(self, node: yaml.Node, key: str, flags: int = 0) -> re.Pattern[str]:
        pattern = self.text(node, key)
        try:
            return re.compile(pattern, flags)
        except re.error as exc:
            raise self.error(node, key, f"bad regular expression: {exc}") from None

    def _show(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.ScalarNode):
            return repr(self.value(node))
        return "a mapping" if isinstance(node, yaml.MappingNode) else "a list"


# --------------------------------------------------------------------------- crawlers


@dataclass(frozen=True)
class Crawler:
    """A search engine's crawler: how its user agent reads and where its requests come from."""

    name: str
    user_agent: re.Pattern[str]
    ranges: AddressSet


def _fewer_words(words: set[str]) -> tuple[str, ...]:
    """Hint words with those sharing a start of 6 or more characters replaced by that start
    ("GoogleOther", "Google-InspectionTool" → "Google"): a user agent holding a crawler's word
    still holds the shorter one, and every word is one more scan of every browser's agent."""
    out = sorted(words)
    i = 0
    while i + 1 < len(out):
        a, b = out[i], out[i + 1]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        if n >= 6:
            out[i:i + 2] = [a[:n]]
        else:
            i += 1
    return tuple(out)


class Crawlers:
    """The known crawlers; tells a crawler whose address is in its published ranges from a
    client that only borrows its user agent."""

    def __init__(self, crawlers: Iterable[Crawler], source: str = "<crawlers>") -> None:
        self.crawlers = {c.name: c for c in crawlers}
        self.source = source
        # One pass over the user agent finds which crawler (if any) it claims to be.
        self._combined = re.compile("|".join(
            f"(?P<c{i}>{c.user_agent.pattern})" for i, c in enumerate(self.crawlers.values())
        )) if self.crawlers else None
        self._group_names = {f"c{i}": name for i, name in enumerate(self.crawlers)}
        self.memo: Memo[str, str | None] = Memo(4096)  # user agent -> claimed crawler
        # Words every crawler user agent must contain: a browser's user agent (every reader
        # brings a new one) is told apart by a few substring checks instead of the regex.
        hints: list[str] = []
        for c in self.crawlers.values():
            words = _leading_literals(c.user_agent)
            if words is None:
                hints = []
                break
            hints.extend(words)
        # Checked as substrings (`in`), cheaper than one regex alternation of them, which tries
        # its alternatives at every capital letter of a browser's user agent (9k instructions
        # per request). Words holding "bot" are checked as "bot": one check for most crawlers.
        self._hints: tuple[str, ...] | None = _fewer_words(
            {"bot" if "bot" in h else h for h in hints}) if hints else None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.crawlers)

    def claimed(self, user_agent: str) -> str | None:
        """The crawler this user agent claims to be, whatever the address."""
        hints = self._hints
        if hints is not None:
            for word in hints:
                if word in user_agent:
                    break
            else:
                return None  # no crawler's words in it: not memoized, this is cheaper than that
        name = self.memo.table.get(user_agent, "")
        if name != "":
            return name
        found = None
        if self._combined is not None and user_agent:
            m = self._combined.search(user_agent)
            if m is not None:
                found = self._group_names[m.lastgroup or ""]
        return self.memo.put(user_agent, found)  # bounded: random user agents

    def verified(self, user_agent: str, version: int, ip: int) -> str | None:
        """The crawler this request claims to be, if its address is in that crawler's ranges."""
        name = self.claimed(user_agent)
        if name is not None and self.crawlers[name].ranges.contains(version, ip):
            return name
        return None

    @classmethod
    def from_text(cls, text: str, source: str = "<crawlers>",
                  base_dir: Path | None = None) -> Crawlers:
        doc = _Doc(source)
        root = doc.compose(text)
        if root is None:
            raise PolicyError(f"{source}: the crawler list is empty")
        top = doc.mapping(root, "", ("snapshot", "crawlers"))
        if "crawlers" not in top:
            raise doc.error(root, "crawlers", "missing")
        cnode = top["crawlers"][1]
        crawlers = []
        for name, (nnode, body) in doc.mapping(cnode, "crawlers").items():
            key = f"crawlers.{name}"
            fields = doc.mapping(body, key, ("user_agent", "published", "ranges", "ranges_file"))
            if "user_agent" not in fields:
                raise doc.error(body, f"{key}.user_agent", "missing")
            ua = doc.regex(fields["user_agent"][1], f"{key}.user_agent")
            nets = []
            if "ranges" in fields:
                for i, item in enumerate(doc.seq(fields["ranges"][1], f"{key}.ranges")):
                    try:
                        nets.append(parse_network(doc.text(item, f"{key}.ranges[{i}]")))
                    except ValueError as exc:
                        raise doc.error(item, f"{key}.ranges[{i}]", str(exc)) from None
            if "ranges_file" in fields:
                fnode = fields["ranges_file"][1]
                path = Path(doc.text(fnode, f"{key}.ranges_file"))
                if not path.is_absolute() and base_dir is not None:
                    path = base_dir / path
                try:
                    nets += [parse_network(v) for v in read_ranges_file(path)]
                except (OSError, ValueError) as exc:
                    raise doc.error(fnode, f"{key}.ranges_file", f"{path}: {exc}") from None
            if not nets:
                raise doc.error(nnode, key, "no ranges: a crawler that cannot be verified "
                                            "would be refused its privileges anyway")
            crawlers.append(Crawler(name, ua, AddressSet(nets)))
        return cls(crawlers, source)


def load_crawlers(path: str | Path | None = None) -> Crawlers:
    """Read a crawler list (the shipped snapshot when `path` is None)."""
    if path is None:
        text = resources.files("kalkan").joinpath(DEFAULT_CRAWLERS).read_text(encoding="utf-8")
        return Crawlers.from_text(text, f"kalkan/{DEFAULT_CRAWLERS}")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{p}: cannot read the crawler list: {exc.strerror}") from None
    return Crawlers.from_text(text, str(p), p.parent)


# --------------------------------------------------------------------------- rules


def _leading_literals(pattern: re.Pattern[str]) -> list[str] | None:
    """The literal text each alternative of `pattern` starts with (3 characters at least), or
    None when some alternative has none: then every user agent must go through the regex."""
    if pattern.flags & re.IGNORECASE:
        return None
    import re._parser as sre  # type: ignore[import-not-found]  # the stdlib regex parser

    def lead(items: list[tuple[object, object]]) -> str:
        out = []
        for op, arg in items:
            if op is not sre.LITERAL or not isinstance(arg, int):
                break
            out.append(chr(arg))
        return "".join(out)

    tree = list(sre.parse(pattern.pattern))
    if len(tree) == 1 and tree[0][0] is sre.BRANCH:
        branches = tree[0][1][1]
        words = [lead(list(b)) for b in branches]
    else:
        words = [lead(tree)]
    return words if all(len(w) >= 3 for w in words) else None


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: its checks, and what a match means (an action or a weight)."""

    name: str
    checks: tuple[Check, ...]
    action: str | None            # None for a weight rule
    weight: int
    verdict: Verdict | None       # prebuilt for terminal rules: no allocation on a match
    routes: frozenset[str] | None  # the rule's `route` condition, used to skip it early
    line: int
    address_rate: bool = False    # needs a per-address rate: cannot match a quiet client
    prefix_rate: bool = False     # its rates are all per prefix: it judges a neighbourhood
    needs_claim: bool = False     # needs a crawler user agent: cannot match a browser


@dataclass(frozen=True)
class Threshold:
    score: int
    verdict: Verdict


_MATCH_KEYS = ("method", "host", "path", "path_regex", "query_regex", "route", "user_agent",
               "headers", "cookies", "address", "verified_crawler", "claims_crawler", "rate",
               "challenge_failures", "not")
_RULE_KEYS = ("name", "match", "action", "weight", "ttl", "reason", "scope")
_TOP_KEYS = ("version", "crawlers", "lists", "routes", "rules", "thresholds")
# Cheap checks first: a set lookup costs less than a regex, a regex less than a rate lookup.
_COST = {"method": 0, "route": 0, "host": 1, "path": 2, "path_regex": 3, "query_regex": 3,
         "cookies": 4, "headers": 4, "user_agent": 5, "address": 6, "verified_crawler": 7,
         "claims_crawler": 7, "rate": 8, "challenge_failures": 9, "not": 10}


class GlobSet:
    """Shell-style globs (`*` also matches `/`) tested the cheapest way each allows.

    Most policy globs are a literal, a prefix (`/wp-admin/*`) or a suffix (`*.php`): those are
    a set lookup or one startswith/endswith call; only the rest go through a regex.
    """

    __slots__ = ("exact", "prefixes", "suffixes", "regex", "seconds", "lasts")

    def __init__(self, globs: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        other: list[str] = []
        for g in globs:
            body = g.strip("*")
            simple = bool(body) and not any(c in body for c in "*?[")
            if not simple or (g.startswith("*") and g.endswith("*")):
                other.append(g)
            elif g.endswith("*"):
                prefixes.append(body)
            elif g.startswith("*"):
                suffixes.append(body)
            else:
                exact.add(g)
        self.exact, self.prefixes, self.suffixes = frozenset(exact), tuple(prefixes), \
            tuple(suffixes)
        # The prefixes' second characters and the suffixes' last ones: a text whose own is not
        # among them matches none, told by a one-character test instead of a scan per prefix
        # (every prefix starts with "/": the first tells nothing). Empty when some prefix (or
        # suffix) is too short to have one: then no text is ruled out that way.
        self.seconds = "".join(sorted({p[1] for p in prefixes})) \
            if all(len(p) >= 2 for p in prefixes) else ""
        self.lasts = "".join(sorted({x[-1] for x in suffixes})) if all(suffixes) else ""
        self.regex = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in other)) \
            if other else None

    def match(self, text: str) -> bool:
        return (text in self.exact or self.starts(text) or self.ends(text)
                or (self.regex is not None and self.regex.match(text) is not None))

    def starts(self, text: str) -> bool:
        """Does `text` start with one of the prefixes?"""
        seconds = self.seconds
        # (A slice, not text[1]: "" for a short text, and "" is in every string.)
        if seconds and text[1:2] not in seconds:
            return False
        return text.startswith(self.prefixes)

    def ends(self, text: str) -> bool:
        """Does `text` end with one of the suffixes?"""
        lasts = self.lasts
        if lasts and text[-1:] not in lasts:
            return False
        return text.endswith(self.suffixes)


def _host_only(host: str) -> str:
    if host.startswith("["):
        return host[1:host.find("]")].lower() if "]" in host else host.lower()
    return host.partition(":")[0].lower()


def _cookie_names(cookie: bytes | None) -> list[str]:
    if not cookie:
        return []
    return [part.split(b"=", 1)[0].strip().decode("latin-1") for part in cookie.split(b";")]


class _Compiler:
    """Compiles one policy document: lists, rules and thresholds."""

    def __init__(self, doc: _Doc, crawlers: Crawlers, lists: dict[str, AddressSet]) -> None:
        self.doc = doc
        self.crawlers = crawlers
        self.lists = lists
        self.meters: dict[str, Meter] = {}

    def match(self, node: yaml.Node, key: str
              ) -> tuple[tuple[Check, ...], frozenset[str] | None, bool, bool, bool]:
        """(checks cheapest first, the `route` condition, whether the rule needs a per-address
        rate to be over, whether it needs a user agent that claims a crawler, whether its rate
        conditions are all per prefix)."""
        doc = self.doc
        fields = doc.mapping(node, key, _MATCH_KEYS)
        checks: list[tuple[int, Check]] = []
        routes: frozenset[str] | None = None
        for name, (_, vnode) in fields.items():
            where = f"{key}.{name}"
            check = getattr(self, f"_c_{name}")(vnode, where)
            if name == "route":
                routes = frozenset(doc.texts(vnode, where))
            checks.append((_COST[name], check))
        checks.sort(key=lambda c: c[0])
        address_rate = False
        if "rate" in fields:
            rnode = fields["rate"][1]
            items = [rnode] if isinstance(rnode, yaml.MappingNode) else rnode.value
            for item in items:
                per = next((v for k, v in item.value if k.value == "per"), None)
                address_rate |= per is None or per.value == ADDRESS
        needs_claim = False
        for name in ("verified_crawler", "claims_crawler"):
            if name in fields:
                want = doc.value(fields[name][1])
                needs_claim |= want is not False       # true or a list of names
        return tuple(c for _, c in checks), routes, address_rate, needs_claim, \
            "rate" in fields and not address_rate

    # Each _c_NAME(node, key) returns one check for the match key NAME.

    def _c_method(self, node: yaml.Node, key: str) -> Check:
        methods = frozenset(m.upper() for m in self.doc.texts(node, key))
        return lambda f, c, now: f.method in methods

    def _c_route(self, node: yaml.Node, key: str) -> Check:
        items = self.doc.seq(node, key)
        for i, item in enumerate(items):
            self.doc.choice(item, f"{key}[{i}]" if len(items) > 1 else key, ROUTE_CLASSES)
        routes = frozenset(self.doc.texts(node, key))
        return lambda f, c, now: f.route in routes

    def _c_host(self, node: yaml.Node, key: str) -> Check:
        globs = GlobSet(g.lower() for g in self.doc.texts(node, key))
        return lambda f, c, now: globs.match(_host_only(f.host))

    def _c_path(self, node: yaml.Node, key: str) -> Check:
        globs = self.doc.texts(node, key)
        for g in globs:
            if not g.startswith(("/", "*")):
                raise self.doc.error(node, key, f"path glob {g!r} must start with / or *")
        gs = GlobSet(globs)
        # Path globs are on the page route's hot path, and readers ask for the same pages: each
        # path's answer is remembered (bounded: a flood of distinct paths only cycles it). A
        # lookup by the path, whose hash the classifier's memo has already computed, costs a
        # sixth of the tests.
        memo: Memo[str, bool] = Memo(_PATH_MEMO)

        def check(f: RequestFacts, c: ClientTable, now: float) -> bool:
            path = f.path
            known = memo.table.get(path)
            if known is None:
                known = memo.put(path, gs.match(path))
            return known
        return check

    def _c_path_regex(self, node: yaml.Node, key: str) -> Check:
        pattern = self.doc.regex(node, key)
        return lambda f, c, now: pattern.search(f.path) is not None

    def _c_query_regex(self, node: yaml.Node, key: str) -> Check:
        pattern = self.doc.regex(node, key)
        return lambda f, c, now: pattern.search(f.query) is not None

    def _c_user_agent(self, node: yaml.Node, key: str) -> Check:
        pattern = self.doc.regex(node, key)
        return lambda f, c, now: pattern.search(f.user_agent) is not None

    def _c_headers(self, node: yaml.Node, key: str) -> Check:
        doc = self.doc
        wants: list[tuple[bytes, bool | re.Pattern[str]]] = []
        for name, (_, vnode) in doc.mapping(node, key).items():
            where = f"{key}.{name}"
            value = doc.value(vnode)
            want: bool | re.Pattern[str] = (
                value if isinstance(value, bool) else doc.regex(vnode, where))
            wants.append((name.lower().encode("latin-1"), want))

        def check(f: RequestFacts, c: ClientTable, now: float) -> bool:
            for name, want in wants:
                values = [v for k, v in f.headers if k.lower() == name]
                if want is True or want is False:
                    if bool(values) is not want:
                        return False
                elif not any(want.search(v.decode("latin-1")) for v in values):
                    return False
            return True
        return check

    def _c_cookies(self, node: yaml.Node, key: str) -> Check:
        doc = self.doc
        wants = []
        for name, (_, vnode) in doc.mapping(node, key).items():
            present = doc.boolean(vnode, f"{key}.{name}")
            wants.append((GlobSet([name]), present))

        def check(f: RequestFacts, c: ClientTable, now: float) -> bool:
            names = _cookie_names(f.cookie)
            return all(any(g.match(n) for n in names) is present for g, present in wants)
        return check

    def _c_address(self, node: yaml.Node, key: str) -> Check:
        doc = self.doc
        nets = []
        sets = []
        for i, item in enumerate(doc.seq(node, key)):
            where = f"{key}[{i}]"
            text = doc.text(item, where)
            if text.startswith("@"):
                if text[1:] not in self.lists:
                    known = ", ".join(sorted(self.lists)) or "none defined"
                    raise doc.error(item, where, f"no list named {text[1:]!r} (lists: {known})")
                sets.append(self.lists[text[1:]])
                continue
            try:
                nets.append(parse_network(text))
            except ValueError as exc:
                raise doc.error(item, where, str(exc)) from None
        if nets:
            sets.append(AddressSet(nets))
        if len(sets) == 1:
            only = sets[0]
            return lambda f, c, now: only.contains(f.version, f.ip)
        return lambda f, c, now: any(s.contains(f.version, f.ip) for s in sets)

    def _crawler_names(self, node: yaml.Node, key: str) -> bool | frozenset[str]:
        doc = self.doc
        value = doc.value(node)
        if isinstance(value, bool):
            return value
        names = doc.texts(node, key)
        for name in names:
            if name not in self.crawlers.crawlers:
                known = ", ".join(self.crawlers.names) or "none"
                raise doc.error(node, key, f"unknown crawler {name!r} (known: {known})")
        return frozenset(names)

    def _c_verified_crawler(self, node: yaml.Node, key: str) -> Check:
        want = self._crawler_names(node, key)
        crawlers = self.crawlers
        memo = crawlers.memo.table

        def check(f: RequestFacts, c: ClientTable, now: float) -> bool:
            # Nearly every request is a browser: one memo lookup settles it.
            name = memo.get(f.user_agent, "")
            if name == "":
                name = crawlers.claimed(f.user_agent)
            if name is not None and not crawlers.crawlers[name].ranges.contains(f.version, f.ip):
                name = None
            if want is True or want is False:
                return (name is not None) is want
            return name in want
        return check

    def _c_claims_crawler(self, node: yaml.Node, key: str) -> Check:
        want = self._crawler_names(node, key)
        crawlers = self.crawlers
        memo = crawlers.memo.table

        def check(f: RequestFacts, c: ClientTable, now: float) -> bool:
            name = memo.get(f.user_agent, "")
            if name == "":
                name = crawlers.claimed(f.user_agent)
            if want is True or want is False:
                return (name is not None) is want
            return name in want
        return check

    def _c_rate(self, node: yaml.Node, key: str) -> Check:
        doc = self.doc
        items = [node] if isinstance(node, yaml.MappingNode) else doc.seq(node, key, False)
        ids = []
        for i, item in enumerate(items):
            where = key if item is node else f"{key}[{i}]"
            fields = doc.mapping(item, where, ("more_than", "in", "per", "routes"))
            for required in ("more_than", "in"):
                if required not in fields:
                    raise doc.error(item, f"{where}.{required}", "missing")
            limit = doc.integer(fields["more_than"][1], f"{where}.more_than", 1, MAX_LIMIT)
            period = doc.duration(fields["in"][1], f"{where}.in")
            per = doc.choice(fields["per"][1], f"{where}.per", PER) if "per" in fields \
                else ADDRESS
            routes: frozenset[str] = frozenset()
            if "routes" in fields:
                rnode = fields["routes"][1]
                for j, r in enumerate(doc.seq(rnode, f"{where}.routes")):
                    doc.choice(r, f"{where}.routes[{j}]", ROUTE_CLASSES)
                routes = frozenset(doc.texts(rnode, f"{where}.routes"))
            meter = Meter(per, limit, period, routes)
            self.meters[meter.id] = meter
            ids.append(meter.id)
        if len(ids) == 1:
            only = ids[0]
            return lambda f, c, now: c.over(only, f, now)
        return lambda f, c, now: all(c.over(mid, f, now) for mid in ids)

    def _c_challenge_failures(self, node: yaml.Node, key: str) -> Check:
        fields = self.doc.mapping(node, key, ("more_than",))
        if "more_than" not in fields:
            raise self.doc.error(node, f"{key}.more_than", "missing")
        limit = self.doc.integer(fields["more_than"][1], f"{key}.more_than", 0)
        return lambda f, c, now: c.failures(f, now) > limit

    def _c_not(self, node: yaml.Node, key: str) -> Check:
        checks, *_ = self.match(node, key)
        return lambda f, c, now: not all(check(f, c, now) for check in checks)

    # -- rules and thresholds ---------------------------------------------------------------

    def rule(self, node: yaml.Node, key: str) -> Rule:
        doc = self.doc
        fields = doc.mapping(node, key, _RULE_KEYS)
        if "name" not in fields:
            raise doc.error(node, f"{key}.name", "missing: every rule needs a name (the log "
                                                 "and decisions say which rule acted)")
        name = doc.text(fields["name"][1], f"{key}.name")
        key = f"{key} ({name})"
        has_action, has_weight = "action" in fields, "weight" in fields
        if has_action == has_weight:
            raise doc.error(node, f"{key}.action", "a rule has either an action or a weight")
        action = doc.choice(fields["action"][1], f"{key}.action", ACTIONS) if has_action \
            else None
        weight = doc.integer(fields["weight"][1], f"{key}.weight", -1000, 1000) if has_weight \
            else 0
        ttl = None
        if "ttl" in fields:
            if action not in TERMINAL:
                raise doc.error(fields["ttl"][0], f"{key}.ttl",
                                "only rules with allow, challenge, block or tarpit create "
                                "decisions")
            ttl = doc.duration(fields["ttl"][1], f"{key}.ttl")
        reason = doc.text(fields["reason"][1], f"{key}.reason") if "reason" in fields \
            else name
        scope = doc.choice(fields["scope"][1], f"{key}.scope", PER) if "scope" in fields \
            else ADDRESS
        checks: tuple[Check, ...] = ()
        routes = None
        address_rate = needs_claim = prefix_rate = False
        if "match" in fields:
            checks, routes, address_rate, needs_claim, prefix_rate = self.match(
                fields["match"][1], f"{key}.match")
        verdict = None
        if action in TERMINAL:
            verdict = Verdict(action, name, reason, ttl, scope)
        elif action == LOG:
            verdict = Verdict(LOG, name, reason, None, scope)
        return Rule(name, checks, action, weight, verdict, routes, node.start_mark.line + 1,
                    address_rate=address_rate, prefix_rate=prefix_rate, needs_claim=needs_claim)

    def threshold(self, node: yaml.Node, key: str) -> Threshold:
        doc = self.doc
        fields = doc.mapping(node, key, ("score", "action", "ttl", "reason", "scope", "name"))
        for required in ("score", "action"):
            if required not in fields:
                raise doc.error(node, f"{key}.{required}", "missing")
        score = doc.integer(fields["score"][1], f"{key}.score", 1)
        action = doc.choice(fields["action"][1], f"{key}.action", THRESHOLD_ACTIONS)
        ttl = doc.duration(fields["ttl"][1], f"{key}.ttl") if "ttl" in fields else None
        name = doc.text(fields["name"][1], f"{key}.name") if "name" in fields \
            else f"score>={score}"
        reason = doc.text(fields["reason"][1], f"{key}.reason") if "reason" in fields \
            else f"score {score} or more"
        scope = doc.choice(fields["scope"][1], f"{key}.scope", PER) if "scope" in fields \
            else ADDRESS
        return Threshold(score, Verdict(action, name, reason, ttl, scope))


# --------------------------------------------------------------------------- the policy


class Policy:
    """A compiled policy: ordered rules, weight thresholds, the meters they need, the crawlers.

    Evaluation order: rules run top to bottom. The first matching rule with a terminal action
    (allow, challenge, block, tarpit) decides. `log` rules and `weight` rules never stop the
    walk: log rules are remembered, weight rules add their weight to the request's score. When
    no terminal rule matched, the highest threshold the score reaches decides; otherwise a `log`
    verdict is returned if a log rule matched, else None (the engine applies its defaults).
    """

    def __init__(self, rules: list[Rule], thresholds: list[Threshold], meters: Iterable[Meter],
                 crawlers: Crawlers, routes: tuple[tuple[str, str], ...] = (),
                 source: str = "<policy>") -> None:
        self.rules = tuple(rules)
        self.thresholds = tuple(sorted(thresholds, key=lambda t: -t.score))
        self.meters = tuple(meters)
        self.crawlers = crawlers
        self.routes = routes
        self.source = source
        self.classifier = RouteClassifier(routes + DEFAULT_ROUTES)
        # Salts the User-Agent keys kept in the client table (see evaluate): per policy, so
        # what one policy's crawlers list found is not believed under another's.
        self._agent_salt = random.getrandbits(62)
        # Rules that judge a network prefix by its rates alone (CGNAT puts readers in it too).
        self.prefix_rated = frozenset(r.name for r in self.rules if r.prefix_rate)
        # Rules that can apply to each route class, in order; rules with a `route` condition
        # are left out of the other classes, so a page request never looks at login rules.
        # Four variants per class drop what cannot match the common cases: rules needing a
        # per-address rate to be over (for a client under all of them) and rules needing a
        # crawler's user agent (for a browser). Each entry: (checks, verdict if the rule
        # decides else None, rule).
        Entry = tuple[tuple[Check, ...], Verdict | None, Rule]

        def entries(route: str | None, quiet: bool, browser: bool) -> tuple[Entry, ...]:
            return tuple(
                (r.checks, r.verdict if r.action in TERMINAL else None, r) for r in self.rules
                if (r.routes is None or route in r.routes)
                and not (quiet and r.address_rate) and not (browser and r.needs_claim))
        # Indexed by 2 * quiet + browser: a list index per request, no tuple to build and hash.
        self._variants: list[dict[str | None, tuple[Entry, ...]]] = [
            {route: entries(route, quiet, browser) for route in (*ROUTE_CLASSES, None)}
            for quiet in (False, True) for browser in (False, True)]

    def rules_for(self, route: str) -> tuple[Rule, ...]:
        """The rules a request of this route class is checked against, in order."""
        table = self._variants[0]
        return tuple(r for _, _, r in table.get(route, table[None]))

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, crawlers: Crawlers | None = None) -> Policy:
        """Read and compile a policy file; raises PolicyError naming the file, line and key."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"{p}: cannot read the policy: {exc.strerror}") from None
        return cls.from_text(text, str(p), p.parent, crawlers)

    @classmethod
    def default(cls) -> Policy:
        """The shipped default policy for a news site."""
        text = resources.files("kalkan").joinpath(DEFAULT_POLICY).read_text(encoding="utf-8")
        return cls.from_text(text, f"kalkan/{DEFAULT_POLICY}")

    @classmethod
    def from_text(cls, text: str, source: str = "<policy>", base_dir: Path | None = None,
                  crawlers: Crawlers | None = None) -> Policy:
        """Compile policy text. `base_dir` resolves relative file names (lists, crawlers)."""
        doc = _Doc(source)
        root = doc.compose(text)
        if root is None:
            return cls([], [], [], crawlers or load_crawlers(), (), source)
        top = doc.mapping(root, "", _TOP_KEYS)
        if "version" in top:
            doc.choice(top["version"][1], "version", ("1",))
        if crawlers is None:
            crawlers = cls._crawlers(doc, top, base_dir)
        lists = cls._lists(doc, top, base_dir)
        routes = cls._routes(doc, top)
        compiler = _Compiler(doc, crawlers, lists)
        rules: list[Rule] = []
        if "rules" in top:
            seen: dict[str, int] = {}
            for i, node in enumerate(doc.seq(top["rules"][1], "rules", False)):
                rule = compiler.rule(node, f"rules[{i}]")
                if rule.name in seen:
                    raise doc.error(node, f"rules[{i}].name",
                                    f"{rule.name!r} is already the name of the rule on line "
                                    f"{seen[rule.name]}")
                seen[rule.name] = rule.line
                rules.append(rule)
        thresholds = []
        if "thresholds" in top:
            for i, node in enumerate(doc.seq(top["thresholds"][1], "thresholds", False)):
                thresholds.append(compiler.threshold(node, f"thresholds[{i}]"))
            scores = [t.score for t in thresholds]
            if len(set(scores)) != len(scores):
                raise doc.error(top["thresholds"][1], "thresholds", "two thresholds share a "
                                                                     "score")
        return cls(rules, thresholds, compiler.meters.values(), crawlers, routes, source)

    @staticmethod
    def _crawlers(doc: _Doc, top: dict[str, tuple[yaml.Node, yaml.Node]],
                  base_dir: Path | None) -> Crawlers:
        if "crawlers" not in top:
            return load_crawlers()
        node = top["crawlers"][1]
        path = Path(doc.text(node, "crawlers"))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            return load_crawlers(path)
        except PolicyError as exc:
            raise doc.error(node, "crawlers", str(exc)) from None

    @staticmethod
    def _lists(doc: _Doc, top: dict[str, tuple[yaml.Node, yaml.Node]],
               base_dir: Path | None) -> dict[str, AddressSet]:
        lists: dict[str, AddressSet] = {}
        if "lists" not in top:
            return lists
        for name, (_, node) in doc.mapping(top["lists"][1], "lists").items():
            key = f"lists.{name}"
            if isinstance(node, yaml.MappingNode):
                fields = doc.mapping(node, key, ("file",))
                if "file" not in fields:
                    raise doc.error(node, f"{key}.file", "missing")
                fnode = fields["file"][1]
                path = Path(doc.text(fnode, f"{key}.file"))
                if not path.is_absolute() and base_dir is not None:
                    path = base_dir / path
                try:
                    values = read_ranges_file(path)
                    lists[name] = AddressSet(parse_network(v) for v in values)
                except (OSError, ValueError) as exc:
                    raise doc.error(fnode, f"{key}.file", f"{path}: {exc}") from None
                continue
            nets = []
            for i, item in enumerate(doc.seq(node, key)):
                try:
                    nets.append(parse_network(doc.text(item, f"{key}[{i}]")))
                except ValueError as exc:
                    raise doc.error(item, f"{key}[{i}]", str(exc)) from None
            lists[name] = AddressSet(nets)
        return lists

    @staticmethod
    def _routes(doc: _Doc, top: dict[str, tuple[yaml.Node, yaml.Node]]
                ) -> tuple[tuple[str, str], ...]:
        if "routes" not in top:
            return ()
        out = []
        for i, node in enumerate(doc.seq(top["routes"][1], "routes", False)):
            key = f"routes[{i}]"
            fields = doc.mapping(node, key, ("path", "route"))
            for required in ("path", "route"):
                if required not in fields:
                    raise doc.error(node, f"{key}.{required}", "missing")
            glob = doc.text(fields["path"][1], f"{key}.path")
            route = doc.choice(fields["route"][1], f"{key}.route", ROUTE_CLASSES)
            out.append((glob, route))
        return tuple(out)

    # -- evaluation -------------------------------------------------------------------------

    def agent_key(self, user_agent: str) -> int:
        """The key under which a client's User-Agent found to claim no crawler is kept with
        the client (`evaluate`): a keyed hash, so a collision is as unlikely as guessing the
        key, and this policy's own (another policy's crawlers may differ)."""
        return ((hash(user_agent) >> 2) ^ self._agent_salt) or 1  # 62 bits: a machine word

    def evaluate(self, facts: RequestFacts, clients: ClientTable, now: float,
                 agent_key: int = 0) -> Verdict | None:
        """The verdict for one request, or None when no rule has anything to say.

        Call `clients.hit(facts, now)` first, so rate conditions count this request; given
        `agent_key(facts.user_agent)` there too (and here, as `agent_key`), the hit answers
        whether that agent is the client's plain one on the way.
        """
        matched: list[Rule] | None = None
        # A client's User-Agent rarely changes: one found to claim no crawler is kept with the
        # client, which costs less than scanning a browser's 100-odd characters for every
        # crawler's words again.
        ua = facts.user_agent
        key = agent_key or self.agent_key(ua)
        if clients.plain_agent(facts, key):
            claimed = None
        else:
            claimed = self.crawlers.claimed(ua)
            if claimed is None:
                clients.note_plain_agent(facts, key)
        table = self._variants[2 * clients.address_quiet(facts, now) + (claimed is None)]
        entries = table.get(facts.route)
        if entries is None:
            entries = table[None]
        for checks, verdict, rule in entries:
            for check in checks:
                if not check(facts, clients, now):
                    break
            else:
                if verdict is not None:
                    if matched is None:
                        return verdict
                    return dataclasses.replace(
                        verdict, score=sum(r.weight for r in matched),
                        matched=tuple(r.name for r in matched))
                if matched is None:
                    matched = []
                matched.append(rule)
        if matched is None:
            return None
        score = sum(r.weight for r in matched)
        names = tuple(r.name for r in matched)
        for threshold in self.thresholds:
            if score >= threshold.score:
                return dataclasses.replace(threshold.verdict, score=score, matched=names)
        for rule in matched:
            if rule.action == LOG and rule.verdict is not None:
                return dataclasses.replace(rule.verdict, score=score, matched=names)
        return None


def default_policy_path() -> Path:
    """Where the shipped default policy lives (to copy it as a starting point)."""
    return Path(str(resources.files("kalkan").joinpath(DEFAULT_POLICY)))


__all__ = ["ACTIONS", "ALLOW", "BLOCK", "CHALLENGE", "LOG", "TARPIT", "AddressSet",
           "Crawler", "Crawlers", "GlobSet", "Policy", "PolicyError", "Rule", "Verdict",
           "default_policy_path", "load_crawlers", "read_ranges_file"]
