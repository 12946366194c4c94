"""Local stand-ins for where alerts go, on real loopback sockets, each in its own thread so a
`kalkan` subprocess and in-process code can both reach them: the Telegram Bot API (records
sendMessage), a webhook receiver, and an SMTP server (aiosmtpd, STARTTLS and login optional)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from support import free_port


@dataclass
class Received:
    """One request a stand-in got: when (monotonic, and wall clock), its path, headers, body."""

    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    wall: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Recorder:
    received: list[Received] = field(default_factory=list)
    fail_next: int = 0          # answer this many requests with 500 first
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)


class _HttpStandIn:
    """A threaded HTTP server that records every POST and answers with `answer` (JSON)."""

    def __init__(self) -> None:
        self.record = _Recorder()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with stand_in.record.lock:
                    failing = stand_in.record.fail_next > 0
                    if failing:
                        stand_in.record.fail_next -= 1
                    else:
                        stand_in.record.received.append(Received(
                            time.monotonic(), self.path, dict(self.headers.items()), body))
                        stand_in.record.arrived.notify_all()
                status, answer = (500, {"ok": False, "description": "stand-in told to fail"}) \
                    if failing else (200, stand_in.answer(self.path))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, _path: str) -> dict[str, Any]:
        return {"ok": True}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        with self.record.lock:
            return list(self.record.received)

    def fail(self, n: int) -> None:
        with self.record.lock:
            self.record.fail_next = n

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Until `count` requests arrived (or the timeout): what arrived."""
        deadline = time.monotonic() + timeout
        with self.record.lock:
            while len(self.record.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.record.arrived.wait(left)
            return list(self.record.received)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TelegramStandIn(_HttpStandIn):
    """The Bot API's sendMessage: checks the token in the path, records the message."""

    def __init__(self, token: str = "123456:stand-in-token") -> None:
        self.token = token
        super().__init__()

    def answer(self, path: str) -> dict[str, Any]:
        if path != f"/bot{self.token}/sendMessage":
            return {"ok": False, "error_code": 404, "description": "Not Found"}
        return {"ok": True, "result": {"message_id": len(self.received)}}

    def texts(self) -> list[str]:
        return [str(r.json()["text"]) for r in self.received]


class WebhookReceiver(_HttpStandIn):
    """Any POST: recorded, answered 200."""


class SmtpStandIn:
    """aiosmtpd on loopback in its thread; optional STARTTLS (`tls`) and a login it accepts."""

    def __init__(self, tls: ssl.SSLContext | None = None,
                 login: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[float, Envelope, Message]] = []
        self.logins: list[str] = []
        self.lock = threading.Lock()
        self.login = login
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs.update(tls_context=tls, require_starttls=True)
        if login is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def _authenticate(self, _server: Any, _session: Session, _envelope: Envelope,
                      mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and self.login is not None and (
            data.login.decode(), data.password.decode()) == self.login
        if ok:
            with self.lock:
                self.logins.append(mechanism)
        return AuthResult(success=ok)

    async def handle_DATA(self, _server: Any, _session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else \
            str(envelope.content).encode()
        mail = message_from_bytes(content, policy=policy.default)
        with self.lock:
            self.messages.append((time.monotonic(), envelope, mail))
        return "250 OK"

    def wait_for(self, count: int, timeout: float) -> list[tuple[float, Envelope, Message]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    break
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)

    def stop(self) -> None:
        self.controller.stop()
