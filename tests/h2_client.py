"""HTTP/2 over real TLS sockets for the tests: `H2Client`, a well-behaved client built on the h2
library, and `Raw`, a hostile one that writes whatever frames it is told and reads back what
the server sends (frames parsed with hyperframe, header blocks with hpack)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

import hpack
import trustme
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, SettingsFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NAME = "news.test"


def tls_context(ca: trustme.CA, protocols: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(protocols)
    return ctx


async def open_tls(port: int, ca: trustme.CA, protocols: list[str] | None = None,
                   source: str | None = None
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls_context(ca, protocols or ["h2"]), server_hostname=NAME,
        local_addr=(source, 0) if source else None)
    return reader, writer


@dataclass
class Reply:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None  # RST_STREAM error code, if the stream was reset

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class H2Client:
    """One HTTP/2 connection; `request` sends one request and waits for its whole answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 validate: bool = True) -> None:
        self.reader = reader
        self.writer = writer
        # validate=False: the client sends what it is told, malformed or not.
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8",
                                                 validate_outbound_headers=validate,
                                                 normalize_outbound_headers=validate))
        self.replies: dict[int, Reply] = {}
        self.ended: set[int] = set()
        self.terminated: ConnectionTerminated | None = None

    @classmethod
    async def connect(cls, port: int, ca: trustme.CA, source: str | None = None,
                      validate: bool = True) -> H2Client:
        reader, writer = await open_tls(port, ca, source=source)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer, validate)
        client.conn.initiate_connection()
        client.flush()
        return client

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def request(self, method: str, path: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"", authority: str = NAME, timeout: float = 10.0) -> Reply:
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "https"), (":authority", authority),
                  (":path", path), *(headers or [])]
        self.conn.send_headers(sid, fields, end_stream=not body)
        self.replies[sid] = Reply()
        self.flush()
        async with asyncio.timeout(timeout):
            left = memoryview(body)
            while left and sid not in self.ended:  # (answered early: the rest is not sent)
                window = min(self.conn.local_flow_control_window(sid),
                             self.conn.max_outbound_frame_size)
                if window > 0:
                    n = min(window, len(left))
                    self.conn.send_data(sid, left[:n], end_stream=n == len(left))
                    left = left[n:]
                    self.flush()
                else:
                    await self._read_once()
            while sid not in self.ended:
                await self._read_once()
        return self.replies[sid]

    async def _read_once(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        for event in self.conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                reply = self.replies[event.stream_id]
                reply.headers = [(str(k), str(v)) for k, v in event.headers]
                reply.status = int(dict(reply.headers)[":status"])
            elif isinstance(event, DataReceived):
                self.replies[event.stream_id].body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
            elif isinstance(event, StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, StreamReset):
                self.replies[event.stream_id].reset = event.error_code
                self.ended.add(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                self.terminated = event
        self.flush()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await self.writer.wait_closed()


class Raw:
    """A hostile HTTP/2 client: the preface and one SETTINGS, then any frames at all."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.buf = b""

    @classmethod
    async def connect(cls, port: int, ca: trustme.CA,
                      settings: dict[int, int] | None = None) -> Raw:
        reader, writer = await open_tls(port, ca)
        raw = cls(reader, writer)
        writer.write(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
        return raw

    def block(self, path: str, method: str = "GET",
              extra: list[tuple[str, str]] | None = None) -> bytes:
        """An encoded request header block."""
        return bytes(self.encoder.encode([(":method", method), (":scheme", "https"),
                                          (":authority", NAME), (":path", path),
                                          *(extra or [])]))

    def send(self, *frames: Frame) -> bool:
        """Write frames; False once the server has closed the connection."""
        try:
            self.writer.write(b"".join(f.serialize() for f in frames))
        except (ConnectionError, RuntimeError):
            return False
        return not self.writer.is_closing()

    async def pump(self, *frames: Frame) -> bool:
        """Write and wait until the kernel took them (the server may close meanwhile)."""
        if not self.send(*frames):
            return False
        try:
            await self.writer.drain()
        except (ConnectionError, ssl.SSLError):
            return False
        return True

    async def frames(self, timeout: float = 5.0, until_closed: bool = True) -> list[Frame]:
        """Frames the server sends until it closes the connection (or `timeout` passes: then
        the caller sees no GOAWAY and fails), parsed."""
        out: list[Frame] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            left = end - loop.time()
            if left <= 0:
                break
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except (TimeoutError, ConnectionError, ssl.SSLError):
                break
            if not data:
                break
            self.buf += data
            out.extend(self._parse())
            if not until_closed and out:
                break
        return out

    def _parse(self) -> list[Frame]:
        out: list[Frame] = []
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                break
            frame.parse_body(memoryview(self.buf[9:9 + length]))
            self.buf = self.buf[9 + length:]
            if isinstance(frame, HeadersFrame):
                frame.decoded = self.decoder.decode(frame.data)  # type: ignore[attr-defined]
            out.append(frame)
        return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await self.writer.wait_closed()


def goaway(frames: list[Frame]) -> GoAwayFrame | None:
    for f in frames:
        if isinstance(f, GoAwayFrame):
            return f
    return None


def statuses(frames: list[Frame]) -> dict[int, int]:
    """Stream id → :status of the final response HEADERS the server sent on it."""
    out: dict[int, int] = {}
    for f in frames:
        if isinstance(f, HeadersFrame):
            fields = dict(f.decoded)  # type: ignore[attr-defined]
            status = int(fields[":status"])
            if status >= 200:
                out[f.stream_id] = status
    return out
