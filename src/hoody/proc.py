"""The one way hoody runs a subprocess: argv only, never a shell string.

`run` raises CommandFailed (argv, exit code, stdout, stderr) on a non-zero exit and
MissingDependency when the program is not installed; a timeout or a cancel kills the
process it started, so nothing outlives the call.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hoody.errors import CommandFailed, HostError, MissingDependency

__all__ = ["Result", "require", "run"]

# Debian package that provides each program, for the "install it" hint.
_PACKAGES = {
    "runc": "runc",
    "crun": "crun",
    "btrfs": "btrfs-progs",
    "mkfs.btrfs": "btrfs-progs",
    "nft": "nftables",
    "ip": "iproute2",
    "bridge": "iproute2",
    "debootstrap": "debootstrap",
    "losetup": "mount",
    "mount": "mount",
    "umount": "mount",
    "tar": "tar",
}


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def require(program: str) -> str:
    """Return the absolute path of `program` or raise MissingDependency naming the package."""
    path = shutil.which(program)
    if path is None:
        package = _PACKAGES.get(program, program)
        raise MissingDependency(
            f"`{program}` is not installed; run `make setup` or `apt-get install {package}`"
        )
    return path


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float | None = 120.0,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Result:
    """Run argv to completion and return its output as text.

    Raises CommandFailed when `check` and the exit code is non-zero, MissingDependency
    when argv[0] is not installed, HostError on timeout (after killing the process).
    """
    args = [str(a) for a in argv]
    args[0] = require(args[0]) if "/" not in args[0] else args[0]
    data = input.encode() if isinstance(input, str) else input
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=preexec_fn,
        )
    except FileNotFoundError as exc:
        raise MissingDependency(f"`{args[0]}` could not be started: {exc}") from exc
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise HostError(f"`{' '.join(args)}` did not finish within {timeout} s") from exc
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    result = Result(
        args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    )
    if check and proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, result.stdout, result.stderr)
    return result
