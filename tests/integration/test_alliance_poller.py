"""The poller against a real HTTP server on loopback: an ally's signed feed becomes decisions,
an unchanged one costs a 304, a tampered or replayed one is refused and logged and changes
nothing, and an ally gone quiet loses its decisions when its last feed expires."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kalkan.alliance.feed import Entry, b64, raw_public, unb64
from kalkan.alliance.identity import Identity, Publisher
from kalkan.alliance.poller import AllyConfig, Poller, load_allies, save_allies
from kalkan.defense.decisions import Decisions
from support import LoopbackServer


class FeedServer(LoopbackServer):
    """Serves one body at /feed.json with its ETag, answering If-None-Match with 304."""

    def __init__(self) -> None:
        self.body, self.etag, self.requests, self.not_modified = b"", "", 0, 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        self.requests += 1
        if self.etag and f"if-none-match: {self.etag.lower()}" in head:
            self.not_modified += 1
            writer.write(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: "
                         + self.etag.encode() + b"\r\nContent-Length: "
                         + str(len(self.body)).encode() + b"\r\nConnection: close\r\n\r\n"
                         + self.body)
        await writer.drain()
        writer.close()


@pytest.fixture
async def ally_a(tmp_path: Path) -> tuple[FeedServer, Publisher]:
    server = FeedServer()
    await server.start()
    publisher = Publisher(Identity.create(tmp_path / "a" / "identity.json", "newsroom-a"))
    yield server, publisher
    await server.stop()


def serve(server: FeedServer, publisher: Publisher, entries: list[Entry]) -> None:
    server.body, server.etag = publisher.current(entries)


async def test_a_feed_becomes_decisions_and_a_tampered_one_changes_nothing(
        ally_a: tuple[FeedServer, Publisher], caplog: pytest.LogCaptureFixture) -> None:
    server, publisher = ally_a
    now = time.time()
    serve(server, publisher, [Entry("203.0.113.0/24", "block", "search flood", now, 3,
                                    now + 3600)])
    decisions = Decisions()
    ally = AllyConfig("newsroom-a", f"{server.url}/feed.json", publisher.identity.public_text,
                      "block")
    poller = Poller([ally], decisions)
    await poller.poll_all()
    assert decisions.lookup("203.0.113.9", "203.0.113.0/24", now).origin == "ally"
    await poller.poll_all()                       # unchanged: a 304, nothing redone
    assert server.not_modified == 1
    # Someone between the ally and us changes the feed: refused, logged, nothing changes.
    doc = json.loads(server.body)
    inner = json.loads(unb64(doc["document"]))
    inner["entries"][0]["target"] = "192.0.2.0/24"
    doc["document"] = b64(json.dumps(inner).encode())
    server.body, server.etag = json.dumps(doc).encode(), '"tampered"'
    with caplog.at_level(logging.ERROR, "kalkan.alliance"):
        await poller.poll_all()
    assert "bad signature" in caplog.text
    assert decisions.lookup("192.0.2.1", "192.0.2.0/24", now) is None
    assert decisions.lookup("203.0.113.9", "203.0.113.0/24", now) is not None


async def test_a_replayed_feed_is_refused(ally_a: tuple[FeedServer, Publisher]) -> None:
    server, publisher = ally_a
    now = time.time()
    serve(server, publisher, [Entry("203.0.113.0/24", "block", "x", now, 1, now + 3600)])
    old = server.body
    decisions = Decisions()
    poller = Poller([AllyConfig("newsroom-a", f"{server.url}/f", publisher.identity.public_text,
                                "block")], decisions)
    await poller.poll_all()
    serve(server, publisher, [])                  # the ally lifted its block
    await poller.poll_all()
    assert len(decisions) == 0
    server.body, server.etag = old, '"old"'       # the old document, replayed
    await poller.poll_all()
    assert len(decisions) == 0 and poller.allies[0].refused == 1


async def test_an_unknown_signer_is_refused_and_the_allies_file_is_checked(
        ally_a: tuple[FeedServer, Publisher], tmp_path: Path) -> None:
    server, publisher = ally_a
    serve(server, publisher, [Entry("203.0.113.0/24", "block", "x", time.time(), 1,
                                    time.time() + 60)])
    stranger = b64(raw_public(Ed25519PrivateKey.generate().public_key()))
    decisions = Decisions()
    poller = Poller([AllyConfig("newsroom-a", f"{server.url}/f", stranger, "block")], decisions)
    await poller.poll_all()
    assert len(decisions) == 0 and "unknown key" in poller.allies[0].last_problem
    path = tmp_path / "allies.json"
    save_allies(path, [AllyConfig("newsroom-b", "https://b.example/.well-known/kalkan/feed",
                                  stranger, "observe")])
    assert load_allies(path)[0].trust == "observe"
    path.write_text(json.dumps([{"name": "B!", "url": "ftp://x", "key": stranger,
                                 "trust": "observe"}]))
    with pytest.raises(ValueError, match="ally name 'B!'"):
        load_allies(path)


async def test_an_unreachable_ally_keeps_its_entries_until_its_feed_expires(
        ally_a: tuple[FeedServer, Publisher]) -> None:
    server, publisher = ally_a
    publisher.lifetime = 1.0                      # a feed that lives one second
    now = time.time()
    serve(server, publisher, [Entry("203.0.113.0/24", "block", "x", now, 1, now + 3600)])
    decisions = Decisions()
    poller = Poller([AllyConfig("newsroom-a", f"{server.url}/f", publisher.identity.public_text,
                                "block")], decisions)
    await poller.poll_all()
    await server.stop()
    await poller.poll_all()                       # unreachable: its feed still stands
    assert len(decisions) == 1
    assert decisions.lookup("203.0.113.9", "203.0.113.0/24", time.time()) is not None
    await asyncio.sleep(1.1)
    await poller.poll_all()
    assert decisions.lookup("203.0.113.9", "203.0.113.0/24", time.time()) is None
    await server.start()                          # (the fixture stops it)
