"""Hot large bodies kept a second time in memory-backed files (memfd), so that a hit on them is
sent by the kernel from page references (sendfile) instead of copied into every reader's
socket; bounded in bytes and in files, the oldest closed first.

Why: at capacity the copy into the socket was the largest single item of a 20 KB hit's CPU time
(12 %, perf), and most of a 200 KB one's; nginx serves its cache files with sendfile and never
pays it. The price is memory: a hot body (served `HOT_HITS` times from memory, at least
`MIN_SIZE` bytes) is held twice, once in the store and once here, up to `cache.sendfile_bytes`
in all. Bodies that are stored but not hot cost their size once, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Final

MIN_SIZE: Final = 16 * 1024  # below this the extra call costs more than the copy it saves
HOT_HITS: Final = 8          # hits on one entry before its body gets a file
MAX_FILES: Final = 256       # descriptors this may hold at once, whatever the byte budget

_SEALS = getattr(fcntl, "F_SEAL_SEAL", 0) | getattr(fcntl, "F_SEAL_SHRINK", 0) | \
    getattr(fcntl, "F_SEAL_GROW", 0) | getattr(fcntl, "F_SEAL_WRITE", 0)


class BodyFile:
    """One body in a sealed memfd; `fd` is -1 once the shelf has closed it."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size


class BodyFiles:
    """The shelf of body files: made on demand (`make`, by `Entry.hot_file` once an entry is
    hot), closed oldest first when a new one would pass `max_bytes` or `max_files`, all closed
    by `close`."""

    def __init__(self, max_bytes: int, max_files: int = MAX_FILES) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        # The smallest body worth a file: none at all when the budget holds none (0 turns
        # this off) or the platform lacks memfd or sendfile.
        usable = hasattr(os, "memfd_create") and hasattr(os, "sendfile")
        self.min_size = MIN_SIZE if usable and max_bytes >= MIN_SIZE else 1 << 62
        self.files: deque[BodyFile] = deque()
        self.bytes = 0
        self.failures = 0  # memfds that could not be made (out of descriptors or memory)

    def make(self, body: bytes) -> BodyFile | None:
        """A new sealed file holding `body`, or None (too large for the budget, or the system
        refused: then the hit is sent by copy, as always)."""
        size = len(body)
        if size > self.max_bytes or size < self.min_size:
            return None
        files = self.files
        while files and (self.bytes + size > self.max_bytes or len(files) >= self.max_files):
            self._close(files.popleft())
        try:
            fd = os.memfd_create("kalkan-body", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError:
            self.failures += 1
            return None
        try:
            view = memoryview(body)
            done = 0
            while done < size:
                done += os.write(fd, view[done:])
            if _SEALS:  # the file can never change or shrink under a send in flight
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        except OSError:
            os.close(fd)
            self.failures += 1
            return None
        file = BodyFile(fd, size)
        files.append(file)
        self.bytes += size
        return file

    def _close(self, file: BodyFile) -> None:
        # Pages already handed to a socket stay referenced there until sent: closing is safe.
        if file.fd >= 0:
            os.close(file.fd)
            file.fd = -1
            self.bytes -= file.size

    def close(self) -> None:
        while self.files:
            self._close(self.files.popleft())


def send_head_and_file_py(sock_fd: int, head: bytes, file_fd: int, size: int) -> int:
    """Send `head` (with MSG_MORE: it shares a segment with the body), then `size` bytes of
    `file_fd` from its start, without blocking; returns the bytes sent, the head's first.
    Stops at the first short or failed call: the caller queues the rest."""
    sock = socket.socket(fileno=sock_fd)  # borrows the descriptor: detached below, not closed
    try:
        try:
            sent = sock.send(head, socket.MSG_MORE | socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError:
            return 0
        if sent < len(head):
            return sent
        offset = 0
        with contextlib.suppress(OSError):
            while offset < size:
                n = os.sendfile(sock_fd, file_fd, offset, size - offset)
                if n <= 0:
                    break
                offset += n
        return sent + offset
    finally:
        sock.detach()


send_head_and_file: Callable[[int, bytes, int, int], int]
try:
    from kalkan.edge._sendfile import send_head_and_file
except ImportError:  # built without a C compiler
    send_head_and_file = send_head_and_file_py

__all__ = ["HOT_HITS", "MIN_SIZE", "BodyFile", "BodyFiles", "send_head_and_file",
           "send_head_and_file_py"]
