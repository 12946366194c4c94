"""The cache mirror's file format: round trip, and every reason a file is not trusted."""

from __future__ import annotations

import pytest

from kalkan.edge.store import Entry


def entry(headers: list[tuple[bytes, bytes]] | None = None, key: str = "GET|news|/a") -> Entry:
    hs = headers if headers is not None else [(b"Content-Type", b"text/html"),
                                              (b"Content-Length", b"5")]
    return Entry(key, 200, hs, b"hello", response_time=100.0, initial_age=0.0, lifetime=60.0)


def test_round_trip_keeps_everything_and_checks_the_name() -> None:
    e = entry()
    back = Entry.from_bytes(e.to_bytes(), e.file)
    assert (back.key, back.status, back.headers, back.body) == (e.key, 200, e.headers, b"hello")
    with pytest.raises(ValueError, match="file name"):
        Entry.from_bytes(e.to_bytes(), entry(key="GET|news|/b").file)


@pytest.mark.parametrize("field", [
    (b"X-A", b"v\r\nSet-Cookie: x=1"), (b"X-A", b"v\nx"), (b"X-A", b"v\x00"), (b"X-A", b"\x1b"),
    (b"Bad Name", b"v"), (b"X:A", b"v"), (b"", b"v"), (b"Transfer-Encoding", b"chunked"),
])
def test_unsafe_stored_headers_reject_the_file(field: tuple[bytes, bytes]) -> None:
    if any(c in field[0] + field[1] for c in (b"\r", b"\n", b"\0")):
        # Fields that would split the stored head are refused before any entry exists.
        with pytest.raises(ValueError):
            entry([(b"Content-Type", b"text/html"), field])
        return
    e = entry([(b"Content-Type", b"text/html"), field])
    with pytest.raises(ValueError):
        Entry.from_bytes(e.to_bytes(), e.file)


def test_content_length_is_recomputed_from_the_body() -> None:
    e = entry([(b"Content-Length", b"999"), (b"X-A", b"b\tc"), (b"content-length", b"1")])
    back = Entry.from_bytes(e.to_bytes())
    assert back.headers == [(b"Content-Length", b"5"), (b"X-A", b"b\tc")]
    assert Entry.from_bytes(entry([]).to_bytes()).headers == [(b"Content-Length", b"5")]


def test_truncated_corrupted_and_old_files_are_refused() -> None:
    data = entry().to_bytes()
    for bad in (data[:-1], data[:20], data[:-1] + b"X", b"KLKN1\n" + data[6:], b""):
        with pytest.raises(ValueError):
            Entry.from_bytes(bad)

