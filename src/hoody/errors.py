"""Every error hoody raises on purpose, in one tree.

    HoodyError (500)                      base; `code` is stable, `message` says what to do
    ├── InvalidInput (400)                a name, limit, rule or argument is malformed
    │   └── TooLarge (413)                a request body over the API's limit
    ├── Unauthorized (401)                no token, or a wrong one
    ├── Forbidden (403)                   the token may not touch this resource
    │   └── QuotaExceeded                 the project is at a quota (tenants, memory, disk)
    ├── NotFound (404)                    no such tenant, template, version or node
    ├── Conflict (409)                    the name is taken, the resource is in use
    ├── Exhausted (507)                   pool full, no free IP left, no node with headroom
    └── HostError (500)                   the host refused: a command, mount or syscall failed
        ├── CommandFailed                 a subprocess exited non-zero (argv, code, output kept)
        └── MissingDependency (503)       runc/crun, btrfs, nft or a kernel feature is absent

Foreign exceptions are converted at the boundary with ``raise ... from exc``; the API
and the CLI each have one place that renders a HoodyError (JSON, or a red line and a
non-zero exit).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CommandFailed",
    "Conflict",
    "Exhausted",
    "Forbidden",
    "HoodyError",
    "HostError",
    "InvalidInput",
    "MissingDependency",
    "NotFound",
    "QuotaExceeded",
    "TooLarge",
    "Unauthorized",
]


class HoodyError(Exception):
    """Base of the tree. `message` names the problem and the fix."""

    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(HoodyError):
    status = 400
    code = "invalid_input"


class TooLarge(InvalidInput):
    status = 413
    code = "too_large"


class Unauthorized(HoodyError):
    status = 401
    code = "unauthorized"


class Forbidden(HoodyError):
    status = 403
    code = "forbidden"


class QuotaExceeded(Forbidden):
    code = "quota_exceeded"


class NotFound(HoodyError):
    status = 404
    code = "not_found"


class Conflict(HoodyError):
    status = 409
    code = "conflict"


class Exhausted(HoodyError):
    status = 507
    code = "exhausted"


class HostError(HoodyError):
    status = 500
    code = "host_error"


class MissingDependency(HostError):
    status = 503
    code = "missing_dependency"


class CommandFailed(HostError):
    """A subprocess exited non-zero. Keeps argv, exit code and both outputs."""

    code = "command_failed"

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout).strip().splitlines()
        tail = detail[-1] if detail else "no output"
        super().__init__(f"`{' '.join(self.argv)}` exited {returncode}: {tail}")
