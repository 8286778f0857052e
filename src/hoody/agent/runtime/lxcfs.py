"""The node's own lxcfs: each tenant's /proc/meminfo, cpuinfo, stat, loadavg, uptime
(and swaps, diskstats) computed from its own cgroups, so runtimes size their heaps and
worker pools for the tenant's limits instead of the host's 24 GiB and every core.

One lxcfs per node, mounted at `<node run dir>/lxcfs` (never the system's
/var/lib/lxcfs, which belongs to whoever installed it), started with `--enable-cfs`
(CPUs shown = the tenant's CPU quota, rounded up) and `--enable-loadavg`. It runs in a
session of its own, so it outlives an agent restart, as the tenants do (the next agent
finds it by its pidfile and mount); the runtime bind-mounts its files over the
tenant's /proc files when it starts a tenant. When lxcfs is not installed, tenants
start without it and one warning says so.

If lxcfs dies, `ensure` starts a new one: tenants started afterwards use it, while
tenants started before still hold the dead mount (reads fail with ENOTCONN) until
they restart: FUSE mounts cannot be swapped under a running mount namespace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from hoody import proc
from hoody.errors import HostError
from hoody.mountinfo import mounts

__all__ = ["PROC_FILES", "Lxcfs"]

log = logging.getLogger(__name__)

# The /proc files lxcfs computes per cgroup, and which runc allows a mount over.
PROC_FILES = ("cpuinfo", "diskstats", "loadavg", "meminfo", "stat", "swaps", "uptime")


class Lxcfs:
    """lxcfs at `mountpoint`, its pid in `<mountpoint>.pid`, its output in `.log`;
    `binary` defaults to the lxcfs on PATH."""

    RETRY_AFTER = 60.0  # seconds between attempts to start an lxcfs that failed

    def __init__(self, mountpoint: Path, binary: str | None = None) -> None:
        self.mountpoint = Path(mountpoint)
        self.pidfile = self.mountpoint.with_name(self.mountpoint.name + ".pid")
        self.log = self.mountpoint.with_name(self.mountpoint.name + ".log")
        self.binary = binary or shutil.which("lxcfs")
        self._lock = threading.Lock()
        self._warned = False
        self._retry_at = 0.0
        self._child: subprocess.Popen[bytes] | None = None

    def ensure(self) -> tuple[Path, ...]:
        """The host paths of `PROC_FILES` to bind over a tenant's, lxcfs started (or
        restarted) first if it is not serving; () when lxcfs is not installed or will
        not start (logged: tenants then see the host's figures)."""
        with self._lock:
            if self.binary is None:
                self._warn("lxcfs is not installed")
                return ()
            if not self._serving():
                if time.monotonic() < self._retry_at:
                    return ()
                try:
                    self._start()
                except HostError as exc:
                    self._retry_at = time.monotonic() + self.RETRY_AFTER
                    self._warn(f"lxcfs did not start: {exc.message}")
                    return ()
            return tuple(self.mountpoint / "proc" / name for name in PROC_FILES)

    def stop(self) -> None:
        """Stop lxcfs and remove its mount; call once no tenant uses it. Harmless when
        it is not running."""
        with self._lock:
            pid = self._pid()
            if pid:  # on SIGTERM lxcfs unmounts and exits
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                _wait_exit(pid, 5.0)
            if self._child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._child.wait(timeout=1.0)
                self._child = None
            self._unmount()
            self.pidfile.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.mountpoint.rmdir()

    def _warn(self, why: str) -> None:
        """Once per node: after that the operator knows, and tenants still start."""
        if not self._warned:
            log.warning(
                "%s: tenants see the host's memory and CPUs in /proc; run `make setup` or "
                "`apt-get install lxcfs`",
                why,
            )
            self._warned = True

    def _serving(self, every_file: bool = False) -> bool:
        """lxcfs answers at the mountpoint: for meminfo, or for `every_file` of
        PROC_FILES (once, when it starts: a tenant's start failed once on an ENOENT
        for proc/uptime just after lxcfs had answered for meminfo)."""
        if self._child is not None and self._child.poll() is not None:
            self._child = None  # it died while we ran it: reaped, now restart it
        names = PROC_FILES if every_file else ("meminfo",)
        try:  # unmounted: the empty directory beneath (ENOENT)
            for name in names:
                (self.mountpoint / "proc" / name).stat()
            # Dead: ENOTCONN. Asked of statfs, which always reaches the daemon: the
            # kernel answers a stat from its cache for a second after lxcfs died.
            os.statvfs(self.mountpoint)
        except OSError:
            return False
        return True

    def _pid(self) -> int:
        """lxcfs's pid from its pidfile, 0 unless that process is still an lxcfs."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            return 0
        return pid if comm == "lxcfs" else 0

    def _unmount(self) -> None:
        """Detach whatever is mounted at the mountpoint (a live or a dead lxcfs)."""
        if _is_mountpoint(self.mountpoint):
            proc.run(["umount", "--lazy", str(self.mountpoint)], check=False, timeout=30)

    def _start(self) -> None:
        pid = self._pid()
        if pid:  # alive but not answering: replace it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_exit(pid, 5.0)
        self._unmount()
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        assert self.binary is not None
        argv = [self.binary, "--foreground", "--enable-cfs", "--enable-loadavg"]
        argv += ["--pidfile", str(self.pidfile), str(self.mountpoint)]
        try:
            with self.log.open("wb") as out:
                # A session of its own: neither the agent's exit nor a signal to the
                # agent's process group reaches it, since tenants keep using it.
                child = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
                )
        except OSError as exc:
            raise HostError(f"cannot run {self.binary}: {exc}") from exc
        self._child = child
        deadline = time.monotonic() + 10
        while not self._serving(every_file=True):
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                child.wait()
                self._child = None
                self._unmount()
                raise HostError(f"lxcfs at {self.mountpoint} did not come up (its log: {self.log})")
            time.sleep(0.005)
        log.info("lxcfs serving at %s (pid %d)", self.mountpoint, child.pid)


def _is_mountpoint(path: Path) -> bool:
    """From the mount table: a dead FUSE mount fails every stat (ENOTCONN), which
    os.path.ismount reads as "not a mount point"."""
    with contextlib.suppress(OSError):
        return any(mount.target == path for mount in mounts())
    return False


def _wait_exit(pid: int, timeout: float) -> None:
    """Until `pid` has exited (a zombie counts: its parent reaps it) or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
