"""What one invocation of a script may use, configurable per project.

Defaults follow Cloudflare Workers' order of magnitude and what was measured here: a
warm Deno worker idles at ~9 MB, so 256 MiB of total memory leaves a 128 MiB V8 heap
room for ArrayBuffers, which live outside the heap (1 GB was allocated past a heap
limit in the measurements).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hoody.errors import InvalidInput

__all__ = ["Limits", "LimitsBody", "check_hosts"]


@dataclass(frozen=True)
class Limits:
    wall_ms: int = 30_000  # wall clock per invocation; the process group is SIGKILLed
    cpu_ms: int = 10_000  # CPU time per invocation (all of the worker's threads)
    heap_mib: int = 128  # V8 old space (--max-old-space-size)
    memory_mib: int = 256  # the worker's whole memory (its memory cgroup)
    request_bytes: int = 1 << 20  # request body
    response_bytes: int = 4 << 20  # response body
    workers: int = 4  # warm processes per script version serving at once

    def merged(self, overrides: dict[str, Any]) -> Limits:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: int(v) for k, v in overrides.items() if k in known})

    def to_json(self) -> dict[str, int]:
        return asdict(self)


class LimitsBody(BaseModel):
    """Overrides of the defaults; omitted fields keep them."""

    model_config = ConfigDict(extra="forbid")

    wall_ms: int | None = Field(None, ge=100, le=15 * 60_000)
    cpu_ms: int | None = Field(None, ge=100, le=15 * 60_000)
    heap_mib: int | None = Field(None, ge=16, le=4096)
    memory_mib: int | None = Field(None, ge=64, le=8192)
    request_bytes: int | None = Field(None, ge=0, le=100 << 20)
    response_bytes: int | None = Field(None, ge=0, le=100 << 20)
    workers: int | None = Field(None, ge=1, le=64)


_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253})(:[0-9]{1,5})?$")


def check_hosts(hosts: list[str]) -> list[str]:
    """Hosts a project's scripts may reach (`host` or `host:port`, as Deno's
    --allow-net takes them). Wildcards and 0.0.0.0 are refused: Deno's net permission
    was seen bypassed through 0.0.0.0, so only named destinations are allowed."""
    out = []
    for host in hosts:
        if not isinstance(host, str) or not _HOST.match(host) or host.startswith("0."):
            raise InvalidInput(
                f"allowed host {str(host)[:60]!r} is invalid; give a host name or address, "
                "optionally with :port (e.g. api.stripe.com or 10.0.0.5:8443)"
            )
        if len(hosts) > 50:
            raise InvalidInput("at most 50 allowed hosts per project")
        out.append(host)
    return sorted(set(out))
