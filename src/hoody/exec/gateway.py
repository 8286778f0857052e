"""`/exec/<project>/<name>[/<subpath>]`, any method, on the control plane's port.

Route → resolve the script's current version (with its project's limits, allowed
hosts and secrets) → read the body within its limit → mint a token → run it on a
warm worker (pool.py) → answer with the script's response. The invocation is logged
once its worker settled, after the answer went out. These URLs take no hoody token:
they are what a billing provider's webhook calls, and the script decides who is let
in (e.g. by a signature).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hoody import jsonbody
from hoody.errors import HoodyError, NotFound, TooLarge
from hoody.exec.folder import ScriptFolder
from hoody.exec.pool import Key, Pool
from hoody.exec.sandbox import Sandbox, ScriptFiles, check_root
from hoody.exec.worker import Outcome

if TYPE_CHECKING:
    from hoody.control.service import Fleet

__all__ = ["RUN_ROOT", "Gateway"]

log = logging.getLogger(__name__)

RUN_ROOT = Path("/run/hoody-exec")
# Request headers never passed to a script: hop-by-hop ones, and hoody's own (a
# caller must not be able to forge what the runtime adds).
_DROP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"})
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Gateway:
    """Serves /exec for one control plane process; owns its worker pool."""

    def __init__(self, fleet: Fleet, root: Path | None = None) -> None:
        self.fleet = fleet
        self._root = root
        self._pool: Pool | None = None
        self._runs: list[dict[str, Any]] = []
        self._writer: asyncio.Future[None] | None = None
        folder = fleet.settings.scripts_dir
        self.folder = ScriptFolder(fleet, folder) if folder is not None else None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            check_root()
            root = self._root or RUN_ROOT / f"{os.getpid()}-{secrets.token_hex(3)}"
            RUN_ROOT.mkdir(mode=0o711, exist_ok=True)
            RUN_ROOT.chmod(0o711)  # the workers' uids traverse it, whatever the umask
            self._pool = Pool(Sandbox(root), spares=self.fleet.settings.exec_spares)
        return self._pool

    def routes(self) -> list[Route]:
        return [
            Route("/exec/{project}/{name}", self.handle, methods=METHODS),
            Route("/exec/{project}/{name}/{rest:path}", self.handle, methods=METHODS),
        ]

    async def watch(self, every: float = 1.0) -> None:
        """Keep the scripts folder deployed (new and removed files), until cancelled."""
        while self.folder is not None:
            try:
                await anyio.to_thread.run_sync(self.folder.sync_all)
            except Exception:
                log.exception("syncing %s failed", self.folder.root)
            await asyncio.sleep(every)

    def _log(self, run: dict[str, Any]) -> None:
        """Queue an invocation for the log; one writer task writes what queued up in
        one transaction, so a burst of invocations costs one database write."""
        self._runs.append(run)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_runs())

    async def _write_runs(self) -> None:
        while self._runs:
            batch, self._runs = self._runs, []
            try:
                await anyio.to_thread.run_sync(self.fleet.record_runs, batch)
            except Exception:
                log.exception("logging %d invocations failed", len(batch))

    async def aclose(self) -> None:
        if self._writer is not None:
            await self._writer
        if self._pool is not None:
            await self._pool.aclose()

    async def handle(self, request: Request) -> Response:
        started = time.time()
        try:
            raw = str(request.path_params["project"])
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
                raise NotFound(
                    f"no script at {request.url.path}; URLs are /exec/<project id>/<name>"
                )
            project, name = int(raw), str(request.path_params["name"])
            if self.folder is not None:
                await anyio.to_thread.run_sync(self.folder.sync_one, project, name)
            script = self.fleet.cached(project, name)
            if script is None:
                script = await anyio.to_thread.run_sync(self.fleet.resolve, project, name)
            body = await jsonbody.read(request, script.limits.request_bytes, _too_large)
            api = _api_url(request)
            pool = self.pool
        except HoodyError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        limits = script.limits
        key = Key(
            project, name, script.version, limits, (api.partition("//")[2], *script.allowed_hosts)
        )
        env = {
            **script.secrets,
            "HOODY_API": api,
            "HOODY_TOKEN": self.fleet.mint_invocation_token(
                project, name, limits.wall_ms / 1000 + 60
            ),
            "HOODY_PROJECT": str(project),
            "HOODY_SCRIPT": name,
        }
        headers = [
            (k, v)
            for k, v in request.headers.items()
            if k not in _DROP and not k.startswith("x-hoody-")
        ]

        async def files() -> ScriptFiles:
            return await anyio.to_thread.run_sync(
                pool.sandbox.script_files, project, name, script.version, script.source
            )

        async def done(out: Outcome) -> None:
            self._log(
                dict(
                    project=project,
                    name=name,
                    version=script.version,
                    method=request.method[:16],
                    path=request.url.path[:500],
                    status=out.status,
                    outcome=out.outcome[:16],
                    error=out.error[:4000],
                    started_at=started,
                    duration_ms=round(out.duration_ms, 3),
                    cpu_ms=round(out.cpu_ms, 3),
                    peak_memory_bytes=out.peak_memory_bytes,
                    cold=out.cold,
                    console=out.console[:1000],
                )
            )

        out = await pool.invoke(
            key, files, request.method, str(request.url), headers, body, env, done
        )
        if out.outcome not in ("ok",):
            log.info("exec %s/%s v%d: %s %s", project, name, script.version, out.outcome, out.error)
        response = Response(b"" if request.method == "HEAD" else out.body, status_code=out.status)
        response.raw_headers.extend(
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out.headers
        )
        return response


def _too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"request body is over {limit} bytes, this project's request_bytes limit; "
        "send less or raise it (PUT /api/v1/projects/{id}/exec)"
    )


def _api_url(request: Request) -> str:
    """Where a worker reaches this control plane: the socket this request came in on
    (a wildcard listen address is reached on loopback)."""
    server: Any = request.scope.get("server") or ("127.0.0.1", 80)
    host, port = str(server[0]), int(server[1])
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
