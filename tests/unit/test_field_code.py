"""How the HTTP/1.1 reader recognises the fields it notes, in any spelling (edge/framing.py)."""

from __future__ import annotations

import pytest

from kalkan.edge.framing import _SPELLINGS, _SPELLINGS_PER_LENGTH, field_code


def test_every_spelling_of_a_noted_field_gets_its_code() -> None:
    for spelling in (b"Host", b"host", b"HOST", b"hOsT"):
        assert field_code(spelling) == 1
        assert field_code(spelling) == 1  # learned, then found: the same answer
    assert field_code(b"User-Agent") == field_code(b"user-agent") == 2
    assert field_code(b"X-Forwarded-For") == field_code(b"x-forwarded-FOR") == 6
    assert field_code(b"If-None-Match") == field_code(b"If-Modified-Since") == 11


def test_fields_not_noted_get_zero_even_at_the_length_of_one_that_is() -> None:
    assert field_code(b"Hose") == 0     # the length of Host
    assert field_code(b"Accept") == 0   # the length of Cookie
    assert field_code(b"Accept-Language") == 0  # the length of X-Forwarded-For
    assert field_code(b"Upgrade-Insecure-Requests") == 0  # longer than any noted field
    assert field_code(b"") == 0


def test_invented_spellings_keep_the_lists_short_and_answers_right() -> None:
    for i in range(10 * _SPELLINGS_PER_LENGTH):
        assert field_code(b"X-%02d" % (i % 100)) == 0  # length 4, as Host
        assert len(_SPELLINGS[4]) <= _SPELLINGS_PER_LENGTH
    assert field_code(b"Host") == 1  # pushed out, learned again
    assert all(len(spellings) <= _SPELLINGS_PER_LENGTH for spellings in _SPELLINGS)


def test_host_values_are_read_afresh_whatever_came_before() -> None:
    from kalkan.edge.framing import BadRequest, note_coded
    from kalkan.edge.request import Request

    def host_of(value: bytes) -> str:
        req = Request()
        note_coded(req, 1, value)
        return req.host

    assert host_of(b"News.Example") == "news.example"
    assert host_of(b"News.Example") == "news.example"  # the same value again: the same answer
    assert host_of(b"news.example:8080") == "news.example:8080"
    assert host_of(b"localhost") == "localhost"
    for bad in (b"", b"a/b", b"x y", b"news.example:80x"):
        with pytest.raises(BadRequest):
            host_of(bad)
    assert host_of(b"news.example.") == "news.example"
