"""Large bodies through the edge in bounded memory: a 1 GiB download and a 1 GiB chunked upload,
byte-counted and checksummed, while this process's resident memory (origin, edge and client all
live in it) stays within a fixed bound."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator

import httptools

from support import DEMO_QUERIES, EdgeFactory, Origin, port_of, rss_bytes

GIB = 2**30
RSS_BOUND = 150 * 2**20
# The demo's /_demo/big sends byte i = i % 256; any slice of this starting at i % 256 is the
# expected content of a piece of up to 256 KiB.
_PATTERN = bytes(range(256)) * (1 + (256 * 1024 + 255) // 256)


@contextlib.asynccontextmanager
async def peak_rss_growth() -> AsyncIterator[list[int]]:
    """Samples VmRSS every 50 ms while the block runs; yields [peak growth in bytes]."""
    base = rss_bytes()
    result = [0]

    async def sample() -> None:
        while True:
            result[0] = max(result[0], rss_bytes() - base)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample())
    try:
        yield result
    finally:
        task.cancel()
        result[0] = max(result[0], rss_bytes() - base)


class _Download:
    """Response parser callbacks that check the body against the pattern as it streams by."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.received = 0
        self.done = False
        self.status = 0

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        start = self.received % 256
        assert body == _PATTERN[start:start + len(body)], f"wrong bytes at {self.received}"
        self.received += len(body)

    def on_message_complete(self) -> None:
        self.done = True


async def test_one_gib_download_in_bounded_memory(origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, cache=DEMO_QUERIES)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(edge))
    download = _Download()
    try:
        async with peak_rss_growth() as growth:
            writer.write(b"GET /_demo/big?bytes=%d HTTP/1.1\r\nHost: news.example\r\n\r\n" % GIB)
            while not download.done:
                data = await asyncio.wait_for(reader.read(256 * 1024), 10.0)
                assert data, "the edge closed the connection early"
                download.parser.feed_data(data)
    finally:
        writer.close()
    assert download.status == 200
    assert download.received == GIB
    assert growth[0] < RSS_BOUND, f"RSS grew by {growth[0] / 2**20:.0f} MiB"


async def test_one_gib_chunked_upload_in_bounded_memory(origin: Origin,
                                                        make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, limits={"max_body_bytes": 2 * GIB})
    block = hashlib.sha256(b"kalkan").digest() * (256 * 1024 // 32)  # 256 KiB, not periodic in 256
    frame = b"%x\r\n%s\r\n" % (len(block), block)
    expected = hashlib.sha256()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(edge))
    try:
        async with peak_rss_growth() as growth:
            writer.write(b"POST /_demo/upload HTTP/1.1\r\nHost: news.example\r\n"
                         b"Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream"
                         b"\r\n\r\n")
            for _ in range(GIB // len(block)):
                writer.write(frame)
                expected.update(block)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = await reader.readexactly(length)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body) == {"bytes": GIB, "sha256": expected.hexdigest()}
    assert growth[0] < RSS_BOUND, f"RSS grew by {growth[0] / 2**20:.0f} MiB"
