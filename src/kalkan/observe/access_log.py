"""The access log: one JSON object per line per request, written in batches of 64 lines and at
least once a second. docs/install.md (Logs) lists the fields.

Formatting is hand-rolled because it runs on every request, hits included: strings that need no JSON
escaping (the common case) are inserted as they are, the others go through `json.dumps`. Each
line is appended, as bytes, to a buffer written in one call per flush (cheaper than a buffered
write per line), to a file straight to its descriptor: every line is ASCII (JSON escapes the
rest). The append is one C call when Kalkan was built with a compiler (`_log_line.c`; the
reference is `append_line_py` here): the User-Agent and Referer go into the buffer as they came.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

from kalkan.memo import Memo
from kalkan.observe.pseudonym import pseudonymize

# Entries in each memo of line parts (a news site's readers ask for a few hundred pages at a time;
# a flood of random URLs only clears them).
_MEMO_LIMIT: Final = 1024
_CLIENTS_KEPT: Final = 8192  # formatted client addresses and decisions remembered


def _js(value: str) -> str:
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


# What a JSON string cannot hold as it is: control characters, the quote and the backslash.
_NOT_AS_IS = bytes(range(32)) + b'"\\\x7f'
# A translation that changes exactly those bytes and the ones beyond ASCII (to 1, and 1 itself
# to 0). `bytes.translate` with a table and nothing to delete returns the very same object when
# it changed nothing: one tight loop and an identity test, about a third of what `isascii`,
# deleting those bytes and comparing lengths cost.
_FLAG_NOT_AS_IS: Final = bytes(0 if c == 1 else 1 if c in _NOT_AS_IS or c > 127 else c
                               for c in range(256))


def _as_is(value: bytes) -> bool:
    """Can `value` go between the quotes of a JSON string as it is (ASCII, nothing to escape)?"""
    return value.translate(_FLAG_NOT_AS_IS) is value


def _js_bytes(value: bytes) -> str:
    """A field value as a JSON string: bytes beyond ASCII read as UTF-8 when they are (what a
    client sending them most likely meant), else as Latin-1 (one character per byte, so nothing
    is lost). Checked on the bytes: `str.isprintable` costs about ten times as much per
    character, and a reader's User-Agent is 100-200 of them on every line."""
    if _as_is(value):
        return '"' + value.decode("ascii") + '"'
    return _js_escaped(value)


def _js_escaped(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    return json.dumps(text)


# A line's numbers, looked up: "000" to "999" (milliseconds), "00" to "99" (hundredths), "0" to
# "999" (whole milliseconds, and tenths below 10). (mypyc turns an f-string with a format spec into
# a str.format call that parses the whole line's template every time: that was most of a line's
# cost.)
_DIGITS3: Final = tuple(f"{i:03d}" for i in range(1000))
_DIGITS2: Final = tuple(f"{i:02d}" for i in range(100))
_WHOLE: Final = tuple(str(i) for i in range(1000))


# "0.00" to "9.99": a hit's total_ms, looked up (see `_hundredths`).
_HUNDREDTHS: Final = tuple(f"{i // 100}.{i % 100:02d}" for i in range(1000))


def _hundredths(value: float) -> str:
    """`_decimals(value, 2)`, from a table below 10 (what nearly every answer takes)."""
    n = int(value * 100.0 + 0.5) if value > 0.0 else 0
    return _HUNDREDTHS[n] if n < 1000 else _decimals(value, 2)


def _decimals(value: float, places: int) -> str:
    """`value` with 1 or 2 decimals, as f"{value:.{places}f}" writes it (below 0 is written as
    0: durations only)."""
    scale = 100 if places == 2 else 10
    n = int(value * scale + 0.5) if value > 0.0 else 0
    whole = n // scale
    text = _WHOLE[whole] if whole < 1000 else str(whole)
    return text + "." + (_DIGITS2[n % scale] if places == 2 else _WHOLE[n % scale])


# Lines buffered before a write (about 13 KB). Joining, encoding and writing a batch holds the
# event loop, and every request in flight waits for it: 4,096 lines (a megabyte) stalled it for
# several milliseconds, ten times a second under load: most of a cache hit's p99 (8.2 ms then,
# 3.2 ms at 64 lines, 2.5-2.9 ms with no log at all; readers load, 64 connections).
_FLUSH_LINES: Final = 64
# With `defer` set (the edge sets the event loop's call_soon), the write happens after the
# answers of this turn of the loop have gone out: written inline, the request whose line filled
# the batch waited for it (~8 µs for 22 KB), one request in 64, which is inside the p99. A
# batch that grows this large before the deferred write runs is written at once.
_FLUSH_NOW_LINES: Final = 4 * _FLUSH_LINES


class AccessLog:
    """Writes access-log lines to a file, stdout (`-`), or nowhere (path None)."""

    def __init__(self, path: str | None, pseudonym_key: bytes | None = None) -> None:
        self.path = path
        self.pseudonym_key = pseudonym_key  # addresses written as pseudonyms (pseudonym.py)
        self._stdout: TextIO | None = sys.stdout if path == "-" else None
        self._file: io.FileIO | None = _open_file(path) if path and path != "-" else None
        self.enabled = self._file is not None or self._stdout is not None
        self._open = self.enabled  # has somewhere to write to now (not after a failed reopen)
        self._second = -1
        self._stamp = ""  # '{"time":"<this second>.': the start of every line in it
        # JSON forms of recent clients ('Z","client":"…",') and decisions (',"decision":"…"'),
        # each with the punctuation around it: fewer pieces to join per line.
        self._clients: Memo[str, str] = Memo(_CLIENTS_KEPT)
        self._decisions: Memo[str, str] = Memo(_CLIENTS_KEPT)
        self._buffer = bytearray()  # the lines not yet written
        self._pending = 0           # how many
        self.defer: Callable[[Callable[[], None]], object] | None = None  # loop.call_soon
        self._flush_due = False     # a deferred flush is scheduled
        self._fragments: Memo[tuple[str, str, str, str], str] = Memo(_MEMO_LIMIT)
        # The middle of a line ('"method":…,"origin_ms":null,"total_ms":') for answers without
        # the origin, which repeat: by (request fragment, status, bytes, cache) for the replay
        # path, by (method, host, path, query, status, bytes, cache) for the others (one memo
        # lookup per hit instead of two); bounded like the other memos.
        self._middles: Memo[tuple[str, int, int, str], str] = Memo(_MEMO_LIMIT)
        self._answers: Memo[tuple[str, str, str, str, int, int, str], str] = Memo(
            _MEMO_LIMIT)

    def _time(self, now: float) -> str:
        sec = int(now)
        if sec != self._second:
            self._second = sec
            self._stamp = '{"time":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + "."
        return self._stamp

    @staticmethod
    def fragment(method: str, host: str, path: str, query: str = "") -> str:
        """The request's part of a line, formatted once and reusable for identical requests."""
        if query:
            return (f'"method":{_js(method)},"host":{_js(host)},"path":{_js(path)},'
                    f'"query":{_js(query)}')
        return f'"method":{_js(method)},"host":{_js(host)},"path":{_js(path)}'

    @staticmethod
    def agent(user_agent: bytes | None, referer: bytes | None) -> str:
        """The client's part of a line: User-Agent and Referer, each only when sent. Formatted
        per request (every reader's User-Agent and Referer differ)."""
        if user_agent is None:
            if referer is None:
                return ""
            return ',"referer":' + _js_bytes(referer)
        if referer is None:
            if _as_is(user_agent):  # nearly every reader's: one string built, not two
                return f',"ua":"{user_agent.decode("ascii")}"'
            return ',"ua":' + _js_escaped(user_agent)
        return ',"ua":' + _js_bytes(user_agent) + ',"referer":' + _js_bytes(referer)

    def write(self, now: float, client: str, method: str, host: str, path: str, query: str,
              status: int, size: int, cache: str, origin_ms: float | None, total_ms: float,
              decision: str, reason: str = "", user_agent: bytes | None = None,
              referer: bytes | None = None) -> None:
        """One line; `user_agent` and `referer` as the client sent them (written when sent)."""
        if not self._open:
            return
        if origin_ms is None:
            # Hits and refusals: readers ask for the same few pages, so the whole middle of
            # the line is formatted once per page and answer.
            answer = (method, host, path, query, status, size, cache)
            middle = self._answers.table.get(answer)
            if middle is None:  # bounded: random URLs in a flood
                middle = self._answers.put(answer, self._middle(
                    self.fragment(method, host, path, query), status, size, cache, "null"))
        else:
            key = (method, host, path, query)
            fragment = self._fragments.table.get(key)
            if fragment is None:
                fragment = self._fragments.put(key, self.fragment(method, host, path, query))
            middle = self._middle(fragment, status, size, cache, _decimals(origin_ms, 1))
        self._line(now, client, middle, total_ms, decision, reason, "", user_agent, referer)

    def write_fragment(self, now: float, client: str, request: str, status: int, size: int,
                       cache: str, origin_ms: float | None, total_ms: float,
                       decision: str, reason: str = "", agent: str = "") -> None:
        """One line; `reason` (why a miss, why not stored) only appears when there is one,
        `agent` is `agent()`'s text."""
        if not self._open:
            return
        if origin_ms is None:
            # Answered without the origin (hits, refusals): the middle of the line repeats.
            key = (request, status, size, cache)
            middle = self._middles.table.get(key)
            if middle is None:
                middle = self._middles.put(key, self._middle(request, status, size, cache, "null"))
        else:
            middle = self._middle(request, status, size, cache, _decimals(origin_ms, 1))
        self._line(now, client, middle, total_ms, decision, reason, agent, None, None)

    def _line(self, now: float, client: str, middle: str, total_ms: float, decision: str,
              reason: str, agent: str, user_agent: bytes | None, referer: bytes | None) -> None:
        clients = self._clients
        client_js = clients.table.get(client)
        if client_js is None:  # bounded: a botnet's addresses
            secret = self.pseudonym_key
            # Once per client while it is remembered: an HMAC costs a couple of microseconds.
            client_js = clients.put(client, 'Z","client":' + _js(
                pseudonymize(client, secret) if secret else client) + ",")
        decisions = self._decisions
        decision_js = decisions.table.get(decision)
        if decision_js is None:  # bounded: refusals carry details
            decision_js = decisions.put(decision, ',"decision":' + _js(decision))
        second = int(now)
        stamp = self._stamp if second == self._second else self._time(now)
        ms = _DIGITS3[int((now - second) * 1000.0)]
        total = _hundredths(total_ms)
        reason_js = ',"reason":' + _js(reason) if reason else ""
        if not append_line(self._buffer, stamp, ms, client_js, middle, total, decision_js,
                           reason_js, agent, user_agent, referer):
            # An agent or referer to escape: formatted here (only str pieces in the f-string:
            # mypyc joins them without str.format).
            agent += self.agent(user_agent, referer)
            self._buffer += (f"{stamp}{ms}{client_js}{middle}{total}{decision_js}{reason_js}"
                             f"{agent}}}\n").encode()
        self._pending += 1
        if self._pending >= _FLUSH_LINES:
            defer = self.defer
            if defer is None or self._pending >= _FLUSH_NOW_LINES:
                self.flush()
            elif not self._flush_due:
                self._flush_due = True
                defer(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_due = False
        if self._pending >= _FLUSH_LINES:  # (unless written meanwhile)
            self.flush()

    @staticmethod
    def _middle(request: str, status: int, size: int, cache: str, origin: str) -> str:
        return (f'{request},"status":{status},"bytes":{size},"cache":"{cache}",'
                f'"origin_ms":{origin},"total_ms":')

    def flush(self) -> None:
        lines, self._buffer, self._pending = self._buffer, bytearray(), 0
        with contextlib.suppress(OSError, ValueError):
            f = self._file
            if f is not None:
                if lines:
                    data = memoryview(lines)
                    while data:  # a short write (a pipe, a signal) continues, nothing is lost
                        data = data[f.write(data) or 0:]
            elif self._stdout is not None:
                self._stdout.flush()  # what was printed before goes first
                if lines:
                    try:
                        fd = self._stdout.fileno()
                    except (OSError, ValueError):  # not a file (a test's capture)
                        self._stdout.write(lines.decode("ascii"))
                        self._stdout.flush()
                    else:
                        _write_whole_lines(fd, lines.splitlines(keepends=True))

    def reopen(self) -> None:
        """Write the buffered lines, then start again at `path` (a new file once logrotate has
        moved the old one away). Raises OSError when the path cannot be opened."""
        if not self.path or self.path == "-" or not self.enabled:
            return
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
            self._open = False
        self._file = _open_file(self.path)
        self._open = True

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
        self._file = self._stdout = None
        self.enabled = self._open = False


# Writes to a pipe of at most this many bytes are never interleaved with another writer's.
_PIPE_BUF: Final = 4096


def _write_whole_lines(fd: int, lines: list[bytearray]) -> None:
    """Lines to stdout in writes of whole lines, each at most PIPE_BUF bytes when they fit:
    several workers share one stdout (a pipe, the journal), and their lines must not tear.
    (A file is opened O_APPEND: one write per batch is never torn there.)"""
    batch: list[bytearray] = []
    size = 0
    for line in lines:
        if batch and size + len(line) > _PIPE_BUF:
            _write_all(fd, b"".join(batch))
            batch, size = [], 0
        batch.append(line)
        size += len(line)
    if batch:
        _write_all(fd, b"".join(batch))


def _write_all(fd: int, data: bytes) -> None:
    done = 0
    while done < len(data):  # a short write (a signal) continues, nothing is lost
        done += os.write(fd, data[done:] if done else data)


def _open_file(path: str) -> io.FileIO:
    """The log file, appended to, unbuffered: `flush` writes each batch in one call."""
    return io.FileIO(path, "a")


def append_line_py(buffer: bytearray, stamp: str, ms: str, client: str, middle: str, total: str,
                   decision: str, reason: str, agent: str, user_agent: bytes | None,
                   referer: bytes | None) -> bool:
    """Append a line (its text pieces, then the agent's and referer's fields, each only when
    sent); False, appending nothing, if the agent or referer needs escaping (or a text is not
    ASCII, which the pieces made above never are)."""
    pieces = (stamp, ms, client, middle, total, decision, reason, agent)
    if not all(piece.isascii() for piece in pieces):
        return False
    tail = b""
    if user_agent is not None:
        if not _as_is(user_agent):
            return False
        tail = b',"ua":"' + user_agent + b'"'
    if referer is not None:
        if not _as_is(referer):
            return False
        tail += b',"referer":"' + referer + b'"'
    buffer += "".join(pieces).encode("ascii") + tail + b"}\n"
    return True


append_line: Callable[[bytearray, str, str, str, str, str, str, str, str, bytes | None,
                       bytes | None], bool]
try:
    from kalkan.observe import _log_line
except ImportError:  # built without a C compiler
    append_line = append_line_py
else:
    append_line = _log_line.append
