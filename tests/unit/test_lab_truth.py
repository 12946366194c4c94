"""The traffic lab's ground truth and its judgement of the edge's decisions (bench/lab/truth.py):
labels per address and, where readers and bots share one, per user agent; precision and recall
of "challenge or block" per client and per request on a small known log; the labelled export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench.lab import truth  # noqa: E402
from bench.lab.truth import GroundTruth, decision_class, judge  # noqa: E402

CHROME = "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0.0.0"
LYNX = "Lynx/2.9.0"
BOT_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:124.0) Gecko/20100101 Firefox/124.0"
WALL_T0 = 1_800_000_000.0   # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(("decision", "cls"), [
    ("", "allow"),
    ("allow:verified-crawler", "allow"),
    ("pass", "pass"),
    ("pass:search-burst", "pass"),
    ("challenge:attack_mode", "challenge"),
    ("challenge:rule:search-burst", "challenge"),
    ("challenge:decision:rule search-flood: too many", "challenge"),
    ("block:rule:xmlrpc", "block"),
    ("tarpit:rule:wp-login", "block"),
    ("drop:decision:banned", "block"),
    ("refuse:attack_mode", "refuse"),
    ("challenge-endpoint:pass", "endpoint"),
    ("refused: header timeout", "limit"),
])
def test_decisions_are_classed_as_the_engine_writes_them(decision: str, cls: str) -> None:
    assert decision_class(decision) == cls
    assert (cls in truth.FLAGGING) == (cls in ("challenge", "block", "refuse"))


def _truth() -> GroundTruth:
    return GroundTruth.build(
        [("127.10.0.1", CHROME, "reader"), ("127.10.0.2", LYNX, "reader-nojs"),
         ("127.10.0.3", CHROME, "reader"), ("127.50.0.1", "Feedly/1.0", "feed"),
         ("127.60.0.1", "TelegramBot (like TwitterBot)", "preview")],
        {"bot:search": ["127.100.0.1", "127.100.0.2", "127.100.0.3"],
         "bot:random-pages": ["127.10.0.3"]})   # a bot on a reader's address (CGNAT)


def test_labels_per_address_and_per_user_agent_where_shared() -> None:
    t = _truth()
    assert t.shared() == {"127.10.0.3"}
    assert t.label("127.10.0.1", None) == "reader"
    assert t.label("127.10.0.1", "anything") == "reader"
    assert t.label("127.100.0.2", CHROME) == "bot:search"
    assert t.label("127.99.0.1", None) == truth.UNKNOWN
    # On the shared address the user agent decides; without it the line is left out.
    assert t.label("127.10.0.3", CHROME) == "reader"
    assert t.label("127.10.0.3", BOT_UA) == "bot:random-pages"
    assert t.label("127.10.0.3", None) == truth.SHARED
    assert truth.is_bot("bot:search") is True and truth.is_bot("preview") is False
    assert truth.is_bot(truth.SHARED) is None
    assert t.client_key("127.10.0.3", BOT_UA) == f"127.10.0.3 {BOT_UA}"
    assert t.client_key("127.100.0.1", BOT_UA) == "127.100.0.1"


def test_an_address_two_waves_used_carries_both_labels() -> None:
    t = GroundTruth.build([], {"bot:slowpost": ["127.100.0.1"],
                               "bot:slowloris": ["127.100.0.1", "127.100.0.2"]})
    assert t.label("127.100.0.1", None) == "bot:slowloris|bot:slowpost"
    assert truth.is_bot(t.label("127.100.0.1", None)) is True
    assert t.label("127.100.0.2", None) == "bot:slowloris"


def _line(t: float, client: str, decision: str, ua: str | None = None) -> dict[str, object]:
    row: dict[str, object] = {"time": WALL_T0 + t, "client": client, "method": "GET",
                              "path": "/", "status": 200, "decision": decision}
    if ua is not None:
        row["ua"] = ua
    return row


LOG = [
    # peace (t < 5): one reader challenged (a false positive), a feed refused? no: allowed
    _line(1, "127.10.0.1", ""),
    _line(2, "127.10.0.1", "challenge:attack_mode"),
    _line(3, "127.50.0.1", ""),
    # attack (5 <= t < 15)
    _line(6, "127.100.0.1", "challenge:rule:search-burst"),
    _line(6, "127.100.0.1", "challenge:rule:search-burst"),
    _line(7, "127.100.0.2", "block:decision:search flood"),
    _line(7, "127.100.0.3", ""),                      # a bot let through: missed
    _line(8, "127.10.0.2", "pass"),
    _line(9, "127.60.0.1", "refuse:attack_mode"),     # a link preview refused: false positive
    _line(9, "127.10.0.3", "challenge:attack_mode"),  # shared address, no user agent: left out
    _line(10, "127.10.0.2", "refused: header timeout"),   # a connection limit: not a judgement
    # after (t >= 15)
    _line(16, "127.100.0.3", ""),
]


def test_precision_and_recall_per_client_and_per_request() -> None:
    d = judge(LOG, _truth(), WALL_T0, 5.0, 15.0)
    # Clients: bots 127.100.0.1-3 (two flagged, one missed); legitimate 127.10.0.1 (flagged),
    # 127.10.0.2, 127.50.0.1, 127.60.0.1 (flagged).
    assert d["clients"] == {"bots": 3, "legitimate": 4}
    assert d["per_client"] == {"tp": 2, "fp": 2, "fn": 1, "tn": 2, "precision": 0.5,
                               "recall": 0.6667}
    # Requests: bot lines 6, 6, 7 flagged, 7 and 16 not; legitimate lines 2 and 9 flagged.
    assert d["per_request"] == {"tp": 3, "fp": 2, "fn": 2, "tn": 4, "precision": 0.6,
                                "recall": 0.6}
    assert d["legitimate_flagged_by_phase"] == {"peace": 1, "attack": 1, "after": 0}
    assert d["lines_left_out"] == {truth.SHARED: 1}
    reader = d["by_label"]["reader-nojs"]
    assert reader["requests"] == 2 and reader["limit"] == 1 and reader["pass"] == 1
    assert reader["clients_flagged"] == 0
    assert d["by_label"]["preview"]["refuse"] == 1


def test_a_logged_user_agent_separates_a_reader_from_a_bot_on_one_address() -> None:
    log = [_line(6, "127.10.0.3", "", CHROME), _line(7, "127.10.0.3", "", CHROME),
           _line(7, "127.10.0.3", "challenge:rule:x", BOT_UA)]
    d = judge(log, _truth(), WALL_T0, 5.0, 15.0)
    assert d["lines_left_out"] == {}
    assert d["clients"] == {"bots": 1, "legitimate": 1}
    assert d["per_client"]["precision"] == 1.0 and d["per_client"]["recall"] == 1.0


def test_no_bots_and_no_flags_give_no_ratio_rather_than_a_made_up_one() -> None:
    d = judge([_line(1, "127.10.0.1", "")], _truth(), WALL_T0, 5.0, 15.0)
    assert d["per_client"]["precision"] is None and d["per_client"]["recall"] is None


def test_log_times_in_every_form_the_log_may_take() -> None:
    assert truth.log_seconds("2027-01-15T08:00:00Z") == WALL_T0
    assert truth.log_seconds("2027-01-15T08:00:00.250Z") == WALL_T0 + 0.25
    assert truth.log_seconds(WALL_T0 * 1000 + 500) == WALL_T0 + 0.5
    assert truth.log_seconds("yesterday") is None
    assert truth.line_seconds({"time": "yesterday", "ts": WALL_T0 + 1.5}) == WALL_T0 + 1.5
    assert truth.line_seconds({}) is None


def test_labelled_export_keeps_every_field_and_adds_the_truth(tmp_path: Path) -> None:
    out = tmp_path / "x" / "lab-labelled.cgnat.jsonl"
    rows = [{**_line(2, "127.10.0.1", ""), "time": "2027-01-15T08:00:02Z"},
            _line(6, "127.100.0.1", "challenge:rule:search-burst"),
            _line(9, "127.10.0.3", "challenge:attack_mode")]
    assert truth.export_labelled(rows, _truth(), out, "cgnat", WALL_T0, 5.0, 15.0) == 3
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(g["label"], g["bot"], g["phase"]) for g in got] == [
        ("reader", False, "peace"), ("bot:search", True, "attack"), ("shared", None, "attack")]
    assert got[0]["time"] == "2027-01-15T08:00:02Z" and got[0]["t"] == 2.0
    assert got[1]["decision"] == "challenge:rule:search-burst" and got[1]["scenario"] == "cgnat"


def test_nginx_log_429_is_its_refusal(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(
        '127.100.0.1 [15/Jan/2027:08:00:06 +0000] "GET /search?q=a HTTP/1.1" 429 162 0.000 -\n'
        '127.10.0.1 [15/Jan/2027:08:00:01 +0000] "GET / HTTP/1.1" 200 12958 0.041 MISS\n'
        'garbage\n')
    rows = list(truth.read_nginx_log(log))
    assert [(r["client"], r["decision"], r["path"]) for r in rows] == [
        ("127.100.0.1", "block:limit", "/search?q=a"), ("127.10.0.1", "", "/")]
    assert rows[1]["time"] == WALL_T0 + 1
    d = judge(rows, _truth(), WALL_T0, 5.0, 15.0)
    assert d["per_client"]["tp"] == 1 and d["per_client"]["fp"] == 0
