"""read_request_head: an HTTP/2 header list into a Request, without a socket (the same lists
over TLS are in tests/integration/test_http2.py)."""

from __future__ import annotations

import pytest

from kalkan.config import LimitsConfig
from kalkan.edge.framing import BadRequest
from kalkan.edge.h2_request import read_request_head
from kalkan.edge.request import Request

LIMITS = LimitsConfig()


def _read(headers: list[tuple[bytes, bytes]], ended: bool = True) -> Request:
    req = Request()
    read_request_head(req, headers, ended, LIMITS)
    return req


def _get(path: bytes = b"/news?x=1", authority: bytes = b"News.Test:443") -> list[
        tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority),
            (b":path", path)]


def test_pseudo_fields_become_method_host_and_target() -> None:
    req = _read([*_get(), (b"user-agent", b"reader/1")])
    assert (req.method, req.host, req.target) == ("GET", "news.test", b"/news?x=1")
    assert req.headers == [(b"user-agent", b"reader/1")]  # pseudo-fields are not fields
    assert req.content_length is None and not req.chunked


def test_a_port_other_than_443_stays_in_the_site() -> None:
    assert _read(_get(authority=b"news.test:8443")).host == "news.test:8443"


def test_split_cookies_are_joined_into_one_field() -> None:
    req = _read([*_get(), (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert req.cookie == b"a=1; b=2"
    assert req.headers == [(b"cookie", b"a=1; b=2")]


def test_a_body_without_length_is_chunked_and_a_bodyless_stream_has_none() -> None:
    post = [(b":method", b"POST"), *_get()[1:]]
    assert _read(post, ended=False).chunked
    req = _read([*post, (b"content-length", b"5")], ended=False)
    assert req.content_length == 5 and not req.chunked


@pytest.mark.parametrize(("headers", "status", "detail"), [
    ([(b":method", b"GET"), (b":path", b"/")], 400, "needs :authority or Host"),
    ([*_get(), (b"host", b"other.test")], 400, "Host and :authority name different sites"),
    ([*_get(), *[(b"x-n", b"v")] * LIMITS.max_headers], 431, "too many header fields"),
    ([*_get(authority=b"news.test/evil")], 400, "Invalid Host header"),
])
def test_refusals_name_the_problem(headers: list[tuple[bytes, bytes]], status: int,
                                   detail: str) -> None:
    with pytest.raises(BadRequest) as caught:
        _read(headers)
    assert caught.value.status == status
    assert detail in caught.value.detail
