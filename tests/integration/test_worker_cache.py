"""The workers' shared cache directory (docs/workers.md, edge/shared_dir.py): real `kalkan serve
--workers 2` processes in front of the WordPress stand-in, which counts what reaches it and
numbers every page it renders. Which worker answered is read from worker 0's /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_wordpress_defaults import wordpress_fixture  # noqa: F401 (the fixture)
from test_workers import Supervised, per_worker, supervised

from kalkan.edge.cache_key import cache_key
from kalkan.edge.store import Entry, file_name
from support import Response, fetch
from wordpress_origin import POSTS, WordPressOrigin


@pytest.fixture(name="started")
def started_fixture() -> Iterator[list[Supervised]]:
    """test_workers' `supervised` (every serve started is killed at the end, workers first)."""
    yield from supervised.__wrapped__()  # type: ignore[attr-defined]


def cache_file(tmp: Path, path: str) -> Path:
    """Where a worker mirrors the page at `path` (no Vary)."""
    name = file_name(cache_key("GET", "news.example", path, scheme="http"), ())
    return tmp / "cache" / name[:2] / name


async def until(check: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.02)
    assert check(), "not within the time allowed"  # type: ignore[operator]


async def many(port: int, path: str, n: int = 30) -> list[Response]:
    """`n` requests, each on a new connection: the kernel spreads them over both workers."""
    return [await fetch(port, path) for _ in range(n)]


async def two_workers(tmp: Path, origin: WordPressOrigin, started: list[Supervised],
                      cache: str = "") -> Supervised:
    s = Supervised(tmp, origin.url, extra="defense: {enabled: false}\n", cache=cache)
    started.append(s)
    await s.serving()
    assert len(await s.pids()) == 2
    return s


async def both_served(s: Supervised) -> dict[str, float]:
    await asyncio.sleep(1.3)  # worker 1 writes its metrics every second
    served = per_worker(await s.metrics(), "kalkan_requests_total")
    assert set(served) == {"0", "1"} and all(v > 0 for v in served.values()), served
    return served


async def test_a_page_one_worker_fetched_is_served_by_the_other_without_the_origin(
        wordpress: WordPressOrigin, tmp_path: Path, started: list[Supervised]) -> None:
    s = await two_workers(tmp_path, wordpress, started)
    first = await fetch(s.port, POSTS[1])
    assert first.status == 200 and first.header("X-Cache") == "MISS"
    stored = cache_file(tmp_path, POSTS[1])
    await until(stored.exists)
    await asyncio.sleep(0.1)   # the sibling's index hears of the file
    replies = await many(s.port, POSTS[1])
    assert {(r.status, r.header("X-Cache"), r.body) for r in replies} == \
        {(200, "HIT", first.body)}
    await both_served(s)       # both workers answered it ...
    assert wordpress.hits[POSTS[1]] == 1   # ... and the origin made it once
    adopted = [v for k, v in (await s.metrics()).items()
               if k.startswith("kalkan_cache_shared_reads_total") and 'outcome="adopted"' in k]
    assert sum(adopted) == 1, adopted      # the other worker read the file once
    assert s.stop() == 0


async def test_without_share_directory_each_worker_fetches_its_own_copy(
        wordpress: WordPressOrigin, tmp_path: Path, started: list[Supervised]) -> None:
    s = await two_workers(tmp_path, wordpress, started, cache=", share_directory: false")
    await fetch(s.port, POSTS[1])
    await until(cache_file(tmp_path, POSTS[1]).exists)
    await asyncio.sleep(0.1)
    assert {r.status for r in await many(s.port, POSTS[1])} == {200}
    await both_served(s)
    assert wordpress.hits[POSTS[1]] == 2   # one per worker: the arrangement measured against
    assert s.stop() == 0


async def test_a_damaged_file_in_the_directory_is_a_miss_never_an_error(
        wordpress: WordPressOrigin, tmp_path: Path, started: list[Supervised]) -> None:
    s = await two_workers(tmp_path, wordpress, started)
    good = await fetch(s.port, POSTS[1])
    source = cache_file(tmp_path, POSTS[1])
    await until(source.exists)
    # Under the name of a page no worker holds: half of a valid file (a torn copy), renamed
    # into place as a worker would (its temp name says another process wrote it).
    target = cache_file(tmp_path, POSTS[2])
    target.parent.mkdir(exist_ok=True)
    data = source.read_bytes()
    tmp = target.with_name(target.name + ".1.tmp")
    tmp.write_bytes(data[:len(data) // 2])
    os.replace(tmp, target)
    await asyncio.sleep(0.1)
    replies = await many(s.port, POSTS[2], 20)
    assert {r.status for r in replies} == {200}
    assert all(b"<title>Post 2</title>" in r.body and r.body != good.body for r in replies)
    assert 1 <= wordpress.hits[POSTS[2]] <= 2   # fetched from the origin, not from the file
    await both_served(s)
    # The torn file is gone: the one there now is a good copy of the page.
    await until(lambda: target.exists() and _valid(target))
    assert "dropped untrustworthy file" in s.said()
    assert s.stop() == 0


def _valid(path: Path) -> bool:
    try:
        Entry.from_bytes(path.read_bytes(), path.name)
    except (OSError, ValueError):
        return False
    return True


async def test_a_purged_page_never_comes_back_from_the_directory(
        wordpress: WordPressOrigin, tmp_path: Path, started: list[Supervised]) -> None:
    s = await two_workers(tmp_path, wordpress, started)
    token = (s.state / "admin.token").read_text().strip()
    first = await fetch(s.port, POSTS[1])      # one worker holds it, and its file
    assert b"<!-- render 1 -->" in first.body
    stored = cache_file(tmp_path, POSTS[1])
    await until(stored.exists)
    old = stored.read_bytes()
    reply = await fetch(s.admin, f"/purge?url=http://news.example{POSTS[1]}", "POST",
                        host="127.0.0.1", headers={"Authorization": f"Bearer {token}"})
    assert reply.status == 200 and json.loads(reply.body)["workers"] == {"1": "ok (200)"}
    # The purge reached the directory: the holder deleted the file.
    await until(lambda: not stored.exists())
    # And a copy of it that a sibling had not yet deleted (put back, as a worker writes) is
    # refused by both workers: it was fetched before the purge.
    tmp = stored.with_name(stored.name + ".1.tmp")
    tmp.write_bytes(old)
    os.replace(tmp, stored)
    await asyncio.sleep(0.1)
    replies = await many(s.port, POSTS[1])
    assert {r.status for r in replies} == {200}
    assert not [r for r in replies if b"<!-- render 1 -->" in r.body]
    assert 2 <= wordpress.hits[POSTS[1]] <= 3   # fetched again once (twice if both raced)
    await both_served(s)
    assert s.stop() == 0
