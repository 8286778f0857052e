"""The mount namespace the runtime starts tenants from: the host's, without the tenants.

`runc run` makes each container's mount namespace as a copy of its caller's, then walks
it (making it a slave) and tears all of it down again after pivot_root: every mount the
caller sees is copied, walked and unmounted once per start, under the kernel's global
namespace lock. A node's own tenants are most of a host's mounts (each has its rootfs
mount and its network namespace pin), so the cost of a start grew with the tenants
registered: with 4,000 extra mounts (2,000 tenants) one `runc run` took 116 ms where it
took 47 ms without them (sequential copies on this 2-core VM), and a stopped tenant's
wake waited on it.

So the runtime runs inside a namespace of its own (`LaunchNamespace`): a private copy of
the host's, made once, keeping only /, /proc, /sys, /dev and the mounts the paths the
runtime uses lie on. Every tenant mount and network namespace pin is gone from it, and
so is every other mount (another node's pool held here would keep its loop device busy
after that node removed it). For each start the tenant's rootfs is cloned into it
(open_tree + move_mount: the one tenant mount `runc run` needs) and detached again once
the container runs in its own copy. What a tenant sees is unchanged.

Being private, the copy sees no mount the host makes later. The one the runtime needs
is lxcfs's: `path(watch=...)` makes the namespace again when that mount changed (lxcfs
restarted). The launcher's child opens the tenant's netns before it enters this one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from hoody.errors import HostError
from hoody.mountinfo import parse
from hoody.syscalls import (
    CLONE_FS,
    CLONE_NEWNS,
    MNT_DETACH,
    MS_PRIVATE,
    MS_REC,
    clone_tree,
    mount,
    move_mount,
    on_own_thread,
    setns,
    umount,
    unshare,
)

__all__ = ["LaunchNamespace", "mounts_to_drop"]

T = TypeVar("T")


# Whole subtrees every process expects: procfs (and /proc/<pid>/fd paths into the
# agent), sysfs with the cgroup hierarchies runc manages, devices.
_KEPT_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))
# Where programs and their libraries come from, on hosts where these are mounts.
_SYSTEM = (Path("/usr"), Path("/bin"), Path("/sbin"), Path("/lib"), Path("/lib64"), Path("/etc"))


def mounts_to_drop(mountinfo: str, reach: tuple[Path, ...]) -> list[Path]:
    """The mount points, deepest first, a launch namespace drops from the copy that
    `mountinfo` (/proc/<pid>/mountinfo text) describes: all but /, /proc, /sys, /dev
    with everything under them, and the mounts a path in `reach` lies on (each with
    the mounts above it). A point mounted over twice is listed twice."""
    points = [mount.target for mount in parse(mountinfo)]
    wanted = (*reach, *_SYSTEM)
    keep = {
        point
        for point in points
        if point == Path("/")
        or any(point.is_relative_to(tree) for tree in _KEPT_TREES)
        or any(path.is_relative_to(point) for path in wanted)
    }
    drop = [point for point in points if point not in keep]
    return sorted(drop, key=lambda p: len(p.parts), reverse=True)


class LaunchNamespace:
    """A lean private copy of the host's mount namespace, held open by this process.

    `reach`: the paths the runtime uses in it (its state and bundle directories, its
    binaries, the init and lxcfs's files a tenant gets).
    """

    def __init__(self, reach: tuple[Path, ...]) -> None:
        self.reach = reach
        self._lock = threading.Lock()
        self._fd = -1
        self._watched: tuple[Path, int] | None = None

    def path(self, watch: Path | None = None) -> Path:
        """The namespace as a path another process can open (`nsenter --mount=`), made
        now if it does not exist yet, or again if the mount at `watch` is not the one
        it was made with."""
        with self._lock:
            seen = (watch, _device(watch)) if watch is not None else None
            if self._fd < 0 or (seen is not None and seen != self._watched):
                self._close()
                self._fd = self._make()
                self._watched = seen
            return Path(f"/proc/{os.getpid()}/fd/{self._fd}")

    @contextlib.contextmanager
    def holding(self, rootfs: Path) -> Iterator[None]:
        """The mount at `rootfs` (on the host) shows at the same path in the namespace
        while the block runs; the caller has called `path` first."""
        tree = clone_tree(rootfs)
        try:
            self._inside(lambda: move_mount(tree, rootfs))
        except OSError as exc:
            raise HostError(
                f"could not show {rootfs} to the runtime's mount namespace: {exc.strerror}"
            ) from exc
        finally:
            os.close(tree)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # the namespace was made again meanwhile
                self._inside(lambda: umount(rootfs, MNT_DETACH))

    def close(self) -> None:
        with self._lock:
            self._close()

    def mountinfo(self) -> str:
        """The namespace's mount table (for tests and `hoody node` diagnostics)."""

        def read() -> str:
            with open("/proc/thread-self/mountinfo") as f:
                return f.read()

        return self._inside(read)

    # --- inside ---------------------------------------------------------------------

    def _make(self) -> int:
        def body() -> int:
            unshare(CLONE_NEWNS, "a mount namespace for the runtime")
            # Private: nothing mounted or unmounted here reaches the host, or back.
            mount("none", Path("/"), None, MS_REC | MS_PRIVATE, None)
            reach = tuple(path.resolve() for path in self.reach)
            with open("/proc/thread-self/mountinfo") as f:
                drop = mounts_to_drop(f.read(), reach)
            for point in drop:
                with contextlib.suppress(OSError):  # gone with a mount above it
                    umount(point, MNT_DETACH)
            return os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)

        try:
            return on_own_thread(body)
        except OSError as exc:
            raise HostError(
                f"could not make the runtime's mount namespace: {exc.strerror} ({exc.filename}); "
                "the agent must run as root"
            ) from exc

    def _inside(self, fn: Callable[[], T]) -> T:
        fd = self._fd

        def body() -> T:
            # setns into a mount namespace needs a thread with its own root and cwd.
            unshare(CLONE_FS, "the thread's filesystem context")
            setns(fd, CLONE_NEWNS, "the runtime's mount namespace")
            return fn()

        return on_own_thread(body)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._watched = None


def _device(path: Path) -> int:
    try:
        return os.stat(path).st_dev
    except OSError:
        return -1
