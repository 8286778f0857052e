"""`hoody exec CID -- CMD` and `hoody logs CID [-f]`, through the control plane to
whichever node holds the tenant (`hoody node exec|logs` work on one node directly).

exec streams the command's stdout and stderr as it writes them, forwards this
terminal's stdin, and exits with the command's exit code. With `-t` the command gets
a terminal (this one is put in raw mode and its size follows this window), as
`incus exec` and `docker exec -it` do; `-t` is the default when stdin and stdout
are terminals and no command is given (a shell).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import Annotated

import typer

from hoody.cli.common import JsonOpt, emit
from hoody.control.client import Client
from hoody.control.exec_client import ExecSession
from hoody.errors import InvalidInput

__all__ = ["register"]

_SHELL = ["/bin/sh", "-c", 'exec "$(command -v bash || echo /bin/sh)" -l']


def exec_(
    ctx: typer.Context,
    cid: str,
    terminal: Annotated[
        bool | None,
        typer.Option(
            "--tty/--no-tty",
            "-t/-T",
            help="Give the command a terminal (default: only for a shell on a terminal).",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="Kill the command after this many seconds (default: never)."),
    ] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    no_stdin: Annotated[
        bool, typer.Option("--no-stdin", "-n", help="Give the command no input.")
    ] = False,
) -> None:
    """Run a command in a container: hoody exec CID [-t] -- CMD [ARGS...].

    Without a command it starts a shell. Exits with the command's exit code.
    """
    argv = list(ctx.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    use_tty = terminal if terminal is not None else (interactive and not argv)
    argv = argv or _SHELL
    variables = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--env {item!r} is invalid; write KEY=VALUE")
        variables[key] = value
    if use_tty and "TERM" not in variables:
        variables["TERM"] = os.environ.get("TERM", "xterm")
    cols, rows = shutil.get_terminal_size()
    with (
        Client() as client,
        client.exec_session(
            cid,
            argv,
            tty=use_tty,
            cols=cols,
            rows=rows,
            timeout=timeout,
            env=variables or None,
        ) as session,
        _raw_terminal(use_tty and sys.stdin.isatty()),
        _follow_window(session, use_tty),
    ):
        if not no_stdin:
            threading.Thread(target=_pump_stdin, args=(session,), daemon=True).start()
        else:
            session.eof()
        out = sys.stdout.buffer
        err = sys.stderr.buffer
        for stream, data in session:
            target = err if stream == 2 else out
            target.write(data)
            target.flush()
    raise typer.Exit(session.exit_code or 0)


def _pump_stdin(session: ExecSession) -> None:
    fd = sys.stdin.fileno()
    with contextlib.suppress(Exception):
        while data := os.read(fd, 65536):
            session.send(data)
        session.eof()


@contextlib.contextmanager
def _raw_terminal(enable: bool) -> Iterator[None]:
    if not enable:
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _follow_window(session: ExecSession, enable: bool) -> Iterator[None]:
    if not enable or threading.current_thread() is not threading.main_thread():
        yield
        return

    def resized(signum: int, frame: object) -> None:
        cols, rows = shutil.get_terminal_size()
        with contextlib.suppress(Exception):
            session.resize(cols, rows)

    previous = signal.signal(signal.SIGWINCH, resized)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def logs(
    cid: str,
    tail: Annotated[int, typer.Option(help="Lines from the end.")] = 200,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing what it writes.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print a container's stdout/stderr log (-f: and what comes next)."""
    with Client() as client:
        if not follow:
            text = client.logs(cid, tail)
            if as_json:
                emit({"id": cid, "log": text}, True)
            else:
                sys.stdout.write(text)
            return
        out = sys.stdout.buffer
        with contextlib.suppress(KeyboardInterrupt):
            for chunk in client.follow_logs(cid, tail):
                out.write(chunk)
                out.flush()


def register(app: typer.Typer) -> None:
    app.command(
        "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(exec_)
    app.command()(logs)
