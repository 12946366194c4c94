"""`FrameGuard`: HTTP/2 frames counted as they arrive, before the h2 library parses them, so that
floods of frames that cost us work without asking for anything (rapid reset, SETTINGS, PING,
PRIORITY...) and header blocks spread over CONTINUATION frames are bounded per connection."""

from __future__ import annotations

_PREFACE_LEN = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", checked by h2 itself

# Frame types (RFC 9113 §6).
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _CONTINUATION = 0, 1, 3, 4, 6, 9
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4

# Per connection and per second. A browser resets a few streams when a reader navigates away,
# sends one SETTINGS and the odd PING; these are hundreds of times that and still far below
# what a flood needs to cost us anything (CVE-2023-44487 sends resets by the ten thousand).
RESETS_PER_SECOND = 100
SETTINGS_PER_SECOND = 20
PINGS_PER_SECOND = 20
# PRIORITY, WINDOW_UPDATE, empty DATA, unknown types: each costs a little parsing and asks for
# nothing. Generous, because a fast download is acknowledged by a WINDOW_UPDATE per ~32 KiB.
IDLE_FRAMES_PER_SECOND = 5000
# A header block spread over HEADERS + CONTINUATION frames: frames and bytes (compressed).
MAX_BLOCK_FRAMES = 32


class FrameGuard:
    """Walks the frame headers of the bytes a client sends (9 bytes each, the payload skipped)
    and says when the connection must end; a header block is bounded while it is still
    arriving, before any of it is held for decoding."""

    __slots__ = ("_skip", "_partial", "_left", "_block", "_block_frames", "_window", "_resets",
                 "_settings", "_pings", "_idle", "max_block")

    def __init__(self, max_block: int) -> None:
        self._skip = _PREFACE_LEN
        self._partial = b""  # a frame header split across reads
        self._left = 0       # payload bytes of the current frame still to come
        self._block = -1     # bytes of the header block in progress (-1: none)
        self._block_frames = 0
        self._window = 0.0
        self._resets = self._settings = self._pings = self._idle = 0
        self.max_block = max_block

    def scan(self, data: bytes, now: float) -> str | None:
        """Count the frames in `data`; a reason to end the connection, or None."""
        if now - self._window >= 1.0:
            self._window = now
            self._resets = self._settings = self._pings = self._idle = 0
        pos, end = 0, len(data)
        if self._skip:
            pos = min(self._skip, end)
            self._skip -= pos
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                self._left -= take
                pos += take
                continue
            need = 9 - len(self._partial)
            head = self._partial + data[pos:pos + need]
            pos += min(need, end - pos)
            if len(head) < 9:
                self._partial = head
                return None
            self._partial = b""
            length = int.from_bytes(head[0:3], "big")
            self._left = length
            reason = self._frame(head[3], head[4], length)
            if reason is not None:
                return reason
        return None

    def _frame(self, kind: int, flags: int, length: int) -> str | None:
        if kind in (_HEADERS, _CONTINUATION):
            if kind == _HEADERS:
                self._block, self._block_frames = 0, 0
            elif self._block < 0:
                return None  # a stray CONTINUATION: h2 refuses it as a protocol error
            self._block += length
            self._block_frames += 1
            if self._block > self.max_block:
                return "HTTP/2 header block too large"
            if self._block_frames > MAX_BLOCK_FRAMES:
                return "HTTP/2 CONTINUATION flood"
            if flags & _END_HEADERS:
                self._block = -1
            return None
        if kind == _RST_STREAM:
            self._resets += 1
            return "HTTP/2 rapid reset" if self._resets > RESETS_PER_SECOND else None
        if kind == _SETTINGS:
            if not flags & _ACK:
                self._settings += 1
                if self._settings > SETTINGS_PER_SECOND:
                    return "HTTP/2 SETTINGS flood"
            return None
        if kind == _PING:
            if not flags & _ACK:
                self._pings += 1
                if self._pings > PINGS_PER_SECOND:
                    return "HTTP/2 PING flood"
            return None
        if kind == _DATA and (length or flags & _END_STREAM):
            return None  # a body, or its end: paid for by flow control
        self._idle += 1
        return "HTTP/2 frame flood" if self._idle > IDLE_FRAMES_PER_SECOND else None
