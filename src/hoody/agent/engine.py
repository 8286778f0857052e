"""The node engine: templates and tenants on one server, from copy to delete.

A copy is a pipeline of steps, each registering its undo (so a failure at any step
leaves nothing behind):

    record (id + IP lease) → subvolume → overlay mount → netns + veth → nft chain
    → OCI container started

A running tenant can sleep: "stopped" ends its processes and keeps everything else
(memory freed), "frozen" freezes them in their cgroup (CPU freed, memory kept). A
sleeping tenant is not restarted by the supervisor; `wake` (or `start`) brings it back.

Delete runs the same parts in reverse and tolerates each part being absent already,
which makes deleting twice harmless and lets `reconcile` finish what a killed agent
started. Drivers are injected; `Node.linux` wires the real ones.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hoody.agent.config import NodeConfig
from hoody.agent.host import HostFacts
from hoody.agent.ids import TEMPLATE_ID_SHIFT, TenantIds
from hoody.agent.network import Firewall, Network
from hoody.agent.pressure import MemoryPressure
from hoody.agent.runtime import ContainerSpec, ExecResult, ExecSession, Runtime, UserNamespace
from hoody.agent.spec import (
    SLEEP_MODES,
    FirewallPolicy,
    Limits,
    SleepPolicy,
    TenantSpec,
    check_env,
    check_name,
    check_tenant_id,
)
from hoody.agent.state import NodeStore, TemplateRecord, TenantRecord
from hoody.agent.storage import StorageDriver, StorageMode, TemplateVersionRef
from hoody.errors import Conflict, Exhausted, HoodyError, InvalidInput, NotFound
from hoody.private import private_dir
from hoody.undo import Undo

__all__ = ["Node", "TemplateSource"]

log = logging.getLogger(__name__)

_ALPHABET = string.ascii_lowercase + string.digits
LOG_CHECK_EVERY = 10.0  # seconds between checks of the tenants' log sizes


@dataclass(frozen=True)
class TemplateSource:
    """Fills a new template version's root directory; `describe` is for messages."""

    populate: Callable[[Path], None]
    describe: str


class Node:
    """Everything a node agent does, callable directly by tests and by the API."""

    def __init__(
        self,
        config: NodeConfig,
        store: NodeStore,
        storage: StorageDriver,
        network: Network,
        firewall: Firewall,
        runtime: Runtime,
        pressure: MemoryPressure | None = None,
        host: HostFacts | None = None,
    ) -> None:
        self.config = config
        self.host = host or HostFacts()
        # Memory pressure of this host (None: not watched); api.py samples it.
        self.pressure = pressure
        self.store = store
        self.storage = storage
        self.network = network
        self.firewall = firewall
        self.runtime = runtime
        # Per-tenant locks: start/stop/delete of one tenant never interleave, while
        # different tenants proceed in parallel.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._restarts: dict[str, tuple[int, float]] = {}
        self._logs_checked = -LOG_CHECK_EVERY
        # Runs a step alongside another of the same tenant (see _bring_up).
        self._steps = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hoody-step")

    def _lock(self, tid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(tid, threading.Lock())

    # templates

    def create_template(
        self,
        name: str,
        source: TemplateSource,
        *,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        port: int = 8080,
        limits: dict[str, Any] | None = None,
        firewall: dict[str, Any] | None = None,
        ksm: bool = False,
        init: bool = True,
        sleep: dict[str, Any] | None = None,
    ) -> TemplateRecord:
        """Make the next version of template `name` from `source`.

        The version's defaults (entrypoint, env, limits, firewall, KSM, sleep) are copied
        to each tenant made from it and can be overridden per tenant. `init=False` says
        the entrypoint is an init itself (systemd, s6, tini): no init goes in front.
        """
        check_name(name)
        if not 1 <= port <= 65535:
            raise InvalidInput(f"port {port} is invalid; give a number between 1 and 65535")
        version = self.store.next_template_version(name)
        rec = TemplateRecord(
            name=name,
            version=version,
            created_at=time.time(),
            args=tuple(args or ("/bin/sh",)),
            env=check_env(env),
            port=port,
            limits=Limits.from_json(limits),
            firewall=FirewallPolicy.from_json(firewall),
            ksm=ksm,
            init=init,
            sleep=SleepPolicy.from_json(sleep),
        )
        ref = TemplateVersionRef(name, version)
        with Undo() as undo:
            self.storage.create_template_version(ref, source.populate, TEMPLATE_ID_SHIFT)
            undo.add(lambda: self.storage.delete_template_version(ref), "delete version")
            self.store.add_template(rec)
            undo.commit()
        return rec

    def template_from_tenant(
        self, tid: str, name: str | None = None, version: int | None = None
    ) -> TemplateRecord:
        """Snapshot a tenant's filesystem into a new version of `name` (default: its
        template), numbered `version` (default: the next on this node; the fleet passes
        its own next number so a version means the same files on every node)."""
        tenant = self.store.tenant(tid)
        name = check_name(name or tenant.template)
        try:
            base = self.store.template(tenant.template, tenant.version)
        except NotFound:
            base = TemplateRecord(name=name, version=0, created_at=0)
        if version is not None and not 1 <= version < 2**31:
            raise InvalidInput(f"template version {version} is invalid; give 1 or more")
        version = version or self.store.next_template_version(name)
        rec = replace(
            base,
            name=name,
            version=version,
            created_at=time.time(),
            args=tenant.args,
            env=tenant.env,
            port=tenant.port,
            limits=tenant.limits,
            firewall=tenant.firewall,
            ksm=tenant.ksm,
            init=tenant.init,
            sleep=tenant.sleep,
        )
        ref = TemplateVersionRef(name, version)
        with self._lock(tid), Undo() as undo:
            self.storage.version_from_tenant(ref, tid)
            undo.add(lambda: self.storage.delete_template_version(ref), "delete version")
            self.store.add_template(rec)
            undo.commit()
        return rec

    def delete_template(self, name: str, version: int | None = None) -> list[TemplateRecord]:
        """Delete one version, or every version; refused while tenants use it."""
        records = (
            [self.store.template(name, version)]
            if version is not None
            else [t for t in self.store.templates() if t.name == name]
        )
        if not records:
            raise NotFound(
                f"template {name} does not exist; `hoody node template ls` lists templates"
            )
        for rec in records:
            users = self.store.template_in_use(rec.name, rec.version)
            if users:
                raise Conflict(
                    f"template {rec.name} version {rec.version} is used by {len(users)} "
                    f"tenant(s) ({', '.join(users[:3])}); delete them first"
                )
        for rec in records:
            self.storage.delete_template_version(TemplateVersionRef(rec.name, rec.version))
            self.store.remove_template(rec.name, rec.version)
        return records

    # template versions between nodes (the fleet's replication)

    def send_template(
        self, name: str, version: int, parent: int | None = None
    ) -> tuple[TemplateRecord, int, Iterator[bytes]]:
        """Version `version` of `name` as a stream for another node's `receive_template`:
        (its record, about how many bytes the stream has, the stream).

        With `parent`, an earlier version the receiver holds, only the difference is
        streamed. NotFound if either version is not on this node.
        """
        rec = self.store.template(name, version)
        parent_ref = None
        if parent is not None:
            self.store.template(name, parent)
            parent_ref = TemplateVersionRef(name, parent)
        ref = TemplateVersionRef(name, version)
        stream = self.storage.send_template_version(ref, parent_ref)
        return rec, self.storage.version_size(ref, parent_ref), stream

    def receive_template(self, rec: TemplateRecord, stream: Iterable[bytes]) -> TemplateRecord:
        """Make template version `rec` from another node's `send_template` stream.

        Conflict if this node has that version already; a failed or cut stream leaves
        nothing behind. The version is usable (and reported) only once it is whole.
        """
        check_name(rec.name)
        if any(t.name == rec.name and t.version == rec.version for t in self.store.templates()):
            raise Conflict(
                f"template {rec.name} version {rec.version} already exists on this node; "
                "nothing to receive"
            )
        ref = TemplateVersionRef(rec.name, rec.version)
        with Undo() as undo:
            self.storage.receive_template_version(ref, stream)
            undo.add(lambda: self.storage.delete_template_version(ref), "delete version")
            self.store.add_template(rec)
            undo.commit()
        return rec

    # tenants

    def copy(
        self,
        template: str,
        spec: TenantSpec | None = None,
        *,
        mode: StorageMode | None = None,
        start: bool = True,
    ) -> TenantRecord:
        """Create a tenant from a template version (`spec.version`, else the newest) with
        what `spec` asks for (the version's values for the rest), and start it.

        Returns the running tenant. On any failure every step taken is undone and the
        error is raised; the id is then free to use again.
        """
        spec = spec or TenantSpec()
        self._check_pressure()
        tmpl = self.store.template(template, spec.version)
        tid = spec.name if spec.name is not None else self._new_id(tmpl.name)
        storage_mode: StorageMode = mode or self.config.storage_mode  # type: ignore[assignment]
        if storage_mode not in self.storage.caps.modes:
            raise InvalidInput(
                f"storage mode {storage_mode!r} is not offered by this node; "
                f"use one of {', '.join(self.storage.caps.modes)}"
            )
        rec = TenantRecord(
            id=tid,
            template=tmpl.name,
            version=tmpl.version,
            mode=storage_mode,
            ip="",
            desired="running" if start else "stopped",
            status="creating",
            pid=0,
            created_at=time.time(),
            args=tmpl.args,
            env={**tmpl.env, **(spec.env or {})},
            port=tmpl.port,
            limits=tmpl.limits.merged(spec.limit_overrides()),
            # A copy's own rules never open more guarded networks than its template's.
            firewall=FirewallPolicy.from_json(spec.firewall).for_copy(
                tmpl.firewall, self.config.network.guarded, tmpl.name
            )
            if spec.firewall
            else tmpl.firewall,
            ksm=tmpl.ksm,
            metadata=dict(spec.metadata or {}),
            init=tmpl.init,
            sleep=tmpl.sleep.merged(spec.sleep_overrides()),
        )
        with self._lock(tid), Undo() as undo:
            rec = self.store.reserve_tenant(
                rec, self.config.network.network, slots=self.config.id_slots
            )
            undo.add(lambda: self.store.forget_tenant(tid), "forget record")
            ref = TemplateVersionRef(tmpl.name, tmpl.version)
            self.storage.create_tenant(
                tid, ref, storage_mode, rec.limits.disk_mib, self.ids(rec).base
            )
            undo.add(lambda: self.storage.delete_tenant(tid), "delete storage")
            undo.add(lambda: self._remove_logs(tid), "remove logs")
            rec = self._bring_up(rec, undo, start=start)
            undo.commit()
        return rec

    def copy_tenant(self, src: str, *, name: str | None = None) -> TenantRecord:
        """A new tenant whose files start as a copy of tenant `src`'s."""
        self._check_pressure()
        source = self.store.tenant(src)
        tid = check_tenant_id(name) if name is not None else self._new_id(source.template)
        rec = replace(
            source,
            id=tid,
            ip="",
            status="creating",
            pid=0,
            created_at=time.time(),
            asleep="",
            slept_at=0.0,
        )
        with self._lock(tid), Undo() as undo:
            rec = self.store.reserve_tenant(
                rec, self.config.network.network, slots=self.config.id_slots
            )
            undo.add(lambda: self.store.forget_tenant(tid), "forget record")
            with self._lock(src):
                self.storage.copy_tenant(src, tid, rec.limits.disk_mib, self.ids(rec).base)
            undo.add(lambda: self.storage.delete_tenant(tid), "delete storage")
            undo.add(lambda: self._remove_logs(tid), "remove logs")
            rec = self._bring_up(rec, undo, start=rec.desired == "running")
            undo.commit()
        return rec

    def ids(self, rec: TenantRecord) -> TenantIds:
        """The tenant's owner uid and host id range (from the slot its record holds)."""
        return self.config.ids.ids(rec.slot)

    def _check_pressure(self) -> None:
        if self.pressure is not None and self.pressure.sustained:
            raise Exhausted(
                f"this node is under {self.pressure.describe()}; it takes no new tenants "
                "until that ends (its idle tenants are being put to sleep); place the "
                "tenant on another node"
            )

    def sleepers(self) -> dict[str, dict[str, Any]]:
        """The sleeping tenants: id → {"mode", "at": when it fell asleep}."""
        return {
            tid: {"mode": mode or "stopped", "at": at} for tid, mode, at in self.store.sleepers()
        }

    def _bring_up(self, rec: TenantRecord, undo: Undo, *, start: bool) -> TenantRecord:
        """Mount, attach, firewall and (if `start`) run: the steps shared by copy and start.

        A new user namespace of the tenant's own (owner, range) serves the idmapped
        mount and the container; once the container joined it, nothing else holds it.
        """
        tid = rec.id
        # The network is made while the namespace and the mount are: each step mostly
        # waits on the kernel or a subprocess. The undo waits for it, then detaches
        # (harmless when it never attached).
        attaching = self._steps.submit(self.network.attach, tid, rec.ip)

        def detach() -> None:
            attaching.exception()  # waits until the attach has finished either way
            self.network.detach(tid)

        undo.add(detach, "detach network")
        with self.runtime.user_namespace(self.ids(rec), rec.limits) as userns:
            rootfs = self.storage.mount_tenant(tid, userns.fd)
            netns = attaching.result()
            return self._bring_up_in(rec, undo, userns, rootfs, netns, start=start)

    def _bring_up_in(
        self,
        rec: TenantRecord,
        undo: Undo,
        userns: UserNamespace,
        rootfs: Path,
        netns: Path,
        *,
        start: bool,
    ) -> TenantRecord:
        tid = rec.id
        undo.add(lambda: self.firewall.remove_tenant(tid), "remove firewall")
        pid = 0
        if not start:
            self.firewall.apply_tenant(tid, rec.ip, rec.firewall)
        elif self.firewall.has_tenant(tid, rec.ip):
            # Stopped or asleep (stopped): its chain stayed; one nft run fewer on the
            # way to a woken tenant's first answer (and no process beside runc's).
            pid = self.runtime.start(self._container_spec(rec, rootfs, netns, userns))
            undo.add(lambda: self.runtime.stop(tid, timeout=0), "stop container")
        else:
            # The firewall chain and the container start at the same time (both wait on
            # a subprocess). Safe: until the tenant's map entries exist, the base chains
            # drop everything to and from its address.
            firewall = self._steps.submit(self.firewall.apply_tenant, tid, rec.ip, rec.firewall)
            try:
                pid = self.runtime.start(self._container_spec(rec, rootfs, netns, userns))
                undo.add(lambda: self.runtime.stop(tid, timeout=0), "stop container")
            finally:
                applied = firewall.exception()  # waits; the undo needs it finished
            if applied is not None:
                raise applied
        if start:
            # Its link may still be on its way into service (usually done by now):
            # the first request to the tenant must not be dropped.
            self.network.wait_ready(tid)
        status = "running" if start else "stopped"
        self.store.update_tenant(tid, status=status, pid=pid)
        return replace(rec, status=status, pid=pid)

    def _container_spec(
        self, rec: TenantRecord, rootfs: Path, netns: Path, userns: UserNamespace
    ) -> ContainerSpec:
        private_dir(self.config.log_dir)
        return ContainerSpec(
            tid=rec.id,
            rootfs=rootfs,
            args=rec.args,
            limits=rec.limits,
            netns=netns,
            log_path=self.log_path(rec.id),
            env={**rec.env, "HOODY_TENANT": rec.id, "PORT": str(rec.port)},
            ids=self.ids(rec),
            userns=userns.path,
            ksm=rec.ksm and self.runtime.caps.memory_merge,
            init=rec.init,
        )

    def _new_id(self, template: str) -> str:
        stem = template[:50].rstrip("-")
        for _ in range(100):
            tid = f"{stem}-{''.join(secrets.choice(_ALPHABET) for _ in range(6))}"
            if not self.store.id_used(tid):
                return tid
        raise Conflict("could not find an unused tenant id; give one with --name")

    def log_path(self, tid: str) -> Path:
        return self.config.log_dir / f"{tid}.log"

    def tenant(self, tid: str) -> TenantRecord:
        return self.store.tenant(tid)

    def tenants(self) -> list[TenantRecord]:
        return self.store.tenants()

    def start(self, tid: str) -> TenantRecord:
        """Start a stopped tenant (no-op when running, a wake when sleeping); it keeps its
        address."""
        with self._lock(tid):
            rec = self.store.tenant(tid)
            if rec.status == "sleeping":
                return self._wake(rec)[0]
            self.store.update_tenant(tid, desired="running")
            rec = replace(rec, desired="running")
            if rec.status == "running" and self.runtime.state(tid).status == "running":
                return rec
            self._restarts.pop(tid, None)
            with Undo() as undo:
                rec = self._bring_up(rec, undo, start=True)
                undo.commit()
            return rec

    def stop(self, tid: str, timeout: float = 5.0) -> TenantRecord:
        """Stop the tenant's processes; its files, address and firewall stay."""
        with self._lock(tid):
            rec = self.store.tenant(tid)
            self.store.update_tenant(tid, desired="stopped")
            self.runtime.stop(tid, timeout=timeout)  # a frozen tenant is thawed to stop
            self.store.update_tenant(tid, status="stopped", pid=0, asleep="", slept_at=0.0)
            return replace(rec, desired="stopped", status="stopped", pid=0, asleep="", slept_at=0.0)

    def sleep(self, tid: str, mode: str | None = None, timeout: float = 2.0) -> TenantRecord:
        """Put a running tenant to sleep, in `mode` (default: its sleep policy's).

        stopped: its processes end (SIGTERM, SIGKILL after `timeout`); files, address
        and firewall stay. frozen: its processes freeze in their cgroup. Harmless when
        it sleeps already (in whichever mode). Raises Conflict unless it runs, and
        InvalidInput for an unknown mode.
        """
        if mode is not None and mode not in SLEEP_MODES:
            raise InvalidInput(f"sleep mode {mode!r} is invalid; use stopped or frozen")
        with self._lock(tid):
            rec = self.store.tenant(tid)
            if rec.status == "sleeping":
                return rec
            if rec.status != "running" or rec.desired != "running":
                raise Conflict(f"tenant {tid} is {rec.status}; only a running tenant can sleep")
            mode = mode or rec.sleep.mode
            if mode == "frozen":
                if not self.runtime.caps.freezer:
                    raise Conflict(
                        f"this node cannot freeze tenants (no cgroup freezer); "
                        f"sleep {tid} in the stopped mode"
                    )
                self.runtime.freeze(tid)
                pid = rec.pid
            else:
                self.runtime.stop(tid, timeout=timeout)
                pid = 0
            now = time.time()
            self.store.update_tenant(tid, status="sleeping", pid=pid, asleep=mode, slept_at=now)
            return replace(rec, status="sleeping", pid=pid, asleep=mode, slept_at=now)

    def wake(self, tid: str) -> TenantRecord:
        """Bring a sleeping tenant back: a thaw when frozen, a start when stopped.

        Returns the running tenant; harmless when it runs already. Raises Conflict for
        a tenant that is stopped or failed (`start` is for those).
        """
        return self.wake_from(tid)[0]

    def wake_from(self, tid: str) -> tuple[TenantRecord, str]:
        """`wake`, and the sleep it was woken from: "frozen", "stopped" (its processes
        were started again), or "" when it was awake."""
        with self._lock(tid):
            rec = self.store.tenant(tid)
            if rec.status == "running":
                return rec, ""
            if rec.status != "sleeping":
                raise Conflict(
                    f"tenant {tid} is {rec.status}, not sleeping; start it with `hoody start {tid}`"
                )
            return self._wake(rec)

    def _wake(self, rec: TenantRecord) -> tuple[TenantRecord, str]:
        """Wake `rec` (sleeping); the caller holds its lock. Returns it and how it
        slept ("frozen", or "stopped" when its processes had to be started)."""
        tid = rec.id
        state = self.runtime.state(tid)
        how = "stopped"
        if rec.asleep == "frozen" and state.status == "running":
            self.runtime.thaw(tid)
            pid, how = state.pid, "frozen"
        else:
            # Stopped, or frozen but gone since (the host restarted): start it again.
            # The network and firewall are still there; _bring_up checks them cheaply
            # and remakes what a host restart took.
            with Undo() as undo:
                pid = self._bring_up(rec, undo, start=True).pid
                undo.commit()
        self._restarts.pop(tid, None)
        self.store.update_tenant(tid, status="running", pid=pid, asleep="", slept_at=0.0)
        return replace(rec, status="running", pid=pid, asleep="", slept_at=0.0), how

    def restart(self, tid: str) -> TenantRecord:
        self.stop(tid)
        return self.start(tid)

    def delete(self, tid: str) -> bool:
        """Remove everything of the tenant. Returns False when it was already deleted.

        Raises NotFound only for an id this node never had.
        """
        check_tenant_id(tid)
        with self._lock(tid):
            try:
                self.store.tenant(tid)
            except NotFound:
                if self.store.id_used(tid):
                    return False
                raise
            self.store.update_tenant(tid, status="deleting", desired="stopped")
            self._teardown(tid)
            self.store.remove_tenant(tid)
        with self._locks_guard:
            self._locks.pop(tid, None)
        self._restarts.pop(tid, None)
        return True

    def _teardown(self, tid: str) -> None:
        """Every part of a tenant, newest first; each step tolerates absence."""
        self.runtime.stop(tid, timeout=0)
        self.firewall.remove_tenant(tid)
        self.network.detach(tid)
        self.storage.delete_tenant(tid)
        self._remove_logs(tid)

    def _remove_logs(self, tid: str) -> None:
        for path in self.config.log_dir.glob(f"{tid}.log*"):
            path.unlink(missing_ok=True)

    def exec(self, tid: str, argv: list[str], timeout: float = 60.0) -> ExecResult:
        self._check_exec(tid, argv, "hoody node exec")
        return self.runtime.exec(tid, argv, timeout=timeout)

    def open_exec(
        self,
        tid: str,
        argv: list[str],
        *,
        tty: bool = False,
        env: dict[str, str] | None = None,
        cols: int = 80,
        rows: int = 24,
    ) -> ExecSession:
        """Start argv in the running tenant with its streams open (no time limit: the
        caller kills it). Raises NotFound for an unknown tenant, Conflict when stopped."""
        self._check_exec(tid, argv, "hoody exec")
        return self.runtime.open_exec(tid, argv, tty=tty, env=env, cols=cols, rows=rows)

    def _check_exec(self, tid: str, argv: list[str], command: str) -> None:
        """Refuse an exec without a command, or into a tenant that is not running."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise InvalidInput(f"give the command to run, like `{command} CID -- ls /`")
        rec = self.store.tenant(tid)
        if self.runtime.state(tid).status != "running":
            raise Conflict(f"tenant {tid} is {rec.status}; start it with `hoody start {tid}`")

    def logs(self, tid: str, tail: int = 200) -> str:
        self.store.tenant(tid)
        path = self.log_path(tid)
        if not path.exists():
            return ""
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-tail:]) + ("\n" if lines else "")

    def usage(self, tid: str) -> dict[str, Any]:
        self.store.tenant(tid)
        return {
            "disk_bytes": self.storage.tenant_usage(tid),
            **self.runtime.memory_events(tid),
        }

    # supervision

    def supervise_once(self, now: float | None = None) -> list[str]:
        """Restart tenants whose main process exited, with exponential backoff.

        Backoff doubles from 1 s up to 60 s and resets once a tenant ran for 60 s.
        Also rotates logs. Returns the ids restarted this round.
        """
        now = time.monotonic() if now is None else now
        self.runtime.ensure_ready()  # e.g. lxcfs died: back before the next start
        restarted = []
        # Logs are looked at every LOG_CHECK_EVERY s, not every round: a stat per
        # tenant twice a second is 4,000 a second at 2,000 tenants, asleep ones too.
        rotate = now - self._logs_checked >= LOG_CHECK_EVERY
        if rotate:
            self._logs_checked = now
        # Every tenant's log when it is time to look at logs, else those to keep up.
        for tid, desired, status in self.store.lifecycle(awake=not rotate):
            if rotate:
                self._rotate_log(tid)
            if desired != "running" or status in ("creating", "deleting", "sleeping"):
                continue  # a sleeping tenant is down on purpose; a wake brings it back
            if self.runtime.state(tid).status == "running":
                failures, since = self._restarts.get(tid, (0, now))
                if failures and now - since > 60:
                    self._restarts.pop(tid, None)
                continue
            failures, last = self._restarts.get(tid, (0, 0.0))
            delay = min(60.0, 2.0 ** max(0, failures - 1)) if failures else 0.0
            if now - last < delay:
                continue
            lock = self._lock(tid)
            if not lock.acquire(blocking=False):
                continue
            try:
                current = self.store.tenant(tid)
                if (
                    current.desired != "running"
                    or current.status == "sleeping"
                    or self.runtime.state(tid).status == "running"
                ):
                    continue
                log.info("tenant %s exited; restart #%d", tid, failures + 1)
                self._restarts[tid] = (failures + 1, now)
                with Undo() as undo:
                    self._bring_up(current, undo, start=True)
                    undo.commit()
                restarted.append(tid)
            except HoodyError as exc:
                log.warning("restarting tenant %s failed: %s", tid, exc.message)
                self.store.update_tenant(tid, status="failed", pid=0)
            except NotFound:
                pass
            finally:
                lock.release()
        return restarted

    def _rotate_log(self, tid: str) -> None:
        """copytruncate: the container holds the log open with O_APPEND, so truncating
        in place keeps it writing to the live file."""
        path = self.log_path(tid)
        try:
            if path.stat().st_size <= self.config.log_max_bytes:
                return
        except FileNotFoundError:
            return
        for i in range(self.config.log_keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                older.rename(path.with_name(f"{path.name}.{i + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        os.truncate(path, 0)

    # reconcile

    def reconcile(self) -> dict[str, list[str]]:
        """Make the host match the records after an agent (re)start.

        Half-made tenants ("creating"/"deleting") are removed entirely; tenants that
        should run keep running (or are started); anything on the host without a
        record is removed. Returns what was done, by kind.
        """
        report: dict[str, list[str]] = {"removed": [], "started": [], "kept": [], "orphans": []}
        self.storage.ensure_ready()
        self.network.ensure_bridge()
        self.firewall.ensure_base()
        self.runtime.ensure_ready()
        records = {r.id: r for r in self.store.tenants()}
        for rec in records.values():
            if rec.status in ("creating", "deleting"):
                self._teardown(rec.id)
                if rec.status == "creating":
                    self.store.forget_tenant(rec.id)
                else:
                    self.store.remove_tenant(rec.id)
                report["removed"].append(rec.id)
                continue
            state = self.runtime.state(rec.id)
            if rec.status == "sleeping":
                if rec.asleep == "frozen" and state.status == "running":
                    self._remount(rec.id, state.pid)
                    self.network.attach(rec.id, rec.ip)
                    self.firewall.apply_tenant(rec.id, rec.ip, rec.firewall)
                    self.runtime.freeze(rec.id)  # harmless when frozen still
                else:
                    # Its processes are gone (a stopped sleep, or a host restart under a
                    # frozen one): it sleeps stopped, and a wake starts it.
                    self.runtime.stop(rec.id, timeout=0)
                    self.store.update_tenant(rec.id, pid=0, asleep="stopped")
                report["kept"].append(rec.id)
                continue
            if rec.desired == "running" and state.status == "running":
                self._remount(rec.id, state.pid)
                self.network.attach(rec.id, rec.ip)
                self.firewall.apply_tenant(rec.id, rec.ip, rec.firewall)
                self.store.update_tenant(rec.id, status="running", pid=state.pid)
                report["kept"].append(rec.id)
            elif rec.desired == "running":
                try:
                    with Undo() as undo:
                        self._bring_up(rec, undo, start=True)
                        undo.commit()
                    report["started"].append(rec.id)
                except HoodyError as exc:
                    log.warning("could not start tenant %s: %s", rec.id, exc.message)
                    self.store.update_tenant(rec.id, status="failed", pid=0)
            else:
                self.runtime.stop(rec.id, timeout=0)
                self.store.update_tenant(rec.id, status="stopped", pid=0)
        known = set(records) - set(report["removed"])
        orphans = (
            set(self.runtime.list())
            | set(self.storage.list_tenants())
            | set(self.network.list_attached())
            | set(self.firewall.list_tenants())
        ) - known
        for tid in sorted(orphans):
            self._teardown(tid)
            report["orphans"].append(tid)
        versions = {(t.name, t.version) for t in self.store.templates()}
        for ref in self.storage.list_template_versions():
            if (ref.template, ref.version) not in versions:
                self.storage.delete_template_version(ref)
                report["orphans"].append(f"template {ref.template}/{ref.version}")
        return report

    def _remount(self, tid: str, pid: int) -> None:
        """Mount a running tenant's rootfs if it is not (idempotent), through the
        user namespace its processes are in."""
        if self.storage.is_mounted(tid):
            return
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.storage.mount_tenant(tid, fd)
        finally:
            os.close(fd)

    def teardown_all(self) -> None:
        """Delete every tenant and template and the node's network (tests, benchmarks)."""
        for rec in self.store.tenants():
            self.delete(rec.id)
        for t in self.store.templates():
            self.storage.delete_template_version(TemplateVersionRef(t.name, t.version))
            self.store.remove_template(t.name, t.version)
        self.runtime.teardown()
        self.firewall.teardown()
        self.network.teardown()
