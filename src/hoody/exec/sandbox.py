"""Where and as whom a worker runs: its files, host uid, cgroups and Deno permissions.

    <root>/                       0711 root   (root: /run/hoody-exec/<instance>)
      p<project>/                 0750 root:<project gid>   read-only for the worker
        runtime.ts import_map.json sdk/hoody.ts
        <name>/<version>/<name>.ts
        spare/s<n>/<name>.ts      a spare worker's folder; the script is linked in
                                  when the spare takes it (pool.py)
      deno/p<project>/            0700 <project uid>        DENO_DIR (V8 code cache)
      run/<worker>/               0700 <project uid>        the worker's unix socket

Each project has its own unprivileged host uid and gid (`EXEC_ID_BASE + project`),
so one project's workers cannot read another's files or sockets. A worker starts in
a new session (its own process group), in its own memory and cpuacct cgroups, with
no supplementary groups and no_new_privs. Deno gets only: net to the hoody API and
the project's allowed hosts (allow-lists: a deny-list was bypassed through 0.0.0.0),
read of its own script folder (the version's, or its spare folder holding only that
script), the SDK and its socket, write of its socket; no env, run, ffi or sys; no
remote modules, no npm, nothing fetched (`--no-remote --cached-only --no-npm`).
The script is loaded by a dynamic import, so it and what it imports need that read
permission (dynamic import graphs are checked; a static graph is not); file
permissions keep a worker out of other projects' folders whatever Deno allows.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hoody.errors import HostError, MissingDependency
from hoody.exec.limits import Limits

__all__ = ["EXEC_ID_BASE", "Cgroup", "Sandbox", "ScriptFiles", "deno_path"]

# Far above the tenants' id ranges (100000 + 65536 per tenant).
EXEC_ID_BASE = 3_900_000_000
PR_SET_NO_NEW_PRIVS = 38
CGROUP_ROOT = Path("/sys/fs/cgroup")


def deno_path() -> Path:
    """The Deno binary the `deno` PyPI package installed next to this Python."""
    for candidate in (Path(sys.executable).parent / "deno", shutil.which("deno")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise MissingDependency("deno is not installed; run `make setup` (it comes from PyPI)")


def project_ids(project: int) -> tuple[int, int]:
    return EXEC_ID_BASE + project, EXEC_ID_BASE + project


@dataclass(frozen=True)
class ScriptFiles:
    """One script version on disk, as its worker sees it."""

    folder: Path  # the version's folder: the worker may read this
    entry: Path  # <folder>/<name>.ts
    project_dir: Path
    display: str  # scripts/<project>/<name>.ts, how its author knows it


class Cgroup:
    """A worker's memory and CPU accounting cgroups (v1 memory + cpuacct + cpu, or v2).

    On v1 the worker also joins a cpu cgroup of its own: it would otherwise keep the
    control plane's, which is weighed ahead of tenants (`hoody.services`)."""

    def __init__(self, parent: str, name: str) -> None:
        self.v2 = not (CGROUP_ROOT / "memory").is_dir()
        if self.v2:
            self.dirs = [CGROUP_ROOT / parent / name]
        else:
            self.dirs = [CGROUP_ROOT / c / parent / name for c in ("memory", "cpuacct", "cpu")]

    def create(self, memory_bytes: int) -> None:
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        if self.v2:
            with contextlib.suppress(OSError):
                (self.dirs[0].parent / "cgroup.subtree_control").write_text("+memory +cpu")
            (self.dirs[0] / "memory.max").write_text(str(memory_bytes))
            (self.dirs[0] / "memory.swap.max").write_text("0")
        else:
            (self.dirs[0] / "memory.limit_in_bytes").write_text(str(memory_bytes))

    @property
    def procs_files(self) -> list[bytes]:
        return [os.fsencode(d / "cgroup.procs") for d in self.dirs]

    def cpu_ns(self) -> int:
        try:
            if self.v2:
                for line in (self.dirs[0] / "cpu.stat").read_text().splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) * 1000
                return 0
            return int((self.dirs[1] / "cpuacct.usage").read_text())
        except (OSError, ValueError):
            return 0

    def reset_peak(self) -> None:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        with contextlib.suppress(OSError):
            (self.dirs[0] / name).write_text("0")

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            return int((self.dirs[0] / name).read_text())
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        try:
            for line in (self.dirs[0] / name).read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """rmdir each cgroup; the kernel refuses while a task is left, so retry briefly."""
        for d in self.dirs:
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def child_setup(procs_files: list[bytes], uid: int, gid: int) -> Callable[[], None]:
    """What runs in the forked child before exec: join the cgroups (as root, so the
    memory charged from the first page on is the worker's), drop to the project's uid
    with no groups, and set no_new_privs. Allocates nothing it does not have to:
    it runs between fork and exec of a threaded process."""

    def setup() -> None:
        pid = b"%d" % os.getpid()
        for path in procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            os._exit(126)

    return setup


class Sandbox:
    """The files and processes of one control plane's Exec, under `root`."""

    def __init__(self, root: Path, deno: Path | None = None) -> None:
        self.root = root
        self.deno = deno or deno_path()
        self.cgroup_parent = f"hoody-exec-{root.name}"
        for d in (root, root / "deno", root / "run"):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o711)
        self._runtime = _asset("deno/runtime.ts")
        self._sdk = _asset("sdk/hoody.ts")
        self._spare_folders: dict[int, set[int]] = {}

    def project_dir(self, project: int) -> Path:
        """The project's bootstrap, SDK, import map and DENO_DIR, made once."""
        uid, gid = project_ids(project)
        pdir = self.root / f"p{project}"
        if not (pdir / "import_map.json").exists():
            _mkdir(pdir, gid)
            _mkdir(pdir / "sdk", gid)
            _write(pdir / "runtime.ts", self._runtime, gid)
            _write(pdir / "sdk" / "hoody.ts", self._sdk, gid)
            imports = {"imports": {"hoody": "./sdk/hoody.ts"}}
            _write(pdir / "import_map.json", json.dumps(imports), gid)
        deno_dir = self.root / "deno" / f"p{project}"
        if not deno_dir.exists():
            # _mkdir accepts one another first request of this project made between
            # the check and here (Stripe delivers its retries at once).
            _mkdir(deno_dir, gid, uid=uid, mode=0o700)
        return pdir

    def script_files(self, project: int, name: str, version: int, source: str) -> ScriptFiles:
        """Write a script version (once) where its project's workers can read it."""
        _, gid = project_ids(project)
        pdir = self.project_dir(project)
        folder = pdir / name / str(version)
        entry = folder / f"{name}.ts"
        if not entry.exists():
            _mkdir(pdir / name, gid)
            _mkdir(folder, gid)
            _write(entry, source, gid)
        return ScriptFiles(folder, entry, pdir, f"scripts/{project}/{name}.ts")

    def spare_folder(self, project: int) -> Path:
        """An empty folder of its own for a spare worker, `spare/s<n>` with the lowest
        free n: reusing names keeps Deno's caches (keyed by path) from growing with
        every spare. Give it back with `free_spare_folder`."""
        _, gid = project_ids(project)
        taken = self._spare_folders.setdefault(project, set())
        n = next(i for i in range(len(taken) + 1) if i not in taken)
        taken.add(n)
        pdir = self.project_dir(project)
        _mkdir(pdir / "spare", gid)
        folder = pdir / "spare" / f"s{n}"
        shutil.rmtree(folder, ignore_errors=True)
        _mkdir(folder, gid)
        return folder

    def take_script(self, folder: Path, files: ScriptFiles) -> ScriptFiles:
        """Link a script version into a spare's folder: the spare then reads that
        script, as a worker started for it reads its version's folder."""
        entry = folder / files.entry.name
        os.link(files.entry, entry)
        return ScriptFiles(folder, entry, files.project_dir, files.display)

    def free_spare_folder(self, project: int, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        self._spare_folders.get(project, set()).discard(int(folder.name[1:]))

    def socket_dir(self, project: int, worker: str) -> Path:
        uid, gid = project_ids(project)
        d = self.root / "run" / worker
        d.mkdir(mode=0o700)
        os.chown(d, uid, gid)
        return d

    def argv(
        self,
        project_dir: Path,
        folder: Path,
        socket: Path,
        limits: Limits,
        net: list[str],
        mode: str,
    ) -> list[str]:
        """`deno run` of the bootstrap; `folder` is the one script folder it may read,
        `mode` "now" (its script follows on stdin) or "spare" (warm up first)."""
        return [
            str(self.deno),
            "run",
            "--quiet",
            "--no-prompt",
            "--no-config",
            "--no-lock",
            "--no-remote",
            "--cached-only",
            "--no-npm",
            f"--import-map={project_dir / 'import_map.json'}",
            f"--allow-net={','.join([*net, f'unix:{socket}'])}",
            f"--allow-read={folder},{project_dir / 'sdk'},{socket}",
            f"--allow-write={socket}",
            f"--v8-flags=--max-old-space-size={limits.heap_mib}",
            str(project_dir / "runtime.ts"),
            str(socket),
            mode,
        ]

    def env(self, project: int) -> dict[str, str]:
        return {
            "DENO_DIR": str(self.root / "deno" / f"p{project}"),
            "DENO_NO_UPDATE_CHECK": "1",
            "NO_COLOR": "1",
            "PATH": "/usr/bin:/bin",
        }

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for c in ("", "memory", "cpuacct", "cpu"):
            with contextlib.suppress(OSError):
                (CGROUP_ROOT / c / self.cgroup_parent).rmdir()


def _asset(name: str) -> str:
    return resources.files("hoody.exec").joinpath(name).read_text()


def _mkdir(path: Path, gid: int, *, uid: int = 0, mode: int = 0o750) -> None:
    path.mkdir(mode=mode, exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(mode)


def _write(path: Path, text: str, gid: int) -> None:
    # A name of this thread's own: two first requests of a project write its files
    # at the same time, and a shared temporary name was renamed away under the other.
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.chown(tmp, 0, gid)
    tmp.chmod(0o640)
    tmp.rename(path)


def check_root() -> None:
    if os.geteuid() != 0:
        raise HostError(
            "Exec runs scripts as unprivileged uids in cgroups, which needs root; "
            "run the control plane as root"
        )
