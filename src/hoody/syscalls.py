"""The few Linux syscalls the standard library lacks on Python 3.11: mount, setns,
unshare (and a thread to call the last two on), and the new mount API (open_tree,
mount_setattr, fsopen/fsconfig/fsmount, move_mount) that idmapped mounts need;
util-linux 2.38 cannot make those.

Each raises OSError with the errno and the path it was about, like the os module does.
The new-API calls go through syscall(2) by number: glibc 2.36 has no wrappers. Their
numbers are the same on every architecture (the unified table from 5.x on).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "CLONE_FS",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "MNT_DETACH",
    "MOUNT_ATTR_IDMAP",
    "MOUNT_ATTR_NOATIME",
    "MOUNT_ATTR_RDONLY",
    "MS_BIND",
    "MS_NOATIME",
    "MS_PRIVATE",
    "MS_REC",
    "MS_REMOUNT",
    "clone_tree",
    "fs_mount",
    "idmapped_tree",
    "in_netns",
    "mount",
    "move_mount",
    "on_own_thread",
    "setns",
    "umount",
    "unshare",
]

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
CLONE_FS = 0x200
CLONE_NEWNS = 0x20000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_IDMAP = 0x100000
_MOUNT_ATTR__ATIME = 0x70

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_RECURSIVE = 0x8000
_AT_FDCWD = -100
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_FSOPEN_CLOEXEC = 1
_FSMOUNT_CLOEXEC = 1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_SET_FD = 5
_FSCONFIG_CMD_CREATE = 6

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong]
_libc.mount.argtypes += [ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


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


T = TypeVar("T")


def on_own_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on a fresh thread and return its result (or raise its exception): for
    `setns`/`unshare`, which move only the calling thread, so that none of the
    process's other threads ever runs in the namespace."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name="hoody-ns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def in_netns(path: Path, fn: Callable[[], T]) -> T:
    """fn() on a fresh thread inside the network namespace pinned at `path`; threads
    and processes fn starts inherit it."""

    def body() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd, CLONE_NEWNET, str(path))
        finally:
            os.close(fd)
        return fn()

    return on_own_thread(body)


def _syscall(number: int, *args: object, what: str) -> int:
    rc = int(_libc.syscall(ctypes.c_long(number), *args))
    if rc < 0:
        raise _fail(what)
    return rc


def clone_tree(source: Path) -> int:
    """A detached copy of the mount at `source` (that mount alone, not those below it),
    as a close-on-exec fd to attach with `move_mount`, in this mount namespace or
    another. Closing an fd never attached frees it."""
    return _syscall(
        _SYS_OPEN_TREE,
        ctypes.c_int(_AT_FDCWD),
        os.fsencode(source),
        ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC),
        what=f"open_tree {source}",
    )


def idmapped_tree(source: Path, userns_fd: int, attrs: int = 0) -> int:
    """A detached copy of the mount at `source` whose file owners are seen through the
    id mapping of the user namespace open at `userns_fd` (a file owned by id N on disk
    shows as whatever N maps to there), with `attrs` (MOUNT_ATTR_*) set as well.

    Returns the mount's fd (close-on-exec): attach it with `move_mount`, or hand it to
    an overlay as a lower layer with `fs_mount`. Closing an fd never attached frees it.
    """
    fd = clone_tree(source)
    try:
        # Changing the atime mode needs the whole atime field cleared first.
        clear = _MOUNT_ATTR__ATIME if attrs & _MOUNT_ATTR__ATIME else 0
        attr = _MountAttr(attr_set=MOUNT_ATTR_IDMAP | attrs, attr_clr=clear, userns_fd=userns_fd)
        _syscall(
            _SYS_MOUNT_SETATTR,
            ctypes.c_int(fd),
            b"",
            ctypes.c_uint(0x1000),  # AT_EMPTY_PATH: the mount at fd itself
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
            what=f"mount_setattr {source}",
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def fs_mount(
    fstype: str,
    strings: dict[str, str],
    fds: dict[str, int] | None = None,
    flags: tuple[str, ...] = (),
    attrs: int = 0,
    what: str = "",
) -> int:
    """A new `fstype` filesystem (fsopen → fsconfig → fsmount), detached; returns its
    mount fd for `move_mount`. `fds` are fd-valued options (overlay's "lowerdir+"
    takes a mount fd, so a detached idmapped tree can be a lower layer)."""
    fsfd = _syscall(
        _SYS_FSOPEN, fstype.encode(), ctypes.c_uint(_FSOPEN_CLOEXEC), what=f"fsopen {fstype}"
    )
    try:
        for key, fd in (fds or {}).items():
            _syscall(
                _SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(_FSCONFIG_SET_FD),
                key.encode(), None, ctypes.c_int(fd), what=f"{what}: {key}",
            )  # fmt: skip
        for key, value in strings.items():
            _syscall(
                _SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(_FSCONFIG_SET_STRING),
                key.encode(), value.encode(), ctypes.c_int(0), what=f"{what}: {key}={value}",
            )  # fmt: skip
        for key in flags:
            _syscall(
                _SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(_FSCONFIG_SET_FLAG),
                key.encode(), None, ctypes.c_int(0), what=f"{what}: {key}",
            )  # fmt: skip
        _syscall(
            _SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(_FSCONFIG_CMD_CREATE),
            None, None, ctypes.c_int(0), what=what or f"create {fstype}",
        )  # fmt: skip
        return _syscall(
            _SYS_FSMOUNT, ctypes.c_int(fsfd), ctypes.c_uint(_FSMOUNT_CLOEXEC),
            ctypes.c_uint(attrs), what=what or f"fsmount {fstype}",
        )  # fmt: skip
    finally:
        os.close(fsfd)


def move_mount(fd: int, target: Path) -> None:
    """Attach the detached mount at `fd` on `target`."""
    _syscall(
        _SYS_MOVE_MOUNT,
        ctypes.c_int(fd),
        b"",
        ctypes.c_int(_AT_FDCWD),
        os.fsencode(target),
        ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
        what=str(target),
    )
