"""What stops `kalkan serve` from starting, as one line that names the problem and the fix:
listeners that cannot be bound, and paths the edge will write that it cannot write."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from kalkan.config import Config


class StartupError(Exception):
    """The edge cannot start; the message is the one line printed (problem, then the fix)."""


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_problem(key: str, host: str, port: int, exc: OSError) -> StartupError:
    """A failed bind in words: which key, which address, why, and what to do."""
    where = f"cannot listen on {_fmt(host, port)} ({key})"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"{where}: the address is already in use; stop what holds it "
                            f"(`ss -ltnp 'sport = :{port}'` names it) or choose another port")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StartupError(f"{where}: permission denied; ports below 1024 need root (with "
                            "`user:` to drop it after binding) or CAP_NET_BIND_SERVICE (the "
                            "shipped systemd unit grants it), or choose a port above 1023")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"{where}: {host} is not an address of this machine; use one it "
                            "has (`ip addr`), 0.0.0.0 or [::]")
    if isinstance(exc, socket.gaierror):
        return StartupError(f"{where}: cannot resolve {host!r} ({exc.strerror}); use an IP "
                            "address")
    return StartupError(f"{where}: {exc.strerror or exc}")


def bind_listener(key: str, host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening-ready bound socket, made before privileges are dropped (ports 80/443).
    `::` takes IPv4 too, as the edge's own listeners do. `reuse_port`: one of several sockets
    on the port (one per worker), the kernel spreading connections over them."""
    try:
        addr: tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]
        if host == "::":
            family, addr = socket.AF_INET6, ("::", port)
        else:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE)[0]
            family, addr = info[0], info[4]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise bind_problem(key, host, port, exc) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind(addr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise bind_problem(key, host, port, exc) from None
    return sock


def relative_paths(config: Config) -> list[tuple[str, str]]:
    """(key, path) of every relative path the edge writes, state_dir first."""
    paths = [("state_dir", config.state_dir)]
    if config.cache.enabled and config.cache.dir:
        paths.append(("cache.dir", config.cache.dir))
    if config.access_log.path and config.access_log.path != "-":
        paths.append(("access_log.path", config.access_log.path))
    return [(k, p) for k, p in paths if not Path(p).is_absolute()]


def check_working_directory(config: Config) -> None:
    """Relative paths from `/` (how a service starts) would land in /var itself: refuse."""
    if Path.cwd() != Path("/"):
        return
    found = relative_paths(config)
    if found:
        key, path = found[0]
        raise StartupError(
            f"{key} {path!r} is relative and the working directory is /, so it would be "
            f"/{path}: run `kalkan --service serve` (absolute defaults: /var/lib/kalkan, "
            "/var/cache/kalkan, /var/log/kalkan) or set absolute paths in the config")


def _writable_dir(key: str, directory: Path) -> None:
    """Create `directory` if need be and prove a file can be made in it. A read-only or full
    disk is not refused (the edge starts and keeps that state in memory, saying so): those are
    faults that can come and go during an attack, not a setup mistake."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kalkan-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            return
        fix = (f"create it and give it to the user kalkan runs as (uid {os.geteuid()}): "
               f"`install -d -o {_user_name()} {directory}`")
        if exc.errno == errno.ENOTDIR or (directory.exists() and not directory.is_dir()):
            fix = "a file is in the way: point the key at a directory"
        raise StartupError(f"{key}: cannot write in {directory} ({exc.strerror}); {fix}") \
            from None


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def check_writable(config: Config) -> None:
    """The state directory, the cache directory and the access log's directory can be written
    by this process (run after privileges are dropped)."""
    _writable_dir("state_dir", Path(config.state_dir))
    if config.cache.enabled and config.cache.dir:
        _writable_dir("cache.dir", Path(config.cache.dir))
    log = config.access_log.path
    if log and log != "-":
        _writable_dir("access_log.path", Path(log).parent)
        if Path(log).exists() and not os.access(log, os.W_OK):
            raise StartupError(f"access_log.path: cannot write {log} (permission denied); "
                               f"give it to the user kalkan runs as: `chown {_user_name()} "
                               f"{log}`")
