"""The access log: one JSON object per line per request, written in batches of 64 lines and at
least once a second.

Formatting is hand-rolled because it runs on every request, hits included: strings that need no JSON
escaping (the common case) are inserted as they are, the others go through `json.dumps`. Lines are
kept in a list and written in one call per flush (cheaper than a buffered write per line).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import TextIO

# Entries in each memo of line parts (a news site's readers ask for a few hundred pages at a time;
# a flood of random URLs only clears them).
_MEMO_LIMIT = 1024


def _js(value: str) -> str:
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


# Lines buffered before a write (about 13 KB). Joining, encoding and writing a batch holds the
# event loop, and every request in flight waits for it: 4,096 lines (a megabyte) stalled it for
# several milliseconds, ten times a second under load: most of a cache hit's p99 (8.2 ms then,
# 3.2 ms at 64 lines, 2.5-2.9 ms with no log at all; readers load, 64 connections).
_FLUSH_LINES = 64


class AccessLog:
    """Writes access-log lines to a file, stdout (`-`), or nowhere (path None)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._file: TextIO | None = None
        if path == "-":
            self._file = sys.stdout
        elif path:
            self._file = open(path, "a", buffering=256 * 1024, encoding="utf-8")  # noqa: SIM115
        self.enabled = self._file is not None
        self._second = -1
        self._stamp = ""
        self._quoted: dict[str, str] = {}  # JSON forms of recent clients and decisions
        self._lines: list[str] = []
        self._fragments: dict[tuple[str, str, str], str] = {}
        # (request fragment, status, bytes, cache) → that part of a line, for answers without
        # the origin; bounded like the other memos.
        self._middles: dict[tuple[str, int, int, str], str] = {}

    def _time(self, now: float) -> str:
        sec = int(now)
        if sec != self._second:
            self._second = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))
        return self._stamp

    @staticmethod
    def fragment(method: str, host: str, path: str) -> str:
        """The request's part of a line, formatted once and reusable for identical requests."""
        return f'"method":{_js(method)},"host":{_js(host)},"path":{_js(path)}'

    def write(self, now: float, client: str, method: str, host: str, path: str, status: int,
              size: int, cache: str, origin_ms: float | None, total_ms: float,
              decision: str, reason: str = "") -> None:
        if self._file is not None:
            # Readers ask for the same few pages: their part of the line is formatted once.
            key = (method, host, path)
            fragment = self._fragments.get(key)
            if fragment is None:
                if len(self._fragments) >= _MEMO_LIMIT:
                    self._fragments.clear()  # random URLs in a flood must not grow this
                fragment = self._fragments[key] = self.fragment(method, host, path)
            self.write_fragment(now, client, fragment, status, size, cache, origin_ms, total_ms,
                                decision, reason)

    def write_fragment(self, now: float, client: str, request: str, status: int, size: int,
                       cache: str, origin_ms: float | None, total_ms: float,
                       decision: str, reason: str = "") -> None:
        """One line; `reason` (why a miss, why not stored) only appears when there is one."""
        if self._file is None:
            return
        if origin_ms is None:
            # Answered without the origin (hits, refusals): the middle of the line repeats.
            key = (request, status, size, cache)
            middle = self._middles.get(key)
            if middle is None:
                if len(self._middles) >= _MEMO_LIMIT:
                    self._middles.clear()
                middle = self._middles[key] = self._middle(request, status, size, cache, "null")
        else:
            middle = self._middle(request, status, size, cache, f"{origin_ms:.1f}")
        memo = self._quoted
        client_js = memo.get(client)
        if client_js is None:
            if len(memo) > 8192:
                memo.clear()  # addresses and reasons of a botnet must not grow this
            client_js = memo[client] = _js(client)
        decision_js = memo.get(decision)
        if decision_js is None:
            decision_js = memo[decision] = _js(decision)
        stamp = self._stamp if int(now) == self._second else self._time(now)
        lines = self._lines
        if reason:
            lines.append(f'{{"time":"{stamp}","client":{client_js},{middle},"total_ms":'
                         f'{total_ms:.2f},"decision":{decision_js},"reason":{_js(reason)}}}\n')
        else:
            lines.append(f'{{"time":"{stamp}","client":{client_js},{middle},"total_ms":'
                         f'{total_ms:.2f},"decision":{decision_js}}}\n')
        if len(lines) >= _FLUSH_LINES:
            self.flush()

    @staticmethod
    def _middle(request: str, status: int, size: int, cache: str, origin: str) -> str:
        return f'{request},"status":{status},"bytes":{size},"cache":"{cache}","origin_ms":{origin}'

    def flush(self) -> None:
        f = self._file
        if f is None:
            return
        lines, self._lines = self._lines, []
        with contextlib.suppress(OSError, ValueError):
            if lines:
                f.write("".join(lines))
            f.flush()

    def reopen(self) -> None:
        """Write the buffered lines, then start again at `path` (a new file once logrotate has
        moved the old one away). Raises OSError when the path cannot be opened."""
        if not self.path or self.path == "-" or not self.enabled:
            return
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
        self._file = open(self.path, "a", buffering=256 * 1024, encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        self.flush()
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None
        self.enabled = False
