"""HTTP client of the node agent API, used by the CLI, benchmarks and the fleet.

Takes an httpx transport so tests can run the agent app in-process. Error responses
come back as the same HoodyError subclass the agent raised.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from hoody import errors
from hoody.agent.spec import TenantSpec
from hoody.errors import HoodyError, HostError
from hoody.keepalive import CLIENT_LIMITS

__all__ = [
    "WOKE_HEADER",
    "AgentClient",
    "TemplateStream",
    "error_from",
    "raise_for_error",
    "server_timing",
    "wake_token",
]

# A wake's answer (agent and control plane) says which sleep the tenant was woken from:
# "frozen", "stopped", or "no" when it was awake.
WOKE_HEADER = "Hoody-Woke"


def wake_token(agent_token: str) -> str:
    """The node's wake-only token: it wakes the node's tenants and does nothing else.
    Routers get it (from the control plane's route table) to wake a tenant at its node
    without a detour through the control plane; it is derived from the agent token, so
    neither side stores it and rotating the agent token rotates it, and it does not
    reveal the agent token."""
    return hmac.new(agent_token.encode(), b"hoody node wake v1", hashlib.sha256).hexdigest()


_BY_CODE: dict[str, type[HoodyError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput,
        errors.TooLarge,
        errors.Unauthorized,
        errors.Forbidden,
        errors.QuotaExceeded,
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
    exc = error_from(code, message)
    exc.status = response.status_code
    raise exc


def error_from(code: str, message: str) -> HoodyError:
    """The HoodyError for an `{"error": {"code", "message"}}` answer."""
    cls = _BY_CODE.get(code, HoodyError)
    if cls is errors.CommandFailed:
        cls = HostError
    return cls(message)


def server_timing(response: httpx.Response) -> dict[str, float]:
    """The `Server-Timing` header's durations: name → milliseconds."""
    out: dict[str, float] = {}
    for item in response.headers.get("server-timing", "").split(","):
        name, _, params = item.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
    return out


@dataclass(frozen=True)
class TemplateStream:
    """A template version being sent by a node: its record, the sender's estimate of
    the stream's size (0: unknown), the sender's uid base, and the stream itself."""

    record: dict[str, Any]
    size: int
    uid_base: str
    chunks: Iterator[bytes]


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
            limits=CLIENT_LIMITS,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise HostError(
                f"cannot reach the node agent at {self.http.base_url}: {exc}; "
                "is `hoody node serve` running?"
            ) from exc
        raise_for_error(response)
        return response

    def _req(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def node(self) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", "/v1/node")
        return result

    def configure_node(
        self, *, overcommit: float | None = None, memory_reserve: str | None = None
    ) -> dict[str, Any]:
        """Change the node's placement settings; returns the node's info."""
        body = {"overcommit": overcommit, "memory_reserve": memory_reserve}
        result: dict[str, Any] = self._req(
            "PATCH", "/v1/node", json={k: v for k, v in body.items() if v is not None}
        )
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

    def copy(
        self,
        template: str,
        spec: TenantSpec | None = None,
        *,
        mode: str | None = None,
        start: bool = True,
    ) -> dict[str, Any]:
        """Make a tenant of `template` as `spec` says (`mode`: the storage mode, default
        the node's; `start=False`: made stopped). Returns the agent's record of it."""
        body = (spec or TenantSpec()).overrides()
        if mode is not None:
            body["mode"] = mode
        if not start:
            body["start"] = False
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

    def sleep(self, tid: str, mode: str | None = None) -> dict[str, Any]:
        """Put the tenant to sleep (`mode` stopped or frozen; default its policy's)."""
        return self.action(tid, "sleep", {"mode": mode} if mode else None)

    def wake(self, tid: str) -> dict[str, Any]:
        return self.action(tid, "wake")

    def wake_from(self, tid: str) -> tuple[dict[str, Any], str, float]:
        """Wake the tenant: (its record, the sleep it was woken from: "frozen",
        "stopped" or "" when it was awake, milliseconds the node spent)."""
        response = self._send("POST", f"/v1/tenants/{tid}/wake", json={})
        woke = response.headers.get(WOKE_HEADER, "stopped")  # an older agent: assume a start
        record: dict[str, Any] = response.json()
        return record, "" if woke == "no" else woke, server_timing(response).get("node", 0.0)

    def delete(self, tid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("DELETE", f"/v1/tenants/{tid}")
        return result

    def exec(self, tid: str, argv: list[str], timeout: float = 60.0) -> dict[str, Any]:
        return self.action(tid, "exec", {"argv": argv, "timeout": timeout})

    def logs(self, tid: str, tail: int = 200) -> str:
        return str(self._req("GET", f"/v1/tenants/{tid}/logs", params={"tail": tail}))

    @contextlib.contextmanager
    def send_template(
        self, name: str, version: int, parent: int | None = None
    ) -> Iterator[TemplateStream]:
        """Open the stream of template version `name`/`version` (the difference from
        `parent` when given). Iterating `chunks` raises HostError if the stream breaks
        off; leaving the block closes it."""
        params = {"parent": str(parent)} if parent is not None else {}
        timeout = httpx.Timeout(self.http.timeout.connect, read=600)
        try:
            with self.http.stream(
                "GET", f"/v1/templates/{name}/{version}/send", params=params, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_error(response)
                try:
                    record = json.loads(response.headers.get("x-hoody-template", ""))
                    size = int(response.headers.get("x-hoody-size", "0"))
                except ValueError as exc:
                    raise HostError(
                        f"node agent at {self.http.base_url} sent template {name} version "
                        f"{version} without a valid record; upgrade it to this hoody version"
                    ) from exc
                yield TemplateStream(
                    record,
                    size,
                    response.headers.get("x-hoody-uid-base", ""),
                    self._chunks(response),
                )
        except httpx.TransportError as exc:
            raise HostError(
                f"cannot reach the node agent at {self.http.base_url}: {exc}; "
                "is `hoody node serve` running?"
            ) from exc

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(1 << 20)
        except httpx.HTTPError as exc:
            raise HostError(
                f"the stream from the node agent at {self.http.base_url} broke off ({exc}); "
                "check that node's log and send again"
            ) from exc

    def receive_template(
        self,
        name: str,
        version: int,
        stream: TemplateStream,
        chunks: Iterable[bytes] | None = None,
    ) -> dict[str, Any]:
        """Have this node make template version `name`/`version` from `stream` (or from
        `chunks`, e.g. `stream.chunks` wrapped to count progress). Returns its record."""
        headers = {
            "X-Hoody-Template": json.dumps(stream.record),
            "X-Hoody-Uid-Base": stream.uid_base,
            "Content-Type": "application/octet-stream",
        }
        if not stream.uid_base:
            del headers["X-Hoody-Uid-Base"]
        result: dict[str, Any] = self._req(
            "POST",
            f"/v1/templates/{name}/{version}/receive",
            content=chunks if chunks is not None else stream.chunks,
            headers=headers,
            timeout=httpx.Timeout(self.http.timeout.connect, read=600, write=600),
        )
        return result
