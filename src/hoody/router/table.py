"""The router's view of the fleet: which tenant lives where, who may see it, and the
keys sessions are verified with. Refreshed from the control plane twice a second, so a
copy, move or delete reaches the router within a second.

A table the router cannot refresh for STALE_AFTER seconds is dropped (the router then
answers 503 and says why): a deleted tenant's address may go to a new tenant once the
node's quarantine for it ends (agent/state.py, QUARANTINE, longer than this), and an
old route must not lead there.

The router wakes a sleeping tenant at its node: the table carries each node's agent
address and wake-only token, so a customer's first request waits for one hop, not for
the control plane and then the node. A node that cannot be reached or refuses is asked
through the control plane instead, which says why a tenant cannot wake.

Once a second the router reports which tenants it served (so that idle ones can be put
to sleep) and which it woke at their node (so the control plane records them running:
one write per report, no call back to the node). Until the control plane's table says
so too, the router keeps those it woke as running (for at most AWAKE_HOLD seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from hoody import claims
from hoody.agent.client import WOKE_HEADER, server_timing
from hoody.keepalive import CLIENT_LIMITS

__all__ = ["STALE_AFTER", "ControlPlaneTable", "Door", "Route", "RouteTable", "Woken"]

log = logging.getLogger(__name__)

STALE_AFTER = 30.0
# A node agent the router could not reach is not tried again for this long.
UNREACHABLE_PAUSE = 30.0
# A tenant woken at its node counts as running for this long at most while the control
# plane's table still says it sleeps (its record of the wake is up to a report behind).
AWAKE_HOLD = 5.0


@dataclass(frozen=True)
class Woken:
    """What a wake did: the sleep the tenant was woken from ("frozen", "stopped"; ""
    when it was awake already), whether the router woke it at its node (`at_node`) or
    through the control plane, and where the time went, in parts that add up (phase →
    seconds): control_plane, its own share; agent, the call to the node agent (from
    the control plane, or from the router) less the node's work; node, that work."""

    was: str = "stopped"
    phases: dict[str, float] = field(default_factory=dict)
    at_node: bool = False


@dataclass(frozen=True)
class Door:
    """Where a router wakes a node's tenants: its agent's URL and wake-only token."""

    agent: str
    token: str


@dataclass(frozen=True)
class Route:
    cid: str
    host: str  # upstream address on the tenant's node
    port: int
    state: str
    public: bool = False
    generation: int = 0
    node: str = ""

    @property
    def upstream(self) -> tuple[str, int]:
        return self.host, self.port


@dataclass
class RouteTable:
    routes: dict[str, Route] = field(default_factory=dict)
    ring: claims.KeyRing = field(default_factory=lambda: claims.KeyRing({}))
    doors: dict[str, Door] = field(default_factory=dict)  # node name → where it wakes
    # Tenants woken at their node → monotonic time of the wake (see AWAKE_HOLD).
    awake: dict[str, float] = field(default_factory=dict)
    loaded: bool = False
    stale: bool = False  # dropped: not refreshed for STALE_AFTER seconds
    # Called by `load` with the tenants that were running and now sleep (the router
    # wakes those it sent a request to that is still unanswered).
    on_sleep: Callable[[list[str]], None] | None = None
    _raw: dict[str, Any] = field(default_factory=dict)  # the routes last loaded, as sent

    def drop(self) -> None:
        """Forget every route and key (the control plane has been out of reach)."""
        self.routes = {}
        self._raw = {}
        self.doors = {}
        self.ring = claims.KeyRing({})
        self.stale = True

    def get(self, cid: str) -> Route | None:
        return self.routes.get(cid)

    def load(self, data: dict[str, Any]) -> None:
        """Replace the table with the control plane's `GET /api/v1/router/table`."""
        routes = {}
        old = self.routes
        raw, seen = data.get("routes", {}), self._raw
        if self.awake:
            now = time.monotonic()
            self.awake = {
                cid: at
                for cid, at in self.awake.items()
                if now - at < AWAKE_HOLD and raw.get(cid, {}).get("state") == "sleeping"
            }
        for cid, r in raw.items():
            state = str(r.get("state", ""))
            if state == "sleeping" and cid in self.awake:
                state = "running"  # woken here; the control plane is a report behind
            # Most routes are as they were half a second ago: keep those (building
            # 2,000 Routes twice a second held the router's event loop ~10 ms each time).
            route = old.get(cid)
            if route is None or seen.get(cid) != r or route.state != state:
                host, _, port = str(r.get("upstream", "")).rpartition(":")
                route = Route(
                    cid=cid,
                    host=host,
                    port=int(port) if port.isdigit() else 0,
                    state=state,
                    public=bool(r.get("public")),
                    generation=int(r.get("generation", 0)),
                    node=str(r.get("node", "")),
                )
            routes[cid] = route
        self._raw = raw
        self.routes = routes
        self.doors = {
            name: Door(str(d.get("agent", "")), str(d.get("wake", "")))
            for name, d in data.get("nodes", {}).items()
            if d.get("agent") and d.get("wake")
        }
        if self.on_sleep is not None:
            slept = [
                cid
                for cid, r in routes.items()
                if r.state == "sleeping" and (was := old.get(cid)) and was.state == "running"
            ]
            if slept:
                self.on_sleep(slept)
        ring = claims.KeyRing(
            dict(data.get("keys", {})), frozenset(data.get("retired", [])), data.get("newest")
        )
        if ring != self.ring:  # the same ring object while keys stay: sessions stay cached
            self.ring = ring
        self.loaded = True
        self.stale = False


class ControlPlaneTable:
    """Keeps a RouteTable in step with the control plane and exchanges claims there.

    The router's token is a router token: it reads every route and spends claims, and
    the table it gets holds public keys only (and the nodes' wake-only tokens).
    `transport` and `node_transport` let tests run the control plane app and a node
    agent's app in-process.
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        every: float = 0.5,
        stale_after: float = STALE_AFTER,
        transport: httpx.AsyncBaseTransport | None = None,
        node_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.table = RouteTable()
        self.every = every
        self.stale_after = stale_after
        self.refreshed = 0.0  # loop time of the last good refresh
        # The ETag of the loaded table: the control plane answers 304 while it holds.
        self.etag = ""
        self.http = httpx.AsyncClient(
            base_url=api_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
            transport=transport,
            limits=CLIENT_LIMITS,
        )
        self.node_transport = node_transport
        self._nodes: dict[Door, httpx.AsyncClient] = {}
        self._unreachable: dict[Door, float] = {}  # door → loop time to try it again
        # Tenants woken at their node, not yet reported: id → monotonic time of the wake.
        self._woken: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._last_miss = 0.0

    async def refresh_for_miss(self) -> None:
        """A host the table does not know: maybe a tenant made a moment ago (the app
        redirects its customer right after the copy). Refresh now, sharing one request
        among concurrent misses and at most ten a second, so unknown hosts cannot make
        the router hammer the control plane."""
        loop = asyncio.get_running_loop()
        if self._inflight is None:
            if loop.time() - self._last_miss < 0.1:
                return
            self._last_miss = loop.time()
            self._inflight = asyncio.create_task(self.refresh())
        task = self._inflight
        try:
            await asyncio.shield(task)
        except (httpx.HTTPError, ValueError):
            pass
        finally:
            if self._inflight is task and task.done():
                self._inflight = None

    async def refresh(self) -> None:
        """Load the table, unless it is the one loaded already (304)."""
        held = self.etag if self.etag and not self.table.stale else ""
        response = await self.http.get(
            "/router/table", headers={"If-None-Match": held} if held else None
        )
        if response.status_code != 304:
            response.raise_for_status()
            self.table.load(response.json())
            self.etag = response.headers.get("etag", "")
            doors = set(self.table.doors.values())
            for door in [d for d in self._nodes if d not in doors]:  # a node gone or re-keyed
                await self._nodes.pop(door).aclose()
        self.refreshed = asyncio.get_running_loop().time()

    async def start(self) -> None:
        """Load the table once (raising if the control plane is unreachable), then poll."""
        await self.refresh()
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.refresh()
                if failing:
                    log.info("route table refreshed again")
                failing = False
            except (httpx.HTTPError, ValueError) as exc:
                # Keep serving the last table for a while; say so once, not twice a second.
                if not failing:
                    log.warning("cannot refresh the route table (%s); serving the last one", exc)
                failing = True
                age = asyncio.get_running_loop().time() - self.refreshed
                if age > self.stale_after and not self.table.stale:
                    log.error(
                        "no route table for %.0f s (%s); dropped every route: tenants get a "
                        "503 until the control plane answers again",
                        age,
                        exc,
                    )
                    self.table.drop()

    async def exchange(self, cid: str, claim: str) -> tuple[int, dict[str, Any]]:
        """(status, body) of `POST /claims/exchange`: a session, or the refusal."""
        try:
            response = await self.http.post(
                "/claims/exchange", json={"container": cid, "claim": claim}
            )
        except httpx.HTTPError as exc:
            return 503, {"error": {"code": "unavailable", "message": f"control plane: {exc}"}}
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {"error": {"code": "bad_gateway", "message": response.text[:200]}}
        return response.status_code, body

    async def wake(self, cid: str) -> Woken:
        """Wake sleeping tenant `cid`, at its node when the table says where, else (or
        when the node does not do it) through the control plane: what it was woken from
        and where the time went. Raises with the control plane's reason when it is
        refused or unanswered."""
        route = self.table.get(cid)
        door = self.table.doors.get(route.node) if route is not None else None
        now = asyncio.get_running_loop().time()
        if route is None or door is None or self._unreachable.get(door, 0.0) > now:
            return await self._wake_by_control_plane(cid)
        try:
            woken = await self._wake_at(door, cid)
        except httpx.HTTPError as exc:
            # Not reachable from here (a firewall, a node address only the control
            # plane can reach): wakes on that node go through the control plane.
            self._unreachable[door] = now + UNREACHABLE_PAUSE
            log.warning(
                "cannot reach the node agent at %s (%s); waking its tenants through the "
                "control plane for %.0f s",
                door.agent,
                exc,
                UNREACHABLE_PAUSE,
            )
        except RuntimeError as exc:
            log.info("could not wake %s at its node (%s); asking the control plane", cid, exc)
        else:
            # Woken, or awake while the table said asleep: the control plane is behind.
            if woken.was or route.state == "sleeping":
                self._woken[cid] = self.table.awake[cid] = time.monotonic()
            return woken
        return await self._wake_by_control_plane(cid)

    async def _wake_at(self, door: Door, cid: str) -> Woken:
        client = self._nodes.get(door)
        if client is None:
            client = self._nodes[door] = httpx.AsyncClient(
                base_url=door.agent.rstrip("/"),
                headers={"Authorization": f"Bearer {door.token}"},
                # An agent that does not take the connection at once is not waited for.
                timeout=httpx.Timeout(30.0, connect=1.0),
                transport=self.node_transport,
                limits=CLIENT_LIMITS,
            )
        start = time.perf_counter()
        response = await client.post(f"/v1/tenants/{cid}/wake", json={})
        took = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(f"the node answered {response.status_code}: {response.text[:200]}")
        node = min(took, server_timing(response).get("node", 0.0) / 1000)
        was = response.headers.get(WOKE_HEADER, "stopped")
        phases = {"agent": took - node, "node": node}
        return Woken("" if was == "no" else was, phases, at_node=True)

    async def _wake_by_control_plane(self, cid: str) -> Woken:
        """`POST /containers/{cid}/wake`."""
        try:
            response = await self.http.post(f"/containers/{cid}/wake", timeout=30.0)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"the control plane did not answer ({exc})") from exc
        if response.status_code != 200:
            try:
                reason = str(response.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                reason = f"control plane answered {response.status_code}"
            raise RuntimeError(reason)
        was = response.headers.get(WOKE_HEADER, "stopped")
        # Server-Timing nests (control ⊃ agent ⊃ node); phases are the parts.
        ms = server_timing(response)
        control, agent, node = ms.get("control", 0.0), ms.get("agent", 0.0), ms.get("node", 0.0)
        phases = {"control_plane": control - agent, "agent": agent - node, "node": node}
        return Woken("" if was == "no" else was, {k: v / 1000 for k, v in phases.items()})

    def report_activity(self, take: Callable[[], dict[str, float]], every: float = 1.0) -> None:
        """Send `take()` (tenant → seconds since its latest request here) and the
        tenants woken at their node since the last report (→ seconds since the wake) to
        the control plane every `every` seconds. A report that fails is merged into the
        next."""

        def merge(fresh: dict[str, float], unsent: dict[str, float]) -> dict[str, float]:
            # An unsent age grew by the time waited; the freshest wins.
            for cid, age in unsent.items():
                fresh[cid] = min(fresh.get(cid, age + every), age + every)
            return fresh

        async def loop() -> None:
            unsent: dict[str, float] = {}
            unsent_woken: dict[str, float] = {}
            while True:
                await asyncio.sleep(every)
                now = time.monotonic()
                woken = {cid: max(0.0, now - at) for cid, at in self._woken.items()}
                self._woken = {}
                fresh, woken = merge(take(), unsent), merge(woken, unsent_woken)
                if not fresh and not woken:
                    continue
                body: dict[str, Any] = {"seen": fresh}
                if woken:
                    body["woken"] = woken
                try:
                    response = await self.http.post("/router/activity", json=body)
                    response.raise_for_status()
                    unsent, unsent_woken = {}, {}
                except httpx.HTTPError as exc:
                    if not unsent and not unsent_woken:
                        log.warning("cannot report tenant activity (%s); will retry", exc)
                    unsent, unsent_woken = fresh, woken

        self._reporter = asyncio.create_task(loop())

    async def close(self) -> None:
        for task in (self._task, self._reporter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for client in self._nodes.values():
            await client.aclose()
        await self.http.aclose()
