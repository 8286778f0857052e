"""Where a node keeps its things, and the knobs an operator sets at `hoody node init`."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from hoody.agent.ids import DEFAULT_ID_BASE, DEFAULT_ID_SLOTS, IdArea
from hoody.agent.network import NetworkConfig
from hoody.agent.usage import parse_reserve
from hoody.errors import InvalidInput, NotFound
from hoody.private import private_dir, private_file

__all__ = ["DEFAULT_STATE_DIR", "NodeConfig"]

DEFAULT_STATE_DIR = Path("/var/lib/hoody")


@dataclass(frozen=True)
class NodeConfig:
    """One node agent's configuration; saved as `<state_dir>/node.json`.

    `name` prefixes the bridge, netns, nft table, cgroup parent and runtime state, so
    several nodes (tests, benchmarks, the fleet test's three agents) never collide.
    """

    name: str = "hoody"
    state_dir: Path = DEFAULT_STATE_DIR
    run_dir: Path = Path("/run/hoody")
    pool: Path = DEFAULT_STATE_DIR / "pool"
    pool_image: Path | None = DEFAULT_STATE_DIR / "pool.img"
    pool_size: str = "20G"
    subnet: str = "10.88.0.0/16"
    # The host ids this node hands its tenants: one owner uid and one range of 65,536
    # ids per tenant (hoody.agent.ids). Two nodes on one host need disjoint areas.
    id_base: int = DEFAULT_ID_BASE
    id_slots: int = DEFAULT_ID_SLOTS
    storage_mode: str = "overlay"
    listen: str = "127.0.0.1:7070"
    log_max_bytes: int = 1 << 20
    log_keep: int = 2
    # Where the fleet's routers connect from when they are not on this server: a
    # tenant's "node" ingress rules admit these too (`hoody node init --allow-router`).
    routers: tuple[str, ...] = ()
    # Tenants per Linux bridge (a bridge holds at most 1,023 ports): past it the next
    # block of addresses goes on a new bridge. A power of two, 4 to 512.
    ports_per_bridge: int = 512
    # Placement: this node takes tenants while the sum of max(request, measured use)
    # plus the reserve stays within its memory times `overcommit` (hoody.agent.usage
    # says why 1.0 and `auto`, 10 % of memory and at least 1 GiB).
    overcommit: float = 1.0
    memory_reserve: str = "auto"
    # The servers' own networks (LAN, other nodes' tenant subnets): tenants' default
    # egress never reaches them (`hoody node init --management`).
    management: tuple[str, ...] = ()
    # Memory pressure (PSI, see agent/pressure.py): sustained once tasks stalled on
    # memory at least `pressure_pct` % of every second for `pressure_seconds`; then
    # the node takes no tenants and puts those idle `pressure_idle_seconds` to sleep.
    pressure_pct: float = 10.0
    pressure_seconds: float = 5.0
    pressure_idle_seconds: float = 60.0

    def __post_init__(self) -> None:
        over = self.overcommit
        if isinstance(over, bool) or not isinstance(over, int | float) or not 0.1 <= over <= 20:
            raise InvalidInput(
                f"overcommit {over!r} is invalid; give a ratio from 0.1 to 20 "
                "(1.0: never count more memory than the node has)"
            )
        object.__setattr__(self, "overcommit", float(over))
        parse_reserve(self.memory_reserve)
        if not re.fullmatch(r"[a-z][a-z0-9]{0,5}", self.name):
            raise InvalidInput(
                f"node name {self.name!r} is invalid; use 1-6 lowercase letters and digits, "
                "starting with a letter (it prefixes links, tables and cgroups)"
            )
        if self.storage_mode not in ("overlay", "snapshot"):
            raise InvalidInput(
                f"storage mode {self.storage_mode!r} is invalid; use overlay or snapshot"
            )
        object.__setattr__(self, "routers", tuple(self.routers))
        IdArea(self.id_base, self.id_slots)  # validates
        object.__setattr__(self, "management", tuple(self.management))
        for what, cidrs in (("router source", self.routers), ("management", self.management)):
            for cidr in cidrs:
                try:
                    ipaddress.IPv4Network(cidr, strict=False)
                except ValueError as exc:
                    raise InvalidInput(
                        f"{what} {cidr!r} is invalid; give an IPv4 CIDR like 192.0.2.0/24"
                    ) from exc
        for knob, low, high in (
            ("pressure_pct", 0.01, 100.0),
            ("pressure_seconds", 1.0, 3600.0),
            ("pressure_idle_seconds", 0.0, 86400.0),
        ):
            value = getattr(self, knob)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"{knob} {value!r} is invalid; give a number")
            if not low <= value <= high:
                raise InvalidInput(f"{knob} {value} is invalid; give {low:g} to {high:g}")
        try:
            self.network.network.hosts()
        except ValueError as exc:
            raise InvalidInput(
                f"subnet {self.subnet!r} is invalid; give an IPv4 CIDR like 10.88.0.0/16"
            ) from exc

    @property
    def network(self) -> NetworkConfig:
        return NetworkConfig(
            name=self.name,
            subnet=self.subnet,
            routers=self.routers,
            ports_per_bridge=self.ports_per_bridge,
            management=self.management,
        )

    @property
    def ids(self) -> IdArea:
        return IdArea(self.id_base, self.id_slots)

    @property
    def node_run_dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def db_path(self) -> Path:
        return self.state_dir / "node.db"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def token_path(self) -> Path:
        return self.state_dir / "agent.token"

    @property
    def cgroup_parent(self) -> str:
        return f"hoody-{self.name}"

    def save(self) -> None:
        private_dir(self.state_dir)
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        path = private_file(self.state_dir / "node.json")
        path.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path = DEFAULT_STATE_DIR) -> NodeConfig:
        path = state_dir / "node.json"
        if not path.exists():
            raise NotFound(f"no node configured in {state_dir}; run `hoody node init` first")
        data: dict[str, Any] = json.loads(path.read_text())
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                continue
            if key in ("state_dir", "run_dir", "pool", "pool_image") and value is not None:
                value = Path(value)
            kwargs[key] = value
        return cls(**kwargs)

    def with_(self, **changes: Any) -> NodeConfig:
        return replace(self, **changes)
