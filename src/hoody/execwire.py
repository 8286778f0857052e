"""The exec session's wire format, one WebSocket from the CLI to the tenant.

    client                      control plane                     node agent
    hoody exec ──ws── /api/v1/containers/{cid}/exec ──ws── /v1/tenants/{tid}/exec

The same frames cross both hops (the control plane checks the caller, logs the
exec and relays), in the manner of Kubernetes' channel protocol:

    text   client → server, first:   ExecStart {argv, tty, cols, rows, timeout, env}
    text   client → server, later:   {"type": "resize", "cols", "rows"} | {"type": "eof"}
    binary client → server:          0x00 + stdin bytes
    binary server → client:          0x01 + stdout bytes | 0x02 + stderr bytes
    text   server → client, last:    ExecExit {exit_code, error}; then the close

Output is sent as the command writes it. A TTY merges stderr into stdout (as a
terminal does). `timeout` ends the command (exit code null, error says so); none by
default. A client that goes away ends the command.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hoody.errors import HoodyError, InvalidInput

__all__ = [
    "STDERR",
    "STDIN",
    "STDOUT",
    "ExecExit",
    "ExecStart",
    "control",
    "parse_start",
    "ws_url",
]

STDIN, STDOUT, STDERR = 0, 1, 2


class ExecStart(BaseModel):
    """What to run; the first message of a session."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["start"] = "start"
    argv: list[str] = Field(min_length=1, max_length=4096)
    tty: bool = False
    cols: int = Field(80, ge=1, le=10000)
    rows: int = Field(24, ge=1, le=10000)
    timeout: float | None = Field(
        None, gt=0, le=7 * 86400, description="Seconds; the command is killed after it"
    )
    env: dict[str, str] | None = None


class ExecExit(BaseModel):
    """The last message: the command's exit code, or why there is none."""

    type: Literal["exit"] = "exit"
    exit_code: int | None
    error: dict[str, str] | None = None

    @classmethod
    def failed(cls, exc: HoodyError) -> ExecExit:
        return cls(exit_code=None, error=exc.to_json()["error"])


def parse_start(raw: str | bytes | None) -> ExecStart:
    """The first message, or InvalidInput naming what is wrong with it."""
    if raw is None:
        raise InvalidInput("an exec session starts with a JSON text message: {argv, tty, ...}")
    try:
        start = ExecStart.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise InvalidInput(f"exec start message, field {where}: {first['msg']}") from exc
    if not start.argv[0] or any("\x00" in a for a in start.argv):
        raise InvalidInput("argv may not contain NUL bytes, and the command may not be empty")
    return start


def control(raw: str) -> dict[str, Any]:
    """A later text message (resize or eof) as a dict; InvalidInput when malformed."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"exec control message is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("type") not in ("resize", "eof"):
        raise InvalidInput('exec control messages are {"type": "resize"|"eof", ...}')
    if data["type"] == "resize":
        cols, rows = data.get("cols"), data.get("rows")
        if not all(isinstance(v, int) and 1 <= v <= 10000 for v in (cols, rows)):
            raise InvalidInput("resize needs whole numbers cols and rows from 1 to 10000")
    return data


def ws_url(http_url: str, path: str) -> str:
    """ws(s)://… for an http(s):// base URL and an absolute path."""
    base = http_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + path
    return "ws://" + base.removeprefix("http://") + path
