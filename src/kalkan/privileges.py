"""Giving up root after the listeners are bound: the `user` / `group` of the config, for an edge
started as root by hand (the systemd unit starts unprivileged with CAP_NET_BIND_SERVICE)."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path


class PrivilegeError(Exception):
    """Cannot become the configured user; the message says why and what to do."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def account(user: str, group: str | None = None) -> Account:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"user: no user {user!r} on this machine "
                             f"(create it: useradd --system {user})") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"group: no group {group!r} on this machine") from None
    return Account(entry.pw_name, entry.pw_uid, gid)


def needs_drop(acct: Account) -> bool:
    """True when running as root and the account is someone else. Not root and already the
    account: nothing to do. Not root and another account: cannot become it."""
    if os.geteuid() == 0:
        return acct.uid != 0
    if os.geteuid() == acct.uid:
        return False
    raise PrivilegeError(f"user: {acct.name} is set but kalkan runs as uid {os.geteuid()}, not "
                         "root, so it cannot switch: start it as root or remove `user`")


def prepare_dir(path: Path, acct: Account) -> None:
    """Make a directory the dropped process will write (state, cache, log) and give it to the
    account, if it does not exist yet; an existing one is left as the admin made it."""
    if path.exists():
        return
    missing = [path]
    while not missing[-1].parent.exists():
        missing.append(missing[-1].parent)
    path.mkdir(mode=0o750, parents=True)
    for made in missing:
        os.chown(made, acct.uid, acct.gid)


def drop(acct: Account) -> None:
    """Become the account for good: supplementary groups, group, then user (in that order: once
    the user is changed the rest is no longer allowed)."""
    try:
        os.initgroups(acct.name, acct.gid)
        os.setresgid(acct.gid, acct.gid, acct.gid)
        os.setresuid(acct.uid, acct.uid, acct.uid)
    except OSError as exc:
        raise PrivilegeError(f"user: cannot switch to {acct.name}: {exc.strerror}") from None
    if os.geteuid() == 0 or (os.getegid() == 0 and acct.gid != 0):
        raise PrivilegeError(f"user: still root after switching to {acct.name}")
