"""The access log's hand-rolled JSON lines: every line parses, carries millisecond time, the
query, User-Agent and Referer only when sent, and escapes whatever a client put in them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from kalkan.observe.access_log import AccessLog

NOW = 1_780_000_000.125  # 2026-05-28T20:26:40.125Z


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_line_has_millisecond_time_and_the_request(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "a.log"))
    log.write(NOW, "203.0.113.7", "GET", "news.example", "/a", "s=bishkek&page=2", 200, 20480,
              "HIT", None, 0.12, "allow", "", b"Firefox/120.0", b"https://x/")
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
              None, None)
    log.write(NOW + 0.999, "::1", "GET", "h", "/", "", 200, 10, "MISS", 1.0, 2.0, "allow", "",
              None, b"https://r/")
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
              "block", "", ua, b"\r\n")
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
              "Браузер/1.0".encode(), None)
    log.close()
    assert lines(tmp_path / "a.log")[0]["ua"] == "Браузер/1.0"


# Lines as the log wrote them before it was made cheaper (bench/hit_instructions.py): the fast
# paths must write exactly these bytes, awkward fields, rounding edges and all.
PINNED = [
    (b'{"time":"2026-05-28T20:26:40.125Z","client":"203.0.113.0","method":"HE'
     b'AD","host":"news.example","path":"/a","status":404,"bytes":20480,"cach'
     b'e":"HIT","origin_ms":null,"total_ms":0.00,"decision":"challenge","reas'
     b'on":"stale: origin down","ua":"Mozilla/5.0 (X11; Linux x86_64) Firefox'
     b'/121.0","referer":"https://ref.example/p?q=Mozilla/5.0 (X11; Linux x86'
     b'_64) Firefox/121.0"}'),
    (b'{"time":"2026-05-28T20:26:40.166Z","client":"203.0.113.1","method":"GE'
     b'T","host":"news.example","path":"/a","query":"x=1","status":200,"bytes'
     b'":20481,"cache":"HIT","origin_ms":null,"total_ms":0.00,"decision":"all'
     b'ow","ua":"tab\\there"}'),
    (b'{"time":"2026-05-28T20:26:40.208Z","client":"203.0.113.2","method":"GE'
     b'T","host":"news.example","path":"/a","status":200,"bytes":20482,"cache'
     b'":"MISS","origin_ms":1.3,"total_ms":0.01,"decision":"challenge","ua":"'
     b'del\\u007f"}'),
    (b'{"time":"2026-05-28T20:26:40.250Z","client":"203.0.113.3","method":"GE'
     b'T","host":"news.example","path":"/a","query":"x=1","status":200,"bytes'
     b'":20483,"cache":"HIT","origin_ms":null,"total_ms":9.99,"decision":"all'
     b'ow","reason":"stale: origin down","ua":"q\\"b\\\\s","referer":"https://re'
     b'f.example/p?q=q\\"b\\\\s"}'),
    (b'{"time":"2026-05-28T20:26:40.291Z","client":"203.0.113.4","method":"HE'
     b'AD","host":"news.example","path":"/a","status":200,"bytes":20484,"cach'
     b'e":"MISS","origin_ms":0.0,"total_ms":9.99,"decision":"challenge","ua":'
     b'"\\u0001\\u001f"}'),
    (b'{"time":"2026-05-28T20:26:40.333Z","client":"203.0.113.5","method":"GE'
     b'T","host":"news.example","path":"/p\\u00e9","query":"x=1","status":404,'
     b'"bytes":20485,"cache":"MISS","origin_ms":100.0,"total_ms":10.00,"decis'
     b'ion":"allow","ua":"\\u00ff\\u00fe latin"}'),
    (b'{"time":"2026-05-28T20:26:40.375Z","client":"203.0.113.6","method":"GE'
     b'T","host":"news.example","path":"/a","status":200,"bytes":20486,"cache'
     b'":"HIT","origin_ms":null,"total_ms":999.99,"decision":"challenge","rea'
     b'son":"stale: origin down","ua":"\\u0411\\u0440\\u0430\\u0443\\u0437\\u0435\\u'
     b'0440/1.0","referer":"https://ref.example/p?q=\\u0411\\u0440\\u0430\\u0443\\'
     b'u0437\\u0435\\u0440/1.0"}'),
    (b'{"time":"2026-05-28T20:26:40.416Z","client":"203.0.113.7","method":"GE'
     b'T","host":"news.example","path":"/a","query":"x=1","status":200,"bytes'
     b'":20487,"cache":"MISS","origin_ms":1234.6,"total_ms":1000.00,"decision'
     b'":"allow"}'),
    (b'{"time":"2026-05-28T20:26:40.458Z","client":"203.0.113.8","method":"HE'
     b'AD","host":"news.example","path":"/a","status":200,"bytes":20488,"cach'
     b'e":"HIT","origin_ms":null,"total_ms":0.00,"decision":"challenge","ua":'
     b'"\\u0000"}'),
    (b'{"time":"2026-05-28T20:26:40.500Z","client":"203.0.113.9","method":"GE'
     b'T","host":"news.example","path":"/a","query":"x=1","status":200,"bytes'
     b'":20489,"cache":"MISS","origin_ms":0.0,"total_ms":0.13,"decision":"all'
     b'ow","reason":"stale: origin down","ua":"a\\u0080b","referer":"https://r'
     b'ef.example/p?q=a\\u0080b"}'),
    (b'{"time":"2026-05-28T20:26:40.999Z","client":"::1","method":"GET","host'
     b'":"h","path":"/","status":200,"bytes":0,"cache":"HIT","origin_ms":null'
     b',"total_ms":0.00,"decision":"allow","ua":""}'),
    (b'{"time":"2026-05-28T20:26:41.125Z","client":"::1","method":"GET","host'
     b'":"h","path":"/r","query":"a=\\"1\\"","status":304,"bytes":0,"cache":"HI'
     b'T","origin_ms":null,"total_ms":12.35,"decision":"allow","ua":"ua","ref'
     b'erer":"ref"}'),
]


def test_lines_are_byte_identical_to_the_pinned_ones(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "a.log"))
    uas = [b"Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0", b"tab\there", b"del\x7f",
           b'q"b\\s', b"\x01\x1f", b"\xff\xfe latin", "Браузер/1.0".encode(), b"", b"\x00",
           b"a\x80b"]
    cases = [(0.0, None), (0.004999, None), (0.005, 1.25), (9.995, None), (9.9949, 0.04),
             (10.0, 99.95), (999.99, None), (1000.0, 1234.56), (-1.0, None), (0.126, 0.0)]
    for i, (ua, (total, origin)) in enumerate(zip(uas, cases, strict=True)):
        ref = None if i % 3 else b"https://ref.example/p?q=" + ua
        log.write(NOW + i * 0.0417, f"203.0.113.{i}", "GET" if i % 4 else "HEAD",
                  "news.example", "/p\u00e9" if i == 5 else "/a", "x=1" if i % 2 else "",
                  200 if i % 5 else 404, 20480 + i, "HIT" if origin is None else "MISS", origin,
                  total, "allow" if i % 2 else "challenge", "" if i % 3 else "stale: origin down",
                  ua if i != 7 else None, ref)
    log.write(NOW + 0.8749, "::1", "GET", "h", "/", "", 200, 0, "HIT", None, 0.0049, "allow", "",
              b"", None)
    log.write_fragment(NOW + 1.0, "::1", AccessLog.fragment("GET", "h", "/r", 'a="1"'), 304, 0,
                       "HIT", None, 12.345, "allow", "", AccessLog.agent(b"ua", b"ref"))
    log.close()
    assert (tmp_path / "a.log").read_bytes().splitlines() == PINNED


def test_a_full_batch_is_written_after_the_turn_when_deferred(tmp_path: Path) -> None:
    """With `defer` (the edge's loop.call_soon) the 64th line schedules the write instead of
    making its own request wait for it; a batch that keeps growing before the write runs is
    written at once (memory stays bounded)."""
    path = tmp_path / "a.log"
    log = AccessLog(str(path))
    scheduled: list[Callable[[], None]] = []
    log.defer = scheduled.append

    def write(n: int) -> None:
        for i in range(n):
            log.write(NOW, "192.0.2.1", "GET", "h", f"/{i}", "", 200, 10, "HIT", None, 0.1,
                      "allow")

    write(64)
    assert path.read_text() == "" and len(scheduled) == 1  # scheduled, not written
    write(100)
    assert len(scheduled) == 1  # one write is due: not scheduled again
    scheduled.pop()()
    assert len(lines(path)) == 164
    write(63)
    assert scheduled == [] and len(lines(path)) == 164  # under a batch: nothing due yet
    write(1 + 4 * 64)  # the deferred write never ran: written at 256 pending lines
    assert len(scheduled) == 1 and len(lines(path)) == 164 + 256
    scheduled.pop()()  # nothing left to write: a no-op
    log.close()
    assert len(lines(path)) == 164 + 64 + 256
