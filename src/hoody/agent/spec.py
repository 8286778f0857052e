"""Plain values that describe a tenant: its id, limits and firewall policy, and the
request that makes one (`TenantSpec`).

Everything here is validated on construction (InvalidInput with the fix in the
message), immutable, and converts to and from JSON-able dicts, so the same objects
travel from the CLI through the API into the drivers. Each rule is written once: the
bounds of a limit (`LIMIT_BOUNDS`), env (`check_env`), ids (`check_tenant_id`) are
checked by the same functions for a tenant's record and for the request.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hoody.errors import InvalidInput

__all__ = [
    "INT_MAX",
    "LIMIT_BOUNDS",
    "SLEEP_MODES",
    "EgressRule",
    "FirewallPolicy",
    "IngressRule",
    "Limits",
    "LimitsSpec",
    "SleepPolicy",
    "SleepSpec",
    "TenantSpec",
    "check_env",
    "check_limit",
    "check_name",
    "check_tenant_id",
    "invalid_input",
]

INT_MAX = 2**31 - 1

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ENV = 64  # variables
MAX_ENV_VALUE = 4096  # bytes of one value
MAX_ENV_BYTES = 32768  # bytes of them all


def check_env(env: Any) -> dict[str, str]:
    """`env` as a tenant's environment may hold it: at most 64 variables, names of
    letters, digits and `_` (not starting with a digit), string values without NUL,
    each under 4 KiB and 32 KiB in all. InvalidInput names the first problem."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise InvalidInput('env must map names to strings, like {"PLAN": "pro"}')
    if len(env) > MAX_ENV:
        raise InvalidInput(f"env has {len(env)} variables; keep it to {MAX_ENV}")
    total = 0
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise InvalidInput(
                f"env name {str(key)[:40]!r} is invalid; use letters, digits and _ "
                "(not starting with a digit), at most 128 characters"
            )
        if not isinstance(value, str):
            raise InvalidInput(f'env {key} must be a string, like {{"{key}": "pro"}}')
        size = len(value.encode())
        if "\x00" in value or size > MAX_ENV_VALUE:
            raise InvalidInput(f"env {key} is over {MAX_ENV_VALUE} bytes or holds a NUL byte")
        total += len(key) + size + 2
    if total > MAX_ENV_BYTES:
        raise InvalidInput(f"env is {total} bytes in all; keep it under {MAX_ENV_BYTES}")
    return dict(env)


def check_tenant_id(value: str) -> str:
    """A tenant id becomes a hostname label in `<cid>.<domain>`: DNS-label safe."""
    if not isinstance(value, str) or not _LABEL.match(value):
        raise InvalidInput(
            f"tenant id {value!r} is not DNS-label safe; use 1-63 lowercase letters, digits "
            "and hyphens, starting and ending with a letter or digit"
        )
    return value


def check_name(value: str, what: str = "template name") -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise InvalidInput(
            f"{what} {value!r} is invalid; use 1-63 lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return value


_LIMIT_KEYS = ("cpu", "memory_mib", "pids", "disk_mib", "memory_request_mib", "io_mbps", "iops")
# What each limit may be: the one table both a tenant's limits and a request check.
LIMIT_BOUNDS: dict[str, tuple[float, int]] = {
    "cpu": (0.01, 1024),
    "memory_mib": (16, 1 << 22),
    "pids": (8, 1 << 22),
    "disk_mib": (16, 1 << 24),
    "memory_request_mib": (1, 1 << 22),
    "io_mbps": (1, 1 << 20),
    "iops": (10, 1 << 24),
}


def check_limit(name: str, value: Any) -> Any:
    """`value` if it is a valid `name` limit (see LIMIT_BOUNDS), else InvalidInput.
    JSON true/false are refused: they would read as 1 and 0 (cpu: true, one core)."""
    low, high = LIMIT_BOUNDS[name]
    if name == "cpu":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise InvalidInput(
                f"cpu limit {value!r} is invalid; give cores between {low} and {high}"
            )
    elif isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        if name == "memory_request_mib":
            raise InvalidInput(
                f"memory request {value!r} is invalid; give whole MiB, between {low} and {high}"
            )
        raise InvalidInput(
            f"{name} limit {value!r} is invalid; give a whole number between {low} and {high}"
        )
    return value


@dataclass(frozen=True)
class Limits:
    """Per-tenant quotas. cpu is in cores (0.5 = half a core); io_mbps (MiB/s) and
    iops cap the tenant's reads and its writes each, on the devices under the pool.

    `memory_request_mib` is not a cap: it is the steady use placement counts for the
    tenant (a limit is what it may reach, a request what it is expected to use). None:
    learned from what the template's running tenants use (see hoody.agent.usage).
    """

    cpu: float = 1.0
    memory_mib: int = 256
    pids: int = 256
    disk_mib: int = 1024
    memory_request_mib: int | None = None
    io_mbps: int = 100
    iops: int = 1000

    def __post_init__(self) -> None:
        for name in _LIMIT_KEYS:
            if (value := getattr(self, name)) is not None or name != "memory_request_mib":
                check_limit(name, value)
        request = self.memory_request_mib
        if request is not None and request > self.memory_mib:
            raise InvalidInput(
                f"memory request {request} MiB is above the memory limit "
                f"{self.memory_mib} MiB; a request is expected use, at most the limit"
            )

    def merged(self, overrides: dict[str, Any] | None) -> Limits:
        """These limits with `overrides` applied; unknown keys are refused."""
        if not overrides:
            return self
        unknown = set(overrides) - set(_LIMIT_KEYS)
        if unknown:
            raise InvalidInput(
                f"unknown limit {sorted(unknown)[0]!r}; known limits are {', '.join(_LIMIT_KEYS)}"
            )
        changes = {k: v for k, v in overrides.items() if v is not None or k == "memory_request_mib"}
        inherited = self.memory_request_mib
        memory = changes.get("memory_mib", self.memory_mib)
        if "memory_request_mib" not in changes and inherited is not None and inherited > memory:
            # A copy that lowers the limit below its template's request: the request
            # can be no more than the new limit.
            changes["memory_request_mib"] = memory
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Limits:
        return cls().merged(data)


SLEEP_MODES = ("stopped", "frozen")


def _check_idle(idle: Any) -> Any:
    if idle is not None and (
        isinstance(idle, bool) or not isinstance(idle, int) or not 1 <= idle <= INT_MAX
    ):
        raise InvalidInput(
            f"idle_seconds {idle!r} is invalid; give whole seconds from 1, "
            "or null to never sleep for idleness"
        )
    return idle


def _check_sleep_mode(mode: Any) -> Any:
    if mode not in SLEEP_MODES:
        raise InvalidInput(f"sleep mode {mode!r} is invalid; use stopped or frozen")
    return mode


@dataclass(frozen=True)
class SleepPolicy:
    """When an idle tenant is put to sleep, and how it sleeps.

    `idle_seconds`: after this long without a request through a router the fleet puts
    the tenant to sleep; None never does (memory pressure still may). `mode`:
    "stopped" ends its processes (memory freed, disk, address and firewall kept; a
    wake starts it again), "frozen" freezes them in their cgroup (CPU freed, memory
    kept; a wake is a thaw, about a millisecond).
    """

    idle_seconds: int | None = None
    mode: Literal["stopped", "frozen"] = "stopped"

    def __post_init__(self) -> None:
        _check_idle(self.idle_seconds)
        _check_sleep_mode(self.mode)

    def merged(self, overrides: dict[str, Any] | None) -> SleepPolicy:
        """This policy with `overrides` applied; unknown keys are refused."""
        if not overrides:
            return self
        if not isinstance(overrides, dict):
            raise InvalidInput(
                'sleep must be an object like {"idle_seconds": 300, "mode": "frozen"}'
            )
        unknown = set(overrides) - {"idle_seconds", "mode"}
        if unknown:
            raise InvalidInput(
                f"unknown sleep setting {sorted(unknown)[0]!r}; known ones are idle_seconds, mode"
            )
        return replace(self, **overrides)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SleepPolicy:
        return cls().merged(data)


def _network(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{what} {value!r} is not an IPv4 CIDR like 10.0.0.0/8") from exc


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidInput(f"port {value!r} is invalid; give a number between 1 and 65535")
    return value


def _proto(value: Any) -> Literal["tcp", "udp"]:
    if value not in ("tcp", "udp"):
        raise InvalidInput(f"protocol {value!r} is invalid; use tcp or udp")
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class IngressRule:
    """Allow new connections to `port` from `source`: "node" (this server) or a CIDR."""

    port: int
    proto: Literal["tcp", "udp"] = "tcp"
    source: str = "node"

    def __post_init__(self) -> None:
        _port(self.port)
        _proto(self.proto)
        if self.source != "node":
            object.__setattr__(self, "source", _network(self.source, "ingress source"))


@dataclass(frozen=True)
class EgressRule:
    """Allow or deny new connections from the tenant to `cidr` (optionally one port).

    `confined`: the allow never reaches the node's guarded networks (metadata,
    loopback, multicast, management), whatever its `cidr`. Set by the node on a
    copy's own allow rules that its template does not cover (`FirewallPolicy.for_copy`).
    """

    action: Literal["allow", "deny"]
    cidr: str
    port: int | None = None
    proto: Literal["tcp", "udp"] = "tcp"
    confined: bool = False

    def __post_init__(self) -> None:
        if self.action not in ("allow", "deny"):
            raise InvalidInput(f"egress action {self.action!r} is invalid; use allow or deny")
        object.__setattr__(self, "cidr", _network(self.cidr, "egress cidr"))
        if self.port is not None:
            _port(self.port)
        _proto(self.proto)
        if not isinstance(self.confined, bool):
            raise InvalidInput(f"egress confined {self.confined!r} is invalid; use true or false")

    def covers(self, other: EgressRule) -> bool:
        """True when this allow lets through everything the allow `other` would."""
        return (
            self.action == "allow"
            and not self.confined
            and ipaddress.IPv4Network(other.cidr).subnet_of(ipaddress.IPv4Network(self.cidr))
            and (self.port is None or (self.port == other.port and self.proto == other.proto))
        )


@dataclass(frozen=True)
class FirewallPolicy:
    """A tenant's firewall. Rules are evaluated in order; the default applies after them.

    Other tenants and the host are never reached by the default egress policy: reaching
    another tenant takes an explicit egress allow rule *and* an ingress rule on the
    other side; the host's services are never reachable from a tenant.
    """

    ingress: tuple[IngressRule, ...] = (IngressRule(8080),)
    egress: tuple[EgressRule, ...] = ()
    egress_default: Literal["allow", "deny"] = "allow"

    def __post_init__(self) -> None:
        if self.egress_default not in ("allow", "deny"):
            raise InvalidInput(
                f"egress_default {self.egress_default!r} is invalid; use allow or deny"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "ingress": [asdict(r) for r in self.ingress],
            "egress": [asdict(r) for r in self.egress],
            "egress_default": self.egress_default,
        }

    def for_copy(self, template: FirewallPolicy, guarded: list[str], name: str) -> FirewallPolicy:
        """This policy, given by a copy of template `name` (whose policy is
        `template`), made unable to open what the template does not: a copy's allow
        that the template's allows cover stays as it is; one inside a `guarded`
        network is refused (InvalidInput); one that overlaps a guarded network (like
        0.0.0.0/0) is confined to the rest. Only a template, made by an admin, opens a
        guarded network to its tenants."""
        nets = [ipaddress.IPv4Network(g) for g in guarded]
        rules = []
        for rule in self.egress:
            if rule.action == "allow":
                cidr = ipaddress.IPv4Network(rule.cidr)
                if any(t.covers(rule) for t in template.egress):
                    rule = replace(rule, confined=False)
                elif any(cidr.subnet_of(net) for net in nets):
                    raise InvalidInput(
                        f"egress allow {rule.cidr} is inside a network guarded on this node "
                        "(cloud metadata, loopback, multicast or the fleet's management "
                        "networks); a copy cannot open it. Only its template can: an admin "
                        f"adds the allow rule to template {name}'s firewall"
                    )
                else:
                    rule = replace(rule, confined=any(cidr.overlaps(net) for net in nets))
            rules.append(rule)
        return replace(self, egress=tuple(rules))

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> FirewallPolicy:
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise InvalidInput("firewall must be an object with ingress, egress, egress_default")
        unknown = set(data) - {"ingress", "egress", "egress_default"}
        if unknown:
            raise InvalidInput(
                f"unknown firewall key {sorted(unknown)[0]!r}; use ingress, egress, egress_default"
            )
        try:
            ingress = tuple(IngressRule(**r) for r in data.get("ingress", [{"port": 8080}]))
            egress = tuple(EgressRule(**r) for r in data.get("egress", []))
        except TypeError as exc:
            raise InvalidInput(f"firewall rule is malformed: {exc}") from exc
        return cls(ingress, egress, data.get("egress_default", "allow"))


@dataclass(frozen=True)
class TenantNet:
    """Where a tenant sits on its node's network."""

    ip: str
    gateway: str
    prefixlen: int
    netns: str = field(default="")


# The request that makes a tenant. One model from the CLI through the SDK, the fleet
# API and service, the agent client and API to the engine; each field is checked by
# the same function that checks a tenant's record, so the rules live in one place.
# Fields left out take the template version's values.


def invalid_input(exc: ValidationError, what: str = "body") -> InvalidInput:
    """A pydantic ValidationError as the InvalidInput every caller expects."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or what
    return InvalidInput(
        f"field {where}: {first['msg']} ({exc.error_count()} problem(s) in the {what})"
    )


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    @classmethod
    def parse(cls, data: Any) -> Self:
        """`data` (a JSON object) as this model; InvalidInput names what is wrong."""
        if not isinstance(data, dict):
            raise InvalidInput(f"{cls.__name__} must be a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise invalid_input(exc) from exc

    def overrides(self) -> dict[str, Any]:
        """The fields the caller gave (an explicit null included): what to change."""
        return self.model_dump(mode="json", exclude_unset=True)


def _bounded(name: str, description: str) -> Any:
    low, high = LIMIT_BOUNDS[name]
    return Field(
        default=None, description=description, json_schema_extra={"minimum": low, "maximum": high}
    )


class LimitsSpec(_Spec):
    """Overrides of the template's limits (see Limits); cpu in cores."""

    cpu: float | None = _bounded("cpu", "Cores (0.5: half a core).")
    memory_mib: int | None = _bounded("memory_mib", "Memory cap.")
    pids: int | None = _bounded("pids", "Processes and threads.")
    disk_mib: int | None = _bounded("disk_mib", "Its own disk (the delta from its template).")
    memory_request_mib: int | None = _bounded(
        "memory_request_mib",
        "Memory placement counts for it (expected use, at most memory_mib); default: its "
        "template's, else learned from the template's running tenants.",
    )
    io_mbps: int | None = _bounded("io_mbps", "MiB/s of reads, and of writes.")
    iops: int | None = _bounded("iops", "Reads, and writes, per second.")

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, dict) and (unknown := set(data) - set(_LIMIT_KEYS)):
            raise InvalidInput(
                f"unknown limit {sorted(unknown)[0]!r}; known limits are {', '.join(_LIMIT_KEYS)}"
            )
        return data

    @field_validator(*_LIMIT_KEYS, mode="before")
    @classmethod
    def _check(cls, value: Any, info: Any) -> Any:
        return value if value is None else check_limit(info.field_name, value)


class SleepSpec(_Spec):
    """When an idle tenant sleeps, and how; overrides the template's (see SleepPolicy)."""

    idle_seconds: int | None = Field(
        default=None,
        description="Sleep after this long without requests; null: never for idleness.",
        json_schema_extra={"minimum": 1, "maximum": INT_MAX},
    )
    mode: Literal["stopped", "frozen"] | None = Field(
        default=None,
        description="stopped: processes end, memory freed (wake ~ a start); "
        "frozen: cgroup freezer, memory kept (wake ~ 1 ms).",
    )

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if not isinstance(data, dict | SleepSpec):
            raise InvalidInput(
                'sleep must be an object like {"idle_seconds": 300, "mode": "frozen"}'
            )
        if isinstance(data, dict) and (unknown := set(data) - {"idle_seconds", "mode"}):
            raise InvalidInput(
                f"unknown sleep setting {sorted(unknown)[0]!r}; known ones are idle_seconds, mode"
            )
        return data

    @field_validator("idle_seconds", mode="before")
    @classmethod
    def _idle(cls, value: Any) -> Any:
        return _check_idle(value)

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        return value if value is None else _check_sleep_mode(value)

    def overrides(self) -> dict[str, Any]:
        # A null mode means "the template's", never "no mode".
        return {k: v for k, v in super().overrides().items() if k != "mode" or v is not None}


_METADATA_BYTES = 16384


class TenantSpec(_Spec):
    """What a tenant is made with: all optional, the template version fills the rest."""

    name: str | None = Field(
        default=None, description="Tenant id (a DNS label); generated if absent."
    )
    version: int | None = Field(
        default=None,
        description="Template version; default: the newest.",
        json_schema_extra={"minimum": 1, "maximum": INT_MAX},
    )
    limits: LimitsSpec | None = None
    env: dict[str, str] | None = Field(
        default=None, description="At most 64 NAME=value pairs; values under 4 KiB, 32 KiB in all."
    )
    firewall: dict[str, Any] | None = Field(
        default=None, description="{ingress: [...], egress: [...], egress_default: allow|deny}"
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="Free-form (customer id, plan…), under 16 KiB of JSON."
    )
    sleep: SleepSpec | None = Field(
        default=None, description="Idle sleep; default: the template's (off unless it says)."
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return value if value is None else check_tenant_id(value)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT_MAX
        ):
            raise InvalidInput(f"version {value!r} is invalid; give a whole number from 1")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        return value if value is None else check_env(value)

    @field_validator("firewall", mode="before")
    @classmethod
    def _firewall(cls, value: Any) -> Any:
        if value is not None:
            FirewallPolicy.from_json(value)  # raises what is wrong with it
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: Any) -> Any:
        if value is not None and len(json.dumps(value, default=str)) > _METADATA_BYTES:
            raise InvalidInput("metadata is too large; keep it under 16 KiB of JSON")
        return value

    def limit_overrides(self) -> dict[str, Any] | None:
        return self.limits.overrides() if self.limits is not None else None

    def sleep_overrides(self) -> dict[str, Any] | None:
        return self.sleep.overrides() if self.sleep is not None else None
