"""Request and response bodies of /api/v1 as pydantic models.

Requests are validated with these before any service runs (unknown fields are
refused, numbers are bounded so no value can overflow a database column); responses
are documented with them in the OpenAPI document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hoody.agent.spec import INT_MAX, TenantSpec

__all__ = [
    "INT_MAX",
    "ActivityBody",
    "ActivityOut",
    "AuthorizeBody",
    "ClaimKeyOut",
    "ClaimOut",
    "ContainerOut",
    "ContainerPage",
    "CopyBody",
    "DeleteOut",
    "ErrorOut",
    "ExchangeBody",
    "HeartbeatBody",
    "JoinBody",
    "JoinOut",
    "NodeCapacityOut",
    "NodeOut",
    "NodeSettingsBody",
    "OperationOut",
    "OrphanOut",
    "ProjectBody",
    "ProjectContainerOut",
    "ProjectContainerPage",
    "ProjectOperationOut",
    "ProjectOut",
    "ProjectQuotaOut",
    "ProjectSettingsBody",
    "ProjectTemplateDeleteOut",
    "ProjectTemplateOut",
    "ProjectUsageOut",
    "ProjectVersionOut",
    "ReconcileOut",
    "ReplicaOut",
    "RevokeOut",
    "RouteTableOut",
    "SessionOut",
    "SleepBody",
    "SleeperRef",
    "SnapshotBody",
    "TemplateDeleteOut",
    "TemplateEstimateOut",
    "TemplateOut",
    "TemplateRef",
    "TemplateUsageIn",
    "TokenBody",
    "TokenOut",
    "VersionOut",
    "WhoamiOut",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SleepBody(_Body):
    mode: Literal["stopped", "frozen"] | None = Field(
        None, description="Default: the container's own sleep mode."
    )


class ActivityBody(_Body):
    seen: dict[str, float] = Field(
        description="Container id → seconds since its last request through this router."
    )
    woken: dict[str, float] = Field(
        default_factory=dict,
        description="Container id → seconds since this router woke it at its node "
        "(the node answered that it runs).",
    )


class ActivityOut(BaseModel):
    recorded: int
    woken: int = Field(0, description="Sleeping containers recorded as running again.")


class SleeperRef(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    mode: Literal["stopped", "frozen"] = "stopped"
    at: float = Field(description="When it went to sleep (the node's clock).")


class CopyBody(TenantSpec):
    """A copy: the tenant's spec (fields left out: its template's), and where it goes."""

    project: int | None = Field(
        default=None,
        ge=1,
        le=INT_MAX,
        description="Only for admin tokens: the project to copy into.",
    )
    strategy: Literal["spread", "pack"] | None = None

    def spec(self) -> TenantSpec:
        """The tenant's spec alone, as the fleet service takes it."""
        given = self.model_dump(exclude_unset=True, exclude={"project", "strategy"})
        return TenantSpec.model_validate(given)


class SnapshotBody(_Body):
    template: str | None = Field(None, description="Template name; default: the container's.")


class ProjectBody(_Body):
    name: str


class TokenBody(_Body):
    scope: Literal["admin", "project", "join", "router"]
    project_id: int | None = Field(None, ge=1, le=INT_MAX)
    description: str = Field("", max_length=200)
    ttl_seconds: int | None = Field(
        None, ge=60, le=30 * 86_400, description="Expiry; join tokens: one day by default."
    )


class JoinBody(_Body):
    name: str = Field(description="Node name (DNS label).")
    url: str = Field(description="The node agent's base URL, http://HOST:PORT.")
    agent_token: str = Field(description="The agent's bearer token.")


class TemplateRef(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    name: str = Field(max_length=63)
    version: int = Field(ge=1, le=INT_MAX)
    limits: dict[str, float | None] | None = None


class TemplateUsageIn(BaseModel):
    """What one template version's running tenants use on a node."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    name: str = Field(max_length=63)
    version: int = Field(ge=1, le=INT_MAX)
    tenants: int = Field(0, ge=0, le=INT_MAX, description="Running tenants measured.")
    memory_p90_bytes: int = Field(0, ge=0, le=1 << 60, description="p90 of their working set.")
    disk_p90_bytes: int = Field(0, ge=0, le=1 << 60, description="p90 of their own disk bytes.")
    memory_request_bytes: int = Field(0, ge=0, le=1 << 60)
    request_source: str = Field("limit", max_length=16)


class HeartbeatBody(_Body):
    headroom: dict[str, float] = Field(
        default_factory=dict,
        description="memory_total_bytes, overcommit, memory_reserve_bytes, "
        "memory_requested_bytes, memory_measured_bytes, memory_committed_bytes, "
        "disk_free_bytes, tenants…",
    )
    templates: list[TemplateRef] | None = Field(
        None, description="Template versions on the node; omitted: unchanged."
    )
    usage: list[TemplateUsageIn] | None = Field(
        None, description="Per template version, what its running tenants use."
    )
    tenant_usage: dict[str, tuple[int, int]] | None = Field(
        None,
        description="Each tenant's measured [memory bytes, own disk bytes]; omitted: unchanged.",
        max_length=100_000,
    )
    sleeping: dict[str, SleeperRef] | None = Field(
        None, description="Tenants asleep on the node (it may sleep some under memory pressure)."
    )


class NodeSettingsBody(_Body):
    overcommit: float | None = Field(
        None, ge=0.1, le=20, description="Memory x this is what placement may count."
    )
    reserve: str | None = Field(
        None,
        max_length=32,
        description="Memory kept for the host: a size (2G, 512M), a share (10%) or auto "
        "(10 %, at least 1 GiB).",
    )
    monthly_cost: float | None = Field(
        None, ge=0, le=1e11, description="What the server costs a month (the bill is the sum)."
    )
    currency: str | None = Field(
        None, pattern=r"^[A-Za-z]{3}$", description="ISO 4217 code, e.g. USD."
    )


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class _ContainerFields(BaseModel):
    id: str
    project_id: int
    template: str
    version: int
    state: str
    url: str
    limits: dict[str, Any]
    sleep: dict[str, Any] = Field(description="{idle_seconds, mode}: when and how it sleeps.")
    sleep_mode: str | None = Field(description="While sleeping: stopped or frozen.")
    metadata: dict[str, Any]
    created_at: float
    deleted_at: float | None


class ProjectContainerOut(_ContainerFields):
    """A container as project tokens (and Exec scripts) see it: where it runs (its
    node, its address there, why it was placed there) is the operator's to know.
    `url` is where its customers reach it (the router); empty when the fleet has no
    router, since it would be the tenant's address on its node."""

    @model_validator(mode="before")
    @classmethod
    def _no_node_address(cls, data: Any) -> Any:
        node_local = isinstance(data, dict) and data.get("address")
        if node_local and data.get("url") == f"http://{data['address']}/":
            return {**data, "url": ""}
        return data


class ContainerOut(_ContainerFields):
    """A container as admin tokens see it: with its node and its address there."""

    node: str
    ip: str
    address: str = Field(description="ip:port on its node (what the router forwards to).")
    placement: str = Field(description="Why this node was chosen.")


class ProjectContainerPage(BaseModel):
    items: list[ProjectContainerOut]
    next_cursor: str | None = Field(description="Pass back as `cursor`; null on the last page.")


class ContainerPage(BaseModel):
    items: list[ContainerOut]
    next_cursor: str | None = Field(description="Pass back as `cursor`; null on the last page.")


class DeleteOut(BaseModel):
    id: str
    deleted: bool
    existed: bool = Field(description="False when an earlier call already deleted it.")


class ReplicaOut(BaseModel):
    node: str
    state: str
    progress: float


class ProjectVersionOut(BaseModel):
    """A template version as project tokens see it: whether it can be copied, not
    which nodes hold it (the fleet's map is its operator's)."""

    version: int
    created_at: float
    limits: dict[str, Any]
    ready: bool = Field(description="A node holds it: copies of it can be made now.")
    replicating: bool = Field(description="Still on its way to some of the fleet's nodes.")


class VersionOut(ProjectVersionOut):
    """A template version as admin tokens see it: with the nodes that hold it."""

    nodes: list[ReplicaOut]


class _TemplateFields(BaseModel):
    name: str
    project_id: int | None
    shared: bool


class ProjectTemplateOut(_TemplateFields):
    versions: list[ProjectVersionOut]


class TemplateOut(_TemplateFields):
    versions: list[VersionOut]


class ProjectTemplateDeleteOut(BaseModel):
    name: str
    deleted: bool


class TemplateDeleteOut(ProjectTemplateDeleteOut):
    nodes: list[str] = Field(description="The nodes it was removed from.")


class NodeCapacityOut(BaseModel):
    """A node's figures as placement uses them (bytes)."""

    memory_total_bytes: int
    overcommit: float
    memory_capacity_bytes: int = Field(description="memory_total_bytes x overcommit.")
    memory_reserve_bytes: int = Field(description="Kept for the host; never given out.")
    memory_requested_bytes: int = Field(description="Sum of its tenants' requests.")
    memory_measured_bytes: int = Field(description="Sum of its tenants' working sets.")
    memory_committed_bytes: int = Field(
        description="Sum over its tenants of max(request, measured), copies being made "
        "included: what placement counts."
    )
    memory_free_bytes: int = Field(description="capacity - reserve - committed.")
    disk_total_bytes: int
    disk_free_bytes: int
    disk_margin_bytes: int = Field(description="Disk kept free for tenants to grow.")


class TemplateEstimateOut(BaseModel):
    template: str
    version: int
    memory_request_bytes: int = Field(description="What placement counts for one more.")
    request_source: str = Field(
        description="template (its version's request), learned (p90 of the working set "
        "of its running tenants), or limit (none measured yet)."
    )
    disk_bytes: int = Field(description="Disk one more is expected to use.")
    further_tenants: int = Field(description="How many more this node can take now.")
    limited_by: str = Field(description="memory, disk or tenants")


class NodeOut(BaseModel):
    name: str
    url: str
    state: str = Field(description="up, down, cordoned or draining")
    health: str
    cordon: str
    last_heartbeat: float
    headroom: dict[str, Any]
    containers: int
    memory_promised_mib: int = Field(description="Sum of its tenants' memory limits.")
    capacity: NodeCapacityOut
    estimates: list[TemplateEstimateOut] = Field(
        description="Per template version it holds: how many more tenants it can take."
    )
    monthly_cost: float | None = Field(None, description="What the server costs a month.")
    currency: str = "USD"


class JoinOut(BaseModel):
    node: NodeOut
    token: str | None = Field(
        description="The node's own token, for its heartbeats; null on a rejoin with it."
    )


class ProjectSettingsBody(_Body):
    """Quotas to set (null: no quota; absent: unchanged). They count the project's
    live containers' limits, so a project under them cannot grow past them."""

    max_tenants: int | None = Field(None, ge=0, le=INT_MAX, description="Live containers.")
    max_memory_mib: int | None = Field(
        None, ge=0, le=INT_MAX, description="Sum of the live containers' memory limits."
    )
    max_disk_mib: int | None = Field(
        None, ge=0, le=INT_MAX, description="Sum of the live containers' disk limits."
    )

    @field_validator("max_tenants", "max_memory_mib", "max_disk_mib", mode="before")
    @classmethod
    def _numbers_only(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("give a whole number or null, not true or false")
        return value


class ProjectQuotaOut(BaseModel):
    max_tenants: int | None = Field(description="null: no quota")
    max_memory_mib: int | None
    max_disk_mib: int | None


class ProjectUsageOut(BaseModel):
    tenants: int = Field(description="Live containers (being made, running, asleep, stopped…).")
    memory_mib: int = Field(description="Sum of their memory limits.")
    disk_mib: int = Field(description="Sum of their disk limits.")


class ProjectOut(BaseModel):
    id: int
    name: str
    created_at: float
    quota: ProjectQuotaOut
    usage: ProjectUsageOut = Field(description="What counts against the quota now.")


class TokenOut(BaseModel):
    id: int
    prefix: str
    scope: str
    project_id: int | None
    node: str | None
    description: str
    created_at: float
    expires_at: float | None = Field(None, description="None: never expires.")
    revoked: bool
    token: str | None = Field(None, description="The secret; shown only when created.")


class OperationOut(BaseModel):
    id: str
    kind: str
    target: str
    state: str = Field(description="running, succeeded or failed")
    result: dict[str, Any]
    error: dict[str, Any] | None
    created_at: float
    updated_at: float


# What a project may read of an operation's result (a snapshot's: not its node).
_PROJECT_RESULT = ("template", "version")


class ProjectOperationOut(OperationOut):
    """An operation as project tokens see it: its result without the nodes involved."""

    @field_validator("result", mode="before")
    @classmethod
    def _own_fields(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if k in _PROJECT_RESULT}
        return value


class OrphanOut(BaseModel):
    node: str
    tenant: str = Field(description="The tenant id on that node; no container row has it.")
    state: str = Field(description="What the node says the tenant is doing")
    first_seen: float
    last_seen: float
    remove_at: float | None = Field(
        description="When the reconcile loop removes it (null: kept until removed by hand)"
    )


class ReconcileOut(BaseModel):
    adopted: list[str] = Field(description="Rows left creating that their node had: kept")
    failed: list[str] = Field(description="Rows left creating that no node had: failed")
    deleted: list[str] = Field(description="Rows left deleting, now deleted on their node")
    orphans: list[str] = Field(description="Tenants on a node without a row")
    removed: list[str] = Field(description="Orphans removed after their grace period")
    unreachable: list[str] = Field(description="Nodes that could not be asked this round")
    released_keys: list[str] = Field(
        description="Idempotency keys of copies that died before making a row: released"
    )


class WhoamiOut(BaseModel):
    scope: str
    project_id: int | None
    node: str | None


class AuthorizeBody(_Body):
    ttl_seconds: int | None = Field(
        None, ge=1, le=INT_MAX, description="Shorter than the fleet's limit (1 h) if asked."
    )


class ClaimOut(BaseModel):
    container_claim: str
    expires_at: float
    url: str = Field(description="Open this URL to exchange the claim for a session, once.")


class RevokeOut(BaseModel):
    id: str
    claims_generation: int


class ExchangeBody(_Body):
    container: str = Field(max_length=63)
    claim: str = Field(max_length=4096)


class SessionOut(BaseModel):
    session: str
    expires_at: float
    max_age: int


class RouteOut(BaseModel):
    upstream: str
    node: str
    state: str
    public: bool
    generation: int


class NodeDoorOut(BaseModel):
    agent: str = Field(description="The node agent's URL.")
    wake: str = Field(description="The node's wake-only token: it wakes its tenants, nothing else.")


class RouteTableOut(BaseModel):
    routes: dict[str, RouteOut]
    nodes: dict[str, NodeDoorOut] = Field(
        description="Where a router wakes a sleeping tenant: its node's agent, by node name."
    )
    keys: dict[str, str]
    retired: list[str]
    newest: str | None


class ClaimKeyOut(BaseModel):
    kid: str
    public_key: str = Field(description="The Ed25519 public key routers verify its claims with.")
    created_at: float
    retired_at: float | None = None
