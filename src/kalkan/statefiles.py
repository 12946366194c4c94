"""Files in the state directory: what is left behind by a write that was cut short (SIGKILL,
a full disk) is never completed, so it is removed when the owner next loads its file; secrets
made on first start (the admin token, the access log's pseudonym key) are written 0600."""

from __future__ import annotations

import logging
import os
import secrets
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


def load_or_create_secret(path: Path, what: str, otherwise: str) -> str:
    """A random secret kept in the state directory (0600), made on first start. A damaged or
    unwritable state directory gives a secret for this run only, said in one line that names
    `what` it is and what to do `otherwise`."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.error("%s file %s unreadable (%s); using a new one", what, path,
                  getattr(exc, "strerror", None) or exc)
    secret = secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, (secret + "\n").encode())
    except OSError as exc:
        log.error("cannot write %s file %s (%s); it lives in memory only (%s)", what, path,
                  exc.strerror or exc, otherwise)
    return secret


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """`data` to `path` through a temp file (created with `mode`) and a rename: a reader sees
    the old file or the new one, never half of one; a failed write leaves no temp file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
