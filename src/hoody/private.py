"""State on disk is its owner's alone: umask 077, 0700 directories, 0600 files.

The control-plane database holds claim signing keys and token hashes, the node's its
tenants, the token files drive an agent or the API: a local user (or a process that
escaped a tenant) who reads them forges sessions or runs the fleet. So every hoody
process starts with umask 077 (`hoody` does it first thing), and the paths that matter
get their modes explicitly too, since a library caller (tests, an embedding program)
may run with another umask and a node created by an older hoody may have looser ones.

The one exception is the way down to each tenant's root filesystem, which the tenant's
own root (an unprivileged host uid) walks when the runtime sets the container up: the
directories on that way are 0711 (enter, never list), and the last one is the tenant's
own (0700, owned by its host root), so no other uid reaches into it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["UMASK", "private_dir", "private_file", "set_umask", "walk_through_dir"]

UMASK = 0o077


def set_umask() -> None:
    """Make this process create what it creates for its owner only."""
    os.umask(UMASK)


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter (0700); made if missing."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def walk_through_dir(path: Path) -> Path:
    """`path` as a directory others may pass through but not list (0711)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o711)
    path.chmod(0o711)
    return path


def private_file(path: Path) -> Path:
    """`path` as a file only its owner can read or write (0600); created empty if
    missing (so SQLite, which gives its -wal and -shm files the database's mode,
    starts from a private file)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    path.chmod(0o600)
    return path
