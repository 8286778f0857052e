"""The router's view of the fleet: which tenant lives where, who may see it, and the
keys sessions are verified with. Refreshed from the control plane twice a second, so a
copy, move or delete reaches the router within a second.

A table the router cannot refresh for STALE_AFTER seconds is dropped (the router then
answers 503 and says why): a deleted tenant's address may go to a new tenant once the
node's quarantine for it ends (agent/state.py, QUARANTINE, longer than this), and an
old route must not lead there.

The control plane is also where the router wakes sleeping tenants and reports, once a
second, which tenants it served (so that idle ones can be put to sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from hoody import claims
from hoody.agent.client import WOKE_HEADER, server_timing
from hoody.keepalive import CLIENT_LIMITS

__all__ = ["STALE_AFTER", "ControlPlaneTable", "Route", "RouteTable", "Woken"]

log = logging.getLogger(__name__)

STALE_AFTER = 30.0


# The control plane's Server-Timing names → the router's wake phases.
_PHASES = {"control": "control_plane", "agent": "agent", "node": "node"}


@dataclass(frozen=True)
class Woken:
    """What a wake did: the sleep the tenant was woken from ("frozen", "stopped"; ""
    when it was awake already) and where the control plane's time went (phase →
    seconds: control_plane, its whole answer; agent, its call to the node agent; node,
    the node's own work)."""

    was: str = "stopped"
    phases: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    cid: str
    host: str  # upstream address on the tenant's node
    port: int
    state: str
    public: bool = False
    generation: int = 0

    @property
    def upstream(self) -> tuple[str, int]:
        return self.host, self.port


@dataclass
class RouteTable:
    routes: dict[str, Route] = field(default_factory=dict)
    ring: claims.KeyRing = field(default_factory=lambda: claims.KeyRing({}))
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
        self.ring = claims.KeyRing({})
        self.stale = True

    def get(self, cid: str) -> Route | None:
        return self.routes.get(cid)

    def load(self, data: dict[str, Any]) -> None:
        """Replace the table with the control plane's `GET /api/v1/router/table`."""
        routes = {}
        old = self.routes
        raw, seen = data.get("routes", {}), self._raw
        for cid, r in raw.items():
            # Most routes are as they were half a second ago: keep those (building
            # 2,000 Routes twice a second held the router's event loop ~10 ms each time).
            route = old.get(cid)
            if route is None or seen.get(cid) != r or route.state != r.get("state"):
                host, _, port = str(r.get("upstream", "")).rpartition(":")
                route = Route(
                    cid=cid,
                    host=host,
                    port=int(port) if port.isdigit() else 0,
                    state=str(r.get("state", "")),
                    public=bool(r.get("public")),
                    generation=int(r.get("generation", 0)),
                )
            routes[cid] = route
        self._raw = raw
        self.routes = routes
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
    the table it gets holds public keys only.
    `transport` lets tests run the control plane app in-process.
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        every: float = 0.5,
        stale_after: float = STALE_AFTER,
        transport: httpx.AsyncBaseTransport | None = None,
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
        """Wake sleeping tenant `cid` (`POST /containers/{cid}/wake`): what it was woken
        from and where the time went. Raises with the control plane's reason when it is
        refused or unanswered."""
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
        timing = server_timing(response)
        phases = {_PHASES[k]: v / 1000 for k, v in timing.items() if k in _PHASES}
        return Woken("" if was == "no" else was, phases)

    def report_activity(self, take: Callable[[], dict[str, float]], every: float = 1.0) -> None:
        """Send `take()` (tenant → seconds since its latest request here) to the control
        plane every `every` seconds. A report that fails is merged into the next."""

        async def loop() -> None:
            unsent: dict[str, float] = {}
            while True:
                await asyncio.sleep(every)
                fresh = take()
                # An unsent age grew by the time waited; the freshest sighting wins.
                for cid, age in unsent.items():
                    fresh[cid] = min(fresh.get(cid, age + every), age + every)
                if not fresh:
                    continue
                try:
                    response = await self.http.post("/router/activity", json={"seen": fresh})
                    response.raise_for_status()
                    unsent = {}
                except httpx.HTTPError as exc:
                    if not unsent:
                        log.warning("cannot report tenant activity (%s); will retry", exc)
                    unsent = fresh

        self._reporter = asyncio.create_task(loop())

    async def close(self) -> None:
        for task in (self._task, self._reporter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.http.aclose()
