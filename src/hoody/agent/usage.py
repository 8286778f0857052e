"""What a node's tenants use, and the figures placement reads from it.

Per tenant the node measures its working set (cgroup memory usage minus inactive file
cache: what the kernel could not simply drop) and its disk (the bytes of its own
subvolume). Per template version it learns a memory request: the 90th percentile of
its running tenants' working sets. A tenant counts for

    max(request, measured working set)

where its request is the one it was given (per copy, or its template version's), else
the learned one, else its limit (nothing known yet). The node's capacity is its memory
times the overcommit ratio, less a reserve for the host; what is left is what
placement may still give out.

Defaults: overcommit 1.0 and a reserve of 10 % of memory, at least 1 GiB. Placement
already counts measured use rather than limits, so 1.0 lets limits add up far past
the memory (1,000 idle 256 MiB tenants on 24 GiB) while every byte counted is a byte
in use or promised; a ratio above 1 bets that tenants will not grow into their
requests at once. The reserve keeps room for what no tenant is charged for: the agent,
the control plane, template page cache, kernel memory, and growth between heartbeats.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hoody.errors import HoodyError, InvalidInput

__all__ = [
    "LEARN_PERCENTILE",
    "TemplateUse",
    "TenantUse",
    "TtlCache",
    "learn",
    "node_figures",
    "parse_reserve",
    "percentile",
    "reserve_bytes",
]

LEARN_PERCENTILE = 0.9
_GIB = 1 << 30
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class TenantUse:
    """One tenant as measured. `request` is its explicit request (bytes) or None."""

    tid: str
    template: str
    version: int
    running: bool
    limit: int
    request: int | None
    memory: int
    disk: int


@dataclass(frozen=True)
class TemplateUse:
    """What a template version's running tenants use on this node."""

    name: str
    version: int
    tenants: int
    memory_p90: int
    disk_p90: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "tenants": self.tenants,
            "memory_p90_bytes": self.memory_p90,
            "disk_p90_bytes": self.disk_p90,
        }


def percentile(values: Sequence[int], q: float = LEARN_PERCENTILE) -> int:
    """The nearest-rank q-quantile of `values` (0 when empty)."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def learn(uses: Iterable[TenantUse]) -> dict[tuple[str, int], TemplateUse]:
    """Per template version, the p90 of its running tenants' working set and disk.

    Tenants that are not running (or show no memory yet) teach nothing."""
    memory: dict[tuple[str, int], list[int]] = {}
    disk: dict[tuple[str, int], list[int]] = {}
    for use in uses:
        if use.running and use.memory > 0:
            key = (use.template, use.version)
            memory.setdefault(key, []).append(use.memory)
            disk.setdefault(key, []).append(use.disk)
    return {
        key: TemplateUse(key[0], key[1], len(values), percentile(values), percentile(disk[key]))
        for key, values in memory.items()
    }


def request_of(use: TenantUse, learned: dict[tuple[str, int], TemplateUse]) -> int:
    """The tenant's request: its own, else its template version's learned p90, else its
    limit."""
    if use.request is not None:
        return use.request
    known = learned.get((use.template, use.version))
    return known.memory_p90 if known is not None else use.limit


def parse_reserve(spec: str) -> str:
    """Validate a reserve: `auto`, a size (`2G`, `512M`, bytes) or a share (`10%`)."""
    if not isinstance(spec, str):
        raise InvalidInput(f"reserve {spec!r} is invalid; give a size like 2G, or 10%, or auto")
    text = spec.strip()
    if text == "auto":
        return text
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            share = -1.0
        if not 0 <= share < 100:
            raise InvalidInput(f"reserve {spec!r} is invalid; give a share from 0% to 99%")
        return text
    if not _SIZE.match(text):
        raise InvalidInput(f"reserve {spec!r} is invalid; give a size like 2G or 512M, or 10%")
    return text


def reserve_bytes(spec: str, memory_total: int) -> int:
    """The host reserve in bytes for `spec` (see parse_reserve) on `memory_total` bytes.

    auto: 10 % of memory, at least 1 GiB (never more than half the memory)."""
    text = parse_reserve(spec)
    if text == "auto":
        return min(max(_GIB, memory_total // 10), memory_total // 2)
    if text.endswith("%"):
        return int(memory_total * float(text[:-1]) / 100)
    match = _SIZE.match(text)
    assert match is not None  # parse_reserve checked it
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def node_figures(
    uses: Sequence[TenantUse],
    *,
    memory_total: int,
    overcommit: float,
    reserve: int,
    learned: dict[tuple[str, int], TemplateUse] | None = None,
) -> dict[str, Any]:
    """The node's placement figures (bytes) from its tenants' use.

    Tenants that should run count (a stopped tenant that is started again needs its
    memory back); requested = their requests, measured = their working sets,
    committed = the sum of max(request, measured) — what placement counts.
    """
    learned = learn(uses) if learned is None else learned
    counted = [u for u in uses if u.running]
    requested = sum(request_of(u, learned) for u in counted)
    measured = sum(u.memory for u in counted)
    committed = sum(max(request_of(u, learned), u.memory) for u in counted)
    capacity = int(memory_total * overcommit)
    return {
        "overcommit": overcommit,
        "memory_capacity_bytes": capacity,
        "memory_reserve_bytes": reserve,
        "memory_requested_bytes": requested,
        "memory_measured_bytes": measured,
        "memory_committed_bytes": committed,
        # How many tenants these figures cover: the control plane adds only the
        # copies it placed beyond them.
        "memory_counted_tenants": len(counted),
        "memory_free_bytes": capacity - reserve - committed,
        "disk_measured_bytes": sum(u.disk for u in uses),
    }


class TtlCache:
    """Figures re-read at most every `ttl` seconds, by key: a tenant's disk bytes
    change slowly, and a node with 1,000 tenants would otherwise read 1,000 qgroups
    every heartbeat."""

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._seen: dict[str, tuple[float, int]] = {}

    def get(self, key: str, read: Any) -> int:
        """read(key), or its value from less than `ttl` s ago; the last value (else
        0) when the read fails."""
        now = time.monotonic()
        hit = self._seen.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            value = int(read(key))
        except HoodyError:
            value = hit[1] if hit is not None else 0
        self._seen[key] = (now, value)
        return value

    def keep(self, keys: Iterable[str]) -> None:
        """Forget every key but `keys`."""
        alive = set(keys)
        for key in [k for k in self._seen if k not in alive]:
            del self._seen[key]
