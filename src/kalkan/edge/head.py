"""The common request head read in one call, beside llhttp: `scan` takes a GET or HEAD head
that no parser could read two ways and hands back its fields; everything else it declines, and
the reader gives it to llhttp (edge/reader.py).

In C (`_head.c`) when Kalkan was built with a compiler; otherwise the Python definition here,
which is also the reference the C is tested against (tests/unit/test_head.py, which also
checks that llhttp reads every head either accepts the same way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from kalkan.edge.framing import FIELD_CODES

# (method, target, fields, coded, end): `coded` holds a (field index, code) byte pair for each
# field the edge notes (framing.FIELD_CODES); `end` is where the next request starts.
Scanned = tuple[str, bytes, list[tuple[bytes, bytes]], bytes, int]

_TCHAR: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                          b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_VCHAR: Final = frozenset([9, *range(32, 127), *range(128, 256)])
_TARGET: Final = frozenset(range(33, 127))
_OWS: Final = frozenset(b" \t")
_LEFT_TO_LLHTTP: Final = frozenset({b"content-length", b"transfer-encoding", b"upgrade",
                                    b"proxy-connection"})
MAX_FIELDS: Final = 255  # more: declined (llhttp and the reader's limits take it)


def _run(data: bytes, p: int, allowed: frozenset[int]) -> int:
    """Where the run of `allowed` bytes starting at `p` ends."""
    while p < len(data) and data[p] in allowed:
        p += 1
    return p


def scan_py(data: bytes, start: int) -> Scanned | None:
    """The head at `start` of `data`, or None: not whole in `data`, or not one `scan` takes."""
    if not 0 <= start <= len(data):
        raise ValueError("start is outside data")
    if data.startswith(b"GET ", start):
        method, p = "GET", start + 4
    elif data.startswith(b"HEAD ", start):
        method, p = "HEAD", start + 5
    else:
        return None
    if data[p:p + 1] != b"/":
        return None
    end = _run(data, p, _TARGET)
    target = data[p:end]
    if data[end:end + 11] != b" HTTP/1.1\r\n":
        return None
    p = end + 11
    fields: list[tuple[bytes, bytes]] = []
    coded = bytearray()
    while True:
        if len(data) - p < 2:
            return None
        if data[p] == 13:
            if data[p + 1] != 10:
                return None
            p += 2
            break
        if len(fields) == MAX_FIELDS:
            return None
        end = _run(data, p, _TCHAR)
        if end == p or data[end:end + 1] != b":":
            return None
        name = data[p:end]
        p = _run(data, end + 1, _OWS)
        end = _run(data, p, _VCHAR)
        value = data[p:end]
        if data[end:end + 2] != b"\r\n":
            return None
        p = end + 2
        lowered = name.lower()
        if lowered in _LEFT_TO_LLHTTP or \
                (lowered == b"connection" and value.lower() != b"keep-alive"):
            return None
        code = FIELD_CODES.get(lowered, 0)
        if code:
            coded += bytes((len(fields), code))
        fields.append((name, value))
    return method, target, fields, bytes(coded), p


scan: Callable[[bytes, int], Scanned | None]
try:
    from kalkan.edge import _head
except ImportError:  # built without a C compiler
    scan = scan_py
else:
    _head.set_codes(tuple(FIELD_CODES.items()))
    scan = _head.scan
