"""The one way hoody runs a subprocess: argv only, never a shell string.

`run` raises CommandFailed (argv, exit code, stdout, stderr) on a non-zero exit and
MissingDependency when the program is not installed; a timeout or a cancel kills the
process it started, so nothing outlives the call.

Two streaming forms follow the same rules for data too large to hold in memory
(template versions sent between nodes): `stream_out` yields a command's stdout in
chunks, `run_fed` feeds a command's stdin from an iterable.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from hoody.errors import CommandFailed, HostError, MissingDependency

__all__ = ["Result", "exited_within", "require", "run", "run_fed", "stop", "stream_out", "wait"]

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
    "nsenter": "util-linux",
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


def exited_within(pidfd: int, timeout: float) -> bool:
    """Whether the process behind `pidfd` exits within `timeout` s. A pidfd turns
    readable the moment its process exits, child of ours or not, reaped or not."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def wait(proc: subprocess.Popen[Any], timeout: float | None = None) -> int:
    """Wait for `proc` to exit and return its exit code; raise subprocess.TimeoutExpired
    after `timeout` s (the process is left running: the caller decides its fate).

    Popen.wait(timeout) polls with sleeps that double up to 50 ms, so a command that
    takes 33 ms is seen done only at 63 ms; a pidfd says at once.
    """
    if proc.returncode is None and timeout is not None:
        try:
            fd = os.pidfd_open(proc.pid)
        except ProcessLookupError:  # already reaped by someone: Popen.wait copes
            return proc.wait()
        try:
            if not exited_within(fd, timeout):
                raise subprocess.TimeoutExpired(proc.args, timeout)
        finally:
            os.close(fd)
    return proc.wait()


def stop(proc: subprocess.Popen[Any], grace: float = 20.0) -> int:
    """SIGTERM `proc`, SIGKILL it if it is still there after `grace` s; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return wait(proc, grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _start(argv: Sequence[str], **kwargs: Any) -> tuple[list[str], subprocess.Popen[bytes]]:
    args = [str(a) for a in argv]
    args[0] = require(args[0]) if "/" not in args[0] else args[0]
    try:
        return args, subprocess.Popen(args, **kwargs)
    except FileNotFoundError as exc:
        raise MissingDependency(f"`{args[0]}` could not be started: {exc}") from exc


def _read(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def stream_out(argv: Sequence[str], *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Run argv and yield its stdout in chunks of up to `chunk_size` bytes.

    After the last chunk, raises CommandFailed (with stderr) if the exit code is
    non-zero, so a consumer that reads to the end knows the stream was whole.
    Closing the generator early (or an exception in the consumer) kills the process.
    """
    with tempfile.TemporaryFile() as err:
        args, proc = _start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(chunk_size):
                yield chunk
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if proc.returncode != 0:
            raise CommandFailed(args, proc.returncode, "", _read(err))


def run_fed(argv: Sequence[str], chunks: Iterable[bytes], *, timeout: float = 120.0) -> Result:
    """Run argv with `chunks` written to its stdin, then wait up to `timeout` s for it.

    Raises CommandFailed on a non-zero exit (also when the command stopped reading
    early), and re-raises whatever iterating `chunks` raised after killing the process.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        args, proc = _start(argv, stdin=subprocess.PIPE, stdout=out, stderr=err)
        assert proc.stdin is not None
        try:
            # A command that exits early breaks the pipe: its exit code and stderr say why.
            with contextlib.suppress(BrokenPipeError):
                try:
                    for chunk in chunks:
                        proc.stdin.write(chunk)
                finally:
                    proc.stdin.close()
            wait(proc, timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            raise HostError(f"`{' '.join(args)}` did not finish within {timeout} s") from exc
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        result = Result(args, proc.returncode, _read(out), _read(err))
    if proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, result.stdout, result.stderr)
    return result
