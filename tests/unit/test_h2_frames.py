"""`FrameGuard` (sans-IO): frame headers counted across reads split anywhere, budgets per
second, header blocks bounded while they arrive."""

from __future__ import annotations

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from kalkan.edge.h2_frames import (
    IDLE_FRAMES_PER_SECOND,
    MAX_BLOCK_FRAMES,
    PINGS_PER_SECOND,
    RESETS_PER_SECOND,
    SETTINGS_PER_SECOND,
    FrameGuard,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def feed(guard: FrameGuard, data: bytes, now: float = 0.0, step: int = 0) -> str | None:
    """All of `data`, in reads of `step` bytes (0: one read); the first reason given."""
    pieces = [data] if not step else [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        reason = guard.scan(piece, now)
        if reason is not None:
            return reason
    return None


def test_a_normal_connection_passes_whatever_the_read_boundaries() -> None:
    frames = [SettingsFrame(0, settings={4: 65535}), WindowUpdateFrame(0, window_increment=10),
              HeadersFrame(1, b"x" * 300, flags=["END_HEADERS"]), DataFrame(1, b"y" * 5000),
              DataFrame(1, b"", flags=["END_STREAM"]), PingFrame(0, b"12345678"),
              SettingsFrame(0, flags=["ACK"]), RstStreamFrame(3, error_code=8)]
    data = PREFACE + b"".join(f.serialize() for f in frames)
    for step in (0, 1, 7, 9, 100):
        assert feed(FrameGuard(65536), data, step=step) is None


def test_budgets_per_second() -> None:
    cases = [(RstStreamFrame(1, error_code=8), RESETS_PER_SECOND, "rapid reset"),
             (SettingsFrame(0), SETTINGS_PER_SECOND, "SETTINGS flood"),
             (PingFrame(0, b"12345678"), PINGS_PER_SECOND, "PING flood"),
             (PriorityFrame(1, depends_on=0, stream_weight=1), IDLE_FRAMES_PER_SECOND,
              "frame flood"),
             (DataFrame(1, b""), IDLE_FRAMES_PER_SECOND, "frame flood")]
    for frame, budget, reason in cases:
        guard = FrameGuard(65536)
        assert feed(guard, PREFACE + frame.serialize() * budget, now=10.0) is None
        # A second later the budget is whole again...
        assert feed(guard, frame.serialize() * budget, now=11.0) is None
        # ... and one more within that second is too many.
        assert reason in (feed(guard, frame.serialize(), now=11.5) or "")
    # ACKs are answers, not requests: never counted.
    guard = FrameGuard(65536)
    acks = SettingsFrame(0, flags=["ACK"]).serialize() + PingFrame(0, b"1" * 8,
                                                                  flags=["ACK"]).serialize()
    assert feed(guard, PREFACE + acks * 1000) is None


def test_header_blocks_are_bounded_across_continuation_frames() -> None:
    guard = FrameGuard(4096)
    start = PREFACE + HeadersFrame(1, b"x" * 1000).serialize()
    assert feed(guard, start) is None
    assert feed(guard, ContinuationFrame(1, b"x" * 3000).serialize()) is None
    assert "too large" in (feed(guard, ContinuationFrame(1, b"x" * 200).serialize()) or "")
    guard = FrameGuard(1 << 20)
    many = ContinuationFrame(1, b"").serialize() * MAX_BLOCK_FRAMES
    assert "CONTINUATION" in (feed(guard, start + many) or "")
    # A block that ends resets the count: many small complete blocks are fine.
    guard = FrameGuard(4096)
    block = HeadersFrame(1, b"x" * 100).serialize() + \
        ContinuationFrame(1, b"x" * 100, flags=["END_HEADERS"]).serialize()
    assert feed(guard, PREFACE + block * 200, step=13) is None
