"""The access log's line append in C (observe/_log_line.c) against its Python reference
(access_log.append_line_py): the same bytes appended, or the same refusal, for any input."""

from __future__ import annotations

import json
import random

import pytest

from kalkan.observe import access_log
from kalkan.observe.access_log import append_line, append_line_py

TEXTS = ('{"time":"2026-12-06T07:40:00.', "125", 'Z","client":"203.0.113.7",',
         '"method":"GET","host":"h","path":"/a","status":200,"bytes":5,"cache":"HIT",'
         '"origin_ms":null,"total_ms":', "0.12", ',"decision":"allow"', "", "")


def _both(*args: object) -> tuple[bool, bytes]:
    c_buf, py_buf = bytearray(b"before\n"), bytearray(b"before\n")
    c_ok = append_line(c_buf, *args)  # type: ignore[arg-type]
    py_ok = append_line_py(py_buf, *args)  # type: ignore[arg-type]
    assert (c_ok, bytes(c_buf)) == (py_ok, bytes(py_buf)), args
    if not c_ok:
        assert c_buf == b"before\n"  # nothing appended: the caller takes the long way
    return c_ok, bytes(c_buf)


def test_the_c_module_is_the_one_in_use_when_built() -> None:
    assert append_line is not append_line_py or not hasattr(access_log, "_log_line")


def test_a_reader_line_is_one_json_object() -> None:
    ok, buf = _both(*TEXTS, b"Mozilla/5.0 (X11) Firefox/121.0", b"https://news.test/")
    assert ok
    line = json.loads(buf.splitlines()[1])
    assert line["ua"] == "Mozilla/5.0 (X11) Firefox/121.0" and line["referer"] == "https://news.test/"
    assert _both(*TEXTS, None, None)[1].endswith(b'"decision":"allow"}\n')
    assert _both(*TEXTS, b"", None)[1].endswith(b',"ua":""}\n')
    assert _both(*TEXTS[:6], ',"reason":"stale"', "", None, b"r")[1].endswith(
        b',"reason":"stale","referer":"r"}\n')


@pytest.mark.parametrize("value", [b'"', b"\\", b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xff",
                                   b"a\nb", "Браузер".encode()])
def test_what_needs_escaping_is_refused_for_the_long_way(value: bytes) -> None:
    assert not _both(*TEXTS, b"ok" + value, None)[0]
    assert not _both(*TEXTS, None, value + b"ok")[0]
    assert not _both(*TEXTS[:7], "\u00e9", b"ok", None)[0]


def test_random_agents_and_referers() -> None:
    rng = random.Random(6)
    alphabet = bytes(range(256))
    for _ in range(5000):
        def field() -> bytes | None:
            if rng.random() < 0.2:
                return None
            pool = alphabet if rng.random() < 0.3 else b"abcXYZ09 ;()/.,:-_"
            return bytes(rng.choice(pool) for _ in range(rng.randrange(0, 60)))
        _both(*TEXTS, field(), field())


def test_bad_arguments_raise() -> None:
    if append_line is append_line_py:
        pytest.skip("built without a C compiler")
    with pytest.raises(TypeError):
        append_line(b"not a bytearray", *TEXTS, None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        append_line(bytearray(), *TEXTS[:7], 5, None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        append_line(bytearray(), *TEXTS, "ua", None)  # type: ignore[arg-type]
