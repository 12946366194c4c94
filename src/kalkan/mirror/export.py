"""`kalkan mirror export DIR`: the pages, assets and feeds in the cache directory written as a
static site. Every cached 200 answer to a GET becomes one file; a path ending in `/` (or without
an extension) becomes `index.html` (`index.xml`, ... by its type) in its directory, a query
becomes part of the file name. Links in HTML (href, src, action, srcset, poster, inline
`url()`) and in CSS (`url()`, `@import`) to cached pages of the site are made relative to the
page, so the mirror works from any host and any sub-path; links to what is not cached point at
the live site. Incremental: a file is rewritten only when its content changed (a manifest keeps
their hashes), and nothing the cache has forgotten is removed from the mirror."""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import logging
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from kalkan.edge.store import Entry
from kalkan.statefiles import write_atomically

log = logging.getLogger("kalkan.mirror")

MANIFEST = ".kalkan-mirror.json"
_TYPE_EXT = {"text/html": ".html", "application/xhtml+xml": ".html", "text/css": ".css",
             "application/rss+xml": ".xml", "application/atom+xml": ".xml",
             "application/xml": ".xml", "text/xml": ".xml", "application/json": ".json",
             "text/plain": ".txt", "application/javascript": ".js", "text/javascript": ".js",
             "image/svg+xml": ".svg", "image/png": ".png", "image/jpeg": ".jpg",
             "image/gif": ".gif", "image/webp": ".webp", "image/x-icon": ".ico",
             "image/vnd.microsoft.icon": ".ico", "font/woff2": ".woff2", "font/woff": ".woff"}
_HTML_LINK = re.compile(
    rb"""(?P<pre>\b(?:href|src|action|poster)\s*=\s*)(?P<q>["'])(?P<url>[^"'<>]*)(?P=q)""",
    re.IGNORECASE)
_SRCSET = re.compile(rb"""(?P<pre>\bsrcset\s*=\s*)(?P<q>["'])(?P<url>[^"'<>]*)(?P=q)""",
                     re.IGNORECASE)
_CSS_URL = re.compile(rb"""(?P<pre>url\(\s*)(?P<q>["']?)(?P<url>[^"')\s]*)(?P=q)""",
                      re.IGNORECASE)
_CSS_IMPORT = re.compile(rb"""(?P<pre>@import\s+)(?P<q>["'])(?P<url>[^"']*)(?P=q)""",
                         re.IGNORECASE)


@dataclass
class Page:
    url: str            # scheme://host/target, as the reader asked for it
    kind: str           # media type, lower case, no parameters
    body: bytes
    file: str = ""      # where it goes in the mirror (posix, relative)


@dataclass
class ExportResult:
    written: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = field(default_factory=dict)   # reason -> entries

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def read_cache(cache_dir: Path, result: ExportResult) -> dict[str, Page]:
    """The cache directory's answers worth mirroring, by URL (one variant each: the one
    without a content encoding, else a gzip one decoded)."""
    pages: dict[str, Page] = {}
    for sub in sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []:
        if len(sub.name) != 2 or not sub.is_dir():
            continue
        for path in sorted(sub.iterdir()):
            if path.name.endswith(".tmp"):
                continue
            try:
                entry = Entry.from_bytes(path.read_bytes(), path.name)
            except (OSError, ValueError):
                result.skip("unreadable cache file")
                continue
            page = _page(entry, result)
            if page is not None and (page.url not in pages or page.kind == "text/html"):
                pages[page.url] = page
    return pages


def _page(entry: Entry, result: ExportResult) -> Page | None:
    method, _, url = entry.key.partition(" ")
    if method != "GET" or not url.startswith(("http://", "https://")):
        result.skip("not a GET")
        return None
    if entry.status != 200:
        result.skip(f"status {entry.status}")
        return None
    headers = {k.lower(): v for k, v in entry.headers}
    kind = headers.get(b"content-type", b"application/octet-stream").split(b";")[0]
    body = entry.body
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding == b"gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            result.skip("bad gzip")
            return None
    elif encoding != b"identity":
        result.skip(f"content encoding {encoding.decode('latin-1')}")
        return None
    return Page(url, kind.strip().lower().decode("latin-1"), body)


def file_for(url: str, kind: str) -> str:
    """Where `url` goes in the mirror (host directory first, so several sites can share one)."""
    parts = urlsplit(url)
    path = posixpath.normpath(parts.path or "/")
    if path in (".", "/"):
        path = "/"
    if parts.path.endswith("/") and path != "/":
        path += "/"
    name = path.lstrip("/")
    ext = _TYPE_EXT.get(kind, "")
    _stem, dot, suffix = posixpath.basename(name).rpartition(".")
    if not name or name.endswith("/") or not dot or not suffix:
        name = posixpath.join(name, "index" + (ext or ".html"))
    if parts.query:
        stem, dot, suffix = name.rpartition(".")
        digest = hashlib.sha256(parts.query.encode()).hexdigest()[:12]
        name = f"{stem}.q{digest}.{suffix}" if dot else f"{name}.q{digest}"
    host = parts.netloc.replace(":", "_")
    return f"{host}/{name}"


def _rewrite(page: Page, pages: dict[str, Page]) -> bytes:
    """`page`'s body with links to mirrored pages made relative to it."""
    here = posixpath.dirname(page.file)

    def link(raw: bytes) -> bytes:
        text = html.unescape(raw.decode("latin-1").strip())   # "&amp;" in an attribute
        if not text or text.startswith(("#", "data:", "mailto:", "javascript:", "tel:")):
            return raw
        absolute, _, fragment = urljoin(page.url, text).partition("#")
        target = pages.get(absolute)
        if target is None:
            # Not in the mirror: the live site (a link only the origin can answer).
            return absolute.encode("latin-1") + (b"#" + fragment.encode() if fragment else b"")
        relative = posixpath.relpath(target.file, here or ".")
        return relative.encode("latin-1") + (b"#" + fragment.encode("latin-1")
                                             if fragment else b"")

    def attr(m: re.Match[bytes]) -> bytes:
        return m.group("pre") + m.group("q") + link(m.group("url")) + m.group("q")

    def srcset(m: re.Match[bytes]) -> bytes:
        items = []
        for item in m.group("url").split(b","):
            bits = item.strip().split(None, 1)
            if bits:
                items.append(b" ".join([link(bits[0]), *bits[1:]]))
        return m.group("pre") + m.group("q") + b", ".join(items) + m.group("q")

    body = page.body
    if page.kind in ("text/html", "application/xhtml+xml"):
        body = _HTML_LINK.sub(attr, body)
        body = _SRCSET.sub(srcset, body)
        body = _CSS_URL.sub(attr, body)
    elif page.kind == "text/css":
        body = _CSS_URL.sub(attr, body)
        body = _CSS_IMPORT.sub(attr, body)
    return body


def export(cache_dir: Path, out: Path) -> ExportResult:
    """Write (or bring up to date) the mirror of `cache_dir` in `out`."""
    result = ExportResult()
    pages = read_cache(cache_dir, result)
    for page in pages.values():
        page.file = file_for(page.url, page.kind)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    try:
        manifest: dict[str, str] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    for page in sorted(pages.values(), key=lambda p: p.file):
        body = _rewrite(page, pages)
        digest = hashlib.sha256(body).hexdigest()
        target = out / page.file
        if manifest.get(page.file) == digest and target.exists():
            result.unchanged += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, body, mode=0o644)
        os.chmod(target, 0o644)
        manifest[page.file] = digest
        result.written += 1
    write_atomically(manifest_path, json.dumps(manifest, indent=0, sort_keys=True).encode(),
                     mode=0o644)
    _index(out, pages)
    return result


def _index(out: Path, pages: dict[str, Page]) -> None:
    """A top-level index.html sending a visitor to the (first) site's front page."""
    fronts = sorted(p.file for p in pages.values()
                    if urlsplit(p.url).path in ("", "/") and p.kind == "text/html")
    if not fronts:
        return
    body = ("<!doctype html><meta charset=utf-8><title>Mirror</title>"
            f'<meta http-equiv="refresh" content="0; url={fronts[0]}">'
            f'<p><a href="{fronts[0]}">{fronts[0].split("/")[0]}</a></p>\n').encode()
    write_atomically(out / "index.html", body, mode=0o644)
