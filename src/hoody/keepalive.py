"""How long hoody's own HTTP hops keep idle connections (router → control plane →
node agent, CLI/SDK → control plane).

A client that sends on a pooled connection the moment the server closes it for being
idle gets a reset, which httpx does not retry: a copy failed that way ("connection
reset by peer") with both sides at the 5 s default of uvicorn and httpx on a loaded
machine, and a router's wake would be a 503. So servers keep idle connections far
longer than clients reuse them.
"""

from __future__ import annotations

import httpx

__all__ = ["CLIENT_LIMITS", "SERVER_KEEP_ALIVE"]

SERVER_KEEP_ALIVE = 75  # seconds (uvicorn's timeout_keep_alive; nginx's default)
# httpx's defaults but the expiry, below uvicorn's 5 s for servers of older versions.
CLIENT_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=4.0
)
