"""A tiny static origin: the bench routes the demo site lacks, and a stand-in for development.

It serves ``GET /bench/2k``, ``/bench/20k`` and ``/bench/200k`` (and ``/bench/<size>/<anything>``):
HTML pages of exactly 2,048, 20,480 and 204,800 bytes with ``Cache-Control: public,
max-age=3600`` and an ``ETag``, the same contract as the demo site's ``/bench/20k``.
``bench.throughput`` uses it for a page size the demo site does not serve (and says so in the
report), and for everything with ``--stand-in-origin`` (development only: results measured that
way are marked invalid).

Run: ``python -m bench.stand_in_origin 127.0.0.1 PORT`` (loopback only).
"""

from __future__ import annotations

import hashlib
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from bench.common import require_loopback

SIZES = {"2k": 2_048, "20k": 20_480, "200k": 204_800}
BODY_SIZE = SIZES["20k"]


def page(size: int) -> bytes:
    """An HTML page of exactly *size* bytes."""
    head = b"<!doctype html><html><head><title>bench</title></head><body><p>"
    tail = b"</p></body></html>\n"
    return head + b"k" * (size - len(head) - len(tail)) + tail


class _Handler(BaseHTTPRequestHandler):
    """Answers the bench routes; everything else is 404."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    bodies: ClassVar[dict[str, bytes]] = {name: page(size) for name, size in SIZES.items()}
    etags: ClassVar[dict[str, str]] = {
        name: '"' + hashlib.sha1(body).hexdigest()[:20] + '"' for name, body in bodies.items()}

    def do_GET(self) -> None:
        parts = self.path.split("?", 1)[0].split("/")
        name = parts[2] if len(parts) >= 3 and parts[1] == "bench" else ""
        if name in self.bodies:
            body = self.bodies[name]
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Cache-Control", "public, max-age=3600")
            self.send_header("ETag", self.etags[name])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: the proxies under test keep the logs."""


def main(argv: list[str]) -> None:
    """Serve on ``HOST PORT`` until killed."""
    host, port = argv[0], int(argv[1])
    require_loopback(host)
    ThreadingHTTPServer.daemon_threads = True
    with ThreadingHTTPServer((host, port), _Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
