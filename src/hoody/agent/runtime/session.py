"""An interactive command in a tenant: `exec` with its streams open while it runs.

`ProcessExec` wraps the runtime's `exec` process (runc or crun, in the tenant's
network namespace). Without a TTY the command gets three pipes; with one, the runtime
gets the slave end of a pseudo-terminal made here as its stdin, stdout and stderr:
runc (`exec --tty`, not detached) then makes the tenant's own terminal, copies it to
and from ours and, on SIGWINCH, gives it our window size. So a resize is: set the size
on our terminal, signal the runtime.

The file descriptors are non-blocking, for an event loop to watch. `kill` ends the
command inside the tenant too (its host pid is in the pid file), not only the
runtime: a runtime killed alone leaves the command running in the tenant.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from pathlib import Path

__all__ = ["ProcessExec", "set_winsize"]


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _nonblocking(fd: int) -> int:
    os.set_blocking(fd, False)
    return fd


class ProcessExec:
    """A running exec. Read `stdout_fd` (and `stderr_fd` without a TTY) until EOF
    (b"" or, for a terminal, EIO), then `wait` for the exit code; always `close`."""

    def __init__(
        self,
        argv: list[str],
        *,
        tty: bool,
        pid_file: Path | None = None,
        cols: int = 80,
        rows: int = 24,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.tty = tty
        self.pid_file = pid_file
        self.stderr_fd: int | None = None
        if tty:
            master, slave = pty.openpty()
            try:
                set_winsize(slave, cols, rows)
                self.process = subprocess.Popen(
                    argv,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=preexec_fn,
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            self.stdout_fd = _nonblocking(master)
            self._stdin_fd: int | None = master
        else:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec_fn,
            )
            assert self.process.stdin and self.process.stdout and self.process.stderr
            self._stdin_fd = self.process.stdin.fileno()
            self.stdout_fd = _nonblocking(self.process.stdout.fileno())
            self.stderr_fd = _nonblocking(self.process.stderr.fileno())

    @property
    def pid(self) -> int:
        return self.process.pid

    def write_stdin(self, data: bytes) -> None:
        """Blocking write (call it off the event loop); ignored once stdin is closed."""
        if self._stdin_fd is None:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._stdin_fd, view) :]
            except BlockingIOError:
                import select

                select.select([], [self._stdin_fd], [], 1.0)
            except (BrokenPipeError, OSError):
                return  # the command stopped reading: what it did not take is dropped

    def close_stdin(self) -> None:
        """End of input: the pipe is closed; a terminal gets its EOF character."""
        if self._stdin_fd is None:
            return
        if self.tty:
            with contextlib.suppress(OSError):
                os.write(self._stdin_fd, b"\x04")
            return
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self._stdin_fd = None

    def resize(self, cols: int, rows: int) -> None:
        if not self.tty:
            return
        set_winsize(self.stdout_fd, cols, rows)
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGWINCH)

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code (128+N for a signal N), or None if still running at `timeout`."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return 128 - code if code < 0 else code

    def kill(self) -> None:
        """End the command in the tenant and the runtime process."""
        if self.pid_file is not None:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        if self.tty:
            with contextlib.suppress(OSError):
                os.close(self.stdout_fd)
        else:
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._stdin_fd = None
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
