"""The few Linux syscalls the standard library lacks on Python 3.11: mount, setns, unshare.

Each raises OSError with the errno and the path it was about, like the os module does.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

__all__ = [
    "CLONE_NEWNET",
    "MNT_DETACH",
    "MS_BIND",
    "MS_NOATIME",
    "MS_REMOUNT",
    "mount",
    "setns",
    "umount",
    "unshare",
]

MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MNT_DETACH = 2
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong]
_libc.mount.argtypes += [ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), what)


def mount(source: str, target: Path, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc.mount(
        source.encode(),
        os.fsencode(target),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data is not None else None,
    )
    if rc != 0:
        raise _fail(str(target))


def umount(target: Path, flags: int = 0) -> None:
    if _libc.umount2(os.fsencode(target), flags) != 0:
        raise _fail(str(target))


def setns(fd: int, nstype: int, what: str) -> None:
    """Move the *calling thread* into the namespace open at `fd`."""
    if _libc.setns(fd, nstype) != 0:
        raise _fail(what)


def unshare(flags: int, what: str) -> None:
    """Give the *calling thread* new namespaces (only those per-thread, like the netns)."""
    if _libc.unshare(flags) != 0:
        raise _fail(what)
