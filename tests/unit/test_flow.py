"""The flow-control helper and the chunk queue shared by client and origin connections."""

from __future__ import annotations

import asyncio

import pytest

from kalkan.edge.chunks import ChunkQueue
from kalkan.edge.flow import FlowControl


class Reading:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_reading_resumes_only_when_every_reason_is_gone() -> None:
    flow = FlowControl()
    transport = flow.transport = Reading()
    flow.pause_reading("body")
    flow.pause_reading("pipeline")
    flow.pause_reading("body")
    flow.resume_reading("body")
    assert transport.calls == ["pause"] and flow.read_paused
    flow.resume_reading("pipeline")
    assert transport.calls == ["pause", "resume"] and not flow.read_paused


def test_a_closed_flow_never_touches_the_transport_again() -> None:
    flow = FlowControl()
    transport = flow.transport = Reading()
    flow.closed()
    flow.pause_reading("write")
    flow.read_again()
    assert transport.calls == []


async def test_drain_waits_for_resume_writing_or_close() -> None:
    flow = FlowControl()
    flow.transport = Reading()
    await flow.drain()  # not paused: returns at once
    flow.pause_writing()
    waiting = asyncio.ensure_future(flow.drain())
    await asyncio.sleep(0)
    assert not waiting.done()
    flow.resume_writing()
    await waiting
    flow.pause_writing()
    waiting = asyncio.ensure_future(flow.drain())
    await asyncio.sleep(0)
    flow.closed()
    await waiting


async def test_chunk_queue_pauses_above_high_water_and_resumes_at_low_water() -> None:
    calls: list[str] = []
    q = ChunkQueue(lambda: calls.append("pause"), lambda: calls.append("resume"), 10, 4)
    for _ in range(4):
        q.push(b"xxx")  # 12 bytes: above 10 once
    assert calls == ["pause"] and q.received == 12
    assert await q.read() == b"xxx"
    assert await q.read() == b"xxx"
    assert calls == ["pause"]  # 6 bytes left, above low water
    assert await q.read() == b"xxx"
    assert calls == ["pause", "resume"]
    q.unread([b"ab", b"cd"])
    q.finish()
    assert [await q.read() for _ in range(4)] == [b"ab", b"cd", b"xxx", b""]
    assert q.done


async def test_chunk_queue_reader_waits_then_sees_chunks_before_the_error() -> None:
    q = ChunkQueue(lambda: None, lambda: None, 100, 50)
    reader = asyncio.ensure_future(q.read())
    await asyncio.sleep(0)
    assert not reader.done()
    q.push(b"late")
    assert await reader == b"late"
    q.push(b"last")
    q.fail(ConnectionResetError())
    assert q.ended and not q.done
    assert await q.read() == b"last"
    with pytest.raises(ConnectionResetError):
        await q.read()
