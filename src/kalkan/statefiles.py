"""Files in the state directory: what is left behind by a write that was cut short (SIGKILL,
a full disk) is never completed, so it is removed when the owner next loads its file."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("kalkan.state")


def remove_leftovers(directory: Path, pattern: str) -> None:
    """Remove the temp files matching `pattern` in `directory`; say what cannot be removed."""
    try:
        leftovers = list(directory.glob(pattern))
    except OSError:
        return
    for tmp in leftovers:
        try:
            tmp.unlink()
        except OSError as exc:
            log.warning("cannot remove leftover temp file %s: %s", tmp, exc.strerror or exc)
