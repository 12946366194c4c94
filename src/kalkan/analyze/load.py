"""Access-log files into one DuckDB table, `groups`, in one pass over the lines: which files
(globs, `.gz`), the time window, and an error that names the file and line when a file is not
Kalkan's JSON lines.

Both forms of a line are read: seconds-only `time` and the millisecond form, with or without
the optional `query`, `ua`, `referer` and `reason` fields (absent means none).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import duckdb

from kalkan.analyze.shapes import MACROS, shaped


class LogError(Exception):
    """A log file that cannot be read as Kalkan's access log, or nothing to analyze."""


# What the reader asks of each line; fields it does not name are never extracted (the JSON
# parser still reads them, but the table holds only these).
COLUMNS = {"time": "VARCHAR", "client": "VARCHAR", "method": "VARCHAR", "path": "VARCHAR",
           "query": "VARCHAR", "status": "INTEGER", "cache": "VARCHAR", "origin_ms": "DOUBLE",
           "decision": "VARCHAR", "ua": "VARCHAR"}
_TIME_FORMATS = "['%Y-%m-%dT%H:%M:%S.%gZ', '%Y-%m-%dT%H:%M:%SZ']"
_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z\Z")


def expand(inputs: list[str]) -> list[str]:
    """Paths and glob patterns → the files, in order, each once; a name that matches nothing
    is an error (a typo must not become a report on less than was asked for)."""
    files: list[str] = []
    for item in inputs:
        if glob.has_magic(item):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not found:
                raise LogError(f"{item}: no file matches this pattern")
        elif os.path.isdir(item):
            raise LogError(f"{item}: is a directory (name the log files, or a glob such as "
                           f"{os.path.join(item, 'access.log*')})")
        elif not os.path.exists(item):
            raise LogError(f"{item}: no such file")
        else:
            found = [item]
        for path in found:
            if not os.access(path, os.R_OK):
                raise LogError(f"{path}: not readable")
            if path not in files:
                files.append(path)
    if not files:
        raise LogError("no log files given")
    return files


def parse_time(text: str, what: str) -> int:
    """`--since`/`--until` (ISO 8601; a time without zone is UTC) → epoch milliseconds."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise LogError(f"{what} {text!r}: not an ISO 8601 time (e.g. 2026-12-05T04:51:16Z)") \
            from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    # Nothing needs the file's order (every query that depends on one says ORDER BY); keeping
    # it across the reader's threads costs CPU.
    con.execute("SET preserve_insertion_order = false")
    # DuckDB draws a progress bar on stdout for a query that runs over 2 s: it would land in
    # the JSON or Markdown that `kalkan analyze` writes there.
    con.execute("SET enable_progress_bar = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    for macro in MACROS:
        con.execute(macro)
    return con


def load(con: duckdb.DuckDBPyConnection, files: list[str], since: int | None = None,
         until: int | None = None) -> int:
    """Reads `files` into the table `groups`; the number of requests read.

    One row per distinct (client, method, path, qshape, ua, decision, status, cache, origin)
    with `outcome` (shapes.py), the number of its requests `n`, the first and last one's time
    (epoch ms) and `times`, every one of its requests' times: each number of the report is a
    sum over these rows, or (the timeline, the mitigation's before and after) over their
    times. A flood is a few thousand rows (its random queries are one shape): the engine
    never stores a row per line, which cost more CPU than reading the JSON did
    (bench/analyze_speed.py). `qshape` is the query's shape (shapes.py), computed once per
    line while it is read; the rest once per row of the table."""
    window = []
    if since is not None:
        window.append(f"t >= {int(since)}")
    if until is not None:
        window.append(f"t < {int(until)}")
    where = f"WHERE {' AND '.join(window)}" if window else ""
    names = "[" + ", ".join(_sql_string(f) for f in files) + "]"
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in COLUMNS.items()) + "}"
    # (A line without a time is an error here, in the window or not: '' is no time.)
    lines = f"""(
          SELECT * FROM (
            SELECT epoch_ms(strptime(coalesce(time, ''), {_TIME_FORMATS})) AS t,
                   client, coalesce(method, '') AS method, coalesce(path, '') AS path,
                   nullif(query, '') AS query, status, coalesce(cache, '') AS cache,
                   origin_ms IS NOT NULL AS origin, coalesce(decision, '') AS decision, ua
            FROM read_json({names}, format = 'newline_delimited', columns = {columns})
          ) {where})"""
    keys = "client, method, path, qshape, ua, decision, status, cache, origin"
    sql = f"""
        CREATE OR REPLACE TABLE groups AS
        SELECT * EXCLUDE (cache), outcome(cache, decision, status) AS outcome, len(times) AS n,
               list_min(times) AS first, list_max(times) AS last
        FROM (SELECT {keys}, list(t) AS times
              FROM ({shaped(lines, "t, client, method, path, status, cache, origin, decision, ua")})
              GROUP BY {keys})"""
    try:
        con.execute(sql)
    except duckdb.Error as exc:
        problem = find_problem(files)
        if problem:
            raise LogError(problem) from exc
        raise LogError(_engine_message(exc)) from exc
    row = con.execute("SELECT sum(n), sum(n) FILTER (WHERE client IS NULL OR status IS NULL) "
                      "FROM groups").fetchone()
    n, incomplete = (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)
    if incomplete:
        # JSON objects without the fields every line has: another program's log.
        raise LogError(find_problem(files) or f"{incomplete} lines lack time, client or status")
    if n == 0:
        if window:
            raise LogError("no requests in the logs between --since and --until")
        raise LogError(f"no requests in {', '.join(files)}: the log is empty")
    return n


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _engine_message(exc: Exception) -> str:
    text = str(exc).split("\n", 1)[0]
    return text.removeprefix("Invalid Input Error: ").strip()


def _lines(path: str) -> Iterator[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="strict") as f:
        yield from f


def find_problem(files: list[str]) -> str | None:
    """The first line that is not an access-log line, as "FILE:LINE: what is wrong" (run only
    after the engine refused the files: it reads them line by line in Python)."""
    for path in files:
        lineno = 0
        try:
            for lineno, line in enumerate(_lines(path), 1):
                if not line.strip():
                    continue
                problem = line_problem(line)
                if problem:
                    return f"{path}:{lineno}: {problem}"
        except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
            return f"{path}:{lineno + 1}: cannot be read ({exc})"
    return None


def line_problem(line: str) -> str | None:
    """What makes one line not a Kalkan access-log line, or None."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return f"not JSON ({why}): {line.strip()[:80]!r}"
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object: {line.strip()[:80]!r}"
    for name in ("time", "client", "status"):
        if name not in obj:
            return f"no {name!r} field: this is not a Kalkan access-log line"
    if not isinstance(obj["time"], str) or not _TIME_RE.match(obj["time"]):
        return f"'time' is {obj['time']!r}, expected e.g. \"2026-12-05T04:51:16.123Z\""
    if not isinstance(obj["status"], int):
        return f"'status' is {obj['status']!r}, expected a number"
    for name in ("client", "method", "path", "query", "cache", "decision", "ua"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            return f"{name!r} is {obj[name]!r}, expected a string"
    if obj.get("origin_ms") is not None and not isinstance(obj["origin_ms"], int | float):
        return f"'origin_ms' is {obj['origin_ms']!r}, expected a number or null"
    return None
