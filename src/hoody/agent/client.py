"""HTTP client of the node agent API, used by the CLI, benchmarks and the fleet.

Takes an httpx transport so tests can run the agent app in-process. Error responses
come back as the same HoodyError subclass the agent raised.
"""

from __future__ import annotations

from typing import Any

import httpx

from hoody import errors
from hoody.errors import HoodyError, HostError

__all__ = ["AgentClient", "raise_for_error"]

_BY_CODE: dict[str, type[HoodyError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput,
        errors.Unauthorized,
        errors.Forbidden,
        errors.NotFound,
        errors.Conflict,
        errors.Exhausted,
        errors.HostError,
        errors.MissingDependency,
        errors.CommandFailed,
    )
}


def raise_for_error(response: httpx.Response) -> None:
    """Turn a `{"error": {"code", "message"}}` response into the matching HoodyError."""
    if response.status_code < 400:
        return
    try:
        err = response.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        raise HostError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code}: {response.text[:200]}"
        ) from None
    cls = _BY_CODE.get(code, HoodyError)
    if cls is errors.CommandFailed:
        cls = HostError
    exc = cls(message)
    exc.status = response.status_code
    raise exc


class AgentClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            transport=transport,
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _req(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise HostError(
                f"cannot reach the node agent at {self.http.base_url}: {exc}; "
                "is `hoody node serve` running?"
            ) from exc
        raise_for_error(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def node(self) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", "/v1/node")
        return result

    def templates(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._req("GET", "/v1/templates")
        return result

    def create_template(self, name: str, source: dict[str, Any], **config: Any) -> dict[str, Any]:
        body = {
            "name": name,
            "source": source,
            **{k: v for k, v in config.items() if v is not None},
        }
        result: dict[str, Any] = self._req("POST", "/v1/templates", json=body, timeout=1800)
        return result

    def delete_template(self, name: str, version: int | None = None) -> dict[str, Any]:
        path = f"/v1/templates/{name}" + (f"/{version}" if version is not None else "")
        result: dict[str, Any] = self._req("DELETE", path)
        return result

    def copy(self, template: str, **body: Any) -> dict[str, Any]:
        body = {k: v for k, v in body.items() if v is not None}
        result: dict[str, Any] = self._req("POST", f"/v1/templates/{template}/copy", json=body)
        return result

    def tenants(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._req("GET", "/v1/tenants")
        return result

    def tenant(self, tid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", f"/v1/tenants/{tid}")
        return result

    def action(self, tid: str, verb: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._req("POST", f"/v1/tenants/{tid}/{verb}", json=body or {})
        return result

    def delete(self, tid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("DELETE", f"/v1/tenants/{tid}")
        return result

    def exec(self, tid: str, argv: list[str], timeout: float = 60.0) -> dict[str, Any]:
        return self.action(tid, "exec", {"argv": argv, "timeout": timeout})

    def logs(self, tid: str, tail: int = 200) -> str:
        return str(self._req("GET", f"/v1/tenants/{tid}/logs", params={"tail": tail}))
