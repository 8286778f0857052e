"""`hoody.control.client.Client`: the Python SDK of the fleet API, used by the CLI.

    from hoody import Client, TenantSpec
    hoody = Client("http://127.0.0.1:7080", "hdy_…")
    c = hoody.copy("demo-app", TenantSpec(metadata={"customer": "cus_42"}),
                   idempotency_key=event_id)

Errors come back as the HoodyError subclass the server raised (NotFound, Conflict…).
Without arguments the URL and token come from HOODY_URL / HOODY_TOKEN, else from the
file `hoody login` writes (~/.config/hoody/config.json). `project` is the project an
admin token copies into when a call names none (HOODY_PROJECT, or the one saved by
`hoody login --project N`). Pass `transport` (or a whole `http` client, e.g.
Starlette's TestClient) to run against an in-process app. Also exported as
`hoody.Client`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from hoody.agent.client import raise_for_error
from hoody.agent.spec import TenantSpec
from hoody.control.exec_client import ExecOutput, ExecSession, run_to_end, start_message
from hoody.errors import Conflict, HostError, InvalidInput
from hoody.keepalive import CLIENT_LIMITS

__all__ = ["Client", "config_path", "load_config", "save_config"]


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hoody" / "config.json"


def load_config() -> dict[str, str]:
    try:
        data = json.loads(config_path().read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def save_config(url: str, token: str, project: int | None = None) -> Path:
    """Write url, token (and the default project) to the config file, readable by the
    owner only."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data: dict[str, Any] = {"url": url, "token": token}
    if project is not None:
        data["project"] = project
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    return path


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


class Client:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        project: int | None = None,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        timeout: float = 120.0,
    ) -> None:
        saved = load_config() if not (url and token) else {}
        from_saved = not (url or os.environ.get("HOODY_URL"))
        url = url or os.environ.get("HOODY_URL") or saved.get("url")
        token = token or os.environ.get("HOODY_TOKEN") or saved.get("token")
        if not url or not token:
            raise InvalidInput(
                "no control plane configured; run `hoody login URL --token T` "
                "or set HOODY_URL and HOODY_TOKEN"
            )
        if project is None:
            default = os.environ.get("HOODY_PROJECT") or (
                saved.get("project") if from_saved else None
            )
            project = int(default) if default and default.isascii() and default.isdigit() else None
        self.project = project
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"}
        if http is not None:
            http.headers.update(headers)
            self.http = http
        else:
            self.http = httpx.Client(
                base_url=self.url,
                headers=headers,
                transport=transport,
                timeout=timeout,
                limits=CLIENT_LIMITS,
            )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _req(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, f"{self.url}/api/v1{path}", **kwargs)
        except httpx.TransportError as exc:
            raise HostError(
                f"cannot reach the control plane at {self.url}: {exc}; is `hoody server` running?"
            ) from exc
        raise_for_error(response)
        return response.json()

    # containers

    def copy(
        self,
        template: str,
        spec: TenantSpec | None = None,
        *,
        idempotency_key: str | None = None,
        project: int | None = None,
        strategy: str | None = None,
    ) -> dict[str, Any]:
        """Create a container of `template` as `spec` says (fields left out: the
        template's); the same `idempotency_key` always returns the same one.

        `project` (admin tokens only; default: the client's `project`) is the project
        the container belongs to; `strategy` is spread or pack.
        """
        body = (spec or TenantSpec()).overrides()
        body.update(_clean({"project": project if project is not None else self.project}))
        if strategy is not None:
            body["strategy"] = strategy
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self._req(
            "POST", f"/containers/{template}/copy", json=body, headers=headers
        )
        return result

    def containers(
        self,
        *,
        project: int | None = None,
        template: str | None = None,
        node: str | None = None,
        state: str | None = None,
        metadata: dict[str, str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page: {"items": [...], "next_cursor": str | None}."""
        params: list[tuple[str, str]] = [
            (k, str(v))
            for k, v in (
                ("project", project),
                ("template", template),
                ("node", node),
                ("state", state),
                ("limit", limit),
                ("cursor", cursor),
            )
            if v is not None
        ]
        params += [("metadata", f"{k}={v}") for k, v in (metadata or {}).items()]
        result: dict[str, Any] = self._req("GET", "/containers", params=params)
        return result

    def iter_containers(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching container, following the cursor page by page."""
        cursor = None
        while True:
            page = self.containers(**filters, cursor=cursor)
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def container(self, cid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", f"/containers/{cid}")
        return result

    def exec_session(
        self,
        cid: str,
        argv: list[str],
        *,
        tty: bool = False,
        cols: int = 80,
        rows: int = 24,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecSession:
        """Start argv in tenant `cid` with its streams open (exec_client.py)."""
        start = start_message(argv, tty=tty, cols=cols, rows=rows, timeout=timeout, env=env)
        token = str(self.http.headers["authorization"]).removeprefix("Bearer ")
        return ExecSession(self.url, token, cid, start)

    def exec(
        self,
        cid: str,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecOutput:
        """Run argv in tenant `cid` to the end: its exit code, stdout and stderr."""
        with self.exec_session(cid, argv, timeout=timeout, env=env) as session:
            return run_to_end(session, stdin)

    def logs(self, cid: str, tail: int = 200) -> str:
        """The last `tail` lines of the tenant's output."""
        response = self._raw("GET", f"/containers/{cid}/logs", params={"tail": tail})
        return response.text

    def follow_logs(self, cid: str, tail: int = 200) -> Iterator[bytes]:
        """The last `tail` lines, then the tenant's output as it comes, until the tenant
        is deleted (or the caller stops iterating)."""
        params: dict[str, str | int] = {"tail": tail, "follow": "1"}
        try:
            with self.http.stream(
                "GET",
                f"{self.url}/api/v1/containers/{cid}/logs",
                params=params,
                timeout=httpx.Timeout(30, read=None),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_error(response)
                yield from response.iter_raw()
        except httpx.TransportError as exc:
            raise HostError(
                f"the log stream from {self.url} broke off: {exc}; run it again"
            ) from exc

    def _raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, f"{self.url}/api/v1{path}", **kwargs)
        except httpx.TransportError as exc:
            raise HostError(
                f"cannot reach the control plane at {self.url}: {exc}; is `hoody server` running?"
            ) from exc
        raise_for_error(response)
        return response

    def authorize(self, cid: str, ttl_seconds: int | None = None) -> dict[str, Any]:
        """{"container_claim", "expires_at", "url"}: the URL lets one person in, once."""
        body = {"ttl_seconds": ttl_seconds} if ttl_seconds is not None else {}
        result: dict[str, Any] = self._req("POST", f"/containers/{cid}/authorize", json=body)
        return result

    def revoke_claims(self, cid: str) -> dict[str, Any]:
        """End every session of `cid`."""
        result: dict[str, Any] = self._req("POST", f"/containers/{cid}/claims/revoke")
        return result

    def delete(self, cid: str) -> dict[str, Any]:
        """{"id", "deleted": true, "existed": bool}: existed is false on a repeat delete."""
        result: dict[str, Any] = self._req("DELETE", f"/containers/{cid}")
        return result

    def start(self, cid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("POST", f"/containers/{cid}/start")
        return result

    def stop(self, cid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("POST", f"/containers/{cid}/stop")
        return result

    def sleep(self, cid: str, mode: str | None = None) -> dict[str, Any]:
        """Put the container to sleep: "stopped" (memory freed) or "frozen" (memory
        kept, instant wake); default its own sleep mode. Its next request wakes it."""
        body = {"mode": mode} if mode else {}
        result: dict[str, Any] = self._req("POST", f"/containers/{cid}/sleep", json=body)
        return result

    def wake(self, cid: str) -> dict[str, Any]:
        """Wake a sleeping container (harmless when it runs)."""
        result: dict[str, Any] = self._req("POST", f"/containers/{cid}/wake")
        return result

    def snapshot(self, cid: str, template: str | None = None) -> dict[str, Any]:
        """The finished operation; its `result` names the new template version."""
        result: dict[str, Any] = self._req(
            "POST", f"/containers/{cid}/snapshot", json=_clean({"template": template})
        )
        return result

    # templates

    def templates(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._req("GET", "/templates")
        return result

    def template(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", f"/templates/{name}")
        return result

    def delete_template(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("DELETE", f"/templates/{name}")
        return result

    # nodes

    def nodes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._req("GET", "/nodes")
        return result

    def join(self, name: str, url: str, agent_token: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req(
            "POST", "/nodes/join", json={"name": name, "url": url, "agent_token": agent_token}
        )
        return result

    def heartbeat(
        self,
        name: str,
        headroom: dict[str, Any],
        templates: list[dict[str, Any]] | None = None,
        usage: list[dict[str, Any]] | None = None,
        *,
        tenant_usage: dict[str, list[int]] | None = None,
        sleeping: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"headroom": headroom}
        if templates is not None:
            body["templates"] = templates
        if usage is not None:
            body["usage"] = usage
        if tenant_usage is not None:
            body["tenant_usage"] = tenant_usage
        if sleeping:
            body["sleeping"] = sleeping
        result: dict[str, Any] = self._req("POST", f"/nodes/{name}/heartbeat", json=body)
        return result

    def set_node(
        self,
        name: str,
        *,
        overcommit: float | None = None,
        reserve: str | None = None,
        monthly_cost: float | None = None,
        currency: str | None = None,
    ) -> dict[str, Any]:
        """Change node `name`'s overcommit ratio, host memory reserve, monthly cost and
        currency (admin); what is None stays."""
        body = _clean(
            {
                "overcommit": overcommit,
                "reserve": reserve,
                "monthly_cost": monthly_cost,
                "currency": currency,
            }
        )
        result: dict[str, Any] = self._req("PATCH", f"/nodes/{name}", json=body)
        return result

    def cordon(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("POST", f"/nodes/{name}/cordon")
        return result

    def uncordon(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("POST", f"/nodes/{name}/uncordon")
        return result

    def drain(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("POST", f"/nodes/{name}/drain")
        return result

    # projects, tokens, operations

    def projects(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._req("GET", "/projects")
        return result

    def create_project(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("POST", "/projects", json={"name": name})
        return result

    def get_project(self, project_id: int) -> dict[str, Any]:
        """A project with its quotas and usage (admin, or that project's token)."""
        result: dict[str, Any] = self._req("GET", f"/projects/{int(project_id)}")
        return result

    def set_project(self, project_id: int, **quota: int | None) -> dict[str, Any]:
        """Set quotas (admin): max_tenants, max_memory_mib, max_disk_mib; None removes
        one, a quota not named is kept. `set_project(3, max_tenants=100)`."""
        result: dict[str, Any] = self._req("PATCH", f"/projects/{int(project_id)}", json=quota)
        return result

    def tokens(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._req("GET", "/tokens")
        return result

    def create_token(
        self,
        scope: str,
        *,
        project_id: int | None = None,
        description: str = "",
        ttl_seconds: int | None = None,
    ) -> dict[str, Any]:
        """The new token record; its `token` field is the secret, shown this once."""
        body = _clean(
            {
                "scope": scope,
                "project_id": project_id,
                "description": description,
                "ttl_seconds": ttl_seconds,
            }
        )
        result: dict[str, Any] = self._req("POST", "/tokens", json=body)
        return result

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._req("DELETE", f"/tokens/{token_id}")
        return result

    def ensure_project(self, name: str) -> dict[str, Any]:
        """The project called `name`, created when missing (admin)."""
        for project in self.projects():
            if project["name"] == name:
                return project
        try:
            return self.create_project(name)
        except Conflict:  # made meanwhile
            return next(p for p in self.projects() if p["name"] == name)

    def operation(self, op_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", f"/operations/{op_id}")
        return result

    def orphans(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._req("GET", "/orphans")
        return result

    def reconcile(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = self._req("POST", "/reconcile")
        return result

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", "/whoami")
        return result

    # exec: scripts, their logs, per-project limits and secrets

    def deploy_script(self, project: int, name: str, source: str) -> dict[str, Any]:
        """Upload `source` as the newest version of script `name` (unchanged: no new one)."""
        result: dict[str, Any] = self._req(
            "PUT", f"/scripts/{project}/{name}", json={"source": source}
        )
        return result

    def scripts(self, project: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._req("GET", f"/scripts/{project}")
        return result

    def script(self, project: int, name: str, version: int | None = None) -> dict[str, Any]:
        params = {"version": version} if version is not None else {}
        result: dict[str, Any] = self._req("GET", f"/scripts/{project}/{name}", params=params)
        return result

    def delete_script(self, project: int, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("DELETE", f"/scripts/{project}/{name}")
        return result

    def script_logs(self, project: int, name: str, limit: int = 50) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._req(
            "GET", f"/scripts/{project}/{name}/logs", params={"limit": limit}
        )
        return result

    def exec_settings(
        self,
        project: int,
        limits: dict[str, int] | None = None,
        allowed_hosts: list[str] | None = None,
    ) -> dict[str, Any]:
        """A project's Exec limits and allowed hosts; changed when either is given."""
        if limits is None and allowed_hosts is None:
            result: dict[str, Any] = self._req("GET", f"/projects/{project}/exec")
        else:
            body = _clean({"limits": limits, "allowed_hosts": allowed_hosts})
            result = self._req("PUT", f"/projects/{project}/exec", json=body)
        return result

    def set_secret(self, project: int, name: str, value: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req(
            "PUT", f"/projects/{project}/secrets/{name}", json={"value": value}
        )
        return result

    def secrets(self, project: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._req("GET", f"/projects/{project}/secrets")
        return result

    def delete_secret(self, project: int, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("DELETE", f"/projects/{project}/secrets/{name}")
        return result
