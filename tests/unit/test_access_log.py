"""The access log's hand-rolled JSON lines: every line parses, carries millisecond time, the
query, User-Agent and Referer only when sent, and escapes whatever a client put in them."""

from __future__ import annotations

import json
from pathlib import Path

from kalkan.observe.access_log import AccessLog

NOW = 1_780_000_000.125  # 2026-05-28T20:26:40.125Z


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_line_has_millisecond_time_and_the_request(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "a.log"))
    log.write(NOW, "203.0.113.7", "GET", "news.example", "/a", "s=bishkek&page=2", 200, 20480,
              "HIT", None, 0.12, "allow", "", AccessLog.agent(b"Firefox/120.0", b"https://x/"))
    log.close()
    [line] = lines(tmp_path / "a.log")
    assert line == {"time": "2026-05-28T20:26:40.125Z", "client": "203.0.113.7",
                    "method": "GET", "host": "news.example", "path": "/a",
                    "query": "s=bishkek&page=2", "status": 200, "bytes": 20480, "cache": "HIT",
                    "origin_ms": None, "total_ms": 0.12, "decision": "allow",
                    "ua": "Firefox/120.0", "referer": "https://x/"}


def test_absent_fields_are_left_out(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "a.log"))
    log.write(NOW, "::1", "GET", "h", "/", "", 502, 10, "MISS", 3.26, 4.0, "allow", "origin down",
              AccessLog.agent(None, None))
    log.write(NOW + 0.999, "::1", "GET", "h", "/", "", 200, 10, "MISS", 1.0, 2.0, "allow", "",
              AccessLog.agent(None, b"https://r/"))
    log.close()
    first, second = lines(tmp_path / "a.log")
    assert not {"query", "ua", "referer"} & first.keys()
    assert first["reason"] == "origin down" and first["origin_ms"] == 3.3
    assert second["referer"] == "https://r/" and "ua" not in second
    assert second["time"] == "2026-05-28T20:26:41.124Z"


def test_hostile_field_values_stay_inside_their_strings(tmp_path: Path) -> None:
    """A client controls User-Agent, Referer, the path and the query: quotes, backslashes,
    control characters and bytes that are not UTF-8 must not end a string or a line."""
    log = AccessLog(str(tmp_path / "a.log"))
    ua = b'evil", "decision": "allow\\\n\x00\xff\xfe'
    log.write(NOW, "198.51.100.1", "GET", "h", '/p"\n', 'q="\\', 403, 0, "BYPASS", None, 0.0,
              "block", "", AccessLog.agent(ua, b"\r\n"))
    log.close()
    [line] = lines(tmp_path / "a.log")
    assert line["ua"] == ua.decode("latin-1")  # not UTF-8: one character per byte
    assert line["referer"] == "\r\n" and line["path"] == '/p"\n' and line["query"] == 'q="\\'
    assert line["decision"] == "block"


def test_the_memos_stay_bounded_under_random_urls(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "a.log"))
    for i in range(5000):
        log.write(NOW, f"10.0.{i // 250}.{i % 250}", "GET", "h", f"/{i}", f"r={i}", 404, 0,
                  "MISS", 1.0, 1.0, "allow")
    log.close()
    assert len(log._fragments) <= 1024 and len(log._middles) <= 1024
    assert len(lines(tmp_path / "a.log")) == 5000


def test_decimals_are_written_as_format_writes_them() -> None:
    from kalkan.observe.access_log import _decimals
    for value in (0.0, 0.004, 0.006, 0.12, 1.0, 9.999, 12.345678, 999.5, 123456.78):
        assert float(_decimals(value, 2)) == float(f"{value:.2f}") or \
            abs(float(_decimals(value, 2)) - value) <= 0.005
        assert len(_decimals(value, 2).split(".")[1]) == 2
        assert len(_decimals(value, 1).split(".")[1]) == 1
    assert _decimals(-3.0, 2) == "0.00" and _decimals(3.25, 1) in ("3.2", "3.3")


def test_utf8_in_a_field_is_read_as_utf8(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "a.log"))
    log.write(NOW, "::1", "GET", "h", "/", "", 200, 0, "HIT", None, 0.0, "allow", "",
              AccessLog.agent("Браузер/1.0".encode(), None))
    log.close()
    assert lines(tmp_path / "a.log")[0]["ua"] == "Браузер/1.0"
