"""HTTP-date parsing and formatting (RFC 9110 §5.6.7), kept apart so the cache rules stay short.

Parsing is tolerant of case and extra whitespace but never guesses: anything that is not one of the
three HTTP-date forms, or names an impossible calendar date, is ``None``.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

__all__ = ["MAX_TIMESTAMP", "format_http_date", "parse_http_date"]

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name.lower(): i + 1 for i, name in enumerate(_MONTHS)}

# Largest timestamp format_http_date can write with a four-digit year (9999-12-31T23:59:59Z).
MAX_TIMESTAMP = 253402300799.0

# Zone: RFC 9110 requires "GMT"; "UTC" and "+0000" are accepted because broken origins send them
# and they mean the same instant.
_ZONE = r"(?:GMT|UTC|\+0000)"
_TIME = r"(\d{1,2}):(\d{2}):(\d{2})"
# IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
_IMF = re.compile(
    rf"[a-z]{{3}}\s*,\s*(\d{{1,2}})\s+([a-z]{{3}})\s+(\d{{4}})\s+{_TIME}\s+{_ZONE}", re.IGNORECASE
)
# rfc850-date (obsolete): Sunday, 06-Nov-94 08:49:37 GMT
_RFC850 = re.compile(
    rf"[a-z]{{6,9}}\s*,\s*(\d{{1,2}})-([a-z]{{3}})-(\d{{2}})\s+{_TIME}\s+{_ZONE}", re.IGNORECASE
)
# asctime-date (obsolete): Sun Nov  6 08:49:37 1994
_ASCTIME = re.compile(
    rf"[a-z]{{3}}\s+([a-z]{{3}})\s+(\d{{1,2}})\s+{_TIME}\s+(\d{{4}})", re.IGNORECASE
)


def parse_http_date(value: str | None, *, now: float | None = None) -> float | None:
    """Parse an HTTP-date in any of the three RFC 9110 §5.6.7 forms to a POSIX timestamp, else None.

    ``now`` only matters for the two-digit years of rfc850-date: a year that would be more than
    50 years in the future is read as the most recent past year with those digits (§5.6.7).
    """
    if not value:
        return None
    text = value.strip()
    if m := _IMF.fullmatch(text):
        day, month, year, hh, mm, ss = m.groups()
        return _timestamp(int(year), month, int(day), int(hh), int(mm), int(ss))
    if m := _RFC850.fullmatch(text):
        day, month, yy, hh, mm, ss = m.groups()
        this_year = time.gmtime(time.time() if now is None else now).tm_year
        year = this_year - this_year % 100 + int(yy)
        if year > this_year + 50:
            year -= 100
        return _timestamp(year, month, int(day), int(hh), int(mm), int(ss))
    if m := _ASCTIME.fullmatch(text):
        month, day, hh, mm, ss, year = m.groups()
        return _timestamp(int(year), month, int(day), int(hh), int(mm), int(ss))
    return None


def _timestamp(year: int, month: str, day: int, hh: int, mm: int, ss: int) -> float | None:
    number = _MONTH_NUMBER.get(month.lower())
    if number is None:
        return None
    if ss == 60:  # a leap second: POSIX time has no such second, use the one before it
        ss = 59
    try:
        return datetime(year, number, day, hh, mm, ss, tzinfo=UTC).timestamp()
    except ValueError:  # 31 Feb, hour 25, year 0, ...
        return None


def format_http_date(ts: float) -> str:
    """Format a POSIX timestamp as an IMF-fixdate (RFC 9110 §5.6.7), clamped to years 1970-9999."""
    if not ts >= 0.0:  # negative or NaN
        ts = 0.0
    t = time.gmtime(int(min(ts, MAX_TIMESTAMP)))
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )
