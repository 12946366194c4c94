"""Telling systemd how the service is doing (sd_notify): READY=1, STOPPING=1, STATUS= and the
watchdog, as datagrams to $NOTIFY_SOCKET; silent when not run by systemd with Type=notify."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("kalkan.notify")


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=serving") as one datagram; False when there is
    no NOTIFY_SOCKET or it cannot be reached (the service carries on either way)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):  # an abstract socket: the name starts with a NUL byte
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("ignoring NOTIFY_SOCKET %r: neither a path nor an abstract socket", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc.strerror or exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """How often to send WATCHDOG=1 (half the unit's WatchdogSec), or None when no watchdog is
    asked for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6
