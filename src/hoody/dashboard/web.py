"""The dashboard's routes: the page, login, its JSON reads, tenant actions, the live
feed (server-sent events) and /metrics. Thin handlers over `FleetFigures`, `Sessions`
and `Fleet`; every asset comes from `static/` in this package.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from hoody.control.auth import Principal
from hoody.control.service import Fleet
from hoody.dashboard.figures import FleetFigures
from hoody.dashboard.live import LiveFeed, sse
from hoody.dashboard.session import COOKIE, Login, Sessions
from hoody.errors import HoodyError, InvalidInput, Unauthorized

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
_ADMIN = Principal("admin")
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # no-referrer would make Chromium send `Origin: null` on our own form posts.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# Characters that could end a <script> data block or open a comment inside it, as
# JSON escapes (what Django's json_script does): tenant metadata is anyone's text.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _page(name: str, data: dict[str, Any] | None = None, **values: str) -> str:
    """`static/name` with each {{key}} replaced by its value, HTML-escaped, and each
    {{json:key}} by `data[key]` as JSON that is safe inside a <script> data block."""
    text = (STATIC / name).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    for key, obj in (data or {}).items():
        body = json.dumps(obj, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_SAFE)
        text = text.replace("{{json:" + key + "}}", body)
    return text


def _assets_version(folder: Path) -> str:
    """A digest of every asset: the pages ask for `…?v=<it>`, so an upgraded hoody's
    assets are new URLs and the old ones may be cached for good."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class _Assets(StaticFiles):
    """The page's assets. Asked for with the current version they are cached for a
    year without asking again (Chromium otherwise guesses a freshness of a tenth of
    a file's age and, on a fresh install, asks again with every page: one more trip
    per asset before the page can run); any other way, checked on every use."""

    def __init__(self, folder: Path) -> None:
        super().__init__(directory=folder)
        self.version = _assets_version(folder)

    def file_response(
        self, full_path: Any, stat_result: Any, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        current = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("v") == [
            self.version
        ]
        response.headers["Cache-Control"] = (
            "public, max-age=31536000, immutable" if current else "no-cache"
        )
        return response


def _same_origin(request: Request) -> bool:
    """A browser's Origin (when sent) must be this server: a form on another site
    cannot post here."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name) or ""
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise InvalidInput(f"{name} must be a whole number, got {raw[:20]!r}")
    return int(raw)


class Dashboard:
    """The dashboard of one control plane process."""

    def __init__(
        self,
        fleet: Fleet,
        registry: CollectorRegistry,
        *,
        history_every: float = 60.0,
        live_poll: float = 0.1,
    ) -> None:
        self.fleet = fleet
        self._estimates_cache: tuple[float, dict[str, list[dict[str, Any]]]] | None = None
        self._estimates_lock = threading.Lock()
        self._estimates_refreshing = False
        self.figures = FleetFigures(fleet.store, fleet.clock, self._estimates)
        self.sessions = Sessions(fleet)
        self.live = LiveFeed(self.figures, poll=live_poll)
        self.registry = registry
        self.history_every = history_every
        self.assets = _Assets(STATIC / "assets")

    def _estimates(self) -> dict[str, list[dict[str, Any]]]:
        # Placement's estimates change with heartbeats (every 2 s) and cost a few
        # queries per node and a pass over the tenant rows (~90 ms at 10,000 on the
        # loaded 2-core VM): neither the live feed nor a page load waits for them
        # once there is a value. An older one is returned while a thread of its own
        # reads the next (stale by a second or two, as the heartbeat figures are).
        cache = self._estimates_cache
        if cache is None:
            return self._read_estimates()
        if time.monotonic() - cache[0] > 2.0:
            with self._estimates_lock:
                start, self._estimates_refreshing = not self._estimates_refreshing, True
            if start:
                threading.Thread(
                    target=self._refresh_estimates, name="dashboard-estimates", daemon=True
                ).start()
        return cache[1]

    def _read_estimates(self) -> dict[str, list[dict[str, Any]]]:
        read = {n["name"]: n.get("estimates") or [] for n in self.fleet.list_nodes(_ADMIN)}
        self._estimates_cache = (time.monotonic(), read)
        return read

    def _refresh_estimates(self) -> None:
        try:
            self._read_estimates()
        except Exception:  # the next call tries again; the page keeps the older ones
            log.exception("reading placement's estimates for the dashboard failed")
        finally:
            with self._estimates_lock:
                self._estimates_refreshing = False

    async def _session(self, request: Request) -> Login | None:
        return await anyio.to_thread.run_sync(self.sessions.check, request.cookies.get(COOKIE))

    def _json(self, fn: Callable[[Request, Login], Awaitable[Any]], *, write: bool = False) -> Any:
        """A JSON endpoint for a logged-in browser; `write` also needs the CSRF header."""

        async def endpoint(request: Request) -> Response:
            session = await self._session(request)
            if session is None:
                return _error(Unauthorized("log in again: the session ended"), request)
            if write and not (
                _same_origin(request)
                and self.sessions.csrf_ok(session, request.headers.get("x-csrf-token"))
            ):
                return JSONResponse(
                    {"error": {"code": "forbidden", "message": "missing or wrong CSRF token"}},
                    status_code=403,
                    headers=_SECURITY_HEADERS,
                )
            try:
                result = await fn(request, session)
            except HoodyError as exc:
                return _error(exc, request)
            return JSONResponse(result, headers=_SECURITY_HEADERS)

        return endpoint

    # pages

    def _first_paint(self, secret: str | None) -> tuple[Login, dict[str, Any]] | None:
        """The session and everything the page draws first (the headline and nodes,
        the history, the first page of the table), in one trip to a worker thread."""
        session = self.sessions.check(secret)
        if session is None:
            return None
        return session, {
            "summary": json.loads(self.live.latest()),
            "history": self.figures.history(),
            "tenants": self.figures.tenants(),
        }

    async def index(self, request: Request) -> Response:
        # The page arrives with its data in a JSON block (not a script: the CSP still
        # allows no inline code), so it draws without three more round trips, one
        # after another, each checking the session again.
        found = await anyio.to_thread.run_sync(self._first_paint, request.cookies.get(COOKIE))
        if found is None:
            page = _page("login.html", message="", v=self.assets.version)
            return HTMLResponse(page, headers=_SECURITY_HEADERS)
        session, first = found
        page = _page("index.html", {"first": first}, csrf=session.csrf, v=self.assets.version)
        return HTMLResponse(page, headers=_SECURITY_HEADERS)

    async def login(self, request: Request) -> Response:
        if not _same_origin(request):
            return HTMLResponse("cross-site login refused", status_code=403)
        # A urlencoded form of one field: parsed here rather than adding a multipart
        # parser dependency for it.
        raw = await request.body()
        if len(raw) > 4096:
            return HTMLResponse("login form too large", status_code=413)
        token = (parse_qs(raw.decode("utf-8", "replace")).get("token") or [""])[0]
        try:
            secret, session = await anyio.to_thread.run_sync(self.sessions.login, token)
        except HoodyError as exc:
            status = 403 if exc.status == 403 else 401
            page = _page("login.html", message=exc.message, v=self.assets.version)
            return HTMLResponse(page, status_code=status, headers=_SECURITY_HEADERS)
        response = RedirectResponse("/", status_code=303, headers=_SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            secret,
            max_age=int(session.expires_at - self.fleet.clock()),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        if not _same_origin(request):
            return HTMLResponse("cross-site logout refused", status_code=403)
        await anyio.to_thread.run_sync(self.sessions.logout, request.cookies.get(COOKIE))
        response = RedirectResponse("/", status_code=303, headers=_SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # reads

    async def summary(self, request: Request, session: Login) -> Any:
        return await anyio.to_thread.run_sync(self.figures.summary)

    async def history(self, request: Request, session: Login) -> Any:
        since = request.query_params.get("since")
        try:
            start = float(since) if since else None
        except ValueError as exc:
            raise InvalidInput("since must be a UNIX time in seconds") from exc
        return await anyio.to_thread.run_sync(self.figures.history, start)

    async def tenants(self, request: Request, session: Login) -> Any:
        q = request.query_params
        metadata = {}
        for item in q.getlist("metadata"):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidInput(f"metadata filter {item[:40]!r} is invalid; write key=value")
            metadata[key] = value
        return await anyio.to_thread.run_sync(
            lambda: self.figures.tenants(
                search=q.get("q") or None,
                node=q.get("node") or None,
                template=q.get("template") or None,
                state=q.get("state") or None,
                metadata=metadata,
                page=_int(request, "page", 1),
                per_page=_int(request, "per_page", 50),
                sort=q.get("sort") or "newest",
            )
        )

    # actions

    async def action(self, request: Request, session: Login) -> Any:
        cid = str(request.path_params["cid"])
        verb = str(request.path_params["action"])
        calls: dict[str, Callable[[], Any]] = {
            "open": lambda: self.fleet.authorize(_ADMIN, cid, None),
            "stop": lambda: self.fleet.stop(_ADMIN, cid),
            "start": lambda: self.fleet.start(_ADMIN, cid),
            "delete": lambda: self.fleet.delete_container(_ADMIN, cid),
        }
        if verb not in calls:
            raise InvalidInput(f"action {verb!r} is invalid; use open, stop, start or delete")
        return await anyio.to_thread.run_sync(calls[verb])

    # live

    async def events(self, request: Request) -> Response:
        session = await self._session(request)
        if session is None:
            return _error(Unauthorized("log in again: the session ended"), request)

        async def stream() -> AsyncIterator[bytes]:
            recheck = time.monotonic() + 30
            async with self.live.subscription() as queue:
                yield b"retry: 1000\n\n"
                while True:
                    try:
                        yield sse("fleet", await asyncio.wait_for(queue.get(), timeout=15))
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                    if time.monotonic() > recheck:  # logged out or token revoked: stop
                        recheck = time.monotonic() + 30
                        if await self._session(request) is None:
                            yield sse("logout", {})
                            return

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={**_SECURITY_HEADERS, "X-Accel-Buffering": "no"},
        )

    # metrics

    async def metrics(self, request: Request) -> Response:
        """Prometheus text; needs an admin bearer token (or a dashboard session)."""
        try:
            who = await anyio.to_thread.run_sync(
                self.fleet.authenticate, request.headers.get("authorization")
            )
            allowed = who.is_admin
        except HoodyError:
            allowed = await self._session(request) is not None
        if not allowed:
            return Response(
                "metrics need an admin token: Authorization: Bearer hdy_…\n",
                status_code=401,
                media_type="text/plain",
            )
        body = await anyio.to_thread.run_sync(generate_latest, self.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # sampling

    async def sample_forever(self) -> None:
        """One history point per `history_every` s (one per bucket across processes)."""
        while True:
            try:
                await anyio.to_thread.run_sync(self.figures.sample, self.history_every)
            except Exception:
                log.exception("sampling fleet history failed")
            now = time.time()
            await asyncio.sleep(self.history_every - now % self.history_every + 0.01)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.index, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/dashboard/api/summary", self._json(self.summary)),
            Route("/dashboard/api/history", self._json(self.history)),
            Route("/dashboard/api/tenants", self._json(self.tenants)),
            Route(
                "/dashboard/api/tenants/{cid}/{action}",
                self._json(self.action, write=True),
                methods=["POST"],
            ),
            Route("/dashboard/events", self.events),
            Route("/metrics", self.metrics),
            Mount("/dashboard/static", self.assets, name="static"),
        ]


def _error(exc: HoodyError, request: Request) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=_SECURITY_HEADERS)
