"""edge/shared_dir.py on a real directory with real inotify; a sibling worker is a real second
process writing through its own Store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from kalkan.edge.shared_dir import SharedDirectory
from kalkan.edge.store import Entry, Store, file_name

KEY = "GET http://news.example/2020/12/statement/"


def entry(key: str = KEY, body: bytes = b"<p>statement</p>", at: float | None = None) -> Entry:
    return Entry(key, 200, [(b"Content-Type", b"text/html")], body,
                 response_time=time.time() if at is None else at, initial_age=0.0,
                 lifetime=10.0, micro=True)


def sibling_writes(directory: Path, body: bytes, at: float, key: str = KEY) -> None:
    """Another process (another pid) stores `key` through its own Store, as a worker does."""
    code = textwrap.dedent(f"""
        from kalkan.edge.store import Entry, Store
        s = Store(2**20, {str(directory)!r})
        s.put(Entry({key!r}, 200, [(b"Content-Type", b"text/html")], {body!r},
                    response_time={at!r}, initial_age=0.0, lifetime=10.0, micro=True))
        s.flush(); s.close()
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def started(directory: Path) -> tuple[Store, SharedDirectory]:
    """A worker's store and index over `directory`, its subdirectories made (the steady state:
    a file first in a subdirectory made while the worker runs is read once whoever wrote it)."""
    for n in range(256):
        (directory / f"{n:02x}").mkdir(exist_ok=True)
    store = Store(2**20, str(directory))
    shared = SharedDirectory(store)
    assert shared.start(asyncio.get_running_loop())
    return store, shared


async def settle(shared: SharedDirectory, name: str, fresher: bool, timeout: float = 3.0) -> None:
    """Until inotify told the index about `name` (the event loop reads it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name in shared.present and (name in shared.fresher) == fresher:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"index never saw {name} (fresher={fresher})")


async def test_a_siblings_file_is_taken_in_and_a_never_cached_url_reads_no_disk(
        tmp_path: Path) -> None:
    store, shared = started(tmp_path)
    try:
        name = file_name(KEY, ())
        sibling_writes(tmp_path, b"<p>from the sibling</p>", time.time())
        await settle(shared, name, fresher=True)
        found = shared.find(KEY, {}, None)
        assert found is not None and found.body == b"<p>from the sibling</p>"
        assert store.get(KEY) == [found]                 # in memory now
        assert (tmp_path / name[:2] / name).exists()     # and not rewritten by this worker
        # A flood of URLs nobody stored: no file is opened (only the index is asked).
        for n in range(2000):
            assert shared.find(f"GET http://news.example/?s={n}", {}, None) is None
        assert shared.reads == {"adopted": 1, "refused": 0, "damaged": 0, "not_newer": 0}
        # A page this worker stores itself is not "fresher" for it: no read once it expires.
        own = entry("GET http://news.example/own/", at=time.time() - 20)
        store.put(own)
        store.flush()
        await settle(shared, own.file, fresher=False)
        assert shared.find(own.key, {}, own) is own
        assert shared.reads["adopted"] == 1 and shared.reads["not_newer"] == 0
    finally:
        shared.close()
        store.close()


async def test_a_stale_copy_is_replaced_by_a_siblings_newer_one_once(tmp_path: Path) -> None:
    store, shared = started(tmp_path)
    try:
        old = entry(at=time.time() - 20)   # expired here
        store.put(old)
        store.flush()
        await settle(shared, old.file, fresher=False)
        assert shared.find(KEY, {}, old) is old      # its own file: nothing to read
        sibling_writes(tmp_path, b"<p>refreshed</p>", time.time())
        await settle(shared, old.file, fresher=True)
        newer = shared.find(KEY, {}, old)
        assert newer is not None and newer.body == b"<p>refreshed</p>"
        assert shared.find(KEY, {}, newer) is newer  # fresh: the directory is not asked
        newer.fresh_until = 0.0                      # (as if expired since)
        assert shared.find(KEY, {}, newer) is newer  # and read once per sibling write
        assert shared.reads == {"adopted": 1, "refused": 0, "damaged": 0, "not_newer": 0}
    finally:
        shared.close()
        store.close()


async def test_purged_and_damaged_files_are_misses(tmp_path: Path) -> None:
    store, shared = started(tmp_path)
    try:
        name = file_name(KEY, ())
        sibling_writes(tmp_path, b"<p>before the purge</p>", time.time() - 1)
        await settle(shared, name, fresher=True)
        store.remove(KEY)          # a purge here (the fan-out reaches every worker)
        assert shared.find(KEY, {}, None) is None
        assert shared.reads["refused"] == 1
        assert shared.find(KEY, {}, None) is None   # and never read again
        assert shared.reads["refused"] == 1
        sibling_writes(tmp_path, b"<p>after the purge</p>", time.time() + 1)
        await settle(shared, name, fresher=True)
        after = shared.find(KEY, {}, None)
        assert after is not None and after.body == b"<p>after the purge</p>"
        # Everything purged: older files refused whatever their key.
        other = "GET http://news.example/other/"
        sibling_writes(tmp_path, b"<p>other</p>", time.time() - 1, key=other)
        await settle(shared, file_name(other, ()), fresher=True)
        store.clear()
        assert shared.find(other, {}, None) is None
        # A damaged file (written in place) is a miss and is deleted.
        third = "GET http://news.example/third/"
        bad = tmp_path / file_name(third, ())[:2] / file_name(third, ())
        bad.parent.mkdir(exist_ok=True)
        bad.write_bytes(b"KLKN2\n" + b"\0" * 40)
        await settle(shared, bad.name, fresher=True)
        assert shared.find(third, {}, None) is None
        assert shared.reads["damaged"] == 1 and not bad.exists()
    finally:
        shared.close()
        store.close()
