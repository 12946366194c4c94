"""`kalkan analyze` on generated access logs with a known attack, through the command line:
the botnet's /24 is the top prefix, its members form one cluster, the mitigation's start is
found to the millisecond; old and new line forms, .gz and globs are read; pseudonymized reports
hold no address; attacker-chosen text stays text; bad input gets a message naming the file and
line. (Speed is measured in bench/analyze_speed.py, not here.)"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed; it lives next to src/
    sys.path.insert(0, str(ROOT))

from bench.analyze_log import BotGroup, Scenario, write  # noqa: E402

from kalkan.analyze.load import connect  # noqa: E402
from kalkan.cli import main  # noqa: E402
from kalkan.observe.pseudonym import pseudonymize  # noqa: E402

BOTS = 60
BOTNET = BotGroup("search botnet", BOTS, ("127.66.1",), "search", 1.0,
                  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                  "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", "challenge")


def scenario(**kw: object) -> Scenario:
    base: dict[str, object] = {"lines": 30_000, "seconds": 120.0, "readers": 90,
                               "bots": [BOTNET], "attack_from": 0.25, "attack_until": 0.9,
                               "attack_share": 0.7, "mitigation_delay": 3.0}
    base.update(kw)
    return Scenario(**base)  # type: ignore[arg-type]


def analyze(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["analyze", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def attack_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Scenario, dict]:
    path = tmp_path_factory.mktemp("logs") / "access.log"
    sc = scenario()
    facts = write(path, sc)
    return path, sc, facts


def test_the_attack_is_found(attack_log, tmp_path, capsys) -> None:
    path, sc, facts = attack_log
    rc, _, err = analyze(capsys, str(path), "--out", str(tmp_path / "r"))
    assert rc == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["inputs"]["lines"] == sc.lines
    top = report["top"]
    assert top["prefixes"][0]["prefix"] == "127.66.1.0/24"
    assert top["prefixes"][0]["clients"] == BOTS
    assert top["prefixes"][0]["suspects"] == BOTS
    # One cluster holds the whole botnet, and only it.
    botnet = [c for c in report["clusters"] if "127.66.1.0/24" in
              [p["prefix"] for p in c["top_prefixes"]]]
    assert len(botnet) == 1, botnet
    assert botnet[0]["clients"] == BOTS and botnet[0]["prefixes"] == 1
    assert botnet[0]["kind"] == "search s=<word>"
    assert botnet[0]["outcome"] == "challenge" and botnet[0]["agent"] == "Chrome"
    # The mitigation: its first decision, and how long after the first attacking request.
    mit = report["mitigation"]
    assert mit["suspects"] == BOTS
    first = mit["first"]["mitigation"]
    assert first["decision"] == "challenge:attack_mode"
    assert first["address"] in facts["bots"]["search botnet"]
    assert abs(_ms(first["time"]) - sc.mitigation_start * 1000) < 1000
    assert abs(_ms(mit["suspect_first"]) - sc.attack_start * 1000) < 1000
    assert 2.0 <= mit["seconds_to_first_mitigation"] <= 4.0
    assert mit["after_mitigation"]["suspect_stopped_share"] == 1.0
    assert mit["others"]["served_share"] == 1.0  # no reader was stopped
    assert mit["suspect_origin_requests"] > 0  # before the mitigation, the origin paid
    assert mit["after_mitigation"]["suspect_at_origin"] == 0
    # Query shapes: the random search words are one pattern.
    assert top["queries"][0]["pattern"] == "search s=<word>"
    assert top["queries"][0]["clients"] >= BOTS  # readers search too, in peace
    # The outputs are all there; the Markdown names the botnet's prefix and links its charts.
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert names == {"report.json", "report.md", "report.html", "timeline.png",
                     "mitigation.png", "prefixes.png"}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "127.66.1.0/24" in md and "(timeline.png)" in md
    assert "data:image/png;base64," in (tmp_path / "r" / "report.html").read_text()


def _ms(iso: str) -> float:
    from datetime import UTC, datetime
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp() * 1e3


def test_old_and_new_lines_gz_and_globs_read_together(tmp_path, capsys) -> None:
    old = tmp_path / "access.log.1.gz"
    new = tmp_path / "access.log"
    write(old, scenario(lines=5_000, legacy=True, seed=2))
    write(new, scenario(lines=5_000, start=1796446276.0 + 3600, seed=3))
    rc, out, err = analyze(capsys, str(tmp_path / "access.log*"), "--format", "json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["inputs"]["lines"] == 10_000
    assert sorted(report["inputs"]["files"]) == sorted([str(old), str(new)])
    assert report["inputs"]["first"].endswith(":16.000Z")  # seconds-only time of the old form
    assert report["top"]["prefixes"][0]["prefix"] == "127.66.1.0/24"
    # --since/--until: only the new file's hour.
    rc, out, err = analyze(capsys, str(old), str(new), "--format", "json",
                           "--since", "2026-12-05T05:51:16Z")
    assert rc == 0, err
    assert json.loads(out)["inputs"]["lines"] == 5_000


def test_markdown_on_stdout_without_out(attack_log, capsys) -> None:
    rc, out, _ = analyze(capsys, str(attack_log[0]), "--top", "3")
    assert rc == 0
    assert out.startswith("# Kalkan access-log report")
    assert ".png" not in out  # no charts without a directory to put them in


def test_pseudonymized_report_holds_no_address(attack_log, tmp_path, capsys) -> None:
    path, _, facts = attack_log
    key = tmp_path / "key"
    key.write_text("a key that stays in the newsroom\n")
    rc, _, err = analyze(capsys, str(path), "--out", str(tmp_path / "r"),
                         "--pseudonymize", str(key))
    assert rc == 0, err
    outputs = {n: (tmp_path / "r" / n).read_text()
               for n in ("report.json", "report.md", "report.html")}
    addresses = facts["bots"]["search botnet"] + facts["readers"]
    for name, text in outputs.items():
        leaked = [a for a in addresses if f"{a}\"" in text or f"{a}`" in text
                  or f"{a}," in text or f"{a}<" in text or f"{a} " in text]
        assert not leaked, (name, leaked[:3])
    report = json.loads(outputs["report.json"])
    assert report["pseudonymized"] is True
    assert report["top"]["addresses"][0]["address"].startswith("127.")
    assert "127.66.1.x-" in outputs["report.md"]
    assert report["top"]["prefixes"][0]["prefix"] == "127.66.1.0/24"  # prefixes are kept


def test_attacker_text_stays_text(tmp_path, capsys) -> None:
    evil_path = "/![pixel](https://tracker.test/p.png)"
    evil_ua = "<img src=https://tracker.test/i.png> | `x` ![a](https://tracker.test/)"
    lines = [json.dumps({"time": f"2026-12-05T04:51:{10 + i % 40:02d}.000Z",
                         "client": "127.0.0.9", "method": "GET", "host": "news.example",
                         "path": evil_path, "status": 403, "bytes": 1, "cache": "BYPASS",
                         "origin_ms": None, "total_ms": 0.1, "decision": "block:rule:x",
                         "ua": evil_ua}) for i in range(20)]
    log = tmp_path / "evil.log"
    log.write_text("\n".join(lines) + "\n")
    rc, _, err = analyze(capsys, str(log), "--out", str(tmp_path / "r"))
    assert rc == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    html = (tmp_path / "r" / "report.html").read_text()
    assert "![pixel](https" not in md.replace("`/![pixel](https://tracker.test/p.png)`", "")
    assert "<img src=https" not in md.replace("`<img src=https://tracker.test/i.png> ", "")
    assert "<img src=https" not in html and "src=\"https" not in html
    assert "&lt;img src=https://tracker.test/i.png&gt;" in html


@pytest.mark.parametrize(("content", "expected"), [
    ('{"time":"2026-12-05T04:51:16Z","client":"127.0.0.1","status":200}\nnot json\n',
     r"bad\.log:2: not JSON"),
    ('{"time":"2026-12-05T04:51:16Z","client":"127.0.0.1","status":200}\n[1, 2]\n',
     r"bad\.log:2: a JSON list, not an object"),
    ('{"time":"2026-12-05T04:51:16Z","client":"127.0.0.1","status":"ok"}\n',
     r"bad\.log:1: 'status' is 'ok', expected a number"),
    ('{"time":"yesterday","client":"127.0.0.1","status":200}\n',
     r"bad\.log:1: 'time' is 'yesterday'"),
    ('{"remote_addr":"127.0.0.1","request":"GET / HTTP/1.1"}\n',
     r"bad\.log:1: no 'time' field: this is not a Kalkan access-log line"),
    ("", r"bad\.log: the log is empty"),
    ("\n\n", r"bad\.log: the log is empty"),
])
def test_bad_input_is_named(tmp_path, capsys, content: str, expected: str) -> None:
    bad = tmp_path / "bad.log"
    bad.write_text(content)
    rc, _, err = analyze(capsys, str(bad))
    assert rc == 2
    assert err.startswith("kalkan analyze: ")
    assert len(err.strip().splitlines()) == 1, err
    import re
    assert re.search(expected, err), err


def test_missing_files_globs_and_windows_are_named(attack_log, tmp_path, capsys) -> None:
    rc, _, err = analyze(capsys, str(tmp_path / "nope.log"))
    assert rc == 2 and "nope.log: no such file" in err
    rc, _, err = analyze(capsys, str(tmp_path / "*.nothing"))
    assert rc == 2 and "no file matches this pattern" in err
    rc, _, err = analyze(capsys, str(tmp_path))
    assert rc == 2 and "is a directory" in err
    rc, _, err = analyze(capsys, str(attack_log[0]), "--since", "2030-01-01T00:00:00Z")
    assert rc == 2 and "no requests in the logs between --since and --until" in err
    rc, _, err = analyze(capsys, str(attack_log[0]), "--since", "last tuesday")
    assert rc == 2 and "--since 'last tuesday': not an ISO 8601 time" in err
    gz = tmp_path / "broken.log.gz"
    gz.write_bytes(gzip.compress(b'{"time":"2026-12-05T04:51:16Z"')[:20])
    rc, _, err = analyze(capsys, str(gz))
    assert rc == 2 and "broken.log.gz" in err
    short = tmp_path / "key"
    short.write_text("short")
    rc, _, err = analyze(capsys, str(attack_log[0]), "--pseudonymize", str(short))
    assert rc == 2 and "at least 16" in err


@pytest.mark.parametrize(("query", "shape"), [
    ("s=kloop", "s=<word>"), ("x=8f3a2c1d", "x=<hex8>"), ("8f3a2c1d", "<hex8>"),
    ("s=two+words&page=2", "s=<text>&page=<num>"), ("a=", "a=<empty>"),
    ("s=%D1%81%D1%83%D0%B4", "s=<text>"), ("deadbeef12=1", "<hex10>=<num>"),
    ("fbclid=IwAR0abcdefghijklmnopqrs", "fbclid=<token>"), ("v=1.2.3", "v=<id>"),
])
def test_query_shapes(query: str, shape: str) -> None:
    con = connect()
    assert con.execute("SELECT query_shape(?)", [query]).fetchone() == (shape,)


@pytest.mark.parametrize(("address", "prefix"), [
    ("203.0.113.7", "203.0.113.0/24"), ("::ffff:203.0.113.7", "203.0.113.0/24"),
    ("2001:db8:1:2::7", "2001:db8:1::/48"), ("2001:db8::1", "2001:db8::/48"),
    ("2001:0db8:00aa:0002:0003:0004:0005:0006", "2001:db8:aa::/48"), ("::1", "::/48"),
    ("0:db8:1::5", "0:db8:1::/48"), ("2001:0:5::1", "2001:0:5::/48"),
])
def test_prefixes(address: str, prefix: str) -> None:
    con = connect()
    assert con.execute("SELECT prefix_of(?)", [address]).fetchone() == (prefix,)
    # A pseudonymized address shows the same prefix, in the same spelling.
    shown = pseudonymize(address, b"sixteen bytes at least").rsplit("x-", 1)[0]
    assert shown == (prefix.removesuffix("0/24") if prefix.endswith("/24")
                     else prefix.removesuffix("/48"))


def test_without_the_analyze_extra_the_command_says_what_to_install(
        attack_log, capsys, monkeypatch) -> None:
    # A Python where duckdb cannot be imported (None in sys.modules makes `import` fail), and
    # kalkan.analyze not yet imported, as in a runtime-only install.
    monkeypatch.setitem(sys.modules, "duckdb", None)
    for name in [m for m in sys.modules if m.startswith("kalkan.analyze")]:
        monkeypatch.delitem(sys.modules, name)
    rc, _, err = analyze(capsys, str(attack_log[0]))
    assert rc == 2
    assert err.strip() == ("kalkan analyze needs the analyze extra (duckdb is not installed): "
                           "pip install 'kalkan[analyze]'")


def test_a_failed_analysis_writes_nothing(tmp_path, capsys) -> None:
    # Nothing is written until the whole report is made: no half report, no charts alone.
    bad = tmp_path / "bad.log"
    bad.write_text('{"time":"2026-12-05T04:51:16.000Z","client":"127.0.0.1","status":200}\n'
                   '{"time":"yesterday","client":"127.0.0.1","status":200}\n')
    rc, _, err = analyze(capsys, str(bad), "--out", str(tmp_path / "r"))
    assert rc == 2 and "bad.log:2: 'time' is 'yesterday'" in err
    assert not (tmp_path / "r").exists()


def test_the_first_mitigation_of_one_millisecond_does_not_depend_on_line_order(
        tmp_path, capsys) -> None:
    def line(client: str, path: str) -> str:
        return json.dumps({"time": "2026-12-05T04:51:16.123Z", "client": client,
                           "method": "GET", "path": path, "status": 403, "cache": "BYPASS",
                           "decision": "block:rule:x"}) + "\n"
    lines = [line("127.0.0.9", "/b"), line("127.0.0.2", "/z"), line("127.0.0.2", "/a")]
    firsts = []
    for order in (lines, lines[::-1]):
        log = tmp_path / "tie.log"
        log.write_text("".join(order))
        rc, out, err = analyze(capsys, str(log), "--format", "json")
        assert rc == 0, err
        firsts.append(json.loads(out)["mitigation"]["first"]["mitigation"])
    assert firsts[0] == firsts[1]
    assert (firsts[0]["address"], firsts[0]["path"]) == ("127.0.0.2", "/a")


def test_a_clients_agent_and_kind_do_not_depend_on_line_order(tmp_path, capsys) -> None:
    # A client that sent two User-Agents equally often, and two kinds of request equally
    # often: the report names the same ones whatever order the lines (and the engine's
    # threads) come in: the User-Agent it sent first, the kind first in text order.
    def line(second: int, ua: str, path: str) -> str:
        return json.dumps({"time": f"2026-12-05T04:51:{second:02d}.000Z", "client": "127.0.0.7",
                           "method": "GET", "path": path, "status": 200, "cache": "HIT",
                           "ua": ua}) + "\n"
    lines = [line(10, "curl/8.5.0", "/feed/"), line(11, "Mozilla/5.0 Firefox/133.0", "/a/"),
             line(12, "curl/8.5.0", "/b/"), line(13, "Mozilla/5.0 Firefox/133.0", "/rss/"),
             line(14, "curl/8.5.0", "/c/"), line(15, "Mozilla/5.0 Firefox/133.0", "/atom/")]
    seen = []
    for order in (lines, lines[::-1], lines[1::2] + lines[::2]):
        log = tmp_path / "tie.log"
        log.write_text("".join(order))
        rc, out, err = analyze(capsys, str(log), "--format", "json")
        assert rc == 0, err
        address = json.loads(out)["top"]["addresses"][0]
        seen.append((address["agent"], address["kind"]))
    assert seen == [("tool", "feed")] * 3, seen


def test_the_engine_writes_nothing_on_stdout() -> None:
    # The report goes to stdout without --out; the engine's progress bar (drawn there for a
    # query of over 2 s, a long log's) must not land in it.
    con = connect()
    assert con.execute("SELECT current_setting('enable_progress_bar')").fetchone() == (False,)


def test_before_and_after_the_first_mitigation_split_at_its_millisecond(tmp_path, capsys) -> None:
    # The lines are grouped as they are read (one row per client, path, decision...), but the
    # mitigation's "after" still starts at the first mitigation's millisecond, not its second.
    def line(ms: int, client: str, decision: str = "", origin: float | None = None) -> str:
        return json.dumps({"time": f"2026-12-05T04:51:16.{ms:03d}Z", "client": client,
                           "method": "GET", "path": "/", "status": 403 if decision else 200,
                           "cache": "BYPASS" if decision else "MISS", "origin_ms": origin,
                           "decision": decision}) + "\n"
    reader, bot = "127.0.0.5", "127.0.0.66"
    lines = [line(100, reader, origin=30.0), line(150, bot, origin=30.0),
             line(200, bot, "block:rule:x"), line(200, reader, origin=30.0),
             line(250, reader, origin=30.0), line(300, bot, "block:rule:x"),
             line(900, reader)]
    log = tmp_path / "ms.log"
    log.write_text("".join(lines))
    rc, out, err = analyze(capsys, str(log), "--format", "json")
    assert rc == 0, err
    mit = json.loads(out)["mitigation"]
    assert mit["first"]["mitigation"]["time"] == "2026-12-05T04:51:16.200Z"
    after = mit["after_mitigation"]
    assert (after["suspect_requests"], after["suspect_stopped"]) == (2, 2)
    assert (after["other_requests"], after["origin_requests"]) == (3, 2)  # 200, 250, 900 ms
    assert mit["suspect_origin_requests"] == 1 and after["suspect_at_origin"] == 0
