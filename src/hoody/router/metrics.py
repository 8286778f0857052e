"""Requests the routers of this process answered, by HTTP status, for Prometheus.

Each `Router` counts the status of every answer it gives (its own pages and the
tenants' responses) in a plain Counter: one dict increment per request, nothing more
on the hot path. `RouterCollector` sums them at scrape time. The control plane's
/metrics includes it, so `hoody up` (router in the same process) exports them there;
a router on its own serves them with `hoody router --metrics-listen HOST:PORT`.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from hoody.errors import InvalidInput

__all__ = ["ROUTERS", "RouterCollector", "serve_metrics"]

# The routers alive in this process (weak: a stopped router drops out).
ROUTERS: weakref.WeakSet[Any] = weakref.WeakSet()


class RouterCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        total: Counter[str] = Counter()
        for router in list(ROUTERS):
            for status, n in list(router.statuses.items()):
                key = status.decode() if isinstance(status, bytes) else str(status)
                total[key] += n
        family = CounterMetricFamily(
            "hoody_router_requests",
            "Requests the router answered, by HTTP status (its own pages and tenants').",
            labels=["status"],
        )
        for status, n in sorted(total.items()):
            family.add_metric([status], n)
        yield family


def serve_metrics(listen: str) -> None:
    """Serve this process's router counts at http://LISTEN/metrics (a thread).

    Unauthenticated, as Prometheus exporters are: bind it to an address only the
    scraper reaches (127.0.0.1 or a private network)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise InvalidInput(f"--metrics-listen {listen!r} is invalid; give HOST:PORT")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector())
    start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
