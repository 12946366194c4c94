"""Fixtures that start real servers on loopback: the demo origin and Kalkan edges in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kalkan.config import Config, TLSConfig
from kalkan.edge.app import Edge
from support import EdgeFactory, Origin, start_origin


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    """The demo newsroom site, with a small page cost so tests run quickly."""
    handle = await start_origin()
    yield handle
    await handle.site.stop()


@pytest.fixture
async def make_edge(tmp_path: Path) -> AsyncIterator[EdgeFactory]:
    """Start Kalkan edges (stopped at the end); keyword args set config sections."""
    edges: list[Edge] = []

    async def factory(origin_url: str, *, cache_dir: str | None = "default",
                      state_dir: str | None = None, **sections: dict[str, Any]) -> Edge:
        config = Config()
        config.listen = ["127.0.0.1:0"]
        config.admin.listen = "127.0.0.1:0"
        config.access_log.path = str(tmp_path / "access.log")
        config.origin.url = origin_url
        config.state_dir = state_dir or str(tmp_path / "state")  # several edges: one each
        config.defense.enabled = False  # cache and connection tests; defence tests turn it on
        # Fits under this machine's open-files hard limit, so no edge warns about it.
        config.limits.max_connections = 4096
        config.cache.dir = str(tmp_path / "cache") if cache_dir == "default" else cache_dir
        for section, values in sections.items():
            target = getattr(config, section)
            if target is None and section == "tls":  # optional section: tls={"certificates": ...}
                target = config.tls = TLSConfig()
            for key, value in values.items():
                if not hasattr(target, key):
                    raise AttributeError(f"{section}.{key}")
                setattr(target, key, value)
        edge = Edge(config)
        await edge.start()
        edges.append(edge)
        return edge

    yield factory
    for edge in edges:
        if not edge._stopped.is_set():
            await edge.stop()
