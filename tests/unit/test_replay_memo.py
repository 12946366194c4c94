"""The replay memo's bounds and sampling, without sockets: the oldest entries make room for new
ones and nothing is let go of all at once (that was a stall once a second); while sampling only
hashes are kept, and bytes seen twice turn remembering back on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kalkan.config import load_config_text
from kalkan.edge.pipeline import Pipeline
from kalkan.edge.replay import GLIMPSES, REPLAY_BYTES, REPLAY_MEMO, SAMPLE, ReplayMemo
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


def test_sampling_keeps_hashes_only_and_drains_the_memo_one_per_hit(memo: ReplayMemo) -> None:
    remember(memo, 0, 600)
    assert len(memo.memo) == 600
    memo.sample = SAMPLE  # as after a second of readers (tick): one hit in SAMPLE glimpsed
    remember(memo, 600, 100)
    assert len(memo.memo) == 500  # one let go of per hit, none remembered
    remember(memo, 700, 600)
    assert not memo.memo and not memo.order and memo.bytes == 0
    assert len(memo.glimpses) == 1300 // SAMPLE - 600 // SAMPLE  # the hits glimpsed
    remember(memo, 2000, SAMPLE * (GLIMPSES + 50))
    assert len(memo.glimpses) == GLIMPSES  # bounded, the newest kept
    memo.tick()
    assert memo.sample == SAMPLE and not memo.memo


def test_bytes_glimpsed_twice_turn_remembering_back_on(memo: ReplayMemo) -> None:
    memo.sample = SAMPLE
    flood = reader(7)
    hits = 0
    while memo.sample != 1:
        memo.remember(*flood)
        hits += 1
        assert hits <= 2 * SAMPLE  # caught by its second glimpse
    assert list(memo.memo) == [flood[0]]  # ... and that hit remembered at once
    memo.remember(*reader(8))
    assert len(memo.memo) == 2  # every hit from then on


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


def test_forget_empties_memo_order_count_and_glimpses(memo: ReplayMemo) -> None:
    remember(memo, 0, 5)
    memo.sample = SAMPLE
    remember(memo, 5, 2 * SAMPLE)
    memo.forget()
    assert not memo.memo and not memo.order and memo.bytes == 0 and not memo.glimpses
