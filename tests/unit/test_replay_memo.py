"""The replay memo's bounds, without sockets: the oldest entries make room for new ones, a few
per remembered request, and nothing is let go of all at once (that was a stall once a second)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kalkan.config import load_config_text
from kalkan.edge.pipeline import Pipeline
from kalkan.edge.replay import (
    EVICT_AT_ONCE,
    REPLAY_BYTES,
    REPLAY_MEMO,
    SAMPLED_MEMO,
    ReplayMemo,
)
from kalkan.edge.request import Request


@pytest.fixture
def memo(tmp_path: Path) -> Iterator[ReplayMemo]:
    config = load_config_text(f"origin:\n  url: http://127.0.0.1:9\nstate_dir: {tmp_path}\n")
    pipeline = Pipeline(config)
    yield pipeline.replays


def reader(i: int, pad: str = "") -> tuple[bytes, Request]:
    """Reader *i*'s request bytes and what they parse to (the fields `remember` reads)."""
    agent = f"reader {i}{pad}"
    data = (f"GET /story HTTP/1.1\r\nHost: news.example\r\nUser-Agent: {agent}\r\n\r\n").encode()
    req = Request()
    req.host, req.path, req.target, req.key = "news.example", "/story", b"/story", "k"
    req.client = req.peer = "127.0.0.1"
    req.user_agent = agent.encode()
    return data, req


def remember(memo: ReplayMemo, first: int, count: int, pad: str = "") -> None:
    for i in range(first, first + count):
        memo.remember(*reader(i, pad))


def test_every_hit_is_remembered_until_the_bound_then_the_oldest_go(memo: ReplayMemo) -> None:
    remember(memo, 0, REPLAY_MEMO + 10)
    assert len(memo.memo) == REPLAY_MEMO
    assert list(memo.memo) == list(memo.order)  # oldest first
    assert b"reader 10\r\n" in memo.order[0]  # readers 0-9 made room
    assert b"reader 2057\r\n" in memo.order[-1]


def test_sampling_shrinks_the_memo_a_few_entries_per_request(memo: ReplayMemo) -> None:
    remember(memo, 0, 600)
    assert len(memo.memo) == 600
    memo.sample = 2  # as after a second of readers: every other hit remembered
    remember(memo, 600, 100)
    # Over the sampling bound: each of the 50 sampled hits lets the oldest few go (and adds none).
    assert len(memo.memo) == 600 - 50 * EVICT_AT_ONCE
    remember(memo, 700, 2 * SAMPLED_MEMO + 800)
    assert len(memo.memo) == SAMPLED_MEMO
    before = memo.bytes
    memo.tick()  # the tick lets nothing go
    assert len(memo.memo) == SAMPLED_MEMO and memo.bytes == before


def test_the_byte_bound_holds_for_big_requests(memo: ReplayMemo) -> None:
    pad = " " + "x" * 3000
    remember(memo, 0, 3000, pad)
    assert len(memo.memo) < REPLAY_MEMO  # the byte bound, not the count, held
    assert REPLAY_BYTES - 8 * 1024 <= memo.bytes <= REPLAY_BYTES + 2 * 4096 + 512
    assert memo.bytes == sum(2 * len(data) + 512 for data in memo.memo)
    assert list(memo.memo) == list(memo.order)


def test_the_same_bytes_again_are_not_counted_twice(memo: ReplayMemo) -> None:
    remember(memo, 0, 3)
    before = memo.bytes
    remember(memo, 1, 1)
    assert memo.bytes == before and len(memo.order) == 3


def test_forget_empties_memo_order_and_count(memo: ReplayMemo) -> None:
    remember(memo, 0, 5)
    memo.forget()
    assert not memo.memo and not memo.order and memo.bytes == 0
