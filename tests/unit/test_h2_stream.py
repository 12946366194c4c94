"""Http2Stream reads the HTTP/1.1 bytes the pipeline writes back into HTTP/2 fields and body
bytes, without a socket: the output here frames nothing, it keeps what the stream hands it."""

from __future__ import annotations

import pytest

from kalkan.edge.endpoint import ConnectionGone
from kalkan.edge.flow import FlowControl
from kalkan.edge.h2_stream import Http2Stream
from kalkan.edge.request import Request


class Kept:
    """A StreamOutput that takes every pending body byte at once."""

    def __init__(self) -> None:
        self.flow = FlowControl()
        self.fields: list[tuple[bytes, bytes]] | None = None
        self.body = b""

    def send_headers(self, stream: Http2Stream, fields: list[tuple[bytes, bytes]]) -> None:
        self.fields = fields
        stream.started = True

    def pump(self, stream: Http2Stream) -> None:
        while stream.pending:
            view = stream.pending.popleft()
            stream.pending_bytes -= len(view)
            self.body += bytes(view)


def _stream(method: str = "GET") -> tuple[Http2Stream, Kept]:
    req = Request()
    req.method = method
    out = Kept()
    return Http2Stream(out, 1, req, 0.0), out


def test_a_head_split_across_writes_becomes_status_and_fields_without_hop_by_hop() -> None:
    stream, out = _stream()
    stream.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConn")
    assert out.fields is None  # not a whole head yet
    stream.write(b"ection: keep-alive\r\nContent-Length: 5\r\n\r\nhel")
    stream.write(b"lo and what follows the length is not body")
    assert out.fields == [(b":status", b"200"), (b"content-type", b"text/html"),
                          (b"content-length", b"5")]
    assert out.body == b"hello"


def test_chunking_is_undone_whatever_the_write_boundaries() -> None:
    wire = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1a\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n")
    for step in (1, 3, 7, len(wire)):
        stream, out = _stream()
        for at in range(0, len(wire), step):
            stream.write(wire[at:at + step])
        assert out.fields == [(b":status", b"200")]
        assert out.body == b"hello" + b"x" * 26


@pytest.mark.parametrize(("method", "status"), [("HEAD", b"200"), ("GET", b"304"),
                                                 ("GET", b"204")])
def test_no_body_follows_a_head_for_head_204_and_304(method: str, status: bytes) -> None:
    stream, out = _stream(method)
    stream.send_all((b"HTTP/1.1 " + status + b" X\r\nContent-Length: 4\r\n\r\n", b"body"))
    assert stream.mode_none() and stream.finishing
    assert out.body == b""


def test_a_closed_stream_refuses_writes() -> None:
    stream, _ = _stream()
    stream.closed = True
    with pytest.raises(ConnectionGone):
        stream.write(b"HTTP/1.1 200 OK\r\n\r\n")
