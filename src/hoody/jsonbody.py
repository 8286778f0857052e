"""JSON request bodies as both APIs read them (the node agent's and the control
plane's): at most `MAX_BODY` bytes, finite numbers only.

Python's `json` reads `NaN`, `Infinity` and `-Infinity` (none of them JSON) and turns
a literal like `1e999` into infinity: a limit, a ratio or an age sent so compares
true or false with everything and poisons every sum it enters. Both are refused
(400) before any handler sees the body. A body over the limit is refused with 413
as soon as its length says so or its bytes pass the limit, never read whole first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request

from hoody.errors import InvalidInput, TooLarge

__all__ = ["MAX_BODY", "loads", "read", "read_object"]

# The largest JSON body either API takes. The biggest legitimate ones: a heartbeat of
# a node with ~20,000 tenants' usage, a copy with 32 KiB env and 16 KiB metadata.
MAX_BODY = 1 << 20


def _too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"request body is over the {limit}-byte limit ({limit >> 10} KiB) of this API; "
        "send less (split a batch into several requests)"
    )


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} does not fit a float (it would be infinite)")
    return value


def loads(raw: bytes | str) -> Any:
    """`raw` as JSON with finite numbers only; InvalidInput (400) naming the problem."""
    try:
        return json.loads(raw, parse_constant=_constant, parse_float=_finite)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInput(f"request body is not JSON: {str(exc)[:200]}") from exc
    except ValueError as exc:  # from _constant, _finite, or an int of over 4300 digits
        what = str(exc).split(";")[0][:200]  # not Python's own advice on its limit
        raise InvalidInput(
            f"request body has a number no field can take: {what}; send finite numbers "
            "(JSON has no NaN or Infinity)"
        ) from exc


async def read(
    request: Request, limit: int = MAX_BODY, too_large: Callable[[int], TooLarge] = _too_large
) -> bytes:
    """The request's body, `too_large(limit)` (413) once it is over `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise InvalidInput("the client went away before sending the whole body") from exc
    return b"".join(chunks)


async def read_object(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The body as a JSON object ({} when empty); InvalidInput or TooLarge."""
    raw = await read(request, limit)
    if not raw.strip():
        return {}
    data = loads(raw)
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    return data
