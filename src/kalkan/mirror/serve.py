"""`kalkan mirror serve DIR`: a small static server for an exported mirror (directories answer
with their index file, media types by extension), for trying a mirror or serving one from a
spare machine. It serves files only, never lists a directory, and only what is under DIR."""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("kalkan.mirror")

_INDEXES = ("index.html", "index.xml", "index.json", "index.txt")


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {  # noqa: RUF012 - the base class's own (instance) attribute, extended
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".xml": "application/xml", ".svg": "image/svg+xml", ".woff2": "font/woff2",
        ".js": "text/javascript"}
    server_version = "kalkan-mirror"
    sys_version = ""

    def list_directory(self, path: Any) -> None:   # never a listing
        self.send_error(404)
        return None

    def translate_path(self, path: str) -> str:
        local = super().translate_path(path)
        if Path(local).is_dir():
            for name in _INDEXES:
                if (Path(local) / name).is_file():
                    return str(Path(local) / name)
        return local

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def make_server(directory: Path, host: str = "127.0.0.1", port: int = 8088
                ) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_Handler, directory=str(directory))
    return http.server.ThreadingHTTPServer((host, port), handler)


def serve_in_thread(directory: Path, host: str = "127.0.0.1", port: int = 0
                    ) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    """A running server and its thread (tests; `server.shutdown()` stops it)."""
    server = make_server(directory, host, port)
    thread = threading.Thread(target=server.serve_forever, name="kalkan-mirror", daemon=True)
    thread.start()
    return server, thread
