"""Who may do what: authentication, projects and API tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from hoody.agent.spec import check_name
from hoody.control import auth, quotas
from hoody.control.auth import Principal, Scope
from hoody.control.base import INT_MAX, FleetBase, check_int, check_text
from hoody.control.db import Project, Token
from hoody.errors import Conflict, Forbidden, InvalidInput, NotFound
from hoody.errors import Unauthorized as UnauthorizedError
from hoody.exec.tokens import PREFIX as EXEC_TOKEN

__all__ = ["JOIN_TTL", "JOIN_TTL_MAX", "QUOTAS", "Access"]

QUOTAS = ("max_tenants", "max_memory_mib", "max_disk_mib")

JOIN_TTL = 86_400
JOIN_TTL_MAX = 30 * 86_400


class Access(FleetBase):
    # hoody.exec.scripts.Scripts: the project an Exec invocation token acts in.
    invocation_project: Callable[[str], int]

    def authenticate(self, header: str | None) -> Principal:
        """The caller behind an `Authorization` header; Unauthorized if none matches.
        An Exec invocation token (`hdx_…`) acts in its script's project."""
        if header and header.partition(" ")[2].strip().startswith(EXEC_TOKEN):
            return Principal("project", self.invocation_project(header.partition(" ")[2].strip()))
        prefix, token = auth.parse_token(header)
        with self.store.read() as s:
            row = s.scalar(select(Token).where(Token.prefix == prefix))
            if row is None or row.revoked or not auth.matches(token, row.hash):
                raise UnauthorizedError(
                    "unknown or revoked API token; ask an admin for a new one "
                    "(`hoody token create --project N`)"
                )
            if row.expires_at is not None and row.expires_at <= self.clock():
                raise UnauthorizedError(
                    f"this {row.scope} token expired; ask an admin for a new one "
                    f"(`hoody token create --{row.scope}`)"
                )
            return Principal(row.scope, row.project_id, row.node_name)  # type: ignore[arg-type]

    def bootstrap_admin(self, token: str | None = None) -> str | None:
        """Make sure an admin token exists.

        With `token` (a `hdy_…` string, e.g. from HOODY_ADMIN_TOKEN) store it if it is
        new and return it. Without, mint one when there is no admin token yet and return
        it (shown once); return None when an admin token already exists.
        """
        with self.store.write() as s:
            if token is not None:
                prefix, token = auth.parse_token(f"Bearer {token}")
                if s.scalar(select(Token.id).where(Token.prefix == prefix)) is None:
                    s.add(
                        Token(
                            prefix=prefix,
                            hash=auth.hash_token(token),
                            scope="admin",
                            description="bootstrap",
                        )
                    )
                return token
            if s.scalar(select(Token.id).where(Token.scope == "admin", ~Token.revoked)):
                return None
            new, prefix = auth.mint_token()
            s.add(
                Token(prefix=prefix, hash=auth.hash_token(new), scope="admin", description="first")
            )
            return new

    # projects

    def create_project(self, who: Principal, name: str) -> dict[str, Any]:
        who.require_admin()
        check_name(name, "project name")
        try:
            with self.store.write() as s:
                row = Project(name=name, created_at=self.clock())
                s.add(row)
                s.flush()
                return quotas.project_json(row)
        except IntegrityError as exc:
            raise Conflict(f"project {name} exists; pick another name") from exc

    def ensure_project(self, who: Principal, name: str) -> dict[str, Any]:
        """The project called `name`, created if it does not exist yet (admin)."""
        who.require_admin()
        with self.store.read() as s:
            row = s.scalar(select(Project).where(Project.name == name))
            if row is not None:
                return quotas.project_json(row)
        try:
            return self.create_project(who, name)
        except Conflict:  # made meanwhile by another request
            with self.store.read() as s:
                row = s.scalar(select(Project).where(Project.name == name))
                assert row is not None
                return quotas.project_json(row)

    def list_projects(self, who: Principal) -> list[dict[str, Any]]:
        """Every project with its quotas and what its live containers count (admin)."""
        who.require_admin()
        with self.store.read() as s:
            used = quotas.usage(s)
            return [
                quotas.project_json(p, used.get(p.id))
                for p in s.scalars(select(Project).order_by(Project.id))
            ]

    def get_project(self, who: Principal, project: int) -> dict[str, Any]:
        """One project, its quotas and usage: admin tokens, and the project's own."""
        check_int(project, "project")
        if not who.is_admin and who.project_filter() != project:
            raise Forbidden(f"this token may read its own project only, not project {project}")
        with self.store.read() as s:
            row = quotas.lock(s, project, for_update=False)
            return quotas.project_json(row, quotas.usage(s, [project]).get(project))

    def set_project(
        self, who: Principal, project: int, changes: dict[str, int | None]
    ) -> dict[str, Any]:
        """Set quotas of `project` (admin): keys of `QUOTAS`, a whole number >= 0
        sets it, None removes it, a missing key keeps it. A quota below what the
        project holds already is kept: only new copies are refused until it fits.
        InvalidInput for an unknown key or a bad number, before anything changes."""
        who.require_admin()
        check_int(project, "project")
        for key, value in changes.items():
            if key not in QUOTAS:
                raise InvalidInput(f"{key!r} is not a quota; give {', '.join(QUOTAS)}")
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT_MAX
            ):
                raise InvalidInput(
                    f"{key} {value!r} is invalid; give a whole number from 0 to {INT_MAX}, "
                    "or null for no quota"
                )
        with self.store.write() as s:
            row = quotas.lock(s, project, for_update=self.store.is_postgres)
            for key, value in changes.items():
                setattr(row, key, value)
            s.flush()
            return quotas.project_json(row, quotas.usage(s, [project]).get(project))

    # tokens

    def create_token(
        self,
        who: Principal,
        scope: Scope,
        *,
        project_id: int | None = None,
        description: str = "",
        ttl: int | None = None,
    ) -> dict[str, Any]:
        """Mint a token; the returned `token` is the only time the secret is shown.

        Join tokens expire (`ttl` seconds, one day by default, at most 30 days): one
        lying in a script or a shell history must not add servers to the fleet for
        good. Other tokens expire only when given a `ttl`."""
        who.require_admin()
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int) or not 60 <= ttl <= JOIN_TTL_MAX
        ):
            raise InvalidInput(
                f"ttl_seconds {ttl!r} is invalid; give whole seconds from 60 to {JOIN_TTL_MAX}"
            )
        if scope == "join" and ttl is None:
            ttl = JOIN_TTL
        if scope not in ("admin", "project", "join", "router"):
            raise InvalidInput(
                f"token scope {scope!r} is invalid; use admin, project, join or router"
            )
        check_text(description, "description")
        if scope == "project":
            if project_id is None:
                raise InvalidInput(
                    "a project token needs `project_id`; list them with GET /projects"
                )
            check_int(project_id, "project_id")
        elif project_id is not None:
            raise InvalidInput(f"a {scope} token belongs to no project; drop `project_id`")
        token, prefix = auth.mint_token()
        with self.store.write() as s:
            if project_id is not None and s.get(Project, project_id) is None:
                raise NotFound(f"project {project_id} does not exist; create it first")
            row = Token(
                prefix=prefix,
                hash=auth.hash_token(token),
                scope=scope,
                project_id=project_id,
                description=description,
                created_at=self.clock(),
                expires_at=self.clock() + ttl if ttl is not None else None,
            )
            s.add(row)
            s.flush()
            return {**_token_json(row), "token": token}

    def list_tokens(self, who: Principal) -> list[dict[str, Any]]:
        who.require_admin()
        with self.store.read() as s:
            return [_token_json(t) for t in s.scalars(select(Token).order_by(Token.id))]

    def revoke_token(self, who: Principal, token_id: int) -> dict[str, Any]:
        who.require_admin()
        check_int(token_id, "token id")
        with self.store.write() as s:
            row = s.get(Token, token_id)
            if row is None:
                raise NotFound(f"token {token_id} does not exist; GET /api/v1/tokens lists them")
            row.revoked = True
            return _token_json(row)


def _token_json(row: Token) -> dict[str, Any]:
    return {
        "id": row.id,
        "prefix": row.prefix,
        "scope": row.scope,
        "project_id": row.project_id,
        "node": row.node_name,
        "description": row.description,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "revoked": row.revoked,
    }
