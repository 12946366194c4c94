"""Damaged, untrusted and unwritable state against real edges: each case must start, say what is
wrong in one log line naming the file, and lose nothing else.

Covers decisions.json and keys.json damage (moved aside), cache-file damage and tampering (dropped
while the sound entries load), leftover temp files (removed at start), a read-only state dir and a
full disk (a small tmpfs: the admin API answers 500 rather than a 200 for a lost decision).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from kalkan.defense.challenge import KeyRing
from kalkan.defense.decisions import Decisions
from kalkan.edge.app import Edge
from support import Client, EdgeFactory, Origin, Response, fetch, port_of, start_origin

UA = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) reader"}
DEFENSE = {"enabled": True}
RESPOND_ALL = {"query": {"paths": {"/_demo/*": ["*"]}}}
NOW_DECISION = {"version": 1, "decisions": [
    {"target": "127.0.9.9", "action": "block", "reason": "kept", "origin": "manual",
     "created": 1.0, "expires": None}]}


# -- helpers --------------------------------------------------------------------------------------
async def get(port: int, target: str = "/", source: str = "127.0.0.1") -> Response:
    client = await Client.connect(port, local_addr=(source, 0))
    try:
        return await client.request("GET", target, UA)
    finally:
        await client.close()


async def admin(edge: Edge, method: str, path: str, body: object | None = None) -> Response:
    assert edge.admin_address is not None
    client = await Client.connect(edge.admin_address[1])
    data = json.dumps(body).encode() if body is not None else b""
    try:
        return await client.request(method, path, {
            "Authorization": f"Bearer {edge.admin_token}",
            "Content-Type": "application/json"}, data)
    finally:
        await client.close()


def respond(tag: str, body: str) -> str:
    return "/_demo/respond?" + urlencode({"h_x-test": tag, "cc": "public, max-age=600",
                                          "body": body})


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every warning or error the edge logged, as one-line strings."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def one_line_naming(caplog: pytest.LogCaptureFixture, name: str) -> str:
    lines = problems(caplog)
    assert len(lines) == 1, lines
    assert name in lines[0] and "\n" not in lines[0], lines[0]
    return lines[0]


def write_state(state: Path, decisions: object | None = NOW_DECISION) -> str:
    """A sound decisions.json and keys.json; returns the signing key id."""
    state.mkdir(parents=True, exist_ok=True)
    if decisions is not None:
        (state / "decisions.json").write_text(json.dumps(decisions))
    return KeyRing.load_or_create(state / "keys.json").current.id


# -- a small tmpfs, for the full and read-only disks ---------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs at tmp_path/state (requested before make_edge: unmounted after it)."""
    where = tmp_path / "state"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    with pytest.raises(OSError):
        (where / "probe").write_text("x")


def fill(where: Path) -> Path:
    """Fill the file system at `where` to the last byte."""
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


# -- decisions.json and keys.json ----------------------------------------------------------------
async def test_decisions_with_wrong_types_start_and_keep_the_keys(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    key_id = write_state(state, decisions={"decisions": [
        NOW_DECISION["decisions"][0], {"target": 7, "action": "block"},
        {"target": "127.0.8.8", "action": "block", "expires": "tomorrow"}]})
    keys_before = (state / "keys.json").read_bytes()
    caplog.set_level(logging.INFO)
    edge = await make_edge(origin.url, defense=DEFENSE)
    line = one_line_naming(caplog, "decisions.json")
    assert "2 bad of 3 entries" in line and "moved aside" in line
    assert len(list(state.glob("decisions.json.damaged-*"))) == 1
    assert (await get(port_of(edge))).status == 200                    # serving
    assert (await get(port_of(edge), source="127.0.9.9")).status == 403  # the sound one holds
    assert (state / "keys.json").read_bytes() == keys_before            # keys untouched
    assert edge.pipeline.defense is not None
    assert edge.pipeline.defense.keys.current.id == key_id


@pytest.mark.parametrize("damage", ["not json", "wrong types", "a directory"])
async def test_damaged_keys_start_with_fresh_keys_and_keep_the_decisions(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path, damage: str,
        caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    old_id = write_state(state)
    keys = state / "keys.json"
    keys.unlink()
    if damage == "a directory":
        keys.mkdir()
    else:
        keys.write_text("{oops" if damage == "not json" else
                        '{"format": "kalkan-keys/1", "keys": [{"id": 1, "secret": [], '
                        '"created": "x"}]}')
        keys.chmod(0o600)
    caplog.set_level(logging.INFO)
    edge = await make_edge(origin.url, defense=DEFENSE)
    line = one_line_naming(caplog, "keys.json")
    assert "moved aside" in line
    assert len(list(state.glob("keys.json.damaged-*"))) == 1
    assert edge.pipeline.defense is not None
    assert edge.pipeline.defense.keys.current.id != old_id
    assert json.loads(keys.read_text())["keys"][0]["id"] == edge.pipeline.defense.keys.current.id
    assert (await get(port_of(edge))).status == 200
    assert (await get(port_of(edge), source="127.0.9.9")).status == 403  # decisions not lost


async def test_a_directory_in_place_of_decisions_json(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    key_id = write_state(state, decisions=None)
    (state / "decisions.json").mkdir()
    caplog.set_level(logging.INFO)
    edge = await make_edge(origin.url, defense=DEFENSE)
    assert "cannot be read" in one_line_naming(caplog, "decisions.json")
    assert edge.pipeline.defense is not None and edge.pipeline.defense.keys.current.id == key_id
    added = await admin(edge, "POST", "/decisions", {"target": "127.0.7.7", "action": "block"})
    assert added.status == 200                                            # saving works again
    saved = json.loads((state / "decisions.json").read_text())["decisions"]
    assert [d["target"] for d in saved] == ["127.0.7.7"]


async def test_leftover_temp_files_are_removed_at_start(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # What a SIGKILL in the middle of each kind of write leaves behind.
    state, cache = tmp_path / "state", tmp_path / "cache"
    key_id = write_state(state)
    (state / ".decisions-k3jd9s0a").write_text('{"version": 1, "decisions": [')
    (state / ".keys.json.q8w7e6r5").write_text('{"format": "kalk')
    (cache / "ab").mkdir(parents=True)
    (cache / "ab" / ("ab" + "0" * 62 + ".tmp")).write_bytes(b"KLKN2\n half")
    caplog.set_level(logging.INFO)
    edge = await make_edge(origin.url, defense=DEFENSE)
    assert problems(caplog) == []
    assert sorted(p.name for p in state.iterdir()) == [
        "admin.token", "decisions.json", "keys.json", "keys.json.lock"]
    assert list((cache / "ab").iterdir()) == []
    assert edge.pipeline.defense is not None and edge.pipeline.defense.keys.current.id == key_id
    assert (await get(port_of(edge), source="127.0.9.9")).status == 403


# -- the cache mirror ----------------------------------------------------------------------------
def split(path: Path) -> tuple[dict[str, object], bytes]:
    data = path.read_bytes()
    assert data.startswith(b"KLKN2\n")
    (n,) = struct.unpack("!I", data[38:42])
    return json.loads(data[42:42 + n]), data[42 + n:]


def rewrite(path: Path, meta: dict[str, object], body: bytes) -> None:
    """A cache file with a valid checksum: what a bug or a hand on the disk could leave."""
    raw = json.dumps(meta).encode()
    rest = struct.pack("!I", len(raw)) + raw + body
    path.write_bytes(b"KLKN2\n" + hashlib.blake2b(rest, digest_size=32).digest() + rest)


async def test_tampered_cache_files_are_dropped_and_the_sound_ones_load(
        make_edge: EdgeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site = await start_origin()
    edge = await make_edge(site.url, cache=RESPOND_ALL)
    names = ["good1", "good2", "crlf", "short", "wrongkey", "checksum", "dir", "garbage", "old"]
    urls = {n: respond(n, f"body of {n}") for n in names}
    for url in urls.values():
        assert (await fetch(port_of(edge), url)).header("X-Cache") == "MISS"
    files = {e.body.decode().removeprefix("body of "): e.file
             for variants in edge.pipeline.store.entries.values() for e in variants}
    await edge.stop()
    cache = tmp_path / "cache"
    path = {n: cache / f[:2] / f for n, f in files.items()}

    meta, body = split(path["crlf"])
    meta["headers"].append(["X-Note", "ok\r\nSet-Cookie: stolen=1"])  # type: ignore[attr-defined]
    rewrite(path["crlf"], meta, body)
    meta, body = split(path["short"])
    rewrite(path["short"], meta, body[:-3])          # a body shorter than its framing
    meta, body = split(path["wrongkey"])
    meta["key"] = split(path["good2"])[0]["key"]     # claims to be another URL's response
    rewrite(path["wrongkey"], meta, b"poison")
    data = bytearray(path["checksum"].read_bytes())
    data[-1] ^= 1                                     # one flipped bit
    path["checksum"].write_bytes(bytes(data))
    path["dir"].unlink()
    path["dir"].mkdir()                               # a directory where a file should be
    (path["dir"] / "x").write_text("x")
    path["garbage"].write_bytes(os.urandom(300))
    path["old"].write_bytes(b"KLKN1\n" + path["old"].read_bytes()[6:])  # an older format
    (cache / "zz").write_text("a file where a directory belongs")

    caplog.set_level(logging.INFO)
    edge2 = await make_edge(site.url, cache=RESPOND_ALL)
    line = one_line_naming(caplog, str(cache))
    assert "dropped 8 untrustworthy file(s)" in line and "kept 2 entries" in line
    for name in ("good1", "good2"):
        resp = await fetch(port_of(edge2), urls[name])
        assert resp.header("X-Cache") == "HIT" and resp.body == f"body of {name}".encode()
    for name in names[2:]:
        resp = await fetch(port_of(edge2), urls[name])
        assert resp.header("X-Cache") == "MISS" and resp.body == f"body of {name}".encode()
        assert resp.header("Set-Cookie") is None
    edge2.pipeline.store.flush()
    assert path["dir"].is_file() and not (cache / "zz").exists()  # the MISS stored it again
    await site.site.stop()


async def test_the_hit_framing_comes_from_the_body_not_the_file(
        make_edge: EdgeFactory, tmp_path: Path) -> None:
    site = await start_origin()
    edge = await make_edge(site.url, cache=RESPOND_ALL)
    url = respond("framing", "twelve bytes")
    await fetch(port_of(edge), url)
    [entry] = [e for v in edge.pipeline.store.entries.values() for e in v]
    await edge.stop()
    path = tmp_path / "cache" / entry.file[:2] / entry.file
    meta, body = split(path)
    meta["headers"] = [[k, "999" if k.lower() == "content-length" else v]  # type: ignore
                       for k, v in meta["headers"]] + [["Content-Length", "1"]]  # type: ignore
    rewrite(path, meta, body)
    edge2 = await make_edge(site.url, cache=RESPOND_ALL)
    client = await Client.connect(port_of(edge2))
    try:  # two requests on one connection: a wrong length would desynchronise the second
        first = await client.request("GET", url)
        second = await client.request("GET", url)
    finally:
        await client.close()
    for resp in (first, second):
        assert resp.header("X-Cache") == "HIT" and resp.body == b"twelve bytes"
        assert resp.all("Content-Length") == ["12"]
    await site.site.stop()


# -- unwritable and full disks -------------------------------------------------------------------
async def test_read_only_state_dir_starts_and_says_once_what_is_not_saved(
        tmpfs: Path, origin: Origin, make_edge: EdgeFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    cache = tmpfs / "cache"
    first = await make_edge(origin.url, cache_dir=str(cache), cache=RESPOND_ALL,
                            defense=DEFENSE)
    kept = respond("ro-kept", "from before")
    assert (await get(port_of(first), kept)).header("X-Cache") == "MISS"
    assert (await admin(first, "POST", "/decisions",
                        {"target": "127.0.9.9", "action": "block"})).status == 200
    await first.stop()
    remount_read_only(tmpfs)

    caplog.set_level(logging.INFO)
    edge = await make_edge(origin.url, cache_dir=str(cache), cache=RESPOND_ALL,
                           defense=DEFENSE)
    # Everything is readable; only the first re-save of the loaded decisions may complain yet.
    assert all("decisions.json" in line for line in problems(caplog))
    port = port_of(edge)
    assert (await get(port, kept)).header("X-Cache") == "HIT"             # cache loaded
    assert (await get(port, source="127.0.9.9")).status == 403            # decisions loaded
    for i in range(3):
        assert (await get(port, respond(f"ro-{i}", "new"))).header("X-Cache") == "MISS"
        refused = await admin(edge, "POST", "/decisions",
                              {"target": f"127.0.4.{i}", "action": "block"})
        assert refused.status == 500
        assert "NOT saved" in json.loads(refused.body)["error"]
        assert (await get(port, source=f"127.0.4.{i}")).status == 403      # in force meanwhile
    edge.pipeline.store.flush()
    lines = problems(caplog)
    assert len(lines) == 2, lines                  # one per thing, not one per write
    assert any("decisions.json" in line and "Read-only" in line for line in lines)
    assert any(str(cache) in line and "Read-only" in line for line in lines)


async def test_fresh_read_only_state_dir_starts_in_memory(
        tmpfs: Path, origin: Origin, make_edge: EdgeFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    remount_read_only(tmpfs)
    caplog.set_level(logging.INFO)
    edge = await make_edge(origin.url, cache_dir=str(tmpfs / "cache"), defense=DEFENSE)
    lines = problems(caplog)
    assert len(lines) == 3, lines   # the admin token, the key file, the cache dir
    assert any("admin.token" in line for line in lines)
    assert any("keys.json" in line and "memory" in line for line in lines)
    assert any("cache" in line and "memory only" in line for line in lines)
    assert (await get(port_of(edge))).status == 200


async def test_disk_full_decision_is_refused_cleaned_up_and_the_edge_keeps_serving(
        tmpfs: Path, origin: Origin, make_edge: EdgeFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    edge = await make_edge(origin.url, defense=DEFENSE)
    port = port_of(edge)
    before = sorted(p.name for p in tmpfs.iterdir())
    filler = fill(tmpfs)
    caplog.set_level(logging.INFO)
    for i in range(3):
        answer = await admin(edge, "POST", "/decisions",
                             {"target": f"127.0.5.{i}", "action": "block", "reason": "full"})
        assert answer.status == 500
        error = json.loads(answer.body)["error"]
        assert "No space left on device" in error and "NOT saved" in error
        assert sorted(p.name for p in tmpfs.iterdir()) == sorted([*before, "filler"])
        assert (await get(port, source=f"127.0.5.{i}")).status == 403  # in force in memory
    assert (await admin(edge, "DELETE", "/decisions?target=127.0.5.0")).status == 500
    assert (await get(port)).status == 200                                 # still serving
    lines = [line for line in problems(caplog) if "decisions.json" in line]
    assert len(lines) == 1, lines

    filler.unlink()                                                        # space again
    assert (await admin(edge, "POST", "/decisions",
                        {"target": "127.0.5.9", "action": "block"})).status == 200
    saved = Decisions(tmpfs / "decisions.json")
    assert saved.load(time.time()) == 3       # .1, .2 (kept in memory) and .9; .0 was deleted
    assert not any(p.name.startswith(".decisions-") for p in tmpfs.iterdir())


async def test_ipv4_mapped_decision_targets_match_ipv4_readers(
        origin: Origin, make_edge: EdgeFactory) -> None:
    edge = await make_edge(origin.url, defense=DEFENSE)
    port = port_of(edge)
    one = await admin(edge, "POST", "/decisions", {"target": "::ffff:127.0.6.6", "action": "block"})
    assert json.loads(one.body)["added"] == "127.0.6.6"
    net = await admin(edge, "POST", "/decisions",
                      {"target": "::ffff:127.0.7.0/120", "action": "block"})
    assert json.loads(net.body)["added"] == "127.0.7.0/24"
    assert (await get(port, source="127.0.6.6")).status == 403
    assert (await get(port, source="127.0.7.200")).status == 403
    assert (await get(port, source="127.0.8.1")).status == 200
