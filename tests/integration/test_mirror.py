"""The static mirror of a real edge's cache (the demo site crawled through it): every page and
asset written once, links made relative and resolving inside the mirror, an export again writes
nothing new, and the mirror's server answers the pages."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from kalkan.mirror.export import MANIFEST, export
from kalkan.mirror.serve import serve_in_thread
from support import EdgeFactory, Origin, fetch, port_of

_LINK = re.compile(rb"""\b(?:href|src)\s*=\s*["']([^"'<>]*)["']""", re.IGNORECASE)


async def crawl(port: int, start: str = "/", limit: int = 60) -> set[str]:
    """Breadth-first over the site's own links through the edge (twice: the second visit is
    what the cache keeps), as readers would."""
    seen, queue = set(), [start]
    while queue and len(seen) < limit:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        for _ in range(2):
            resp = await fetch(port, path)
        if resp.status != 200:
            continue
        for raw in _LINK.findall(resp.body):
            url = urljoin(f"http://news.example{path}", raw.decode("latin-1")).split("#")[0]
            parts = urlsplit(url)
            if parts.netloc == "news.example" and not parts.path.startswith("/.kalkan"):
                queue.append(parts.path + (f"?{parts.query}" if parts.query else ""))
    return seen


async def test_the_cached_site_exported_works_as_a_static_site(
        origin: Origin, make_edge: EdgeFactory, tmp_path: Path) -> None:
    edge = await make_edge(origin.url)
    visited = await crawl(port_of(edge))
    assert len(visited) > 10
    edge.pipeline.store.flush()
    cache_dir = Path(edge.config.cache.dir or "")
    out = tmp_path / "mirror"
    result = export(cache_dir, out)
    assert result.written > 10
    site = out / "news.example"
    assert (site / "index.html").is_file() and (out / "index.html").is_file()
    html_files = list(site.rglob("*.html"))
    assert len(html_files) > 5
    broken = []
    for page in html_files:
        for raw in _LINK.findall(page.read_bytes()):
            link = raw.decode("latin-1").split("#")[0]
            if not link or "://" in link or link.startswith(("mailto:", "data:")):
                continue   # the live site (not cached), or nothing to fetch
            if not (page.parent / link).resolve().is_file():
                broken.append(f"{page.relative_to(out)} -> {link}")
    assert broken == []
    # Nothing changed: nothing rewritten; the manifest knows every file.
    again = export(cache_dir, out)
    assert again.written == 0 and again.unchanged == result.written
    assert (out / MANIFEST).is_file()
    # The mirror's own server answers the front page and a stylesheet with their types.
    server, thread = serve_in_thread(out)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with await asyncio.to_thread(urllib.request.urlopen, f"{base}/news.example/") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        css = next(site.rglob("*.css")).relative_to(out).as_posix()
        with await asyncio.to_thread(urllib.request.urlopen, f"{base}/{css}") as r:
            assert r.headers["Content-Type"].startswith("text/css")
    finally:
        server.shutdown()
        thread.join(5)
