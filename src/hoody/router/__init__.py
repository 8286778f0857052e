"""The tenant router: `<cid>.<domain>` → the tenant's node, with claims and sessions.

    table.py   the route table, kept in step with the control plane
    proxy.py   the HTTP/1.1 + WebSocket reverse proxy and its access decisions
    pages.py   the 401/404/502/503 pages

`serve()` runs it until cancelled; `hoody router` and `hoody up` call it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hoody.errors import HostError, InvalidInput
from hoody.router.proxy import Router
from hoody.router.table import ControlPlaneTable

__all__ = ["Router", "run", "serve", "start_in_thread", "tls_context"]

log = logging.getLogger(__name__)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for a (wildcard) certificate, e.g. one for *.example.com."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(
            f"cannot load TLS certificate {cert} with key {key}: {exc}; "
            "give a PEM certificate (chain) and its private key"
        ) from exc
    return ctx


async def serve(
    api_url: str,
    token: str,
    listen: str = "127.0.0.1:8000",
    domain: str = "localhost",
    tls: ssl.SSLContext | None = None,
    ready: asyncio.Event | None = None,
    refresh_every: float = 0.5,
) -> None:
    """Route until cancelled, reloading the route table every `refresh_every` s.
    Raises if the control plane cannot be reached at start."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise InvalidInput(f"listen address {listen!r} is invalid; give host:port")
    source = ControlPlaneTable(api_url, token, every=refresh_every)
    await source.start()
    router = Router(
        source.table,
        domain,
        source.exchange,
        secure=tls is not None,
        refresh=source.refresh_for_miss,
        wake=source.wake,
    )
    source.report_activity(router.take_seen)
    server = await router.start(host or "127.0.0.1", int(port), tls)
    log.info("router on %s for *.%s (%d tenants)", listen, domain, len(source.table.routes))
    if ready is not None:
        ready.set()
    try:
        async with server:
            await server.serve_forever()
    finally:
        router.close()
        await source.close()


def run(
    api_url: str,
    token: str,
    listen: str = "127.0.0.1:8000",
    domain: str = "localhost",
    tls: ssl.SSLContext | None = None,
) -> None:
    """Blocking `serve` on uvloop (the fastest event loop installed with uvicorn)."""
    try:
        import uvloop

        uvloop.run(serve(api_url, token, listen, domain, tls))
    except ImportError:
        asyncio.run(serve(api_url, token, listen, domain, tls))


def start_in_thread(
    api_url: str,
    token: str,
    listen: str,
    domain: str = "localhost",
    tls: ssl.SSLContext | None = None,
    refresh_every: float = 0.5,
) -> Callable[[], None]:
    """`serve` on an event loop thread of this process (`hoody up`, tests); returns
    once it accepts connections, with the function that stops it."""
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    failed: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        task = loop.create_task(
            serve(api_url, token, listen, domain, tls, ready=ready, refresh_every=refresh_every)
        )
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            failed.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="router", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not ready.is_set():
        if failed or not thread.is_alive():
            reason = failed[0] if failed else "it stopped"
            raise HostError(f"the router could not serve on {listen}: {reason}; is the port taken?")
        if time.monotonic() > deadline:
            raise HostError("the router did not start within 30 s")
        time.sleep(0.02)

    def stop() -> None:
        def cancel_all() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        if thread.is_alive():
            loop.call_soon_threadsafe(cancel_all)
        thread.join(timeout=10)

    return stop
