"""The SDK's end of an exec session (hoody.execwire), over a blocking WebSocket.

    with client.exec_session(cid, ["sh"], tty=True) as s:
        s.send(b"echo hi\\n"); s.eof()
        for stream, data in s:          # as the command writes it
            ...
        s.exit_code

`Client.exec` runs a command to the end and returns its output and exit code.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from hoody.agent.client import error_from
from hoody.errors import HostError, InvalidInput
from hoody.execwire import STDIN, ExecExit, ExecStart, ws_url

__all__ = ["ExecOutput", "ExecSession", "run_to_end", "start_message"]


@dataclass(frozen=True)
class ExecOutput:
    exit_code: int
    stdout: bytes
    stderr: bytes


class ExecSession:
    """One command running in a tenant. Iterate for (stream, bytes) output frames
    (stream 1 stdout, 2 stderr) until it ends; then `exit_code` is set. Raises the
    HoodyError the control plane or node answered with (no exit code then)."""

    def __init__(self, base_url: str, token: str, cid: str, start: ExecStart) -> None:
        url = ws_url(base_url, f"/api/v1/containers/{cid}/exec")
        try:
            self.ws: ClientConnection = connect(
                url,
                additional_headers={"Authorization": f"Bearer {token}"},
                max_size=None,
                compression=None,
                proxy=None,
                open_timeout=30,
                ping_interval=20,
                ping_timeout=60,
            )
        except InvalidStatus as exc:
            raise HostError(
                f"the control plane at {base_url} refused the exec session "
                f"({exc.response.status_code}); is it this hoody version?"
            ) from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise HostError(
                f"cannot reach the control plane at {base_url}: {exc}; is `hoody server` running?"
            ) from exc
        self.ws.__enter__()  # closed by our own close(); no legacy-use warning
        self._send_lock = threading.Lock()
        self.exit_code: int | None = None
        self.ws.send(start.model_dump_json())

    def send(self, data: bytes) -> None:
        """Bytes for the command's stdin (thread-safe next to iteration)."""
        if data:
            with self._send_lock:
                self.ws.send(bytes([STDIN]) + data)

    def eof(self) -> None:
        with self._send_lock:
            self.ws.send('{"type": "eof"}')

    def resize(self, cols: int, rows: int) -> None:
        with self._send_lock:
            self.ws.send(f'{{"type": "resize", "cols": {int(cols)}, "rows": {int(rows)}}}')

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while True:
            try:
                message = self.ws.recv()
            except ConnectionClosed as exc:
                raise HostError(
                    "the exec session ended without an exit code (connection closed: "
                    f"{exc}); the command may still have run"
                ) from exc
            if isinstance(message, bytes):
                if message:
                    yield message[0], message[1:]
                continue
            try:
                result = ExecExit.model_validate_json(message)
            except ValidationError:
                continue  # a message of a later protocol version: not ours to read
            if result.exit_code is None or result.error is not None:
                err = result.error or {}
                failure = error_from(
                    err.get("code", "host_error"), err.get("message", "exec failed")
                )
                if result.exit_code is not None:
                    self.exit_code = result.exit_code
                raise failure
            self.exit_code = result.exit_code
            return

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> ExecSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_to_end(session: ExecSession, stdin: bytes | None) -> ExecOutput:
    """Feed `stdin` (then EOF) from a thread, collect every output frame."""
    out: dict[int, list[bytes]] = {1: [], 2: []}
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            if stdin:
                for i in range(0, len(stdin), 1 << 16):
                    session.send(stdin[i : i + (1 << 16)])
            session.eof()
        except (ConnectionClosed, OSError) as exc:  # the command ended first
            errors.append(exc)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    for stream, data in session:
        out.setdefault(stream, []).append(data)
    feeder.join(5)
    assert session.exit_code is not None
    return ExecOutput(session.exit_code, b"".join(out[1]), b"".join(out[2]))


def start_message(
    argv: list[str],
    *,
    tty: bool = False,
    cols: int = 80,
    rows: int = 24,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> ExecStart:
    try:
        return ExecStart(argv=argv, tty=tty, cols=cols, rows=rows, timeout=timeout, env=env)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"exec {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
