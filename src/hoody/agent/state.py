"""The node's own records, in SQLite: templates, tenants, IP leases, ids ever used.

The database is the agent's memory of what *should* exist; the host is what does.
`Node.reconcile` brings the two together on start. Writes are serialised by one lock
(SQLite allows one writer anyway), so IP leases and ids are allocated atomically.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hoody.agent.ids import DEFAULT_ID_SLOTS
from hoody.agent.spec import FirewallPolicy, Limits, SleepPolicy
from hoody.errors import Conflict, Exhausted, NotFound
from hoody.private import private_dir, private_file

__all__ = ["QUARANTINE", "NodeStore", "TemplateRecord", "TenantRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS templates (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    config TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    template TEXT NOT NULL,
    version INTEGER NOT NULL,
    mode TEXT NOT NULL,
    ip TEXT UNIQUE,
    desired TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    config TEXT NOT NULL
);
-- Tenant ids are never reused, also after delete: a stale URL must not reach a
-- newer tenant of the same name.
CREATE TABLE IF NOT EXISTS used_ids (id TEXT PRIMARY KEY);
-- Addresses of deleted tenants, kept from the next tenant for QUARANTINE seconds.
CREATE TABLE IF NOT EXISTS freed_ips (ip TEXT PRIMARY KEY, freed_at REAL NOT NULL);
-- The slot of the node's id area each tenant holds (its owner uid and host id range,
-- hoody.agent.ids); freed with the tenant, so a later tenant may get it again.
CREATE TABLE IF NOT EXISTS id_slots (slot INTEGER PRIMARY KEY, tenant TEXT UNIQUE NOT NULL);
"""

# A deleted tenant's address goes to no new tenant for this long: longer than any
# router keeps a route it cannot refresh (router.table.STALE_AFTER, 30 s), so a router
# that still holds the old route cannot send the old tenant's customers to a new one.
QUARANTINE = 120.0

_TENANTS = "SELECT tenants.*, id_slots.slot FROM tenants LEFT JOIN id_slots ON tenant = id"
# Columns added after the first release, with their definitions: added on open to a
# database that lacks them.
_ADDED_COLUMNS = {
    "tenants": {
        # How the tenant sleeps ("stopped" or "frozen"); "" while awake.
        "asleep": "TEXT NOT NULL DEFAULT ''",
        "slept_at": "REAL NOT NULL DEFAULT 0",
    },
}
_TENANT_COLUMNS = (
    "id, template, version, mode, ip, desired, status, pid, created_at, config, asleep, slept_at"
)


@dataclass(frozen=True)
class TemplateRecord:
    """A template version and the defaults its tenants inherit."""

    name: str
    version: int
    created_at: float
    args: tuple[str, ...] = ("/bin/sh",)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 8080
    limits: Limits = field(default_factory=Limits)
    firewall: FirewallPolicy = field(default_factory=FirewallPolicy)
    ksm: bool = False
    # The node's init runs as PID 1 in front of `args`; False: `args` is an init.
    init: bool = True
    sleep: SleepPolicy = field(default_factory=SleepPolicy)

    def config_json(self) -> str:
        return json.dumps(
            {
                "args": list(self.args),
                "env": self.env,
                "port": self.port,
                "limits": self.limits.to_json(),
                "firewall": self.firewall.to_json(),
                "ksm": self.ksm,
                "init": self.init,
                "sleep": self.sleep.to_json(),
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            **json.loads(self.config_json()),
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TemplateRecord:
        cfg = json.loads(row["config"])
        return cls(
            name=row["name"],
            version=row["version"],
            created_at=row["created_at"],
            args=tuple(cfg["args"]),
            env=cfg["env"],
            port=cfg["port"],
            limits=Limits.from_json(cfg["limits"]),
            firewall=FirewallPolicy.from_json(cfg["firewall"]),
            ksm=cfg["ksm"],
            init=cfg.get("init", True),
            sleep=SleepPolicy.from_json(cfg.get("sleep")),
        )


@dataclass(frozen=True)
class TenantRecord:
    id: str
    template: str
    version: int
    mode: str
    ip: str
    desired: str  # "running" or "stopped": what the agent keeps it at
    status: str  # "creating", "running", "sleeping", "stopped", "failed", "deleting"
    pid: int
    created_at: float
    args: tuple[str, ...]
    env: dict[str, str]
    port: int
    limits: Limits
    firewall: FirewallPolicy
    ksm: bool
    metadata: dict[str, Any]
    init: bool = True
    slot: int = -1  # of the node's id area (hoody.agent.ids); -1 until reserved
    sleep: SleepPolicy = field(default_factory=SleepPolicy)
    asleep: str = ""  # while sleeping: "stopped" or "frozen"
    slept_at: float = 0.0

    def config_json(self) -> str:
        return json.dumps(
            {
                "args": list(self.args),
                "env": self.env,
                "port": self.port,
                "limits": self.limits.to_json(),
                "firewall": self.firewall.to_json(),
                "ksm": self.ksm,
                "init": self.init,
                "metadata": self.metadata,
                "sleep": self.sleep.to_json(),
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "template": self.template,
            "version": self.version,
            "mode": self.mode,
            "ip": self.ip,
            "state": self.status,
            "sleep_mode": self.asleep or None,
            "slept_at": self.slept_at or None,
            "desired": self.desired,
            "pid": self.pid,
            "created_at": self.created_at,
            "address": f"{self.ip}:{self.port}",
            "url": f"http://{self.ip}:{self.port}/",
            **{k: v for k, v in json.loads(self.config_json()).items()},
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TenantRecord:
        return cls(
            id=row["id"],
            template=row["template"],
            version=row["version"],
            mode=row["mode"],
            ip=row["ip"],
            desired=row["desired"],
            status=row["status"],
            pid=row["pid"],
            created_at=row["created_at"],
            slot=row["slot"] if row["slot"] is not None else -1,
            asleep=row["asleep"],
            slept_at=row["slept_at"],
            **_decoded_config(row["config"]),
        )


@functools.lru_cache(maxsize=8192)
def _decoded_config(text: str) -> dict[str, Any]:
    """A tenant's configuration column, decoded and validated once per distinct text.

    The node reads every tenant record every 2 s (headroom, usage, heartbeats) and a
    configuration changes rarely: decoding each one anew cost 84 ms per 2,000 tenants
    on this VM. Records are frozen and nothing edits their env or metadata in place,
    so tenants with the same text may share the decoded values."""
    cfg = json.loads(text)
    return {
        "args": tuple(cfg["args"]),
        "env": cfg["env"],
        "port": cfg["port"],
        "limits": Limits.from_json(cfg["limits"]),
        "firewall": FirewallPolicy.from_json(cfg["firewall"]),
        "ksm": cfg["ksm"],
        "metadata": cfg.get("metadata", {}),
        "init": cfg.get("init", True),
        "sleep": SleepPolicy.from_json(cfg.get("sleep")),
    }


class NodeStore:
    """Thread-safe access to the node database at `path` (":memory:" for unit tests)."""

    def __init__(self, path: Path | str) -> None:
        if isinstance(path, Path):
            private_dir(path.parent)
            private_file(path)  # SQLite gives its -wal and -shm files the same mode
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        for table, columns in _ADDED_COLUMNS.items():
            have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, definition in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
        self._lock = threading.RLock()

    def close(self) -> None:
        # Under the lock: closing while another thread (the supervisor) is inside a
        # query crashed the process (a segfault in CI); after it, queries raise.
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # templates

    def add_template(self, rec: TemplateRecord) -> None:
        with self._tx() as db:
            try:
                db.execute(
                    "INSERT INTO templates VALUES (?, ?, ?, ?)",
                    (rec.name, rec.version, rec.created_at, rec.config_json()),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(
                    f"template {rec.name} version {rec.version} exists; "
                    "a new version gets the next number"
                ) from exc

    def next_template_version(self, name: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(version) FROM templates WHERE name = ?", (name,)
            ).fetchone()
        return int(row[0] or 0) + 1

    def template(self, name: str, version: int | None = None) -> TemplateRecord:
        """The given version, or the newest. NotFound names `hoody node template ls`."""
        with self._lock:
            if version is None:
                row = self._db.execute(
                    "SELECT * FROM templates WHERE name = ? ORDER BY version DESC LIMIT 1",
                    (name,),
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT * FROM templates WHERE name = ? AND version = ?", (name, version)
                ).fetchone()
        if row is None:
            which = name if version is None else f"{name} version {version}"
            raise NotFound(
                f"template {which} does not exist; `hoody node template ls` lists templates, "
                "`hoody node template create` makes one"
            )
        return TemplateRecord.from_row(row)

    def templates(self) -> list[TemplateRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM templates ORDER BY name, version").fetchall()
        return [TemplateRecord.from_row(r) for r in rows]

    def remove_template(self, name: str, version: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM templates WHERE name = ? AND version = ?", (name, version))

    # tenants

    def reserve_tenant(
        self,
        rec: TenantRecord,
        subnet: ipaddress.IPv4Network,
        now: float | None = None,
        *,
        slots: int = DEFAULT_ID_SLOTS,
    ) -> TenantRecord:
        """Insert the tenant as "creating" with the lowest free IP and the lowest free id
        slot below `slots`; ids are never reused, addresses of deleted tenants only after
        QUARANTINE seconds.

        Raises Conflict when the id was ever used, Exhausted when the subnet or the id
        area is full.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            if db.execute("SELECT 1 FROM used_ids WHERE id = ?", (rec.id,)).fetchone():
                raise Conflict(
                    f"tenant id {rec.id!r} is taken (ids are never reused, also after delete); "
                    "choose another name or omit it for a generated one"
                )
            db.execute("INSERT INTO used_ids VALUES (?)", (rec.id,))
            taken = {r[0] for r in db.execute("SELECT ip FROM tenants WHERE ip IS NOT NULL")}
            db.execute("DELETE FROM freed_ips WHERE freed_at <= ?", (now - QUARANTINE,))
            resting = {r[0] for r in db.execute("SELECT ip FROM freed_ips")}
            hosts = subnet.hosts()
            next(hosts)  # the gateway
            ip = next((str(h) for h in hosts if str(h) not in taken | resting), None)
            if ip is None:
                wait = f"; {len(resting)} free again within {QUARANTINE:.0f} s" if resting else ""
                raise Exhausted(
                    f"no free address left in {subnet}{wait}; delete tenants or configure a "
                    "larger subnet with `hoody node init --subnet`"
                )
            held = [r[0] for r in db.execute("SELECT slot FROM id_slots ORDER BY slot")]
            slot = next((i for i, s in enumerate(held) if i != s), len(held))
            if slot >= slots:
                raise Exhausted(
                    f"all {slots} id slots of this node are taken (one per tenant); delete "
                    "tenants or give the node more with `hoody node init --id-slots`"
                )
            db.execute("INSERT INTO id_slots VALUES (?, ?)", (slot, rec.id))
            rec = replace(rec, ip=ip, slot=slot)
            db.execute(
                f"INSERT INTO tenants ({_TENANT_COLUMNS}) VALUES ({', '.join('?' * 12)})",
                (
                    rec.id,
                    rec.template,
                    rec.version,
                    rec.mode,
                    rec.ip,
                    rec.desired,
                    rec.status,
                    rec.pid,
                    rec.created_at,
                    rec.config_json(),
                    rec.asleep,
                    rec.slept_at,
                ),
            )
        return rec

    def tenant(self, tid: str) -> TenantRecord:
        with self._lock:
            row = self._db.execute(f"{_TENANTS} WHERE id = ?", (tid,)).fetchone()
        if row is None:
            raise NotFound(f"tenant {tid!r} does not exist; `hoody ls` lists tenants")
        return TenantRecord.from_row(row)

    def tenants(self) -> list[TenantRecord]:
        with self._lock:
            rows = self._db.execute(f"{_TENANTS} ORDER BY created_at, id").fetchall()
        return [TenantRecord.from_row(r) for r in rows]

    def lifecycle(self, awake: bool = False) -> list[tuple[str, str, str]]:
        """(id, desired, status) of every tenant: what the supervisor polls, without
        decoding each tenant's whole configuration twice a second. `awake`: only
        those that should be running now (not asleep, not being made or removed),
        the ones the supervisor restarts: at 2,000 tenants most sleep."""
        where = (
            "WHERE desired = 'running' AND status NOT IN ('creating', 'deleting', 'sleeping')"
            if awake
            else ""
        )
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, desired, status FROM tenants {where} ORDER BY created_at, id"
            ).fetchall()
        return [(r["id"], r["desired"], r["status"]) for r in rows]

    def sleepers(self) -> list[tuple[str, str, float]]:
        """(id, sleep mode, when it fell asleep) of every sleeping tenant, without
        decoding the configurations (every heartbeat asks; thousands may sleep)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, asleep, slept_at FROM tenants WHERE status = 'sleeping'"
            ).fetchall()
        return [(r["id"], r["asleep"], r["slept_at"]) for r in rows]

    def id_used(self, tid: str) -> bool:
        with self._lock:
            return bool(self._db.execute("SELECT 1 FROM used_ids WHERE id = ?", (tid,)).fetchone())

    def update_tenant(self, tid: str, **fields: Any) -> None:
        allowed = {"desired", "status", "pid", "asleep", "slept_at"}
        assert set(fields) <= allowed, fields
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE tenants SET {sets} WHERE id = ?", (*fields.values(), tid))

    def update_tenant_config(self, rec: TenantRecord) -> None:
        with self._tx() as db:
            db.execute("UPDATE tenants SET config = ? WHERE id = ?", (rec.config_json(), rec.id))

    def remove_tenant(self, tid: str, now: float | None = None) -> None:
        """Forget the tenant and free its id slot; its id stays used and its IP rests
        for QUARANTINE s."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO freed_ips SELECT ip, ? FROM tenants "
                "WHERE id = ? AND ip IS NOT NULL",
                (now, tid),
            )
            db.execute("DELETE FROM tenants WHERE id = ?", (tid,))
            db.execute("DELETE FROM id_slots WHERE tenant = ?", (tid,))

    def forget_tenant(self, tid: str) -> None:
        """Undo of `reserve_tenant`: the record and its id go, as if never made."""
        with self._tx() as db:
            db.execute("DELETE FROM tenants WHERE id = ?", (tid,))
            db.execute("DELETE FROM id_slots WHERE tenant = ?", (tid,))
            db.execute("DELETE FROM used_ids WHERE id = ?", (tid,))

    def template_in_use(self, name: str, version: int) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM tenants WHERE template = ? AND version = ?", (name, version)
            ).fetchall()
        return [r[0] for r in rows]
