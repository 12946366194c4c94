"""`kalkan analyze` from arguments to files: read the logs, build the report, write it.

With `--out DIR`: DIR/report.md with its PNG charts beside it, DIR/report.html (one file,
charts inlined) and DIR/report.json. Without: the Markdown (or the JSON) on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from kalkan.analyze import document, html, load, markdown
from kalkan.analyze import report as reporting
from kalkan.observe.pseudonym import pseudonymize


@dataclass
class Request:
    inputs: list[str]
    out: str | None = None
    format: str = "markdown"          # markdown | json
    since: str | None = None
    until: str | None = None
    key: bytes | None = None          # pseudonymize addresses with this key
    bucket: int | None = None
    top: int = 15
    charts: bool = True
    threads: int | None = None


def analyze(req: Request) -> dict[str, Any]:
    """The report (a JSON-ready dict) for `req`; raises load.LogError on bad input."""
    files = load.expand(req.inputs)
    since = load.parse_time(req.since, "--since") if req.since else None
    until = load.parse_time(req.until, "--until") if req.until else None
    if since is not None and until is not None and until <= since:
        raise load.LogError("--until must be later than --since")
    if req.bucket is not None and req.bucket < 1:
        raise load.LogError("--bucket must be at least 1 second")
    if req.top < 1:
        raise load.LogError("--top must be at least 1")
    if req.out is not None and req.format != "json" and req.charts:
        try:  # (said before the logs are read, not after)
            import PIL  # noqa: F401
        except ImportError as exc:
            raise load.LogError("the charts need Pillow, part of the analyze extra: pip install "
                                "'kalkan[analyze]' (or --no-charts)") from exc
    started = time.perf_counter()
    con = load.connect(req.threads)
    try:
        load.load(con, files, since, until)
        read = time.perf_counter() - started
        opts = reporting.Options(bucket=req.bucket, top=req.top)
        if req.key is not None:
            key = req.key
            opts.name_address = lambda a: pseudonymize(a, key)
            opts.pseudonymized = True
        result = reporting.build(con, files, opts)
    finally:
        con.close()
    result["read_seconds"] = round(read, 3)
    return result


def write(req: Request, result: dict[str, Any]) -> list[str]:
    """Writes the outputs `req` asks for; the paths written (stdout is not a path)."""
    if req.out is None:
        if req.format == "json":
            json.dump(result, sys.stdout, indent=1, ensure_ascii=False)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(markdown.render(document.blocks(result, charts=False)))
        return []
    os.makedirs(req.out, exist_ok=True)
    written: list[str] = []

    def put(name: str, data: bytes) -> None:
        path = os.path.join(req.out or ".", name)
        with open(path, "wb") as f:
            f.write(data)
        written.append(path)

    put("report.json", json.dumps(result, indent=1, ensure_ascii=False).encode("utf-8"))
    if req.format == "json":
        return written
    images: dict[str, bytes] = {}
    if req.charts:
        from kalkan.analyze import charts  # Pillow: imported only when charts are made
        images = charts.render(result)
        for name, png in images.items():
            put(f"{name}.png", png)
    doc = [b for b in document.blocks(result, charts=True)
           if not isinstance(b, document.Chart) or b.name in images]
    put("report.md", markdown.render(doc).encode("utf-8"))
    put("report.html", html.render(doc, images).encode("utf-8"))
    return written
