"""A tiny static origin for developing the benchmarks before the demo site exists.

It serves only ``GET /bench/20k`` and ``GET /bench/20k/<anything>``: 20,480 bytes of HTML with
``Cache-Control: public, max-age=3600``, the same contract as the demo site's bench route.
Published results must use the demo site; ``bench.throughput`` says loudly when they do not.

Run: ``python -m bench.stand_in_origin 127.0.0.1 PORT`` (loopback only).
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.common import require_loopback

BODY_SIZE = 20_480


def _body() -> bytes:
    head = b"<!doctype html><html><head><title>bench</title></head><body><p>"
    tail = b"</p></body></html>\n"
    return head + b"k" * (BODY_SIZE - len(head) - len(tail)) + tail


class _Handler(BaseHTTPRequestHandler):
    """Answers the bench route; everything else is 404."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    body = _body()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/bench/20k" or path.startswith("/bench/20k/"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Cache-Control", "public, max-age=3600")
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
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
