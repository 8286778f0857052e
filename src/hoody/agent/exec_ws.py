"""The agent's end of an exec session: one WebSocket ↔ one command in a tenant.

Frames are hoody.execwire's. The command's output is read as it comes (the event
loop watches its non-blocking descriptors) and sent at once; stdin and control
messages are applied in order; the exit message goes last, after every byte of
output. The command is killed when the client goes away or `timeout` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

from hoody.agent.runtime import ExecSession
from hoody.errors import HoodyError, HostError
from hoody.execwire import STDERR, STDIN, STDOUT, ExecExit, ExecStart, control, parse_start

__all__ = ["serve_exec"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Output still arriving this long after the command exited belongs to something it
# left running with its stdout (a daemon): the session ends without it.
_DRAIN_AFTER_EXIT = 1.0
_RESIZE_AGAIN = 0.3
_QUEUE_HIGH = 64  # frames; reading pauses above this until the client catches up


async def _call(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(partial(fn, *args))


async def serve_exec(
    ws: WebSocket, open_session: Callable[[ExecStart], ExecSession], what: str
) -> None:
    """Run one session on an accepted `ws`: read ExecStart, `open_session` it, relay
    until the command ends, send ExecExit, close."""
    try:
        start = parse_start(await ws.receive_text())
        session = await _call(open_session, start)
    except HoodyError as exc:
        await _finish(ws, ExecExit.failed(exc))
        return
    except (WebSocketDisconnect, RuntimeError, KeyError):
        return
    log.info("exec in %s: %s (tty=%s)", what, start.argv, start.tty)
    resize_again = None
    if start.tty:
        # runc sizes the tenant's terminal once it has it, which can be after the
        # command started (a shell then reads 0x0): say the size again.
        resize_again = asyncio.get_running_loop().call_later(
            _RESIZE_AGAIN, _quiet_resize, session, start.cols, start.rows
        )
    try:
        result = await _relay(ws, session, start.timeout)
    finally:
        if resize_again is not None:
            resize_again.cancel()
        await _call(session.close)
    log.info("exec in %s ended: %s", what, result.model_dump(exclude_none=True))
    await _finish(ws, result)


def _quiet_resize(session: ExecSession, cols: int, rows: int) -> None:
    with contextlib.suppress(OSError):
        session.resize(cols, rows)


async def _finish(ws: WebSocket, result: ExecExit) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(result.model_dump_json())
        await ws.close()


async def _relay(ws: WebSocket, session: ExecSession, timeout: float | None) -> ExecExit:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    streams = {session.stdout_fd: STDOUT}
    if session.stderr_fd is not None:
        streams[session.stderr_fd] = STDERR
    open_fds = set(streams)
    paused: set[int] = set()
    outputs_done = asyncio.Event()

    def readable(fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: the terminal's other end is closed
        if data:
            queue.put_nowait(bytes([streams[fd]]) + data)
            if queue.qsize() > _QUEUE_HIGH:
                loop.remove_reader(fd)
                paused.add(fd)
            return
        loop.remove_reader(fd)
        open_fds.discard(fd)
        if not open_fds:
            outputs_done.set()

    for fd in streams:
        loop.add_reader(fd, readable, fd)

    async def send_output() -> None:
        while (frame := await queue.get()) is not None:
            await ws.send_bytes(frame)
            if paused and queue.qsize() <= _QUEUE_HIGH // 2:
                for fd in list(paused):
                    paused.discard(fd)
                    if fd in open_fds:
                        loop.add_reader(fd, readable, fd)

    async def take_input() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("bytes"):
                data = message["bytes"]
                if data[0] == STDIN:
                    await _call(session.write_stdin, data[1:])
            elif message.get("text"):
                msg = control(message["text"])
                if msg["type"] == "eof":
                    await _call(session.close_stdin)
                else:
                    session.resize(msg["cols"], msg["rows"])

    async def run_command() -> int | None:
        code = await _call(session.wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(outputs_done.wait(), _DRAIN_AFTER_EXIT)
        return code

    sender = asyncio.create_task(send_output())
    receiver = asyncio.create_task(take_input())
    command = asyncio.create_task(run_command())
    result: ExecExit
    try:
        done, _ = await asyncio.wait(
            {command, receiver}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if command in done:
            result = ExecExit(exit_code=command.result())
        elif receiver in done:
            # The client went away (or sent garbage): end the command.
            await _call(session.kill)
            exc = receiver.exception()
            err = exc if isinstance(exc, HoodyError) else HostError("the client went away")
            result = ExecExit.failed(err)
            log.info("exec ended early: %s", err.message)
        else:
            await _call(session.kill)
            result = ExecExit.failed(
                HostError(f"the command did not finish within {timeout:g} s and was killed")
            )
            result.exit_code = await command
    finally:
        for fd in open_fds | paused:
            loop.remove_reader(fd)
        receiver.cancel()
        if not command.done():
            await _call(session.kill)
            with contextlib.suppress(Exception):
                await command
        queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await sender
    return result
