"""The `cache.query` section's shape and validation, apart from the edge that applies it, so the
config layer checks it without importing the request path (edge/cache_key.py builds its
`QueryPolicy` from what this returns)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueryConfig:
    """`cache.query` as written: parameter names not yet normalized; `default` None means the
    edge's built-in allow-list."""

    default: frozenset[str] | None = None
    paths: tuple[tuple[str, frozenset[str]], ...] = ()
    keep_all: bool = False


def parse_query_config(config: object) -> QueryConfig:
    """Check ``{"default": [...], "paths": {glob: [...]}, "keep_all": bool}`` (every key
    optional, None for all defaults); raises ValueError naming the bad key."""
    if config is None:
        return QueryConfig()
    if not isinstance(config, Mapping):
        raise ValueError(f"query policy: expected a mapping, got {type(config).__name__}")
    for key in config:
        if key not in ("default", "paths", "keep_all"):
            raise ValueError(
                f"query policy: unknown key {key!r} (expected default, paths, keep_all)")
    default = _param_names(config["default"], "default") if "default" in config else None
    per_path: list[tuple[str, frozenset[str]]] = []
    paths = config.get("paths", {})
    if not isinstance(paths, Mapping):
        raise ValueError("query policy: paths: expected a mapping of path glob to parameters")
    for pattern, names in paths.items():
        if not isinstance(pattern, str) or not pattern.startswith(("/", "*")):
            raise ValueError(
                f"query policy: paths: {pattern!r} is not a path glob (must start with / or *)")
        per_path.append((pattern, _param_names(names, f"paths[{pattern!r}]")))
    keep_all = config.get("keep_all", False)
    if not isinstance(keep_all, bool):
        raise ValueError(f"query policy: keep_all: expected true or false, got {keep_all!r}")
    return QueryConfig(default, tuple(per_path), keep_all)


def _param_names(value: object, where: str) -> frozenset[str]:
    # A bare string is iterable too; refusing it catches `default: page` written for `[page]`.
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"query policy: {where}: expected a list of parameter names")
    names: set[str] = set()
    for name in value:
        if not isinstance(name, str) or not name or "&" in name or "=" in name:
            raise ValueError(f"query policy: {where}: {name!r} is not a parameter name")
        names.add(name)
    return frozenset(names)
