"""`hoody router` (serve tenant URLs) and `hoody claims …` (authorize, revoke, keys)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from hoody import services
from hoody.cli.common import JsonOpt, emit
from hoody.control.client import Client, load_config
from hoody.errors import InvalidInput

__all__ = ["claims_app", "register", "router"]

claims_app = typer.Typer(help="Container claims: one-time links into one tenant.")


def router(
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve tenants on.")] = "127.0.0.1:8000",
    domain: Annotated[
        str, typer.Option(help="Tenants answer at <cid>.<domain>; localhost needs no DNS.")
    ] = "localhost",
    api: Annotated[
        str | None, typer.Option(help="Control plane URL (default: `hoody login`'s).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="A router token, `hoody token create --router` (default: $HOODY_TOKEN "
            "or `hoody login`'s)."
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate, e.g. *.domain.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(help="HOST:PORT for Prometheus /metrics (requests by status); no auth."),
    ] = None,
) -> None:
    """Serve every tenant at <cid>.<domain>, with claims and sessions."""
    from hoody import router as tenant_router

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    saved = load_config()
    url = api or os.environ.get("HOODY_URL") or saved.get("url")
    secret = token or os.environ.get("HOODY_TOKEN") or saved.get("token")
    if not url or not secret:
        raise InvalidInput(
            "the router needs the control plane: give --api URL --token ROUTER_TOKEN "
            "or run `hoody login` first"
        )
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("give both --tls-cert and --tls-key, or neither")
    tls = tenant_router.tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
    if metrics_listen:
        from hoody.router.metrics import serve_metrics

        serve_metrics(metrics_listen)
    services.join()
    tenant_router.run(url, secret, listen, domain, tls)


@claims_app.command("authorize")
def authorize(
    cid: str,
    ttl: Annotated[int | None, typer.Option(help="Seconds (at most 3600).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A one-time link into tenant CID (what your app redirects a customer to)."""
    with Client() as client:
        emit(client.authorize(cid, ttl), as_json, ["url", "expires_at"])


@claims_app.command("revoke")
def revoke(cid: str, as_json: JsonOpt = False) -> None:
    """End every session of tenant CID."""
    with Client() as client:
        emit(client.revoke_claims(cid), as_json)


def register(app: typer.Typer) -> None:
    app.command()(router)
    app.add_typer(claims_app, name="claims")
